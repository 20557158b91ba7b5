"""Reward models: a head on cached frozen embeddings, or a fine-tuned transformer.

Both kinds map a batch of (prompt, response) items to ``(M, K)`` values (K = 1
for a scalar reward, K = number of rating attributes otherwise) and share one
interface:

>>> model = RewardModel.load("runs/rm")
>>> model.score(["prompt"], ["response"])       # (N,) rewards
>>> model.compare("prompt", "answer a", "answer b")   # P(a preferred)

With K > 1 the reward is the mean of the attribute predictions and
:meth:`RewardModel.score_attributes` returns each one.

Model folder (nothing pickled)::

    config.json          kind, mode, backbone (path, weights hash), head spec,
                         features, max length, truncation, attributes, reward
                         mean/std on the training data, training summary
    model.safetensors    head (and, in embedding mode, the feature standardisation)
    backbone/            finetune: the whole backbone (safetensors) and tokenizer
    adapter/             lora: the adapter (safetensors); tokenizer/ beside it
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from prefkit.rm.encoder import (
    EmbeddingCache,
    FrozenEncoder,
    encode_texts,
    is_decoder_checkpoint,
    load_tokenizer,
    pool_hidden_states,
    special_token_template,
    weights_hash,
)
from prefkit.rm.heads import RewardHead, build_features, feature_dim, parse_feature_spec

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1


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

    def __init__(self, spec: dict[str, Any]):
        super().__init__()
        self.spec = spec
        self.attributes: list[str] | None = spec.get("attributes")
        num_outputs = len(self.attributes) if self.attributes else 1
        self.num_outputs = num_outputs
        if spec.get("tie_model") == "davidson":
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
    ) -> torch.Tensor:
        """(U, K) float32 outputs of every item of ``store`` on the CPU, in store order.

        Items are batched longest first, so each batch is padded to about its own
        length. The model's train/eval mode is left as it is (callers evaluate in eval mode).
        """
        outputs = torch.zeros((len(store.lengths), self.num_outputs), dtype=torch.float32)
        order = np.argsort(-store.lengths, kind="stable")
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
            rewards = (rewards - self.spec["reward_mean"]) / self.spec["reward_std"]
        return rewards

    def score_attributes(
        self, prompts: Sequence[str], responses: Sequence[str], *, batch_size: int = 64
    ) -> dict[str, np.ndarray]:
        """Attribute name -> (N,) predictions (``{"reward": ...}`` for a scalar model)."""
        outputs = self.predict(prompts, responses, batch_size=batch_size)
        names = self.attributes or ["reward"]
        return {name: outputs[:, column] for column, name in enumerate(names)}

    def compare(self, prompt: str, response_a: str, response_b: str) -> float:
        """P(a preferred over b) = sigmoid(r_a - r_b) (Bradley-Terry)."""
        reward_a, reward_b = self.score([prompt, prompt], [response_a, response_b])
        return float(1.0 / (1.0 + math.exp(-(float(reward_a) - float(reward_b)))))

    # -- persistence -----------------------------------------------------------------------

    def head_state(self) -> dict[str, torch.Tensor]:
        """Weights saved in model.safetensors."""
        return {
            name: tensor
            for name, tensor in self.state_dict().items()
            if not name.startswith("backbone.")
        }

    def save(self, directory: str | os.PathLike[str]) -> Path:
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        state = {
            name: tensor.detach().cpu().contiguous() for name, tensor in self.head_state().items()
        }
        save_file(state, str(folder / WEIGHTS_NAME))
        self._save_extra(folder)
        spec = {"format_version": FORMAT_VERSION, **self.spec}
        (folder / CONFIG_NAME).write_text(json.dumps(spec, indent=2) + "\n")
        return folder

    def _save_extra(self, folder: Path) -> None:
        pass

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        *,
        device: str = "cpu",
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> RewardModel:
        """Read a model folder written by :meth:`save` (safetensors and JSON only)."""
        folder = Path(directory)
        config_path = folder / CONFIG_NAME
        if not config_path.is_file():
            raise FileNotFoundError(
                f"{folder}: not a prefkit reward-model folder (no {CONFIG_NAME})."
            )
        spec = json.loads(config_path.read_text())
        if spec.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{config_path}: format_version {spec.get('format_version')!r}; this prefkit reads {FORMAT_VERSION}."
            )
        spec.pop("format_version")
        model: RewardModel
        if spec["mode"] == "embedding":
            model = EmbeddingRewardModel(spec, cache_dir=cache_dir, device=device)
        elif spec["mode"] == "multi-objective":
            from prefkit.rm.multiobjective import MultiObjectiveRewardModel

            model = MultiObjectiveRewardModel(spec, cache_dir=cache_dir, device=device)
        else:
            model = TransformerRewardModel.from_folder(spec, folder)
        state = load_file(str(folder / WEIGHTS_NAME))
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [name for name in missing if not name.startswith("backbone.")]
        if missing or unexpected:
            raise ValueError(
                f"{folder / WEIGHTS_NAME}: weights do not match config.json "
                f"(missing {missing[:5]}, unexpected {unexpected[:5]})."
            )
        return model.to(device).eval()


class EmbeddingRewardModel(RewardModel):
    """A head on frozen-encoder features; the encoder is loaded only to embed uncached texts."""

    def __init__(
        self,
        spec: dict[str, Any],
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        device: str = "cpu",
        encoder: FrozenEncoder | None = None,
        use_cache: bool = True,
        embed_batch_size: int = 16,
    ):
        super().__init__(spec)
        self.embed_batch_size = embed_batch_size
        self.features = parse_feature_spec(spec["features"])
        dim = feature_dim(self.features, spec["embedding_dim"])
        self.head = RewardHead(
            dim, spec["hidden_sizes"], self.num_outputs, spec.get("dropout", 0.0)
        )
        self._encoder = encoder
        self._device = device
        self.cache = EmbeddingCache(cache_dir) if use_cache else None

    @property
    def encoder(self) -> FrozenEncoder:
        if self._encoder is None:
            backbone = self.spec["backbone"]
            self._encoder = FrozenEncoder(
                backbone["path"],
                max_length=self.spec["max_length"],
                pooling=backbone["pooling"],
                device=self._device,
                batch_size=self.embed_batch_size,
            )
            if self._encoder.weights_hash != backbone["weights_hash"]:
                raise ValueError(
                    f"backbone {backbone['path']}: its weights changed since this reward model was trained "
                    f"(hash {self._encoder.weights_hash[:12]}..., expected {backbone['weights_hash'][:12]}...)."
                )
        return self._encoder

    def forward(self, items: Items) -> torch.Tensor:
        assert isinstance(items, FeatureItems)
        return self.head(items.features)

    def featurize(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        progress: Callable[[int], None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N, F) features plus (N,) prompt and response token counts (before truncation)."""
        encoder = self.encoder
        needs_prompt = any(name in ("prompt", "product") for name in self.features)
        response_encoded = encode_texts(
            encoder, responses, side="right", cache=self.cache, progress=progress
        )
        if needs_prompt:
            prompt_encoded = encode_texts(
                encoder, prompts, side="left", cache=self.cache, progress=progress
            )
            prompt_embeddings, prompt_tokens = prompt_encoded.embeddings, prompt_encoded.num_tokens
        else:
            prompt_embeddings = np.zeros_like(response_encoded.embeddings)
            prompt_tokens = np.zeros(len(prompts), dtype=np.int64)
        chars = np.array([len(text) for text in responses], dtype=np.float32)
        features = build_features(
            self.features,
            prompt_embeddings,
            response_encoded.embeddings,
            chars,
            response_encoded.num_tokens.astype(np.float32),
            responses,
        )
        return features, prompt_tokens, response_encoded.num_tokens

    def item_store(self, prompts, responses, progress=None):
        features, _, _ = self.featurize(prompts, responses, progress)
        return FeatureStore(torch.from_numpy(features))


