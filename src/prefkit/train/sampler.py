"""Batch order for the training loop: length-grouped, seeded, shardable.

The order of global batches is a pure function of ``(seed, epoch)`` and the
example lengths. Nothing reads or advances the global RNGs, so the training loop
can recompute the order of any epoch after a restart and skip the batches it
already did.

Grouping follows the usual "mega-batch" recipe: shuffle all indices, cut the
permutation into chunks of ``mega_batch_factor`` batches, sort each chunk by
length (longest first), cut the sorted chunk into batches, then shuffle the order
of the batches. Each batch therefore holds examples of similar length (little
padding), while which examples meet in a batch still changes from epoch to epoch.

A global batch is shared between ranks with :func:`shard_batch` and a rank's
share is cut into micro-batches with :func:`split_micro_batches`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Odd 64-bit constant (the golden-ratio increment of SplitMix64); multiplying the
# seed by it keeps (seed, epoch) and (seed + 1, epoch - k) from colliding.
_SEED_MIX = 0x9E3779B97F4A7C15


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator seeded from ``(seed, epoch)`` alone."""
    generator = torch.Generator()
    generator.manual_seed((seed * _SEED_MIX + epoch) % 2**64)
    return generator


class LengthGroupedBatchSampler:
    """Deterministic global batches of example indices, grouped by length.

    Args:
        lengths: length of every example (tokens, or any size proxy); one entry
            per example, indices are positions in this sequence.
        batch_size: examples per global batch (one optimizer step).
        seed: with the epoch, fixes the order completely.
        group_by_length: when False, batches are plain slices of a random
            permutation.
        mega_batch_factor: how many batches form one chunk that is sorted by
            length. Larger groups more tightly and shuffles less.

    Every index appears exactly once per epoch. Only the last batch of an epoch
    may be smaller than ``batch_size`` (when ``len(lengths)`` is not a multiple of
    it); it is always the last batch, so every other step sees a full batch.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        seed: int,
        group_by_length: bool = True,
        mega_batch_factor: int = 50,
    ) -> None:
        if len(lengths) == 0:
            raise ValueError("LengthGroupedBatchSampler: got no examples (lengths is empty).")
        if batch_size < 1:
            raise ValueError(
                f"LengthGroupedBatchSampler: batch_size must be >= 1, got {batch_size}."
            )
        if mega_batch_factor < 1:
            raise ValueError(
                f"LengthGroupedBatchSampler: mega_batch_factor must be >= 1, got {mega_batch_factor}."
            )
        self.lengths = [int(length) for length in lengths]
        self.batch_size = batch_size
        self.seed = seed
        self.group_by_length = group_by_length
        self.mega_batch_factor = mega_batch_factor

    def __len__(self) -> int:
        """Number of global batches per epoch (the last one may be partial)."""
        return -(-len(self.lengths) // self.batch_size)

    def batches(self, epoch: int) -> list[list[int]]:
        """The global batches of ``epoch``, in the order they are trained on."""
        generator = epoch_generator(self.seed, epoch)
        permutation = torch.randperm(len(self.lengths), generator=generator).tolist()
        if not self.group_by_length:
            return _cut(permutation, self.batch_size)

        chunk_size = self.batch_size * self.mega_batch_factor
        batches: list[list[int]] = []
        for chunk in _cut(permutation, chunk_size):
            # sorted() is stable, so ties keep their (seeded) permutation order.
            longest_first = sorted(chunk, key=lambda index: -self.lengths[index])
            batches.extend(_cut(longest_first, self.batch_size))

        # Only the very last chunk can yield a short batch; keep it at the end so
        # that the shuffle below moves full batches only.
        partial = [batches.pop()] if len(batches[-1]) < self.batch_size else []
        batch_order = torch.randperm(len(batches), generator=generator).tolist()
        return [batches[position] for position in batch_order] + partial


def shard_batch(batch: Sequence[int], rank: int, world_size: int) -> list[int]:
    """The share of a global batch that ``rank`` trains on.

    Strided, so shares differ in size by at most one example; a rank's share is
    empty when the (last, partial) batch has fewer examples than ranks.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"shard_batch: rank must be in [0, {world_size}), got {rank}.")
    return list(batch[rank::world_size])


def split_micro_batches(indices: Sequence[int], micro_batch_size: int) -> list[list[int]]:
    """Consecutive micro-batches of at most ``micro_batch_size`` indices."""
    if micro_batch_size < 1:
        raise ValueError(
            f"split_micro_batches: micro_batch_size must be >= 1, got {micro_batch_size}."
        )
    return _cut(list(indices), micro_batch_size)


def _cut(items: list[int], size: int) -> list[list[int]]:
    return [items[start : start + size] for start in range(0, len(items), size)]
