"""Multi-objective reward model (ArmoRM recipe): attribute regression, gate, length decorrelation.

Synthetic data on a tiny random BERT (from tests/test_rm_train.py). A response
holds 8 words: ``count_a`` copies of "excellent", ``count_b`` copies of
"accurate", the rest filler; attribute A is rated ``count_a`` and B ``count_b``.
Prompts are about cooking or about code. For cooking prompts the response with
more "excellent" wins, for code prompts the one with more "accurate", so no
single fixed mix of A and B orders both kinds of pairs well: the gate must read
the prompt.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from prefkit.data.records import PairwiseRecord, RatingRecord
from prefkit.rm.multiobjective import (
    GateBatch,
    MultiObjectiveConfig,
    RegressionBatch,
    gate_losses,
    regression_losses,
    train_multiobjective,
)
from prefkit.rm.multiobjective_model import (
    MultiObjectiveItems,
    MultiObjectiveRewardModel,
    length_decorrelation_coefficients,
)
from prefkit.rm.spec import BackboneSpec, RewardModelSpec
from test_rm_train import WORDS, make_tiny_bert, pair_accuracy

RESPONSE_WORDS = 8
PROMPTS = {
    "cooking": [
        "how do i cook rice",
        "what goes in a soup",
        "tell me a bread recipe",
        "how long to boil eggs",
    ],
    "code": [
        "how do i sort a list in python",
        "fix my java loop",
        "what is a hash map",
        "explain recursion",
    ],
}


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert-mo"))


def make_response(
    rng: random.Random, count_a: int, count_b: int, filler: int = RESPONSE_WORDS
) -> str:
    words = ["excellent"] * count_a + ["accurate"] * count_b
    words += rng.choices(WORDS, k=max(filler - count_a - count_b, 0))
    rng.shuffle(words)
    return " ".join(words)


def rating_data(count: int, seed: int) -> list[RatingRecord]:
    rng = random.Random(seed)
    records = []
    for index in range(count):
        count_a, count_b = rng.randint(0, 3), rng.randint(0, 3)
        topic = rng.choice(sorted(PROMPTS))
        records.append(
            RatingRecord(
                id=f"r{seed}-{index}",
                prompt=rng.choice(PROMPTS[topic]),
                response=make_response(rng, count_a, count_b),
                ratings={"A": float(count_a), "B": float(count_b)},
            )
        )
    return records


def pair_data(count: int, seed: int) -> list[PairwiseRecord]:
    """Pairs whose winner has more A (cooking) or more B (code); the other attribute is random."""
    rng = random.Random(seed)
    records = []
    for index in range(count):
        topic = "cooking" if index % 2 == 0 else "code"
        low, high = sorted(rng.sample(range(4), 2))
        other_winner, other_loser = rng.randint(0, 3), rng.randint(0, 3)
        if topic == "cooking":
            winner, loser = (
                make_response(rng, high, other_winner),
                make_response(rng, low, other_loser),
            )
        else:
            winner, loser = (
                make_response(rng, other_winner, high),
                make_response(rng, other_loser, low),
            )
        a_wins = rng.random() < 0.5
        records.append(
            PairwiseRecord(
                id=f"p{seed}-{index}",
                prompt=rng.choice(PROMPTS[topic]),
                response_a=winner if a_wins else loser,
                response_b=loser if a_wins else winner,
                outcome="a" if a_wins else "b",
            )
        )
    return records


def quick_config(backbone: str, tmp_path: Path, **overrides) -> MultiObjectiveConfig:
    values = dict(
        backbone=backbone,
        cache_dir=str(tmp_path / "cache"),
        features="response,length",
        regression_epochs=15,
        gate_epochs=15,
        batch_size=100,
        regression_lr=3e-2,
        gate_lr=3e-2,
        device="cpu",
        seed=0,
    )
    values.update(overrides)
    return MultiObjectiveConfig(**values)


@pytest.fixture(scope="module")
def trained(tiny_bert, tmp_path_factory):
    folder = tmp_path_factory.mktemp("multiobjective")
    model = train_multiobjective(
        rating_data(300, seed=1),
        pair_data(240, seed=2),
        quick_config(tiny_bert, folder),
        folder / "rm",
    ).model
    return model, folder


def test_regression_recovers_attributes(trained):
    model, _ = trained
    held_out = rating_data(120, seed=3)
    predicted = model.score_attributes([r.prompt for r in held_out], [r.response for r in held_out])
    assert set(predicted) == {"A", "B"}
    for name in ("A", "B"):
        truth = np.array([r.ratings[name] for r in held_out])
        correlation = np.corrcoef(predicted[name], truth)[0, 1]
        assert correlation > 0.9, (name, correlation)


def test_gate_weights_follow_the_prompt_and_pairs_are_ordered(trained):
    model, _ = trained
    cooking = model.gate_weights(PROMPTS["cooking"])
    code = model.gate_weights(PROMPTS["code"])
    np.testing.assert_allclose(cooking["A"] + cooking["B"], 1.0, atol=1e-6)
    assert cooking["A"].mean() > 0.75, cooking
    assert code["B"].mean() > 0.75, code
    accuracy = pair_accuracy(model, pair_data(200, seed=4))
    assert accuracy > 0.9, accuracy


def test_save_load_gives_identical_scores(trained):
    model, folder = trained
    loaded = MultiObjectiveRewardModel.load(folder / "rm", cache_dir=folder / "cache")
    records = pair_data(20, seed=5)
    prompts = [r.prompt for r in records]
    responses = [r.response_a for r in records]
    np.testing.assert_array_equal(model.score(prompts, responses), loaded.score(prompts, responses))
    for name, values in model.score_attributes(prompts, responses).items():
        np.testing.assert_array_equal(values, loaded.score_attributes(prompts, responses)[name])
    np.testing.assert_array_equal(
        model.gate_weights(prompts)["A"], loaded.gate_weights(prompts)["A"]
    )
    attributes, rewards = loaded.predict_and_score(prompts, responses)
    np.testing.assert_array_equal(rewards, loaded.score(prompts, responses))
    np.testing.assert_array_equal(
        attributes[:, 1], loaded.score_attributes(prompts, responses)["B"]
    )
    probability = loaded.compare(records[0].prompt, records[0].response_a, records[0].response_b)
    assert 0.0 <= probability <= 1.0 and (probability > 0.5) == (records[0].outcome == "a")

    config = json.loads((folder / "rm" / "config.json").read_text())
    assert config["mode"] == "multi-objective" and config["attributes"] == ["A", "B"]
    assert {"reward_mean", "reward_std"} <= set(config)
    files = {path.name for path in (folder / "rm").iterdir() if path.is_file()}
    assert files == {"config.json", "model.safetensors"}


def length_biased_data(seed: int) -> tuple[list[RatingRecord], list[PairwiseRecord]]:
    """Ratings that grow with length (a verbose rater) and pairs whose winner is usually longer."""
    rng = random.Random(seed)
    ratings = []
    for index in range(300):
        count_a, count_b, filler = rng.randint(0, 3), rng.randint(0, 3), rng.randint(2, 14)
        bias = 0.3 * filler
        ratings.append(
            RatingRecord(
                id=f"lr{index}",
                prompt=rng.choice(PROMPTS["cooking"]),
                response=make_response(rng, count_a, count_b, count_a + count_b + filler),
                ratings={"A": count_a + bias, "B": count_b + bias},
            )
        )
    pairs = []
    for index in range(200):
        topic = "cooking" if index % 2 == 0 else "code"
        low, high = sorted(rng.sample(range(4), 2))
        long_filler, short_filler = rng.randint(8, 14), rng.randint(2, 8)
        counts_winner = (
            (high, rng.randint(0, 3)) if topic == "cooking" else (rng.randint(0, 3), high)
        )
        counts_loser = (low, rng.randint(0, 3)) if topic == "cooking" else (rng.randint(0, 3), low)
        winner = make_response(rng, *counts_winner, sum(counts_winner) + long_filler)
        loser = make_response(rng, *counts_loser, sum(counts_loser) + short_filler)
        pairs.append(
            PairwiseRecord(
                id=f"lp{index}",
                prompt=rng.choice(PROMPTS[topic]),
                response_a=winner,
                response_b=loser,
                outcome="a",
            )
        )
    return ratings, pairs


def test_length_decorrelation_reduces_length_correlation(tiny_bert, tmp_path):
    ratings, pairs = length_biased_data(seed=6)
    prompts = [p.prompt for p in pairs for _ in range(2)]
    responses = [text for p in pairs for text in (p.response_a, p.response_b)]
    log_lengths = np.log1p([len(text) for text in responses])
    correlations = {}
    for decorrelate in (False, True):
        config = quick_config(tiny_bert, tmp_path, length_decorrelation=decorrelate)
        model = train_multiobjective(ratings, pairs, config, tmp_path / f"rm-{decorrelate}").model
        correlations[decorrelate] = abs(
            np.corrcoef(model.score(prompts, responses), log_lengths)[0, 1]
        )
        attributes = model.score_attributes(prompts, responses)
        if decorrelate:
            coefficients = model.length_coefficients.numpy()
            assert (coefficients > 0).all(), (
                coefficients
            )  # the verbose rater made both grow with length
            for column, name in enumerate(("A", "B")):
                adjusted = attributes[name] - coefficients[column] * (
                    log_lengths - float(model.length_center)
                )
                assert abs(np.corrcoef(adjusted, log_lengths)[0, 1]) < 1e-3
    assert correlations[False] > 0.3, correlations
    assert correlations[True] < 0.5 * correlations[False], correlations


def test_length_decorrelation_coefficients_by_hand():
    """r = (1, 2, 3), l = (0, 1, 2): mean l = 1, Var(l) = (1 + 0 + 1) / 3 = 2/3,
    Cov(r, l) = ((-1)(-1) + 0 + (1)(1)) / 3 = 2/3, so lambda = 1 and
    r' = r - 1 * (l - 1) = (2, 2, 2). A second attribute s = (3, 3, 0):
    Cov(s, l) = ((1)(-1) + (1)(0) + (-2)(1)) / 3 = -1, lambda = -1.5."""
    values = torch.tensor([[1.0, 3.0], [2.0, 3.0], [3.0, 0.0]])
    lengths = torch.tensor([0.0, 1.0, 2.0])
    coefficients, center = length_decorrelation_coefficients(values, lengths)
    torch.testing.assert_close(coefficients, torch.tensor([1.0, -1.5]))
    torch.testing.assert_close(center, torch.tensor(1.0))
    adjusted = values - (lengths - center).unsqueeze(1) * coefficients
    torch.testing.assert_close(adjusted[:, 0], torch.tensor([2.0, 2.0, 2.0]))
    # Equal lengths: nothing to remove.
    flat, _ = length_decorrelation_coefficients(values, torch.ones(3))
    torch.testing.assert_close(flat, torch.zeros(2))
    with pytest.raises(ValueError, match=r"\(N, K\) attributes and \(N,\) lengths"):
        length_decorrelation_coefficients(values, torch.ones(4))


def tiny_spec(backbone: str) -> RewardModelSpec:
    return RewardModelSpec(
        mode="multi-objective",
        backbone=BackboneSpec.from_checkpoint(backbone),
        max_length=32,
        truncation="truncate",
        loss="regression+bradley-terry",
        attributes=("A", "B"),
        features=("response",),
        gate_hidden_sizes=(8,),
        gate_temperature=2.0,
    )


def test_gate_loss_by_hand(tiny_bert):
    """Gate weights g = softmax(logits / T) with T = 2; zero the gate's last layer and set its
    bias to (2 ln 3, 0): g = softmax(ln 3, 0) = (3/4, 1/4). Scale s = exp(0) = 1.
    chosen r' = (2, 0) -> R = 1.5; rejected r' = (0, 2) -> R = 0.5; margin 1, so the
    Bradley-Terry loss is -log sigmoid(1) = log(1 + e^-1) = 0.31326, times weight 2."""
    model = MultiObjectiveRewardModel(tiny_spec(tiny_bert))
    last = model.gate.layers[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([2 * math.log(3.0), 0.0]))
    batch = GateBatch(
        torch.tensor([[2.0, 0.0]]),
        torch.tensor([[0.0, 2.0]]),
        torch.randn(1, 32),
        torch.tensor([2.0]),
    )
    losses, metrics = gate_losses(model, batch)
    torch.testing.assert_close(losses, torch.tensor([2 * math.log1p(math.exp(-1.0))]))
    assert metrics["accuracy"].tolist() == [1.0]


def test_missing_attributes_are_masked(tiny_bert):
    """NaN targets where unrated give finite losses and gradients, and only rated ones count."""
    model = MultiObjectiveRewardModel(tiny_spec(tiny_bert))
    items = MultiObjectiveItems(torch.randn(3, 32), torch.randn(3, 32), torch.zeros(3))
    ratings = torch.tensor([[1.0, float("nan")], [float("nan"), float("nan")], [0.5, 2.0]])
    observed = ~torch.isnan(ratings)
    losses, metrics = regression_losses(model, RegressionBatch(items, ratings, observed))
    assert torch.isfinite(losses).all() and losses[1] == 0
    losses.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.head.parameters())
    predicted = model(items).detach()
    torch.testing.assert_close(losses[0].detach(), (predicted[0, 0] - 1.0).square())
    assert metrics["num_observed"].tolist() == [1.0, 0.0, 2.0]
    # A NaN rating in a record is a missing rating, not a NaN target.
    record = RatingRecord(id="x", prompt="p", response="r", ratings={"A": float("nan"), "B": 1.0})
    assert record.ratings["A"] is None


def test_validation_errors_are_clear(tiny_bert, tmp_path):
    pairs = pair_data(4, seed=7)
    ratings = rating_data(4, seed=8)
    config = quick_config(tiny_bert, tmp_path)
    with pytest.raises(ValueError, match="no rating records"):
        train_multiobjective([], pairs, config, tmp_path / "out")
    with pytest.raises(ValueError, match="no pair records"):
        train_multiobjective(ratings, [], config, tmp_path / "out")
    with pytest.raises(ValueError, match=r"rating_records\[0\] .* pairwise record"):
        train_multiobjective(pairs, pairs, config, tmp_path / "out")
    one_attribute = [RatingRecord(id="o", prompt="p", response="r", ratings={"A": 1.0})]
    with pytest.raises(ValueError, match="rate 1 attribute"):
        train_multiobjective(one_attribute, pairs, config, tmp_path / "out")
    tie = PairwiseRecord(id="t", prompt="p", response_a="x", response_b="y", outcome="tie")
    with pytest.raises(ValueError, match=r"pair_records\[0\] \(id 't'\) is a tie"):
        train_multiobjective(ratings, [tie], config, tmp_path / "out")
    with pytest.raises(ValueError, match="gate_temperature must be > 0"):
        quick_config(tiny_bert, tmp_path, gate_temperature=0.0)
    with pytest.raises(ValueError, match="gate_hidden_layers"):
        quick_config(tiny_bert, tmp_path, gate_hidden_layers=-1)
    with pytest.raises(ValueError, match="features"):
        quick_config(tiny_bert, tmp_path, features="response,nonsense")
    model = MultiObjectiveRewardModel(tiny_spec(tiny_bert), cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="2 prompts and 1 responses"):
        model.score(["a", "b"], ["x"])
    with pytest.raises(ValueError, match="spec mode must be 'multi-objective'"):
        MultiObjectiveRewardModel(
            dataclasses.replace(tiny_spec(tiny_bert), mode="embedding", attributes=None)
        )
    dataclasses.replace(tiny_spec(tiny_bert), mode="embedding", attributes=None).save(
        (tmp_path / "not-mo").mkdir() or tmp_path / "not-mo"
    )
    with pytest.raises(ValueError, match="mode 'embedding' is not a MultiObjectiveRewardModel"):
        MultiObjectiveRewardModel.load(tmp_path / "not-mo")


def read_metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_truncation_counts_per_stage_and_drop(tiny_bert, tmp_path):
    """max_length 16 and a 42-token text (40 words + [CLS] and [SEP]). Ratings: records 0 and 1
    share a long response under two prompts (2 items, 1 unique text), record 2 has a long prompt.
    Pairs: pair 0 has a long prompt, pair 1 a long response_b.
    Regression features "response,length" do not read prompts, so stage 1 counts 0 prompts and
    1 response and drops records 0 and 1 (18 of 20 kept); the gate always reads prompts, so stage 2
    counts 1 prompt and 1 response and drops pairs 0 and 1 (10 of 12 kept). With "response,prompt"
    features stage 1 also counts record 2's prompt and drops it (17 kept)."""
    long_text = " ".join(["word"] * 40)
    ratings = rating_data(20, seed=11)
    ratings[0] = RatingRecord(
        id="long-0", prompt="first", response=long_text, ratings={"A": 1.0, "B": 0.0}
    )
    ratings[1] = RatingRecord(
        id="long-1", prompt="second", response=long_text, ratings={"A": 0.0, "B": 1.0}
    )
    ratings[2] = RatingRecord(
        id="long-p", prompt=long_text, response="short", ratings={"A": 2.0, "B": 2.0}
    )
    pairs = pair_data(12, seed=12)
    pairs[0] = PairwiseRecord(
        id="long-p", prompt=long_text, response_a="x", response_b="y", outcome="a"
    )
    pairs[1] = PairwiseRecord(
        id="long-b", prompt="p", response_a="x", response_b=long_text, outcome="a"
    )
    lines: list[str] = []
    config = quick_config(tiny_bert, tmp_path, max_length=16, regression_epochs=1, gate_epochs=1)
    kept = train_multiobjective(ratings, pairs, config, tmp_path / "truncate", log=lines.append)
    report = kept
    regression, gate = report.stages["regression"].truncation, report.stages["gate"].truncation
    assert (
        regression.prompts_truncated,
        regression.responses_truncated,
        regression.examples_dropped,
        regression.examples_kept,
    ) == (0, 1, 0, 20)
    assert (
        gate.prompts_truncated,
        gate.responses_truncated,
        gate.examples_dropped,
        gate.examples_kept,
    ) == (1, 1, 0, 12)
    assert (
        report.stages["regression"].eval_truncation is None
        and report.stages["regression"].eval_metrics == {}
    )
    assert lines == [
        "rating records (regression): max length 16: 0 prompts and 1 responses truncated; 20 examples used",
        "pair records (gate): max length 16: 1 prompts and 1 responses truncated; 12 examples used",
    ]

    dropped = train_multiobjective(
        ratings,
        pairs,
        dataclasses.replace(config, truncation="drop"),
        tmp_path / "drop",
        log=lambda _: None,
    )
    saved = json.loads((tmp_path / "drop" / "config.json").read_text())
    assert saved["truncation"] == "drop"
    assert saved["training"]["regression"]["truncation"] == {
        "max_length": 16,
        "policy": "drop",
        "prompts_truncated": 0,
        "responses_truncated": 1,
        "examples_dropped": 2,
        "examples_kept": 18,
    }
    assert saved["training"]["gate"]["truncation"] == {
        "max_length": 16,
        "policy": "drop",
        "prompts_truncated": 1,
        "responses_truncated": 1,
        "examples_dropped": 2,
        "examples_kept": 10,
    }
    # The dropped examples are not trained on: one step per epoch sees the kept ones only.
    assert [
        line["num_examples"] for line in read_metrics(tmp_path / "drop" / "training" / "regression")
    ] == [18]
    assert [
        line["num_examples"] for line in read_metrics(tmp_path / "drop" / "training" / "gate")
    ] == [10]
    assert dropped.stages["gate"].truncation.examples_kept == 10

    with_prompt = dataclasses.replace(config, truncation="drop", features="response,prompt")
    prompt_read = train_multiobjective(
        ratings, pairs, with_prompt, tmp_path / "prompt", log=lambda _: None
    )
    assert (
        prompt_read.stages["regression"].truncation.prompts_truncated,
        prompt_read.stages["regression"].truncation.examples_kept,
    ) == (1, 17)

    every_pair_long = [
        PairwiseRecord(id="l", prompt=long_text, response_a="x", response_b="y", outcome="a")
    ]
    with pytest.raises(
        ValueError,
        match=r"no pair records \(gate\) left after truncation policy 'drop' at max_length 16",
    ):
        train_multiobjective(
            ratings,
            every_pair_long,
            dataclasses.replace(config, truncation="drop"),
            tmp_path / "none",
            log=lambda _: None,
        )
    with pytest.raises(ValueError, match="truncation must be truncate or drop"):
        quick_config(tiny_bert, tmp_path, truncation="cut")


