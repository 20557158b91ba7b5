"""Preference optimisation of a causal LM: the task for the shared loop, and ``align``.

The pipeline, one part per module:

1. records -> token ids (:mod:`prefkit.align.tokenize`): pairs (``PairwiseRecord``,
   ties skipped and counted), thumbs (``BinaryRecord``, or pairs split into a
   desirable and an undesirable example) or ranked lists (``RankingRecord``);
2. reference log-probs once, cached on disk (:mod:`prefkit.align.refcache`),
   unless ``precompute_ref`` is off or the loss needs no reference;
3. :class:`AlignTask` scores the policy (:mod:`prefkit.align.logprobs`: all
   completions of a batch in one forward pass, or the shared-prompt pass) and
   applies a loss from :mod:`prefkit.losses.preference`; the shared loop
   (:func:`prefkit.train.loop.train`) does batching, reduction, accumulation,
   checkpoints, exact resume and data parallelism;
4. the final model is saved with ``save_pretrained(safe_serialization=True)``
   together with the tokenizer (LoRA adapters merged by default).

Without ``--ref`` the reference is the policy as it was before training. With
LoRA it is the same model with its adapters disabled, so no second copy is held.

Departures from TRL 1.16, besides those listed in :mod:`prefkit.losses.preference`:

- KTO's KL estimate z0 is the mean log-ratio of mismatched (prompt, completion)
  pairs of the *micro-batch* on each process (completion of example b - 1 with
  the prompt of example b); TRL gathers it over processes. A micro-batch of one
  example has no mismatched pair and uses z0 = 0. KTO is therefore not exactly
  invariant to gradient accumulation; the paired and listwise losses are.
- ``bco`` and ``bco_pair`` need a running reward mean carried across steps and
  checkpoints; they are not offered by this trainer yet.
- Listwise labels are the record's preference scores rescaled to [0, 1] within
  each list (LiPO's gains 2**label - 1 assume labels of that range).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import os
from collections.abc import Callable, Iterable, Sequence
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
from prefkit.losses.preference import (
    LOSSES,
    ListwiseLogps,
    LossTerm,
    PairedLogps,
    UnpairedLogps,
    weighted_sum,
)
from prefkit.train.loop import TrainCallback, TrainConfig, TrainResult, train

__all__ = [
    "REFERENCE_FREE_LOSSES",
    "AlignBatch",
    "AlignConfig",
    "AlignDataStats",
    "AlignExample",
    "AlignResult",
    "AlignTask",
    "align",
    "build_examples",
    "load_causal_lm",
    "save_aligned_model",
]

REFERENCE_FREE_LOSSES = frozenset({"simpo", "cpo", "orpo", "sft"})
"""Losses computed from policy log-probs alone; no reference model is needed for them."""
_NOT_SUPPORTED = {
    "bco": "it needs a running reward mean kept across steps and checkpoints",
    "bco_pair": "it needs a running reward mean kept across steps and checkpoints",
}


@dataclass
class AlignConfig:
    """Settings of :func:`align` beyond the training loop's; validated on construction."""

    loss: str = "sigmoid"
    """Loss name from prefkit.losses.preference.LOSSES (sigmoid = DPO, ipo, simpo, orpo, kto, lipo_lambda, ...)."""
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
    """Run each prompt once, with all its completions packed after it in the same row (saves compute on long prompts; needs sdpa or eager attention)."""
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

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"AlignConfig: unknown loss {self.loss!r}; the losses are {sorted(LOSSES)}.")
        if self.loss in _NOT_SUPPORTED:
            raise ValueError(
                f"AlignConfig: loss {self.loss!r} is not supported by the trainer yet: "
                f"{_NOT_SUPPORTED[self.loss]}. Use kto for thumbs data or a paired loss for pairs."
            )
        self.loss_config()  # unknown arguments and bad values fail here
        spec = LOSSES[self.loss]
        if not (math.isfinite(self.sft_weight) and self.sft_weight >= 0):
            raise ValueError(f"AlignConfig: sft_weight must be >= 0, got {self.sft_weight}.")
        if self.sft_weight > 0 and (spec.kind != "paired" or spec.extra_inputs or self.loss == "sft"):
            raise ValueError(
                f"AlignConfig: sft_weight adds an SFT term to a paired loss; {self.loss!r} is "
                f"{spec.kind}. Set sft_weight to 0."
            )
        self.tokenize_config()  # checks the lengths
        for name in ("ref_batch_size", "lora_r"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"AlignConfig: {name} must be an integer >= 1, got {value!r}.")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"AlignConfig: lora_dropout must be in [0, 1), got {self.lora_dropout}.")

    @property
    def kind(self) -> Literal["paired", "unpaired", "listwise"]:
        return LOSSES[self.loss].kind

    @property
    def needs_reference(self) -> bool:
        return self.loss not in REFERENCE_FREE_LOSSES

    def loss_config(self) -> Any:
        spec = LOSSES[self.loss]
        accepted = {f.name for f in dataclasses.fields(spec.config_type)}
        unknown = sorted(set(self.loss_args) - accepted)
        if unknown:
            raise ValueError(
                f"AlignConfig: loss {self.loss!r} does not take {unknown}; its arguments are "
                f"{sorted(accepted)}."
            )
        return spec.config_type(**self.loss_args)

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
) -> tuple[list[AlignExample], AlignDataStats]:
    """Token-id examples for a loss of ``kind``; what is skipped is counted, never dropped silently."""
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
            raise ValueError(
                f"record {record.id!r} is a {record.kind} record, but a {kind} loss needs "
                f"{accepted} records; convert the data (prefkit data convert --to ...) or pick "
                "a loss for this kind of feedback"
            )
    stats.examples = len(examples)
    if not examples:
        raise ValueError(f"no training examples: {stats.summary()}")
    return examples, stats


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
    kl_sequences: SequenceBatch | None
    """(B rows) mismatched prompt/completion pairs for KTO's KL estimate; None otherwise."""


