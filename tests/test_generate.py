"""``prefkit generate``: candidate sets, determinism across batch sizes, resume after a kill.

The policy is a tiny random-weight Llama over the synthetic language of
:mod:`prefkit.align.synthetic`, saved with its locally built tokenizer.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from prefkit.align.synthetic import build_model, build_tokenizer
from prefkit.cli import main
from prefkit.data.read import read_feedback
from prefkit.data.records import RankingRecord
from prefkit.generate.config import SamplingConfig
from prefkit.generate.sampling import GumbelSampler, filter_logits

WORDS = "abcdefgh"


def save_policy(folder: Path, *, seed: int = 0, hidden_size: int = 32) -> str:
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, hidden_size=hidden_size, num_layers=1, num_heads=2, seed=seed)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> str:
    return save_policy(tmp_path_factory.mktemp("policy"))


def write_prompts(path: Path, count: int) -> Path:
    """Distinct prompts of 2..5 words (``count`` < 56), so batches mix prompt lengths."""
    with path.open("w") as handle:
        for index in range(count):
            number = index + 8  # two base-8 digits, then 0..3 words of padding
            words = [WORDS[number // 8], WORDS[number % 8], *["h"] * (index % 4)]
            handle.write(json.dumps({"id": f"q{index}", "prompt": " ".join(words) + " :"}) + "\n")
    return path


def generate(prompts: Path, policy: str, out: Path, *extra: str) -> int:
    return main(
        [
            "generate",
            str(prompts),
            "--model",
            policy,
            "--out",
            str(out),
            "--max-new-tokens",
            "6",
            "--no-progress",
            *extra,
        ]
    )


def test_candidate_sets_schema_and_counts(policy, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    lines = ['"a b :"', '{"prompt": "c :", "id": "x"}', '"a b :"', '"d e f :"']
    prompts.write_text("\n".join(lines) + "\n")
    out = tmp_path / "cands.jsonl"
    assert generate(prompts, policy, out, "--num-samples", "3", "--stop", "h") == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["prompts_read"] == 4 and summary["prompts"] == 3
    assert summary["sequences"] == 9
    assert sum(summary["finish_reasons"].values()) == 9
    records = list(read_feedback(out))
    assert [record.id for record in records] == ["1", "x", "4"]
    for record in records:
        assert isinstance(record, RankingRecord) and len(record.responses) == 3
        assert record.scores == (None, None, None)
        assert record.response_ids == tuple(f"{record.id}/{k}" for k in range(3))
        generation = record.metadata["generation"]
        assert len(generation["weights_sha256"]) == 64
        assert generation["sampling"]["num_samples"] == 3 and generation["sampling"]["stop"] == [
            "h"
        ]
        for response, info in zip(record.responses, record.metadata["responses"], strict=True):
            assert info["finish_reason"] in ("eos", "length", "stop")
            assert 0 <= info["tokens"] <= 6
            assert "h" not in response.split()  # cut before the stop string
            if info["finish_reason"] == "length":
                assert info["tokens"] == 6
    assert records[0].metadata["prompt"]["occurrences"] == 2


def test_same_seed_same_samples_at_every_batch_size(policy, tmp_path):
    """Seeds belong to (prompt, sample index), not to batches: batch 1, 5 and 64 agree.

    Checked to fail when the sampler draws the noise of a whole batch from one
    generator seeded by the first row (the outputs then differ between batch sizes).
    """
    prompts = write_prompts(tmp_path / "prompts.jsonl", 12)
    outputs = []
    for batch_size, chunk_size in (("1", "5"), ("5", "3"), ("64", "256")):
        out = tmp_path / f"b{batch_size}.jsonl"
        extra = ("--num-samples", "4", "--batch-size", batch_size, "--chunk-size", chunk_size)
        assert generate(prompts, policy, out, *extra, "--top-k", "6", "--top-p", "0.9") == 0
        outputs.append(out.read_text())
    assert outputs[0] == outputs[1] == outputs[2]
    other = tmp_path / "seed1.jsonl"
    assert generate(prompts, policy, other, "--num-samples", "4", "--seed", "1") == 0
    assert other.read_text() != outputs[0]


def test_killed_run_resumes_to_the_uninterrupted_file(policy, tmp_path):
    """SIGKILL mid-run, a half-written last line, then the same command: the files are equal."""
    prompts = write_prompts(tmp_path / "prompts.jsonl", 50)
    args = ["--num-samples", "4", "--batch-size", "1", "--chunk-size", "2", "--max-new-tokens", "8"]
    full = tmp_path / "full.jsonl"
    assert generate(prompts, policy, full, *args) == 0

    out = tmp_path / "resumed.jsonl"
    command = [
        sys.executable,
        "-m",
        "prefkit",
        "generate",
        str(prompts),
        "--model",
        policy,
        "--out",
        str(out),
        "--no-progress",
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if out.exists() and out.read_text().count("\n") >= 4:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = out.read_text().count("\n")
    assert 4 <= written < 25
    with out.open("a") as handle:
        handle.write('{"schema_version": 1, "kind": "rank')  # a line cut by the kill
    completed = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    summary = json.loads(completed.stdout.strip().splitlines()[-1])
    assert summary["resumed"] >= written and summary["generated_prompts"] == 50 - summary["resumed"]
    assert out.read_text() == full.read_text()


def test_log_file_gets_no_library_progress_bars(policy, tmp_path):
    """Off a terminal, the output is plain lines: transformers' "Loading weights" bar (a
    tqdm redrawn with carriage returns) is hidden; prefkit's own progress lines remain.
    Fails without :func:`prefkit.cli.quiet_library_progress` (the bar then reaches the log)."""
    prompts = write_prompts(tmp_path / "prompts.jsonl", 3)
    log = tmp_path / "run.log"
    env = {key: value for key, value in os.environ.items() if key != "HF_HUB_DISABLE_PROGRESS_BARS"}
    command = [sys.executable, "-m", "prefkit", "generate", str(prompts), "--model", policy]
    with log.open("w") as handle:
        subprocess.run(
            [*command, "--out", str(tmp_path / "out.jsonl"), "--num-samples", "2"],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
            check=True,
        )
    text = log.read_text()
    assert "generate: 6/6 seq" in text
    assert "Loading weights" not in text and "\r" not in text


def test_resume_refuses_a_file_from_other_settings(policy, tmp_path, capsys):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 3)
    out = tmp_path / "cands.jsonl"
    assert generate(prompts, policy, out, "--num-samples", "2") == 0
    capsys.readouterr()
    assert generate(prompts, policy, out, "--num-samples", "2", "--temperature", "0.5") == 2
    assert "other generation settings" in capsys.readouterr().err
    out.write_text("not json\n")
    assert generate(prompts, policy, out, "--num-samples", "2") == 2
    assert f"{out}:1: not a JSON record" in capsys.readouterr().err


def test_filter_logits_top_k_top_p_by_hand():
    """probabilities 0.5, 0.3, 0.15, 0.05: top-p 0.7 keeps the first two (0.5 < 0.7 <= 0.8),
    top-k 3 the first three; the kept ones are renormalised."""
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = filter_logits(logits, 1.0, 0, 0.7).exp()
    assert torch.allclose(kept, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    kept = filter_logits(logits, 1.0, 3, 1.0).exp()
    assert torch.allclose(kept, torch.tensor([[0.5, 0.3, 0.15, 0.0]]) / 0.95)


def test_gumbel_sampler_draws_from_the_softmax():
    """10,000 rows with their own seeds: token frequencies match softmax(logits / T)."""
    config = SamplingConfig(temperature=0.5)
    logits = torch.tensor([1.0, 0.5, 0.0, -1.0])
    rows = 10_000
    sampler = GumbelSampler(list(range(rows)), config)
    picks = sampler(torch.zeros((rows, 1), dtype=torch.long), logits.repeat(rows, 1)).argmax(-1)
    frequencies = torch.bincount(picks, minlength=4).float() / rows
    expected = torch.softmax(logits / 0.5, dim=0)
    assert torch.allclose(frequencies, expected, atol=0.015)


def test_shared_prompt_prefill_gives_the_same_samples(policy):
    """The N samples of a prompt share one prefill pass; the samples equal the unshared run."""
    from transformers import AutoTokenizer

    from prefkit.align.trainer import load_causal_lm
    from prefkit.generate.config import sequence_seed
    from prefkit.generate.engines import HFEngine, Request

    model, tokenizer = load_causal_lm(policy), AutoTokenizer.from_pretrained(policy)
    prompts = ["a b c :", "d :", "e f g h a :", "b b :"]
    requests = [
        Request(tuple(tokenizer(prompt)["input_ids"]), sequence_seed(0, prompt, index))
        for prompt in prompts
        for index in range(3)
    ]
    config = SamplingConfig(num_samples=3, max_new_tokens=8)
    shared = HFEngine(model, tokenizer, batch_size=7).generate(requests, config)
    plain = HFEngine(model, tokenizer, batch_size=7, shared_prefill=False).generate(
        requests, config
    )
    assert shared == plain
    assert len({completion.text for completion in shared}) > 4


def assert_shared_cache_gives_full_pass_logits(
    policy: str, input_ids: torch.Tensor, mask: torch.Tensor
) -> None:
    """Last-token logits from :meth:`HFEngine._shared_prefill`'s cache equal a full forward."""
    from transformers import AutoTokenizer

    from prefkit.align.trainer import load_causal_lm
    from prefkit.generate.engines import HFEngine

    model, tokenizer = load_causal_lm(policy).eval(), AutoTokenizer.from_pretrained(policy)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.inference_mode():
        cache = HFEngine(model, tokenizer)._shared_prefill(input_ids, mask)
        assert cache.get_seq_length() == input_ids.shape[1] - 1
        last = model(
            input_ids=input_ids[:, -1:],
            attention_mask=mask,
            position_ids=positions[:, -1:],
            cache=cache,
        ).logits[:, -1]
        full = model(input_ids=input_ids, attention_mask=mask, position_ids=positions).logits[:, -1]
    assert torch.allclose(last, full, atol=1e-5)