def held_out_regression_loss(
    model: MultiObjectiveRewardModel, records: list[RatingRecord]
) -> float:
    """Stage 1 loss recomputed from scores: the mean over records of the squared error averaged
    over the attributes (every record here rates both)."""
    predicted = model.score_attributes([r.prompt for r in records], [r.response for r in records])
    errors = [
        (predicted[name] - np.array([r.ratings[name] for r in records])) ** 2 for name in ("A", "B")
    ]
    return float(np.mean((errors[0] + errors[1]) / 2))


def held_out_gate_metrics(
    model: MultiObjectiveRewardModel, records: list[PairwiseRecord]
) -> tuple[float, float]:
    """Stage 2 loss -log sigmoid(R_chosen - R_rejected) and accuracy, recomputed from scores."""
    prompts = [r.prompt for r in records]
    chosen = model.score(prompts, [r.chosen for r in records]).astype(np.float64)
    rejected = model.score(prompts, [r.rejected for r in records]).astype(np.float64)
    margins = chosen - rejected
    return float(np.mean(np.logaddexp(0.0, -margins))), float(np.mean(margins > 0))


def test_held_out_fraction_is_evaluated_every_epoch(tiny_bert, tmp_path):
    """eval_fraction 0.25 of 40 ratings and 24 pairs holds out 10 and 6 (the split of
    split_eval_records with the config's seed); batch 100 gives one step per epoch, so each
    stage logs eval lines at steps 1, 2, 3. The last ones must equal the held-out loss (and
    accuracy) recomputed from the saved model's scores."""
    from prefkit.align.trainer import split_eval_records

    ratings, pairs = rating_data(40, seed=13), pair_data(24, seed=14)
    config = quick_config(
        tiny_bert, tmp_path, regression_epochs=3, gate_epochs=3, eval_fraction=0.25
    )
    report = train_multiobjective(ratings, pairs, config, tmp_path / "rm", log=lambda _: None)
    model = report.model
    train_ratings, held_ratings = split_eval_records(ratings, 0.25, 0)
    train_pairs, held_pairs = split_eval_records(pairs, 0.25, 0)
    assert (len(train_ratings), len(held_ratings), len(train_pairs), len(held_pairs)) == (
        30,
        10,
        18,
        6,
    )

    training = json.loads((tmp_path / "rm" / "config.json").read_text())["training"]
    assert (training["rating_records"], training["eval_rating_records"]) == (30, 10)
    assert (training["pair_records"], training["eval_pair_records"]) == (18, 6)
    assert training["regression"]["eval_truncation"]["examples_kept"] == 10

    regression_lines = read_metrics(tmp_path / "rm" / "training" / "regression")
    gate_lines = read_metrics(tmp_path / "rm" / "training" / "gate")
    for lines, trained in ((regression_lines, 30), (gate_lines, 18)):
        assert [line["num_examples"] for line in lines if line["split"] == "train"] == [trained] * 3
        assert [(line["epoch"], line["step"]) for line in lines if line["split"] == "eval"] == [
            (0, 1),
            (1, 2),
            (2, 3),
        ]
    last_regression, last_gate = regression_lines[-1], gate_lines[-1]
    assert set(last_regression) == {"split", "epoch", "step", "loss", "mse/A", "mse/B"}
    assert last_regression["loss"] == pytest.approx(
        held_out_regression_loss(model, held_ratings), rel=1e-5
    )
    gate_loss, gate_accuracy = held_out_gate_metrics(model, held_pairs)
    assert last_gate["loss"] == pytest.approx(gate_loss, rel=1e-5)
    assert last_gate["accuracy"] == pytest.approx(gate_accuracy, abs=1e-9)
    assert report.stages["regression"].eval_metrics["loss"] == pytest.approx(
        last_regression["loss"], rel=1e-6
    )
    assert report.stages["gate"].eval_metrics["accuracy"] == pytest.approx(gate_accuracy, abs=1e-9)
    assert not report.stages["regression"].result.stopped_early


