"""Two CPU processes (gloo) train exactly like one process on the same global batch.

Each process records the example indices of every micro-batch it collates: each
must have trained on its own strided half of every global batch of the single
process (``shard_batch``), the two halves together being the whole batch.

With ``bco_pair`` each rank also records the running reward mean delta after every
step: it must be the same on every rank, and the single process's. With ``kto`` the
KL estimate of every step must be the single process's.
"""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from launch_helpers import start_ranks
from prefkit.train.sampler import shard_batch

WORKER = textwrap.dedent(
    """
    import json, os, random, sys
    import torch
    torch.set_num_threads(1)
    from prefkit.align.synthetic import build_model, build_tokenizer, random_completion, random_prompt
    from prefkit.align.trainer import AlignConfig, AlignTask, align
    from prefkit.data.records import PairwiseRecord
    from prefkit.train.loop import TrainConfig

    rng = random.Random(0)
    records = [
        PairwiseRecord(id=str(i), prompt=random_prompt(rng, 1 + i % 3),
                       response_a=random_completion(rng, 1 + i % 4),
                       response_b=random_completion(rng, 2), outcome="a" if i % 2 else "b")
        for i in range(16)
    ]
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=0)
    reference = build_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=1)
    loss, epochs, zero_stage = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

    shifts = []
    fold_rewards = AlignTask.after_optimizer_step
    def recording_fold(task, sum_over_ranks):
        fold_rewards(task, sum_over_ranks)
        if task.reward_shift is not None:
            shifts.append(task.reward_shift.mean)
    AlignTask.after_optimizer_step = recording_fold

    seen = []  # the example indices of every training micro-batch this process collated
    collate = AlignTask.collate
    def recording_collate(task, indices):
        seen.append(list(indices))
        return collate(task, indices)
    AlignTask.collate = recording_collate

    align(records, model, tokenizer, sys.argv[1],
          AlignConfig(loss=loss, max_length=32, max_prompt_length=16, cache_ref=False),
          TrainConfig(batch_size=8, lr=1e-2, progress=False, device="cpu", epochs=epochs,
                      zero_stage=zero_stage),
          ref_model=reference if loss == "bco_pair" else None)
    rank = os.environ.get("RANK", "0")
    with open(os.path.join(sys.argv[1], f"shifts-rank-{rank}.json"), "w") as handle:
        json.dump(shifts, handle)
    with open(os.path.join(sys.argv[1], f"seen-rank-{rank}.json"), "w") as handle:
        json.dump(seen, handle)
    """
)


def _run(out_dir, world_size, loss, epochs, zero_stage=0):
    processes = start_ranks(
        ["-c", WORKER, str(out_dir), loss, str(epochs), str(zero_stage)], world_size
    )
    for process in processes:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output[-3000:]
    lines = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    shifts, seen = (
        [
            json.loads((out_dir / f"{kind}-rank-{rank}.json").read_text())
            for rank in range(world_size)
        ]
        for kind in ("shifts", "seen")
    )
    return lines, load_file(str(out_dir / "model" / "model.safetensors")), shifts, seen


@pytest.mark.parametrize(
    ("loss", "epochs", "zero_stage"),
    [("sigmoid", 1, 0), ("bco_pair", 2, 0), ("kto", 1, 0), ("sigmoid", 1, 2)],
)
def test_two_processes_match_one_process(tmp_path, loss, epochs, zero_stage):
    """``zero_stage`` 2: the two processes split the AdamW state and the gradients (the
    single process does not); the updates are the same."""
    single_lines, single_weights, (single_shifts,), (single_seen,) = _run(
        tmp_path / "one", 1, loss, epochs
    )
    double_lines, double_weights, (rank_0_shifts, rank_1_shifts), double_seen = _run(
        tmp_path / "two", 2, loss, epochs, zero_stage
    )
    # Each process trained on its strided half of every global batch, never the whole batch.
    assert [len(batch) for batch in single_seen] == [8] * len(single_lines)
    for rank, rank_seen in enumerate(double_seen):
        assert rank_seen == [shard_batch(batch, rank, 2) for batch in single_seen], rank
    for batch, first, second in zip(single_seen, *double_seen, strict=True):
        assert len(first) == len(second) == 4 and sorted(first + second) == sorted(batch)
    # kto splits each of the 16 pairs into a desirable and an undesirable example.
    steps_per_epoch = 4 if loss == "kto" else 2
    assert len(single_lines) == len(double_lines) == steps_per_epoch * epochs
    names = ["loss", "reward_accuracy", "chosen_logps", "rejected_logps", "grad_norm"]
    if loss == "kto":  # the KL estimate z0 comes from the whole global batch, on both ranks
        names = ["loss", "kl_estimate", "rewards", "grad_norm"]
        assert all(line["kl_estimate"] != 0 for line in single_lines[1:])
    if loss == "bco_pair":
        names.append("reward_shift")
        assert len(single_shifts) == 2 * epochs and all(single_shifts)
        assert rank_0_shifts == rank_1_shifts
        assert rank_0_shifts == pytest.approx(single_shifts, abs=1e-7)
    for one, two in zip(single_lines, double_lines):
        for name in names:
            assert abs(one[name] - two[name]) < 1e-5, (name, one[name], two[name])
    for name, tensor in single_weights.items():
        torch.testing.assert_close(double_weights[name], tensor, atol=1e-4, rtol=0, msg=name)
