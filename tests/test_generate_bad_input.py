"""``prefkit generate`` on bad input: each case is a clear error or a counted skip."""

from __future__ import annotations

import json
import shutil

import pytest

from prefkit.generate.engines import vllm_unavailable_reason
from test_generate import generate, save_policy

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }} {{ message['content'] }} "
    "{% endfor %}{% if add_generation_prompt %}assistant{% endif %}"
)


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> str:
    return save_policy(tmp_path_factory.mktemp("policy-bad"))


def _prompts(path, *rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_prompt_longer_than_the_context_is_cut_from_the_left_and_counted(policy, tmp_path, capsys):
    """The synthetic Llama has a context of 512 tokens; a 600-word prompt with 6 new tokens
    keeps its last 506 tokens (BOS stays first), and the cut is counted."""
    long_prompt = " ".join(["a"] * 599) + " :"
    prompts = _prompts(tmp_path / "p.jsonl", long_prompt, "b :")
    out = tmp_path / "out.jsonl"
    assert generate(prompts, policy, out, "--num-samples", "2") == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["truncated_prompts"] == 1 and summary["prompt_tokens_dropped"] == 601 - 506
    first = json.loads(out.read_text().splitlines()[0])
    assert first["metadata"]["prompt"] == {"tokens": 506, "truncated_tokens": 95, "occurrences": 1}
    assert generate(prompts, policy, tmp_path / "o2.jsonl", "--max-prompt-length", "510") == 2
    assert "exceed the model's context of 512" in capsys.readouterr().err
    assert generate(prompts, policy, tmp_path / "o3.jsonl", "--max-new-tokens", "512") == 2
    assert "leaves no room for a prompt" in capsys.readouterr().err


def test_empty_prompts_fail_naming_the_record_or_are_counted(policy, tmp_path, capsys):
    prompts = _prompts(
        tmp_path / "p.jsonl", {"id": "ok", "prompt": "a :"}, {"id": "e", "prompt": " "}
    )
    assert generate(prompts, policy, tmp_path / "out.jsonl") == 2
    assert "record 'e': the prompt is empty" in capsys.readouterr().err
    out = tmp_path / "skip.jsonl"
    assert generate(prompts, policy, out, "--on-error", "skip", "--num-samples", "2") == 0
    captured = capsys.readouterr()
    assert "1 empty skipped" in captured.err
    assert json.loads(captured.out.strip().splitlines()[-1])["prompts"] == 1


def test_model_folder_without_a_tokenizer(policy, tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(f"{policy}/{name}", bare / name)
    prompts = _prompts(tmp_path / "p.jsonl", "a :")
    assert generate(prompts, str(bare), tmp_path / "out.jsonl") == 2
    error = capsys.readouterr().err
    assert "no tokenizer" in error and "--tokenizer PATH" in error
    assert generate(prompts, str(bare), tmp_path / "out.jsonl", "--tokenizer", policy) == 0


def test_conversations_need_a_chat_template(policy, tmp_path, capsys):
    conversation = [{"role": "user", "content": "a b :"}]
    prompts = _prompts(tmp_path / "p.jsonl", {"prompt": conversation})
    assert generate(prompts, policy, tmp_path / "out.jsonl") == 2
    assert "no chat_template" in capsys.readouterr().err
    raw = tmp_path / "raw.jsonl"
    assert generate(prompts, policy, raw, "--no-chat-template", "--num-samples", "2") == 0
    assert json.loads(raw.read_text())["metadata"]["generation"]["chat_template"] is False

    from transformers import AutoTokenizer

    templated = tmp_path / "templated"
    shutil.copytree(policy, templated)
    tokenizer = AutoTokenizer.from_pretrained(templated)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(templated)
    out = tmp_path / "chat.jsonl"
    capsys.readouterr()
    assert generate(prompts, str(templated), out, "--num-samples", "2") == 0
    # "user a b : assistant" after BOS: 'user' and 'assistant' are unknown words, one token each.
    assert json.loads(out.read_text())["metadata"]["prompt"]["tokens"] == 6


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--num-samples", "0"), "num-samples must be an integer >= 1"),
        (("--best-of", "4"), "--best-of N needs --reward RM"),
        (("--top-p", "0"), "top-p must be in (0, 1]"),
        (("--batch-size", "0"), "--batch-size must be >= 1"),
    ],
)
def test_bad_settings_are_errors(policy, tmp_path, capsys, extra, message):
    prompts = _prompts(tmp_path / "p.jsonl", "a :")
    assert generate(prompts, policy, tmp_path / "out.jsonl", *extra) == 2
    assert message in capsys.readouterr().err


