"""``prefkit rm train --mode finetune|lora`` in two CPU processes (gloo) trains exactly
like one process on the same global batch.

Each process runs the real command line with the environment ``torchrun`` (and
``accelerate launch``, which calls it) gives it, and records the example indices of
every micro-batch it collates and the model it returns. Each must have trained on
its own strided half of every global batch of the single process
(``shard_batch``); the per-step train and eval losses and the saved weights must be
the single process's; the held-out split, the reward statistics and the fitted
temperature must be the same on both ranks and in the saved config.json (rank 0's,
computed once), and only rank 0 prints the summary.

The head's bias is the one weight compared differently: Bradley-Terry sees only
reward differences, so its gradient is 0 in exact arithmetic and AdamW turns the
rounding noise of that 0 into steps of about the learning rate, which differ
between any two summation orders. It is left out of the weights compared, and
the reward mean is compared without it (the reward std, the temperature and every
loss do not depend on it).
"""

from __future__ import annotations

import json
import subprocess
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from launch_helpers import start_ranks
from prefkit.data.write import write_records
from prefkit.eval.metrics import TEMPERATURE_BOUNDS
from prefkit.train.sampler import shard_batch
from test_rm_train import keyword_pairs, make_tiny_llama

WORKER = textwrap.dedent(
    """
    import json, os, sys
    import torch
    torch.set_num_threads(1)
    import prefkit.rm.train as rm_train
    from prefkit.cli import main
    from prefkit.rm.model import RewardModel
    from prefkit.rm.task import RewardTask

    seen = []  # the example indices of every training micro-batch this process collated
    collate = RewardTask.collate
    def recording_collate(task, indices):
        seen.append(list(indices))
        return collate(task, indices)
    RewardTask.collate = recording_collate

    scored = []  # (items in the store, shard) of every store_outputs call of this process
    store_outputs = RewardModel.store_outputs
    def recording_store_outputs(model, store, **options):
        scored.append([len(store.lengths), options.get("shard")])
        return store_outputs(model, store, **options)
    RewardModel.store_outputs = recording_store_outputs

    returned = {}  # what train_reward_model returned on this rank
    counts = {}  # the optimizer state and gradient elements this rank held
    train_reward_model = rm_train.train_reward_model
    def recording_train(*args, **kwargs):
        report = train_reward_model(*args, **kwargs)
        result = report.stages["train"].result
        counts.update(optimizer_state_elements=result.optimizer_state_elements,
                      gradient_elements=result.gradient_elements)
        spec = report.model.spec
        returned.update(reward_mean=spec.reward_mean, reward_std=spec.reward_std,
                        temperature=spec.temperature, records=spec.training["records"],
                        train_metrics=spec.training["train_metrics"],
                        eval_metrics=spec.training["eval_metrics"])
        return report
    rm_train.train_reward_model = recording_train

    out, argv = sys.argv[1], sys.argv[2:]
    code = main(["rm", "train", *argv, "--out", out])
    rank = os.environ.get("RANK", "0")
    with open(os.path.join(out, f"seen-rank-{rank}.json"), "w") as handle:
        json.dump({"seen": seen, "scored": scored, "returned": returned, "counts": counts}, handle)
    sys.exit(code)
    """
)


def _finish(out_dir, processes: list[subprocess.Popen]):
    printed = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, (stdout + stderr)[-3000:]
        printed.append(stdout)
    lines = [
        json.loads(line)
        for line in (out_dir / "training" / "metrics.jsonl").read_text().splitlines()
    ]
    recorded = [
        json.loads((out_dir / f"seen-rank-{rank}.json").read_text())
        for rank in range(len(processes))
    ]
    weights = load_file(str(out_dir / "model.safetensors"))  # the head
    for inner in ("backbone/model.safetensors", "adapter/adapter_model.safetensors"):
        if (out_dir / inner).is_file():
            weights |= {f"{inner}:{k}": v for k, v in load_file(str(out_dir / inner)).items()}
    config = json.loads((out_dir / "config.json").read_text())
    return lines, weights, recorded, printed, config