def test_shared_prefill_cache_gives_the_logits_of_a_full_pass(policy):
    """Left-padded rows, repeated: last-token logits from the shared cache equal a full forward.

    Checked to fail when the prefill omits the position ids of the left-padded rows.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(policy)
    rows = [tokenizer(text)["input_ids"] for text in ("d :", "d :", "a b c e :", "b :", "d :")]
    width = max(map(len, rows))
    input_ids = torch.tensor([[0] * (width - len(ids)) + ids for ids in rows])  # (5, T)
    mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in rows])  # (5, T)
    assert_shared_cache_gives_full_pass_logits(policy, input_ids, mask)


def test_shared_prefill_keeps_apart_rows_that_differ_only_in_padding(policy):
    """A prompt that starts with the pad token has the ids of a shorter left-padded prompt.

    ``<pad> d :`` (its pad a real token) and ``d :`` padded by one are the same
    ids with different masks; each must get its own cache. Checked to fail when
    the distinct prompts are found from the ids alone.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(policy)
    words = tokenizer("d :", add_special_tokens=False)["input_ids"]
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad, pad, *words]] * 4)  # (4, T): the same ids in every row
    mask = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1], [0, 1, 1, 1], [0, 0, 1, 1]])  # (4, T)
    assert_shared_cache_gives_full_pass_logits(policy, input_ids, mask)


def test_a_folder_of_prompt_lists_is_read_in_sorted_order(policy, tmp_path, capsys):
    """Files in sorted order (subfolders included); a line without an id is FILE:LINE, the
    file relative to the folder, so line numbers of two files do not collide."""
    folder = tmp_path / "prompts"
    (folder / "b").mkdir(parents=True)
    (folder / "a.jsonl").write_text('"a b :"\n{"prompt": "c :", "id": "own"}\n')
    (folder / "b" / "part.jsonl").write_text('"d e :"\n"a b :"\n')
    out = tmp_path / "cands.jsonl"
    assert generate(folder, policy, out, "--num-samples", "1") == 0
    assert "reading a prompt list" in capsys.readouterr().err
    records = list(read_feedback(out))
    assert [record.id for record in records] == ["a.jsonl:1", "own", "b/part.jsonl:1"]
    assert records[0].metadata["prompt"]["occurrences"] == 2
    (folder / "b" / "notes.csv").write_text("prompt\nx\n")
    assert generate(folder, policy, tmp_path / "o2.jsonl", "--format", "prompts") == 2
    assert "notes.csv: a prompt list is JSONL" in capsys.readouterr().err