def test_early_stopping_keeps_the_best_weights_of_each_stage(tiny_bert, tmp_path):
    """Held-out data that training makes worse: ratings with negated targets and pairs with the
    outcome flipped. Each stage's held-out loss is lowest after its first epoch, so with patience 2
    it stops after epoch 3 (step 3) and restores step 1. The saved model's held-out losses,
    recomputed from its scores, must equal the logged step-1 losses, not the last ones."""
    ratings, pairs = rating_data(60, seed=15), pair_data(40, seed=16)
    negated = [
        RatingRecord(
            id=r.id,
            prompt=r.prompt,
            response=r.response,
            ratings={name: -value for name, value in r.ratings.items()},
        )
        for r in ratings[:20]
    ]
    flipped = [
        PairwiseRecord(
            id=r.id,
            prompt=r.prompt,
            response_a=r.response_a,
            response_b=r.response_b,
            outcome="b" if r.outcome == "a" else "a",
        )
        for r in pairs[:20]
    ]
    config = quick_config(
        tiny_bert, tmp_path, regression_epochs=10, gate_epochs=10, early_stopping_patience=2
    )
    lines: list[str] = []
    report = train_multiobjective(
        ratings,
        pairs,
        config,
        tmp_path / "rm",
        eval_rating_records=negated,
        eval_pair_records=flipped,
        log=lines.append,
    )
    model = report.model
    for stage in (report.stages["regression"], report.stages["gate"]):
        assert stage.result.stopped_early and stage.result.restored_best
        assert (stage.result.best_step, stage.result.global_step) == (1, 3)
    assert "regression: stopped early at step 3; kept the weights of step 1" in lines[-2]
    assert "gate: stopped early at step 3; kept the weights of step 1" in lines[-1]

    regression_eval = [
        line["loss"]
        for line in read_metrics(tmp_path / "rm" / "training" / "regression")
        if line["split"] == "eval"
    ]
    gate_eval = [
        line["loss"]
        for line in read_metrics(tmp_path / "rm" / "training" / "gate")
        if line["split"] == "eval"
    ]
    assert len(regression_eval) == len(gate_eval) == 3
    assert regression_eval[0] < min(regression_eval[1:]) and gate_eval[0] < min(gate_eval[1:])
    assert held_out_regression_loss(model, negated) == pytest.approx(regression_eval[0], rel=1e-5)
    assert held_out_gate_metrics(model, flipped)[0] == pytest.approx(gate_eval[0], rel=1e-5)
    assert report.stages["gate"].eval_metrics["loss"] == pytest.approx(gate_eval[0], rel=1e-6)
    saved = json.loads((tmp_path / "rm" / "config.json").read_text())["training"]
    assert (saved["gate"]["stopped_early"], saved["gate"]["best_step"], saved["gate"]["steps"]) == (
        True,
        1,
        3,
    )


