"""``prefkit eval`` end to end: records written to disk, the length baseline, a fake judge, --json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from prefkit.cli import main
from prefkit.data import PairwiseRecord, RankingRecord, write_records
from test_eval_judge import FakeServer, prefers_longer


@pytest.fixture
def pairs_file(tmp_path: Path) -> Path:
    records = [
        PairwiseRecord("1", "Say hi", "hello there", "hi", "a", category="greeting"),
        PairwiseRecord("2", "Say hi", "yo", "good morning", "b", category="greeting"),
        PairwiseRecord("3", "Add 2 and 2", "4", "The answer is four.", "a", category="math"),
        PairwiseRecord(
            "4", "Add 1 and 1", "2", "two", "tie", votes=("tie", "a", "tie"), category="math"
        ),
    ]
    path = tmp_path / "pairs.jsonl"
    write_records(records, path)
    return path


def test_length_baseline_with_json(pairs_file: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out" / "metrics.json"
    assert main(["eval", "length", str(pairs_file), "--json", str(out), "--bootstrap", "50"]) == 0
    table = capsys.readouterr().out
    assert "accuracy [95% CI]" in table and "length" in table
    document = json.loads(
        out.read_text(), parse_constant=lambda name: pytest.fail(f"{name} in JSON")
    )
    # Length is right on 1 and 2, wrong on 3; pair 4 is a human tie.
    assert (document["n"], document["n_human_ties"], document["accuracy"]) == (
        3,
        1,
        pytest.approx(2 / 3),
    )
    for key in (
        "accuracy_ci95",
        "accuracy_half_credit",
        "by_category",
        "calibration",
        "length_bias",
    ):
        assert key in document
    assert set(document["calibration"]) >= {"ece", "brier"}
    assert set(document["length_bias"]) >= {
        "spearman",
        "accuracy_when_chosen_longer",
        "accuracy_when_chosen_shorter",
    }
    assert set(document["by_category"]) == {"greeting", "math"}
    assert document["models"][0]["name"] == "length" and document["data"] == str(pairs_file)
    assert document["annotator_agreement"]["n_annotators"] == 3


def test_a_model_and_a_judge_side_by_side(pairs_file: Path, tmp_path: Path, capsys) -> None:
    server = FakeServer(prefers_longer)
    try:
        out = tmp_path / "metrics.json"
        code = main(
            [
                "eval",
                "length",
                str(pairs_file),
                "--judge-url",
                server.url,
                "--judge-model",
                "fake",
                "--json",
                str(out),
                "--bootstrap",
                "0",
            ]
        )
    finally:
        server.close()
    assert code == 0
    document = json.loads(out.read_text())
    assert [model["name"] for model in document["models"]] == ["length", "judge:fake"]
    assert "accuracy" not in document  # two models: one block each
    # The fake judge prefers the longer response in both orders, like the length baseline.
    assert document["models"][1]["accuracy"] == document["models"][0]["accuracy"]
    assert len(server.requests) == 8
    table = capsys.readouterr().out
    assert "judge:fake" in table


def test_rankings_print_correlations(tmp_path: Path, capsys) -> None:
    path = tmp_path / "ranks.jsonl"
    write_records([RankingRecord("q", "query", ("a", "bbb", "cc"), scores=(1.0, 3.0, 2.0))], path)
    assert main(["eval", "length", str(path), "--bootstrap", "0", "--ndcg-k", "2"]) == 0
    table = capsys.readouterr().out
    assert "Kendall" in table and "NDCG@2" in table
    assert table.splitlines()[1].split()[1:4] == ["1", "1.000", "1.000"]


def test_errors_are_reported_without_a_trace(pairs_file: Path, tmp_path: Path, capsys) -> None:
    assert main(["eval", str(pairs_file)]) == 2
    assert "give at least one MODEL and then DATA" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "no-such-model"), str(pairs_file)]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["eval", "length", str(pairs_file), "--judge-url", "http://127.0.0.1:9"]) == 2
    assert "both --judge-url and --judge-model" in capsys.readouterr().err
    assert main(["eval", "length", str(pairs_file), "--by", "topic"]) == 2
    assert "no record has this field" in capsys.readouterr().err


def test_report_without_the_report_module(
    pairs_file: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setitem(sys.modules, "prefkit.eval.report", None)  # as if the module were absent
    assert main(["eval", "length", str(pairs_file), "--report", str(tmp_path / "r.html")]) == 2
    assert "--report needs prefkit.eval.report" in capsys.readouterr().err


def test_report_is_written(pairs_file: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.html"
    assert (
        main(["eval", "length", str(pairs_file), "--report", str(report), "--bootstrap", "20"]) == 0
    )
    document = report.read_text(encoding="utf-8")
    assert document.startswith("<!DOCTYPE html>") and document.rstrip().endswith("</html>")
    assert (
        f"<code>{pairs_file}</code>" in document
        and '<h3 class="model-name">length</h3>' in document
    )


def test_help_explains_models(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "MODEL is one of" in text and "--implicit-reward" in text and "examples:" in text


def test_a_bug_in_the_evaluation_keeps_its_traceback(pairs_file: Path, monkeypatch) -> None:
    """A ValueError the library did not raise as a user error propagates out of main."""

    def broken(*args, **kwargs):
        raise ValueError("operands could not be broadcast together")

    monkeypatch.setattr("prefkit.eval.evaluate.evaluate", broken)
    with pytest.raises(ValueError, match="could not be broadcast"):
        main(["eval", "length", str(pairs_file), "--bootstrap", "0"])
