"""Proof that reward-labelled generation works, on the synthetic language.

The rule of :mod:`prefkit.align.synthetic`: a completion is better the larger its
share of good words (``a`` .. ``d``). An embedding reward model (a tiny
random-weight BERT, frozen, with a trained head) learns the rule from pairs of
random completions, 20% of them mislabelled, so that it is right often but not
always (where it is always right, any pair is as good as the extremes). A tiny random-weight policy then samples N = 8
responses per prompt, and everything after that goes through the command line:
``generate`` -> ``rm score`` -> ``data pairs`` -> ``rm train`` and ``align``.
The reward model's tokenizer (MiniLM's WordPiece) is not the policy's (a word-level
one): responses reach it as decoded text and are re-tokenized.

1. West-of-N: the rule agrees with the best-worst pair labels in at least 85% of
   the pairs the rule does not tie, and at least 0.1 more often than with pairs
   of two random samples labelled by the same reward model. A reversed score
   gives about 1 - accuracy (< 0.5) and a random reward about 0.5: both fail.
   (Checked by making best-worst take the lowest-scored response as the chosen.)
2. Best-of-8 responses have a higher share of good words than the mean sample.
"""

from __future__ import annotations

import json
import random
import statistics

import pytest

from prefkit.align.synthetic import WORDS, good_fraction
from prefkit.cli import main
from prefkit.data.records import PairwiseRecord
from prefkit.rm.model import RewardModel
from prefkit.rm.train import RMTrainConfig, default_train_config, train_reward_model
from test_generate import save_policy, write_prompts
from test_rm_train import make_tiny_bert

NUM_SAMPLES = 8
LABEL_NOISE = 0.2
"""Share of the reward model's training labels flipped: an imperfect judge, as real ones are."""


