"""Iterative DPO: rounds of generate -> score -> best-worst pairs -> offline DPO.

The recipe of RLHFlow's online-RLHF (Dong et al. 2024, "RLHF Workflow: From
Reward Modeling to Online RLHF", Algorithm 1; Xiong et al. 2024, "Iterative
Preference Learning from Human Feedback"), built from prefkit's own parts, each
called, not copied. Round ``r = 1..K`` writes ``OUT/round-r/``:

1. ``candidates.jsonl``: ``num_generations`` samples per prompt from the round's
   starting policy (round 1: the given model; round r: round r - 1's model), by
   :func:`prefkit.generate.run.generate_candidates` with the HF engine. Each
   sample has its own seeded stream (the run's seed, the round, the prompt, the
   sample index), so a round's candidates are a pure function of its policy.
2. ``rewards.jsonl``: the reward (:func:`prefkit.rl.rewards.load_reward`: reward
   models, ``python:`` functions, reward servers, weighted as in the other
   algorithms) of every sample, one row per prompt in the shape of
   ``prefkit rm score`` (``{"id", "rewards": [...]}``, so ``prefkit data pairs
   --scores`` reads it), with ``raw_rewards`` (before the missing-EOS penalty and
   reward clipping) and each function's own values. A None reward leaves the
   sample out of the pair building.
3. ``pairs.jsonl`` (and ``pairs_stats.json``): best-worst pairs by
   :func:`prefkit.data.pairs.build_pairs` (West-of-N); ties, identical responses
   and prompts with fewer than two rewarded samples are skipped and counted. A
   round where every prompt ties (a policy that has converged on the reward) has
   no pairs: it trains nothing and keeps its policy as its model (logged, and
   ``pairs`` is 0 in ``round.json``); a round where the reward gave no sample a
   value is an error.
4. ``model/`` (a Hugging Face model folder), ``metrics.jsonl`` (one line per DPO
   step): :func:`prefkit.align.trainer.align` on the pairs with ``dpo_loss``
   (default DPO), ``beta``, ``--epochs`` or ``max_steps`` per round, and LoRA
   (merged into the saved model). Its checkpoints (``checkpoints/``) are kept
   while the round trains and removed once the round is recorded.
5. ``round.json``: the round's metrics (reward mean and std of its candidates,
   per function, EOS and truncated fractions, pairs kept and skipped, the last
   DPO loss, seconds per stage); ``OUT/rounds.jsonl`` gathers one line per
   finished round.

The reference of round r's DPO is the policy the round starts from (as
RLHFlow's online-RLHF, whose iteration t uses the model of iteration t - 1 as
both the initial policy and the reference), so each round is a DPO step that is
KL-anchored to the previous round, not to the original model.
``round_reference="original"`` anchors every round to the original model
instead, and ``ref_model`` to a model of your choice. With LoRA the reference
is the round's starting policy (its adapters disabled).

Resume: a round is finished when its ``round.json`` and its ``model/`` are there.
Started again with the same arguments, the run skips finished rounds and, inside
an unfinished round, the stages whose files are complete: candidates resume
from the prompts already written, rewards and pairs are reused when their files
exist (they are written to a temporary name and renamed), and the DPO resumes
from its last checkpoint; a stage that runs again makes every later stage of
the round run again. Every stage is seeded, so the result equals an
uninterrupted run. A run whose rounds are all finished does nothing and says so
(:attr:`IterativeResult.already_done`); raising ``rounds`` continues it.
``OUT/run.json`` holds the settings; a rerun with other settings is an error.

Limits: one process (no ``accelerate launch``: the stages are not sharded), the
HF generation engine only, and the pairs are re-tokenized from the decoded text
by the align trainer (as offline DPO on a generated file would be), so a
completion cut at ``max_new_tokens`` gets an EOS appended there; the
missing-EOS penalty (``missing_eos_penalty``) makes such samples less likely to
be chosen.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prefkit.data.records import RankingRecord, record_from_dict
from prefkit.errors import UserInputError
from prefkit.generate.config import sequence_seed
from prefkit.generate.prompts import PromptItem
from prefkit.rl.config import RLConfig
from prefkit.train.loop import TrainCallback, TrainConfig

__all__ = ["IterativeResult", "RoundResult", "iterative_dpo", "round_dir"]

STAGES = ("candidates", "rewards", "pairs", "model")
TIMING = ("generation_s", "reward_s", "train_s")
"""Keys of round.json that are wall times (they differ between equal runs)."""
_SCORE_CHUNK = 64
"""Prompts whose samples go to the reward in one call."""


@dataclass
class RoundResult:
    """One round of :func:`iterative_dpo`."""

    round: int
    directory: Path
    metrics: dict[str, Any]
    """The content of ``round.json``."""
    ran: tuple[str, ...]
    """Stages this call ran (of ``candidates``, ``rewards``, ``pairs``, ``model``); () when the
    round was finished before."""


@dataclass
class IterativeResult:
    """What :func:`iterative_dpo` did."""

    rounds: list[RoundResult]
    model_dir: Path
    """The last round's model folder."""
    already_done: bool
    """True when every round was finished before this call (nothing was run)."""

    def summary(self) -> str:
        if self.already_done:
            return (
                f"all {len(self.rounds)} rounds were already done; nothing to run "
                f"(model: {self.model_dir})"
            )
        parts = []
        for item in self.rounds:
            metrics = item.metrics
            state = "done before" if not item.ran else "ran " + ",".join(item.ran)
            parts.append(
                f"round {item.round} ({state}): reward {_number(metrics['reward'])} "
                f"+- {_number(metrics['reward_std'])}, {metrics['pairs']} pairs "
                f"({metrics['skipped_prompts']} prompts skipped)"
            )
        return "; ".join(parts)


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def round_dir(out_dir: str | os.PathLike[str], round_number: int) -> Path:
    """The folder of round ``round_number`` (from 1) under ``out_dir``."""
    return Path(out_dir) / f"round-{round_number}"


