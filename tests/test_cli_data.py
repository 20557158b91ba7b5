"""`prefkit data inspect` and `prefkit data convert` end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from prefkit.cli import main
from prefkit.data import load_feedback


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


ROWS = [
    {"q": "2+2?", "r1": "4", "r2": "5", "v": [1, 1, 2]},
    {"q": "3+3?", "r1": "7", "r2": "6", "v": [2, 0, 2]},
    {"q": "1+1?", "r1": "2", "r2": "two", "v": [0, 0, 1]},
]
MAP = [
    "--map",
    "prompt=q",
    "--map",
    "response_a=r1",
    "--map",
    "response_b=r2",
    "--map",
    "votes=v",
    "--winner-values",
    "a=1,b=2,tie=0",
]


def test_version_and_help_on_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and "prefkit 0.1.0" in capsys.readouterr().out
    for command in (["data", "inspect"], ["data", "convert"]):
        with pytest.raises(SystemExit) as info:
            main([*command, "--help"])
        assert info.value.code == 0
        assert "examples:" in capsys.readouterr().out


def test_inspect_json_has_the_documented_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_jsonl(tmp_path / "votes.jsonl", ROWS)
    assert main(["data", "inspect", str(path), "--json", "--no-progress", *MAP]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["format"] == "mapping"
    assert summary["n_records"] == 3 and summary["kinds"] == {"pairwise": 3}
    assert summary["n_ties"] == 1 and summary["n_rejected"] == 0  # majorities: a, b, tie


def test_inspect_keeps_and_counts_empty_responses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"prompt": "p", "chosen": "a", "rejected": "b"},
            {"prompt": "p", "chosen": "", "rejected": "b"},
        ],
    )
    assert main(["data", "inspect", str(path), "--json", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "detected layout: trl" in captured.err
    summary = json.loads(captured.out)
    # An empty response is data by default: kept, and counted.
    assert summary["n_records"] == 2 and summary["n_rejected"] == 0
    assert summary["n_empty_responses"] == 1
    # --allow-empty-responses is the default, still accepted.
    assert main(["data", "inspect", str(path), "--allow-empty-responses", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "records   2 (pairwise 2)" in text and "empty     1 empty responses (kept)" in text
    assert (
        main(["data", "inspect", str(path), "--json", "--no-progress", "--reject-empty-responses"])
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_records"] == 1 and summary["n_rejected"] == 1
    assert summary["rejected_by_reason"] == {"empty_text": 1}
    assert summary["n_empty_responses"] == 0


def test_reject_and_allow_empty_responses_exclude_each_other(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "", "rejected": "b"}])
    with pytest.raises(SystemExit):
        main(["data", "inspect", str(path), "--reject-empty-responses", "--allow-empty-responses"])
    assert "not allowed with argument" in capsys.readouterr().err
    out = tmp_path / "out.jsonl"
    argv = ["data", "convert", str(path), str(out), "--on-error", "skip", "--no-progress"]
    assert main([*argv, "--reject-empty-responses"]) == 0
    written = [json.loads(line) for line in Path(f"{out}.rejects.jsonl").read_text().splitlines()]
    assert [row["reason"] for row in written] == ["empty_text"]


def test_convert_votes_to_soft_labels_and_parquet_round_trip(tmp_path: Path, capsys) -> None:
    path = write_jsonl(tmp_path / "votes.jsonl", ROWS)
    out = tmp_path / "soft.parquet"
    assert (
        main(["data", "convert", str(path), str(out), "--votes", "soft", "--no-progress", *MAP])
        == 0
    )
    assert "read 3, wrote 3, dropped 0" in capsys.readouterr().err
    records, _ = load_feedback(out)
    # [a, a, b] -> 2/3; [b, tie, b] -> 0.5/3; [tie, tie, a] -> 2/3
    assert [round(r.soft_label, 6) for r in records] == [
        round(2 / 3, 6),
        round(0.5 / 3, 6),
        round(2 / 3, 6),
    ]
    assert [r.votes for r in records] == [("a", "a", "b"), ("b", "tie", "b"), ("tie", "tie", "a")]


def test_convert_bad_row_raises_with_location_and_leaves_no_output(tmp_path: Path, capsys) -> None:
    path = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"prompt": "p", "chosen": "a", "rejected": "b"},
            {"prompt": "p", "chosen": "a", "rejected": 3},
        ],
    )
    out = tmp_path / "out.jsonl"
    assert main(["data", "convert", str(path), str(out), "--to", "binary", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{path}:2: field 'response_b'" in err and "found int 3" in err
    assert not out.exists() and not list(tmp_path.glob("out.jsonl*"))


def test_convert_skip_writes_rejects_next_to_output(tmp_path: Path, capsys) -> None:
    path = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"prompt": "p", "chosen": "a", "rejected": "b"},
            {"prompt": "p", "chosen": "a", "rejected": 3},
        ],
    )
    out = tmp_path / "out.jsonl"
    assert (
        main(
            [
                "data",
                "convert",
                str(path),
                str(out),
                "--to",
                "binary",
                "--on-error",
                "skip",
                "--no-progress",
            ]
        )
        == 0
    )
    assert [r.label for r in load_feedback(out)[0]] == [True, False]
    rejects = [
        json.loads(line) for line in (tmp_path / "out.jsonl.rejects.jsonl").read_text().splitlines()
    ]
    assert [(r["line"], r["field"], r["reason"]) for r in rejects] == [
        (2, "response_b", "wrong_type")
    ]


def test_interrupted_convert_leaves_no_partial_output(tmp_path: Path) -> None:
    """A convert killed mid-write never leaves a truncated file under the output name."""
    rows = [{"prompt": f"p{i}", "chosen": "a" * 200, "rejected": "b"} for i in range(50_000)]
    path = write_jsonl(tmp_path / "big.jsonl", rows)
    out = tmp_path / "out.jsonl"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefkit",
            "data",
            "convert",
            str(path),
            str(out),
            "--to",
            "binary",
            "--no-progress",
        ],
        stderr=subprocess.PIPE,
    )
    partial = tmp_path / "out.jsonl.partial"
    import time

    deadline = time.monotonic() + 60
    while not partial.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.kill()
    process.wait()
    assert not out.exists()
    # Rerunning the same command completes and replaces the leftover partial file.
    assert main(["data", "convert", str(path), str(out), "--to", "binary", "--no-progress"]) == 0
    assert sum(1 for _ in out.open()) == 100_000 and not partial.exists()
