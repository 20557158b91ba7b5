"""`prefkit quickstart`: generated data with a known reward, and the whole path end to end."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from prefkit.cli import main
from prefkit.data import load_feedback
from prefkit.quickstart.data import make_quickstart_pairs, split_by_question


def test_generated_data_is_deterministic_balanced_and_correctly_labelled() -> None:
    records = make_quickstart_pairs(seed=0)
    assert [r.to_dict() for r in records] == [r.to_dict() for r in make_quickstart_pairs(seed=0)]
    assert [r.to_dict() for r in records] != [r.to_dict() for r in make_quickstart_pairs(seed=1)]
    # Length is uninformative: the correct answer is the longer one in exactly half the pairs.
    longer = Counter(len(r.chosen) > len(r.rejected) for r in records)
    assert abs(longer[True] - longer[False]) <= 2
    # Both sides are used, and every chosen answer states the true fact of its prompt.
    assert Counter(r.outcome for r in records).keys() == {"a", "b"}
    capitals = [r for r in records if r.category == "capitals"]
    assert all("Paris" in r.chosen for r in capitals if "France" in r.prompt)
    assert not any("Paris" in r.rejected for r in capitals if "France" in r.prompt)
    train, held_out = split_by_question(records)
    assert len(train) + len(held_out) == len(records)
    assert not {r.prompt for r in train} & {r.prompt for r in held_out}


def test_quickstart_end_to_end(tmp_path: Path, capsys) -> None:
    out = tmp_path / "qs"
    assert main(["quickstart", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert (
        "reward model accuracy on held-out pairs" in printed and str(out / "report.html") in printed
    )
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    model, baseline = metrics["models"]
    # The true reward is learnable from the frozen embeddings; length is not informative.
    assert model["accuracy"] > 0.8
    assert 0.4 < baseline["accuracy"] < 0.6
    assert model["n"] == len(load_feedback(out / "eval.jsonl")[0])
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.count("<svg") >= 8 and "longer-wins baseline" in html
    assert (out / "reward-model" / "config.json").is_file()
