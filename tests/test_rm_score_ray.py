"""``prefkit rm score --engine ray`` on a real local Ray runtime (2 CPUs, one per module).

The local engine is the reference: on a file, on a folder of JSONL and Parquet shards and
on a glob (with ``--records``), the Ray engine's output must be the local engine's record for record (ids and
order exact, rewards to 1e-6), and with bad records the rejects file must be the same
bytes and the counts the same summary. A scoring actor killed with SIGKILL mid-run (a
real process death) must neither lose nor duplicate a record: Ray restarts it and runs
its chunks again. ``--out-shards`` writes one file per input shard, named after it, whose
concatenation is the ``--out`` file, also when an actor was killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from conftest import import_or_skip_outside_ci
from prefkit.cli import main
from prefkit.data import write_records
from prefkit.engines.ray_runtime import RayOptions
from prefkit.errors import UserInputError
from ray_helpers import live_actors
from test_rm_train import keyword_pairs, make_tiny_bert

ray = import_or_skip_outside_ci("ray", allow_module_level=True)


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory) -> tuple[str, str]:
    """A tiny embedding reward model (random 2-layer BERT backbone) and its cache."""
    folder = tmp_path_factory.mktemp("ray-rm")
    backbone = make_tiny_bert(folder / "backbone")
    data = folder / "train.jsonl"
    write_records(keyword_pairs(60, seed=3), data)
    cache = str(folder / "cache")
    code = main(
        [
            "rm",
            "train",
            str(data),
            "--out",
            str(folder / "rm"),
            "--backbone",
            backbone,
            "--epochs",
            "2",
            "--cache-dir",
            cache,
            "--no-progress",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    return str(folder / "rm"), cache


def _score(
    reward_model, data, out, *extra: str, out_flag: str = "--out", chunk_size: int = 7
) -> str:
    model_dir, cache = reward_model
    code = main(
        [
            "rm",
            "score",
            model_dir,
            str(data),
            out_flag,
            str(out),
            "--cache-dir",
            cache,
            "--chunk-size",
            str(chunk_size),
            "--no-progress",
            *extra,
        ]
    )
    assert code == 0
    return str(out)


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def assert_same_rows(ray_rows: list[dict], local_rows: list[dict]) -> None:
    """Record for record: the same ids, kinds and keys in the same order; rewards to 1e-6."""
    assert [row["id"] for row in ray_rows] == [row["id"] for row in local_rows]
    for ray_row, local_row in zip(ray_rows, local_rows, strict=True):
        assert ray_row.keys() == local_row.keys()
        for key, value in local_row.items():
            if isinstance(value, float):
                assert ray_row[key] == pytest.approx(value, abs=1e-6), (local_row["id"], key)
            else:
                assert ray_row[key] == value, (local_row["id"], key)


def _summary(stderr: str) -> str:
    """The read-summary line both engines print (``DATA: read N rows -> ...``)."""
    lines = [line for line in stderr.splitlines() if ": read " in line]
    assert len(lines) == 1, stderr
    return lines[0]


def test_a_file_scores_as_the_local_engine(ray_local, reward_model, tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    write_records(keyword_pairs(30, seed=5), data)
    local = _score(reward_model, data, tmp_path / "local.jsonl")
    local_err = capsys.readouterr().err
    on_ray = _score(
        reward_model, data, tmp_path / "ray.jsonl", "--engine", "ray", "--ray-workers", "2"
    )
    ray_err = capsys.readouterr().err
    local_rows = _rows(local)
    assert len(local_rows) == 30 and {"reward_a", "reward_b", "prob_a"} <= local_rows[0].keys()
    assert_same_rows(_rows(on_ray), local_rows)
    assert _summary(ray_err) == _summary(local_err)
    assert "ray: 1 shard(s)" in ray_err


def _shards_with_bad_records(folder: Path) -> None:
    """Three shards (two JSONL, one Parquet in a subfolder) with bad rows in two of them."""
    folder.mkdir()
    write_records(keyword_pairs(12, seed=21), folder / "part-0.jsonl")
    lines = (folder / "part-0.jsonl").read_text().splitlines()
    lines.insert(3, '{"id": "broken", "prompt": ')  # malformed JSON
    missing = json.loads(lines[5])
    del missing["response_b"]
    lines[5] = json.dumps(missing)  # a missing field
    (folder / "part-0.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "nested").mkdir()
    write_records(keyword_pairs(9, seed=22), folder / "nested" / "part-1.parquet")
    long_text = json.dumps(
        {
            "kind": "pairwise",
            "id": "too-long",
            "prompt": "p",
            "response_a": "x" * 300,
            "response_b": "y",
            "outcome": "a",
        }
    )
    records = [json.dumps(record.to_dict()) for record in keyword_pairs(8, seed=23)]
    (folder / "part-2.jsonl").write_text("\n".join([*records[:4], long_text, *records[4:]]) + "\n")


def test_shards_and_bad_records_give_the_local_output_and_rejects(
    ray_local, reward_model, tmp_path, capsys
):
    folder = tmp_path / "shards"
    _shards_with_bad_records(folder)
    skip = ("--on-error", "skip", "--max-text-chars", "200")
    local = _score(reward_model, folder, tmp_path / "local.jsonl", *skip)
    local_err = capsys.readouterr().err
    on_ray = _score(reward_model, folder, tmp_path / "ray.jsonl", "--engine", "ray", *skip)
    ray_err = capsys.readouterr().err

    local_rows = _rows(local)
    assert len(local_rows) == 12 - 1 + 9 + 8  # one of part-0's records lost a field
    assert_same_rows(_rows(on_ray), local_rows)
    assert "ray: 3 shard(s)" in ray_err
    local_rejects = Path(f"{local}.rejects.jsonl").read_text()
    ray_rejects = Path(f"{on_ray}.rejects.jsonl").read_text()
    assert [json.loads(line)["reason"] for line in local_rejects.splitlines()] == [
        "malformed_json",
        "missing_field",
        "text_too_long",
    ]
    assert ray_rejects.replace("ray.jsonl", "local.jsonl") == local_rejects
    assert _summary(ray_err).replace("ray.jsonl", "local.jsonl") == _summary(local_err)


def test_out_shards_are_the_out_file_in_one_file_per_input_shard(
    ray_local, reward_model, tmp_path, capsys
):
    """Reward rows (JSONL) and, with --records, Parquet shards: named after the input
    shards, their concatenation in input order is the local engine's --out file; the
    rejects go beside the folder."""
    from prefkit.data import load_feedback

    folder = tmp_path / "shards"
    _shards_with_bad_records(folder)
    skip = ("--on-error", "skip", "--max-text-chars", "200")
    local = _score(reward_model, folder, tmp_path / "local.jsonl", *skip)
    local_records = _score(reward_model, folder, tmp_path / "records.jsonl", "--records", *skip)
    capsys.readouterr()
    on_ray = ("--engine", "ray", "--ray-workers", "2", *skip)
    _score_shards(reward_model, folder, tmp_path / "rows", *on_ray)
    ray_err = capsys.readouterr().err
    _score_shards(
        reward_model,
        folder,
        tmp_path / "parquet",
        "--records",
        "--shard-format",
        "parquet",
        *on_ray,
    )

    in_order = ["nested/part-1", "part-0", "part-2"]  # a folder's files in sorted order
    rows = tmp_path / "rows"
    assert sorted(str(p.relative_to(rows)) for p in rows.rglob("*.*")) == sorted(
        f"{name}.jsonl" for name in in_order
    )
    assert_same_rows(
        [row for name in in_order for row in _rows(rows / f"{name}.jsonl")], _rows(local)
    )
    assert "wrote 28 scored records to 3 shard file(s)" in ray_err
    assert (
        Path(f"{rows}.rejects.jsonl").read_text().replace(str(rows), str(local))
        == Path(f"{local}.rejects.jsonl").read_text()
    )
    parquet = tmp_path / "parquet"
    shard_records = [
        record.to_dict()
        for name in in_order
        for record in load_feedback(parquet / f"{name}.parquet")[0]
    ]
    expected = [record.to_dict() for record in load_feedback(local_records)[0]]
    assert [record["id"] for record in shard_records] == [record["id"] for record in expected]
    for got, want in zip(shard_records, expected, strict=True):
        got_scores, want_scores = got.pop("metadata")["scoring"], want.pop("metadata")["scoring"]
        assert got == want
        assert got_scores["margin"] == pytest.approx(want_scores["margin"], abs=1e-6)


def _score_shards(reward_model, data, folder, *extra: str) -> None:
    _score(reward_model, data, folder, *extra, out_flag="--out-shards", chunk_size=4)


def test_a_glob_reads_its_matches_as_files_of_the_folder(tmp_path):
    """No Ray: the pattern's shards and records are the folder's, less what it leaves out."""
    from prefkit.data import load_feedback
    from prefkit.engines.ray_read import input_shards

    folder = tmp_path / "shards"
    _shards_with_bad_records(folder)
    pattern = str(folder / "**" / "*.jsonl")
    assert [Path(shard.path).name for shard in input_shards(pattern)] == [
        "part-0.jsonl",
        "part-2.jsonl",
    ]
    assert {shard.folder for shard in input_shards(pattern)} == {str(folder)}
    options = {"on_error": "skip"}
    from_glob, glob_stats = load_feedback(pattern, **options)
    from_folder, _ = load_feedback(folder, **options)
    assert [record.id for record in from_glob] == [
        record.id for record in from_folder if not record.id.startswith("p22-")
    ]
    assert from_glob == [record for record in from_folder if not record.id.startswith("p22-")]
    assert glob_stats.rejects.counts == {"malformed_json": 1, "missing_field": 1}


def test_an_actor_killed_mid_run_loses_and_duplicates_nothing(
    ray_local, reward_model, tmp_path, capsys
):
    """SIGKILL to one of the two actors when the first chunk reaches this process, with
    about 150 chunks of 2 records still to score: the records it held are scored again
    by its restarted process, and the output is still the local engine's, once each;
    the shard files (as --out-shards writes them) hold every shard complete."""
    from prefkit.engines.ray_score import RayScoring, write_scored_shards
    from prefkit.engines.shard_output import shard_output_paths

    folder = tmp_path / "shards"
    folder.mkdir()
    for index in range(3):
        write_records(keyword_pairs(100, seed=40 + index), folder / f"part-{index}.jsonl")
    pattern = str(folder / "*.jsonl")
    local = _score(reward_model, pattern, tmp_path / "local.jsonl", "--records")
    capsys.readouterr()
    local_records = _rows(local)

    model_dir, cache = reward_model
    scoring = {"reward_model": model_dir, "normalized": False}
    run = RayScoring(
        pattern,
        model_dir,
        reader_options={},
        rejects_path=None,
        options=RayOptions(workers=2),
        chunk_size=2,
        scoring=scoring,
        cache_dir=cache,
    )
    ray_rows: list[dict] = []
    ray_records: list[dict] = []
    killed: dict = {}

    def killing(chunks):
        for chunk in chunks:
            ray_rows.extend(chunk.result.rows)
            ray_records.extend(record.to_dict() for record in chunk.result.records)
            if not killed:
                alive = [actor for actor in live_actors("_ScoreActor") if actor["State"] == "ALIVE"]
                assert len(alive) == 2
                killed.update(alive[0])
                os.kill(killed["Pid"], signal.SIGKILL)
            yield chunk

    # Written as --out-shards writes: each shard's file complete, renamed into place.
    paths = shard_output_paths(run.shards, tmp_path / "scored", "jsonl")
    assert write_scored_shards(killing(run.chunks()), paths, records=True) == 300
    assert run.stats.n_records == 300
    assert [path.name for path in paths] == ["part-0.jsonl", "part-1.jsonl", "part-2.jsonl"]
    assert not list((tmp_path / "scored").glob("*.partial"))
    from_shards = [line for path in paths for line in _rows(path)]
    assert from_shards == ray_records
    assert [row["id"] for row in ray_rows] == [record["id"] for record in local_records]
    for row, ray_record, local_record in zip(ray_rows, ray_records, local_records, strict=True):
        local_scoring = local_record["metadata"].pop("scoring")
        ray_scoring = ray_record["metadata"].pop("scoring")
        assert ray_record == local_record
        assert local_scoring["reward_model"] == ray_scoring["reward_model"] == model_dir
        for key in ("reward_a", "reward_b", "margin", "prob_a"):
            assert row[key] == pytest.approx(local_scoring[key], abs=1e-6)
            assert ray_scoring[key] == row[key]
    # The kill was real: the actor it hit was started again in a new process.
    restarted = [
        actor for actor in live_actors("_ScoreActor") if actor["ActorID"] == killed["ActorID"]
    ]
    assert restarted and restarted[0]["NumRestarts"] >= 1


def test_a_bad_record_stops_a_shard_with_the_local_engine_error(tmp_path):
    """No Ray: with on_error="raise" the read stage hands back the error that stops the
    local read, and the records before it; the run raises it when its turn comes."""
    from prefkit.data import load_feedback
    from prefkit.data.errors import DataError
    from prefkit.engines.ray_read import Shard, read_shard

    folder = tmp_path / "shards"
    _shards_with_bad_records(folder)
    with pytest.raises(DataError) as local:
        load_feedback(folder)
    first = Shard(0, str(folder / "part-0.jsonl"), str(folder))
    chunks = list(read_shard(first, {}, None, chunk_size=2))
    assert [len(chunk.records) for chunk in chunks] == [2, 1]
    assert chunks[-1].last and chunks[-1].error is not None
    assert str(DataError(**chunks[-1].error)) == str(local.value)
    assert "part-0.jsonl:4" in str(local.value)


def test_chunk_order_restores_input_order_and_refuses_a_duplicate_or_a_gap():
    """No Ray: chunks arriving out of order come out by (shard, chunk), a shard ending
    with its last chunk; a chunk seen twice, or a run without a shard's end, is an error."""
    from prefkit.engines.ray_pool import ChunkOrder
    from prefkit.engines.ray_read import Chunk

    def chunk(shard: int, index: int, last: bool = False) -> Chunk:
        return Chunk(shard, index, [], [], last=last)

    order = ChunkOrder(2)
    released = []
    for arrived in [chunk(1, 0, True), chunk(0, 1), chunk(0, 0), chunk(0, 2, True)]:
        released += [(item.shard, item.index) for item in order.add(arrived)]
    assert released == [(0, 0), (0, 1), (0, 2), (1, 0)]
    order.finish()
    with pytest.raises(RuntimeError, match="came twice"):
        order.add(chunk(0, 1))

    gap = ChunkOrder(1)
    assert gap.add(chunk(0, 1, True)) == []
    with pytest.raises(RuntimeError, match="before chunk 0 of shard 0"):
        gap.finish()


