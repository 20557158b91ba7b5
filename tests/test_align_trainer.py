"""The alignment trainer: invariances, exact resume, reference paths, saving, data handling,
BCO's running reward mean, and the evaluation set."""

from __future__ import annotations

import copy
import json
import math
import random

import pytest
import torch

from prefkit.align.synthetic import build_model, build_tokenizer, random_completion, random_prompt
from prefkit.align.trainer import (
    AlignConfig,
    AlignTask,
    align,
    build_examples,
    split_eval_records,
)
from prefkit.data.records import BinaryRecord, PairwiseRecord, RankingRecord
from prefkit.losses.preference import BetaConfig, PairedLogps, UnpairedLogps, bco, bco_pair
from prefkit.train.loop import TrainConfig

SMALL = {"max_length": 32, "max_prompt_length": 16, "save_model": False}


def _pairs(count, seed=0):
    rng = random.Random(seed)
    return [
        PairwiseRecord(
            id=str(index),
            prompt=random_prompt(rng, num_words=1 + index % 4),
            response_a=random_completion(rng, 1 + index % 3),
            response_b=random_completion(rng, 2 + index % 2),
            outcome="a" if index % 3 else "b",
        )
        for index in range(count)
    ]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def base_model(tokenizer):
    return build_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=0)


def _train(base_model, tokenizer, out_dir, records=None, *, config=None, **train_args):
    model = copy.deepcopy(base_model)
    settings = {"batch_size": 8, "lr": 1e-2, "progress": False, "schedule": "constant"}
    settings.update(train_args)
    result = align(
        records if records is not None else _pairs(16),
        model,
        tokenizer,
        out_dir,
        config or AlignConfig(cache_ref=False, **SMALL),
        TrainConfig(**settings),
    )
    return model, result


def _metrics(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("loss", ["sigmoid", "simpo", "lipo_lambda", "kto"])
def test_gradient_accumulation_does_not_change_training(base_model, tokenizer, tmp_path, loss):
    config = AlignConfig(loss=loss, cache_ref=False, **SMALL)
    whole, _ = _train(base_model, tokenizer, tmp_path / "a", config=config, epochs=1)
    split, _ = _train(
        base_model, tokenizer, tmp_path / "b", config=config, epochs=1, grad_accum_steps=4
    )
    for (name, expected), actual in zip(whole.state_dict().items(), split.state_dict().values()):
        torch.testing.assert_close(actual, expected, atol=2e-5, rtol=1e-4, msg=name)
    first_a, first_b = _metrics(tmp_path / "a")[0], _metrics(tmp_path / "b")[0]
    assert first_a["loss"] == pytest.approx(first_b["loss"], abs=1e-6)
    if loss == "kto":  # z0 of every step comes from the whole global batch
        kl_a = [line["kl_estimate"] for line in _metrics(tmp_path / "a")]
        kl_b = [line["kl_estimate"] for line in _metrics(tmp_path / "b")]
        assert kl_a == pytest.approx(kl_b, abs=1e-6) and any(value > 0 for value in kl_a)


def test_interrupted_run_resumes_to_identical_weights(base_model, tokenizer, tmp_path):
    full, _ = _train(base_model, tokenizer, tmp_path / "full", epochs=2, checkpoint_every_steps=1)

    class Stop(Exception):
        pass

    def stop_at_step_3(event):
        if event.kind == "checkpoint" and event.global_step == 3:
            raise Stop

    config = AlignConfig(cache_ref=False, **SMALL)
    with pytest.raises(Stop):
        align(
            _pairs(16),
            copy.deepcopy(base_model),
            tokenizer,
            tmp_path / "cut",
            config,
            TrainConfig(
                batch_size=8,
                lr=1e-2,
                progress=False,
                schedule="constant",
                epochs=2,
                checkpoint_every_steps=1,
            ),
            callbacks=[stop_at_step_3],
        )
    resumed, result = _train(
        base_model, tokenizer, tmp_path / "cut", epochs=2, checkpoint_every_steps=1
    )
    assert result.train.resumed_from is not None
    for (name, expected), actual in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(actual, expected), name
    assert [m["loss"] for m in _metrics(tmp_path / "cut")] == [
        m["loss"] for m in _metrics(tmp_path / "full")
    ]


def _with_attention_dropout(model, probability=0.2):
    """``model`` with dropout on its attention weights (the tiny Llama has no other dropout)."""
    model.config.attention_dropout = probability
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = probability
    return model


def test_resume_between_checkpoints_with_dropout_into_another_init_is_bitwise(
    base_model, other_model, tokenizer, tmp_path
):
    """16 pairs in batches of 4 for 2 epochs (8 steps), a checkpoint every 3 steps and at
    the end of each epoch (steps 3, 4, 6, 8). The run stops after step 6 is logged but
    before its checkpoint, so the resumed run goes back to step 4 and replays steps 5 and
    6, mid-epoch, with attention dropout on (its masks come from the restored RNG
    states). It resumes into a model built from another seed: every weight must come
    from the checkpoint. The reference is a separate model, the same in both runs."""
    settings = {
        "batch_size": 4,
        "lr": 1e-2,
        "progress": False,
        "schedule": "constant",
        "epochs": 2,
        "checkpoint_every_steps": 3,
    }
    config = AlignConfig(cache_ref=False, **SMALL)

    class Stop(Exception):
        pass

    def stop_after_step_6(event):
        if event.kind == "step" and event.global_step == 6:
            raise Stop

    def run(out_dir, model, callbacks=()):
        result = align(
            _pairs(16),
            model,
            tokenizer,
            out_dir,
            config,
            TrainConfig(**settings),
            ref_model=copy.deepcopy(other_model),
            callbacks=callbacks,
        )
        return model, result

    full, _ = run(tmp_path / "full", _with_attention_dropout(copy.deepcopy(base_model)))
    plain, _ = run(tmp_path / "plain", copy.deepcopy(base_model))
    with pytest.raises(Stop):
        run(
            tmp_path / "cut",
            _with_attention_dropout(copy.deepcopy(base_model)),
            [stop_after_step_6],
        )
    other_init = _with_attention_dropout(
        build_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=7)
    )
    resumed, result = run(tmp_path / "cut", other_init)

    assert result.train.resumed_from.name == "step-4"
    full_losses = [m["loss"] for m in _metrics(tmp_path / "full")]
    assert full_losses != [m["loss"] for m in _metrics(tmp_path / "plain")]  # dropout acts
    for (name, expected), actual in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(actual, expected), name
    assert [m["loss"] for m in _metrics(tmp_path / "cut")] == full_losses


