"""``prefkit curate decontaminate --engine ray`` on a real local Ray runtime (2 CPUs, one per
module).

The local engine is the reference: on a file and on a folder of JSONL and Parquet shards
with bad rows, the Ray engine's kept records, flagged file and contamination table must be
the local engine's bytes (the same order), and the rejects file and the read summary the
same. ``--out-shards`` must give one file per input shard, named after it, whose
concatenation is the ``--out`` file. A checking actor killed with SIGKILL mid-run (a real
process death) must neither lose nor duplicate a record, and every shard file must still
be complete.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from conftest import import_or_skip_outside_ci
from prefkit.cli import main
from prefkit.data import load_feedback, write_records
from prefkit.engines.ray_runtime import RayOptions
from ray_helpers import live_actors
from test_curate_decontaminate import eval_items, training_set

ray = import_or_skip_outside_ci("ray", allow_module_level=True)


@pytest.fixture(scope="module")
def eval_sets(tmp_path_factory) -> list[str]:
    """Two evaluation sets: all ten items, and three of them (both tables get rows)."""
    folder = tmp_path_factory.mktemp("eval")
    evals = eval_items()
    write_records(evals, folder / "bench.jsonl")
    write_records(evals[:3], folder / "small.parquet")
    return [str(folder / "bench.jsonl"), str(folder / "small.parquet")]


def _decontaminate(data, eval_paths: list[str], *extra: str) -> int:
    return main(
        [
            "curate",
            "decontaminate",
            str(data),
            "--against",
            *eval_paths,
            "--no-progress",
            "--json",
            *extra,
        ]
    )


def _run(capsys, data, eval_paths, *extra: str) -> tuple[dict, str]:
    """The command's JSON summary and its stderr."""
    assert _decontaminate(data, eval_paths, *extra) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


def _summary(stderr: str) -> str:
    """The read-summary line of the training data (``DATA: read N rows -> ...``)."""
    lines = [line for line in stderr.splitlines() if " rows -> " in line and "/eval" not in line]
    assert len(lines) == 1, stderr
    return lines[0]


def _side_files(base: Path) -> dict[str, str]:
    """The flagged file and the table, beside the output named ``base``."""
    return {
        suffix: Path(f"{base}{suffix}").read_text()
        for suffix in (".flagged.jsonl", ".contamination.json")
    }


def test_a_file_gives_the_local_output_flagged_rows_and_table(
    ray_local, eval_sets, tmp_path, capsys
):
    train, planted = training_set(eval_items())
    data = tmp_path / "train.jsonl"
    write_records(train, data)
    local_summary, local_err = _run(capsys, data, eval_sets, "--out", str(tmp_path / "local.jsonl"))
    ray_summary, ray_err = _run(
        capsys,
        data,
        eval_sets,
        *("--out", str(tmp_path / "ray.jsonl")),
        *("--engine", "ray", "--ray-workers", "2", "--chunk-size", "7"),
    )
    assert local_summary["dropped"] == len(planted) == 20
    assert [table["train_records_removed"] for table in local_summary["eval_sets"]] == [20, 6]
    assert ray_summary == local_summary
    assert (tmp_path / "ray.jsonl").read_bytes() == (tmp_path / "local.jsonl").read_bytes()
    assert _side_files(tmp_path / "ray.jsonl") == _side_files(tmp_path / "local.jsonl")
    assert _summary(ray_err) == _summary(local_err)
    assert "ray: 1 shard(s)" in ray_err


