"""Two CPU processes (gloo) train online exactly like one process on the same global batch.

Each process records the global-batch positions of the prompts it generated for:
the two processes must hold disjoint halves of every step's prompts, each prompt
with its whole group, which together are the single process's. The batch
statistics (REINFORCE++'s whitening over every token of the step, GRPO's batch
std) come from the per-sample table summed over the processes, so the metrics
and the final weights must equal the single process's.
"""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from launch_helpers import start_ranks

WORKER = textwrap.dedent(
    """
    import json, os, random, sys
    import torch
    torch.set_num_threads(1)
    from prefkit.align.synthetic import build_model, build_tokenizer, good_fraction, random_prompt
    from prefkit.rl.config import RLConfig
    from prefkit.rl.trainer import RLTask, rl
    from prefkit.train.loop import TrainConfig

    def rule(prompts, completions, completion_ids, **columns):
        return [good_fraction(text) for text in completions]

    generated = []  # (positions, completions per position) of every rollout of this process
    roll_out = RLTask._roll_out
    def recording_roll_out(task, model, positions, prompts_in_step, sum_over_ranks):
        rollout = roll_out(task, model, positions, prompts_in_step, sum_over_ranks)
        generated.append({str(p): len(rollout.completions[p]) for p in positions})
        return rollout
    RLTask._roll_out = recording_roll_out

    rng = random.Random(0)
    prompts = [random_prompt(rng, 1 + index % 3) for index in range(8)]
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, seed=0)
    algo, zero_stage = sys.argv[2], int(sys.argv[3])
    extra = {"scale_rewards": "batch"} if algo == "grpo" else {}
    rl(prompts, model, tokenizer, rule, sys.argv[1],
       RLConfig(algo=algo, max_new_tokens=5, max_steps=4, num_iterations=2, beta=0.05, **extra),
       TrainConfig(batch_size=4, lr=1e-2, progress=False, device="cpu", zero_stage=zero_stage))
    rank = os.environ.get("RANK", "0")
    with open(os.path.join(sys.argv[1], f"generated-rank-{rank}.json"), "w") as handle:
        json.dump(generated, handle)
    """
)


def _run(out_dir, world_size: int, algo: str, zero_stage: int = 0):
    processes = start_ranks(["-c", WORKER, str(out_dir), algo, str(zero_stage)], world_size)
    for process in processes:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output[-3000:]
    lines = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    generated = [
        json.loads((out_dir / f"generated-rank-{rank}.json").read_text())
        for rank in range(world_size)
    ]
    return lines, load_file(str(out_dir / "model" / "model.safetensors")), generated


@pytest.mark.parametrize(("algo", "zero_stage"), [("reinforce_pp", 0), ("grpo", 0), ("grpo", 2)])
def test_two_processes_match_one_process(tmp_path, algo: str, zero_stage: int) -> None:
    """``zero_stage`` 2: the two processes split the AdamW state and the gradients (the
    single process does not); the updates are the same."""
    single_lines, single_weights, (single_generated,) = _run(tmp_path / "one", 1, algo)
    double_lines, double_weights, (first, second) = _run(tmp_path / "two", 2, algo, zero_stage)
    # Two generation batches of 4 prompts, each prompt with its 4 samples on one process only.
    assert single_generated == [{str(p): 4 for p in range(4)}] * 2
    for step, (mine, theirs) in enumerate(zip(first, second, strict=True)):
        assert set(mine) == {"0", "2"} and set(theirs) == {"1", "3"}, step
        assert set(mine.values()) == set(theirs.values()) == {4}
    assert len(single_lines) == len(double_lines) == 4
    names = ["loss", "reward", "reward_std", "kl", "entropy", "completion_length", "grad_norm"]
    names += ["clip_fraction", "eos_fraction", "zero_spread_groups"]
    for one, two in zip(single_lines, double_lines, strict=True):
        for name in names:
            assert abs(one[name] - two[name]) < 1e-5, (name, one[name], two[name])
    assert single_lines[-1]["clip_fraction"] > 0  # the second iteration does clip
    for name, tensor in single_weights.items():
        torch.testing.assert_close(double_weights[name], tensor, atol=1e-4, rtol=0, msg=name)