class AlignTask:
    """The :class:`~prefkit.train.loop.TrainTask` of preference optimisation."""

    def __init__(
        self,
        examples: Sequence[AlignExample],
        config: AlignConfig,
        *,
        pad_id: int,
        ref_table: Tensor | None = None,
        reference_model: nn.Module | None = None,
    ) -> None:
        """``ref_table`` is ``(N, K)`` precomputed reference log-probs; without it and with a
        reference-based loss, ``reference_model`` scores each batch, or, when it is None, the
        policy itself with its LoRA adapters disabled."""
        self.examples = list(examples)
        self.config = config
        self.pad_id = pad_id
        self.ref_table = ref_table
        self.reference_model = reference_model
        self.num_slots = max(len(example.completions) for example in self.examples)
        self.loss_function = _build_loss_function(config)

    def example_lengths(self) -> list[int]:
        return [
            len(example.prompt_ids) + max(len(c) for c in example.completions)
            for example in self.examples
        ]

    def collate(self, indices: list[int]) -> AlignBatch:
        chosen = [self.examples[index] for index in indices]
        slot_mask = torch.zeros((len(chosen), self.num_slots), dtype=torch.bool)
        labels = torch.zeros((len(chosen), self.num_slots))
        rows: list[tuple[int, int]] = []  # (example, slot), slot-major
        for slot in range(self.num_slots):
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
        if self.ref_table is not None:
            ref_logps = torch.nan_to_num(self.ref_table[indices], nan=0.0)
        kl_sequences = None
        if self.config.loss == "kto" and len(chosen) > 1:
            kl_rows = []
            for position, example in enumerate(chosen):
                other = chosen[position - 1].completions[0]
                room = self.config.max_length - len(example.prompt_ids)
                kl_rows.append((example.prompt_ids, other[:room]))
            kl_sequences = pack_sequences(kl_rows, self.pad_id)
        return AlignBatch(
            sequences=sequences,
            shared=shared,
            row_example=torch.tensor([b for b, _ in rows], dtype=torch.long),
            row_slot=torch.tensor([k for _, k in rows], dtype=torch.long),
            slot_mask=slot_mask,
            labels=labels,
            ref_logps=ref_logps,
            kl_sequences=kl_sequences,
        )

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
        row_logps, row_lengths = self._row_logps(model, batch)
        policy = self._to_slots(batch, row_logps)  # (B, K)
        lengths = self._to_slots(batch, row_lengths.to(row_logps.dtype)).long()  # (B, K)
        reference = None
        if self.config.needs_reference:
            if batch.ref_logps is not None:
                reference = batch.ref_logps.to(policy.dtype)
            else:
                ref_rows = self._reference_scores(model, lambda m: self._row_logps(m, batch)[0])
                reference = self._to_slots(batch, ref_rows.to(policy.dtype))
        kind = self.config.kind
        if kind == "paired":
            return self._paired_loss(policy, reference, lengths)
        if kind == "unpaired":
            assert reference is not None
            return self._unpaired_loss(model, batch, policy, reference)
        assert reference is not None
        output = self.loss_function(
            ListwiseLogps(policy, reference, batch.labels.to(policy.dtype), batch.slot_mask)
        )
        present = batch.slot_mask.to(policy.dtype)
        return output.losses, {
            "mean_logps": (policy.detach() * present).sum(1) / present.sum(1),
            **output.metrics,
        }

    def _paired_loss(
        self, policy: Tensor, reference: Tensor | None, lengths: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        logps = PairedLogps(
            policy_chosen_logps=policy[:, 0],
            policy_rejected_logps=policy[:, 1],
            ref_chosen_logps=None if reference is None else reference[:, 0],
            ref_rejected_logps=None if reference is None else reference[:, 1],
            chosen_lengths=lengths[:, 0],
            rejected_lengths=lengths[:, 1],
        )
        output = self.loss_function(logps)
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
        return output.losses, metrics

    def _unpaired_loss(
        self, model: nn.Module, batch: AlignBatch, policy: Tensor, reference: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        desirable = batch.labels[:, 0] > 0.5
        logps = UnpairedLogps(policy[:, 0], reference[:, 0], desirable)
        kl_estimate = policy.new_zeros(())
        if batch.kl_sequences is not None:
            kl_sequences = batch.kl_sequences
            with torch.no_grad():
                policy_kl = sequence_logps(model, kl_sequences)[0]
            ref_kl = self._reference_scores(model, lambda m: sequence_logps(m, kl_sequences)[0])
            kl_estimate = (policy_kl - ref_kl).mean().to(policy.dtype)
        output = self.loss_function(logps, kl_estimate)
        return output.losses, {
            "rewards": output.rewards,
            "logps": policy[:, 0].detach(),
            "desirable": desirable.to(policy.dtype),
            "kl_estimate": kl_estimate.detach(),
        }


def _build_loss_function(config: AlignConfig) -> Callable[..., Any]:
    spec = LOSSES[config.loss]
    loss_config = config.loss_config()
    if config.sft_weight > 0:
        terms = [LossTerm(config.loss, 1.0, loss_config), LossTerm("sft", config.sft_weight)]
        return functools.partial(weighted_sum, terms=terms)
    return functools.partial(spec.function, config=loss_config)


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


def align(
    records: Iterable[Any],
    model: nn.Module | str | os.PathLike[str],
    tokenizer: Any,
    out_dir: str | os.PathLike[str],
    config: AlignConfig | None = None,
    train_config: TrainConfig | None = None,
    *,
    ref_model: nn.Module | str | os.PathLike[str] | None = None,
    resume: bool = True,
    callbacks: Sequence[TrainCallback] = (),
) -> AlignResult:
    """Align ``model`` to the preferences in ``records``; see the module docstring.

    ``model`` and ``ref_model`` are modules or paths of Hugging Face causal LMs
    (safetensors). ``tokenizer`` is a Hugging Face tokenizer (or a path to one).
    Metrics go to ``out_dir/metrics.jsonl``, checkpoints to
    ``out_dir/checkpoints`` and the final model to ``out_dir/model``. A run
    interrupted and started again with the same arguments resumes exactly.
    """
    config = config or AlignConfig()
    train_config = train_config or TrainConfig()
    out_dir = Path(out_dir)
    if isinstance(tokenizer, str | os.PathLike):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
    if not isinstance(model, nn.Module):
        model = load_causal_lm(model)
    if ref_model is not None and not isinstance(ref_model, nn.Module):
        ref_model = load_causal_lm(ref_model)
    if ref_model is not None and not config.needs_reference:
        raise ValueError(f"loss {config.loss!r} uses no reference model; drop ref_model (--ref).")
    pad_id = _pad_id(tokenizer)

    examples, data_stats = build_examples(records, tokenizer, config.kind, config.tokenize_config())
    device = _training_device(train_config)

    ref_table = None
    ref_cache_hit = None
    if config.needs_reference and config.precompute_ref:
        ref_table, ref_cache_hit = _precompute_reference(
            ref_model if ref_model is not None else model, examples, config, pad_id, device
        )
    # KTO's KL estimate scores mismatched pairs that change with every batch, so it keeps a reference.
    reference_in_step = config.needs_reference and (ref_table is None or config.loss == "kto")
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

    task = AlignTask(examples, config, pad_id=pad_id, ref_table=ref_table, reference_model=ref_model)
    result = train(model, task, train_config, out_dir, resume=resume, callbacks=callbacks)

    model_dir = None
    if config.save_model and int(os.environ.get("RANK", "0")) == 0:
        model_dir = save_aligned_model(
            model, tokenizer, out_dir / "model", merge_lora=config.merge_lora
        )
    return AlignResult(result, data_stats, model, model_dir, ref_cache_hit)


def _pad_id(tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0  # padding positions are masked out; any id will do


def _precompute_reference(
    reference: nn.Module,
    examples: Sequence[AlignExample],
    config: AlignConfig,
    pad_id: int,
    device: torch.device,
) -> tuple[Tensor, bool]:
    """(N, K) reference log-probs (NaN at empty slots) and whether they came from the cache."""
    rows = [
        (example.prompt_ids, completion)
        for example in examples
        for completion in example.completions
    ]
    key = reference_cache_key(weights_digest(reference), rows)
    cache_dir = None
    if config.cache_ref:
        cache_dir = Path(config.ref_cache_dir) if config.ref_cache_dir else default_cache_dir()

    def compute() -> Tensor:
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

    flat, hit = cached_reference_logps(compute, key, cache_dir)
    num_slots = max(len(example.completions) for example in examples)
    table = torch.full((len(examples), num_slots), math.nan)
    offset = 0
    for index, example in enumerate(examples):
        count = len(example.completions)
        table[index, :count] = flat[offset : offset + count]
        offset += count
    return table, hit