def _shards_with_bad_rows(folder: Path) -> list[str]:
    """The training set in three shards (two JSONL, one Parquet in a subfolder) with a
    malformed line and a record missing a field in part-00000; gives the ids the reader
    keeps, in input order."""
    train, _ = training_set(eval_items())
    folder.mkdir()
    write_records(train[:25], folder / "part-00000.jsonl")
    lines = (folder / "part-00000.jsonl").read_text().splitlines()
    missing = json.loads(lines[5])
    del missing["response_b"]
    lines[5] = json.dumps(missing)
    lines.insert(3, '{"id": "broken", "prompt": ')
    (folder / "part-00000.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "nested").mkdir()
    write_records(train[25:45], folder / "nested" / "part-00001.parquet")
    write_records(train[45:], folder / "part-00002.jsonl")
    first = [record.id for record in train[:25]]
    del first[5]
    # A folder's files are read in sorted order of their paths: nested/ first.
    return [record.id for record in train[25:45]] + first + [record.id for record in train[45:]]


def test_shards_with_bad_rows_give_the_local_output_rejects_and_shard_files(
    ray_local, eval_sets, tmp_path, capsys
):
    folder = tmp_path / "shards"
    read_ids = _shards_with_bad_rows(folder)
    skip = ("--on-error", "skip")
    ray_args = ("--engine", "ray", "--ray-workers", "2", "--chunk-size", "4", *skip)
    local = tmp_path / "local.jsonl"
    local_summary, local_err = _run(capsys, folder, eval_sets, "--out", str(local), *skip)
    one_file = tmp_path / "ray.jsonl"
    ray_summary, ray_err = _run(capsys, folder, eval_sets, "--out", str(one_file), *ray_args)
    out_shards = tmp_path / "clean"
    shards_summary, shards_err = _run(
        capsys, folder, eval_sets, "--out-shards", str(out_shards), *ray_args
    )

    # The local engine read every row but two, and dropped the copies.
    assert local_summary["read"] == len(read_ids) == 59
    assert local_summary["rejected_rows"] == 2
    kept_ids = [record.id for record in load_feedback(local)[0]]
    assert kept_ids == [i for i in read_ids if not i.startswith(("verbatim", "partial"))]
    # --engine ray: the same bytes, the same rejects and counts.
    assert ray_summary == local_summary == shards_summary
    assert one_file.read_bytes() == local.read_bytes()
    assert _side_files(one_file) == _side_files(local)
    local_rejects = Path(f"{local}.rejects.jsonl").read_text()
    assert [json.loads(line)["reason"] for line in local_rejects.splitlines()] == [
        "malformed_json",
        "missing_field",
    ]
    assert Path(f"{one_file}.rejects.jsonl").read_text() == local_rejects
    assert _summary(ray_err).replace("ray.jsonl", "local.jsonl") == _summary(local_err)
    assert "ray: 3 shard(s)" in ray_err

    # --out-shards: one file per input shard, named after it; together the --out file.
    names = sorted(str(path.relative_to(out_shards)) for path in out_shards.rglob("*"))
    assert names == ["nested", "nested/part-00001.jsonl", "part-00000.jsonl", "part-00002.jsonl"]
    in_order = ["nested/part-00001.jsonl", "part-00000.jsonl", "part-00002.jsonl"]
    joined = b"".join((out_shards / name).read_bytes() for name in in_order)
    assert joined == local.read_bytes()
    assert _side_files(out_shards) == _side_files(local)
    assert Path(f"{out_shards}.rejects.jsonl").read_text() == local_rejects
    assert "3 shard(s)" in shards_err


def test_an_actor_killed_mid_run_loses_and_duplicates_nothing(
    ray_local, eval_sets, tmp_path, capsys
):
    """SIGKILL to one of the two actors when the first chunk reaches this process, with
    about 90 chunks of 2 records still to check: its chunks are checked again by its
    restarted process; the shard files and the flagged file are the local engine's."""
    from prefkit.curate.decontaminate import DecontaminateConfig, Decontamination, build_index
    from prefkit.engines.ray_decontaminate import RayDecontamination, write_clean
    from prefkit.engines.shard_output import shard_output_paths

    train, _ = training_set(eval_items())
    folder = tmp_path / "shards"
    folder.mkdir()
    for index in range(3):
        write_records(train, folder / f"part-{index}.parquet")  # 3 x 60 records
    local = tmp_path / "local.jsonl"
    _run(capsys, folder, eval_sets, "--out", str(local))

    evals = {path: load_feedback(path)[0] for path in eval_sets}
    index = build_index(evals, DecontaminateConfig(progress=False))
    run = RayDecontamination(
        folder,
        index,
        reader_options={},
        rejects_path=None,
        options=RayOptions(workers=2),
        chunk_size=2,
    )
    paths = shard_output_paths(run.shards, tmp_path / "clean", "jsonl")
    tally = Decontamination(index, tmp_path / "clean.flagged.jsonl")
    killed: dict = {}

    def killing(chunks):
        for chunk in chunks:
            if not killed:
                alive = [
                    actor
                    for actor in live_actors("_DecontaminateActor")
                    if actor["State"] == "ALIVE"
                ]
                assert len(alive) == 2
                killed.update(alive[0])
                os.kill(killed["Pid"], signal.SIGKILL)
            yield chunk

    write_clean(killing(run.chunks()), tally, shard_paths=paths)
    report = tally.finish()
    assert report.stats.n_read == run.stats.n_records == 180
    assert [path.name for path in paths] == ["part-0.jsonl", "part-1.jsonl", "part-2.jsonl"]
    assert b"".join(path.read_bytes() for path in paths) == local.read_bytes()
    assert (tmp_path / "clean.flagged.jsonl").read_text() == Path(
        f"{local}.flagged.jsonl"
    ).read_text()
    assert not list((tmp_path / "clean").glob("*.partial"))
    # The kill was real: the actor it hit was started again in a new process.
    restarted = [
        actor
        for actor in live_actors("_DecontaminateActor")
        if actor["ActorID"] == killed["ActorID"]
    ]
    assert restarted and restarted[0]["NumRestarts"] >= 1


def test_out_shards_needs_the_ray_engine_and_a_folder_of_its_own(eval_sets, tmp_path, capsys):
    """No Ray: --out-shards with the local engine, and a folder holding other data files,
    are refused before any work."""
    from prefkit.engines.ray_read import input_shards
    from prefkit.engines.shard_output import shard_output_paths
    from prefkit.errors import UserInputError

    folder = tmp_path / "shards"
    _shards_with_bad_rows(folder)
    assert _decontaminate(folder, eval_sets, "--out-shards", str(tmp_path / "clean")) == 2
    assert "--out-shards writes the shards of --engine ray" in capsys.readouterr().err
    assert not (tmp_path / "clean").exists()
    shards = input_shards(folder)
    (tmp_path / "clean").mkdir()
    (tmp_path / "clean" / "old.jsonl").write_text("")
    with pytest.raises(UserInputError, match="holds data files this run does not write"):
        shard_output_paths(shards, tmp_path / "clean", "jsonl")
    with pytest.raises(UserInputError, match="is an input shard"):
        shard_output_paths(shards, folder, "jsonl")
    paths = shard_output_paths(shards, tmp_path / "fresh", "parquet")
    assert [str(path.relative_to(tmp_path / "fresh")) for path in paths] == [
        "nested/part-00001.parquet",
        "part-00000.parquet",
        "part-00002.parquet",
    ]
