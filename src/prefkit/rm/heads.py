"""Reward heads and the features they read in embedding mode.

A feature vector for one (prompt, response) is the concatenation, in the order
given by the feature spec, of:

- ``response``: the response embedding (D,)
- ``prompt``: the prompt embedding (D,)
- ``product``: their element-wise product (D,), a cheap prompt-response interaction
- ``length``: log(1 + characters) and log(1 + tokens) of the response (2,)
- ``stats``: simple surface statistics of the response (10,), see :func:`text_statistics`

The head standardises its input with the training set's per-feature mean and
standard deviation (stored as buffers, so saved with the weights) and maps it
to ``num_outputs`` values with a linear layer or an MLP.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

NUM_TEXT_STATISTICS = 10
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")
_SENTENCE_END = re.compile(r"[.!?]+")


def text_statistics(text: str) -> list[float]:
    """Surface statistics of a text: log words, log sentences, mean word length,
    distinct-word ratio, uppercase share of letters, log '!' count, log '?' count,
    punctuation share of characters, contains a link, log words per sentence."""
    words = _WORD.findall(text)
    num_words = max(len(words), 1)
    sentences = max(len(_SENTENCE_END.findall(text)), 1)
    letters = max(sum(char.isalpha() for char in text), 1)
    punctuation = sum(not char.isalnum() and not char.isspace() for char in text)
    return [
        math.log1p(len(words)),
        math.log1p(sentences),
        sum(len(word) for word in words) / num_words,
        len({word.lower() for word in words}) / num_words,
        sum(char.isupper() for char in text) / letters,
        math.log1p(text.count("!")),
        math.log1p(text.count("?")),
        punctuation / max(len(text), 1),
        float("http" in text or "www." in text),
        math.log1p(len(words) / sentences),
    ]


def feature_dim(names: Sequence[str], embedding_dim: int) -> int:
    widths = {"length": 2, "stats": NUM_TEXT_STATISTICS}
    return sum(widths.get(name, embedding_dim) for name in names)


def build_features(
    names: Sequence[str],
    prompt_embeddings: np.ndarray,
    response_embeddings: np.ndarray,
    response_chars: np.ndarray,
    response_tokens: np.ndarray,
    responses: Sequence[str] = (),
) -> np.ndarray:
    """(N, F) float32 features from (N, D) embeddings, (N,) response lengths and,
    for ``stats``, the response texts."""
    parts = []
    for name in names:
        if name == "response":
            parts.append(response_embeddings)
        elif name == "prompt":
            parts.append(prompt_embeddings)
        elif name == "product":
            parts.append(prompt_embeddings * response_embeddings)
        elif name == "length":
            parts.append(np.stack([np.log1p(response_chars), np.log1p(response_tokens)], axis=1))
        elif name == "stats":
            if len(responses) != len(response_chars):
                raise ValueError(
                    f"stats: got {len(responses)} response texts for {len(response_chars)} rows"
                )
            # Row by row: a list of lists of Python floats would take ~9 times the array.
            statistics = np.zeros((len(response_chars), NUM_TEXT_STATISTICS), dtype=np.float32)
            for row, text in enumerate(responses):
                statistics[row] = text_statistics(text)
            parts.append(statistics)
    return np.concatenate(parts, axis=1).astype(np.float32, copy=False)


class RewardHead(nn.Module):
    """Standardise features, then linear (``hidden_sizes=()``) or MLP with GELU and dropout."""

    def __init__(
        self,
        input_dim: int,
        hidden_sizes: Sequence[int] = (),
        num_outputs: int = 1,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(input_dim))
        self.register_buffer("feature_std", torch.ones(input_dim))
        layers: list[nn.Module] = []
        width = input_dim
        for hidden in hidden_sizes:
            layers += [nn.Dropout(dropout), nn.Linear(width, hidden), nn.GELU()]
            width = hidden
        layers += [nn.Dropout(dropout), nn.Linear(width, num_outputs)]
        self.layers = nn.Sequential(*layers)

    def set_standardization(self, features: torch.Tensor) -> None:
        """Store the per-feature mean and std of (N, F) training features."""
        self.feature_mean.copy_(features.mean(dim=0))
        self.feature_std.copy_(features.std(dim=0, unbiased=False).clamp(min=1e-6))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(M, F) -> (M, num_outputs)."""
        return self.layers((features - self.feature_mean) / self.feature_std)