def _killable_run(out_dir, pause_at=0):
    """8 steps (checkpoints at 3, 4, 6, 8) of a fresh model with attention dropout, one
    thread; waits two minutes after step ``pause_at`` (to be killed there). Returns the
    trained model."""
    import time

    torch.set_num_threads(1)
    tokenizer = build_tokenizer()
    model = _with_attention_dropout(
        build_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=0)
    )

    def wait_to_be_killed(event):
        if event.kind == "step" and event.global_step == pause_at:
            time.sleep(120)

    align(
        _pairs(16),
        model,
        tokenizer,
        out_dir,
        AlignConfig(cache_ref=False, **SMALL),
        TrainConfig(
            batch_size=4,
            lr=1e-2,
            progress=False,
            schedule="constant",
            epochs=2,
            checkpoint_every_steps=3,
            device="cpu",
        ),
        ref_model=build_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=1),
        callbacks=[wait_to_be_killed],
    )
    return model


KILLABLE_WORKER = """
import sys
sys.path.insert(0, sys.argv[2])
import test_align_trainer
test_align_trainer._killable_run(sys.argv[1], pause_at=5)
"""


def test_a_training_process_killed_mid_run_resumes_to_the_uninterrupted_weights(tmp_path):
    """A real process (8 steps, checkpoints at 3, 4, 6, 8, attention dropout on) gets
    SIGKILL once step 5 is logged (it waits there, so the kill lands before step 6); the
    line cut by a kill mid-write is appended to metrics.jsonl by hand, since no kill
    lands there reliably. Run again (here, on one thread like the worker), it resumes
    from step 4 and must end with the weights and metric lines of a run never
    interrupted: the replayed and the cut lines are dropped, not duplicated or left to
    break the file."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    victim = subprocess.Popen(
        [sys.executable, "-c", KILLABLE_WORKER, str(tmp_path / "cut"), str(Path(__file__).parent)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    threads = torch.get_num_threads()
    try:
        full = _killable_run(tmp_path / "full")  # while the worker starts
        metrics = tmp_path / "cut" / "metrics.jsonl"
        deadline = time.monotonic() + 120
        while not (metrics.is_file() and '"step": 5' in metrics.read_text()):
            assert victim.poll() is None, victim.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "the worker never logged step 5"
            time.sleep(0.05)
        victim.send_signal(signal.SIGKILL)
        victim.communicate(timeout=30)
        assert victim.returncode == -signal.SIGKILL
        checkpoints = sorted(path.name for path in (tmp_path / "cut" / "checkpoints").iterdir())
        assert checkpoints == ["step-3", "step-4"]  # so steps 5 and on are replayed
        with metrics.open("a") as handle:
            handle.write('{"split": "train", "epoch": 1, "step": 6, "lo')  # torn by the kill
        resumed = _killable_run(tmp_path / "cut")
    finally:
        torch.set_num_threads(threads)
        if victim.poll() is None:
            victim.kill()
            victim.communicate()

    for (name, expected), actual in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(actual, expected), name

    def lines(out_dir):
        return [
            {key: value for key, value in line.items() if key != "examples_per_s"}
            for line in _metrics(out_dir)
        ]

    assert [line["step"] for line in lines(tmp_path / "cut")] == list(range(1, 9))
    assert lines(tmp_path / "cut") == lines(tmp_path / "full")


def test_metrics_lines_hold_rewards_accuracy_margins_and_logps(base_model, tokenizer, tmp_path):
    _train(base_model, tokenizer, tmp_path)
    first = _metrics(tmp_path)[0]
    for name in (
        "loss",
        "chosen_rewards",
        "rejected_rewards",
        "reward_accuracy",
        "reward_margin",
        "chosen_logps",
        "rejected_logps",
    ):
        assert name in first
    assert first["loss"] == pytest.approx(0.693147, abs=1e-5)  # policy == reference at step 1
    assert first["reward_margin"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    "variant",
    [
        {"precompute_ref": False},
        {"shared_prompt": True},
        {"shared_prompt": True, "precompute_ref": False},
        {"shared_prompt": True, "gradient_checkpointing": True},
        {"gradient_checkpointing": True},
    ],
)
def test_training_paths_match_the_default_path(base_model, tokenizer, tmp_path, variant):
    # The shared-prompt layout groups batches by its own row width (see
    # AlignTask.example_lengths), so compare it with length grouping off: same batches.
    grouping = {"group_by_length": not variant.get("shared_prompt", False)}
    default, _ = _train(base_model, tokenizer, tmp_path / "default", **grouping)
    config = AlignConfig(cache_ref=False, **SMALL, **variant)
    other, _ = _train(base_model, tokenizer, tmp_path / "other", config=config, **grouping)
    # Adam divides by sqrt(v), so float-rounding differences in near-zero gradients can move a
    # weight by up to ~lr; compare the losses tightly and the weights at that scale.
    default_lines, other_lines = _metrics(tmp_path / "default"), _metrics(tmp_path / "other")
    for name in ("loss", "reward_margin", "chosen_logps"):
        assert [m[name] for m in other_lines] == pytest.approx(
            [m[name] for m in default_lines], abs=1e-5
        )
    for (name, expected), actual in zip(default.state_dict().items(), other.state_dict().values()):
        torch.testing.assert_close(actual, expected, atol=1e-3, rtol=0, msg=name)


class RecordingSGD(torch.optim.SGD):
    """Plain SGD that keeps the parameters and gradients it was given at every step."""

    def __init__(self, params, lr: float) -> None:
        super().__init__(params, lr=lr)
        self.parameters_before: list[list[torch.Tensor]] = []
        self.gradients: list[list[torch.Tensor]] = []

    def step(self, closure=None):
        parameters = [p for group in self.param_groups for p in group["params"]]
        self.parameters_before.append([p.detach().clone() for p in parameters])
        self.gradients.append([p.grad.detach().clone() for p in parameters])
        return super().step(closure)


def _plain_dpo_loss(policy, reference_logps, examples, beta=0.1):
    """Mean DPO loss -log sigmoid(beta ((pi_c - ref_c) - (pi_r - ref_r))) of ``examples``,
    from one unpadded forward pass per completion (with gradient)."""
    policy_logps = torch.stack([_example_logps(policy, example) for example in examples])  # (N, 2)
    log_ratios = policy_logps - reference_logps  # (N, 2)
    margins = log_ratios[:, 0] - log_ratios[:, 1]  # (N,)
    return -torch.nn.functional.logsigmoid(beta * margins).mean()


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"precompute_ref": False},
        {"shared_prompt": True},
        {"shared_prompt": True, "precompute_ref": False},
        {"gradient_checkpointing": True},
        {"shared_prompt": True, "gradient_checkpointing": True},
        {"lora": True},
        {"lora": True, "precompute_ref": False},
        {"lora": True, "precompute_ref": False, "own_reference": True},
    ],
    ids=lambda variant: "-".join(variant) or "default",
)
def test_every_training_path_has_the_gradients_of_plain_pytorch_dpo(
    base_model, other_model, tokenizer, tmp_path, variant
):
    """8 pairs in one batch of 8, two epochs: 2 SGD steps on every example. The gradient
    each step hands the optimizer must be that of the DPO loss written out with one
    unpadded forward pass per completion, at the parameters the step started from.
    The reference is a second random model (or, with ``own_reference``, the LoRA model
    with its adapters disabled), so the rewards are not 0 and the step-1 loss is not
    log 2; a path whose gradients are off by any constant factor fails."""
    variant = dict(variant)
    own_reference = variant.pop("own_reference", False)
    config = AlignConfig(cache_ref=False, **SMALL, **variant)
    records = _pairs(8)
    examples, _ = build_examples(records, tokenizer, "paired", config.tokenize_config())
    recorders = []

    def factory(model, train_config):
        trainable = [p for p in model.parameters() if p.requires_grad]
        recorders.append(RecordingSGD(trainable, lr=train_config.lr))
        return recorders[-1]

    result = align(
        records,
        copy.deepcopy(base_model),
        tokenizer,
        tmp_path,
        config,
        TrainConfig(batch_size=8, lr=0.5, progress=False, schedule="constant", epochs=2),
        ref_model=None if own_reference else copy.deepcopy(other_model),
        optimizer_factory=factory,
    )
    (recorder,) = recorders
    reference_logps = _plain_logps(base_model if own_reference else other_model, examples)
    # The LoRA model holds the adapters; the others are checked on a plain copy (no checkpointing).
    policy = result.model if config.lora else copy.deepcopy(base_model)
    policy.train()
    trainable = [p for p in policy.parameters() if p.requires_grad]
    expected_losses = []
    for parameters, gradients in zip(recorder.parameters_before, recorder.gradients, strict=True):
        with torch.no_grad():
            for target, value in zip(trainable, parameters, strict=True):
                target.copy_(value)
        loss = _plain_dpo_loss(policy, reference_logps, examples)
        expected = torch.autograd.grad(loss, trainable, allow_unused=True)
        expected_losses.append(loss.item())
        for got, want in zip(gradients, expected, strict=True):
            want = torch.zeros_like(got) if want is None else want
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
    assert len(expected_losses) == 2
    if not own_reference:  # the adapter-disabled reference equals the policy at step 1
        assert abs(expected_losses[0] - math.log(2)) > 1e-3
    assert max(float(g.abs().max()) for g in recorder.gradients[1]) > 1e-4
    logged = [m["loss"] for m in _metrics(tmp_path)]
    assert logged == pytest.approx(expected_losses, abs=1e-6)


def test_batches_are_grouped_by_the_width_of_the_rows_the_layout_builds(tokenizer):
    from prefkit.align.trainer import AlignTask, build_examples
    from prefkit.train.sampler import LengthGroupedBatchSampler

    rng = random.Random(5)
    records = [
        PairwiseRecord(
            id=str(i),
            prompt=" ".join(rng.choice("abcdefgh") for _ in range(rng.randint(2, 12))) + " :",
            response_a=" " + " ".join("x" * rng.randint(1, 14)),
            response_b=" " + " ".join("y" * rng.randint(1, 14)),
            outcome="a",
        )
        for i in range(64)
    ]

    def padded_tokens(shared_prompt: bool, lengths_from: bool) -> int:
        config = AlignConfig(cache_ref=False, shared_prompt=shared_prompt, **SMALL)
        examples, _ = build_examples(records, tokenizer, config.kind, config.tokenize_config())
        key_config = AlignConfig(cache_ref=False, shared_prompt=lengths_from, **SMALL)
        keyed = AlignTask(examples, key_config, pad_id=tokenizer.pad_token_id)
        task = AlignTask(examples, config, pad_id=tokenizer.pad_token_id)
        total = 0
        for batch in LengthGroupedBatchSampler(keyed.example_lengths(), 8, seed=0).batches(0):
            collated = task.collate(batch)
            total += (collated.shared or collated.sequences).input_ids.numel()
        return total

    shared_widths = padded_tokens(True, True)
    assert shared_widths < padded_tokens(
        True, False
    )  # shared rows grouped by the plain width pad more
    assert padded_tokens(False, False) < padded_tokens(False, True)  # and the other way round


def test_lora_reference_is_the_adapter_disabled_model(base_model, tokenizer, tmp_path):
    pre = AlignConfig(lora=True, cache_ref=False, **SMALL)
    in_step = AlignConfig(lora=True, precompute_ref=False, cache_ref=False, **SMALL)
    model_pre, _ = _train(base_model, tokenizer, tmp_path / "pre", config=pre, epochs=2)
    model_step, _ = _train(base_model, tokenizer, tmp_path / "step", config=in_step, epochs=2)
    losses_pre = [m["loss"] for m in _metrics(tmp_path / "pre")]
    losses_step = [m["loss"] for m in _metrics(tmp_path / "step")]
    assert losses_pre == pytest.approx(losses_step, abs=1e-5)
    assert losses_pre[-1] < losses_pre[0]
    trainable = [name for name, p in model_pre.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)


def test_saved_model_loads_with_transformers_and_matches(base_model, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = AlignConfig(lora=True, cache_ref=False, max_length=32, max_prompt_length=16)
    model, result = _train(base_model, tokenizer, tmp_path, config=config)
    assert (result.model_dir / "model.safetensors").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(result.model_dir, use_safetensors=True)
    reloaded_tokenizer = AutoTokenizer.from_pretrained(result.model_dir)
    ids = torch.tensor([reloaded_tokenizer("a b :")["input_ids"]])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-4)


def test_reference_cache_is_reused_across_runs(base_model, tokenizer, tmp_path):
    config = AlignConfig(ref_cache_dir=str(tmp_path / "cache"), **SMALL)
    _, first = _train(base_model, tokenizer, tmp_path / "one", config=config)
    _, second = _train(base_model, tokenizer, tmp_path / "two", config=config)
    assert (first.ref_cache_hit, second.ref_cache_hit) == (False, True)
    assert _metrics(tmp_path / "one")[0]["loss"] == _metrics(tmp_path / "two")[0]["loss"]
    # Other truncation settings change the token ids, hence the key.
    other_data = AlignConfig(
        ref_cache_dir=str(tmp_path / "cache"), **{**SMALL, "max_prompt_length": 2}
    )
    _, third = _train(base_model, tokenizer, tmp_path / "three", config=other_data)
    assert third.ref_cache_hit is False


def test_unpaired_and_listwise_examples_come_from_the_data_model(tokenizer):
    records = [
        PairwiseRecord(id="p", prompt="a :", response_a=" b", response_b=" c", outcome="b"),
        PairwiseRecord(id="t", prompt="a :", response_a=" b", response_b=" c", outcome="tie"),
        BinaryRecord(id="y", prompt="a :", response=" d", label=True),
    ]
    config = AlignConfig(loss="kto", **SMALL).tokenize_config()
    examples, stats = build_examples(records, tokenizer, "unpaired", config)
    assert [e.labels for e in examples] == [(1.0,), (0.0,), (1.0,)]
    assert stats.skipped_ties == 1 and stats.examples == 3
    ranking = RankingRecord(
        id="r", prompt="a :", responses=(" b", " c", " d"), scores=(1.0, None, 3.0)
    )
    examples, _ = build_examples([ranking], tokenizer, "listwise", config)
    assert examples[0].labels == (0.0, 1.0) and len(examples[0].completions) == 2
    with pytest.raises(ValueError, match="binary record"):
        build_examples(records[2:], tokenizer, "paired", config)


def test_kto_trains_and_reports_its_kl_estimate(base_model, tokenizer, tmp_path):
    config = AlignConfig(loss="kto", cache_ref=False, **SMALL)
    _train(base_model, tokenizer, tmp_path, config=config, epochs=2)
    lines = _metrics(tmp_path)
    assert "kl_estimate" in lines[0] and lines[0]["loss"] == pytest.approx(0.5, abs=1e-6)
    assert lines[-1]["kl_estimate"] > 0


def test_kto_loss_outside_a_step_asks_for_the_step_kl_estimate(base_model, tokenizer):
    from prefkit.align.trainer import AlignTask, build_examples

    config = AlignConfig(loss="kto", cache_ref=False, **SMALL)
    examples, _ = build_examples(_pairs(4), tokenizer, config.kind, config.tokenize_config())
    task = AlignTask(examples, config, pad_id=tokenizer.pad_token_id, reference_model=base_model)
    with pytest.raises(RuntimeError, match="before_step"):
        task.loss(base_model, task.collate([0, 1]))
    task.before_step(base_model, [0, 1, 2, 3], [[0, 1], [2, 3]], lambda totals: totals)
    losses, metrics = task.loss(base_model, task.collate([0, 1]))
    assert losses.shape == (2,) and float(metrics["kl_estimate"]) == pytest.approx(0.0, abs=1e-6)


def test_bad_settings_fail_before_training():
    with pytest.raises(ValueError, match="does not take"):
        AlignConfig(loss="sigmoid", loss_args={"gamma": 1.0})
    with pytest.raises(ValueError, match="sft_weight"):
        AlignConfig(loss="kto", sft_weight=1.0)


def test_rpo_adds_the_sft_term(base_model, tokenizer):
    examples, _ = build_examples(
        _pairs(4), tokenizer, "paired", AlignConfig(**SMALL).tokenize_config()
    )
    plain = AlignTask(
        examples, AlignConfig(precompute_ref=False, **SMALL), pad_id=0, reference_model=base_model
    )
    rpo = AlignTask(
        examples,
        AlignConfig(precompute_ref=False, sft_weight=0.5, **SMALL),
        pad_id=0,
        reference_model=base_model,
    )
    batch = plain.collate([0, 1, 2, 3])
    with torch.no_grad():
        plain_losses, _ = plain.loss(base_model, batch)
        rpo_losses, metrics = rpo.loss(base_model, batch)
    chosen = metrics["chosen_logps"] / torch.tensor([len(e.completions[0]) for e in examples])
    torch.testing.assert_close(rpo_losses, plain_losses - 0.5 * chosen)


# ---------------------------------------------------------------------------
# BCO: the running reward mean delta


def _thumbs(count, seed=0):
    rng = random.Random(seed)
    return [
        BinaryRecord(
            id=str(index),
            prompt=random_prompt(rng, num_words=1 + index % 4),
            response=random_completion(rng, 1 + index % 3),
            label=bool(index % 3),
        )
        for index in range(count)
    ]


@pytest.fixture(scope="module")
def other_model(tokenizer):
    """A reference unlike the policy, so that the rewards are not all 0 at step 1."""
    return build_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=1)


def _example_logps(model, example):
    """(K,) summed log-probs of the example's completions: one unpadded forward pass each."""
    row = []
    for completion in example.completions:
        ids = torch.tensor([[*example.prompt_ids, *completion]])  # (1, T)
        logprobs = model(ids).logits[0, :-1].log_softmax(-1)  # (T - 1, V)
        token_logps = logprobs.gather(-1, ids[0, 1:, None])[:, 0]  # (T - 1,)
        row.append(token_logps[len(example.prompt_ids) - 1 :].sum())
    return torch.stack(row)


