"""The multi-objective reward model: attribute regressors mixed by a prompt-conditioned gate.

The model of ArmoRM (Wang et al. 2024, arXiv:2406.12845) on frozen-encoder
embeddings; how it is trained, and how it departs from the paper, is in
:mod:`prefkit.rm.multiobjective`. For an item (x, y) with K attribute predictions
``r_k``, the reward is ``R = s * sum_k g_k(x) (r_k - lambda_k (l - l_mean))`` with
``g(x) = softmax(gate(x) / T)``, ``l = log(1 + characters of y)`` and
``lambda_k = 0`` unless length decorrelation was fitted.

Model folder: the format of :mod:`prefkit.rm.model` with ``mode`` =
``"multi-objective"``; model.safetensors holds ``head.*`` (regression),
``gate.*``, ``log_reward_scale``, ``length_coefficients`` (K,) and
``length_center`` ().
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from prefkit.rm.embedding_model import EmbeddingRewardModel
from prefkit.rm.encoder import FrozenEncoder, encode_texts
from prefkit.rm.heads import RewardHead, build_features
from prefkit.rm.spec import RewardModelSpec

MODE = "multi-objective"


@dataclass
class MultiObjectiveItems:
    """Cached inputs of M (prompt, response) items."""

    features: torch.Tensor
    """(M, F) regression features."""
    prompt_embeddings: torch.Tensor
    """(M, D) prompt embeddings, the gate's input."""
    log_lengths: torch.Tensor
    """(M,) log(1 + characters) of the response."""

    def select(self, rows: torch.Tensor) -> MultiObjectiveItems:
        return MultiObjectiveItems(
            self.features[rows], self.prompt_embeddings[rows], self.log_lengths[rows]
        )

    def to(self, device: torch.device | str) -> MultiObjectiveItems:
        return MultiObjectiveItems(
            self.features.to(device), self.prompt_embeddings.to(device), self.log_lengths.to(device)
        )


def response_log_lengths(responses: Sequence[str]) -> np.ndarray:
    """(N,) float32 log(1 + characters): the length that decorrelation removes."""
    return np.log1p(np.array([len(text) for text in responses], dtype=np.float64)).astype(
        np.float32
    )


