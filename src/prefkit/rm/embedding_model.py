"""A reward head on frozen-encoder embeddings (mode ``embedding``).

The encoder is loaded only to embed texts that the embedding cache does not hold;
the head reads the features of :mod:`prefkit.rm.heads`. With ``spec.ensemble_size``
E > 1 the model holds E heads (``heads.0`` ... in model.safetensors) on the same
features and its output is their mean; :meth:`EmbeddingRewardModel.predict_members`
gives each head's.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from prefkit.rm.encoder import EmbeddingCache, FrozenEncoder, encode_texts
from prefkit.rm.heads import RewardHead, build_features, feature_dim
from prefkit.rm.model import FeatureItems, FeatureStore, Items, RewardModel
from prefkit.rm.spec import RewardModelSpec


class EmbeddingRewardModel(RewardModel):
    """A head on frozen-encoder features; the encoder is loaded only to embed uncached texts."""

    def __init__(
        self,
        spec: RewardModelSpec,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        device: str = "cpu",
        encoder: FrozenEncoder | None = None,
        use_cache: bool = True,
        embed_batch_size: int = 16,
    ):
        super().__init__(spec)
        self.embed_batch_size = embed_batch_size
        assert spec.features is not None  # checked by the spec
        self.features = spec.features
        dim = feature_dim(self.features, spec.embedding_dim)
        if spec.ensemble_size == 1:
            self.head = RewardHead(dim, spec.hidden_sizes, self.num_outputs, spec.dropout)
        else:
            self.heads = nn.ModuleList(
                RewardHead(dim, spec.hidden_sizes, self.num_outputs, spec.dropout)
                for _ in range(spec.ensemble_size)
            )
        self._encoder = encoder
        self._device = device
        self.cache = EmbeddingCache(cache_dir) if use_cache else None

    @property
    def encoder(self) -> FrozenEncoder:
        if self._encoder is None:
            backbone = self.spec.backbone
            self._encoder = FrozenEncoder(
                backbone.path,
                max_length=self.spec.max_length,
                pooling=backbone.pooling,
                device=self._device,
                batch_size=self.embed_batch_size,
            )
            if self._encoder.weights_hash != backbone.weights_hash:
                raise ValueError(
                    f"backbone {backbone.path}: its weights changed since this reward model was trained "
                    f"(hash {self._encoder.weights_hash[:12]}..., expected {backbone.weights_hash[:12]}...)."
                )
        return self._encoder

    def forward(self, items: Items) -> torch.Tensor:
        assert isinstance(items, FeatureItems)
        if self.spec.ensemble_size == 1:
            return self.head(items.features)
        return self.member_forward(items).mean(dim=0)

    def member_forward(self, items: FeatureItems) -> torch.Tensor:
        """(E, M, K) outputs of each of the E heads."""
        if self.spec.ensemble_size == 1:
            return self.head(items.features)[None]
        return torch.stack([head(items.features) for head in self.heads])

    @torch.inference_mode()
    def predict_members(
        self, prompts: Sequence[str], responses: Sequence[str], *, batch_size: int = 64
    ) -> np.ndarray:
        """(E, N, K) raw outputs of each head, from one embedding pass."""
        if len(prompts) != len(responses):
            raise ValueError(
                f"score: got {len(prompts)} prompts and {len(responses)} responses; give one prompt per response."
            )
        size = self.spec.ensemble_size
        if not responses:
            return np.zeros((size, 0, self.num_outputs), dtype=np.float32)
        was_training = self.training
        self.eval()
        try:
            features = self.item_store(prompts, responses).features
            device = next(self.parameters()).device
            parts = [
                self.member_forward(FeatureItems(features[start : start + batch_size].to(device)))
                .float()
                .cpu()
                for start in range(0, len(features), batch_size)
            ]
            return torch.cat(parts, dim=1).numpy()
        finally:
            self.train(was_training)

    def predict_score_members(
        self, prompts: Sequence[str], responses: Sequence[str], *, batch_size: int = 64
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N, K) outputs, (N,) rewards and (E, N) each head's reward, from one embedding pass
        (the outputs are the heads' mean, as :meth:`forward`)."""
        if self.spec.ensemble_size == 1:
            return super().predict_score_members(prompts, responses, batch_size=batch_size)
        member_outputs = self.predict_members(prompts, responses, batch_size=batch_size)
        outputs = torch.from_numpy(member_outputs).mean(dim=0).numpy()  # (N, K), as forward
        return outputs, outputs.mean(axis=1), member_outputs.mean(axis=2)

    def featurize(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        progress: Callable[[int], None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N, F) features plus (N,) prompt and response token counts (before truncation)."""
        encoder = self.encoder
        needs_prompt = self.spec.reads_prompt_features
        response_encoded = encode_texts(
            encoder, responses, side="right", cache=self.cache, progress=progress
        )
        if needs_prompt:
            prompt_encoded = encode_texts(
                encoder, prompts, side="left", cache=self.cache, progress=progress
            )
            prompt_embeddings, prompt_tokens = prompt_encoded.embeddings, prompt_encoded.num_tokens
        else:
            # np.zeros, not zeros_like: the pages stay unwritten (and unallocated) when unread.
            prompt_embeddings = np.zeros(response_encoded.embeddings.shape, dtype=np.float32)
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

    @classmethod
    def from_folder(cls, spec, folder, *, device="cpu", cache_dir=None):
        return cls(spec, cache_dir=cache_dir, device=device)

    def item_store(self, prompts, responses, progress=None):
        features, _, _ = self.featurize(prompts, responses, progress)
        return FeatureStore(torch.from_numpy(features))