@pytest.mark.parametrize(("mode", "zero_stage"), [("finetune", 0), ("lora", 0), ("finetune", 2)])
def test_two_processes_match_one_process(tmp_path, mode: str, zero_stage: int) -> None:
    """With ``--zero-stage 2`` the two processes also split the AdamW state and the gradients
    between them (whole parameters: the tiny model's embedding matrix, 98% of its weights,
    goes to one process, so the split is uneven here; tests/test_train_zero.py checks an
    even one); the single process is unsharded."""
    backbone = make_tiny_llama(tmp_path / "tiny-llama")
    data = tmp_path / "pairs.jsonl"
    write_records(keyword_pairs(20, seed=1), data)  # the one with 'excellent' wins
    # 20 pairs, 4 held out: 16 training pairs in global batches of 6 (6, 6, 4), 2 epochs.
    argv = [str(data), "--mode", mode, "--backbone", backbone, "--max-length", "32"]
    argv += ["--batch-size", "6", "--epochs", "2", "--lr", "3e-3", "--eval-fraction", "0.2"]
    argv += ["--device", "cpu", "--quiet", "--lora-dropout", "0"]
    # Both runs at once: the single process and the pair of processes are independent.
    single_processes = start_ranks(
        ["-c", WORKER, str(tmp_path / "one"), *argv], 1, separate_stderr=True
    )
    double_processes = start_ranks(
        ["-c", WORKER, str(tmp_path / "two"), *argv, "--zero-stage", str(zero_stage)],
        2,
        separate_stderr=True,
    )
    one_lines, one_weights, (one,), (one_printed,), one_config = _finish(
        tmp_path / "one", single_processes
    )
    two_lines, two_weights, (first, second), (printed_0, printed_1), two_config = _finish(
        tmp_path / "two", double_processes
    )

    # Each process trained on its strided half of every global batch, never the whole batch.
    single_seen = one["seen"]
    assert [len(batch) for batch in single_seen] == [6, 6, 4] * 2
    for rank, rank_seen in enumerate((first["seen"], second["seen"])):
        assert rank_seen == [shard_batch(batch, rank, 2) for batch in single_seen], rank
    for batch, mine, theirs in zip(single_seen, first["seen"], second["seen"], strict=True):
        assert sorted(mine + theirs) == sorted(batch) and not set(mine) & set(theirs)

    # Both evaluations (4 held-out pairs, 8 items) and the scoring of the training items after
    # training (16 pairs, 32 items) and of the held-out ones: each rank scored its share.
    assert one["scored"] == [[8, None], [8, None], [32, None], [8, None]]
    for rank, recorded in enumerate((first, second)):
        assert recorded["scored"] == [
            [8, [rank, 2]],
            [8, [rank, 2]],
            [32, [rank, 2]],
            [8, [rank, 2]],
        ]

    # The same steps, losses and evaluations as one process.
    assert [line["split"] for line in one_lines] == ["train"] * 3 + ["eval"] + ["train"] * 3 + [
        "eval"
    ]
    assert len(two_lines) == len(one_lines)
    for single, double in zip(one_lines, two_lines, strict=True):
        assert single["split"] == double["split"] and single["step"] == double["step"]
        names = ["loss", "grad_norm"] if single["split"] == "train" else ["loss", "accuracy"]
        for name in names:
            assert abs(single[name] - double[name]) < 1e-5, (name, single, double)
    assert one_lines[-2]["loss"] < one_lines[0]["loss"]  # it did train
    assert one_weights.keys() == two_weights.keys()
    one_bias, two_bias = (float(weights.pop("head.bias")) for weights in (one_weights, two_weights))
    for name, tensor in one_weights.items():
        torch.testing.assert_close(two_weights[name], tensor, atol=1e-5, rtol=0, msg=name)

    # The fits after training ran once: both ranks return rank 0's, which config.json holds.
    assert first["returned"] == second["returned"]
    assert first["returned"]["records"] == one["returned"]["records"] == 16
    saved = two_config["training"]
    assert first["returned"]["temperature"] == two_config["temperature"]
    low, high = TEMPERATURE_BOUNDS  # fitted inside its search range, away from T = 1
    assert low < one_config["temperature"] < high and abs(one_config["temperature"] - 1) > 0.05
    assert first["returned"]["reward_mean"] == two_config["reward_mean"]
    assert saved["train_metrics"] == first["returned"]["train_metrics"]
    for name in ("reward_std", "temperature"):
        assert abs(one_config[name] - two_config[name]) < 1e-5, name
    one_mean, two_mean = one_config["reward_mean"] - one_bias, two_config["reward_mean"] - two_bias
    assert abs(one_mean - two_mean) < 1e-5
    for name, value in one_config["training"]["eval_metrics"].items():
        assert abs(saved["eval_metrics"][name] - value) < 1e-5, name
    # Each process held its share of the optimizer state (and at stage 2 of the gradients).
    total_state, total_gradients = (
        one["counts"][name] for name in ("optimizer_state_elements", "gradient_elements")
    )
    state_shares = [recorded["counts"]["optimizer_state_elements"] for recorded in (first, second)]
    gradient_shares = [recorded["counts"]["gradient_elements"] for recorded in (first, second)]
    if zero_stage == 0:
        assert state_shares == [total_state] * 2 and gradient_shares == [total_gradients] * 2
    else:
        assert sum(state_shares) == total_state and max(state_shares) < total_state
        assert sum(gradient_shares) == total_gradients and max(gradient_shares) < total_gradients
    assert two_config["training"]["config"]["train"]["zero_stage"] == zero_stage
    # Only rank 0 prints the summary.
    assert json.loads(printed_0)["steps"] == json.loads(one_printed)["steps"] == 6
    assert printed_1 == ""


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["train", "pairs.jsonl", "--ensemble", "2"], "--ensemble trains its heads in one process"),
        (["train-multiobjective", "ratings.jsonl", "pairs.jsonl"], "trains its heads on cached"),
    ],
)
def test_embedding_head_commands_refuse_a_launcher(tmp_path, monkeypatch, capsys, command, message):
    from prefkit.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun / accelerate launch set it
    assert main(["rm", *command, "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--mode", "finetune", "--zero-stage", "1"], "is 1, but training runs in one process"),
        (["--zero-stage", "2"], "in embedding mode the encoder is frozen"),
    ],
)
def test_zero_stage_is_refused_where_it_cannot_shard(
    tmp_path, monkeypatch, capsys, options, message
):
    from prefkit.cli import main

    for variable in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(variable, raising=False)
    data = tmp_path / "pairs.jsonl"
    write_records(keyword_pairs(4, seed=1), data)
    assert main(["rm", "train", str(data), *options, "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "training").exists()