@torch.no_grad()
def _plain_logps(model, examples):
    """(N, K) summed completion log-probs: one unpadded forward pass per completion."""
    model.eval()
    return torch.stack([_example_logps(model, example) for example in examples])


def _pure_bco(loss, policy, reference, examples, delta):
    """Per-example losses and every implicit reward, from the loss functions themselves."""
    shift = torch.tensor(delta, dtype=policy.dtype)
    if loss == "bco_pair":
        logps = PairedLogps(policy[:, 0], policy[:, 1], reference[:, 0], reference[:, 1])
        output = bco_pair(logps, shift, BetaConfig())
        return output.losses, torch.cat([output.chosen_rewards, output.rejected_rewards])
    desirable = torch.tensor([example.labels[0] > 0.5 for example in examples])
    output = bco(UnpairedLogps(policy[:, 0], reference[:, 0], desirable), shift, BetaConfig())
    return output.losses, output.rewards


def _task_state(out_dir):
    newest = max((out_dir / "checkpoints").iterdir(), key=lambda path: int(path.name[5:]))
    return json.loads((newest / "state.json").read_text())["task"]


@pytest.mark.parametrize(("loss", "records"), [("bco_pair", _pairs(8)), ("bco", _thumbs(8))])
def test_bco_steps_use_the_mean_reward_of_the_earlier_steps(
    base_model, other_model, tokenizer, tmp_path, loss, records
):
    """One batch of all 8 examples per step, two epochs, reference != policy.

    Step 1: delta_1 = 0 (nothing seen); the loss is the mean of bco(logps_0, delta=0),
    and its rewards r_1 (16 for 8 pairs, 8 for 8 thumbs) enter the mean.
    Step 2: delta_2 = mean(r_1); the loss is the mean of bco(logps_1, delta_2), with
    logps_1 the policy after step 1. After step 2 the checkpoint holds count 2 |r_1|
    and mean (mean(r_1) + mean(r_2)) / 2, the two steps having as many rewards.
    """
    config = AlignConfig(loss=loss, cache_ref=False, **SMALL)
    examples, _ = build_examples(records, tokenizer, config.kind, config.tokenize_config())
    model = copy.deepcopy(base_model)
    after_step_1 = []

    def keep_weights_after_step_1(event):
        if event.kind == "step" and event.global_step == 1:
            after_step_1.append(copy.deepcopy(model))

    align(
        records,
        model,
        tokenizer,
        tmp_path,
        config,
        TrainConfig(batch_size=8, lr=1e-2, progress=False, schedule="constant", epochs=2),
        ref_model=copy.deepcopy(other_model),
        callbacks=[keep_weights_after_step_1],
    )

    reference = _plain_logps(other_model, examples)
    losses_1, rewards_1 = _pure_bco(
        loss, _plain_logps(base_model, examples), reference, examples, 0.0
    )
    delta_2 = rewards_1.double().mean().item()
    losses_2, rewards_2 = _pure_bco(
        loss, _plain_logps(after_step_1[0], examples), reference, examples, delta_2
    )
    assert abs(delta_2) > 1e-3  # the check below is not trivially 0 == 0
    step_1, step_2 = _metrics(tmp_path)
    assert step_1["reward_shift"] == 0.0
    assert step_2["reward_shift"] == pytest.approx(delta_2, abs=1e-6)
    assert step_1["loss"] == pytest.approx(losses_1.mean().item(), abs=1e-5)
    assert step_2["loss"] == pytest.approx(losses_2.mean().item(), abs=1e-5)
    state = _task_state(tmp_path)["reward_shift"]
    assert state["count"] == 2 * len(rewards_1)
    expected_mean = (rewards_1.double().mean() + rewards_2.double().mean()).item() / 2
    assert state["mean"] == pytest.approx(expected_mean, abs=1e-6)