def test_held_out_settings_are_checked(tiny_bert, tmp_path):
    ratings, pairs = rating_data(20, seed=17), pair_data(8, seed=18)
    config = quick_config(tiny_bert, tmp_path)
    with pytest.raises(ValueError, match="held-out records and eval_fraction are both given"):
        train_multiobjective(
            ratings,
            pairs,
            dataclasses.replace(config, eval_fraction=0.2),
            tmp_path / "a",
            eval_pair_records=pairs[:2],
        )
    with pytest.raises(
        ValueError, match="early_stopping_patience is set but --eval-ratings held-out"
    ):
        train_multiobjective(
            ratings,
            pairs,
            dataclasses.replace(config, early_stopping_patience=2),
            tmp_path / "b",
            eval_pair_records=pairs[:2],
        )
    with pytest.raises(
        ValueError, match="--eval-ratings and --eval-pairs held-out records are missing"
    ):
        train_multiobjective(
            ratings, pairs, dataclasses.replace(config, early_stopping_patience=2), tmp_path / "b"
        )
    with pytest.raises(
        ValueError, match=r"pair records: eval_fraction 0.05 of 8 records holds out no record"
    ):
        train_multiobjective(
            ratings, pairs, dataclasses.replace(config, eval_fraction=0.05), tmp_path / "c"
        )
    tie = PairwiseRecord(id="t", prompt="p", response_a="x", response_b="y", outcome="tie")
    with pytest.raises(ValueError, match=r"eval_pair_records\[0\] \(id 't'\) is a tie"):
        train_multiobjective(ratings, pairs, config, tmp_path / "d", eval_pair_records=[tie])
    other = [RatingRecord(id="o", prompt="p", response="r", ratings={"A": 1.0, "C": 2.0})]
    with pytest.raises(
        ValueError, match="held-out rating records rate C, which no training rating record rates"
    ):
        train_multiobjective(ratings, pairs, config, tmp_path / "e", eval_rating_records=other)
    for bad in (1.0, -0.1, True):
        with pytest.raises(ValueError, match=r"eval_fraction must be a number in \[0, 1\)"):
            quick_config(tiny_bert, tmp_path, eval_fraction=bad)
    with pytest.raises(ValueError, match="early_stopping_patience must be an integer >= 1"):
        quick_config(tiny_bert, tmp_path, early_stopping_patience=0)


