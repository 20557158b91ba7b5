"""``prefkit curate noise``: flipped labels of a clean synthetic set with a known true reward
are found by out-of-fold reward models; actions; real data (numbers and examples only)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from prefkit.cli import main
from prefkit.curate.noise import NoiseConfig, fold_of, score_label_noise, vote_share_a
from prefkit.data import PairwiseRecord, load_feedback

GOOD = "wonderful excellent friendly helpful delightful superb kind generous brilliant".split()
BAD = "terrible awful rude useless horrible dreadful nasty broken miserable".split()
NOUNS = "service staff food room trip hotel shop course lesson meeting".split()


def review(rng: random.Random, positive: int, negative: int) -> str:
    """A review with ``positive`` good and ``negative`` bad clauses, in random order."""
    clauses = [f"the {rng.choice(NOUNS)} was {rng.choice(GOOD)}" for _ in range(positive)]
    clauses += [f"the {rng.choice(NOUNS)} was {rng.choice(BAD)}" for _ in range(negative)]
    rng.shuffle(clauses)
    return (", and ".join(clauses) + ".").capitalize()


def synthetic_pairs(count: int = 300, flip_share: float = 0.1, seed: int = 0):
    """Pairs of reviews; true reward = good clauses - bad clauses (at least 2 apart); the
    label follows the true reward except for ``flip_share`` of the pairs, flipped. Returns
    the records and the flipped ids."""
    rng = random.Random(seed)
    records, flipped = [], set()
    flips = set(rng.sample(range(count), int(count * flip_share)))
    for index in range(count):
        while True:
            good_a, bad_a, good_b, bad_b = (rng.randint(0, 3) for _ in range(4))
            if abs((good_a - bad_a) - (good_b - bad_b)) >= 2:
                break
        outcome = "a" if good_a - bad_a > good_b - bad_b else "b"
        if index in flips:
            outcome = "b" if outcome == "a" else "a"
            flipped.add(f"p{index}")
        records.append(
            PairwiseRecord(
                id=f"p{index}",
                prompt="How was your stay?",
                response_a=review(rng, max(good_a, 1) if bad_a == 0 else good_a, bad_a),
                response_b=review(rng, max(good_b, 1) if bad_b == 0 else good_b, bad_b),
                outcome=outcome,
            )
        )
    return records, flipped


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("embeddings"))


def test_flipped_labels_are_found(tmp_path: Path, cache_dir: str) -> None:
    records, flipped = synthetic_pairs()
    out = tmp_path / "scored.jsonl"
    report = score_label_noise(records, out, NoiseConfig(cache_dir=cache_dir, progress=False))
    flagged = set(report.flagged_ids)
    true_positives = len(flagged & flipped)
    recall, precision = true_positives / len(flipped), true_positives / max(1, len(flagged))
    print(
        f"\nflagged {len(flagged)}, recall {recall:.2f}, precision {precision:.2f}, "
        f"fold accuracy {report.fold_accuracy}"
    )
    assert recall >= 0.7 and precision >= 0.7, (recall, precision)
    scored, _ = load_feedback(out)
    assert len(scored) == len(records) and report.stats.changed == {"flagged": len(flagged)}
    by_id = {record.id: record for record in scored}
    for record in records:  # flag keeps labels, and P(label) agrees with the flag
        noise = by_id[record.id].metadata["noise"]
        assert by_id[record.id].outcome == record.outcome
        assert noise["flagged"] == (1 - noise["p_label"] > 0.7) == (record.id in flagged)
        assert noise["fold"] in range(5)


def test_actions_drop_flip_soften(tmp_path: Path, cache_dir: str) -> None:
    records, _ = synthetic_pairs(count=60, seed=1)
    records[0] = PairwiseRecord(
        id=records[0].id,
        prompt=records[0].prompt,
        response_a=records[0].response_a,
        response_b=records[0].response_b,
        votes=("a", "a", "tie", "b"),
    )
    results = {}
    for action in ("drop", "flip", "soften"):
        config = NoiseConfig(
            action=action, folds=3, threshold=0.5, cache_dir=cache_dir, progress=False, seed=1
        )
        report = score_label_noise(records, tmp_path / f"{action}.jsonl", config)
        results[action] = (
            {r.id: r for r in load_feedback(tmp_path / f"{action}.jsonl")[0]},
            report,
        )
    dropped, report = results["drop"]
    assert set(report.flagged_ids) and not set(report.flagged_ids) & set(dropped)
    assert report.stats.dropped == {"label_noise": len(report.flagged_ids)}
    flipped, report = results["flip"]
    originals = {record.id: record for record in records}
    for record_id in report.flagged_ids:
        assert flipped[record_id].outcome != originals[record_id].outcome
        assert flipped[record_id].metadata["noise"]["flipped_from"] == originals[record_id].outcome
    softened, report = results["soften"]
    for record_id in report.flagged_ids:
        record, noise = softened[record_id], softened[record_id].metadata["noise"]
        share = vote_share_a(originals[record_id])
        observed = share if share is not None else float(originals[record_id].outcome == "a")
        assert record.soft_label == pytest.approx(0.5 * observed + 0.5 * noise["p_a"], abs=1e-6)
    assert vote_share_a(records[0]) == pytest.approx(0.625)


def test_folds_are_seeded_and_balanced() -> None:
    assignment = fold_of(103, 5, seed=7)
    assert sorted(set(assignment.tolist())) == [0, 1, 2, 3, 4]
    assert (
        max(list(assignment).count(k) for k in range(5))
        - min(list(assignment).count(k) for k in range(5))
        <= 1
    )
    assert (fold_of(103, 5, seed=7) == assignment).all() and (
        fold_of(103, 5, seed=8) != assignment
    ).any()


def test_cli_noise_rejects_rankings_with_skip(tmp_path: Path, cache_dir: str, capsys) -> None:
    records, _ = synthetic_pairs(count=40, seed=2)
    data = tmp_path / "data.jsonl"
    ranking = {
        "kind": "ranking",
        "id": "r",
        "prompt": "p",
        "responses": ["x", "y"],
        "scores": [1, 2],
    }
    data.write_text(
        "".join(json.dumps(r.to_dict()) + "\n" for r in records) + json.dumps(ranking) + "\n"
    )
    out = tmp_path / "scored.jsonl"
    args = [
        "curate",
        "noise",
        str(data),
        "--out",
        str(out),
        "--cache-dir",
        cache_dir,
        "--no-progress",
        "--json",
        "--folds",
        "2",
    ]
    assert main(args) == 2  # on_error raise: a ranking is not a pair
    assert "expected a pairwise record, found a ranking record" in capsys.readouterr().err
    assert main([*args, "--on-error", "skip"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["dropped_by_reason"] == {"rejected_not_a_pair": 1}
    assert summary["scored"] == 40 and summary["kept"] == 40
    assert (
        json.loads((tmp_path / "scored.jsonl.curate-rejects.jsonl").read_text())["reason"]
        == "not_a_pair"
    )


def test_real_data_numbers(shared_data: Path, tmp_path: Path, cache_dir: str) -> None:
    """UKPConvArg1Strict (two topics) and PandaLM (with its votes): how many are flagged."""
    ukp = shared_data / "ukpconvarg1" / "UKPConvArg1Strict-CSV"
    panda = shared_data / "pandalm-testset" / "testset-v1.json"
    if not ukp.is_dir() or not panda.is_file():
        pytest.skip("UKPConvArg1Strict or PandaLM is absent")
    ukp_records, _ = load_feedback(ukp)
    topics = sorted({record.category for record in ukp_records})[:2]
    sets = {"UKPConvArg1Strict (2 topics)": [r for r in ukp_records if r.category in topics]}
    panda_records, _ = load_feedback(
        panda,
        mapping={
            "prompt": "instruction+input",
            "response_a": "response1",
            "response_b": "response2",
            "votes": "annotator1+annotator2+annotator3",
        },
        winner_values="a=1,b=2,tie=0",
        on_error="skip",
    )
    sets["PandaLM (first 150)"] = panda_records[:150]
    for name, records in sets.items():
        report = score_label_noise(
            records,
            tmp_path / "out.jsonl",
            NoiseConfig(cache_dir=cache_dir, progress=False),
        )
        print(
            f"\n{name}: {report.scored} pairs judged, {report.ties} ties, "
            f"{len(report.flagged_ids)} flagged; fold accuracy {report.fold_accuracy}"
        )
        for example in report.examples[:3]:
            print(f"  {example}")
        assert report.scored + report.ties == len(records)
        assert 0 < len(report.flagged_ids) < report.scored