def test_best_of_and_num_samples_must_agree(policy, tmp_path, capsys):
    prompts = _prompts(tmp_path / "p.jsonl", "a :")
    code = generate(
        prompts,
        policy,
        tmp_path / "o.jsonl",
        "--best-of",
        "4",
        "--num-samples",
        "3",
        "--reward",
        "x",
    )
    assert code == 2 and "disagree" in capsys.readouterr().err


def test_vllm_engine_falls_back_to_hf_saying_why(policy, tmp_path, capsys):
    reason = vllm_unavailable_reason()
    if reason is None:
        pytest.skip("vLLM and a GPU are present here; the fallback is not taken")
    prompts = _prompts(tmp_path / "p.jsonl", "a :")
    out = tmp_path / "out.jsonl"
    assert generate(prompts, policy, out, "--engine", "vllm", "--num-samples", "2") == 0
    assert f"using hf instead of vllm: {reason}" in capsys.readouterr().err
    assert json.loads(out.read_text())["metadata"]["generation"]["engine"] == "hf"


def test_vllm_engine_writes_the_same_schema(policy, tmp_path, capsys):
    reason = vllm_unavailable_reason()
    if reason is not None:
        pytest.skip(f"the vllm engine cannot run here: {reason}")
    prompts = _prompts(tmp_path / "p.jsonl", "a b :", "c :")
    hf, vllm = tmp_path / "hf.jsonl", tmp_path / "vllm.jsonl"
    assert generate(prompts, policy, hf, "--num-samples", "3") == 0
    assert generate(prompts, policy, vllm, "--num-samples", "3", "--engine", "vllm") == 0
    for hf_line, vllm_line in zip(
        hf.read_text().splitlines(), vllm.read_text().splitlines(), strict=True
    ):
        hf_record, vllm_record = json.loads(hf_line), json.loads(vllm_line)
        assert hf_record.keys() == vllm_record.keys()
        assert hf_record["id"] == vllm_record["id"]
        assert len(vllm_record["responses"]) == 3
        assert vllm_record["metadata"]["generation"]["engine"] == "vllm"
        for info in vllm_record["metadata"]["responses"]:
            assert info["finish_reason"] in ("eos", "length", "stop")


def test_best_of_n_skips_nan_scores_and_counts_them(policy, tmp_path):
    """A reward model's NaN is no score: written as null, never the best, counted.

    Checked to fail when the NaN count is left out of the summary.
    """
    from transformers import AutoTokenizer

    from prefkit.align.trainer import load_causal_lm
    from prefkit.generate.config import SamplingConfig
    from prefkit.generate.engines import HFEngine
    from prefkit.generate.prompts import PromptItem
    from prefkit.generate.run import generate_candidates

    tokenizer = AutoTokenizer.from_pretrained(policy)
    engine = HFEngine(load_causal_lm(policy), tokenizer, batch_size=4)
    sampling = SamplingConfig(num_samples=3, max_new_tokens=4)
    by_sample = {"a :": [float("nan")] * 3, "b c :": [float("nan"), 2.0, 1.0]}

    def scorer(prompts: list[str], responses: list[str]) -> list[float]:
        return [by_sample[prompt][index % 3] for index, prompt in enumerate(prompts)]

    out = tmp_path / "best.jsonl"
    summary = generate_candidates(
        [PromptItem("all-nan", "a :"), PromptItem("one-nan", "b c :")],
        engine,
        tokenizer,
        sampling,
        out,
        generation={"model": policy},
        max_prompt_length=32,
        scorer=scorer,
        best_of=True,
        show_progress=False,
    )
    assert summary.unscored == 4 and summary.to_dict()["unscored_responses"] == 4
    assert "4 responses without a score (NaN)" in summary.summary()
    all_nan, one_nan = (json.loads(line) for line in out.read_text().splitlines())
    assert all_nan["ratings"]["reward"] is None
    assert all_nan["metadata"]["best_of"]["scores"] == [None, None, None]
    assert one_nan["ratings"]["reward"] == 2.0
    assert one_nan["metadata"]["best_of"] == {"n": 3, "scores": [None, 2.0, 1.0], "index": 1}
    assert summary.best_scores == [2.0]


def test_a_bug_in_generation_keeps_its_traceback(policy, tmp_path, monkeypatch):
    """A ValueError the library did not raise as a user error propagates out of main."""

    def broken(*args, **kwargs):
        raise ValueError("an internal shape mismatch")

    monkeypatch.setattr("prefkit.generate.run.generate_candidates", broken)
    prompts = _prompts(tmp_path / "p.jsonl", "a :")
    with pytest.raises(ValueError, match="internal shape mismatch"):
        generate(prompts, policy, tmp_path / "out.jsonl")