@pytest.mark.parametrize(("loss", "records"), [("bco_pair", _pairs(16)), ("bco", _thumbs(16))])
def test_bco_resumes_with_the_same_reward_mean(
    base_model, other_model, tokenizer, tmp_path, loss, records
):
    config = AlignConfig(loss=loss, cache_ref=False, **SMALL)
    settings = {
        "batch_size": 8,
        "lr": 1e-2,
        "progress": False,
        "schedule": "constant",
        "epochs": 2,
        "checkpoint_every_steps": 1,
    }

    def run(out_dir, callbacks=()):
        model = copy.deepcopy(base_model)
        result = align(
            records,
            model,
            tokenizer,
            out_dir,
            config,
            TrainConfig(**settings),
            ref_model=copy.deepcopy(other_model),
            callbacks=callbacks,
        )
        return model, result

    class Stop(Exception):
        pass

    def stop_at_step_3(event):
        if event.kind == "checkpoint" and event.global_step == 3:
            raise Stop

    full, _ = run(tmp_path / "full")
    with pytest.raises(Stop):
        run(tmp_path / "cut", [stop_at_step_3])
    assert _task_state(tmp_path / "cut")["reward_shift"]["count"] > 0
    resumed, result = run(tmp_path / "cut")
    assert result.train.resumed_from is not None and result.train.resumed_from.name == "step-3"
    for (name, expected), actual in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(actual, expected), name
    full_lines, cut_lines = _metrics(tmp_path / "full"), _metrics(tmp_path / "cut")
    assert [m["reward_shift"] for m in cut_lines] == [m["reward_shift"] for m in full_lines]
    assert [m["loss"] for m in cut_lines] == [m["loss"] for m in full_lines]
    assert _task_state(tmp_path / "cut") == _task_state(tmp_path / "full")