# ---------------------------------------------------------------------------
# small helpers


def _write_json_atomic(path: Path, value: Any) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    partial.replace(path)


def _model_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def _round_complete(folder: Path) -> bool:
    return (folder / "round.json").is_file() and _model_complete(folder / "model")


def _prompt_items(
    prompts: Sequence[str | PromptItem | Mapping[str, Any]],
) -> tuple[list[PromptItem], dict[str, dict[str, Any]]]:
    """Distinct-id prompt items, and each prompt's other record fields (reward columns)."""
    items: list[PromptItem] = []
    columns: dict[str, dict[str, Any]] = {}
    column_names: set[str] | None = None
    for index, item in enumerate(prompts):
        fields: dict[str, Any] = {}
        if isinstance(item, PromptItem):
            prompt_item = item
        elif isinstance(item, Mapping):
            if "prompt" not in item:
                raise UserInputError(f"prompt {index}: a mapping needs a 'prompt' key")
            fields = {key: value for key, value in item.items() if key != "prompt"}
            prompt_item = PromptItem(id=str(item.get("id", index)), prompt=item["prompt"])
        elif isinstance(item, str):
            prompt_item = PromptItem(id=str(index), prompt=item)
        else:
            raise UserInputError(
                f"prompt {index}: expected a string, a PromptItem or a mapping with a 'prompt' "
                f"key, got {type(item).__name__}"
            )
        if column_names is None:
            column_names = set(fields)
        elif set(fields) != column_names:
            raise UserInputError(
                f"prompt {index}: has the fields {sorted(fields)} but the first prompt has "
                f"{sorted(column_names)}; every prompt needs the same fields (they are passed "
                "to the reward as columns)"
            )
        if prompt_item.id in columns:
            raise UserInputError(
                f"prompt {index}: the id {prompt_item.id!r} is used twice; give each prompt "
                "its own id"
            )
        columns[prompt_item.id] = fields
        items.append(prompt_item)
    if not items:
        raise UserInputError("no prompts to train on")
    return items, columns


