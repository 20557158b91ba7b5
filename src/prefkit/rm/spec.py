"""What a reward model is: :class:`RewardModelSpec`, the typed content of its config.json.

A spec says everything needed to rebuild a model's modules before its weights are
read (mode, backbone, head shape, features, attributes, tie model) and what
scoring needs besides the weights (the training data's reward mean and std, the
calibration temperature). The training summary rides along as plain JSON.

config.json carries ``format_version``. Version 2 (written now) stores features
as a list; version 1 (prefkit before the typed spec) stored them as a
comma-separated string and repeated the backbone width as ``embedding_dim``.
Both are read; nothing else changed between them.

This module imports the standard library only.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from prefkit.errors import UserInputError

FORMAT_VERSION = 2
"""The config.json format written by this prefkit."""
READABLE_VERSIONS = (1, 2)
"""The config.json formats this prefkit reads."""
CONFIG_NAME = "config.json"

MODES = ("embedding", "finetune", "lora", "multi-objective")
POOLINGS = ("mean", "last")
TRUNCATIONS = ("truncate", "drop")
FEATURE_NAMES = ("response", "prompt", "product", "length", "stats")
"""Embedding-mode features, see :mod:`prefkit.rm.heads`."""
PROMPT_FEATURES = ("prompt", "product")
"""Features that read the prompt's embedding."""

Mode = Literal["embedding", "finetune", "lora", "multi-objective"]


def parse_feature_spec(spec: str | Sequence[str]) -> tuple[str, ...]:
    """``"response,length"`` -> ("response", "length"), validated."""
    names = (
        tuple(part.strip() for part in spec.split(",")) if isinstance(spec, str) else tuple(spec)
    )
    if (
        not names
        or any(name not in FEATURE_NAMES for name in names)
        or len(set(names)) != len(names)
    ):
        raise UserInputError(
            f"features: expected distinct names from {', '.join(FEATURE_NAMES)} separated by commas, "
            f"got {spec!r}"
        )
    return names


@dataclass(frozen=True)
class BackboneSpec:
    """The Hugging Face checkpoint a reward model reads text with."""

    path: str
    """Local checkpoint folder (for finetune models, the checkpoint training started from)."""
    weights_hash: str
    """SHA-256 over the checkpoint's weight files; loading checks it, so a changed backbone is caught."""
    pooling: Literal["mean", "last"]
    """How token states become one vector: mean over real tokens (encoders) or the last real token (decoders)."""
    model_type: str
    """The checkpoint's ``model_type`` (bert, llama, ...)."""
    hidden_size: int
    """Width of the pooled vector, the input of the head."""

    def __post_init__(self) -> None:
        _require(isinstance(self.path, str) and self.path, "backbone.path", "a folder", self.path)
        _require(
            isinstance(self.weights_hash, str) and self.weights_hash,
            "backbone.weights_hash",
            "a hex digest",
            self.weights_hash,
        )
        _require(self.pooling in POOLINGS, "backbone.pooling", " or ".join(POOLINGS), self.pooling)
        _require(
            _is_int(self.hidden_size) and self.hidden_size >= 1,
            "backbone.hidden_size",
            "an integer >= 1",
            self.hidden_size,
        )

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike[str], pooling: str | None = None
    ) -> BackboneSpec:
        """The spec of a local checkpoint: its weights hash, width and (unless given) pooling."""
        from transformers import AutoConfig

        from prefkit.rm.encoder import is_decoder_checkpoint, weights_hash

        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
        return cls(
            path=str(path),
            weights_hash=weights_hash(path),
            pooling=pooling or ("last" if is_decoder_checkpoint(config) else "mean"),  # type: ignore[arg-type]
            model_type=config.model_type,
            hidden_size=int(config.hidden_size),
        )


