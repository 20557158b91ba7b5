"""``prefkit annotate`` from the command line: a whole round, errors, help, real data.

The round: create a project from a file, add annotators, label (through the
library, as the server would), read ``status``, ``export``, train a reward model
on the export with ``prefkit rm train``, and create a second project that offers
the items the model is least sure about first.
"""

from __future__ import annotations

import dataclasses
import json
import random

import pytest

from prefkit.annotate import assign
from prefkit.annotate.config import ProjectConfig
from prefkit.annotate.project import project_report, require_project
from prefkit.annotate.schema import annotators, items
from prefkit.annotate.store import open_store
from prefkit.annotate.tasks import parse_answer
from prefkit.cli import main
from prefkit.config import field_docs
from prefkit.data import read_feedback, write_records
from prefkit.quickstart.data import make_quickstart_pairs

T0 = 1_000_000.0


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.slow
def test_a_whole_round_from_the_command_line(tmp_path, capsys) -> None:
    db = f"sqlite:///{tmp_path / 'annotate.db'}"
    records = make_quickstart_pairs(seed=1)[:36]
    data = tmp_path / "pairs.jsonl"
    write_records(records, data)
    (tmp_path / "guide.md").write_text("# Pick the correct answer\n\nLength does not matter.")
    code, out, err = run(
        capsys,
        "annotate",
        "create",
        "qa",
        "--data",
        str(data),
        "--task",
        "pairwise",
        "--overlap",
        "3",
        "--guidelines",
        str(tmp_path / "guide.md"),
        "--db",
        db,
    )
    assert code == 0 and "created project 'qa': 36 items, pairwise, overlap 3" in out
    assert "read 36 rows -> 36 records" in err
    tokens = {}
    for name in ("ana", "bob", "carl"):
        code, out, _ = run(capsys, "annotate", "add-annotator", "qa", name, "--db", db)
        assert code == 0 and "shown once" in out
        tokens[name] = out.strip().splitlines()[-1]
    assert len(set(tokens.values())) == 3 and all(len(token) >= 40 for token in tokens.values())
    code, out, _ = run(capsys, "annotate", "add-annotator", "qa", "lead", "--admin", "--db", db)
    assert code == 0 and "added admin 'lead'" in out

    # ana and bob pick the correct answer 90% of the time; carl answers at random
    truth = {record.id: record.outcome for record in records}
    store = open_store(db)
    try:
        project = require_project(store, "qa")
        with store.read() as connection:
            ids = dict(
                connection.execute(
                    annotators.select().with_only_columns(annotators.c.name, annotators.c.id)
                ).all()
            )
        rng = random.Random(0)
        for name in ("ana", "bob", "carl"):
            while (lease := assign.next_lease(store, project, ids[name], T0)) is not None:
                correct = truth[lease.external_id]
                if name == "carl":
                    choice = rng.choice(["a", "b", "tie"])
                else:
                    choice = correct if rng.random() < 0.9 else ("b" if correct == "a" else "a")
                side = (
                    "tie"
                    if choice == "tie"
                    else (
                        "left" if lease.display_order[0] == (0 if choice == "a" else 1) else "right"
                    )
                )
                answer = parse_answer(
                    "pairwise", project.config, {"choice": side}, lease.display_order
                )
                assert answer["choice"] == choice
                assign.submit(
                    store,
                    project,
                    ids[name],
                    lease.assignment_id,
                    answer,
                    rationale=None,
                    seconds=2.0,
                    now=T0,
                )
        report = project_report(store, "qa")
    finally:
        store.close()

    code, out, _ = run(capsys, "annotate", "status", "qa", "--db", db)
    assert code == 0 and "108 of 108 labels, 36 of 36 items complete" in out
    assert "Krippendorff's alpha" in out and "Fleiss' kappa" in out
    carl_line = next(line for line in out.splitlines() if line.startswith("carl"))
    assert "agreement" in carl_line  # flagged
    assert not any(line.startswith("ana") and "agreement 0" in line for line in out.splitlines())
    code, out, _ = run(capsys, "annotate", "status", "qa", "--json", "--db", db)
    as_json = json.loads(out)
    assert as_json["agreement"][0]["alpha"] == pytest.approx(report.agreement[0].alpha)
    assert [a["name"] for a in as_json["annotators"] if a["flags"]] == ["carl"]

    votes = tmp_path / "votes.jsonl"
    code, out, _ = run(capsys, "annotate", "export", "qa", "--out", str(votes), "--db", db)
    assert code == 0 and "wrote 36 records with 108 votes" in out
    exported = list(read_feedback(votes))
    assert len(exported) == 36 and all(len(record.votes) == 3 for record in exported)
    majority_right = sum(record.outcome == truth[record.id] for record in exported)
    assert majority_right >= 30

    # rm train reads the export as it is: soft labels from the votes
    code, out, _ = run(
        capsys,
        "rm",
        "train",
        str(votes),
        "--out",
        str(tmp_path / "rm"),
        "--epochs",
        "3",
        "--no-progress",
    )
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["loss"] == "soft-label"

    # a new round, the least certain items first
    code, out, _ = run(
        capsys,
        "annotate",
        "create",
        "hard",
        "--data",
        str(data),
        "--overlap",
        "1",
        "--priority",
        "uncertainty",
        "--reward",
        str(tmp_path / "rm"),
        "--db",
        db,
    )
    assert code == 0 and "uncertainty order" in out
    from prefkit.rm.model import RewardModel

    model = RewardModel.load(tmp_path / "rm")
    rewards = model.score(
        [r.prompt for r in records for _ in (0, 1)],
        [t for r in records for t in (r.response_a, r.response_b)],
    )
    margins = {r.id: float(rewards[2 * i] - rewards[2 * i + 1]) for i, r in enumerate(records)}
    store = open_store(db)
    try:
        project = require_project(store, "hard")
        with store.read() as connection:
            rows = connection.execute(
                items.select()
                .with_only_columns(items.c.external_id, items.c.model_margin, items.c.priority)
                .where(items.c.project_id == project.id)
                .order_by(items.c.priority)
            ).all()
        assert [row.model_margin for row in rows] == pytest.approx(
            [margins[row.external_id] for row in rows], abs=1e-5
        )
        by_certainty = sorted(margins, key=lambda key: abs(margins[key]))
        assert [row.external_id for row in rows][:5] == by_certainty[:5]
        code, out, _ = run(capsys, "annotate", "add-annotator", "hard", "dee", "--db", db)
        with store.read() as connection:
            dee = connection.execute(
                annotators.select()
                .with_only_columns(annotators.c.id)
                .where(annotators.c.name == "dee")
            ).scalar_one()
        first = assign.next_lease(store, project, dee, T0)
        assert first.external_id == by_certainty[0]
    finally:
        store.close()


