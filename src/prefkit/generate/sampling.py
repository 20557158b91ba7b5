"""Sampling settings and seeded per-sequence sampling, independent of the batch.

Every generated sequence has its own random stream, seeded from the run's seed,
the prompt and the sample index (:func:`~prefkit.generate.config.sequence_seed`). A token is drawn with
the Gumbel-max trick: ``argmax(log_softmax(logits / T) + G)`` with ``G`` Gumbel
noise from the sequence's own generator, which is a draw from the filtered
softmax. So a sequence's tokens do not depend on which other sequences share
its batch, and the same seed gives the same samples at any ``--batch-size``
(up to floating-point ties between two logits, which batched matrix products
may order differently; none occur in practice at float32).
"""

from __future__ import annotations

import torch

from prefkit.generate.config import SamplingConfig

__all__ = ["GumbelSampler", "filter_logits"]


def filter_logits(
    logits: torch.Tensor, temperature: float, top_k: int, top_p: float
) -> torch.Tensor:
    """(B, V) log-probabilities after temperature, top-k and top-p; removed tokens are -inf."""
    logits = logits.float() / temperature
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Remove a token when the tokens before it already hold top_p; the first always stays.
        remove_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
        remove = remove_sorted.scatter(-1, order, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    return torch.log_softmax(logits, dim=-1)


class GumbelSampler:
    """A ``transformers`` logits processor that turns greedy decoding into sampling.

    Row ``i`` of every step gets Gumbel noise from ``generators[i]``, so with
    ``do_sample=False`` the argmax that ``generate`` takes is a sample from the
    filtered distribution drawn from that row's own stream.
    """

    def __init__(self, seeds: list[int], config: SamplingConfig):
        self.config = config
        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.config.temperature == 0:
            return scores
        logps = filter_logits(scores, self.config.temperature, self.config.top_k, self.config.top_p)
        vocab = logps.shape[-1]
        uniform = torch.stack(
            [torch.rand(vocab, generator=generator) for generator in self.generators]
        )  # (B, V), drawn on the CPU so the stream is the same on any device
        gumbel = -torch.log(-torch.log(uniform.clamp_min(1e-20)))
        return logps + gumbel.to(logps.device)
