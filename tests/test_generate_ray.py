"""``prefkit generate --executor ray`` on a real local Ray runtime (2 CPUs, one per module).

The local run is the reference: on a prompt list and on a folder of feedback shards (with
duplicates across the shards, a malformed row and an empty prompt, skipped), the Ray run
must write the local file byte for byte (every response is sampled from its own seed),
the same rejects file and the same counts; a file a killed local run left is completed to
the same file. A generating actor killed with SIGKILL mid-run (a real process death) must
neither lose nor duplicate a record: Ray restarts it and runs its chunks again.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from conftest import import_or_skip_outside_ci
from prefkit.cli import main
from ray_helpers import live_actors
from test_generate import generate, save_policy, write_prompts

ray = import_or_skip_outside_ci("ray", allow_module_level=True)

SAMPLING = ("--num-samples", "3", "--top-k", "6", "--batch-size", "4", "--chunk-size", "3")
ON_RAY = ("--executor", "ray", "--ray-workers", "2")


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> str:
    return save_policy(tmp_path_factory.mktemp("policy-ray"))


def _summary(stdout: str) -> dict:
    """The run's JSON summary, less its timings."""
    summary = json.loads(stdout.strip().splitlines()[-1])
    for key in ("seconds", "tokens_per_s", "out"):
        summary.pop(key)
    return summary


def _lines(stderr: str, marker: str) -> list[str]:
    return [line for line in stderr.splitlines() if marker in line]


def test_a_prompt_list_generates_as_the_local_run_and_resumes(ray_local, policy, tmp_path, capsys):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 20)
    local = tmp_path / "local.jsonl"
    assert generate(prompts, policy, local, *SAMPLING) == 0
    local_summary = _summary(capsys.readouterr().out)
    on_ray = tmp_path / "ray.jsonl"
    assert generate(prompts, policy, on_ray, *SAMPLING, *ON_RAY) == 0
    captured = capsys.readouterr()
    assert "ray: 2 generating actor(s)" in captured.err
    assert local_summary["prompts"] == 20 and local_summary["sequences"] == 60
    assert _summary(captured.out) == local_summary
    assert on_ray.read_text() == local.read_text()

    # A file cut after 7 records and half a line (as a killed run leaves it) is completed.
    lines = local.read_text().splitlines(keepends=True)
    resumed = tmp_path / "resumed.jsonl"
    resumed.write_text("".join(lines[:7]) + lines[7][:40])
    assert generate(prompts, policy, resumed, *SAMPLING, *ON_RAY) == 0
    summary = _summary(capsys.readouterr().out)
    assert summary["resumed"] == 7 and summary["generated_prompts"] == 13
    assert resumed.read_text() == local.read_text()
    # Nothing left to generate: the file stays, and no Ray run starts.
    assert generate(prompts, policy, resumed, *SAMPLING, *ON_RAY) == 0
    captured = capsys.readouterr()
    assert _summary(captured.out)["resumed"] == 20 and "generating actor" not in captured.err
    assert resumed.read_text() == local.read_text()


def _pair(record_id: str, prompt: str) -> str:
    return json.dumps(
        {
            "schema_version": 1,
            "kind": "pairwise",
            "id": record_id,
            "prompt": prompt,
            "response_a": "a",
            "response_b": "b",
            "outcome": "a",
        }
    )


