"""``train_reward_model``: the recipe that trains one reward model on one kind of feedback.

The parts: records become examples over unique items (:mod:`prefkit.rm.examples`),
the model (:mod:`prefkit.rm.embedding_model`, :mod:`prefkit.rm.transformer_model`)
turns the items into a store it can batch, the task (:mod:`prefkit.rm.task`)
picks and applies the loss, and the shared loop (:mod:`prefkit.train.loop`) trains.

Truncation is explicit. Embedding mode embeds prompt and response separately,
each within ``max_length`` tokens (the prompt keeps its end, the response its
start); finetune/LoRA modes join them and, when too long, drop prompt tokens
from the start first. With ``truncation="drop"`` an example with any truncated
text is left out. The counts are printed and saved in config.json.

Pair models trained with held-out records end with temperature scaling (Guo et al.
2017): one T fitted on the held-out pairs by :func:`prefkit.eval.metrics.fit_temperature`
and stored in the spec, so ``compare``, ``prefkit rm score`` and ``prefkit eval``
give sigmoid(margin / T); the training summary keeps ECE, Brier and the reliability
bins before and after. Without held-out records T stays 1.

Several processes (``torchrun``, ``accelerate launch``): every process runs
:func:`train_reward_model` on the same records and settings. The held-out split is
seeded, so it is the same on every rank; the loop gives each rank its strided share
of every global batch and sums the gradients (the updates are those of one process
on the same global batch); at each evaluation and after training each rank scores
its share of the items and the outputs are summed over the ranks; the metrics, reward statistics and the
temperature are computed once, on rank 0, and broadcast; only rank 0 logs and
writes the model folder, and no rank returns before it is written.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from prefkit.data.records import AnyRecord, PairwiseRecord
from prefkit.data.split import split_eval_records
from prefkit.errors import UserInputError
from prefkit.eval.metrics import temperature_scaling
from prefkit.progress import ProgressCounter
from prefkit.rm.embedding_model import EmbeddingRewardModel
from prefkit.rm.encoder import resolve_backbone
from prefkit.rm.examples import (
    Examples,
    ItemIndex,
    TruncationCounts,
    apply_truncation,
    build_examples,
    data_kind,
    rating_attributes,
)
from prefkit.rm.length_debias import (
    LengthDebiasedModel,
    LengthDebiasTask,
    item_log_lengths,
    length_debias_summary,
    summary_line,
)
from prefkit.rm.model import FeatureStore, ItemStore, RewardModel, TokenStore
from prefkit.rm.result import RewardTrainResult, StageReport, temperature_summary
from prefkit.rm.spec import BackboneSpec, LoraSpec, RewardModelSpec, parse_feature_spec
from prefkit.rm.task import (
    LOSS_NAMES,
    RewardTask,
    choose_loss,
    examples_metrics,
)
from prefkit.rm.transformer_model import TransformerRewardModel, tokenize_pair
from prefkit.train.loop import Runtime, TrainCallback, TrainConfig, distributed, train


@dataclass
class RMTrainConfig:
    """Settings of ``prefkit rm train`` / :func:`train_reward_model`."""

    mode: Literal["embedding", "finetune", "lora"] = "embedding"
    """embedding: a small head on cached frozen-encoder embeddings (fast, CPU friendly);
    finetune: train the whole backbone with a scalar head; lora: LoRA adapters plus the head."""
    backbone: str | None = None
    """Local Hugging Face checkpoint folder (encoder or decoder); none = the packaged all-MiniLM-L6-v2."""
    loss: Literal[
        "auto",
        "bradley-terry",
        "bt-margin",
        "bt-strength",
        "davidson",
        "soft-label",
        "plackett-luce",
        "regression",
    ] = "auto"
    """Training loss; auto picks it from the data (pairs: Bradley-Terry, with margins/strengths
    when present; ties: Davidson; votes or soft labels: soft-label; rankings: plackett-luce;
    ratings: regression)."""
    features: str = "response,length,stats"
    """Embedding mode: comma-separated features from response, prompt, product (prompt x
    response), length (log characters and log tokens of the response), stats (surface
    statistics of the response: words, sentences, word length, punctuation, ...)."""
    head: Literal["mlp", "linear"] = "mlp"
    """Embedding mode: the head on the features."""
    hidden_size: int = 256
    """Width of the MLP head's hidden layer."""
    dropout: float = 0.3
    """Dropout in the head (embedding mode)."""
    max_length: int = 256
    """Longest input in tokens (per text in embedding mode; prompt + response otherwise)."""
    truncation: Literal["truncate", "drop"] = "truncate"
    """Inputs over max-length: truncate (the prompt loses its start, the response is kept) or drop
    the example. Counts are printed and saved either way."""
    centering: float = 0.0
    """Reward-centering coefficient c: adds c * (r_a + r_b)^2 to pair losses (0 disables)."""
    lora_r: int = 8
    """LoRA rank."""
    lora_alpha: float = 16.0
    """LoRA scaling alpha."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA path."""
    cache_dir: str | None = None
    """Embedding cache folder; none = $PREFKIT_CACHE/embeddings or ~/.cache/prefkit/embeddings."""
    embed_batch_size: int = 16
    """Texts per encoder forward pass when embedding."""
    eval_fraction: float = 0.0
    """Hold out this seeded fraction of the training records (seed: the loop's) as held-out
    data, for evaluation, early stopping and the temperature fit; 0 = none (give --eval-data
    instead, not both)."""
    fit_temperature: bool = True
    """Pair data with held-out records (--eval-data or --eval-fraction): fit the calibration
    temperature T of P(a preferred) = sigmoid((r_a - r_b) / T) on them after training;
    off = T stays 1."""
    length_debias: float = 0.0
    """Weight of the length-debiasing penalty (:mod:`prefkit.rm.length_debias`, ODIN): a length
    head is trained beside the reward and dropped at inference; 0 = off."""
    train: TrainConfig | None = None
    """Settings of the training loop (epochs, batch size, learning rate, seed, device, progress,
    ...); None = :func:`default_train_config` of the mode."""

    def __post_init__(self) -> None:
        if self.mode not in ("embedding", "finetune", "lora"):
            raise UserInputError(
                f"RMTrainConfig: mode must be embedding, finetune or lora, got {self.mode!r}."
            )
        if self.loss not in LOSS_NAMES:
            raise UserInputError(
                f"RMTrainConfig: loss must be one of {', '.join(LOSS_NAMES)}, got {self.loss!r}."
            )
        parse_feature_spec(self.features)
        if self.head not in ("mlp", "linear"):
            raise UserInputError(f"RMTrainConfig: head must be mlp or linear, got {self.head!r}.")
        if self.hidden_size < 1 or self.max_length < 4 or self.embed_batch_size < 1:
            raise UserInputError(
                "RMTrainConfig: hidden_size and embed_batch_size must be >= 1, max_length >= 4."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise UserInputError(f"RMTrainConfig: dropout must be in [0, 1), got {self.dropout}.")
        if self.truncation not in ("truncate", "drop"):
            raise UserInputError(
                f"RMTrainConfig: truncation must be truncate or drop, got {self.truncation!r}."
            )
        if not (math.isfinite(self.centering) and self.centering >= 0):
            raise UserInputError(f"RMTrainConfig: centering must be >= 0, got {self.centering}.")
        if not (math.isfinite(self.length_debias) and self.length_debias >= 0):
            raise UserInputError(
                f"RMTrainConfig: length_debias must be >= 0, got {self.length_debias}."
            )
        if self.lora_r < 1:
            raise UserInputError(f"RMTrainConfig: lora_r must be >= 1, got {self.lora_r}.")
        fraction = self.eval_fraction
        if (
            isinstance(fraction, bool)
            or not isinstance(fraction, int | float)
            or not 0 <= fraction < 1
        ):
            raise UserInputError(
                f"RMTrainConfig: eval_fraction must be a number in [0, 1) (0 = no held-out split), "
                f"got {fraction!r}; e.g. 0.1 holds out a tenth of the records."
            )
        if self.train is not None and not isinstance(self.train, TrainConfig):
            raise UserInputError(
                f"RMTrainConfig: train must be a TrainConfig or None, got {type(self.train).__name__}."
            )
        if self.mode == "embedding" and self.loop.zero_stage > 0:
            raise UserInputError(
                f"RMTrainConfig: zero stage {self.loop.zero_stage} (--zero-stage) shards the "
                "optimizer state of a large trainable model over processes; in embedding mode "
                "the encoder is frozen and only a small head trains, whose state fits anywhere. "
                "Use it with --mode finetune or lora, or leave it at 0."
            )

    @property
    def loop(self) -> TrainConfig:
        """The loop's settings: ``train``, or the mode's defaults."""
        return self.train if self.train is not None else default_train_config(self.mode)

    def train_config(
        self, *, has_eval: bool = False, num_examples: int | None = None
    ) -> TrainConfig:
        """The loop's settings for one run: no warmup in a run too short for it, no early
        stopping without held-out data, no length grouping for cached features."""
        loop = self.loop
        warmup_ratio = loop.warmup_ratio
        if num_examples is not None:
            total_steps = loop.epochs * math.ceil(num_examples / loop.batch_size)
            if math.ceil(warmup_ratio * total_steps) >= total_steps:
                warmup_ratio = 0.0  # a run this short has no room for warmup
        return dataclasses.replace(
            loop,
            warmup_ratio=warmup_ratio,
            early_stopping_patience=loop.early_stopping_patience if has_eval else None,
            # Heads on cached features have no length to group by.
            group_by_length=loop.group_by_length and self.mode != "embedding",
        )


DEFAULT_EPOCHS = {"embedding": 4, "finetune": 2, "lora": 2}
DEFAULT_LR = {"embedding": 3e-4, "finetune": 3e-5, "lora": 2e-4}


def default_train_config(mode: str = "embedding", **changes: object) -> TrainConfig:
    """The loop's settings for ``mode`` unless changed: 4 epochs and lr 3e-4 in embedding mode
    (2 and 3e-5 for finetune, 2 and 2e-4 for lora), batch 32, weight decay 0.01, warmup 5%."""
    values: dict[str, object] = {
        "epochs": DEFAULT_EPOCHS[mode],
        "lr": DEFAULT_LR[mode],
        "batch_size": 32,
        "weight_decay": 0.01,
        "warmup_ratio": 0.05,
        "group_by_length": mode != "embedding",
    }
    return TrainConfig(**{**values, **changes})  # type: ignore[arg-type]


def new_model(config: RMTrainConfig, loss_name: str, attributes: list[str] | None) -> RewardModel:
    """An untrained model for ``config`` (seeded, so its initial weights are reproducible)."""
    embedding = config.mode == "embedding"
    spec = RewardModelSpec(
        mode=config.mode,
        backbone=BackboneSpec.from_checkpoint(resolve_backbone(config.backbone)),
        max_length=config.max_length,
        truncation=config.truncation,
        loss=loss_name,
        attributes=tuple(attributes) if attributes else None,
        tie_model="davidson" if loss_name == "davidson" else None,
        features=parse_feature_spec(config.features) if embedding else None,
        hidden_sizes=(config.hidden_size,) if embedding and config.head == "mlp" else (),
        dropout=config.dropout if embedding else 0.0,
        lora=LoraSpec(config.lora_r, config.lora_alpha, config.lora_dropout)
        if config.mode == "lora"
        else None,
        length_debias=config.length_debias,
    )
    torch.manual_seed(config.loop.seed)
    if embedding:
        return EmbeddingRewardModel(
            spec, cache_dir=config.cache_dir, embed_batch_size=config.embed_batch_size
        )
    model = TransformerRewardModel.create(spec)
    torch.manual_seed(config.loop.seed)
    model.head.reset_parameters()
    return model


def build_store(
    model: RewardModel,
    index: ItemIndex,
    config: RMTrainConfig,
    progress: Callable[[int], None] | None = None,
) -> tuple[ItemStore, np.ndarray, np.ndarray]:
    """Items of ``index`` for ``model``, and (U,) bools: whose prompt, whose response lost tokens."""
    prompts, responses = index.prompts, index.responses
    if isinstance(model, EmbeddingRewardModel):
        features, prompt_tokens, response_tokens = model.featurize(prompts, responses, progress)
        prompt_cut = (prompt_tokens > config.max_length) & model.spec.reads_prompt_features
        response_cut = response_tokens > config.max_length
        return FeatureStore(torch.from_numpy(features)), prompt_cut, response_cut
    assert isinstance(model, TransformerRewardModel)
    sequences, prompt_cut, response_cut = [], [], []
    for prompt, response in zip(prompts, responses, strict=True):
        tokenized = tokenize_pair(model.tokenizer, prompt, response, config.max_length)
        sequences.append(tokenized.input_ids)
        prompt_cut.append(tokenized.prompt_truncated)
        response_cut.append(tokenized.response_truncated)
    store = TokenStore(sequences, model.tokenizer.pad_token_id, model.tokenizer.padding_side)
    return store, np.array(prompt_cut, dtype=bool), np.array(response_cut, dtype=bool)


def prepare(
    model: RewardModel,
    records: Sequence[AnyRecord],
    config: RMTrainConfig,
    attributes: list[str] | None,
    counts: TruncationCounts,
    progress: Callable[[int], None] | None = None,
) -> tuple[ItemStore, Examples]:
    """The store of the records' items and their examples after the truncation policy."""
    index = ItemIndex()
    examples = build_examples(records, index, attributes)
    store, prompt_cut, response_cut = build_store(model, index, config, progress)
    if isinstance(store, FeatureStore):
        # Texts are embedded alone: a text cut once is counted once.
        prompt_keys, response_keys = index.prompts, index.responses
    else:
        # Prompt and response are cut together, as one sequence per item.
        prompt_keys = response_keys = list(range(len(index.ids)))
    examples = apply_truncation(
        examples,
        prompt_cut,
        response_cut,
        counts,
        prompt_keys=prompt_keys,
        response_keys=response_keys,
    )
    return store, examples


def _embedding_progress(
    config: RMTrainConfig, description: str, runtime: Runtime
) -> ProgressCounter:
    """A bar for the embedding pass (it learns its total before the first batch); shown
    in embedding mode only, the other modes' tokenization is quick, and on rank 0 only."""
    return ProgressCounter(
        description,
        "text",
        enabled=config.loop.progress and config.mode == "embedding" and runtime.is_main,
    )


def _quiet(line: str) -> None:
    """The log of the ranks other than 0."""


def outputs_over_ranks(model: RewardModel, store: ItemStore, runtime: Runtime) -> torch.Tensor:
    """(U, K) outputs of every item of ``store`` on every rank, each rank scoring its
    share (:meth:`~prefkit.rm.model.RewardModel.store_outputs` with ``shard``)."""
    if runtime.world_size == 1:
        return model.store_outputs(store)
    share = model.store_outputs(store, shard=(runtime.rank, runtime.world_size))
    return runtime.sum_over_ranks(share)  # rows scored by one rank: x + 0 is exact


def train_reward_model(
    records: Sequence[AnyRecord],
    config: RMTrainConfig,
    out_dir: str | os.PathLike[str],
    *,
    eval_records: Sequence[AnyRecord] | None = None,
    resume: bool = True,
    callbacks: Sequence[TrainCallback] = (),
    log: Callable[[str], None] = print,
    source: str = "data",
) -> RewardTrainResult:
    """Train a reward model on ``records`` and save it to ``out_dir``.

    ``out_dir`` receives the model folder (see :mod:`prefkit.rm.model`) and
    ``training/`` (metrics.jsonl and checkpoints of the shared loop; rerunning the
    same command resumes from the newest checkpoint). The result has one stage, ``train``.
    Under ``torchrun`` / ``accelerate launch`` every process calls this with the same
    arguments (see the module docstring); all return the same model and metrics.
    """
    with distributed(config.loop) as runtime:
        return _train_reward_model(
            records,
            config,
            Path(out_dir),
            runtime,
            eval_records=eval_records,
            resume=resume,
            callbacks=callbacks,
            log=log if runtime.is_main else _quiet,
            source=source,
        )


def _train_reward_model(
    records: Sequence[AnyRecord],
    config: RMTrainConfig,
    out: Path,
    runtime: Runtime,
    *,
    eval_records: Sequence[AnyRecord] | None,
    resume: bool,
    callbacks: Sequence[TrainCallback],
    log: Callable[[str], None],
    source: str,
) -> RewardTrainResult:
    records, eval_records = hold_out(records, eval_records, config, log)
    kind = data_kind(records, source)
    loss_name = choose_loss(records, config.loss, source)
    if eval_records:
        eval_kind = data_kind(eval_records, "eval data")
        if eval_kind != kind:
            raise UserInputError(
                f"eval data holds {eval_kind} records but the training data holds {kind} records."
            )
    attributes = rating_attributes(records)
    model = new_model(config, loss_name, attributes)
    log(
        f"{len(records)} {kind} records; loss: {loss_name}; mode: {config.mode}; "
        f"backbone: {model.spec.backbone.path}"
    )

    counts = TruncationCounts(config.max_length, config.truncation)
    with _embedding_progress(config, "embedding", runtime) as progress:
        store, examples = prepare(model, records, config, attributes, counts, progress)
    log(counts.summary())
    if len(examples) == 0:
        raise UserInputError(
            f"{source}: no examples left after truncation policy '{config.truncation}'."
        )
    eval_counts = eval_examples = eval_store = None
    if eval_records:
        eval_counts = TruncationCounts(config.max_length, config.truncation)
        with _embedding_progress(config, "embedding eval data", runtime) as progress:
            eval_store, eval_examples = prepare(
                model, eval_records, config, attributes, eval_counts, progress
            )
        log("eval: " + eval_counts.summary())
    if isinstance(store, FeatureStore):
        model.head.set_standardization(store.features)  # type: ignore[union-attr]

    options = {
        "centering": config.centering,
        "eval_examples": eval_examples,
        "eval_store": eval_store,
        # Each rank scores its share of the held-out items at every evaluation.
        "score_store": functools.partial(outputs_over_ranks, runtime=runtime),
    }
    train_config = config.train_config(
        has_eval=eval_examples is not None, num_examples=len(examples)
    )
    length_summary = None
    if train_config.zero_stage > 0:  # in one process the loop refuses it
        sharded = "AdamW state and gradients" if train_config.zero_stage == 2 else "AdamW state"
        log(
            f"zero stage {train_config.zero_stage}: the {sharded} split between "
            f"{runtime.world_size} processes"
        )
    if config.length_debias > 0 and runtime.world_size > 1:
        log(
            f"length debias: the penalty's correlations are taken over each process's share "
            f"of a batch ({train_config.micro_batch_size(runtime.world_size)} examples), not "
            f"over the whole batch of {train_config.batch_size}"
        )
    if config.length_debias > 0:
        length_summary = _train_length_debiased(
            model,
            store,
            examples,
            loss_name,
            config,
            train_config,
            out,
            options,
            lengths=item_log_lengths(records, attributes),
            eval_lengths=item_log_lengths(eval_records, attributes) if eval_records else None,
            resume=resume,
            callbacks=callbacks,
            runtime=runtime,
        )
        result = length_summary.pop("result")
        log(summary_line(length_summary))
    else:
        task = RewardTask(store, examples, loss_name, **options)  # type: ignore[arg-type]
        result = train(
            model, task, train_config, out / "training", resume=resume, callbacks=callbacks
        )
    model.eval()

    # One pass over the training items gives both the training metrics and the reward statistics.
    train_outputs = outputs_over_ranks(model, store, runtime)  # (U, K)
    eval_outputs = None
    if eval_examples is not None and eval_store is not None:
        eval_outputs = outputs_over_ranks(model, eval_store, runtime)  # (U_eval, K)
    fitted = None
    if runtime.is_main:  # the fits run once; the other ranks take rank 0's
        fitted = _fit_after_training(
            model, train_outputs, examples, eval_outputs, eval_examples, kind, loss_name, config
        )
        fitted["eval_metrics"] = fitted["eval_metrics"] or dict(result.last_eval)
        for line in fitted.pop("log"):
            log(line)
    fitted = runtime.broadcast_object(fitted)
    train_metrics, eval_metrics = fitted["train_metrics"], fitted["eval_metrics"]
    calibration = fitted["calibration"]
    model.spec = dataclasses.replace(
        model.spec,
        reward_mean=fitted["reward_mean"],
        reward_std=fitted["reward_std"],
        temperature=calibration["temperature"] if calibration is not None else 1.0,
        training={
            "records": len(records),
            "kind": kind,
            "loss": loss_name,
            "config": {**dataclasses.asdict(config), "train": dataclasses.asdict(train_config)},
            "truncation": dataclasses.asdict(counts),
            "eval_truncation": dataclasses.asdict(eval_counts) if eval_counts else None,
            "train_metrics": train_metrics,
            "eval_metrics": eval_metrics,
            "steps": result.global_step,
            "calibration": calibration,
            "length_debias": length_summary,
        },
    )
    if runtime.is_main:
        model.save(out)
    stage = StageReport(result, counts, train_metrics, eval_counts, eval_metrics)
    return RewardTrainResult(model, out, loss_name, {"train": stage}, calibration)


def _fit_after_training(
    model: RewardModel,
    train_outputs: torch.Tensor,
    examples: Examples,
    eval_outputs: torch.Tensor | None,
    eval_examples: Examples | None,
    kind: str,
    loss_name: str,
    config: RMTrainConfig,
) -> dict[str, Any]:
    """From the outputs of the trained model on the training items (U, K) and the held-out
    items: the metrics of both, the reward mean and std on the training items, the
    temperature fit (pairs with held-out records) and the lines to log about it."""
    all_rewards = train_outputs.mean(dim=1).numpy()
    fitted: dict[str, Any] = {
        "train_metrics": examples_metrics(model, train_outputs, examples, loss_name),
        "eval_metrics": {},
        "reward_mean": float(all_rewards.mean()),
        "reward_std": float(all_rewards.std()) or 1.0,
        "calibration": None,
        "log": [],
    }
    if eval_outputs is not None and eval_examples is not None:
        fitted["eval_metrics"] = examples_metrics(model, eval_outputs, eval_examples, loss_name)
    if kind == PairwiseRecord.kind and eval_outputs is not None and eval_examples is not None:
        if config.fit_temperature:
            calibration = temperature_from_outputs(eval_outputs, eval_examples)
            fitted["calibration"] = calibration
            fitted["log"].append(temperature_summary(calibration))
        else:
            fitted["log"].append("temperature: not fitted (--no-fit-temperature); T = 1")
    elif kind == PairwiseRecord.kind and config.fit_temperature:
        fitted["log"].append(
            "temperature: not fitted, no held-out pairs (give --eval-data or --eval-fraction); "
            "T = 1"
        )
    return fitted


def _train_length_debiased(
    model: RewardModel,
    store: ItemStore,
    examples: Examples,
    loss_name: str,
    config: RMTrainConfig,
    train_config: TrainConfig,
    out: Path,
    options: dict[str, Any],
    *,
    lengths: torch.Tensor,
    eval_lengths: torch.Tensor | None,
    resume: bool,
    callbacks: Sequence[TrainCallback],
    runtime: Runtime,
) -> dict[str, Any]:
    """Train ``model`` in place with a length head beside it (then dropped); the reward-length
    correlations of :func:`~prefkit.rm.length_debias.length_debias_summary` (rank 0's on
    every rank) and the loop's result under ``"result"``."""
    torch.manual_seed(config.loop.seed)
    joint = LengthDebiasedModel(model)
    task = LengthDebiasTask(
        store, examples, loss_name, lengths=lengths, weight=config.length_debias, **options
    )
    result = train(joint, task, train_config, out / "training", resume=resume, callbacks=callbacks)
    joint.eval()
    summary = None
    if runtime.is_main:  # the other ranks take rank 0's summary
        summary = length_debias_summary(
            joint, config.length_debias, store, lengths, options["eval_store"], eval_lengths
        )
    summary = runtime.broadcast_object(summary)
    joint.release()
    return {**summary, "result": result}


def hold_out(
    records: Sequence[AnyRecord],
    eval_records: Sequence[AnyRecord] | None,
    config: RMTrainConfig,
    log: Callable[[str], None],
) -> tuple[Sequence[AnyRecord], Sequence[AnyRecord] | None]:
    """(training, held-out) records: ``config.eval_fraction`` of ``records`` held out at random
    with the loop's seed, or the records and ``eval_records`` as given."""
    if config.eval_fraction == 0:
        return records, eval_records
    if eval_records:
        raise UserInputError(
            "held-out records and eval_fraction are both given; either hold out a fraction of "
            "the training records (--eval-fraction) or pass held-out records (--eval-data)."
        )
    training, held_out = split_eval_records(records, config.eval_fraction, config.loop.seed)
    log(
        f"held out {len(held_out)} of {len(training) + len(held_out)} records at random "
        f"(--eval-fraction {config.eval_fraction:g}, seed {config.loop.seed})"
    )
    return training, held_out


def held_out_temperature(
    model: RewardModel, store: ItemStore, examples: Examples
) -> dict[str, Any]:
    """:func:`~prefkit.eval.metrics.temperature_scaling` on held-out pair ``examples``: the
    fitted T and the calibration before and after (human ties left out)."""
    return temperature_from_outputs(model.store_outputs(store), examples)


def temperature_from_outputs(outputs: torch.Tensor, examples: Examples) -> dict[str, Any]:
    """:func:`held_out_temperature` from the (U, K) outputs of the held-out items."""
    rewards = outputs.mean(dim=1).numpy()  # (U,)
    positions = examples.positions.numpy()  # (E, 2)
    return temperature_scaling(
        rewards[positions[:, 0]], rewards[positions[:, 1]], examples.targets["outcomes"].numpy()
    )
