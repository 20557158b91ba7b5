"""``prefkit rm train`` / ``prefkit rm score`` end to end on a tiny JSONL."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prefkit.cli import main
from prefkit.data import write_records
from test_rm_train import keyword_pairs, make_tiny_bert


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory) -> str:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert-cli"))


def _write_pairs(path, records) -> None:
    with path.open("w") as handle:
        for record in records:
            handle.write(
                json.dumps(
                    {
                        "id": record.id,
                        "prompt": record.prompt,
                        "chosen": record.chosen,
                        "rejected": record.rejected,
                    }
                )
                + "\n"
            )


def test_rm_help_lists_train_and_score(capsys):
    with pytest.raises(SystemExit):
        main(["rm", "--help"])
    out = capsys.readouterr().out
    assert "train" in out and "score" in out
    with pytest.raises(SystemExit):
        main(["rm", "train", "--help"])
    out = capsys.readouterr().out
    assert (
        "--max-length" in out
        and "--truncation" in out
        and "--cache-dir" in out
        and "--on-error" in out
    )


def test_train_then_score(tiny_backbone, tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    _write_pairs(data, keyword_pairs(240, seed=11))
    code = main(
        [
            "rm",
            "train",
            str(data),
            "--out",
            str(tmp_path / "rm"),
            "--backbone",
            tiny_backbone,
            "--epochs",
            "8",
            "--lr",
            "3e-3",
            "--features",
            "response",
            "--dropout",
            "0",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--no-progress",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["loss"] == "bradley-terry"
    assert (tmp_path / "rm" / "config.json").is_file()

    # Scored: new pairs in the canonical layout, the better response as often a as b.
    held_out = keyword_pairs(60, seed=12)
    scored = tmp_path / "held-out.jsonl"
    write_records(held_out, scored)
    code = main(
        [
            "rm",
            "score",
            str(tmp_path / "rm"),
            str(scored),
            "--out",
            str(tmp_path / "scores.jsonl"),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--chunk-size",
            "7",
            "--no-progress",
        ]
    )
    assert code == 0
    rows = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == [record.id for record in held_out]
    for row in rows:
        assert row["margin"] == pytest.approx(row["reward_a"] - row["reward_b"])
    # The response with "excellent" is better: the margin's sign must say which one it is.
    signs_right = [
        (row["margin"] > 0) == (record.outcome == "a")
        for row, record in zip(rows, held_out, strict=True)
    ]
    assert sum(record.outcome == "a" for record in held_out) in range(20, 41)
    assert np.mean(signs_right) > 0.9, np.mean(signs_right)


def test_bad_input_names_file_line_and_field(tiny_backbone, tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text(
        json.dumps({"prompt": "p", "chosen": "yes", "rejected": "no"})
        + "\n"
        + json.dumps({"prompt": "p", "chosen": 5, "rejected": "no"})
        + "\n"
    )
    code = main(
        [
            "rm",
            "train",
            str(data),
            "--out",
            str(tmp_path / "rm"),
            "--backbone",
            tiny_backbone,
            "--cache-dir",
            str(tmp_path / "cache"),
            "--no-progress",
        ]
    )
    assert code == 2
    error = capsys.readouterr().err
    assert f"{data}:2" in error and "chosen" in error


def test_missing_backbone_is_a_user_error(tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    _write_pairs(data, keyword_pairs(4, seed=12))
    code = main(
        [
            "rm",
            "train",
            str(data),
            "--out",
            str(tmp_path / "rm"),
            "--backbone",
            str(tmp_path / "nope"),
            "--no-progress",
        ]
    )
    assert code == 2
    assert "nope" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command",
    [
        ["rm", "train", "d", "--out", "o"],
        ["rm", "score", "m", "d", "--out", "o"],
        ["align", "d", "--model", "m", "--out", "o"],
        ["data", "inspect", "d"],
        ["quickstart"],
    ],
)
def test_one_progress_spelling_everywhere(command):
    """--progress/--no-progress on every command, --quiet kept as another name for --no-progress;
    held-out data is --eval-data for rm train as for align, --eval kept."""
    from prefkit.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(command).progress is True
    assert parser.parse_args([*command, "--no-progress"]).progress is False
    assert parser.parse_args([*command, "--quiet"]).progress is False
    if command[:2] == ["rm", "train"]:
        assert parser.parse_args([*command, "--eval-data", "x"]).eval == "x"
        assert parser.parse_args([*command, "--eval", "x"]).eval == "x"


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(
    tiny_backbone, tmp_path, capsys, monkeypatch
):
    """A loss that does not fit the data is the user's mistake: one line, exit status 2. A
    ValueError from inside the library is a bug: it propagates (the traceback is shown)."""
    import prefkit.rm.train

    data = tmp_path / "pairs.jsonl"
    _write_pairs(data, keyword_pairs(8, seed=1))
    command = ["rm", "train", str(data), "--out", str(tmp_path / "rm"), "--backbone"]
    command += [tiny_backbone, "--no-progress", "--device", "cpu"]
    assert main([*command, "--loss", "plackett-luce"]) == 2
    err = capsys.readouterr().err
    assert "prefkit: error:" in err and "does not fit pairwise records" in err

    def broken(*args, **kwargs):
        raise ValueError("an internal shape mismatch")

    monkeypatch.setattr(prefkit.rm.train, "train_reward_model", broken)
    with pytest.raises(ValueError, match="internal shape mismatch"):
        main(command)