def test_shards_with_bad_rows_give_the_local_output_rejects_and_counts(
    ray_local, policy, tmp_path, capsys
):
    folder = tmp_path / "shards"
    folder.mkdir()
    words = "abcdefg"
    first = [_pair(f"s0-{i}", f"{words[i]} {words[-1 - i]} :") for i in range(6)]
    first.insert(2, '{"id": "broken", "prompt": ')  # malformed JSON
    (folder / "part-0.jsonl").write_text("\n".join(first) + "\n")
    second = [_pair(f"s1-{i}", f"{words[i]} {words[i]} :") for i in range(5)]
    second.insert(1, _pair("again", "a g :"))  # the prompt of s0-0: generated once
    second.insert(3, _pair("empty", "  "))
    (folder / "part-1.jsonl").write_text("\n".join(second) + "\n")
    skip = ("--on-error", "skip")
    local = tmp_path / "local.jsonl"
    assert generate(folder, policy, local, *SAMPLING, *skip) == 0
    local_out = capsys.readouterr()
    on_ray = tmp_path / "ray.jsonl"
    assert generate(folder, policy, on_ray, *SAMPLING, *skip, *ON_RAY) == 0
    ray_out = capsys.readouterr()

    local_text = local.read_text()
    # 13 records: "again" has s0-0's prompt, s1-3 has s0-3's ("d d :"), "empty" is skipped.
    assert len(local_text.splitlines()) == 10
    assert on_ray.read_text() == local_text
    assert json.loads(local_text.splitlines()[0])["metadata"]["prompt"]["occurrences"] == 2
    local_rejects = Path(f"{local}.rejects.jsonl").read_text()
    assert [json.loads(line)["reason"] for line in local_rejects.splitlines()][0] == (
        "malformed_json"
    )
    assert Path(f"{on_ray}.rejects.jsonl").read_text() == local_rejects.replace(
        "local.jsonl", "ray.jsonl"
    )
    assert "13 records -> 10 distinct prompts (2 duplicates generated once, 1 empty skipped)" in (
        local_out.err
    )
    for marker in (": read ", "prompts: "):
        local_lines = [
            line.replace("local.jsonl", "ray.jsonl") for line in _lines(local_out.err, marker)
        ]
        assert _lines(ray_out.err, marker) == local_lines, marker
    assert _summary(ray_out.out) == _summary(local_out.out)


def test_best_of_n_with_a_reward_model_picks_as_the_local_run(ray_local, policy, tmp_path, capsys):
    """--best-of 3 --reward RM: each actor loads the reward model once too; the records, the
    picks and the scores are the local run's (scores to 1e-6: the actors run torch on one
    thread, this process on its own)."""
    from prefkit.data import write_records
    from test_rm_train import keyword_pairs, make_tiny_bert

    backbone = make_tiny_bert(tmp_path / "backbone")
    write_records(keyword_pairs(40, seed=3), tmp_path / "train.jsonl")
    cache = str(tmp_path / "cache")
    rm = str(tmp_path / "rm")
    train = ["rm", "train", str(tmp_path / "train.jsonl"), "--out", rm, "--backbone", backbone]
    assert main([*train, "--epochs", "1", "--cache-dir", cache, "--no-progress"]) == 0
    prompts = write_prompts(tmp_path / "prompts.jsonl", 8)
    best = ("--best-of", "3", "--reward", rm, "--cache-dir", cache, "--chunk-size", "3")
    local = tmp_path / "local.jsonl"
    assert generate(prompts, policy, local, *best) == 0
    on_ray = tmp_path / "ray.jsonl"
    assert generate(prompts, policy, on_ray, *best, *ON_RAY) == 0
    capsys.readouterr()
    local_rows = [json.loads(line) for line in local.read_text().splitlines()]
    ray_rows = [json.loads(line) for line in on_ray.read_text().splitlines()]
    assert len(local_rows) == 8
    for ray_row, local_row in zip(ray_rows, local_rows, strict=True):
        local_best = local_row["metadata"].pop("best_of")
        ray_best = ray_row["metadata"].pop("best_of")
        assert ray_best["index"] == local_best["index"]
        assert ray_best["scores"] == pytest.approx(local_best["scores"], abs=1e-6)
        assert ray_row.pop("ratings")["reward"] == pytest.approx(
            local_row.pop("ratings")["reward"], abs=1e-6
        )
        assert ray_row == local_row


def test_a_user_error_in_an_actor_is_the_local_error(ray_local, policy, tmp_path, capsys):
    """Conversations for a tokenizer without a chat template: the actor's error reaches the
    command as the local run's message (exit 2), not as a Ray traceback; the chunks before
    it are written, as locally."""
    prompts = tmp_path / "prompts.jsonl"
    rows = [
        '"a b :"',
        '"c d :"',
        json.dumps({"id": "chat", "prompt": [{"role": "user", "content": "a"}]}),
    ]
    prompts.write_text("\n".join(rows) + "\n")
    extra = ("--num-samples", "1", "--chunk-size", "2")
    local = tmp_path / "local.jsonl"
    assert generate(prompts, policy, local, *extra) == 2
    local_error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "the tokenizer has no chat_template" in local_error
    on_ray = tmp_path / "ray.jsonl"
    assert generate(prompts, policy, on_ray, *extra, *ON_RAY) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == local_error
    assert on_ray.read_text() == local.read_text() and len(local.read_text().splitlines()) == 2