def _read_candidates(path: Path) -> list[RankingRecord]:
    records = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            record = record_from_dict(json.loads(line))
            if not isinstance(record, RankingRecord):
                raise UserInputError(f"{path}:{line_number}: not a candidate set")
            records.append(record)
    return records


def _read_records(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as handle:
        return [record_from_dict(json.loads(line)) for line in handle if line.strip()]


def _check_settings(out_dir: Path, settings: dict[str, Any]) -> None:
    """Write ``OUT/run.json``, or check that a rerun uses the settings written there."""
    path = out_dir / "run.json"
    settings = json.loads(json.dumps(settings))
    if path.is_file():
        written = json.loads(path.read_text())
        changed = sorted(
            key
            for key in set(written) | set(settings)
            if key != "rounds" and written.get(key) != settings.get(key)
        )
        if changed:
            raise UserInputError(
                f"{path}: this run was started with other settings ({', '.join(changed)} "
                "differ); to resume, repeat the same command (only --rounds may grow); to start "
                "over, choose another --out"
            )
    _write_json_atomic(path, settings)


# ---------------------------------------------------------------------------
# the stages


def _generate(
    round_number: int,
    folder: Path,
    policy: nn.Module,
    policy_name: str,
    policy_digest: str | None,
    items: Sequence[PromptItem],
    tokenizer: Any,
    config: RLConfig,
    train_config: TrainConfig,
    max_prompt_length: int,
) -> tuple[bool, float]:
    """Candidates of the round (resumed when partly written); whether any were generated now."""
    from prefkit.generate.engines import HFEngine
    from prefkit.generate.run import generate_candidates

    sampling = config.sampling_config(
        sequence_seed(train_config.seed, "iterative_dpo round", round_number)
    )
    generation = {
        "model": policy_name,
        "weights_sha256": policy_digest,
        "engine": "hf",
        "sampling": sampling.to_dict(),
        "max_prompt_length": max_prompt_length,
        "chat_template": config.chat_template,
        "round": round_number,
    }
    engine = HFEngine(policy, tokenizer, batch_size=config.generation_batch_size)
    summary = generate_candidates(
        items,
        engine,
        tokenizer,
        sampling,
        folder / "candidates.jsonl",
        generation=generation,
        max_prompt_length=max_prompt_length,
        chat_template=config.chat_template,
        show_progress=train_config.progress,
        token_ids=True,
    )
    return summary.generated_prompts > 0, summary.seconds


def _score(
    records: Sequence[RankingRecord],
    reward: Any,
    columns: Mapping[str, Mapping[str, Any]],
    config: RLConfig,
) -> list[dict[str, Any]]:
    """One ``rewards.jsonl`` row per candidate set: the rewards used for pairing (missing-EOS
    penalty and clipping applied), the raw rewards and each function's values."""
    from prefkit.losses.rl import clip_rewards, missing_eos_penalty

    rows: list[dict[str, Any]] = []
    for start in range(0, len(records), _SCORE_CHUNK):
        chunk = records[start : start + _SCORE_CHUNK]
        infos = [info for record in chunk for info in record.metadata["responses"]]
        prompts = [record.prompt for record in chunk for _ in record.responses]
        names = list(columns[chunk[0].id])
        output = reward(
            prompts,
            [response for record in chunk for response in record.responses],
            [tuple(info["token_ids"]) for info in infos],
            **{
                name: [columns[record.id][name] for record in chunk for _ in record.responses]
                for name in names
            },
        )
        raw = list(output.rewards)
        valid = torch.tensor([value is not None for value in raw])
        values = torch.tensor([0.0 if value is None else float(value) for value in raw])
        ended = torch.tensor([info["finish_reason"] == "eos" for info in infos])
        values = missing_eos_penalty(values.double(), ended, config.missing_eos_penalty)
        if config.reward_clip is not None:
            values = clip_rewards(values, config.reward_clip)
        offset = 0
        for record in chunk:
            span = range(offset, offset + len(record.responses))
            offset += len(record.responses)
            rows.append(
                {
                    "id": record.id,
                    "rewards": [float(values[i]) if valid[i] else None for i in span],
                    "raw_rewards": [raw[i] for i in span],
                    "per_function": {
                        name: [function_values[i] for i in span]
                        for name, function_values in output.per_function.items()
                    },
                }
            )
    return rows


def _write_rewards(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    partial.replace(path)


def _read_rewards(path: Path, records: Sequence[RankingRecord]) -> dict[str, dict[str, Any]]:
    rows = {}
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            rows[str(row["id"])] = row
    if set(rows) != {record.id for record in records}:
        raise UserInputError(
            f"{path}: does not score the candidates of {path.parent / 'candidates.jsonl'}; "
            "delete it to score them again"
        )
    return rows


def _reward_metrics(
    records: Sequence[RankingRecord], rows: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """Reward statistics of the round's candidates (the rewards as given, before penalties)."""
    raw = [value for record in records for value in rows[record.id]["raw_rewards"]]
    kept = [float(value) for value in raw if value is not None]
    infos = [info for record in records for info in record.metadata["responses"]]
    lengths = [int(info["tokens"]) for info in infos]
    metrics: dict[str, Any] = {
        "candidates": len(raw),
        "reward": statistics.fmean(kept) if kept else None,
        "reward_std": statistics.pstdev(kept) if kept else None,
        "reward_none_fraction": 1 - len(kept) / len(raw),
        "completion_length": statistics.fmean(lengths),
        "eos_fraction": sum(info["finish_reason"] == "eos" for info in infos) / len(infos),
        "truncated_fraction": sum(info["finish_reason"] == "length" for info in infos) / len(infos),
    }
    names = list(rows[records[0].id]["per_function"])
    for name in names:
        values = [
            float(value)
            for record in records
            for value in rows[record.id]["per_function"][name]
            if value is not None
        ]
        metrics[f"reward/{name}"] = statistics.fmean(values) if values else None
    return metrics


def _build_pairs(
    folder: Path, records: Sequence[RankingRecord], rows: Mapping[str, Mapping[str, Any]], seed: int
) -> dict[str, Any]:
    """Best-worst pairs of the round into pairs.jsonl; their statistics (also pairs_stats.json)."""
    from prefkit.data.pairs import PairsConfig, attach_rewards, build_pairs
    from prefkit.data.write import write_records

    scored = attach_rewards(records, rows, source=str(folder / "rewards.jsonl"))
    pairs, stats = build_pairs(
        scored,
        PairsConfig(strategy="best-worst", drop_ties=True, seed=seed),
        reward_model="the iterative_dpo reward",
    )
    summary = {**stats.to_dict(), "summary": stats.summary()}
    if not pairs and not any(
        value is not None for row in rows.values() for value in row["rewards"]
    ):
        raise UserInputError(
            f"{folder / 'rewards.jsonl'}: the reward gave no sample of this round a value (every "
            "reward is None), so there is nothing to pair; check the reward"
        )
    _write_json_atomic(folder / "pairs_stats.json", summary)
    write_records(pairs, folder / "pairs.jsonl")
    return summary


def _last_train_line(path: Path) -> dict[str, Any]:
    last: dict[str, Any] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row.get("split") == "train":
                last = row
    return last


# ---------------------------------------------------------------------------
# the API


def iterative_dpo(
    prompts: Sequence[str | PromptItem | Mapping[str, Any]],
    model: nn.Module | str | os.PathLike[str],
    tokenizer: Any,
    reward: Any,
    out_dir: str | os.PathLike[str],
    config: RLConfig | None = None,
    train_config: TrainConfig | None = None,
    *,
    reward_options: Any = None,
    ref_model: nn.Module | str | os.PathLike[str] | None = None,
    callbacks: Sequence[TrainCallback] = (),
    log: Callable[[str], None] | None = None,
) -> IterativeResult:
    """Run ``config.rounds`` rounds of iterative DPO; see the module docstring.

    ``model`` is the policy of round 1 (a module, trained in place in round 1, or a
    model folder); ``tokenizer`` a Hugging Face tokenizer or its folder. ``reward`` is
    what :func:`prefkit.rl.trainer.rl` takes (a spec, a callable, a list of them or a
    built :class:`~prefkit.rl.rewards.Reward`), with ``reward_options``
    (:class:`~prefkit.rl.trainer.RewardOptions`). ``train_config`` is the DPO's of
    each round: ``batch_size`` counts pairs, ``epochs`` passes over the round's pairs
    (unless ``config.max_steps``). ``ref_model`` replaces the reference of every
    round. ``log`` receives one line per stage.
    """
    from prefkit.align.refcache import weights_digest as module_digest
    from prefkit.align.trainer import (
        _training_device,
        align,
        load_causal_lm,
        save_aligned_model,
    )
    from prefkit.generate.run import weights_digest as folder_digest
    from prefkit.rl.trainer import RewardOptions, _as_reward

    config = config or RLConfig(algo="iterative_dpo")
    if config.algo != "iterative_dpo":
        raise UserInputError(
            f"iterative_dpo: the config's algo is {config.algo!r}; use prefkit.rl.trainer.rl"
        )
    train_config = train_config or TrainConfig(batch_size=8)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserInputError(
            "iterative_dpo runs in one process (each round generates, scores and writes its "
            "files once); run it without accelerate launch / torchrun"
        )
    say = log or (lambda line: None)
    if ref_model is not None and config.round_reference is not None:
        raise UserInputError(
            "iterative_dpo: give either a reference model (ref_model, --ref) or "
            "round_reference (--round-reference), not both"
        )
    if ref_model is not None and not config.needs_reference:
        raise UserInputError(
            f"iterative_dpo: loss {config.dpo_loss!r} uses no reference; drop ref_model (--ref)"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(tokenizer, str | os.PathLike):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer), trust_remote_code=False)
    items, columns = _prompt_items(prompts)
    from prefkit.rl.trainer import prompt_length_limit

    max_prompt_length = prompt_length_limit(config, model, "iterative_dpo")
    align_config = config.align_config(max_prompt_length=max_prompt_length)
    model_name = "<module>" if isinstance(model, nn.Module) else str(model)
    original_digest = (
        module_digest(model) if isinstance(model, nn.Module) else folder_digest(str(model))
    )
    config_settings = dataclasses.asdict(config)
    train_settings = dataclasses.asdict(train_config)
    train_settings.pop("progress")
    _check_settings(
        out,
        {
            "algo": "iterative_dpo",
            "model": model_name,
            "model_weights_sha256": original_digest,
            "prompts": [item.id for item in items],
            "config": {key: value for key, value in config_settings.items() if key != "rounds"},
            "train": train_settings,
            "rounds": config.num_rounds,
        },
    )
    rounds = config.num_rounds
    already_done = all(_round_complete(round_dir(out, r)) for r in range(1, rounds + 1))

    reference: nn.Module | str | os.PathLike[str] | None = ref_model
    if reference is None and config.round_reference == "original":
        # a copy: round 1 trains a given module in place
        reference = copy.deepcopy(model) if isinstance(model, nn.Module) else model
    if not config.needs_reference:
        reference_label = "none"
    elif ref_model is not None:
        reference_label = "<module>" if isinstance(ref_model, nn.Module) else str(ref_model)
    elif config.round_reference == "original":
        reference_label = f"original ({model_name})"
    else:
        reference_label = "start"
    device = _training_device(train_config)
    reward_object: Any = None
    results: list[RoundResult] = []
    try:
        for number in range(1, rounds + 1):
            folder = round_dir(out, number)
            if _round_complete(folder):
                # a run killed between recording the round and removing its checkpoints
                shutil.rmtree(folder / "checkpoints", ignore_errors=True)
                metrics = json.loads((folder / "round.json").read_text())
                results.append(RoundResult(number, folder, metrics, ()))
                continue
            folder.mkdir(parents=True, exist_ok=True)
            ran: list[str] = []
            if number == 1:
                start_name, start_digest = model_name, original_digest
                policy = model if isinstance(model, nn.Module) else load_causal_lm(model)
            else:
                start = round_dir(out, number - 1) / "model"
                start_name, start_digest = str(start), folder_digest(start)
                policy = load_causal_lm(start)
            policy.to(device)

            generated, generation_s = _generate(
                number,
                folder,
                policy,
                start_name,
                start_digest,
                items,
                tokenizer,
                config,
                train_config,
                max_prompt_length,
            )
            if generated:
                ran.append("candidates")
            # A stage that ran now makes the files of the later stages stale (they may be
            # left over from other inputs), so those are redone too.
            stale = generated
            say(f"round {number}: candidates in {folder / 'candidates.jsonl'}")
            records = _read_candidates(folder / "candidates.jsonl")

            rewards_path = folder / "rewards.jsonl"
            reward_s = 0.0
            if stale:
                rewards_path.unlink(missing_ok=True)
            if not rewards_path.is_file():
                if reward_object is None:
                    reward_object = _as_reward(
                        reward, reward_options or RewardOptions(), tokenizer, str(device)
                    )
                started = time.perf_counter()
                _write_rewards(rewards_path, _score(records, reward_object, columns, config))
                reward_s = time.perf_counter() - started
                ran.append("rewards")
                stale = True
            rows = _read_rewards(rewards_path, records)
            say(f"round {number}: rewards in {rewards_path}")

            if stale:
                (folder / "pairs.jsonl").unlink(missing_ok=True)
            if (folder / "pairs.jsonl").is_file() and (folder / "pairs_stats.json").is_file():
                pair_stats = json.loads((folder / "pairs_stats.json").read_text())
            else:
                pair_stats = _build_pairs(folder, records, rows, train_config.seed)
                ran.append("pairs")
                stale = True
            if stale:  # a DPO begun on other pairs
                shutil.rmtree(folder / "checkpoints", ignore_errors=True)
            say(f"round {number}: {pair_stats['summary']}")

            started = time.perf_counter()
            if pair_stats["pairs_written"]:
                align(
                    _read_records(folder / "pairs.jsonl"),
                    policy,
                    tokenizer,
                    folder,
                    align_config,
                    train_config,
                    ref_model=reference,
                    callbacks=callbacks,
                    max_steps=config.max_steps,
                )
            else:
                # Every prompt's samples tie (a policy that always earns the same reward):
                # there is no preference to learn, and the round keeps its policy.
                say(f"round {number}: no pairs (all tied), so the policy is kept unchanged")
                (folder / "metrics.jsonl").write_text("")
                save_aligned_model(policy, tokenizer, folder / "model")
            train_s = time.perf_counter() - started
            ran.append("model")
            del policy
            last = _last_train_line(folder / "metrics.jsonl")
            metrics = {
                "round": number,
                "generator": start_name,
                "generator_weights_sha256": start_digest,
                "reference": reference_label,
                **_reward_metrics(records, rows),
                "pairs": pair_stats["pairs_written"],
                "skipped_prompts": pair_stats["sets_read"] - pair_stats["pairs_written"],
                "pair_stats": {key: value for key, value in pair_stats.items() if key != "summary"},
                "train_steps": last.get("step", 0),
                "train_loss": last.get("loss"),
                "generation_s": generation_s,
                "reward_s": reward_s,
                "train_s": train_s,
            }
            _write_json_atomic(folder / "round.json", metrics)
            shutil.rmtree(folder / "checkpoints", ignore_errors=True)
            _write_rounds_log(out, number)
            say(f"round {number}: model in {folder / 'model'}")
            results.append(RoundResult(number, folder, metrics, tuple(ran)))
    finally:
        close = getattr(reward_object, "close", None)
        if close is not None and reward_object is not reward:
            close()
    return IterativeResult(results, round_dir(out, rounds) / "model", already_done)


def _write_rounds_log(out: Path, last_round: int) -> None:
    """``OUT/rounds.jsonl``: the round.json of rounds 1..last_round, one line each."""
    lines = []
    for number in range(1, last_round + 1):
        path = round_dir(out, number) / "round.json"
        if path.is_file():
            lines.append(json.dumps(json.loads(path.read_text()), sort_keys=True) + "\n")
    partial = out / "rounds.jsonl.partial"
    partial.write_text("".join(lines))
    partial.replace(out / "rounds.jsonl")
