"""Multi-objective reward model: attribute regression, then a prompt-conditioned gate.

The recipe of ArmoRM (Wang, Xiong, Xie, Zhao, Zhang 2024, "Interpretable
Preferences via Multi-Objective Reward Modeling and Mixture-of-Experts",
arXiv:2406.12845), on frozen-encoder embeddings:

1. **Regression** (stage 1, paper section 3.1). A head maps the features of one
   (prompt, response) (see :mod:`prefkit.rm.heads`) to K attribute scores
   ``r = (r_1..r_K)``. It is trained on rating records with the squared error
   over the attributes each record rates (missing ones are masked, not zero).
2. **Length decorrelation** (optional, paper section 3.2). Each attribute is
   replaced by ``r'_k = r_k - lambda_k (l - l_mean)``, with ``l = log(1 +
   characters)`` of the response and ``lambda_k = Cov(r_k, l) / Var(l)`` on the
   responses of the pair data (the reference distribution), so every ``r'_k`` has
   zero Pearson correlation with length there.
3. **Gate** (stage 2, paper section 3.3). With the regression head frozen, an
   MLP over the prompt embedding gives mixing weights
   ``g(x) = softmax(gate(x) / T)`` and the reward is
   ``R(x, y) = s * sum_k g_k(x) r'_k(x, y)``; the gate and the scale ``s`` are
   trained with Bradley-Terry on pair records.

Truncation is explicit, as in :mod:`prefkit.rm.train` (:func:`prefkit.rm.examples.apply_truncation`): each text is embedded
within ``max_length`` tokens (a prompt keeps its end, a response its start).
Stage 1 reads prompts only when the regression features do (``prompt``,
``product``); the gate always reads them. With ``truncation="drop"`` a rating
record (stage 1) or pair record (stage 2) holding a truncated text that its
stage reads is left out. The counts of each stage are printed and saved in
config.json (``training.regression.truncation``, ``training.gate.truncation``).

Each stage can be evaluated after every epoch on held-out records: a seeded
``eval_fraction`` of the rating and of the pair records, or held-out records
given separately. Stage 1 reports the mean squared error (``loss``, and
``mse/<attribute>``), stage 2 the Bradley-Terry ``loss`` and pairwise
``accuracy``. With ``early_stopping_patience`` each stage stops after that many
epochs without a lower held-out loss and keeps its best weights, so stage 2
reads the attributes of stage 1's best head.

Both stages run in the shared loop (:mod:`prefkit.train.loop`) with their own
checkpoints; a run interrupted in either stage and started again resumes where
it stopped (a finished stage 1 is reloaded from its last checkpoint, not
retrained) and ends with the weights of the uninterrupted run.

How this departs from the paper:

- The backbone is any frozen encoder (mean-pooled), not Llama-3 8B's last token,
  and the gate reads the prompt's own embedding rather than the prompt's last
  token in the joint sequence.
- The regression head may be an MLP; the default is linear, as in the paper.
- ArmoRM subtracts from each objective a multiple of its *verbosity objective*,
  choosing ``lambda_k`` by search so that the *Spearman* correlation is about 0 on
  UltraFeedback. Rating data here need not have a verbosity attribute, so the
  penalty uses the response's log length and the closed-form least-squares
  ``lambda_k``, which makes the *Pearson* correlation exactly 0 on the reference
  responses. Because the gate depends on the prompt, the mixed reward is
  decorrelated only approximately (exactly when the gate is constant).
- ArmoRM's gate divides the logits by a fixed temperature and multiplies the
  weights by a learned scale; here the temperature is a config field and the
  scale is learned as ``exp(log_reward_scale)``, so it stays positive.
- Ties are not modelled in stage 2 (Bradley-Terry only); records with ties are
  rejected with an error.

The model class is :class:`~prefkit.rm.multiobjective_model.MultiObjectiveRewardModel`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from prefkit.data.records import PairwiseRecord, RatingRecord
from prefkit.data.split import split_eval_records
from prefkit.errors import UserInputError
from prefkit.losses.reward import OUTCOME_A_WINS, bradley_terry_loss, rating_regression_loss
from prefkit.progress import ProgressCounter
from prefkit.rm.encoder import FrozenEncoder, resolve_backbone
from prefkit.rm.examples import (
    Examples,
    ItemIndex,
    TruncationCounts,
    apply_truncation,
    build_examples,
    rating_attributes,
)
from prefkit.rm.multiobjective_model import (
    MODE,
    MultiObjectiveItems,
    MultiObjectiveRewardModel,
    length_decorrelation_coefficients,
)
from prefkit.rm.result import RewardTrainResult, StageReport
from prefkit.rm.spec import BackboneSpec, RewardModelSpec, parse_feature_spec
from prefkit.train.loop import TrainCallback, TrainConfig, TrainResult, move_to_device, train


@dataclass
class MultiObjectiveConfig:
    """Settings of :func:`train_multiobjective`."""

    backbone: str | None = None
    """Local Hugging Face encoder folder; none = the packaged all-MiniLM-L6-v2."""
    features: str = "response,prompt,product,length"
    """Features the regression head reads, comma-separated (see :mod:`prefkit.rm.heads`)."""
    regression_head: Literal["linear", "mlp"] = "linear"
    """Stage 1 head: linear (ArmoRM's linear probe) or an MLP with one hidden layer."""
    hidden_size: int = 256
    """Width of the MLP regression head's hidden layer (unused when linear)."""
    dropout: float = 0.0
    """Dropout in the regression head during stage 1."""
    gate_hidden_size: int = 64
    """Width of the gate's hidden layers."""
    gate_hidden_layers: int = 2
    """Hidden layers of the gate MLP (0 = a linear map from prompt embedding to logits)."""
    gate_temperature: float = 1.0
    """T in softmax(logits / T); larger T gives flatter mixing weights at the start."""
    length_decorrelation: bool = False
    """Subtract from each attribute its least-squares component along log response length,
    fitted on the pair data's responses (ArmoRM's verbosity penalty; see the module docstring)."""
    max_length: int = 256
    """Longest text in tokens given to the encoder (longer prompts keep their end, responses their start)."""
    truncation: Literal["truncate", "drop"] = "truncate"
    """Texts over max-length: truncate them, or drop the rating record (stage 1) or pair record
    (stage 2) holding one that its stage reads. Counts are printed and saved per stage either way."""
    regression_epochs: int = 30
    """Stage 1 passes over the rating records."""
    gate_epochs: int = 30
    """Stage 2 passes over the pair records."""
    batch_size: int = 32
    """Examples per optimizer step in both stages."""
    regression_lr: float = 3e-3
    """Peak learning rate of stage 1."""
    gate_lr: float = 3e-3
    """Peak learning rate of stage 2."""
    weight_decay: float = 0.0
    """AdamW weight decay on matrices, both stages."""
    seed: int = 0
    """Seed of initialisation, dropout, batch order and the held-out split."""
    eval_fraction: float = 0.0
    """Hold out this fraction of the rating records and of the pair records, drawn at random with the
    seed, and evaluate each stage on its held-out records after every epoch; 0 = none. Not together
    with held-out records given separately (--eval-ratings, --eval-pairs)."""
    early_stopping_patience: int | None = None
    """With held-out records for both stages: stop a stage after this many epochs without a lower
    held-out loss (stage 1: squared error, stage 2: Bradley-Terry) and keep its best weights."""
    cache_dir: str | None = None
    """Embedding cache folder; none = $PREFKIT_CACHE/embeddings or ~/.cache/prefkit/embeddings."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train; auto picks CUDA when available."""
    progress: bool = False
    """Show progress bars."""

    def __post_init__(self) -> None:
        parse_feature_spec(self.features)
        if self.regression_head not in ("linear", "mlp"):
            raise UserInputError(
                f"MultiObjectiveConfig: regression_head must be linear or mlp, got {self.regression_head!r}."
            )
        for name in (
            "hidden_size",
            "gate_hidden_size",
            "regression_epochs",
            "gate_epochs",
            "batch_size",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserInputError(
                    f"MultiObjectiveConfig: {name} must be an integer >= 1, got {value!r}."
                )
        if (
            isinstance(self.gate_hidden_layers, bool)
            or not isinstance(self.gate_hidden_layers, int)
            or self.gate_hidden_layers < 0
        ):
            raise UserInputError(
                f"MultiObjectiveConfig: gate_hidden_layers must be an integer >= 0, got {self.gate_hidden_layers!r}."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise UserInputError(
                f"MultiObjectiveConfig: dropout must be in [0, 1), got {self.dropout}."
            )
        if not (math.isfinite(self.gate_temperature) and self.gate_temperature > 0):
            raise UserInputError(
                f"MultiObjectiveConfig: gate_temperature must be > 0, got {self.gate_temperature}."
            )
        if self.max_length < 4:
            raise UserInputError(
                f"MultiObjectiveConfig: max_length must be >= 4, got {self.max_length}."
            )
        if self.truncation not in ("truncate", "drop"):
            raise UserInputError(
                f"MultiObjectiveConfig: truncation must be truncate or drop, got {self.truncation!r}."
            )
        fraction = self.eval_fraction
        if (
            isinstance(fraction, bool)
            or not isinstance(fraction, int | float)
            or not 0 <= fraction < 1
        ):
            raise UserInputError(
                f"MultiObjectiveConfig: eval_fraction must be a number in [0, 1) (0 = no held-out split), "
                f"got {fraction!r}; e.g. 0.1 holds out a tenth of the rating and of the pair records."
            )
        # The loop's config validates lr, weight decay, seed, device and early stopping.
        self.stage_config("regression")
        self.stage_config("gate")

    def stage_config(self, stage: Literal["regression", "gate"]) -> TrainConfig:
        regression = stage == "regression"
        return TrainConfig(
            epochs=self.regression_epochs if regression else self.gate_epochs,
            batch_size=self.batch_size,
            lr=self.regression_lr if regression else self.gate_lr,
            weight_decay=self.weight_decay,
            schedule="linear",
            seed=self.seed,
            group_by_length=False,  # cached features have no length to group by
            early_stopping_patience=self.early_stopping_patience,  # watches the held-out "loss"
            device=self.device,
            progress=self.progress,
        )


@dataclass
class RegressionBatch:
    items: MultiObjectiveItems
    """The B rated items."""
    ratings: torch.Tensor
    """(B, K) targets; NaN where not rated."""
    observed: torch.Tensor
    """(B, K) True where rated."""


@dataclass
class GateBatch:
    adjusted_chosen: torch.Tensor
    """(B, K) frozen, length-adjusted attributes of the preferred responses."""
    adjusted_rejected: torch.Tensor
    """(B, K) the same for the other responses."""
    prompt_embeddings: torch.Tensor
    """(B, D) the pair's prompt embedding."""
    weights: torch.Tensor
    """(B,) record weights (1 when absent)."""


def regression_losses(
    model: MultiObjectiveRewardModel, batch: RegressionBatch
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(B,) masked squared error of the attribute predictions (ArmoRM stage 1)."""
    result = rating_regression_loss(model(batch.items), batch.ratings, batch.observed)
    return result.losses, result.metrics


def gate_losses(
    model: MultiObjectiveRewardModel, batch: GateBatch
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(B,) Bradley-Terry loss of the gated rewards (ArmoRM stage 2), times record weights."""
    gate_weights = model.gate_probabilities(
        batch.prompt_embeddings
    )  # (B, K), shared by both responses
    chosen = model.mix(gate_weights, batch.adjusted_chosen)  # (B,)
    rejected = model.mix(gate_weights, batch.adjusted_rejected)  # (B,)
    result = bradley_terry_loss(chosen, rejected)
    return result.losses * batch.weights, result.metrics


@dataclass
class StageData:
    """The examples of one stage over their items, after the truncation policy."""

    items: MultiObjectiveItems
    """The U unique (prompt, response) items of the records, dropped or not."""
    examples: Examples
    """The E examples kept; ``positions`` (E, 1) or (E, 2) are rows of ``items``."""
    truncation: TruncationCounts


def prepare_stage(
    model: MultiObjectiveRewardModel,
    records: Sequence[RatingRecord] | Sequence[PairwiseRecord],
    attributes: list[str] | None,
    config: MultiObjectiveConfig,
    *,
    reads_prompt: bool,
) -> StageData:
    """Featurize the records of one stage and apply ``config.truncation``, counting what it did.

    A text counts as truncated when its untruncated token count exceeds
    ``max_length``; a prompt counts only when the stage reads it (``reads_prompt``).
    Counts are of unique texts; with the drop policy an example goes when any text
    it reads was truncated.
    """
    index = ItemIndex()
    examples = build_examples(list(records), index, attributes)
    prompts, responses = index.prompts, index.responses
    with ProgressCounter("embedding", "text", enabled=config.progress) as progress:
        items, prompt_tokens, response_tokens = model.featurize_with_token_counts(
            prompts, responses, progress
        )
    counts = TruncationCounts(config.max_length, config.truncation)
    examples = apply_truncation(
        examples,
        (prompt_tokens > config.max_length) & reads_prompt,
        response_tokens > config.max_length,
        counts,
        prompt_keys=prompts,
        response_keys=responses,
    )
    return StageData(items, examples, counts)


@dataclass
class RatedItems:
    """Stage 1 examples, one per rating record, over cached items."""

    items: MultiObjectiveItems
    """The U items the examples point into."""
    positions: torch.Tensor
    """(E,) item of each example."""
    ratings: torch.Tensor
    """(E, K) targets; NaN where not rated."""
    observed: torch.Tensor
    """(E, K) True where rated."""

    @classmethod
    def from_stage(cls, data: StageData) -> RatedItems:
        observed = data.examples.targets["observed"]
        ratings = torch.where(
            observed, data.examples.targets["ratings"], torch.tensor(float("nan"))
        )
        return cls(data.items, data.examples.positions[:, 0], ratings, observed)

    def __len__(self) -> int:
        return len(self.positions)

    def batch(self, indices: list[int]) -> RegressionBatch:
        rows = torch.as_tensor(indices, dtype=torch.long)
        return RegressionBatch(
            self.items.select(self.positions[rows]), self.ratings[rows], self.observed[rows]
        )


@dataclass
class GatePairs:
    """Stage 2 examples, one per pair record, over items whose attributes are frozen."""

    adjusted: torch.Tensor
    """(U, K) length-adjusted attributes of the items, fixed after stage 1."""
    prompt_embeddings: torch.Tensor
    """(U, D) prompt embedding of each item."""
    chosen: torch.Tensor
    """(E,) item of the preferred response."""
    rejected: torch.Tensor
    """(E,) item of the other response."""
    weights: torch.Tensor
    """(E,) record weights (1 when absent)."""

    @classmethod
    def from_stage(cls, model: MultiObjectiveRewardModel, data: StageData) -> GatePairs:
        """The pairs of ``data`` with the attributes the model now gives their items."""
        attribute_values = torch.from_numpy(model.evaluate_items(data.items)[0])  # (U, K)
        adjusted = _adjusted_attributes(model, attribute_values, data.items.log_lengths)
        a_wins = data.examples.targets["outcomes"] == OUTCOME_A_WINS
        first, second = data.examples.positions[:, 0], data.examples.positions[:, 1]
        return cls(
            adjusted,
            data.items.prompt_embeddings,
            torch.where(a_wins, first, second),
            torch.where(a_wins, second, first),
            data.examples.targets["weights"],
        )

    def __len__(self) -> int:
        return len(self.chosen)

    def batch(self, indices: list[int]) -> GateBatch:
        rows = torch.as_tensor(indices, dtype=torch.long)
        chosen, rejected = self.chosen[rows], self.rejected[rows]
        return GateBatch(
            self.adjusted[chosen],
            self.adjusted[rejected],
            self.prompt_embeddings[chosen],
            self.weights[rows],
        )


@torch.no_grad()
def regression_metrics(model: MultiObjectiveRewardModel, rated: RatedItems) -> dict[str, float]:
    """``loss``, the mean stage 1 loss over the examples, and ``mse/<attribute>``, the mean
    squared error of each attribute over the examples that rate it."""
    predicted = torch.from_numpy(model.evaluate_items(rated.items)[0])[rated.positions]  # (E, K)
    losses = rating_regression_loss(predicted, rated.ratings, rated.observed).losses  # (E,)
    squared = torch.where(
        rated.observed, predicted - rated.ratings, torch.zeros_like(predicted)
    ).square()
    counts = rated.observed.sum(dim=0).clamp(min=1)  # (K,)
    metrics = {"loss": float(losses.double().mean())}
    for column, name in enumerate(model.attributes or []):
        metrics[f"mse/{name}"] = float(squared[:, column].double().sum() / counts[column])
    return metrics


@torch.no_grad()
def gate_metrics(model: MultiObjectiveRewardModel, pairs: GatePairs) -> dict[str, float]:
    """``loss``, the mean stage 2 loss (record-weighted Bradley-Terry), and pairwise ``accuracy``."""
    was_training = model.training
    model.eval()
    batch = move_to_device(pairs.batch(list(range(len(pairs)))), next(model.parameters()).device)
    losses, metrics = gate_losses(model, batch)
    model.train(was_training)
    return {
        "loss": float(losses.double().mean()),
        "accuracy": float(metrics["accuracy"].double().mean()),
    }


StageLosses = Callable[
    [MultiObjectiveRewardModel, Any], tuple[torch.Tensor, dict[str, torch.Tensor]]
]
StageMetrics = Callable[[MultiObjectiveRewardModel, Any], dict[str, float]]


class StageTask:
    """One stage as a :class:`~prefkit.train.loop.TrainTask`: one example per record of
    ``examples`` (:class:`RatedItems` for stage 1, :class:`GatePairs` for stage 2)."""

    def __init__(self, examples: RatedItems | GatePairs, losses: StageLosses):
        self.examples = examples
        self.losses = losses

    def example_lengths(self) -> list[int]:
        return [1] * len(self.examples)

    def collate(self, indices: list[int]) -> RegressionBatch | GateBatch:
        return self.examples.batch(indices)

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.losses(model, batch)  # type: ignore[arg-type]


class EvaluatedStageTask(StageTask):
    """A stage that the loop also evaluates on held-out examples (a class of its own, so that
    a run without held-out records writes no empty eval lines)."""

    def __init__(
        self,
        examples: RatedItems | GatePairs,
        losses: StageLosses,
        held_out: RatedItems | GatePairs,
        metrics: StageMetrics,
    ):
        super().__init__(examples, losses)
        self.held_out = held_out
        self.metrics = metrics

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return self.metrics(model, self.held_out)  # type: ignore[arg-type]


def stage_task(
    examples: RatedItems | GatePairs,
    losses: StageLosses,
    held_out: RatedItems | GatePairs | None,
    metrics: StageMetrics,
) -> StageTask:
    """The task of a stage, evaluated on ``held_out`` when there is one."""
    if held_out is None:
        return StageTask(examples, losses)
    return EvaluatedStageTask(examples, losses, held_out, metrics)


def _check_records(
    records: Sequence[Any], expected: type[RatingRecord] | type[PairwiseRecord], name: str
) -> None:
    for position, record in enumerate(records):
        if not isinstance(record, expected):
            raise UserInputError(
                f"train_multiobjective: {name}[{position}] (id {getattr(record, 'id', '?')!r}) is a "
                f"{getattr(record, 'kind', type(record).__name__)} record; expected {expected.kind} records."
            )
        if isinstance(record, PairwiseRecord) and record.is_tie:
            raise UserInputError(
                f"train_multiobjective: {name}[{position}] (id {record.id!r}) is a tie; the gate is "
                "trained with Bradley-Terry, which has no ties. Remove tied pairs first."
            )


def _check_all_records(
    rating_records: Sequence[Any],
    pair_records: Sequence[Any],
    eval_rating_records: Sequence[Any] | None,
    eval_pair_records: Sequence[Any] | None,
) -> list[str]:
    """The attributes to regress, after checking every record's kind."""
    if not rating_records:
        raise UserInputError(
            "train_multiobjective: no rating records; stage 1 needs attribute ratings."
        )
    if not pair_records:
        raise UserInputError(
            "train_multiobjective: no pair records; stage 2 (the gate) needs preferences."
        )
    _check_records(rating_records, RatingRecord, "rating_records")
    _check_records(pair_records, PairwiseRecord, "pair_records")
    _check_records(eval_rating_records or [], RatingRecord, "eval_rating_records")
    _check_records(eval_pair_records or [], PairwiseRecord, "eval_pair_records")
    attributes = rating_attributes(rating_records) or []
    if len(attributes) < 2:
        raise UserInputError(
            f"train_multiobjective: the rating records rate {len(attributes)} attribute(s) "
            f"({', '.join(attributes) or 'none'}); a gate needs at least 2. Use prefkit rm train for one."
        )
    unknown = sorted(set(rating_attributes(eval_rating_records or []) or []) - set(attributes))
    if unknown:
        raise UserInputError(
            f"train_multiobjective: the held-out rating records rate {', '.join(unknown)}, which no "
            f"training rating record rates (those rate {', '.join(attributes)}); the model would "
            "not predict them. Remove them or rate them in the training records too."
        )
    return attributes


def check_evaluation_settings(
    config: MultiObjectiveConfig, *, eval_ratings_given: bool, eval_pairs_given: bool
) -> None:
    """Raise ValueError when the held-out data settings contradict each other (before any work)."""
    if config.eval_fraction > 0 and (eval_ratings_given or eval_pairs_given):
        raise UserInputError(
            "train_multiobjective: held-out records and eval_fraction are both given; either hold out "
            "a fraction of the training records (--eval-fraction) or pass held-out records "
            "(--eval-ratings, --eval-pairs)."
        )
    if config.early_stopping_patience is not None and config.eval_fraction == 0:
        missing = [
            flag
            for flag, given in (
                ("--eval-ratings", eval_ratings_given),
                ("--eval-pairs", eval_pairs_given),
            )
            if not given
        ]
        if missing:
            raise UserInputError(
                f"train_multiobjective: early_stopping_patience is set but {' and '.join(missing)} "
                "held-out records are missing; each stage stops on its own held-out loss. Set "
                "eval_fraction (--eval-fraction), pass held-out records for both stages, or drop "
                "early stopping."
            )


def _hold_out(
    records: Sequence[Any], config: MultiObjectiveConfig, name: str
) -> tuple[list[Any], list[Any]]:
    try:
        return split_eval_records(records, config.eval_fraction, config.seed)
    except ValueError as error:
        raise UserInputError(f"train_multiobjective: {name}: {error}") from None


def train_multiobjective(
    rating_records: Sequence[RatingRecord],
    pair_records: Sequence[PairwiseRecord],
    config: MultiObjectiveConfig,
    out_dir: str | os.PathLike[str],
    *,
    eval_rating_records: Sequence[RatingRecord] | None = None,
    eval_pair_records: Sequence[PairwiseRecord] | None = None,
    resume: bool = True,
    encoder: FrozenEncoder | None = None,
    callbacks: Sequence[TrainCallback] = (),
    log: Callable[[str], None] = print,
) -> RewardTrainResult:
    """Train both stages and save the model folder to ``out_dir``.

    ``eval_rating_records`` and ``eval_pair_records`` (or ``config.eval_fraction``
    of each, not both) are evaluated after every epoch of their stage; early
    stopping watches their loss. ``out_dir`` also receives
    ``training/regression/`` and ``training/gate/`` (metrics.jsonl and
    checkpoints of the shared loop; a rerun resumes). The result has two stages,
    ``regression`` and ``gate``. ``callbacks`` go to the
    loop of each stage in turn (stage 1's events first; ``global_step`` counts
    each stage from 1). ``log`` gets the truncation counts of each stage and
    early stops.
    """
    eval_rating_records = list(eval_rating_records) if eval_rating_records is not None else None
    eval_pair_records = list(eval_pair_records) if eval_pair_records is not None else None
    attributes = _check_all_records(
        rating_records, pair_records, eval_rating_records, eval_pair_records
    )
    check_evaluation_settings(
        config,
        eval_ratings_given=bool(eval_rating_records),
        eval_pairs_given=bool(eval_pair_records),
    )
    if config.eval_fraction > 0:
        rating_records, eval_rating_records = _hold_out(rating_records, config, "rating records")
        pair_records, eval_pair_records = _hold_out(pair_records, config, "pair records")
    out = Path(out_dir)
    spec = RewardModelSpec(
        mode=MODE,
        backbone=BackboneSpec.from_checkpoint(resolve_backbone(config.backbone)),
        max_length=config.max_length,
        truncation=config.truncation,
        loss="regression+bradley-terry",
        attributes=tuple(attributes),
        features=parse_feature_spec(config.features),
        hidden_sizes=(config.hidden_size,) if config.regression_head == "mlp" else (),
        dropout=config.dropout,
        gate_hidden_sizes=(config.gate_hidden_size,) * config.gate_hidden_layers,
        gate_temperature=config.gate_temperature,
        length_decorrelation=config.length_decorrelation,
    )
    torch.manual_seed(config.seed)
    model = MultiObjectiveRewardModel(spec, cache_dir=config.cache_dir, encoder=encoder)

    # Stage 1 reads prompts only through the regression features; the gate always reads them.
    regression_reads_prompt = spec.reads_prompt_features
    stages = {
        "rating records (regression)": (rating_records, attributes, regression_reads_prompt),
        "pair records (gate)": (pair_records, None, True),
        "held-out rating records": (eval_rating_records, attributes, regression_reads_prompt),
        "held-out pair records": (eval_pair_records, None, True),
    }
    prepared: dict[str, StageData | None] = {}
    for name, (records, stage_attributes, reads_prompt) in stages.items():
        if not records:
            prepared[name] = None
            continue
        data = prepare_stage(model, records, stage_attributes, config, reads_prompt=reads_prompt)
        log(f"{name}: {data.truncation.summary()}")
        if len(data.examples) == 0:
            raise UserInputError(
                f"train_multiobjective: no {name} left after truncation policy "
                f"'{config.truncation}' at max_length {config.max_length}; raise max_length or use truncate."
            )
        prepared[name] = data
    ratings, pairs, eval_ratings, eval_pairs = prepared.values()
    assert ratings is not None and pairs is not None
    model.head.set_standardization(ratings.items.features)
    model.gate.set_standardization(pairs.items.prompt_embeddings)

    # Stage 1: the regression head alone.
    _set_trainable(model, regression=True)
    rated = RatedItems.from_stage(ratings)
    held_out_rated = RatedItems.from_stage(eval_ratings) if eval_ratings is not None else None
    regression_task = stage_task(rated, regression_losses, held_out_rated, regression_metrics)
    regression_result = train(
        model,
        regression_task,
        config.stage_config("regression"),
        out / "training" / "regression",
        resume=resume,
        callbacks=callbacks,
    )
    _log_early_stop("regression", regression_result, log)
    model.eval()

    # Length decorrelation on the responses of the pairs kept, then the frozen attributes stage 2 reads.
    reference = torch.unique(pairs.examples.positions)  # items the kept pairs read
    if config.length_decorrelation:
        pair_attributes = torch.from_numpy(model.evaluate_items(pairs.items.select(reference))[0])
        coefficients, center = length_decorrelation_coefficients(
            pair_attributes, pairs.items.log_lengths[reference]
        )
        model.length_coefficients.copy_(coefficients)
        model.length_center.copy_(center)

    # Stage 2: the gate and the reward scale, on frozen attributes.
    _set_trainable(model, regression=False)
    gate_pairs = GatePairs.from_stage(model, pairs)
    held_out_pairs = GatePairs.from_stage(model, eval_pairs) if eval_pairs is not None else None
    gate_task = stage_task(gate_pairs, gate_losses, held_out_pairs, gate_metrics)
    gate_result = train(
        model,
        gate_task,
        config.stage_config("gate"),
        out / "training" / "gate",
        resume=resume,
        callbacks=callbacks,
    )
    _log_early_stop("gate", gate_result, log)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(True)

    regression = StageReport(
        regression_result,
        ratings.truncation,
        regression_metrics(model, rated),
        eval_ratings.truncation if eval_ratings is not None else None,
        regression_metrics(model, held_out_rated) if held_out_rated is not None else {},
    )
    gate = StageReport(
        gate_result,
        pairs.truncation,
        gate_metrics(model, gate_pairs),
        eval_pairs.truncation if eval_pairs is not None else None,
        gate_metrics(model, held_out_pairs) if held_out_pairs is not None else {},
    )
    all_rewards = model.evaluate_items(pairs.items.select(reference))[2]
    model.spec = dataclasses.replace(
        model.spec,
        reward_mean=float(all_rewards.mean()),
        reward_std=float(all_rewards.std()) or 1.0,
        training={
            "rating_records": len(rating_records),
            "pair_records": len(pair_records),
            "eval_rating_records": len(eval_rating_records or []),
            "eval_pair_records": len(eval_pair_records or []),
            "config": dataclasses.asdict(config),
            "regression": regression.as_json(),
            "gate": gate.as_json(),
        },
    )
    model.save(out)
    return RewardTrainResult(model, out, spec.loss, {"regression": regression, "gate": gate})


def _log_early_stop(stage: str, result: TrainResult, log: Callable[[str], None]) -> None:
    if result.stopped_early:
        log(
            f"{stage}: stopped early at step {result.global_step}; kept the weights of step "
            f"{result.best_step} (held-out loss {result.best_metric:.4g})"
        )
    elif result.restored_best:
        log(
            f"{stage}: kept the weights of step {result.best_step} (held-out loss {result.best_metric:.4g})"
        )


@torch.no_grad()
def _adjusted_attributes(
    model: MultiObjectiveRewardModel, attribute_values: torch.Tensor, log_lengths: torch.Tensor
) -> torch.Tensor:
    """(U, K) length-adjusted attributes on the CPU; the model's buffers may sit on the training device."""
    device = model.length_center.device
    return model.adjusted_attributes(attribute_values.to(device), log_lengths.to(device)).cpu()


def _set_trainable(model: MultiObjectiveRewardModel, *, regression: bool) -> None:
    for parameter in model.head.parameters():
        parameter.requires_grad_(regression)
    for parameter in [*model.gate.parameters(), model.log_reward_scale]:
        parameter.requires_grad_(not regression)