def test_bco_reward_mean_does_not_depend_on_gradient_accumulation(
    base_model, other_model, tokenizer, tmp_path
):
    config = AlignConfig(loss="bco", cache_ref=False, **SMALL)
    models, lines = [], []
    for accum in (1, 4):
        model = copy.deepcopy(base_model)
        align(
            _thumbs(16),
            model,
            tokenizer,
            tmp_path / str(accum),
            config,
            TrainConfig(batch_size=8, lr=1e-2, progress=False, epochs=2, grad_accum_steps=accum),
            ref_model=copy.deepcopy(other_model),
        )
        models.append(model)
        lines.append(_metrics(tmp_path / str(accum)))
    shifts = [[m["reward_shift"] for m in run] for run in lines]
    assert shifts[1] == pytest.approx(shifts[0], abs=1e-6) and len(set(shifts[0])) == 4
    for (name, expected), actual in zip(
        models[0].state_dict().items(), models[1].state_dict().values()
    ):
        torch.testing.assert_close(actual, expected, atol=2e-5, rtol=1e-4, msg=name)


# ---------------------------------------------------------------------------
# the evaluation set


def test_evaluation_at_the_reference_is_log_2_with_zero_rewards(base_model, tokenizer):
    """Policy == reference: every implicit reward is 0, so each DPO loss is
    -log sigmoid(0) = log 2, margins are 0 and no chosen reward beats its rejected one.
    Five examples in batches of two check that the uneven last batch is weighted right."""
    config = AlignConfig(precompute_ref=False, eval_batch_size=2, **SMALL)
    examples, _ = build_examples(_pairs(5), tokenizer, "paired", config.tokenize_config())
    task = AlignTask(examples, config, pad_id=0, reference_model=base_model, eval_examples=examples)
    metrics = task.evaluate(base_model)
    assert metrics["loss"] == pytest.approx(math.log(2), abs=1e-6)
    for name in ("reward_margin", "chosen_rewards", "rejected_rewards", "reward_accuracy"):
        assert metrics[name] == pytest.approx(0.0, abs=1e-6), name
    assert metrics["num_examples"] == 5
    assert AlignTask(examples, config, pad_id=0, reference_model=base_model).evaluate is None


