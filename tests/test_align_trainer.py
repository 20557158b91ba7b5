"""The alignment trainer: invariances, exact resume, reference paths, saving, data handling."""

from __future__ import annotations

import copy
import json
import random

import pytest
import torch

from prefkit.align.synthetic import build_model, build_tokenizer, random_completion, random_prompt
from prefkit.align.trainer import AlignConfig, AlignTask, align, build_examples
from prefkit.data.records import BinaryRecord, PairwiseRecord, RankingRecord
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


@pytest.mark.parametrize("loss", ["sigmoid", "simpo", "lipo_lambda"])
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


def test_interrupted_run_resumes_to_identical_weights(base_model, tokenizer, tmp_path):
    full, _ = _train(base_model, tokenizer, tmp_path / "full", epochs=2, checkpoint_every_steps=1)

    class Stop(Exception):
        pass

    def stop_at_step_3(event):
        if event.kind == "checkpoint" and event.global_step == 3:
            raise Stop

    config = AlignConfig(cache_ref=False, **SMALL)
    with pytest.raises(Stop):
        align(_pairs(16), copy.deepcopy(base_model), tokenizer, tmp_path / "cut", config,
              TrainConfig(batch_size=8, lr=1e-2, progress=False, schedule="constant", epochs=2,
                          checkpoint_every_steps=1),
              callbacks=[stop_at_step_3])
    resumed, result = _train(
        base_model, tokenizer, tmp_path / "cut", epochs=2, checkpoint_every_steps=1
    )
    assert result.train.resumed_from is not None
    for (name, expected), actual in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(actual, expected), name
    assert [m["loss"] for m in _metrics(tmp_path / "cut")] == [
        m["loss"] for m in _metrics(tmp_path / "full")
    ]


def test_metrics_lines_hold_rewards_accuracy_margins_and_logps(base_model, tokenizer, tmp_path):
    _train(base_model, tokenizer, tmp_path)
    first = _metrics(tmp_path)[0]
    for name in ("loss", "chosen_rewards", "rejected_rewards", "reward_accuracy",
                 "reward_margin", "chosen_logps", "rejected_logps"):
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
    default, _ = _train(base_model, tokenizer, tmp_path / "default")
    config = AlignConfig(cache_ref=False, **SMALL, **variant)
    other, _ = _train(base_model, tokenizer, tmp_path / "other", config=config)
    # Adam divides by sqrt(v), so float-rounding differences in near-zero gradients can move a
    # weight by up to ~lr; compare the losses tightly and the weights at that scale.
    default_lines, other_lines = _metrics(tmp_path / "default"), _metrics(tmp_path / "other")
    for name in ("loss", "reward_margin", "chosen_logps"):
        assert [m[name] for m in other_lines] == pytest.approx(
            [m[name] for m in default_lines], abs=1e-5
        )
    for (name, expected), actual in zip(default.state_dict().items(), other.state_dict().values()):
        torch.testing.assert_close(actual, expected, atol=1e-3, rtol=0, msg=name)


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
    other_data = AlignConfig(ref_cache_dir=str(tmp_path / "cache"), **{**SMALL, "max_prompt_length": 2})
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
    ranking = RankingRecord(id="r", prompt="a :", responses=(" b", " c", " d"), scores=(1.0, None, 3.0))
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


def test_bad_settings_fail_before_training():
    with pytest.raises(ValueError, match="not supported"):
        AlignConfig(loss="bco")
    with pytest.raises(ValueError, match="does not take"):
        AlignConfig(loss="sigmoid", loss_args={"gamma": 1.0})
    with pytest.raises(ValueError, match="sft_weight"):
        AlignConfig(loss="kto", sft_weight=1.0)


def test_rpo_adds_the_sft_term(base_model, tokenizer):
    examples, _ = build_examples(_pairs(4), tokenizer, "paired", AlignConfig(**SMALL).tokenize_config())
    plain = AlignTask(examples, AlignConfig(precompute_ref=False, **SMALL), pad_id=0,
                      reference_model=base_model)
    rpo = AlignTask(examples, AlignConfig(precompute_ref=False, sft_weight=0.5, **SMALL), pad_id=0,
                    reference_model=base_model)
    batch = plain.collate([0, 1, 2, 3])
    with torch.no_grad():
        plain_losses, _ = plain.loss(base_model, batch)
        rpo_losses, metrics = rpo.loss(base_model, batch)
    chosen = metrics["chosen_logps"] / torch.tensor([len(e.completions[0]) for e in examples])
    torch.testing.assert_close(rpo_losses, plain_losses - 0.5 * chosen)