def test_mistakes_are_one_line_errors(tmp_path, capsys) -> None:
    db = f"sqlite:///{tmp_path / 'annotate.db'}"
    data = tmp_path / "pairs.jsonl"
    write_records(make_quickstart_pairs(seed=2)[:4], data)
    bad_json = tmp_path / "attributes.json"
    bad_json.write_text('[{"name": "help", "minimum": 1, "maximum": 5, "colour": "red"}]')
    cases = [
        (["annotate", "status", "nope", "--db", db], "no project 'nope' in this database"),
        (
            ["annotate", "create", "x", "--data", str(tmp_path / "missing.jsonl"), "--db", db],
            "missing.jsonl",
        ),
        (
            ["annotate", "create", "x", "--data", str(data), "--task", "rating", "--db", db],
            "needs its attributes",
        ),
        (
            [
                "annotate",
                "create",
                "x",
                "--data",
                str(data),
                "--task",
                "rating",
                "--attribute",
                "help=5..1",
                "--db",
                db,
            ],
            "minimum < maximum",
        ),
        (
            [
                "annotate",
                "create",
                "x",
                "--data",
                str(data),
                "--task",
                "rating",
                "--attributes",
                str(bad_json),
                "--db",
                db,
            ],
            "unknown key 'colour'",
        ),
        (
            [
                "annotate",
                "create",
                "x",
                "--data",
                str(data),
                "--priority",
                "uncertainty",
                "--db",
                db,
            ],
            "needs --reward",
        ),
        (["annotate", "create", "x y", "--data", str(data), "--db", db], "project name 'x y'"),
        (
            ["annotate", "create", "x", "--data", str(data), "--db", "mysql://u@h/db"],
            "use sqlite:///FILE or postgresql://",
        ),
        (
            ["annotate", "export", "nope", "--out", str(tmp_path / "out.txt"), "--db", db],
            "cannot tell the output format",
        ),
    ]
    for argv, message in cases:
        code, _, err = run(capsys, *argv)
        assert code == 2, argv
        assert err.startswith("prefkit: error: ") and message in err, (argv, err)
        assert "Traceback" not in err and err.count("\n") <= 2, err


def test_help_comes_from_the_config_docstrings(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["annotate", "--help"])
    top = capsys.readouterr().out
    for command in ("create", "add-annotator", "serve", "status", "export"):
        assert command in top
    with pytest.raises(SystemExit):
        main(["annotate", "create", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    docs = field_docs(ProjectConfig)
    for item in dataclasses.fields(ProjectConfig):
        if item.name != "attributes":
            assert f"--{item.name.replace('_', '-')}" in text
            assert docs[item.name][:40] in text


def test_a_project_from_real_data(shared_data, tmp_path, capsys, monkeypatch) -> None:
    path = shared_data / "pandalm-testset" / "testset-v1.json"
    if not path.exists():
        pytest.skip(f"{path} is not available")
    monkeypatch.chdir(tmp_path)  # the rejects file is written to the current folder
    db = f"sqlite:///{tmp_path / 'annotate.db'}"
    code, out, err = run(
        capsys,
        "annotate",
        "create",
        "pandalm",
        "--data",
        str(path),
        "--format",
        "pandalm",
        "--on-error",
        "skip",
        "--allow-empty-responses",
        "--overlap",
        "2",
        "--db",
        db,
    )
    assert code == 0, err
    n_records = len(list(read_feedback(path, format="pandalm", on_error="skip")))
    assert f"created project 'pandalm': {n_records} items" in out
    rejects = tmp_path / "pandalm.rejects.jsonl"
    assert "written to pandalm.rejects.jsonl" in err and len(rejects.read_text().splitlines()) > 0
    assert not (path.parent / (path.name + ".rejects.jsonl")).exists()  # nothing beside the data
    code, out, _ = run(capsys, "annotate", "status", "pandalm", "--db", db)
    assert f"0 of {2 * n_records} labels" in out