def _completion(rng: random.Random) -> str:
    """Like the policy's samples: 1..6 words of the language, ':' included."""
    return " " + " ".join(rng.choice([*WORDS, ":"]) for _ in range(rng.randint(1, 6)))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(folder, policy path, reward-model path) with the reward model trained on the rule."""
    folder = tmp_path_factory.mktemp("proof")
    policy = save_policy(folder / "policy", seed=1)
    rng = random.Random(0)
    pairs = []
    while len(pairs) < 300:
        first, second = _completion(rng), _completion(rng)
        if good_fraction(first) == good_fraction(second):
            continue
        better_first = good_fraction(first) > good_fraction(second)
        if rng.random() < LABEL_NOISE:
            better_first = not better_first
        outcome = "a" if better_first else "b"
        pairs.append(PairwiseRecord(str(len(pairs)), "a b :", first, second, outcome))
    config = RMTrainConfig(
        backbone=make_tiny_bert(folder / "bert"),
        features="response",
        cache_dir=str(folder / "cache"),
        train=default_train_config("embedding", epochs=8, device="cpu"),
    )
    train_reward_model(pairs, config, folder / "rm", log=lambda line: None)
    return folder, policy, str(folder / "rm")


def test_west_of_n_pairs_agree_with_the_rule_and_the_files_flow_through(world, capsys):
    folder, policy, reward_model = world
    prompts = write_prompts(folder / "prompts.jsonl", 56)
    candidates, rewards, pairs = (folder / name for name in ("c.jsonl", "r.jsonl", "p.jsonl"))
    common = ("--no-progress",)
    assert (
        main(
            ["generate", str(prompts), "--model", policy, "--out", str(candidates), *common]
            + ["--num-samples", str(NUM_SAMPLES), "--max-new-tokens", "6", "--seed", "3"]
        )
        == 0
    )
    assert (
        main(
            ["rm", "score", reward_model, str(candidates), "--out", str(rewards), *common]
            + ["--cache-dir", str(folder / "cache")]
        )
        == 0
    )
    assert (
        main(
            ["data", "pairs", str(candidates), "--scores", str(rewards), "--out", str(pairs)]
            + ["--drop-ties"]
        )
        == 0
    )
    capsys.readouterr()

    sets = {
        json.loads(line)["id"]: json.loads(line) for line in candidates.read_text().splitlines()
    }
    scores = {
        row["id"]: row["rewards"] for row in map(json.loads, rewards.read_text().splitlines())
    }
    written = [json.loads(line) for line in pairs.read_text().splitlines()]
    assert len(written) >= 50
    # Some generations are empty: they reach rm score, data pairs, rm train and align
    # without any option (empty responses are kept by default).
    assert any(
        not text.strip() for pair in written for text in (pair["response_a"], pair["response_b"])
    )

    def agreement(pairs_of_texts: list[tuple[str, str]]) -> float:
        decided = [(a, b) for a, b in pairs_of_texts if good_fraction(a) != good_fraction(b)]
        return sum(good_fraction(a) > good_fraction(b) for a, b in decided) / len(decided)

    west_of_n = agreement([(pair["response_a"], pair["response_b"]) for pair in written])
    rng = random.Random(1)
    random_pairs = []
    for set_id, record in sets.items():
        for _ in range(4):
            first, second = rng.sample(range(NUM_SAMPLES), 2)
            if scores[set_id][first] < scores[set_id][second]:
                first, second = second, first
            random_pairs.append((record["responses"][first], record["responses"][second]))
    random_agreement = agreement(random_pairs)
    assert west_of_n >= 0.85, (west_of_n, random_agreement)
    assert west_of_n >= random_agreement + 0.1, (west_of_n, random_agreement)
    for pair in written:
        assert pair["metadata"]["generation"]["model"] == policy
        assert pair["margin"] == pytest.approx(
            pair["metadata"]["scores"][0] - pair["metadata"]["scores"][1]
        )

    # The pairs train a reward model (with their margins) and align the policy, unedited
    # (a policy may answer with nothing: empty responses are kept by default all along).
    assert (
        main(
            ["rm", "train", str(pairs), "--out", str(folder / "rm2"), "--backbone"]
            + [str(folder / "bert"), "--epochs", "1", "--cache-dir", str(folder / "cache")]
            + ["--device", "cpu", "--no-progress"]
        )
        == 0
    )
    assert RewardModel.load(folder / "rm2", cache_dir=folder / "cache").spec.mode == "embedding"
    assert (
        main(
            ["align", str(pairs), "--model", policy, "--out", str(folder / "aligned")]
            + ["--batch-size", "8", "--max-length", "32", "--max-prompt-length", "16"]
            + ["--ref-cache-dir", str(folder / "refcache"), "--quiet", "--device", "cpu"]
        )
        == 0
    )
    assert (folder / "aligned" / "model").is_dir()


def test_best_of_8_beats_the_mean_sample(world, capsys):
    folder, policy, reward_model = world
    prompts = write_prompts(folder / "prompts-bo.jsonl", 40)
    settings = ["--max-new-tokens", "6", "--seed", "5", "--no-progress"]
    candidates, best = folder / "all8.jsonl", folder / "best8.jsonl"
    assert (
        main(
            ["generate", str(prompts), "--model", policy, "--out", str(candidates)]
            + ["--num-samples", str(NUM_SAMPLES), *settings]
        )
        == 0
    )
    assert (
        main(
            ["generate", str(prompts), "--model", policy, "--out", str(best), "--best-of", "8"]
            + ["--reward", reward_model, "--cache-dir", str(folder / "cache"), *settings]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["best_of"]["kl_to_sampler"] == pytest.approx(0.0 + 2.0794415 - 7 / 8)
    samples = [json.loads(line) for line in candidates.read_text().splitlines()]
    winners = [json.loads(line) for line in best.read_text().splitlines()]
    assert [w["id"] for w in winners] == [s["id"] for s in samples]
    for sample, winner in zip(samples, winners, strict=True):
        # Seeds belong to (prompt, sample index): best-of-8 picks among the same 8 samples.
        assert winner["kind"] == "rating" and len(winner["metadata"]["best_of"]["scores"]) == 8
        assert winner["response"] == sample["responses"][winner["metadata"]["best_of"]["index"]]
        assert winner["ratings"]["reward"] == max(winner["metadata"]["best_of"]["scores"])
    mean_sample = statistics.fmean(
        good_fraction(response) for sample in samples for response in sample["responses"]
    )
    mean_best = statistics.fmean(good_fraction(winner["response"]) for winner in winners)
    assert mean_best >= mean_sample + 0.15, (mean_best, mean_sample)