def test_fewer_chunks_than_actors_scores_without_ray_advice(ray_local, reward_model, tmp_path):
    """One chunk for two actors: scored as locally, and Ray Data's warning that tells the
    user to tune ``override_num_blocks`` of a pipeline they do not write stays out."""
    data = tmp_path / "pairs.jsonl"
    write_records(keyword_pairs(5, seed=6), data)
    local = _score(reward_model, data, tmp_path / "local.jsonl")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        on_ray = _score(
            reward_model, data, tmp_path / "ray.jsonl", "--engine", "ray", "--ray-workers", "2"
        )
    assert_same_rows(_rows(on_ray), _rows(local))
    assert not [w for w in seen if "concurrent actors" in str(w.message)]


def test_gpu_actors_are_refused_where_the_runtime_has_too_few_gpus(
    ray_local, reward_model, tmp_path, capsys
):
    """The module's runtime has no GPU: Ray would wait for one forever; prefkit says so."""
    data = tmp_path / "pairs.jsonl"
    write_records(keyword_pairs(3, seed=7), data)
    model_dir, _ = reward_model
    out = tmp_path / "gpu.jsonl"
    command = ["rm", "score", model_dir, str(data), "--out", str(out), "--engine", "ray"]
    assert main([*command, "--ray-gpus-per-worker", "1"]) == 2
    assert (
        "1 actor(s) x --ray-gpus-per-worker 1 do not fit the GPUs of the Ray runtime "
        "(0 on 1 node(s): room for 0 such actor(s))"
    ) in capsys.readouterr().err
    for bad in ("nan", "inf"):
        assert main([*command, "--ray-gpus-per-worker", bad]) == 2
        assert f"got {bad}" in capsys.readouterr().err
    assert main([*command, "--ray-gpus-per-worker", "1.5"]) == 2
    assert "a whole number of GPUs, got 1.5" in capsys.readouterr().err
    assert (
        main(["rm", "score", model_dir, str(data), "--out", str(out), "--ray-gpus-per-worker", "1"])
        == 2
    )
    assert "--ray-gpus-per-worker need --engine ray" in capsys.readouterr().err
    assert not out.exists()