def test_eval_lines_equal_a_hand_computation(base_model, tokenizer, tmp_path):
    """After one epoch (2 steps), the eval line holds DPO's means over the 6 held-out pairs:
    rewards 0.1 * (log pi - log pi_ref) of the trained policy against the initial one,
    loss -log sigmoid(chosen - rejected), accuracy chosen > rejected. The reference
    log-probs of the eval set go through the same disk cache as the training set's."""
    config = AlignConfig(ref_cache_dir=str(tmp_path / "cache"), **SMALL)
    eval_records = _pairs(6, seed=1)
    model = copy.deepcopy(base_model)
    align(
        _pairs(16),
        model,
        tokenizer,
        tmp_path / "run",
        config,
        TrainConfig(batch_size=8, lr=1e-2, progress=False),
        eval_records=eval_records,
    )
    (line,) = [m for m in _metrics(tmp_path / "run") if m["split"] == "eval"]
    assert (line["epoch"], line["step"], line["num_examples"]) == (0, 2, 6)

    examples, _ = build_examples(eval_records, tokenizer, "paired", config.tokenize_config())
    rewards = 0.1 * (_plain_logps(model, examples) - _plain_logps(base_model, examples))  # (6, 2)
    margins = rewards[:, 0] - rewards[:, 1]
    expected = {
        "loss": -torch.nn.functional.logsigmoid(margins).mean(),
        "chosen_rewards": rewards[:, 0].mean(),
        "rejected_rewards": rewards[:, 1].mean(),
        "reward_margin": margins.mean(),
        "reward_accuracy": (margins > 0).float().mean(),
    }
    for name, value in expected.items():
        assert line[name] == pytest.approx(value.item(), abs=1e-5), name
    assert abs(line["reward_margin"]) > 1e-4
    assert len(list((tmp_path / "cache").iterdir())) == 2  # one entry per set