def length_decorrelation_coefficients(
    attribute_values: torch.Tensor, log_lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares slope of each attribute on log length, and the mean log length.

    Args:
        attribute_values: (N, K) attribute predictions on the reference responses.
        log_lengths: (N,) their log lengths.

    Returns:
        ``coefficients`` (K,), ``lambda_k = Cov(r_k, l) / Var(l)`` (population
        moments; 0 when all lengths are equal), and ``center`` (), the mean of ``l``.
        ``r_k - lambda_k (l - center)`` then has zero covariance with ``l`` on these
        responses (ArmoRM section 3.2, with length in place of the verbosity objective).
    """
    if attribute_values.ndim != 2 or log_lengths.shape != attribute_values.shape[:1]:
        raise ValueError(
            f"length_decorrelation_coefficients: expected (N, K) attributes and (N,) lengths, got "
            f"{tuple(attribute_values.shape)} and {tuple(log_lengths.shape)}."
        )
    values = attribute_values.double()
    center = log_lengths.double().mean()
    centered_lengths = log_lengths.double() - center  # (N,)
    variance = centered_lengths.square().mean()
    if variance <= 1e-12:
        return torch.zeros(values.shape[1], dtype=attribute_values.dtype), center.to(
            attribute_values.dtype
        )
    covariance = ((values - values.mean(dim=0)) * centered_lengths.unsqueeze(1)).mean(dim=0)  # (K,)
    return (covariance / variance).to(attribute_values.dtype), center.to(attribute_values.dtype)


class MultiObjectiveRewardModel(EmbeddingRewardModel):
    """K attribute regressors mixed by a prompt-conditioned gate (see the module docstring).

    ``forward`` returns the (M, K) attribute predictions, like any multi-output
    :class:`~prefkit.rm.model.RewardModel`; :meth:`score` returns the gated reward.
    """

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
        if spec.mode != MODE:
            raise ValueError(
                f"MultiObjectiveRewardModel: spec mode must be {MODE!r}, got {spec.mode!r}."
            )
        super().__init__(
            spec,
            cache_dir=cache_dir,
            device=device,
            encoder=encoder,
            use_cache=use_cache,
            embed_batch_size=embed_batch_size,
        )
        num_attributes = self.num_outputs
        self.gate = RewardHead(spec.embedding_dim, spec.gate_hidden_sizes, num_attributes)
        self.gate_temperature = spec.gate_temperature
        self.log_reward_scale = nn.Parameter(torch.zeros(()))
        self.register_buffer("length_coefficients", torch.zeros(num_attributes))
        self.register_buffer("length_center", torch.zeros(()))

    # -- the three parts ------------------------------------------------------------------

    def forward(self, items: MultiObjectiveItems) -> torch.Tensor:  # type: ignore[override]
        """(M, K) attribute predictions (before length decorrelation)."""
        return self.head(items.features)

    def adjusted_attributes(
        self, attribute_values: torch.Tensor, log_lengths: torch.Tensor
    ) -> torch.Tensor:
        """(M, K) ``r_k - lambda_k (l - center)``; unchanged when decorrelation is off (lambda = 0)."""
        return (
            attribute_values
            - (log_lengths - self.length_center).unsqueeze(1) * self.length_coefficients
        )

    def gate_probabilities(self, prompt_embeddings: torch.Tensor) -> torch.Tensor:
        """(M, K) mixing weights, ``softmax(gate(x) / T)``; each row sums to 1."""
        return torch.softmax(self.gate(prompt_embeddings) / self.gate_temperature, dim=-1)

    def mix(self, gate_weights: torch.Tensor, adjusted: torch.Tensor) -> torch.Tensor:
        """(M,) rewards ``s * sum_k g_k r'_k`` (ArmoRM eq. for the preference score)."""
        return self.log_reward_scale.exp() * (gate_weights * adjusted).sum(dim=-1)

    def reward(self, items: MultiObjectiveItems) -> torch.Tensor:
        """(M,) rewards of the items."""
        adjusted = self.adjusted_attributes(self(items), items.log_lengths)
        return self.mix(self.gate_probabilities(items.prompt_embeddings), adjusted)

    # -- featurizing -----------------------------------------------------------------------

    def featurize_items(
        self, prompts: Sequence[str], responses: Sequence[str]
    ) -> MultiObjectiveItems:
        """Embed prompts and responses (through the cache) into the model's inputs."""
        return self.featurize_with_token_counts(prompts, responses)[0]

    def featurize_with_token_counts(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        progress: Callable[[int], None] | None = None,
    ) -> tuple[MultiObjectiveItems, np.ndarray, np.ndarray]:
        """The model's inputs plus (N,) prompt and (N,) response token counts before truncation."""
        if len(prompts) != len(responses):
            raise ValueError(
                f"multi-objective model: got {len(prompts)} prompts and {len(responses)} responses; "
                "give one prompt per response."
            )
        encoder = self.encoder
        response_encoded = encode_texts(
            encoder, list(responses), side="right", cache=self.cache, progress=progress
        )
        prompt_encoded = encode_texts(
            encoder, list(prompts), side="left", cache=self.cache, progress=progress
        )
        chars = np.array([len(text) for text in responses], dtype=np.float32)
        features = build_features(
            self.features,
            prompt_encoded.embeddings,
            response_encoded.embeddings,
            chars,
            response_encoded.num_tokens.astype(np.float32),
            responses,
        )
        items = MultiObjectiveItems(
            torch.from_numpy(features),
            torch.from_numpy(prompt_encoded.embeddings),
            torch.from_numpy(response_log_lengths(responses)),
        )
        return items, prompt_encoded.num_tokens, response_encoded.num_tokens

    @torch.no_grad()
    def evaluate_items(
        self, items: MultiObjectiveItems, *, batch_size: int = 256
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N, K) attributes, (N, K) gate weights and (N,) rewards of featurized items."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        attributes, gates, rewards = [], [], []
        for start in range(0, len(items.log_lengths), batch_size):
            batch = items.select(
                torch.arange(start, min(start + batch_size, len(items.log_lengths)))
            ).to(device)
            values = self(batch)
            weights = self.gate_probabilities(batch.prompt_embeddings)
            attributes.append(values.float().cpu().numpy())
            gates.append(weights.float().cpu().numpy())
            rewards.append(
                self.mix(weights, self.adjusted_attributes(values, batch.log_lengths))
                .float()
                .cpu()
                .numpy()
            )
        self.train(was_training)
        num_attributes = self.num_outputs
        if not attributes:
            empty = np.zeros((0, num_attributes), dtype=np.float32)
            return empty, empty.copy(), np.zeros(0, dtype=np.float32)
        return np.concatenate(attributes), np.concatenate(gates), np.concatenate(rewards)

    # -- the RewardModel interface ---------------------------------------------------------

    def predict(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        *,
        batch_size: int = 64,
        progress: Any = None,
    ) -> np.ndarray:
        """(N, K) attribute predictions (before length decorrelation)."""
        return self.evaluate_items(self.featurize_items(prompts, responses), batch_size=batch_size)[
            0
        ]

    def score(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        *,
        batch_size: int = 64,
        normalize: bool = False,
    ) -> np.ndarray:
        """(N,) gated rewards; with ``normalize``, standardised by the training mean and std."""
        rewards = self.evaluate_items(
            self.featurize_items(prompts, responses), batch_size=batch_size
        )[2]
        if normalize:
            rewards = self.normalize(rewards)
        return rewards

    def predict_and_score(
        self, prompts: Sequence[str], responses: Sequence[str], *, batch_size: int = 64
    ) -> tuple[np.ndarray, np.ndarray]:
        """(N, K) attribute predictions and (N,) gated rewards, embedding the texts once."""
        attributes, _, rewards = self.evaluate_items(
            self.featurize_items(prompts, responses), batch_size=batch_size
        )
        return attributes, rewards

    def gate_weights(
        self, prompts: Sequence[str], *, batch_size: int = 256
    ) -> dict[str, np.ndarray]:
        """Attribute name -> (N,) mixing weight the gate gives it for each prompt (rows sum to 1)."""
        embeddings = torch.from_numpy(
            encode_texts(self.encoder, list(prompts), side="left", cache=self.cache).embeddings
        )
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        with torch.no_grad():
            weights = torch.cat(
                [
                    self.gate_probabilities(embeddings[start : start + batch_size].to(device))
                    .float()
                    .cpu()
                    for start in range(0, len(embeddings), batch_size)
                ]
                or [torch.zeros(0, self.num_outputs)]
            ).numpy()
        self.train(was_training)
        return {name: weights[:, column] for column, name in enumerate(self.attributes or [])}