def test_an_actor_killed_mid_run_loses_and_duplicates_nothing(ray_local, policy, tmp_path):
    """SIGKILL to one of the two actors when the first chunk reaches this process, with
    about 40 chunks of one prompt still to generate: the prompts it held are generated
    again by its restarted process, and the file is still the local run's, once each."""
    from transformers import AutoConfig

    from prefkit.engines.ray_generate import RayGeneration
    from prefkit.engines.ray_runtime import RayOptions
    from prefkit.generate.config import SamplingConfig
    from prefkit.generate.prompts import read_prompt_list, unique_prompts
    from prefkit.generate.run import generate_candidates, weights_digest

    prompts = write_prompts(tmp_path / "prompts.jsonl", 40)
    extra = ("--num-samples", "2", "--chunk-size", "1", "--batch-size", "2")
    local = tmp_path / "local.jsonl"
    assert generate(prompts, policy, local, *extra) == 0

    # The command's settings, so that metadata.generation is the local run's.
    sampling = SamplingConfig(num_samples=2, max_new_tokens=6)
    context = AutoConfig.from_pretrained(policy).max_position_embeddings
    generation = {
        "model": policy,
        "weights_sha256": weights_digest(policy),
        "engine": "hf",
        "sampling": sampling.to_dict(),
        "max_prompt_length": context - 6,
        "chat_template": True,
    }
    items, _ = unique_prompts(read_prompt_list(prompts), source=str(prompts))
    run = RayGeneration(
        policy,
        policy,
        sampling=sampling,
        generation=generation,
        max_prompt_length=context - 6,
        options=RayOptions(workers=2),
        batch_size=2,
    )
    killed: list[dict] = []
    earlier = {actor["ActorID"] for actor in live_actors("_GenerateActor")}  # other tests' pools

    def alive() -> list[dict]:
        return [
            actor
            for actor in live_actors("_GenerateActor")
            if actor["State"] == "ALIVE" and actor["ActorID"] not in earlier
        ]

    def killing(chunks):
        for done, result in enumerate(run(chunks)):
            if not killed:
                # The second actor may still be starting (the CPUs of an earlier pool are
                # given back as it shuts down).
                deadline = time.monotonic() + 30
                while len(alive()) < 2 and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert len(alive()) == 2
                killed.append(alive()[0])
                os.kill(killed[0]["Pid"], signal.SIGKILL)
                assert done < 20
            yield result

    out = tmp_path / "ray.jsonl"
    summary = generate_candidates(
        items,
        None,
        None,
        sampling,
        out,
        generation=generation,
        max_prompt_length=context - 6,
        chunk_size=1,
        show_progress=False,
        executor=killing,
    )
    assert summary.generated_prompts == 40 and summary.sequences == 80
    assert out.read_text() == local.read_text()
    # The kill was real: the actor it hit was started again in a new process.
    restarted = [a for a in live_actors("_GenerateActor") if a["ActorID"] == killed[0]["ActorID"]]
    assert restarted and restarted[0]["NumRestarts"] >= 1


def test_options_that_do_not_go_with_the_executor_are_refused(policy, tmp_path, capsys):
    """No Ray run: --ray-* without --executor ray, and the local executor's vllm engine or
    device with it, are errors that say what to give."""
    prompts = write_prompts(tmp_path / "prompts.jsonl", 2)
    out = tmp_path / "out.jsonl"
    assert generate(prompts, policy, out, "--ray-workers", "2") == 2
    assert "--ray-workers need --executor ray" in capsys.readouterr().err
    assert generate(prompts, policy, out, *ON_RAY, "--engine", "vllm") == 2
    assert "--executor ray runs the hf engine on its actors" in capsys.readouterr().err
    assert generate(prompts, policy, out, *ON_RAY, "--device", "cuda") == 2
    assert "the GPUs --ray-gpus-per-worker reserves for them" in capsys.readouterr().err
    assert generate(prompts, policy, out, "--ray-gpus-per-worker", "1") == 2
    assert "--ray-gpus-per-worker need --executor ray" in capsys.readouterr().err
    assert not out.exists()


def test_generating_actors_on_gpus_need_gpus_in_the_runtime(ray_local, policy, tmp_path, capsys):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 2)
    out = tmp_path / "out.jsonl"
    assert generate(prompts, policy, out, *ON_RAY, "--ray-gpus-per-worker", "0.5") == 2
    assert "2 actor(s) x --ray-gpus-per-worker 0.5 do not fit the GPUs of the Ray runtime" in (
        capsys.readouterr().err
    )