GPU_RUNTIME = """
import logging, sys
import ray
# A runtime that declares one GPU: Ray schedules on it as on a real one.
ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False,
         logging_level=logging.WARNING)
from prefkit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_reserved_gpu_without_cuda_torch_is_one_clear_error(reward_model, tmp_path):
    """On a runtime with one (declared) GPU, the actors' GPU is reserved for a probe task
    before any actor starts; torch there is a CPU build, so the command stops with one line
    naming the GPU Ray gave and what to install, instead of a trace from every actor."""
    data = tmp_path / "pairs.jsonl"
    write_records(keyword_pairs(3, seed=8), data)
    model_dir, _ = reward_model
    completed = subprocess.run(
        [sys.executable, "-c", GPU_RUNTIME, "rm", "score", model_dir, str(data)]
        + ["--out", str(tmp_path / "gpu.jsonl"), "--engine", "ray", "--ray-gpus-per-worker", "1"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert completed.returncode == 2, completed.stderr[-3000:]
    assert "Ray gave it GPU [0]) found no CUDA device" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_actor_count_fits_the_cluster_cpus_and_gpus():
    from prefkit.engines.ray_runtime import ClusterSize

    cluster = ClusterSize(cpus=8, node_gpus=(2.0,))
    assert RayOptions().actor_count(cluster) == 8
    assert RayOptions(cpus_per_worker=3).actor_count(cluster) == 2
    assert RayOptions(gpus_per_worker=1).actor_count(cluster) == 2
    assert RayOptions(gpus_per_worker=0.5).actor_count(cluster) == 4
    assert RayOptions(gpus_per_worker=0.25).actor_count(cluster) == 8  # then the CPUs limit
    assert RayOptions(workers=4, gpus_per_worker=0.5).actor_count(cluster) == 4
    assert RayOptions(gpus_per_worker=1).device == "cuda" and RayOptions().device == "cpu"
    with pytest.raises(UserInputError, match=r"3 actor\(s\) x --ray-gpus-per-worker 1 do not"):
        RayOptions(workers=3, gpus_per_worker=1).actor_count(cluster)
    # As Ray places them: a fraction within one GPU, a whole number within one node.
    assert RayOptions(gpus_per_worker=0.6).actor_count(cluster) == 2  # not 3 (2 / 0.6)
    with pytest.raises(UserInputError, match=r"room for 2 such actor\(s\)"):
        RayOptions(workers=3, gpus_per_worker=0.6).actor_count(cluster)
    two_nodes = ClusterSize(cpus=8, node_gpus=(1.0, 1.0))
    assert RayOptions(gpus_per_worker=0.5).actor_count(two_nodes) == 4
    with pytest.raises(UserInputError, match=r"2 on 2 node\(s\): room for 0"):
        RayOptions(gpus_per_worker=2).actor_count(two_nodes)
    with pytest.raises(UserInputError, match="must be 0, a fraction"):
        RayOptions(gpus_per_worker=-1)


def test_a_rerun_into_the_same_shard_folder_never_mixes_two_runs(
    ray_local, reward_model, tmp_path, capsys
):
    """The folder holds an earlier run's files under this run's names; this run stops at a
    bad record in its third shard: the first two files are this run's, the third is gone
    (not the earlier run's), so what the folder holds is one run's output, if not all."""
    folder = tmp_path / "shards"
    folder.mkdir()
    for index in range(3):
        write_records(keyword_pairs(4, seed=30 + index), folder / f"part-{index}.jsonl")
    with (folder / "part-2.jsonl").open("a") as handle:
        handle.write('{"id": "broken", "prompt": \n')
    out = tmp_path / "scored"
    out.mkdir()
    for index in range(3):
        (out / f"part-{index}.jsonl").write_text('{"stale": true}\n')
    model_dir, cache = reward_model
    command = ["rm", "score", model_dir, str(folder), "--out-shards", str(out)]
    assert main([*command, "--cache-dir", cache, "--engine", "ray", "--chunk-size", "2"]) == 2
    assert "part-2.jsonl:5" in capsys.readouterr().err
    assert sorted(path.name for path in out.iterdir()) == ["part-0.jsonl", "part-1.jsonl"]
    for index in range(2):
        rows = _rows(out / f"part-{index}.jsonl")
        assert [row["id"] for row in rows] == [r.id for r in keyword_pairs(4, seed=30 + index)]


def test_a_shard_folder_inside_the_input_folder_is_refused(tmp_path):
    from prefkit.engines.ray_read import Shard
    from prefkit.engines.shard_output import shard_output_paths

    shards = [Shard(0, str(tmp_path / "in" / "a.jsonl"), str(tmp_path / "in"))]
    with pytest.raises(UserInputError, match="is inside the input folder"):
        shard_output_paths(shards, tmp_path / "in" / "scored", "jsonl")
    assert shard_output_paths(shards, tmp_path / "out", "jsonl") == [tmp_path / "out" / "a.jsonl"]