@dataclass(frozen=True)
class LoraSpec:
    """LoRA adapters on the backbone (mode ``lora``)."""

    r: int
    """Rank of the adapters."""
    alpha: float
    """Scaling numerator (the update is scaled by alpha / r)."""
    dropout: float
    """Dropout on the adapter input."""
    target_modules: tuple[str, ...] | None = None
    """Modules with adapters; None = every linear layer."""

    def __post_init__(self) -> None:
        _require(_is_int(self.r) and self.r >= 1, "lora.r", "an integer >= 1", self.r)
        _require(0 <= self.dropout < 1, "lora.dropout", "a number in [0, 1)", self.dropout)


@dataclass(frozen=True)
class RewardModelSpec:
    """Everything about a reward model except its weights; the content of config.json.

    Built by the training recipes, read by the model classes, validated here, so a
    model folder with a broken config.json fails on load with the field named.
    """

    mode: Mode
    """embedding: a head on frozen-encoder features; finetune: the whole backbone and a linear
    head; lora: LoRA adapters and a linear head; multi-objective: attribute regressors mixed by
    a prompt-conditioned gate (:mod:`prefkit.rm.multiobjective_model`)."""
    backbone: BackboneSpec
    """The text encoder or language model under the head."""
    max_length: int
    """Longest input in tokens (per text in embedding modes; prompt + response otherwise)."""
    truncation: Literal["truncate", "drop"]
    """What training did with longer inputs (scoring always truncates)."""
    loss: str
    """The training loss, e.g. bradley-terry, davidson, plackett-luce, regression."""
    attributes: tuple[str, ...] | None = None
    """Names of the K outputs of a model trained on ratings; None for a scalar reward."""
    tie_model: Literal["davidson"] | None = None
    """davidson: the model holds Davidson's tie parameter (trained on ties)."""
    features: tuple[str, ...] | None = None
    """Embedding and multi-objective modes: the features the head reads, in order."""
    hidden_sizes: tuple[int, ...] = ()
    """Embedding and multi-objective modes: hidden widths of the head's MLP; () = linear."""
    dropout: float = 0.0
    """Dropout in the head during training."""
    lora: LoraSpec | None = None
    """Mode lora: the adapters."""
    gate_hidden_sizes: tuple[int, ...] = ()
    """Multi-objective: hidden widths of the gate MLP; () = linear."""
    gate_temperature: float = 1.0
    """Multi-objective: T in softmax(gate(x) / T)."""
    length_decorrelation: bool = False
    """Multi-objective: each attribute had its least-squares component along log length removed."""
    reward_mean: float = 0.0
    """Mean reward on the training items (``score(normalize=True)`` subtracts it)."""
    reward_std: float = 1.0
    """Standard deviation of the reward on the training items (> 0)."""
    training: Mapping[str, Any] | None = field(default=None, compare=False)
    """The training summary (records, loss, config, truncation counts, metrics); JSON."""

    def __post_init__(self) -> None:
        _require(self.mode in MODES, "mode", " or ".join(MODES), self.mode)
        _require(
            isinstance(self.backbone, BackboneSpec), "backbone", "a BackboneSpec", self.backbone
        )
        _require(
            _is_int(self.max_length) and self.max_length >= 4,
            "max_length",
            "an integer >= 4",
            self.max_length,
        )
        _require(
            self.truncation in TRUNCATIONS, "truncation", " or ".join(TRUNCATIONS), self.truncation
        )
        _require(isinstance(self.loss, str) and self.loss, "loss", "a loss name", self.loss)
        if self.attributes is not None:
            _require(
                len(self.attributes) >= 1 and len(set(self.attributes)) == len(self.attributes),
                "attributes",
                "distinct names",
                self.attributes,
            )
        _require(
            self.tie_model in (None, "davidson"), "tie_model", "davidson or none", self.tie_model
        )
        if self.mode in ("embedding", "multi-objective"):
            _require(self.features is not None, "features", f"a list for mode {self.mode}", None)
            parse_feature_spec(self.features)  # type: ignore[arg-type]
        _require(
            all(_is_int(width) and width >= 1 for width in self.hidden_sizes),
            "hidden_sizes",
            "integers >= 1",
            self.hidden_sizes,
        )
        _require(0 <= self.dropout < 1, "dropout", "a number in [0, 1)", self.dropout)
        _require(
            (self.lora is not None) == (self.mode == "lora"),
            "lora",
            "adapters exactly when mode is lora",
            self.lora,
        )
        if self.mode == "multi-objective":
            _require(
                self.attributes is not None and len(self.attributes) >= 2,
                "attributes",
                "two or more for a multi-objective model",
                self.attributes,
            )
        _require(
            all(_is_int(width) and width >= 1 for width in self.gate_hidden_sizes),
            "gate_hidden_sizes",
            "integers >= 1",
            self.gate_hidden_sizes,
        )
        _require(
            math.isfinite(self.gate_temperature) and self.gate_temperature > 0,
            "gate_temperature",
            "a number > 0",
            self.gate_temperature,
        )
        _require(
            math.isfinite(self.reward_mean), "reward_mean", "a finite number", self.reward_mean
        )
        _require(
            math.isfinite(self.reward_std) and self.reward_std > 0,
            "reward_std",
            "a number > 0",
            self.reward_std,
        )

    @property
    def num_outputs(self) -> int:
        """K, the number of values the model gives each item."""
        return len(self.attributes) if self.attributes else 1

    @property
    def embedding_dim(self) -> int:
        """Width of the backbone's pooled vector."""
        return self.backbone.hidden_size

    @property
    def reads_prompt_features(self) -> bool:
        """Whether the head's features include the prompt embedding."""
        return any(name in PROMPT_FEATURES for name in self.features or ())

    # -- config.json ----------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The config.json content, with ``format_version``."""
        values = dataclasses.asdict(self)
        for name in ("attributes", "features", "hidden_sizes", "gate_hidden_sizes"):
            if values[name] is not None:
                values[name] = list(values[name])
        if self.lora is not None and self.lora.target_modules is not None:
            values["lora"]["target_modules"] = list(self.lora.target_modules)
        values["training"] = dict(self.training) if self.training is not None else None
        return {"format_version": FORMAT_VERSION, **values}

    @classmethod
    def from_json(cls, values: Mapping[str, Any], source: str = CONFIG_NAME) -> RewardModelSpec:
        """A spec from config.json content of any readable version; errors name ``source``."""
        values = dict(values)
        version = values.pop("format_version", None)
        if version not in READABLE_VERSIONS:
            raise UserInputError(
                f"{source}: format_version {version!r}; this prefkit reads "
                f"{', '.join(map(str, READABLE_VERSIONS))}. Retrain the model or update prefkit."
            )
        names = {item.name for item in dataclasses.fields(cls)}
        if version == 1:
            values.pop("embedding_dim", None)  # always equal to backbone.hidden_size
        unknown = sorted(set(values) - names)
        if unknown:
            raise UserInputError(f"{source}: unknown fields {', '.join(unknown)}.")
        try:
            backbone = BackboneSpec(**values.pop("backbone"))
            lora = values.pop("lora", None)
            if lora is not None:
                targets = lora.get("target_modules")
                lora = LoraSpec(**{**lora, "target_modules": tuple(targets) if targets else None})
            for name in ("attributes", "hidden_sizes", "gate_hidden_sizes"):
                if values.get(name) is not None:
                    values[name] = tuple(values[name])
            if values.get("features") is not None:
                values["features"] = parse_feature_spec(values["features"])
            return cls(backbone=backbone, lora=lora, **values)
        except (KeyError, TypeError, ValueError) as error:
            raise UserInputError(f"{source}: not a valid reward-model config ({error}).") from None

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``folder/config.json``."""
        path = Path(folder) / CONFIG_NAME
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, folder: str | os.PathLike[str]) -> RewardModelSpec:
        """The spec of a model folder."""
        path = Path(folder) / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"{folder}: not a prefkit reward-model folder (no {CONFIG_NAME})."
            )
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise UserInputError(f"{path}: not JSON ({error}).") from None
        if not isinstance(values, dict):
            raise UserInputError(f"{path}: expected a JSON object.")
        return cls.from_json(values, str(path))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require(condition: object, name: str, expected: str, found: object) -> None:
    if not condition:
        raise UserInputError(f"RewardModelSpec: {name} must be {expected}, got {found!r}.")
