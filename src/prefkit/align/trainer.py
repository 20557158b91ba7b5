"""Preference optimisation of a causal LM: the task for the shared loop, and ``align``.

The pipeline, one part per module:

1. records -> token ids (:mod:`prefkit.align.tokenize`): pairs (``PairwiseRecord``,
   ties skipped and counted), thumbs (``BinaryRecord``, or pairs split into a
   desirable and an undesirable example) or ranked lists (``RankingRecord``);
2. reference log-probs once, cached on disk (:mod:`prefkit.align.refcache`),
   unless ``precompute_ref`` is off or the loss needs no reference; the same for
   the evaluation set, under its own cache key;
3. :class:`AlignTask` scores the policy (:mod:`prefkit.align.logprobs`: all
   completions of a batch in one forward pass, or the shared-prompt pass) and
   applies a loss from :mod:`prefkit.losses.preference`, driven by its registry
   entry alone (reference or not, input container, extra inputs, and the
   :class:`~prefkit.losses.preference.LossState` whose hooks it calls); the shared
   loop (:func:`prefkit.train.loop.train`) does batching, reduction, accumulation,
   checkpoints, exact resume and data parallelism; with an evaluation set
   (``eval_records``, or ``eval_fraction`` of the records held out) the task's
   ``evaluate`` reports loss, rewards, margin and (paired) reward accuracy at each
   evaluation and early stopping can watch any of them;
4. the final model is saved with ``save_pretrained(safe_serialization=True)``
   together with the tokenizer (LoRA adapters merged by default).

Without ``--ref`` the reference is the policy as it was before training. With
LoRA it is the same model with its adapters disabled, so no second copy is held.

Departures from TRL 1.16, besides those listed in :mod:`prefkit.losses.preference`:

- KTO's KL estimate z0 (:class:`~prefkit.losses.preference.MismatchedKLEstimate`)
  is the mean log-ratio log(pi / pi_ref) of the mismatched (prompt, completion)
  pairs of the whole *optimizer step*: in the global batch, example b's prompt
  is paired with the first completion of example b - 1 (the last example for
  b = 0). Before the step's first micro-batch, every process scores its share of
  these pairs without gradient, and the sums are all-reduced, so z0 is the same
  for every micro-batch and process, and KTO, like the other losses, does not
  change with gradient accumulation or the number of processes.
  TRL estimates z0 per micro-batch (shifting completions within the micro-batch)
  and averages it over processes; with one micro-batch per step the two agree.
  A global batch of one example has no mismatched pair and uses z0 = 0.
  Evaluation pairs the examples of each evaluation batch the same way.
- ``bco`` and ``bco_pair``: the reward shift delta
  (:class:`~prefkit.losses.preference.RewardShift`) is the exact mean of the
  implicit rewards beta * log(pi / pi_ref) of every completion (desirable and
  undesirable, or chosen and rejected) trained on in all *earlier* optimizer
  steps; 0 at step 1. It is updated once per optimizer step from the reward sums
  of all micro-batches and ranks (all-reduced), so it is the same on every rank
  and does not depend on gradient accumulation or the number of processes. It is
  saved in each checkpoint (``state.json``, key ``"task"``), so a resumed run
  continues with the same delta. Evaluation uses the current delta and leaves it
  unchanged. TRL's BCOTrainer (``trl.experimental.bco`` in TRL 1.0; TRL 1.16 no
  longer ships it) folds each micro-batch's rewards into its running mean
  *before* that micro-batch's loss, so its delta includes the current batch (at
  step 1: the first batch's mean reward) and its updates follow each process's
  micro-batches; given TRL's delta the losses agree (checked against TRL 1.0 in
  ``tests/test_losses_trl_parity.py``). BCO's underlying distribution matching
  (UDM: a classifier on prompt embeddings whose density ratios reweight the
  undesirable examples) is not implemented. TRL 1.16's DPO ``bco_pair`` has no
  shift at all.
- Listwise labels are the record's preference scores rescaled to [0, 1] within
  each list (LiPO's gains 2**label - 1 assume labels of that range).
- Evaluation batches hold ``eval_batch_size`` examples in data order. Losses whose
  per-example value depends on the batch (``aot``, ``aot_unpaired``, and KTO's KL
  estimate) therefore depend on that size in evaluation as in training.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from prefkit.align.logprobs import (
    SequenceBatch,
    SharedPromptBatch,
    pack_sequences,
    pack_shared_prompts,
    sequence_logps,
    shared_prompt_logps,
)
from prefkit.align.refcache import (
    cached_reference_logps,
    compute_reference_logps,
    default_cache_dir,
    reference_cache_key,
    weights_digest,
)
from prefkit.align.tokenize import TokenizeConfig, TokenizeStats, encode_completions
from prefkit.data.records import BinaryRecord, PairwiseRecord, RankingRecord
from prefkit.data.split import split_eval_records
from prefkit.errors import UserInputError
from prefkit.losses.preference import (
    LOSSES,
    BatchContext,
    ListwiseLogps,
    LossSpec,
    LossState,
    LossTerm,
    PairedLogps,
    RunningMean,
    StepContext,
    UnpairedLogps,
    weighted_sum,
)
from prefkit.train.loop import (
    OptimizerFactory,
    TrainCallback,
    TrainConfig,
    TrainResult,
    move_to_device,
    train,
)

__all__ = [
    "SFT_TERM",
    "AlignBatch",
    "AlignConfig",
    "AlignDataStats",
    "AlignExample",
    "AlignResult",
    "AlignTask",
    "align",
    "build_examples",
    "check_evaluation_settings",
    "load_causal_lm",
    "save_aligned_model",
    "split_eval_records",
]

SFT_TERM = "sft"
"""The registered loss that ``sft_weight`` adds to a paired loss (the RPO recipe)."""


@dataclass
class AlignConfig:
    """Settings of :func:`align` beyond the training loop's; validated on construction."""

    loss: str = "sigmoid"
    """Loss name from prefkit.losses.preference.LOSSES (sigmoid = DPO, ipo, simpo, orpo, kto, bco, lipo_lambda, ...)."""
    loss_args: dict[str, float] = field(default_factory=dict)
    """Hyperparameters of the loss, e.g. beta=0.1 or beta=2,gamma=0.5 for simpo."""
    sft_weight: float = 0.0
    """Add this weight times the SFT loss on the chosen response (RPO); paired losses only, 0 = off."""
    max_length: int = 1024
    """Most tokens of prompt + completion; completions are cut at the end (counted)."""
    max_prompt_length: int = 512
    """Most tokens of a prompt; longer prompts keep their last tokens (counted)."""
    add_eos: bool = True
    """Append EOS to every completion that does not already end with it."""
    precompute_ref: bool = True
    """Score every completion with the reference once before training (cached on disk) instead of at every step."""
    cache_ref: bool = True
    """Keep precomputed reference log-probs on disk and reuse them across runs."""
    ref_cache_dir: str | None = None
    """Folder of the reference cache; None: $PREFKIT_CACHE/ref-logps or ~/.cache/prefkit/ref-logps."""
    ref_batch_size: int = 16
    """Completions per forward pass when precomputing reference log-probs."""
    shared_prompt: bool = False
    """Run each prompt once, with all its completions packed after it in the same row (saves compute on long prompts; needs sdpa or eager attention). Batches are then grouped by the packed width."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, about a third more compute)."""
    lora: bool = False
    """Train LoRA adapters (peft) instead of all weights; the reference is the adapter-disabled model."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: float = 32.0
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input."""
    lora_target_modules: str = "all-linear"
    """Modules that get adapters: 'all-linear' or comma-separated names such as q_proj,v_proj."""
    merge_lora: bool = True
    """Save the model with the LoRA adapters merged into the weights (else save the adapters alone)."""
    save_model: bool = True
    """Save the final model and tokenizer under OUT/model."""
    eval_fraction: float = 0.0
    """Hold out this fraction of the records, drawn at random with the training seed, as the evaluation set; 0 = none. Not together with separate evaluation data (eval_records, --eval-data)."""
    eval_batch_size: int = 16
    """Examples per forward pass when evaluating."""

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise UserInputError(
                f"AlignConfig: unknown loss {self.loss!r}; the losses are {sorted(LOSSES)}."
            )
        self.loss_config()  # unknown arguments and bad values fail here
        spec = self.loss_spec
        if not (math.isfinite(self.sft_weight) and self.sft_weight >= 0):
            raise UserInputError(f"AlignConfig: sft_weight must be >= 0, got {self.sft_weight}.")
        if self.sft_weight > 0 and (
            spec.kind != "paired" or spec.extra_inputs or self.loss == SFT_TERM
        ):
            raise UserInputError(
                f"AlignConfig: sft_weight adds an SFT term to a paired loss; {self.loss!r} is "
                f"{spec.kind}. Set sft_weight to 0."
            )
        self.tokenize_config()  # checks the lengths
        for name in ("ref_batch_size", "lora_r", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserInputError(f"AlignConfig: {name} must be an integer >= 1, got {value!r}.")
        if not 0 <= self.lora_dropout < 1:
            raise UserInputError(
                f"AlignConfig: lora_dropout must be in [0, 1), got {self.lora_dropout}."
            )
        fraction = self.eval_fraction
        if (
            isinstance(fraction, bool)
            or not isinstance(fraction, int | float)
            or not 0 <= fraction < 1
        ):
            raise UserInputError(
                f"AlignConfig: eval_fraction must be a number in [0, 1) (0 = no held-out split), "
                f"got {fraction!r}; e.g. 0.1 holds out a tenth of the records."
            )

    @property
    def loss_spec(self) -> LossSpec:
        """The registry entry of :attr:`loss`: everything the trainer knows about the loss."""
        return LOSSES[self.loss]

    @property
    def kind(self) -> Literal["paired", "unpaired", "listwise"]:
        return self.loss_spec.kind

    @property
    def needs_reference(self) -> bool:
        return self.loss_spec.uses_reference

    def loss_config(self) -> Any:
        spec = self.loss_spec
        accepted = {f.name for f in dataclasses.fields(spec.config_type)}
        unknown = sorted(set(self.loss_args) - accepted)
        if unknown:
            raise UserInputError(
                f"AlignConfig: loss {self.loss!r} does not take {unknown}; its arguments are "
                f"{sorted(accepted)}."
            )
        try:
            return spec.config_type(**self.loss_args)
        except ValueError as error:  # the loss's own check of the values given (--loss-args)
            raise UserInputError(f"AlignConfig: loss {self.loss!r}: {error}") from error

    def tokenize_config(self) -> TokenizeConfig:
        return TokenizeConfig(
            max_length=self.max_length,
            max_prompt_length=self.max_prompt_length,
            add_eos=self.add_eos,
        )


# ---------------------------------------------------------------------------
# data


@dataclass(frozen=True)
class AlignExample:
    """One prompt with its scored completions, as token ids."""

    prompt_ids: tuple[int, ...]
    completions: tuple[tuple[int, ...], ...]
    """Paired: (chosen, rejected); unpaired: (completion,); listwise: the present responses."""
    labels: tuple[float, ...]
    """Paired: (1, 0); unpaired: (1,) desirable or (0,) undesirable; listwise: scores in [0, 1]."""
    record_id: str


@dataclass
class AlignDataStats:
    """What happened to the records on their way to examples."""

    records: int = 0
    examples: int = 0
    skipped_ties: int = 0
    skipped_unlabelled: int = 0
    """Pairwise records without an outcome."""
    skipped_short_lists: int = 0
    """Rankings with fewer than two scored responses."""
    tokenize: TokenizeStats = field(default_factory=TokenizeStats)

    def summary(self) -> str:
        return (
            f"{self.records} records -> {self.examples} examples (skipped: {self.skipped_ties} ties, "
            f"{self.skipped_unlabelled} without outcome, {self.skipped_short_lists} short lists); "
            + self.tokenize.summary()
        )


def build_examples(
    records: Iterable[Any],
    tokenizer: Any,
    kind: Literal["paired", "unpaired", "listwise"],
    config: TokenizeConfig,
    *,
    purpose: str = "training",
) -> tuple[list[AlignExample], AlignDataStats]:
    """Token-id examples for a loss of ``kind``; what is skipped is counted, never dropped silently.

    ``purpose`` ("training", "evaluation") names the set in the error raised when no
    example is left."""
    stats = AlignDataStats()
    examples: list[AlignExample] = []

    def add(record_id: str, prompt: Any, responses: list[Any], labels: list[float]) -> None:
        encoded = encode_completions(tokenizer, prompt, responses, config, stats.tokenize)
        examples.append(
            AlignExample(
                prompt_ids=encoded[0].prompt_ids,
                completions=tuple(item.completion_ids for item in encoded),
                labels=tuple(labels),
                record_id=record_id,
            )
        )

    for record in records:
        stats.records += 1
        if isinstance(record, PairwiseRecord):
            if record.outcome is None:
                stats.skipped_unlabelled += 1
                continue
            if record.is_tie:
                stats.skipped_ties += 1
                continue
            if kind == "unpaired":
                add(record.id, record.prompt, [record.chosen], [1.0])
                add(record.id, record.prompt, [record.rejected], [0.0])
            else:
                add(record.id, record.prompt, [record.chosen, record.rejected], [1.0, 0.0])
        elif isinstance(record, BinaryRecord) and kind == "unpaired":
            add(record.id, record.prompt, [record.response], [1.0 if record.label else 0.0])
        elif isinstance(record, RankingRecord) and kind == "listwise":
            scored = [
                (response, score)
                for response, score in zip(record.responses, record.preference_scores())
                if score is not None
            ]
            if len(scored) < 2:
                stats.skipped_short_lists += 1
                continue
            low, high = min(s for _, s in scored), max(s for _, s in scored)
            spread = high - low
            labels = [(s - low) / spread if spread > 0 else 0.0 for _, s in scored]
            add(record.id, record.prompt, [response for response, _ in scored], labels)
        else:
            accepted = {
                "paired": "pairwise",
                "unpaired": "binary or pairwise",
                "listwise": "ranking or pairwise",
            }[kind]
            raise UserInputError(
                f"record {record.id!r} is a {record.kind} record, but a {kind} loss needs "
                f"{accepted} records; convert the data (prefkit data convert --to ...) or pick "
                "a loss for this kind of feedback"
            )
    stats.examples = len(examples)
    if not examples:
        raise UserInputError(f"no {purpose} examples: {stats.summary()}")
    return examples, stats


def check_evaluation_settings(
    config: AlignConfig, train_config: TrainConfig, *, eval_records_given: bool
) -> None:
    """Raise UserInputError when the evaluation settings contradict each other (before any work)."""
    if eval_records_given and config.eval_fraction > 0:
        raise UserInputError(
            "evaluation data and eval_fraction are both given; either hold out a fraction of "
            "the training records (--eval-fraction) or pass an evaluation set (--eval-data)."
        )
    if train_config.early_stopping_patience is not None and not (
        eval_records_given or config.eval_fraction > 0
    ):
        raise UserInputError(
            "early_stopping_patience is set but there is no evaluation set to watch; pass "
            "evaluation data (--eval-data) or eval_fraction (--eval-fraction), or drop early "
            "stopping."
        )


# ---------------------------------------------------------------------------
# the task


@dataclass
class AlignBatch:
    """B examples with K completion slots, as R scored rows (slot-major order)."""

    sequences: SequenceBatch | None
    """The R rows as prompt + completion (None on the shared-prompt path)."""
    shared: SharedPromptBatch | None
    """The B prompts and R completions (shared-prompt path only)."""
    row_example: Tensor
    """(R,) long: example (0 .. B - 1) of each row."""
    row_slot: Tensor
    """(R,) long: completion slot (0 .. K - 1) of each row."""
    slot_mask: Tensor
    """(B, K) bool: True where the example has a completion in that slot."""
    labels: Tensor
    """(B, K) float labels (see :class:`AlignExample`), 0 at empty slots."""
    ref_logps: Tensor | None
    """(B, K) precomputed reference log-probs, 0 at empty slots; None when computed in the step."""
    indices: tuple[int, ...]
    """The B examples' indices in their set (for the loss state's inputs)."""


@dataclass
class _ExampleSet:
    """Examples with their precomputed reference log-probs."""

    examples: list[AlignExample]
    ref_table: Tensor | None
    """(N, K) reference log-probs (NaN at empty slots), or None when scored in the step."""
    num_slots: int
    """K: the most completions of any example."""

    @classmethod
    def of(cls, examples: Sequence[AlignExample], ref_table: Tensor | None) -> _ExampleSet:
        return cls(list(examples), ref_table, max(len(example.completions) for example in examples))


class AlignTask:
    """The :class:`~prefkit.train.loop.TrainTask` of preference optimisation.

    It reads the loss's registry entry (:class:`~prefkit.losses.preference.LossSpec`)
    and nothing else about the loss: whether to score a reference, which input
    container to build, and the loss's :class:`~prefkit.losses.preference.LossState`
    (:attr:`loss_state`), whose hooks it forwards. It is a
    :class:`~prefkit.train.loop.StatefulTrainTask`: ``before_step`` lets the state
    prepare the step (KTO estimates z0 from the whole global batch), ``loss`` asks
    it for the loss's extra inputs and shows it each micro-batch's rewards (BCO adds
    them up), ``after_optimizer_step`` lets it fold the step in (BCO's running mean
    over all ranks), and ``state_dict`` carries it through checkpoints.
    """

    def __init__(
        self,
        examples: Sequence[AlignExample],
        config: AlignConfig,
        *,
        pad_id: int,
        ref_table: Tensor | None = None,
        reference_model: nn.Module | None = None,
        eval_examples: Sequence[AlignExample] = (),
        eval_ref_table: Tensor | None = None,
    ) -> None:
        """``ref_table`` is ``(N, K)`` precomputed reference log-probs; without it and with a
        reference-based loss, ``reference_model`` scores each batch, or, when it is None, the
        policy itself with its LoRA adapters disabled. ``eval_examples`` (with their own
        ``eval_ref_table``) make :attr:`evaluate` available."""
        self.config = config
        self.pad_id = pad_id
        self.train_set = _ExampleSet.of(examples, ref_table)
        self.eval_set = _ExampleSet.of(eval_examples, eval_ref_table) if eval_examples else None
        self.reference_model = reference_model
        self.loss_spec = config.loss_spec
        self.loss_function = _build_loss_function(config)
        state = self.loss_spec.state
        self.loss_state: LossState = LossState() if state is None else state()
        """What the loss keeps across steps (KTO's KL estimate, BCO's reward shift)."""

    @property
    def examples(self) -> list[AlignExample]:
        return self.train_set.examples

    @property
    def reward_shift(self) -> RunningMean | None:
        """The loss state's running reward mean (BCO's delta), None when it keeps none."""
        return getattr(self.loss_state, "reward_shift", None)

    def example_lengths(self) -> list[int]:
        """Width of the row(s) each example becomes, the key the sampler groups batches by.

        Plain layout: ``prompt + completion`` rows, padded to the widest, so the
        longest completion counts. Shared-prompt layout: one row of ``prompt +
        every completion``, so all completions count. Grouping by the width of
        the layout in use keeps padding low in both (``bench/align_padding.py``:
        on the align speed bench's pairs, shared-prompt batches grouped by the
        plain width pad 9.5% of their positions, by their own width 4.1%). So
        the two layouts form different
        batches when ``group_by_length`` is on; with the same batches they give
        the same results (tested).
        """
        if self.config.shared_prompt:
            return [
                len(example.prompt_ids) + sum(len(c) for c in example.completions)
                for example in self.examples
            ]
        return [
            len(example.prompt_ids) + max(len(c) for c in example.completions)
            for example in self.examples
        ]

    def collate(self, indices: list[int]) -> AlignBatch:
        return self._collate(self.train_set, indices)

    def _collate(self, example_set: _ExampleSet, indices: list[int]) -> AlignBatch:
        """The batch of ``indices`` of ``example_set``."""
        chosen = [example_set.examples[index] for index in indices]
        num_slots = example_set.num_slots
        slot_mask = torch.zeros((len(chosen), num_slots), dtype=torch.bool)
        labels = torch.zeros((len(chosen), num_slots))
        rows: list[tuple[int, int]] = []  # (example, slot), slot-major
        for slot in range(num_slots):
            for position, example in enumerate(chosen):
                if slot < len(example.completions):
                    rows.append((position, slot))
                    slot_mask[position, slot] = True
                    labels[position, slot] = example.labels[slot]
        sequences = shared = None
        if self.config.shared_prompt:
            shared = pack_shared_prompts(
                [example.prompt_ids for example in chosen],
                [(b, chosen[b].completions[k]) for b, k in rows],
                self.pad_id,
            )
        else:
            sequences = pack_sequences(
                [(chosen[b].prompt_ids, chosen[b].completions[k]) for b, k in rows], self.pad_id
            )
        ref_logps = None
        if example_set.ref_table is not None:
            ref_logps = torch.nan_to_num(example_set.ref_table[indices], nan=0.0)
        return AlignBatch(
            sequences=sequences,
            shared=shared,
            row_example=torch.tensor([b for b, _ in rows], dtype=torch.long),
            row_slot=torch.tensor([k for _, k in rows], dtype=torch.long),
            slot_mask=slot_mask,
            labels=labels,
            ref_logps=ref_logps,
            indices=tuple(indices),
        )

    def _mismatched_log_ratios(
        self, model: nn.Module, example_set: _ExampleSet, pairs: Sequence[tuple[int, int]]
    ) -> Tensor:
        """(R,) log pi - log pi_ref, without gradient, of the rows ``prompt of example i + first
        completion of example j`` (the completion cut to fit ``max_length``) for each
        ``(i, j)`` of ``pairs``, in one forward pass of each model (KTO's KL pairs)."""
        rows = []
        for example_index, other_index in pairs:
            example = example_set.examples[example_index]
            other = example_set.examples[other_index]
            room = self.config.max_length - len(example.prompt_ids)
            rows.append((example.prompt_ids, other.completions[0][:room]))
        sequences = move_to_device(
            pack_sequences(rows, self.pad_id), next(model.parameters()).device
        )
        with torch.no_grad():
            policy_logps = sequence_logps(model, sequences)[0]
            ref_logps = self._reference_scores(model, lambda m: sequence_logps(m, sequences)[0])
        return policy_logps - ref_logps

    # -- the loss state's hooks (KTO's KL estimate, BCO's reward shift)

    def before_step(
        self,
        model: nn.Module,
        global_batch: Sequence[int],
        micro_batches: Sequence[Sequence[int]],
        sum_over_ranks: Callable[[Tensor], Tensor],
    ) -> None:
        """Let the loss state prepare the step from the whole ``global_batch``, of which this
        rank trains on ``micro_batches``; e.g. KTO's z0, the mean log(pi / pi_ref) of the
        mismatched pairs of the global batch, summed over the ranks."""
        self.loss_state.before_step(
            StepContext(
                global_batch=global_batch,
                micro_batches=micro_batches,
                sum_over_ranks=sum_over_ranks,
                mismatched_log_ratios=functools.partial(
                    self._mismatched_log_ratios, model, self.train_set
                ),
                device=next(model.parameters()).device,
            )
        )

    def after_optimizer_step(self, sum_over_ranks: Callable[[Tensor], Tensor]) -> None:
        """Let the loss state fold in the step, e.g. BCO's rewards summed over micro-batches
        and ranks into delta."""
        self.loss_state.after_step(sum_over_ranks)

    def state_dict(self) -> dict[str, Any]:
        return self.loss_state.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        expected = set(self.state_dict())
        if set(state) != expected:
            raise UserInputError(
                f"AlignTask: the checkpoint's task state holds {sorted(state)} but loss "
                f"{self.config.loss!r} keeps {sorted(expected)}; it was written with another "
                "loss. Resume with the loss it was written with, or use an empty output folder."
            )
        self.loss_state.load_state_dict(state)

    # -- scoring

    def _row_logps(self, model: nn.Module, batch: AlignBatch) -> tuple[Tensor, Tensor]:
        if batch.shared is not None:
            return shared_prompt_logps(model, batch.shared)
        assert batch.sequences is not None
        return sequence_logps(model, batch.sequences)

    def _to_slots(self, batch: AlignBatch, row_values: Tensor) -> Tensor:
        """(B, K) from (R,) row values; 0 at empty slots."""
        table = row_values.new_zeros(batch.slot_mask.shape)
        return table.index_put((batch.row_example, batch.row_slot), row_values)

    @torch.no_grad()
    def _reference_scores(self, model: nn.Module, score: Callable[[nn.Module], Tensor]) -> Tensor:
        if self.reference_model is not None:
            device = next(model.parameters()).device
            self.reference_model.to(device)
            self.reference_model.eval()
            return score(self.reference_model)
        disable_adapter = getattr(model, "disable_adapter", None)
        if disable_adapter is None:
            raise ValueError(
                "AlignTask: reference log-probs are computed in the step but there is neither a "
                "reference model nor LoRA adapters to disable; pass reference_model or a ref_table"
            )
        with disable_adapter():
            return score(model)

    def loss(self, model: nn.Module, batch: AlignBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """Per-example losses (B,) and metrics of a training micro-batch; the loss state sees
        the batch's rewards (BCO adds them to this step's sums, which
        :meth:`after_optimizer_step` folds into delta)."""
        losses, metrics, rewards = self._scored(model, batch, training=True)
        self.loss_state.after_micro_batch(rewards)
        return losses, metrics

    def _scored(
        self, model: nn.Module, batch: AlignBatch, *, training: bool
    ) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """Per-example losses (B,), metrics, and the detached rewards (M,) of the batch's
        completions; changes no state. The loss's extra inputs come from the loss state
        (``training`` says whether the batch is a training micro-batch of the current step or
        an evaluation batch); they are reported as metrics under their names."""
        row_logps, row_lengths = self._row_logps(model, batch)
        policy = self._to_slots(batch, row_logps)  # (B, K)
        lengths = self._to_slots(batch, row_lengths.to(row_logps.dtype)).long()  # (B, K)
        reference = None
        if self.loss_spec.uses_reference:
            if batch.ref_logps is not None:
                reference = batch.ref_logps.to(policy.dtype)
            else:
                ref_rows = self._reference_scores(model, lambda m: self._row_logps(m, batch)[0])
                reference = self._to_slots(batch, ref_rows.to(policy.dtype))
        extra = self._extra_inputs(model, batch, policy, training=training)
        kind = self.loss_spec.kind
        if kind == "paired":
            losses, metrics, rewards = self._paired_loss(policy, reference, lengths, extra)
        elif kind == "unpaired":
            assert reference is not None
            losses, metrics, rewards = self._unpaired_loss(batch, policy, reference, extra)
        else:
            assert reference is not None
            losses, metrics, rewards = self._listwise_loss(batch, policy, reference, extra)
        metrics.update({name: value.detach() for name, value in extra.items()})
        return losses, metrics, rewards

    def _extra_inputs(
        self, model: nn.Module, batch: AlignBatch, policy: Tensor, *, training: bool
    ) -> dict[str, Tensor]:
        """The loss state's inputs for ``batch``, checked against the spec's ``extra_inputs``
        and in their order."""
        example_set = self.train_set if training else self.eval_set
        assert example_set is not None
        context = BatchContext(
            indices=batch.indices,
            training=training,
            like=policy,
            mismatched_log_ratios=functools.partial(
                self._mismatched_log_ratios, model, example_set
            ),
        )
        extra = self.loss_state.inputs(context)
        expected = self.loss_spec.extra_inputs
        if set(extra) != set(expected):
            raise ValueError(
                f"AlignTask: loss {self.config.loss!r} takes the extra inputs {list(expected)} "
                f"but its state supplied {sorted(extra)}; fix the LossState's inputs()"
            )
        return {name: extra[name] for name in expected}

    def _paired_loss(
        self, policy: Tensor, reference: Tensor | None, lengths: Tensor, extra: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        logps = PairedLogps(
            policy_chosen_logps=policy[:, 0],
            policy_rejected_logps=policy[:, 1],
            ref_chosen_logps=None if reference is None else reference[:, 0],
            ref_rejected_logps=None if reference is None else reference[:, 1],
            chosen_lengths=lengths[:, 0],
            rejected_lengths=lengths[:, 1],
        )
        output = self.loss_function(logps, *extra.values())
        chosen_rewards, rejected_rewards = output.chosen_rewards, output.rejected_rewards
        metrics = {
            "chosen_rewards": chosen_rewards,
            "rejected_rewards": rejected_rewards,
            "reward_accuracy": (chosen_rewards > rejected_rewards).float(),
            "reward_margin": chosen_rewards - rejected_rewards,
            "chosen_logps": policy[:, 0].detach(),
            "rejected_logps": policy[:, 1].detach(),
            **output.metrics,
        }
        rewards = torch.cat([chosen_rewards, rejected_rewards])  # (2B,)
        return output.losses, metrics, rewards

    def _unpaired_loss(
        self, batch: AlignBatch, policy: Tensor, reference: Tensor, extra: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        desirable = batch.labels[:, 0] > 0.5
        logps = UnpairedLogps(policy[:, 0], reference[:, 0], desirable)
        output = self.loss_function(logps, *extra.values())
        metrics = {
            "rewards": output.rewards,
            "logps": policy[:, 0].detach(),
            "desirable": desirable.to(policy.dtype),
        }
        return output.losses, metrics, output.rewards

    def _listwise_loss(
        self, batch: AlignBatch, policy: Tensor, reference: Tensor, extra: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        output = self.loss_function(
            ListwiseLogps(policy, reference, batch.labels.to(policy.dtype), batch.slot_mask),
            *extra.values(),
        )
        present = batch.slot_mask.to(policy.dtype)
        metrics = {
            "mean_logps": (policy.detach() * present).sum(1) / present.sum(1),
            **output.metrics,
        }
        return output.losses, metrics, output.rewards[batch.slot_mask]

    # -- evaluation

    @property
    def evaluate(self) -> Callable[[nn.Module], dict[str, float]] | None:
        """:meth:`evaluation_metrics` when there are evaluation examples, else None (the
        training loop then never evaluates)."""
        return None if self.eval_set is None else self.evaluation_metrics

    @torch.no_grad()
    def evaluation_metrics(self, model: nn.Module) -> dict[str, float]:
        """Means over the evaluation examples of the loss and the training metrics.

        Paired losses report ``loss``, ``chosen_rewards``, ``rejected_rewards``,
        ``reward_margin``, ``reward_accuracy`` (chosen reward above rejected),
        ``chosen_logps`` and ``rejected_logps``; unpaired losses report ``loss``,
        ``rewards`` and ``chosen_rewards``/``rejected_rewards`` (means over the
        desirable / undesirable examples) with ``reward_margin``, their difference;
        listwise losses report ``loss`` and ``mean_logps``. ``num_examples`` counts
        the examples, and the loss's extra inputs are reported under their names. The
        loss state is read, not updated (BCO's reward shift stays as training left it).
        """
        if self.eval_set is None:
            raise ValueError("AlignTask: no evaluation examples were given")
        device = next(model.parameters()).device
        count = len(self.eval_set.examples)
        sums: dict[str, float] = {}
        rewards_by_label = {True: [0.0, 0], False: [0.0, 0]}  # desirable?: [reward sum, count]
        for start in range(0, count, self.config.eval_batch_size):
            indices = list(range(start, min(start + self.config.eval_batch_size, count)))
            batch = move_to_device(self._collate(self.eval_set, indices), device)
            losses, metrics, _ = self._scored(model, batch, training=False)
            for name, value in {"loss": losses, **metrics}.items():
                value = value.detach().double()
                total = value.sum() if value.ndim else value * len(indices)  # scalar: batch mean
                sums[name] = sums.get(name, 0.0) + float(total)
            if self.config.kind == "unpaired":
                desirable = metrics["desirable"] > 0.5
                for label in (True, False):
                    selected = metrics["rewards"][desirable == label].double()
                    rewards_by_label[label][0] += float(selected.sum())
                    rewards_by_label[label][1] += selected.numel()
        result = {name: total / count for name, total in sums.items()}
        if self.config.kind == "unpaired":
            for label, name in ((True, "chosen_rewards"), (False, "rejected_rewards")):
                reward_sum, reward_count = rewards_by_label[label]
                if reward_count:
                    result[name] = reward_sum / reward_count
            if "chosen_rewards" in result and "rejected_rewards" in result:
                result["reward_margin"] = result["chosen_rewards"] - result["rejected_rewards"]
            result.pop("desirable", None)
        result["num_examples"] = float(count)
        return result


def _build_loss_function(config: AlignConfig) -> Callable[..., Any]:
    loss_config = config.loss_config()
    if config.sft_weight > 0:
        terms = [LossTerm(config.loss, 1.0, loss_config), LossTerm(SFT_TERM, config.sft_weight)]
        return functools.partial(weighted_sum, terms=terms)
    return functools.partial(config.loss_spec.function, config=loss_config)


# ---------------------------------------------------------------------------
# models


def load_causal_lm(path: str | os.PathLike[str]) -> Any:
    """A float32 causal LM from a local folder or Hub name; weights only from safetensors."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        str(path), dtype=torch.float32, use_safetensors=True, trust_remote_code=False
    )


def _wrap_lora(model: nn.Module, config: AlignConfig) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    targets: str | list[str] = config.lora_target_modules
    if targets != "all-linear":
        targets = [name.strip() for name in targets.split(",") if name.strip()]
    lora_config = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora_config)


def save_aligned_model(
    model: nn.Module, tokenizer: Any, directory: str | os.PathLike[str], *, merge_lora: bool = True
) -> Path:
    """Save ``model`` (LoRA merged when ``merge_lora``) and ``tokenizer`` as safetensors."""
    directory = Path(directory)
    to_save = model
    if merge_lora and hasattr(model, "merge_and_unload"):
        to_save = copy.deepcopy(model).merge_and_unload()
    if hasattr(to_save, "config") and hasattr(to_save.config, "use_cache"):
        to_save.config.use_cache = True
    to_save.save_pretrained(directory, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return directory


def _enable_checkpointing(model: nn.Module) -> None:
    """Activation checkpointing without re-entrant autograd (works with frozen inputs and LoRA)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _training_device(train_config: TrainConfig) -> torch.device:
    use_cuda = train_config.device == "cuda" or (
        train_config.device == "auto" and torch.cuda.is_available()
    )
    if not use_cuda:
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


# ---------------------------------------------------------------------------
# the API


@dataclass
class AlignResult:
    """What :func:`align` did."""

    train: TrainResult
    data: AlignDataStats
    model: nn.Module
    """The trained model (a peft model when LoRA is on)."""
    model_dir: Path | None
    """Where the final model and tokenizer were saved (None when not saved, or not rank 0)."""
    ref_cache_hit: bool | None
    """True when reference log-probs came from the disk cache; None when none were precomputed."""
    eval_data: AlignDataStats | None = None
    """What became of the evaluation records; None without an evaluation set."""


def align(
    records: Iterable[Any],
    model: nn.Module | str | os.PathLike[str],
    tokenizer: Any,
    out_dir: str | os.PathLike[str],
    config: AlignConfig | None = None,
    train_config: TrainConfig | None = None,
    *,
    ref_model: nn.Module | str | os.PathLike[str] | None = None,
    eval_records: Iterable[Any] | None = None,
    resume: bool = True,
    callbacks: Sequence[TrainCallback] = (),
    optimizer_factory: OptimizerFactory | None = None,
    max_steps: int | None = None,
) -> AlignResult:
    """Align ``model`` to the preferences in ``records``; see the module docstring.

    ``model`` and ``ref_model`` are modules or paths of Hugging Face causal LMs
    (safetensors). ``tokenizer`` is a Hugging Face tokenizer (or a path to one).
    ``eval_records`` (or ``config.eval_fraction`` of ``records``, not both) are
    evaluated as ``train_config.eval_every`` says; their metrics go to
    ``metrics.jsonl`` as lines with ``"split": "eval"`` and early stopping can
    watch them. Metrics go to ``out_dir/metrics.jsonl``, checkpoints to
    ``out_dir/checkpoints`` and the final model to ``out_dir/model``. A run
    interrupted and started again with the same arguments resumes exactly.
    ``optimizer_factory`` builds the optimizer from the (LoRA-wrapped) model and
    ``train_config`` (default: AdamW, :func:`prefkit.train.loop.default_optimizer`).
    ``max_steps`` stops after that many optimizer steps instead of after
    ``train_config.epochs`` (see :func:`prefkit.train.loop.train`).
    """
    config = config or AlignConfig()
    train_config = train_config or TrainConfig()
    check_evaluation_settings(config, train_config, eval_records_given=eval_records is not None)
    if config.eval_fraction > 0:
        records, eval_records = split_eval_records(records, config.eval_fraction, train_config.seed)
    out_dir = Path(out_dir)
    if isinstance(tokenizer, str | os.PathLike):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
    if not isinstance(model, nn.Module):
        model = load_causal_lm(model)
    if ref_model is not None and not isinstance(ref_model, nn.Module):
        ref_model = load_causal_lm(ref_model)
    if ref_model is not None and not config.needs_reference:
        raise UserInputError(
            f"loss {config.loss!r} uses no reference model; drop ref_model (--ref)."
        )
    pad_id = _pad_id(tokenizer)

    examples, data_stats = build_examples(records, tokenizer, config.kind, config.tokenize_config())
    eval_examples: list[AlignExample] = []
    eval_stats = None
    if eval_records is not None:
        eval_examples, eval_stats = build_examples(
            eval_records, tokenizer, config.kind, config.tokenize_config(), purpose="evaluation"
        )
    device = _training_device(train_config)

    ref_table = eval_ref_table = None
    ref_cache_hit = None
    if config.needs_reference and config.precompute_ref:
        example_sets = [examples, eval_examples] if eval_examples else [examples]
        tables = _precompute_reference(
            ref_model if ref_model is not None else model, example_sets, config, pad_id, device
        )
        ref_table, ref_cache_hit = tables[0]
        if eval_examples:
            eval_ref_table = tables[1][0]
    # A state that scores mismatched pairs (KTO's KL estimate) needs the reference in every step.
    reference_in_step = config.needs_reference and (
        ref_table is None or config.loss_spec.scores_mismatched_pairs
    )
    if not reference_in_step:
        ref_model = None

    if config.gradient_checkpointing:
        _enable_checkpointing(model)
        if hasattr(model, "config"):
            model.config.use_cache = False
    if config.lora:
        model = _wrap_lora(model, config)
    elif reference_in_step and ref_model is None:
        ref_model = copy.deepcopy(model)  # the policy before training
    if ref_model is not None:
        ref_model.requires_grad_(False)
        ref_model.eval()

    task = AlignTask(
        examples,
        config,
        pad_id=pad_id,
        ref_table=ref_table,
        reference_model=ref_model,
        eval_examples=eval_examples,
        eval_ref_table=eval_ref_table,
    )
    result = train(
        model,
        task,
        train_config,
        out_dir,
        resume=resume,
        optimizer_factory=optimizer_factory,
        callbacks=callbacks,
        max_steps=max_steps,
    )

    model_dir = None
    if config.save_model and int(os.environ.get("RANK", "0")) == 0:
        model_dir = save_aligned_model(
            model, tokenizer, out_dir / "model", merge_lora=config.merge_lora
        )
    return AlignResult(result, data_stats, model, model_dir, ref_cache_hit, eval_stats)


def _pad_id(tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0  # padding positions are masked out; any id will do


def _precompute_reference(
    reference: nn.Module,
    example_sets: Sequence[Sequence[AlignExample]],
    config: AlignConfig,
    pad_id: int,
    device: torch.device,
) -> list[tuple[Tensor, bool]]:
    """For each set of examples, (N, K) reference log-probs (NaN at empty slots) and whether
    they came from the cache; each set has its own cache entry."""
    digest = weights_digest(reference)
    cache_dir = None
    if config.cache_ref:
        cache_dir = Path(config.ref_cache_dir) if config.ref_cache_dir else default_cache_dir()

    def compute(rows: list[tuple[tuple[int, ...], tuple[int, ...]]]) -> Tensor:
        original_device = next(reference.parameters()).device
        reference.to(device)
        try:
            return compute_reference_logps(
                reference,
                rows,
                pad_id=pad_id,
                batch_size=config.ref_batch_size,
                device=device,
                shared_prompt=config.shared_prompt,
            )
        finally:
            reference.to(original_device)

    tables = []
    for examples in example_sets:
        rows = [
            (example.prompt_ids, completion)
            for example in examples
            for completion in example.completions
        ]
        key = reference_cache_key(digest, rows)
        flat, hit = cached_reference_logps(functools.partial(compute, rows), key, cache_dir)
        num_slots = max(len(example.completions) for example in examples)
        table = torch.full((len(examples), num_slots), math.nan)
        offset = 0
        for index, example in enumerate(examples):
            count = len(example.completions)
            table[index, :count] = flat[offset : offset + count]
            offset += count
        tables.append((table, hit))
    return tables
