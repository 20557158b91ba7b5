"""``--length-debias``: a length head trained beside the reward and dropped at inference.

Synthetic pairs: the better response holds the word "thanks"; in training the better one
is also the longer one in 90% of pairs, on held-out pairs in half of them. The packaged
MiniLM embeds the texts (the embedding test); a tiny random BERT runs finetune mode.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from prefkit.cli import main
from prefkit.data.records import PairwiseRecord
from prefkit.errors import UserInputError
from prefkit.eval.metrics import spearman
from prefkit.rm.length_debias import DEFAULT_LENGTH_DEBIAS
from prefkit.rm.model import RewardModel
from prefkit.rm.spec import RewardModelSpec
from prefkit.rm.train import RMTrainConfig, default_train_config, train_reward_model
from test_rm_train import make_tiny_bert

WORDS = (
    "the a of river stone cloud window paper garden music table yellow quiet seven "
    "morning road bridge lamp forest letter"
).split()


def _text(rng: random.Random, words: int, good: bool) -> str:
    chosen = [rng.choice(WORDS) for _ in range(words)]
    if good:
        chosen.insert(rng.randrange(len(chosen) + 1), "thanks")
    return " ".join(chosen)


def length_confounded_pairs(
    rng: random.Random, count: int, good_is_longer: float
) -> list[PairwiseRecord]:
    """Pairs whose better response holds "thanks" and is the longer one with probability
    ``good_is_longer``; the better one is a or b at random."""
    records = []
    for index in range(count):
        short, long_ = rng.randint(3, 8), rng.randint(14, 30)
        longer = rng.random() < good_is_longer
        good = _text(rng, long_ if longer else short, True)
        bad = _text(rng, short if longer else long_, False)
        a_wins = rng.random() < 0.5
        records.append(
            PairwiseRecord(
                id=f"q{index}",
                prompt=f"question {index}",
                response_a=good if a_wins else bad,
                response_b=bad if a_wins else good,
                outcome="a" if a_wins else "b",
            )
        )
    return records


def _held_out(model: RewardModel, records: list[PairwiseRecord]) -> tuple[float, float]:
    """Accuracy and reward-length Spearman over all responses."""
    prompts = [record.prompt for record in records]
    rewards_a = model.score(prompts, [record.response_a for record in records])
    rewards_b = model.score(prompts, [record.response_b for record in records])
    accuracy = float(
        np.mean(
            [(ra > rb) == (r.outcome == "a") for ra, rb, r in zip(rewards_a, rewards_b, records)]
        )
    )
    lengths = [len(r.response_a) for r in records] + [len(r.response_b) for r in records]
    return accuracy, spearman(np.concatenate([rewards_a, rewards_b]), lengths)


def test_length_debias_removes_length_from_the_reward_and_helps_unconfounded_pairs(tmp_path):
    rng = random.Random(0)
    train_records = length_confounded_pairs(rng, 300, good_is_longer=0.9)
    held_out = length_confounded_pairs(rng, 200, good_is_longer=0.5)
    results = {}
    for weight in (0.0, DEFAULT_LENGTH_DEBIAS):
        config = RMTrainConfig(
            length_debias=weight,
            cache_dir=str(tmp_path / "cache"),
            fit_temperature=False,
            train=default_train_config("embedding", epochs=10, progress=False),
        )
        out = tmp_path / f"rm-{weight}"
        train_reward_model(train_records, config, out, eval_records=held_out, log=lambda _: None)
        model = RewardModel.load(out, cache_dir=tmp_path / "cache")
        results[weight] = (*_held_out(model, held_out), model.spec)
    plain_accuracy, plain_rho, plain_spec = results[0.0]
    debiased_accuracy, debiased_rho, debiased_spec = results[DEFAULT_LENGTH_DEBIAS]
    # Seeds 0, 1, 2 of this data gave plain 0.77/0.73/0.75 accuracy and Spearman 0.56 to 0.67,
    # debiased 0.89 to 0.93 and Spearman -0.19 to 0.02.
    assert plain_rho > 0.4
    assert abs(debiased_rho) < plain_rho - 0.3
    assert debiased_accuracy > plain_accuracy + 0.08
    assert plain_spec.length_debias == 0 and plain_spec.training["length_debias"] is None
    assert debiased_spec.length_debias == DEFAULT_LENGTH_DEBIAS
    summary = debiased_spec.training["length_debias"]
    assert summary["weight"] == DEFAULT_LENGTH_DEBIAS
    # In training the length head carries length: kept, the reward follows length more.
    assert summary["train"]["combined"] > summary["train"]["quality"] + 0.1
    assert summary["eval"]["quality"] == pytest.approx(debiased_rho, abs=0.05)


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory) -> str:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert-debias"))


def test_finetune_length_debias_saves_the_quality_head_only(tiny_backbone, tmp_path):
    records = length_confounded_pairs(random.Random(3), 48, good_is_longer=0.9)
    config = RMTrainConfig(
        mode="finetune",
        backbone=tiny_backbone,
        max_length=48,
        length_debias=0.5,
        train=default_train_config("finetune", epochs=1, batch_size=16, progress=False),
    )
    result = train_reward_model(records, config, tmp_path / "rm", log=lambda _: None)
    weights = load_file(tmp_path / "rm" / "model.safetensors")
    assert weights and not any("length_head" in name for name in weights)
    loaded = RewardModel.load(tmp_path / "rm")
    prompts = [record.prompt for record in records[:6]]
    responses = [record.response_a for record in records[:6]]
    np.testing.assert_allclose(
        loaded.score(prompts, responses), result.model.score(prompts, responses), atol=1e-5
    )
    # The hook that fed the length head is gone: the head's forward runs no extra code.
    assert not result.model.head._forward_pre_hooks
    assert set(loaded.spec.training["length_debias"]["train"]) == {"combined", "quality"}


def test_cli_flag_without_a_value_uses_the_default_weight(tiny_backbone, tmp_path):
    data = tmp_path / "pairs.jsonl"
    with data.open("w") as handle:
        for record in length_confounded_pairs(random.Random(4), 40, good_is_longer=0.9):
            row = {"prompt": record.prompt, "chosen": record.chosen, "rejected": record.rejected}
            handle.write(json.dumps(row) + "\n")
    command = ["rm", "train", str(data), "--out", str(tmp_path / "rm"), "--backbone"]
    command += [tiny_backbone, "--epochs", "1", "--cache-dir", str(tmp_path / "cache")]
    assert main([*command, "--no-progress", "--length-debias"]) == 0
    spec = RewardModelSpec.read(tmp_path / "rm")
    assert spec.length_debias == DEFAULT_LENGTH_DEBIAS
    assert main([*command, "--out", str(tmp_path / "rm2"), "--length-debias", "-1"]) == 2


def test_spec_round_trips_and_validates_length_debias(tmp_path):
    fixture = Path(__file__).parent / "fixtures" / "rm_format_v1" / "finetune_config.json"
    old = RewardModelSpec.from_json(json.loads(fixture.read_text()))
    assert old.length_debias == 0.0
    spec = RewardModelSpec.from_json({**old.to_json(), "length_debias": 0.3})
    assert RewardModelSpec.from_json(spec.to_json()).length_debias == 0.3
    with pytest.raises(UserInputError, match="length_debias"):
        RewardModelSpec.from_json({**old.to_json(), "length_debias": -1})