class TransformerRewardModel(RewardModel):
    """A Hugging Face backbone (fine-tuned whole, or with LoRA) pooled into a linear head."""

    def __init__(self, spec: dict[str, Any], backbone: nn.Module, tokenizer: Any):
        super().__init__(spec)
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.pooling = spec["backbone"]["pooling"]
        self.head = nn.Linear(int(spec["embedding_dim"]), self.num_outputs)

    @classmethod
    def create(
        cls, spec: dict[str, Any], lora: dict[str, Any] | None = None
    ) -> TransformerRewardModel:
        """A fresh model from ``spec["backbone"]["path"]``, with LoRA adapters when ``lora`` is given."""
        from transformers import AutoModel

        path = spec["backbone"]["path"]
        backbone = AutoModel.from_pretrained(
            path, use_safetensors=True, trust_remote_code=False, dtype=torch.float32
        )
        if lora is not None:
            from peft import LoraConfig, get_peft_model

            backbone = get_peft_model(
                backbone,
                LoraConfig(
                    r=lora["r"],
                    lora_alpha=lora["alpha"],
                    lora_dropout=lora["dropout"],
                    target_modules=lora.get("target_modules") or "all-linear",
                ),
            )
        return cls(spec, backbone, load_tokenizer(path))

    @classmethod
    def from_folder(cls, spec: dict[str, Any], folder: Path) -> TransformerRewardModel:
        from transformers import AutoModel

        if spec["mode"] == "finetune":
            backbone = AutoModel.from_pretrained(
                folder / "backbone",
                use_safetensors=True,
                trust_remote_code=False,
                dtype=torch.float32,
            )
            tokenizer = load_tokenizer(str(folder / "backbone"))
        else:
            from peft import PeftModel

            base_path = spec["backbone"]["path"]
            found = weights_hash(base_path)
            if found != spec["backbone"]["weights_hash"]:
                raise ValueError(
                    f"base backbone {base_path}: weights changed since the LoRA adapter was trained "
                    f"(hash {found[:12]}..., expected {spec['backbone']['weights_hash'][:12]}...)."
                )
            base = AutoModel.from_pretrained(
                base_path, use_safetensors=True, trust_remote_code=False, dtype=torch.float32
            )
            backbone = PeftModel.from_pretrained(base, folder / "adapter")
            tokenizer = load_tokenizer(str(folder / "tokenizer"))
        return cls(spec, backbone, tokenizer)

    def _save_extra(self, folder: Path) -> None:
        if self.spec["mode"] == "finetune":
            self.backbone.save_pretrained(folder / "backbone", safe_serialization=True)
            self.tokenizer.save_pretrained(folder / "backbone")
        else:
            self.backbone.save_pretrained(folder / "adapter", safe_serialization=True)
            self.tokenizer.save_pretrained(folder / "tokenizer")

    def forward(self, items: Items) -> torch.Tensor:
        assert isinstance(items, TokenItems)
        mask = items.attention_mask
        # Positions count real tokens only, so left and right padding give the same positions.
        position_ids = (mask.long().cumsum(dim=1) - 1).clamp(min=0)  # (M, T)
        outputs = self.backbone(
            input_ids=items.input_ids, attention_mask=mask, position_ids=position_ids
        )
        pooled = pool_hidden_states(outputs.last_hidden_state, mask, self.pooling)  # (M, H)
        return self.head(pooled.float())

    def item_store(self, prompts, responses, progress=None):
        sequences = [
            tokenize_pair(self.tokenizer, prompt, response, self.spec["max_length"]).input_ids
            for prompt, response in zip(prompts, responses, strict=True)
        ]
        return TokenStore(sequences, self.tokenizer.pad_token_id, self.tokenizer.padding_side)


