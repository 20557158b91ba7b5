"""``train_ensemble``: E reward heads on the same cached embeddings, stored as one model.

Each member is trained by :func:`~prefkit.rm.train.train_reward_model` with its own
seed (the loop's seed + member index) on its own bootstrap resample of the
training records (drawn with replacement, as many as there are records, from a
generator seeded by the loop's seed). The encoder's embeddings are cached on
disk, so only the first member embeds texts; the others read the cache.

The saved model is one embedding-mode folder with ``ensemble_size`` = E: its
reward is the members' mean, :meth:`~prefkit.rm.model.RewardModel.compare` the
mean of their probabilities, and :func:`prefkit.rm.scoring.score_records` adds
the members' standard deviation, a measure of how unsure the ensemble is
(Coste et al. 2023 use it as a penalty against reward over-optimisation).
With held-out pairs the ensemble gets one calibration temperature, fitted on its
mean margins (each member also has its own, in its folder). Members' own folders
and training checkpoints stay in ``members/<i>/`` so a rerun resumes them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from prefkit.data.records import AnyRecord, PairwiseRecord
from prefkit.errors import UserInputError
from prefkit.rm.embedding_model import EmbeddingRewardModel
from prefkit.rm.examples import TruncationCounts, rating_attributes, record_items
from prefkit.rm.result import RewardTrainResult, temperature_summary
from prefkit.rm.task import evaluate_examples
from prefkit.rm.train import (
    RMTrainConfig,
    held_out_temperature,
    hold_out,
    prepare,
    train_reward_model,
)
from prefkit.train.loop import TrainCallback


def train_ensemble(
    records: Sequence[AnyRecord],
    config: RMTrainConfig,
    out_dir: str | os.PathLike[str],
    size: int,
    *,
    eval_records: Sequence[AnyRecord] | None = None,
    resume: bool = True,
    callbacks: Sequence[TrainCallback] = (),
    log: Callable[[str], None] = print,
    source: str = "data",
) -> RewardTrainResult:
    """Train ``size`` (>= 2) embedding-mode heads and save them to ``out_dir`` as one model.

    The result's stages are ``member0`` ... (each member's training run); its model is
    the ensemble, whose metrics on the training and held-out records are in
    ``spec.training["ensemble"]``.
    """
    if config.mode != "embedding":
        raise UserInputError(f"ensemble: needs mode embedding, got {config.mode!r}.")
    if size < 2:
        raise UserInputError(f"ensemble: size must be >= 2, got {size}.")
    if not records:
        raise UserInputError(f"{source}: no records to train on.")
    out = Path(out_dir)
    # One held-out split for the whole ensemble: the members train on the same records.
    records, eval_records = hold_out(records, eval_records, config, log)
    config = dataclasses.replace(config, eval_fraction=0.0)
    seed = config.loop.seed
    rng = np.random.default_rng(seed)
    members = []
    stages = {}
    for member in range(size):
        rows = rng.integers(0, len(records), size=len(records))
        member_config = dataclasses.replace(
            config, train=dataclasses.replace(config.loop, seed=seed + member)
        )
        log(f"ensemble member {member + 1}/{size} (seed {seed + member}, bootstrap resample)")
        result = train_reward_model(
            [records[row] for row in rows],
            member_config,
            out / "members" / str(member),
            eval_records=eval_records,
            resume=resume,
            callbacks=callbacks,
            log=log,
            source=source,
        )
        members.append(result.model)
        stages[f"member{member}"] = result.stages["train"]

    first = members[0]
    spec = dataclasses.replace(first.spec, ensemble_size=size)
    model = EmbeddingRewardModel(
        spec, cache_dir=config.cache_dir, embed_batch_size=config.embed_batch_size
    )
    for head, trained in zip(model.heads, members, strict=True):
        head.load_state_dict(trained.head.state_dict())  # type: ignore[union-attr]
    if spec.tie_model == "davidson":
        with torch.no_grad():
            model.tie_log_nu.copy_(torch.stack([trained.tie_log_nu for trained in members]).mean())
    model.eval()

    items = [item for record in records for item in record_items(record)]
    rewards = model.score([prompt for prompt, _ in items], [response for _, response in items])
    attributes = rating_attributes(records)
    ensemble_metrics: dict[str, dict[str, float]] = {"train_metrics": {}, "eval_metrics": {}}
    calibration = None
    for name, part in (("train_metrics", records), ("eval_metrics", eval_records)):
        if part:
            counts = TruncationCounts(config.max_length, config.truncation)
            store, examples = prepare(model, part, config, attributes, counts)
            ensemble_metrics[name] = evaluate_examples(model, store, examples, first.spec.loss)
    if eval_records and records[0].kind == PairwiseRecord.kind and config.fit_temperature:
        # One T for the ensemble, fitted on its mean margins over the held-out pairs.
        calibration = held_out_temperature(model, store, examples)
        log("ensemble " + temperature_summary(calibration))
    model.spec = dataclasses.replace(
        spec,
        reward_mean=float(rewards.mean()),
        reward_std=float(rewards.std()) or 1.0,
        temperature=calibration["temperature"] if calibration is not None else 1.0,
        training={
            **dict(first.spec.training or {}),
            "records": len(records),
            **ensemble_metrics,
            "calibration": calibration,
            "ensemble": {
                "size": size,
                "seeds": [seed + member for member in range(size)],
                "resample": "bootstrap",
                "members": [dict(trained.spec.training or {}) for trained in members],
            },
        },
    )
    model.save(out)
    log(f"ensemble of {size}: {ensemble_metrics}")
    return RewardTrainResult(model, out, first.spec.loss, stages, calibration)
