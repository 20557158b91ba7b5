"""The reward-model interface, its batches of items, and the one loader.

Every kind of model (:mod:`prefkit.rm.embedding_model`: a head on cached frozen
embeddings; :mod:`prefkit.rm.transformer_model`: a fine-tuned or LoRA transformer;
:mod:`prefkit.rm.multiobjective_model`: attribute regressors mixed by a gate) maps a batch of (prompt, response) items to ``(M, K)`` values (K = 1
for a scalar reward, K = number of rating attributes otherwise) and share one
interface:

>>> model = RewardModel.load("runs/rm")
>>> model.score(["prompt"], ["response"])       # (N,) rewards
>>> model.compare("prompt", "answer a", "answer b")   # P(a preferred)

With K > 1 the reward is the mean of the attribute predictions and
:meth:`RewardModel.score_attributes` returns each one.

What a model is, besides its weights, is its :class:`~prefkit.rm.spec.RewardModelSpec`.
:meth:`RewardModel.load` reads the spec and finds the class of its mode by name in
:data:`MODEL_CLASSES`, so the model modules import this one and never the reverse.

Model folder (nothing pickled)::

    config.json          the spec (see :mod:`prefkit.rm.spec`): mode, backbone (path,
                         weights hash), head shape, features, max length, truncation,
                         attributes, reward mean/std on the training data, calibration
                         temperature, training summary
    model.safetensors    head (and, in embedding mode, the feature standardisation)
    backbone/            finetune: the whole backbone (safetensors) and tokenizer
    adapter/             lora: the adapter (safetensors); tokenizer/ beside it
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from prefkit.eval.metrics import preference_probability
from prefkit.rm.spec import RewardModelSpec

WEIGHTS_NAME = "model.safetensors"

MODEL_CLASSES: dict[str, str] = {
    "embedding": "prefkit.rm.embedding_model:EmbeddingRewardModel",
    "finetune": "prefkit.rm.transformer_model:TransformerRewardModel",
    "lora": "prefkit.rm.transformer_model:TransformerRewardModel",
    "multi-objective": "prefkit.rm.multiobjective_model:MultiObjectiveRewardModel",
}
"""Mode -> ``module:Class`` of the model that :meth:`RewardModel.load` builds for it."""


@dataclass
class FeatureItems:
    """Embedding-mode items."""

    features: torch.Tensor
    """(M, F) float32 feature vectors."""


@dataclass
class TokenItems:
    """Transformer-mode items: each row is one prompt + response sequence."""

    input_ids: torch.Tensor
    """(M, T) token ids, padded."""
    attention_mask: torch.Tensor
    """(M, T) 1 for real tokens, 0 for padding (either side)."""


Items = FeatureItems | TokenItems


class FeatureStore:
    """Feature rows of unique items; ``batch`` gathers some of them."""

    def __init__(self, features: torch.Tensor):
        self.features = features  # (U, F)
        self.lengths = np.ones(len(features), dtype=np.int64)

    def batch(self, rows: list[int]) -> FeatureItems:
        return FeatureItems(self.features[torch.as_tensor(rows, dtype=torch.long)])


class TokenStore:
    """Token sequences of unique items; ``batch`` pads some of them (dynamic padding)."""

    def __init__(self, sequences: list[list[int]], pad_id: int, padding_side: str = "right"):
        self.sequences = sequences
        self.pad_id = pad_id
        self.padding_side = padding_side
        self.lengths = np.array([len(ids) for ids in sequences], dtype=np.int64)

    def batch(self, rows: list[int]) -> TokenItems:
        return pad_sequences([self.sequences[row] for row in rows], self.pad_id, self.padding_side)


ItemStore = FeatureStore | TokenStore


class RewardModel(nn.Module):
    """Base class: saving, loading, scoring. Subclasses implement ``forward`` and ``_items``."""

    def __init__(self, spec: RewardModelSpec):
        super().__init__()
        self.spec = spec
        """What the model is; replaced (not edited) when training sets the reward statistics."""
        self.attributes: list[str] | None = list(spec.attributes) if spec.attributes else None
        self.num_outputs = spec.num_outputs
        if spec.tie_model == "davidson":
            # log nu of Davidson's tie model, learned with the reward (start: nu = 0.5).
            self.tie_log_nu = nn.Parameter(torch.tensor(math.log(0.5)))

    # -- scoring ---------------------------------------------------------------------------

    def forward(self, items: Items) -> torch.Tensor:
        """(M, K) outputs for M items."""
        raise NotImplementedError

    def item_store(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        progress: Callable[[int], None] | None = None,
    ) -> ItemStore:
        """The items of these (prompt, response) pairs, ready to batch."""
        raise NotImplementedError

    def predict(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        *,
        batch_size: int = 64,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """(N, K) raw outputs, batched by length; order follows the input."""
        if len(prompts) != len(responses):
            raise ValueError(
                f"score: got {len(prompts)} prompts and {len(responses)} responses; give one prompt per response."
            )
        if not responses:
            return np.zeros((0, self.num_outputs), dtype=np.float32)
        was_training = self.training
        self.eval()
        try:
            store = self.item_store(prompts, responses)
            return self.store_outputs(store, batch_size=batch_size, progress=progress).numpy()
        finally:
            self.train(was_training)

    @torch.inference_mode()
    def store_outputs(
        self,
        store: ItemStore,
        *,
        batch_size: int = 64,
        progress: Callable[[int], None] | None = None,
        shard: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """(U, K) float32 outputs of every item of ``store`` on the CPU, in store order.

        Items are batched longest first, so each batch is padded to about its own
        length. The model's train/eval mode is left as it is (callers evaluate in eval mode).
        ``shard=(rank, world_size)`` scores only every ``world_size``-th item of that order,
        starting at ``rank``, and leaves the other rows 0: the outputs of all ranks sum
        to every item's (each rank gets items of about the same lengths).
        """
        outputs = torch.zeros((len(store.lengths), self.num_outputs), dtype=torch.float32)
        order = np.argsort(-store.lengths, kind="stable")
        if shard is not None:
            rank, world_size = shard
            order = order[rank::world_size]
        device = next(self.parameters()).device
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = _to_device(store.batch(rows.tolist()), device)
            outputs[torch.from_numpy(rows)] = self(batch).float().cpu()
            if progress is not None:
                progress(len(rows))
        return outputs

    def predict_and_score(
        self, prompts: Sequence[str], responses: Sequence[str], *, batch_size: int = 64
    ) -> tuple[np.ndarray, np.ndarray]:
        """(N, K) raw outputs and (N,) rewards from one pass (multi-objective models gate them)."""
        outputs = self.predict(prompts, responses, batch_size=batch_size)
        return outputs, outputs.mean(axis=1)

    def score(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        *,
        batch_size: int = 64,
        normalize: bool = False,
    ) -> np.ndarray:
        """(N,) rewards; with ``normalize``, standardised by the training mean and std."""
        rewards = self.predict(prompts, responses, batch_size=batch_size).mean(axis=1)
        if normalize:
            rewards = self.normalize(rewards)
        return rewards

    def normalize(self, rewards: np.ndarray) -> np.ndarray:
        """Rewards standardised by the training data's reward mean and std."""
        return (rewards - self.spec.reward_mean) / self.spec.reward_std

    def score_attributes(
        self, prompts: Sequence[str], responses: Sequence[str], *, batch_size: int = 64
    ) -> dict[str, np.ndarray]:
        """Attribute name -> (N,) predictions (``{"reward": ...}`` for a scalar model)."""
        outputs = self.predict(prompts, responses, batch_size=batch_size)
        names = self.attributes or ["reward"]
        return {name: outputs[:, column] for column, name in enumerate(names)}

    def predict_members(
        self, prompts: Sequence[str], responses: Sequence[str], *, batch_size: int = 64
    ) -> np.ndarray:
        """(E, N, K) raw outputs of each of the E ensemble members (E = 1 for one model)."""
        return self.predict(prompts, responses, batch_size=batch_size)[None]

    def predict_score_members(
        self, prompts: Sequence[str], responses: Sequence[str], *, batch_size: int = 64
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N, K) raw outputs, (N,) rewards and (E, N) each ensemble member's reward, from one
        pass (for one model, E = 1 and the members' rewards are its rewards)."""
        outputs, rewards = self.predict_and_score(prompts, responses, batch_size=batch_size)
        return outputs, rewards, rewards[None]

    def compare(self, prompt: str, response_a: str, response_b: str) -> float:
        """P(a preferred over b) = sigmoid((r_a - r_b) / T) (Bradley-Terry with the model's
        calibration temperature T, see :attr:`RewardModelSpec.temperature`); for an ensemble,
        the mean of its members' probabilities."""
        return float(self.compare_pairs([prompt], [response_a], [response_b])[0])

    def compare_pairs(
        self,
        prompts: Sequence[str],
        responses_a: Sequence[str],
        responses_b: Sequence[str],
        *,
        batch_size: int = 64,
    ) -> np.ndarray:
        """(N,) P(a preferred over b) of each pair, as :meth:`compare`, scored in one pass."""
        if not len(prompts) == len(responses_a) == len(responses_b):
            raise ValueError(
                f"compare: got {len(prompts)} prompts, {len(responses_a)} responses a and "
                f"{len(responses_b)} responses b; give one of each per pair."
            )
        # Interleaved: a0, b0, a1, b1, ...
        texts = [text for pair in zip(responses_a, responses_b) for text in pair]
        _, _, members = self.predict_score_members(
            [prompt for prompt in prompts for _ in range(2)], texts, batch_size=batch_size
        )
        return self.member_preference_probability(members[:, 0::2], members[:, 1::2])

    def member_preference_probability(
        self, member_rewards_a: np.ndarray, member_rewards_b: np.ndarray
    ) -> np.ndarray:
        """(N,) P(a preferred) from (E, N) raw rewards of each member: the mean over the
        members of sigmoid((r_a - r_b) / T) (one model: E = 1, its own probability)."""
        member_rewards_a = np.asarray(member_rewards_a, dtype=np.float64)
        member_rewards_b = np.asarray(member_rewards_b, dtype=np.float64)
        if member_rewards_a.ndim != 2 or member_rewards_a.shape != member_rewards_b.shape:
            raise ValueError(
                f"member rewards must both be (E, N); got {member_rewards_a.shape} and "
                f"{member_rewards_b.shape}"
            )
        probabilities = [
            self.preference_probability(rewards_a, rewards_b)
            for rewards_a, rewards_b in zip(member_rewards_a, member_rewards_b)
        ]
        return np.mean(probabilities, axis=0)

    def preference_probability(
        self, rewards_a: Sequence[float] | np.ndarray, rewards_b: Sequence[float] | np.ndarray
    ) -> np.ndarray:
        """(N,) calibrated P(a preferred) = sigmoid((r_a - r_b) / T) from raw (not normalised)
        rewards."""
        return preference_probability(rewards_a, rewards_b, temperature=self.spec.temperature)

    # -- persistence -----------------------------------------------------------------------

    def head_state(self) -> dict[str, torch.Tensor]:
        """Weights saved in model.safetensors."""
        return {
            name: tensor
            for name, tensor in self.state_dict().items()
            if not name.startswith("backbone.")
        }

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the model folder: model.safetensors, config.json and the class's own files."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        state = {
            name: tensor.detach().cpu().contiguous() for name, tensor in self.head_state().items()
        }
        save_file(state, str(folder / WEIGHTS_NAME))
        self._save_extra(folder)
        self.spec.save(folder)
        return folder

    def _save_extra(self, folder: Path) -> None:
        pass

    @classmethod
    def from_folder(
        cls,
        spec: RewardModelSpec,
        folder: Path,
        *,
        device: str = "cpu",
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> RewardModel:
        """The model of ``spec`` with its modules built (weights are read by :meth:`load`)."""
        raise NotImplementedError

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        *,
        device: str = "cpu",
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> RewardModel:
        """Read a model folder written by :meth:`save` (safetensors and JSON only).

        Called on a subclass, the folder must hold a model of that class.
        """
        folder = Path(directory)
        spec = RewardModelSpec.read(folder)
        model_class = model_class_for(spec.mode)
        if not issubclass(model_class, cls):
            raise ValueError(
                f"{folder}: mode {spec.mode!r} is not a {cls.__name__}; load it with "
                "prefkit.rm.model.RewardModel.load."
            )
        model = model_class.from_folder(spec, folder, device=device, cache_dir=cache_dir)
        state = load_file(str(folder / WEIGHTS_NAME))
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [name for name in missing if not name.startswith("backbone.")]
        if missing or unexpected:
            raise ValueError(
                f"{folder / WEIGHTS_NAME}: weights do not match config.json "
                f"(missing {missing[:5]}, unexpected {unexpected[:5]})."
            )
        return model.to(device).eval()


def model_class_for(mode: str) -> type[RewardModel]:
    """The model class of ``mode`` (see :data:`MODEL_CLASSES`)."""
    module_name, class_name = MODEL_CLASSES[mode].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def pad_sequences(
    sequences: Sequence[Sequence[int]], pad_id: int, side: str = "right"
) -> TokenItems:
    """(M, T) padded ids and mask, T = the longest sequence."""
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        span = slice(width - len(ids), width) if side == "left" else slice(0, len(ids))
        input_ids[row, span] = torch.as_tensor(list(ids), dtype=torch.long)
        mask[row, span] = 1
    return TokenItems(input_ids, mask)


def _to_device(items: Items, device: torch.device) -> Items:
    if isinstance(items, FeatureItems):
        return FeatureItems(items.features.to(device))
    return TokenItems(items.input_ids.to(device), items.attention_mask.to(device))