def test_cli_trains_with_held_out_records(tiny_bert, tmp_path, capsys):
    from prefkit.cli import main
    from prefkit.data import write_records

    write_records(rating_data(40, seed=19), tmp_path / "ratings.jsonl")
    write_records(pair_data(20, seed=20), tmp_path / "pairs.jsonl")
    write_records(rating_data(10, seed=21), tmp_path / "dev-ratings.jsonl")
    write_records(pair_data(6, seed=22), tmp_path / "dev-pairs.jsonl")
    common = [
        "--backbone",
        tiny_bert,
        "--cache-dir",
        str(tmp_path / "cache"),
        "--device",
        "cpu",
        "--regression-epochs",
        "3",
        "--gate-epochs",
        "2",
        "--features",
        "response,length",
    ]
    code = main(
        [
            "rm",
            "train-multiobjective",
            str(tmp_path / "ratings.jsonl"),
            str(tmp_path / "pairs.jsonl"),
            "--eval-ratings",
            str(tmp_path / "dev-ratings.jsonl"),
            "--eval-pairs",
            str(tmp_path / "dev-pairs.jsonl"),
            "--out",
            str(tmp_path / "rm"),
            "--early-stopping-patience",
            "5",
            "--max-length",
            "16",
            *common,
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert set(summary["regression"]["eval"]) == {"loss", "mse/A", "mse/B"}
    assert set(summary["gate"]["eval"]) == {"loss", "accuracy"}
    assert (summary["regression"]["steps"], summary["gate"]["steps"]) == (3 * 2, 2 * 1)  # batch 32
    assert "rating records (regression): max length 16:" in captured.err
    assert "held-out pair records: max length 16:" in captured.err

    code = main(
        [
            "rm",
            "train-multiobjective",
            str(tmp_path / "ratings.jsonl"),
            str(tmp_path / "pairs.jsonl"),
            "--out",
            str(tmp_path / "rm2"),
            "--eval-fraction",
            "0.2",
            "--eval-pairs",
            str(tmp_path / "dev-pairs.jsonl"),
            *common,
        ]
    )
    assert code != 0 and "eval_fraction are both given" in capsys.readouterr().err

    with pytest.raises(SystemExit):
        main(["rm", "train-multiobjective", "--help"])
    help_text = capsys.readouterr().out
    for flag in (
        "--eval-ratings",
        "--eval-pairs",
        "--eval-fraction",
        "--early-stopping-patience",
        "--truncation",
        "--max-length",
        "Rerunning the same command resumes",
    ):
        assert flag in help_text, flag


def test_rerun_resumes_and_fresh_runs_are_deterministic(tiny_bert, tmp_path):
    """A second call on the same folder resumes both stages from their final checkpoints and
    gives the same model; a fresh run with the same seed gives bitwise the same scores."""
    ratings, pairs = rating_data(120, seed=9), pair_data(80, seed=10)
    config = quick_config(tiny_bert, tmp_path, regression_epochs=3, gate_epochs=3)
    first = train_multiobjective(ratings, pairs, config, tmp_path / "first").model
    again_result = train_multiobjective(ratings, pairs, config, tmp_path / "first")
    assert again_result.stages["gate"].result.resumed_from is not None
    again = again_result.model
    fresh = train_multiobjective(ratings, pairs, config, tmp_path / "fresh").model
    prompts, responses = [p.prompt for p in pairs], [p.response_a for p in pairs]
    expected = first.score(prompts, responses)
    np.testing.assert_array_equal(again.score(prompts, responses), expected)
    np.testing.assert_array_equal(fresh.score(prompts, responses), expected)


class _Interrupt(Exception):
    pass


@pytest.mark.parametrize("stop_at", [5, 9 + 3], ids=["in-stage-1", "in-stage-2"])
def test_interrupted_run_resumes_to_the_uninterrupted_weights(tiny_bert, tmp_path, stop_at):
    """96 training ratings and 64 training pairs (eval_fraction 0.2) in batches of 32: stage 1
    runs 3 steps an epoch for 3 epochs (steps 1-9 of the run), stage 2 2 steps an epoch (steps
    10-15). A callback raises at step 5 (stage 1, epoch 1, after its first checkpoint) or at
    step 12 (stage 2's step 3, epoch 1). Rerunning resumes; the model folder and every train and
    eval line must equal those of the uninterrupted run, bit for bit (dropout in the MLP head
    makes the RNG state matter). Resumed in stage 2, stage 1 is reloaded, not retrained."""
    ratings, pairs = rating_data(120, seed=23), pair_data(80, seed=24)
    config = quick_config(
        tiny_bert,
        tmp_path,
        regression_epochs=3,
        gate_epochs=3,
        batch_size=32,
        eval_fraction=0.2,
        regression_head="mlp",
        hidden_size=16,
        dropout=0.2,
    )
    train_multiobjective(ratings, pairs, config, tmp_path / "full", log=lambda _: None)

    steps_seen = []

    def interrupt(event):
        if event.kind == "step":
            steps_seen.append(event.global_step)
            if len(steps_seen) == stop_at:
                raise _Interrupt

    with pytest.raises(_Interrupt):
        train_multiobjective(
            ratings, pairs, config, tmp_path / "resumed", callbacks=[interrupt], log=lambda _: None
        )
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    resumed = train_multiobjective(ratings, pairs, config, tmp_path / "resumed", log=lambda _: None)
    report = resumed
    assert report.stages["regression"].result.resumed_from is not None
    if stop_at > 9:
        assert steps_seen == [1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2, 3]
        assert (
            report.stages["regression"].result.last_train_loss is None
        )  # stage 1 ran no step again
        assert report.stages["gate"].result.resumed_from is not None
    else:
        assert report.stages["regression"].result.resumed_from.name == "step-3"

    full_state = load_file(tmp_path / "full" / "model.safetensors")
    resumed_state = load_file(tmp_path / "resumed" / "model.safetensors")
    assert set(full_state) == set(resumed_state)
    for name, tensor in full_state.items():
        assert torch.equal(tensor, resumed_state[name]), name
    assert json.loads((tmp_path / "resumed" / "config.json").read_text()) == json.loads(
        (tmp_path / "full" / "config.json").read_text()
    )
    for stage in ("regression", "gate"):

        def lines(folder, stage=stage):
            return [
                {key: value for key, value in line.items() if key != "examples_per_s"}
                for line in read_metrics(folder / "training" / stage)
            ]

        assert lines(tmp_path / "resumed") == lines(tmp_path / "full"), stage


def test_cli_options_generate_from_the_config():
    import argparse

    from prefkit.config import add_dataclass_arguments, dataclass_from_args

    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, MultiObjectiveConfig, title="multi-objective options")
    args = parser.parse_args(
        ["--length-decorrelation", "--gate-temperature", "2.5", "--regression-head", "mlp"]
    )
    config = dataclass_from_args(MultiObjectiveConfig, args)
    assert (
        config.length_decorrelation
        and config.gate_temperature == 2.5
        and config.regression_head == "mlp"
    )
