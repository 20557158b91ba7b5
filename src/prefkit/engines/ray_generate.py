"""``prefkit generate --executor ray``: the hf engine's generation on a pool of Ray actors.

The pipeline:

1. **prompts** (this process): the input is read and its prompts made distinct exactly
   as the local run does (one reader, so the same rejects file and counts), and a resumed
   run skips the prompts already written. Distinct prompts are a property of the whole
   input, so this step is not spread over shards; it reads prompts only, which is light
   beside generating from them.
2. **generate** (an actor pool, :func:`~prefkit.engines.ray_pool.map_on_actors`): the
   prompts go, ``--chunk-size`` at a time, one chunk per block, to actors that each load
   the policy (and the reward model, with ``--reward``) once and run one chunk per call
   with :class:`~prefkit.generate.run.ChunkGenerator`, the local run's own code. An actor
   that dies is restarted and its chunks run again.
3. **write** (this process): the chunks are put back in input order by
   :class:`~prefkit.engines.ray_pool.ChunkOrder` (which refuses a chunk seen twice or a
   missing one) and written, chunk by chunk and flushed, as the local run writes them.

Every sequence samples from its own stream, seeded by the run's seed, the prompt and the
sample index (:func:`~prefkit.generate.config.sequence_seed`), never by its batch or its
chunk, so the output is the local run's record for record, sampled or greedy. ``ray`` is
imported only when a run starts.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefkit.engines.ray_pool import (
    ChunkOrder,
    check_actor_device,
    iter_chunks,
    map_on_actors,
    ordered_data_context,
)
from prefkit.engines.ray_runtime import RayOptions, ray_runtime
from prefkit.errors import UserInputError
from prefkit.generate.config import SamplingConfig
from prefkit.generate.prompts import PromptItem
from prefkit.generate.run import ChunkResult


@dataclasses.dataclass
class PromptChunk:
    """Up to ``chunk_size`` prompts, what passes between this process and the actors."""

    index: int
    """Its place in the run."""
    items: list[PromptItem]
    last: bool = False
    """The run's last chunk."""
    result: ChunkResult | None = None
    """Filled in by the generating actor."""
    error: str | None = None
    """The user error that stopped the chunk (a conversation without a chat template...),
    raised in this process when the chunk's turn comes, as the local run raises it."""
    shard: int = 0
    """The prompts of a run are one sequence (:class:`ChunkOrder` orders by shard, index)."""


class _GenerateActor:
    """A Ray Data actor: loads the policy (and reward model) once, then runs one chunk per
    call with the local run's :class:`~prefkit.generate.run.ChunkGenerator`."""

    def __init__(
        self,
        model: str,
        tokenizer: str,
        batch_size: int,
        sampling: dict[str, Any],
        generation: dict[str, Any],
        max_prompt_length: int,
        chat_template: bool,
        reward: str | None,
        reward_batch_size: int,
        cache_dir: str | None,
        best_of: bool,
        token_ids: bool,
        device: str,
    ):
        from transformers import AutoTokenizer

        from prefkit.align.trainer import load_causal_lm
        from prefkit.generate.engines import HFEngine
        from prefkit.generate.run import ChunkGenerator

        check_actor_device(device)
        loaded = AutoTokenizer.from_pretrained(tokenizer, trust_remote_code=False)
        engine = HFEngine(load_causal_lm(model).to(device), loaded, batch_size=batch_size)
        scorer = None
        if reward is not None:
            from prefkit.rm.model import RewardModel

            reward_model = RewardModel.load(reward, device=device, cache_dir=cache_dir)

            def scorer(prompt_texts: list[str], responses: list[str]):
                return reward_model.score(prompt_texts, responses, batch_size=reward_batch_size)

        config = SamplingConfig(**{**sampling, "stop": tuple(sampling["stop"])})
        self.run = ChunkGenerator(
            engine,
            loaded,
            config,
            generation,
            max_prompt_length,
            chat_template=chat_template,
            scorer=scorer,
            best_of=best_of,
            token_ids=token_ids,
        )

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        chunks = []
        for chunk in batch["chunk"]:
            try:
                chunks.append(dataclasses.replace(chunk, items=[], result=self.run(chunk.items)))
            except UserInputError as error:
                chunks.append(dataclasses.replace(chunk, items=[], error=str(error)))
        return {"chunk": np.array(chunks, dtype=object)}


class RayGeneration:
    """Runs chunks of prompts on Ray actors: an executor for
    :func:`~prefkit.generate.run.generate_candidates` (called with the chunks, it gives
    their results in chunk order as they are ready).

    Args:
        model: the policy folder; every node of a cluster must be able to read it.
        tokenizer: the tokenizer folder (usually ``model``).
        sampling: how to sample (each actor gets the same settings).
        generation: what every record's ``metadata.generation`` says.
        options: where to run and how many actors.
        reward: a reward-model folder to score every response with (None: unscored).
    """

    def __init__(
        self,
        model: str | Path,
        tokenizer: str | Path,
        *,
        sampling: SamplingConfig,
        generation: dict[str, Any],
        max_prompt_length: int,
        options: RayOptions,
        batch_size: int = 16,
        chat_template: bool = True,
        reward: str | Path | None = None,
        reward_batch_size: int = 64,
        cache_dir: str | Path | None = None,
        best_of: bool = False,
        token_ids: bool = False,
    ):
        self.options = options
        self.actor_kwargs: dict[str, Any] = {
            "model": str(Path(model).resolve()),
            "tokenizer": str(Path(tokenizer).resolve()),
            "batch_size": batch_size,
            "sampling": sampling.to_dict(),
            # exactly what a reader of the file gets, as generate_candidates writes it
            "generation": json.loads(json.dumps(generation)),
            "max_prompt_length": max_prompt_length,
            "chat_template": chat_template,
            "reward": None if reward is None else str(Path(reward).resolve()),
            "reward_batch_size": reward_batch_size,
            "cache_dir": None if cache_dir is None else str(Path(cache_dir).resolve()),
            "best_of": best_of,
            "token_ids": token_ids,
            "device": options.device,
        }
        self.workers: int | None = None
        """The actors of the last run (once it started)."""

    def __call__(self, chunks: list[list[PromptItem]]) -> Iterator[ChunkResult]:
        if not chunks:  # nothing left to generate (an empty input, or a finished resume)
            return
        import ray

        with ray_runtime(self.options) as cluster:
            self.workers = min(self.options.actor_count(cluster), len(chunks))
            with ordered_data_context(ray):
                rows = ray.data.from_items(
                    [
                        {"chunk": PromptChunk(index, items, last=index == len(chunks) - 1)}
                        for index, items in enumerate(chunks)
                    ],
                    override_num_blocks=len(chunks),
                )
                dataset = map_on_actors(
                    ray, rows, _GenerateActor, self.actor_kwargs, self.options, self.workers
                )
            order = ChunkOrder(1)
            for arrived in iter_chunks(dataset):
                for chunk in order.add(arrived):
                    if chunk.error is not None:
                        raise UserInputError(chunk.error)
                    assert chunk.result is not None
                    yield chunk.result
            order.finish()
