"""``prefkit curate dedup``: planted near-duplicates and hard negatives, determinism, keep
policies, duplicates inside rankings, semantic duplicates, the CLI and real data."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from prefkit.cli import main
from prefkit.curate.dedup import (
    DedupConfig,
    _MinHashIndex,
    dedup_records,
    equal_key_pairs,
    lsh_bands,
    shingles,
)
from prefkit.curate.text import normalize
from prefkit.data import PairwiseRecord, RankingRecord, load_feedback
from prefkit.data.errors import DataError

WORDS = (
    "river stone garden lamp winter market engine violin harbor forest letter bridge candle "
    "mirror orchard thunder pepper silver ladder meadow compass lantern velvet canyon pillow "
    "whistle saddle marble comet tunnel basket feather glacier anchor cabin rocket jungle "
    "blanket kettle puzzle shadow island meteor pencil quartz walnut falcon crystal button "
    "dragon needle oyster parrot ribbon spider teapot violet wagon yacht zebra acorn bamboo "
    "cactus dolphin ember fossil goblet hammock igloo jasmine kayak lemon mango nectar olive "
    "pebble quill raven sponge tulip umbrella vessel willow yarn zephyr"
).split()
VERBS = "carries finds builds paints follows hides opens watches guards lifts".split()


def sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(9, 13))]
    words.insert(2, rng.choice(VERBS))
    return "The " + " ".join(words) + "."


def document(rng: random.Random) -> list[str]:
    return [sentence(rng) for _ in range(rng.randint(4, 6))]


def edit(sentences: list[str], rng: random.Random) -> list[str]:
    """Replace, insert or delete two words."""
    words = " ".join(sentences).split()
    for _ in range(2):
        where = rng.randrange(1, len(words) - 1)
        action = rng.choice(("replace", "insert", "delete"))
        if action == "replace":
            words[where] = rng.choice(WORDS)
        elif action == "insert":
            words.insert(where, rng.choice(WORDS))
        else:
            del words[where]
    return [" ".join(words)]


def punctuate(sentences: list[str], rng: random.Random) -> list[str]:
    out = []
    for text in sentences:
        words = text.split()
        words[rng.randrange(len(words))] += ","
        out.append(" ".join(words).replace(".", rng.choice(("!", "...", ";"))))
    return out


def recase(sentences: list[str], rng: random.Random) -> list[str]:
    return [text.upper() if rng.random() < 0.5 else text.lower() for text in sentences]


def reorder(sentences: list[str], rng: random.Random) -> list[str]:
    shuffled = list(sentences)
    while shuffled == sentences:
        rng.shuffle(shuffled)
    return shuffled


def respace(sentences: list[str], rng: random.Random) -> list[str]:
    return ["\n\n  ".join(sentences).replace(" ", "  ")]


VARIANTS = (edit, punctuate, recase, reorder, respace)


def planted_set(seed: int = 0, groups: int = 60, negatives: int = 60):
    """Records whose prompts are originals, their planted variants (one of each kind per
    group, in random order) and hard negatives: documents that keep half the sentences of an
    original (same topic, same template) or reuse its words in another order. Returns the
    records (shuffled) and record id -> group (None for singletons)."""
    rng = random.Random(seed)
    items: list[tuple[str, str | None]] = []
    for group in range(groups):
        original = document(rng)
        items.append((" ".join(original), f"g{group}"))
        for variant in VARIANTS:
            items.append((" ".join(variant(original, rng)), f"g{group}"))
    for index in range(negatives):
        base = document(rng)
        items.append((" ".join(base), None))
        half = len(base) // 2
        items.append((" ".join(base[:half] + document(rng)[: len(base) - half]), None))
        scrambled = " ".join(base).split()
        rng.shuffle(scrambled)
        items.append((" ".join(scrambled), None))
        del index
    rng.shuffle(items)
    records, truth = [], {}
    for index, (text, group) in enumerate(items):
        record_id = f"r{index}"
        records.append(
            PairwiseRecord(
                id=record_id, prompt=text, response_a="yes", response_b="no", outcome="a"
            )
        )
        truth[record_id] = group
    return records, truth


def recall_precision(records, truth, dropped_ids: list[str]) -> tuple[float, float]:
    """Dropped records should be exactly the non-first members of each planted group."""
    seen: set[str] = set()
    should_drop = set()
    for record in records:
        group = truth[record.id]
        if group is None:
            continue
        if group in seen:
            should_drop.add(record.id)
        seen.add(group)
    dropped = set(dropped_ids)
    true_positives = len(dropped & should_drop)
    return true_positives / len(should_drop), true_positives / max(1, len(dropped))


def test_planted_near_duplicates_are_found_at_the_default_threshold(tmp_path: Path) -> None:
    records, truth = planted_set()
    report = dedup_records(
        records, tmp_path / "out.jsonl", DedupConfig(field="prompt", progress=False)
    )
    recall, precision = recall_precision(records, truth, report.dropped_ids)
    assert recall >= 0.95, recall
    assert precision >= 0.95, precision
    stats = report.stats
    assert stats.n_read == len(records)
    assert stats.n_kept + stats.n_dropped == stats.n_read
    assert stats.dropped["near_duplicate"] > 0 and stats.dropped["exact_duplicate"] > 0
    kept = [json.loads(line)["id"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(kept) == stats.n_kept and not set(kept) & set(report.dropped_ids)


def test_exact_method_misses_edits_that_minhash_finds(tmp_path: Path) -> None:
    """Only whitespace and case variants are equal after normalisation."""
    records, truth = planted_set()
    report = dedup_records(
        records, tmp_path / "out.jsonl", DedupConfig(field="prompt", method="exact", progress=False)
    )
    recall, precision = recall_precision(records, truth, report.dropped_ids)
    assert precision == 1.0
    assert 0.3 < recall < 0.5  # recase and respace of the five variants
    assert set(report.stats.dropped) == {"exact_duplicate"}


def test_same_run_twice_gives_the_same_bytes(tmp_path: Path) -> None:
    records, _ = planted_set(seed=3, groups=20, negatives=20)
    outputs = []
    for run in range(2):
        out = tmp_path / f"run{run}.jsonl"
        dedup_records(
            records,
            out,
            DedupConfig(field="prompt", progress=False),
            clusters_path=tmp_path / f"run{run}.clusters.jsonl",
        )
        outputs.append((out.read_bytes(), (tmp_path / f"run{run}.clusters.jsonl").read_bytes()))
    assert outputs[0] == outputs[1]


def pair(record_id: str, prompt: str, metadata=None) -> PairwiseRecord:
    return PairwiseRecord(
        id=record_id,
        prompt=prompt,
        response_a="first answer",
        response_b="second answer",
        outcome="a",
        metadata=metadata or {},
    )


def test_keep_policies_and_the_cluster_report(tmp_path: Path) -> None:
    base = "Explain how a river carves a canyon over millions of years of slow erosion"
    records = [
        pair("short", base, {"score": 0.1}),
        pair("longer", base + " and wind", {"score": 0.9}),
        pair("caps", "  " + base.upper().replace(" ", "\t"), {"score": 0.5}),
        pair("other", "Write a poem about winter markets and silver lanterns", {"score": 0.0}),
    ]
    kept = {}
    for keep in ("first", "longest", "highest-score"):
        out = tmp_path / f"{keep}.jsonl"
        clusters = tmp_path / f"{keep}.clusters.jsonl"
        report = dedup_records(
            records,
            out,
            DedupConfig(field="prompt", keep=keep, progress=False),
            clusters_path=clusters,
        )
        kept[keep] = [json.loads(line)["id"] for line in out.read_text().splitlines()]
        rows = [json.loads(line) for line in clusters.read_text().splitlines()]
        assert report.num_clusters == 1 and len(rows) == 1
        assert {member["id"] for member in rows[0]["members"]} == {"short", "longer", "caps"}
        by_id = {member["id"]: member for member in rows[0]["members"]}
        assert by_id[rows[0]["kept"]]["kept"] and by_id[rows[0]["kept"]]["reason"] is None
    assert kept["first"] == ["short", "other"]
    assert kept["longest"] == ["longer", "other"]
    assert kept["highest-score"] == ["longer", "other"]
    rows = [
        json.loads(line) for line in (tmp_path / "first.clusters.jsonl").read_text().splitlines()
    ]
    by_id = {member["id"]: member for member in rows[0]["members"]}
    assert by_id["caps"]["reason"] == "exact_duplicate" and by_id["caps"]["similarity"] == 1.0
    assert (
        by_id["longer"]["reason"] == "near_duplicate" and 0.6 <= by_id["longer"]["similarity"] < 1
    )


def test_missing_score_follows_on_error(tmp_path: Path) -> None:
    records = [pair("scored", "a question about rivers", {"score": 1.0}), pair("bare", "other")]
    config = DedupConfig(field="prompt", keep="highest-score", progress=False)
    with pytest.raises(DataError, match="'bare'.*metadata.score"):
        dedup_records(records, tmp_path / "out.jsonl", config)
    rejects = tmp_path / "out.jsonl.rejects.jsonl"
    report = dedup_records(
        records, tmp_path / "out.jsonl", config, on_error="skip", rejects_path=rejects
    )
    assert report.stats.dropped == {"rejected_missing_score": 1}
    assert json.loads(rejects.read_text())["reason"] == "missing_score"


def test_fields_compare_what_they_name(tmp_path: Path) -> None:
    records = [
        PairwiseRecord(
            id="1", prompt="Same prompt here", response_a="alpha", response_b="beta", outcome="a"
        ),
        PairwiseRecord(
            id="2", prompt="Same prompt here", response_a="gamma", response_b="delta", outcome="a"
        ),
        PairwiseRecord(
            id="3", prompt="Another prompt", response_a="beta", response_b="alpha", outcome="b"
        ),
    ]

    def kept(field: str) -> list[str]:
        out = tmp_path / f"{field}.jsonl"
        dedup_records(records, out, DedupConfig(field=field, progress=False))
        return [json.loads(line)["id"] for line in out.read_text().splitlines()]

    assert kept("prompt") == ["1", "3"]
    assert kept("response") == ["1", "2"]  # the same two responses, swapped
    assert kept("pair") == ["1", "2", "3"]


def test_duplicate_responses_inside_a_ranking_are_removed(tmp_path: Path) -> None:
    long = "The harbor lamp guards the silver ladder near the marble tunnel every winter night"
    records = [
        RankingRecord(
            id="cands",
            prompt="p",
            responses=(
                long,
                "A different answer about comets and kettles",
                long.upper() + "!",
                "third one",
            ),
            scores=(0.2, 0.5, 0.9, 0.1),
            metadata={"score": 1.0},
        ),
        RankingRecord(
            id="twins",
            prompt="q",
            responses=("same text", "Same  text"),
            scores=(1.0, 2.0),
            metadata={"score": 2.0},
        ),
    ]
    out = tmp_path / "out.jsonl"
    report = dedup_records(
        records,
        out,
        DedupConfig(field="prompt", keep="highest-score", progress=False),
        clusters_path=tmp_path / "c.jsonl",
    )
    (written,), _ = load_feedback(out)
    assert written.responses[0].startswith("A different") and written.scores == (0.5, 0.9, 0.1)
    assert written.metadata["dedup_removed_responses"] == [0]
    assert report.stats.dropped == {"within_record_duplicates": 1}
    assert report.stats.changed == {"responses_removed": 1}
    rows = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert {"record": "cands", "duplicate_responses": [[0, 2]]} in rows


def test_lsh_bands_keep_recall_at_the_threshold() -> None:
    for threshold in (0.5, 0.6, 0.7, 0.8, 0.9):
        bands, rows = lsh_bands(threshold, 128)
        assert bands * rows == 128
        assert 1 - (1 - threshold**rows) ** bands >= 0.9


def test_equal_key_pairs_are_every_pair_with_the_same_key() -> None:
    """Against the plain double loop, on keys with runs of one to many equal values."""
    import numpy as np

    rng = np.random.default_rng(0)
    for size, distinct in ((0, 1), (1, 1), (2, 1), (50, 3), (400, 40), (400, 400)):
        keys = rng.integers(0, distinct, size=size).astype(np.uint64)
        expected = [
            a * size + b for a in range(size) for b in range(a + 1, size) if keys[a] == keys[b]
        ]
        assert equal_key_pairs(keys).tolist() == expected


def test_banding_verifies_the_candidates_of_rensa_lsh(tmp_path: Path) -> None:
    """The pairs found by banding are those that rensa's RMinHashLSH (the same bands) offers
    as candidates and that pass the same verification."""
    import numpy as np
    from rensa import RMinHash, RMinHashLSH

    records, _ = planted_set()
    config = DedupConfig(field="prompt", progress=False)
    sets = [shingles(record.prompt, config.ngram) for record in records]
    index = _MinHashIndex(config, tmp_path)
    index.add_chunk(sets[:100])
    index.add_chunk(sets[100:])
    found = set(zip(*(rows.tolist() for rows in index.duplicate_pairs()), strict=True))

    hashes = RMinHash.from_token_sets(sets, num_perm=config.num_perm, seed=config.seed)
    lsh = RMinHashLSH(
        threshold=config.threshold, num_perm=config.num_perm, num_bands=index.bands[0]
    )
    for row, minhash in enumerate(hashes):
        lsh.insert(row, minhash)
    digests = np.array([minhash.digest() for minhash in hashes])
    expected = {
        (min(row, other), max(row, other))
        for row, minhash in enumerate(hashes)
        for other in lsh.query(minhash)
        if other != row and (digests[row] == digests[other]).mean() >= config.threshold
    }
    assert len(expected) > 100
    assert found == expected


def test_semantic_duplicates_through_the_encoder(tmp_path: Path) -> None:
    texts = {
        "cat": "The cat sat on the mat.",
        "cat2": "A cat was sitting on the mat.",
        "stock": "Stock markets fell sharply after the interest rate decision.",
        "stock2": "Stock markets dropped sharply after the decision on interest rates.",
        "recipe": "Whisk two eggs with flour and milk to make pancake batter.",
        "code": "A Python list comprehension builds a list from an iterable.",
    }
    records = [pair(key, text) for key, text in texts.items()]
    out = tmp_path / "out.jsonl"
    report = dedup_records(
        records,
        out,
        DedupConfig(
            field="prompt",
            method="semantic",
            semantic_threshold=0.8,
            clusters=2,
            cache_dir=str(tmp_path / "cache"),
            progress=False,
        ),
    )
    kept = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert kept == ["cat", "stock", "recipe", "code"]
    assert report.stats.dropped == {"semantic_duplicate": 2}


def test_cli_dedup(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records, _ = planted_set(seed=5, groups=5, negatives=5)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in records) + "not json\n")
    out = tmp_path / "clean.jsonl"
    code = main(
        [
            "curate",
            "dedup",
            str(data),
            "--out",
            str(out),
            "--field",
            "prompt",
            "--no-progress",
            "--on-error",
            "skip",
            "--json",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["read"] == len(records) and summary["rejected_rows"] == 1
    assert summary["kept"] == len(out.read_text().splitlines())
    assert (tmp_path / "clean.jsonl.clusters.jsonl").is_file()
    assert (tmp_path / "clean.jsonl.rejects.jsonl").is_file()


def test_ukp_arguments_are_shared_across_pairs(shared_data: Path, tmp_path: Path) -> None:
    """UKPConvArg1Strict: every argument appears in many pairs; report the distinct
    arguments and the pairs that repeat both arguments (exact, then MinHash)."""
    folder = shared_data / "ukpconvarg1" / "UKPConvArg1Strict-CSV"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    records, _ = load_feedback(folder)
    arguments = {normalize(text) for r in records for text in (r.response_a, r.response_b)}
    same_pair = {}
    for record in records:
        key = (
            normalize(record.prompt),
            frozenset({normalize(record.response_a), normalize(record.response_b)}),
        )
        same_pair.setdefault(key, []).append(record.id)
    repeated = sum(len(ids) - 1 for ids in same_pair.values())
    exact = dedup_records(
        records, tmp_path / "exact.jsonl", DedupConfig(field="pair", method="exact", progress=False)
    )
    near = dedup_records(
        records,
        tmp_path / "near.jsonl",
        DedupConfig(field="pair", progress=False),
        clusters_path=tmp_path / "near.clusters.jsonl",
    )
    print(
        f"\nUKPConvArg1Strict: {len(records)} pairs, {len(arguments)} distinct arguments; "
        f"pairs repeating both arguments: exact {exact.stats.n_dropped} (direct count {repeated}), "
        f"MinHash {near.stats.n_dropped} in {near.num_clusters} clusters"
    )
    assert len(arguments) < len(records) / 5  # arguments are reused across many pairs
    assert exact.stats.n_dropped == repeated
    assert near.stats.n_dropped >= exact.stats.n_dropped