def test_unpaired_evaluation_reports_desirable_and_undesirable_rewards(
    base_model, other_model, tokenizer
):
    config = AlignConfig(loss="bco", **SMALL)
    examples, _ = build_examples(_thumbs(7), tokenizer, "unpaired", config.tokenize_config())
    task = AlignTask(
        examples,
        AlignConfig(loss="bco", precompute_ref=False, **SMALL),
        pad_id=0,
        reference_model=other_model,
        eval_examples=examples,
    )
    metrics = task.evaluate(base_model)
    rewards = 0.1 * (_plain_logps(base_model, examples) - _plain_logps(other_model, examples))[:, 0]
    desirable = torch.tensor([example.labels[0] == 1.0 for example in examples])
    losses, _ = _pure_bco(
        "bco",
        _plain_logps(base_model, examples),
        _plain_logps(other_model, examples),
        examples,
        0.0,
    )
    assert metrics["loss"] == pytest.approx(losses.mean().item(), abs=1e-5)
    assert metrics["chosen_rewards"] == pytest.approx(rewards[desirable].mean().item(), abs=1e-5)
    assert metrics["rejected_rewards"] == pytest.approx(rewards[~desirable].mean().item(), abs=1e-5)
    assert metrics["reward_margin"] == pytest.approx(
        metrics["chosen_rewards"] - metrics["rejected_rewards"]
    )
    assert task.reward_shift.count == 0  # evaluation does not move delta


