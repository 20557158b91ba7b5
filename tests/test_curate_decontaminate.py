"""``prefkit curate decontaminate``: planted verbatim and partial copies of evaluation items
inside longer training texts are found; unrelated texts sharing common phrases are not."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from prefkit.cli import main
from prefkit.curate.decontaminate import DecontaminateConfig, decontaminate_records
from prefkit.data import PairwiseRecord, load_feedback

TOPICS = (
    "photosynthesis in desert plants",
    "the causes of the French revolution",
    "how compilers optimise loops",
    "tidal forces on distant moons",
    "the economics of renewable energy subsidies",
    "protein folding and chaperones",
    "medieval trade routes across the Baltic",
    "error correction in quantum computers",
    "the migration of arctic terns",
    "inflation targeting by central banks",
)
BOILERPLATE = (
    "Sure, here is a detailed answer to your question. ",
    "As an AI language model I do not have personal opinions, but ",
    "Thank you for asking, this is a great question and ",
)


def eval_items() -> list[PairwiseRecord]:
    items = []
    for index, topic in enumerate(TOPICS):
        prompt = (
            f"Question {index}: explain {topic}, giving two concrete examples and one "
            f"common misconception that students often have about {topic.split()[-1]}."
        )
        items.append(
            PairwiseRecord(
                id=f"eval-{index}", prompt=prompt, response_a="A", response_b="B", outcome="a"
            )
        )
    return items


def filler(rng: random.Random, words: int) -> str:
    vocabulary = "we then see that this also means the result holds for each case here".split()
    return " ".join(rng.choice(vocabulary) for _ in range(words))


def training_set(evals: list[PairwiseRecord]) -> tuple[list[PairwiseRecord], set[str]]:
    rng = random.Random(0)
    records, planted = [], set()

    def add(record_id: str, prompt: str, response: str, copied: bool) -> None:
        records.append(
            PairwiseRecord(
                id=record_id, prompt=prompt, response_a=response, response_b="short", outcome="a"
            )
        )
        if copied:
            planted.add(record_id)

    for index, item in enumerate(evals):
        text = item.prompt
        tokens = text.split()
        # A verbatim copy in the middle of a long prompt.
        add(f"verbatim-{index}", f"{filler(rng, 60)} {text} {filler(rng, 60)}", "ok", True)
        # A partial copy (the first 70% of the words) inside a long response, re-cased.
        partial = " ".join(tokens[: int(len(tokens) * 0.7)]).upper()
        add(
            f"partial-{index}",
            "Answer this.",
            f"{filler(rng, 80)} {partial} {filler(rng, 40)}",
            True,
        )
        # The same topic and template words, rephrased: shares short phrases only.
        add(
            f"related-{index}",
            f"{rng.choice(BOILERPLATE)}Could you explain {TOPICS[index]}? Please give "
            f"examples and a misconception.",
            filler(rng, 50),
            False,
        )
    for index in range(30):  # unrelated texts full of common phrases
        add(
            f"common-{index}",
            rng.choice(BOILERPLATE) + filler(rng, 40),
            rng.choice(BOILERPLATE) + "yes",
            False,
        )
    rng.shuffle(records)
    return records, planted


def test_planted_copies_are_found_and_common_phrases_are_not(tmp_path: Path) -> None:
    evals = eval_items()
    train, planted = training_set(evals)
    flagged_path = tmp_path / "flagged.jsonl"
    report = decontaminate_records(
        train,
        {"bench": evals},
        tmp_path / "clean.jsonl",
        DecontaminateConfig(progress=False),
        flagged_path=flagged_path,
    )
    rows = [json.loads(line) for line in flagged_path.read_text().splitlines()]
    assert {row["id"] for row in rows} == planted
    for row in rows:  # each copy points at the evaluation item it copies
        assert row["eval_id"] == "eval-" + row["id"].split("-")[1]
        assert row["eval_set"] == "bench" and row["overlap"] >= 0.5
        assert row["field"] == ("prompt" if row["id"].startswith("verbatim") else "response_a")
    verbatim = [row for row in rows if row["id"].startswith("verbatim")]
    assert all(row["overlap"] == 1.0 for row in verbatim)
    clean, _ = load_feedback(tmp_path / "clean.jsonl")
    assert {record.id for record in clean} == {record.id for record in train} - planted
    assert report.stats.dropped == {"contaminated": len(planted)}
    (table,) = report.tables
    assert (table.items, table.too_short, table.items_hit) == (30, 20, 10)  # "A"/"B" are too short
    assert table.train_records_removed == len(planted)


def test_longer_ngrams_are_stricter(tmp_path: Path) -> None:
    """A copy of 10 words of a 25-word item: 3 of its 18 8-grams, flagged only with a low
    share; with 13-grams there is no shared n-gram at all."""
    evals = eval_items()[:1]
    tokens = evals[0].prompt.split()
    copy = PairwiseRecord(
        id="copy",
        prompt="x " * 30 + " ".join(tokens[:10]),
        response_a="a",
        response_b="b",
        outcome="a",
    )

    def flagged(ngram: int, share: float) -> int:
        config = DecontaminateConfig(
            ngram=ngram, min_overlap=share, fields="prompt", progress=False
        )
        report = decontaminate_records([copy], {"e": evals}, tmp_path / "c.jsonl", config)
        return report.stats.n_dropped

    assert flagged(8, 0.5) == 0
    assert flagged(8, 0.1) == 1
    assert flagged(13, 0.01) == 0


def test_cli_decontaminate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    evals = eval_items()
    train, planted = training_set(evals)
    train_path, eval_path = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    for path, records in ((train_path, train), (eval_path, evals)):
        path.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in records))
    out = tmp_path / "clean.jsonl"
    code = main(
        [
            "curate",
            "decontaminate",
            str(train_path),
            "--against",
            str(eval_path),
            "--out",
            str(out),
            "--no-progress",
            "--json",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["dropped"] == len(planted) and summary["kept"] == len(train) - len(planted)
    table = json.loads((tmp_path / "clean.jsonl.contamination.json").read_text())
    assert table["eval_sets"][0]["name"] == str(eval_path)
    assert len((tmp_path / "clean.jsonl.flagged.jsonl").read_text().splitlines()) == len(planted)


def test_a_run_stopped_before_its_first_record_leaves_no_flagged_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad first record (the default --on-error raise) or --chunk-size 0: an error that
    names the problem, and no flagged file from a run that checked nothing."""
    evals = eval_items()
    eval_path, train_path = tmp_path / "eval.jsonl", tmp_path / "train.jsonl"
    eval_path.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in evals))
    train_path.write_text('{"id": "broken", "prompt": \n')
    out = tmp_path / "clean.jsonl"
    command = ["curate", "decontaminate", str(train_path), "--against", str(eval_path)]
    assert main([*command, "--out", str(out), "--no-progress"]) == 2
    assert f"{train_path}:1" in capsys.readouterr().err
    assert main([*command, "--out", str(out), "--chunk-size", "0"]) == 2
    assert "--chunk-size must be >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "clean.jsonl.flagged.jsonl").exists()