@dataclass
class TokenizedPair:
    input_ids: list[int]
    prompt_truncated: bool
    response_truncated: bool
    full_length: int
    """Length before truncation."""


def tokenize_pair(tokenizer: Any, prompt: str, response: str, max_length: int) -> TokenizedPair:
    """prompt + response with the tokenizer's special tokens, at most ``max_length`` ids.

    Too long: the prompt loses tokens from its start (the response is kept); a
    response that does not fit on its own is cut at its end. An empty prompt
    gives the single-text layout.
    """
    template = special_token_template(tokenizer)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    pair_specials = sum(len(part) for part in template.pair)
    single_specials = sum(len(part) for part in template.single)
    full_length = len(response_ids) + (
        len(prompt_ids) + pair_specials if prompt_ids else single_specials
    )
    prompt_truncated = response_truncated = False
    if full_length > max_length:
        if len(response_ids) + pair_specials >= max_length or not prompt_ids:
            prompt_truncated = bool(prompt_ids)
            prompt_ids = []
            if len(response_ids) + single_specials > max_length:
                response_ids = response_ids[: max_length - single_specials]
                response_truncated = True
        else:
            keep = max_length - pair_specials - len(response_ids)
            prompt_ids = prompt_ids[len(prompt_ids) - keep :]
            prompt_truncated = True
    if prompt_ids:
        before, between, after = template.pair
        ids = [*before, *prompt_ids, *between, *response_ids, *after]
    else:
        before, after = template.single
        ids = [*before, *response_ids, *after]
    return TokenizedPair(ids, prompt_truncated, response_truncated, full_length)


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


def backbone_spec(path: str, pooling: str | None = None) -> dict[str, Any]:
    """The ``backbone`` entry of a model's config: path, weights hash, pooling, width."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    return {
        "path": str(path),
        "weights_hash": weights_hash(path),
        "pooling": pooling or ("last" if is_decoder_checkpoint(config) else "mean"),
        "model_type": config.model_type,
        "hidden_size": int(config.hidden_size),
    }


def _to_device(items: Items, device: torch.device) -> Items:
    if isinstance(items, FeatureItems):
        return FeatureItems(items.features.to(device))
    return TokenItems(items.input_ids.to(device), items.attention_mask.to(device))