def test_early_stopping_on_an_eval_metric_stops_and_restores_the_best_weights(
    base_model, tokenizer, tmp_path
):
    """eval_fraction 0.25 of 16 pairs: 4 held out, 12 trained in batches of 4 (3 steps an
    epoch), evaluated after every step. num_examples never changes, so no evaluation after
    the first improves on it: with patience 2, training stops after step 3 and puts back
    the weights of step 1."""
    model = copy.deepcopy(base_model)
    snapshots = {}

    def snapshot(event):
        if event.kind == "eval":
            snapshots[event.global_step] = copy.deepcopy(model.state_dict())

    result = align(
        _pairs(16),
        model,
        tokenizer,
        tmp_path,
        AlignConfig(cache_ref=False, eval_fraction=0.25, **SMALL),
        TrainConfig(
            batch_size=4,
            lr=1e-2,
            progress=False,
            epochs=3,
            eval_every=1,
            early_stopping_patience=2,
            early_stopping_metric="num_examples",
        ),
        callbacks=[snapshot],
    )
    assert result.train.stopped_early and result.train.restored_best
    assert (result.train.best_step, result.train.global_step) == (1, 3)
    assert result.data.records == 12 and result.eval_data.records == 4
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, snapshots[1][name]), name
    eval_lines = [m for m in _metrics(tmp_path) if m["split"] == "eval"]
    assert [m["step"] for m in eval_lines] == [1, 2, 3]


def test_eval_fraction_split_is_seeded_disjoint_and_whole_records():
    records = _pairs(10)
    training, held_out = split_eval_records(records, 0.3, seed=0)
    assert len(held_out) == 3 and len(training) == 7
    assert sorted(r.id for r in training + held_out) == sorted(r.id for r in records)
    assert split_eval_records(records, 0.3, seed=0) == (training, held_out)
    assert split_eval_records(records, 0.3, seed=1)[1] != held_out
    with pytest.raises(ValueError, match="holds out no record"):
        split_eval_records(records, 0.04, seed=0)
    with pytest.raises(ValueError, match="leaves none for training"):
        split_eval_records(records, 0.96, seed=0)


@pytest.mark.parametrize("fraction", [1.0, -0.1, float("nan"), True, "0.1"])
def test_bad_eval_fraction_is_refused(fraction):
    with pytest.raises(ValueError, match=r"eval_fraction must be a number in \[0, 1\)"):
        AlignConfig(eval_fraction=fraction)


def test_contradictory_evaluation_settings_fail_before_training(base_model, tokenizer, tmp_path):
    with pytest.raises(ValueError, match="both given"):
        align(
            _pairs(4),
            base_model,
            tokenizer,
            tmp_path,
            AlignConfig(eval_fraction=0.5, **SMALL),
            TrainConfig(progress=False),
            eval_records=_pairs(2),
        )
    with pytest.raises(ValueError, match="no evaluation set"):
        align(
            _pairs(4),
            base_model,
            tokenizer,
            tmp_path,
            AlignConfig(**SMALL),
            TrainConfig(progress=False, early_stopping_patience=1),
        )
    with pytest.raises(ValueError, match="no evaluation examples"):
        tie = PairwiseRecord(id="t", prompt="a :", response_a=" b", response_b=" c", outcome="tie")
        align(
            _pairs(4),
            base_model,
            tokenizer,
            tmp_path,
            AlignConfig(**SMALL),
            TrainConfig(progress=False),
            eval_records=[tie],
        )
    assert not (tmp_path / "checkpoints").exists()
