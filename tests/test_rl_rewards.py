"""``prefkit.rl.rewards``: every kind of --reward spec against the thing it stands for.

Reward models are real trained folders (a tiny BERT embedding model, an ensemble of
them, a tiny Llama sequence classifier), reward servers are real ``prefkit serve``
apps and real HTTP servers on 127.0.0.1, and the policy tokenizer is the synthetic
language's word-level tokenizer, unlike either reward model's.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from prefkit.align.synthetic import build_tokenizer
from prefkit.data.records import Message
from prefkit.errors import UserInputError
from prefkit.rl.rewards import Reward, load_reward
from prefkit.rm.ensemble import train_ensemble
from prefkit.rm.model import RewardModel
from prefkit.rm.train import RMTrainConfig, default_train_config
from serve_helpers import ThreadServer, train_small_model
from test_rm_train import keyword_pairs, make_tiny_bert

PROMPTS = ["say something", "say something", "describe it"]
COMPLETIONS = ["an excellent apple river", "stone cloud green table", "music paper excellent"]


def policy_ids(tokenizer, completions):
    return [tokenizer(text, add_special_tokens=False)["input_ids"] for text in completions]


@pytest.fixture(scope="module")
def rm_folder(tmp_path_factory) -> Path:
    return train_small_model(tmp_path_factory.mktemp("rl-reward-rm"))


@pytest.fixture(scope="module")
def policy_tokenizer():
    # The synthetic words plus the test's words: a vocabulary of 20-odd words, word-level,
    # where the reward model's BERT tokenizer has 30,522 word pieces.
    words = sorted({word for text in PROMPTS + COMPLETIONS for word in text.split()})
    return build_tokenizer(extra_words=words)


# ------------------------------------------------------------------ Python functions


def length_reward(prompts, completions, completion_ids, **columns):
    return [float(len(text.split())) for text in completions]


def test_python_spec_imports_from_the_working_directory(tmp_path, monkeypatch) -> None:
    (tmp_path / "my_rewards_rl.py").write_text(
        "def words(prompts, completions, completion_ids, **columns):\n"
        "    return [len(c.split()) + columns['bonus'][i] for i, c in enumerate(completions)]\n"
    )
    monkeypatch.chdir(tmp_path)
    with load_reward(["python:my_rewards_rl:words"]) as reward:
        output = reward(PROMPTS, COMPLETIONS, [[1]] * 3, bonus=[0.5, 0.0, 2.0])
    assert reward.names == ["python:my_rewards_rl:words"]
    assert output.rewards == [4.5, 4.0, 5.0]


def test_weights_sum_and_none_follows_trl(policy_tokenizer) -> None:
    def only_first_two(prompts, completions, completion_ids, **columns):
        return [1.0, -2.0, None]

    def never(prompts, completions, completion_ids, **columns):
        return [None, None, None]

    ids = policy_ids(policy_tokenizer, COMPLETIONS)
    with load_reward([length_reward, only_first_two], [0.5, 2.0]) as reward:
        output = reward(PROMPTS, COMPLETIONS, ids)
    # 0.5 * words + 2 * value; the third sample has only the length reward.
    assert output.rewards == [0.5 * 4 + 2.0, 0.5 * 4 - 4.0, 0.5 * 3]
    assert list(output.per_function.values()) == [[4.0, 4.0, 3.0], [1.0, -2.0, None]]
    with load_reward([never, never]) as reward:
        output = reward(PROMPTS, COMPLETIONS, ids)
    assert output.rewards == [None, None, None]
    assert len(reward.names) == 2 and reward.names[0] != reward.names[1]


def test_completion_ids_and_columns_reach_the_function(policy_tokenizer) -> None:
    seen = {}

    def record(prompts, completions, completion_ids, **columns):
        seen.update(prompts=prompts, ids=completion_ids, columns=columns)
        return [0.0] * len(completions)

    ids = policy_ids(policy_tokenizer, COMPLETIONS)
    conversation = (Message("user", "hi"),)
    load_reward([record])([conversation, *PROMPTS[1:]], COMPLETIONS, ids, answer=["x", "y", "z"])
    assert seen["prompts"][0] == conversation
    assert seen["ids"] == ids
    assert seen["columns"] == {"answer": ["x", "y", "z"]}


async def async_reward(prompts, completions, completion_ids, **columns):
    await asyncio.sleep(0.01)
    return [float(len(text)) for text in completions]


def test_async_functions_run_with_and_without_a_running_loop() -> None:
    expected = [float(len(text)) for text in COMPLETIONS]
    reward = load_reward([async_reward])
    try:
        assert reward(PROMPTS, COMPLETIONS, [[1]] * 3).rewards == expected

        async def inside_a_loop():
            return reward(PROMPTS, COMPLETIONS, [[1]] * 3).rewards

        # Called from a thread that runs an event loop: asyncio.run would refuse here.
        assert asyncio.run(inside_a_loop()) == expected
    finally:
        reward.close()
    assert reward.functions[0]._thread is None


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([1.0, 2.0], r"returned 2 values for 3 samples"),
        ([1.0, float("nan"), 0.0], r"sample 1: nan is not finite"),
        ([1.0, 2.0, float("inf")], r"sample 2: inf is not finite"),
        ([1.0, "2", 0.0], r"sample 1: '2' \(str\) is not a number"),
        ({"a": 1}, r"returned dict"),
        (3.0, r"returned float"),
    ],
)
def test_bad_values_name_the_function_and_the_sample(values, message) -> None:
    def bad(prompts, completions, completion_ids, **columns):
        return values

    with pytest.raises(UserInputError, match=message) as raised:
        load_reward([length_reward, bad])(PROMPTS, COMPLETIONS, [[1]] * 3)
    assert "test_bad_values_name_the_function_and_the_sample.<locals>.bad" in str(raised.value)


def test_a_function_that_raises_is_named() -> None:
    def broken(prompts, completions, completion_ids, **columns):
        raise KeyError("answer")

    with pytest.raises(UserInputError, match=r"broken raised KeyError on samples 0 to 2"):
        load_reward([broken])(PROMPTS, COMPLETIONS, [[1]] * 3)


def test_bad_specs_are_clear_errors(tmp_path, rm_folder) -> None:
    with pytest.raises(UserInputError, match="2 weights for 1"):
        load_reward([length_reward], [1.0, 2.0])
    with pytest.raises(UserInputError, match="expected python:package.module:function"):
        load_reward(["python:nocolon"])
    with pytest.raises(UserInputError, match="cannot import"):
        load_reward(["python:no_such_module_here:f"])
    with pytest.raises(UserInputError, match="has no function 'nothing'"):
        load_reward(["python:json:nothing"])
    with pytest.raises(UserInputError, match="not a reward-model folder"):
        load_reward([str(tmp_path)])
    with pytest.raises(UserInputError, match="is one reward model, not an ensemble"):
        load_reward([str(rm_folder)], uncertainty_penalty=0.5)
    with pytest.raises(UserInputError, match="none of the --reward specs is one"):
        load_reward([length_reward], uncertainty_penalty=0.5)
    with pytest.raises(UserInputError, match="finite number >= 0"):
        load_reward([length_reward], uncertainty_penalty=-1.0)


# --------------------------------------------------------------------- reward models


def test_reward_model_scores_the_text_not_the_policy_ids(rm_folder, policy_tokenizer) -> None:
    ids = policy_ids(policy_tokenizer, COMPLETIONS)
    with load_reward([str(rm_folder)], policy_tokenizer=policy_tokenizer) as reward:
        output = reward(PROMPTS, COMPLETIONS, ids)
    model = RewardModel.load(rm_folder)
    model.cache = None
    direct = model.score(PROMPTS, COMPLETIONS)
    np.testing.assert_allclose(output.rewards, direct, rtol=1e-6, atol=1e-6)
    # What the reward model would see if it were handed the policy's ids: its own tokenizer
    # reads them as other word pieces, and the rewards differ.
    garbled = [model.encoder.tokenizer.decode(row) for row in ids]
    assert garbled != COMPLETIONS
    assert not np.allclose(model.score(PROMPTS, garbled), direct, atol=1e-3)
    assert reward.names == [f"rm:{rm_folder}"]


def test_conversation_prompts_are_rendered_for_the_reward_model(rm_folder) -> None:
    conversation = (Message("system", "Be nice."), Message("user", "say something"))
    with load_reward([str(rm_folder)]) as reward:
        output = reward([conversation], COMPLETIONS[:1], [[1]])
    model = RewardModel.load(rm_folder)
    model.cache = None
    direct = model.score(["system: Be nice.\n\nuser: say something"], COMPLETIONS[:1])
    np.testing.assert_allclose(output.rewards, direct, rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def ensemble_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("rl-reward-ensemble")
    backbone = make_tiny_bert(folder / "backbone")
    config = RMTrainConfig(
        backbone=backbone,
        cache_dir=str(folder / "cache"),
        features="response",
        max_length=64,
        train=default_train_config(
            "embedding", epochs=2, batch_size=16, lr=3e-3, device="cpu", progress=False
        ),
    )
    train_ensemble(keyword_pairs(64, seed=3), config, folder / "rm", 3, log=lambda line: None)
    return folder / "rm"


def test_uncertainty_penalty_is_mean_minus_l_std(ensemble_folder) -> None:
    model = RewardModel.load(ensemble_folder)
    model.cache = None
    assert model.spec.ensemble_size == 3
    members = model.predict_members(PROMPTS, COMPLETIONS).mean(axis=2)  # (3, N)
    assert members.std(axis=0).min() > 1e-4  # the members disagree, so the test can fail
    # By hand: mean and population std of the three members' rewards.
    mean = (members[0] + members[1] + members[2]) / 3
    std = np.sqrt(((members - mean) ** 2).sum(axis=0) / 3)
    with load_reward([str(ensemble_folder)], uncertainty_penalty=0.5) as reward:
        penalised = reward(PROMPTS, COMPLETIONS, [[1]] * 3).rewards
    np.testing.assert_allclose(penalised, mean - 0.5 * std, rtol=1e-5, atol=1e-6)
    with load_reward([str(ensemble_folder)]) as reward:
        plain = reward(PROMPTS, COMPLETIONS, [[1]] * 3).rewards
    np.testing.assert_allclose(plain, mean, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def classifier_folder(tmp_path_factory) -> Path:
    from transformers import LlamaForSequenceClassification

    from test_eval_hf_scorers import CHAT_TEMPLATE, build_tokenizer, tiny_config

    folder = tmp_path_factory.mktemp("rl-reward-classifier")
    tokenizer = build_tokenizer(CHAT_TEMPLATE)
    torch.manual_seed(4)
    LlamaForSequenceClassification(tiny_config(tokenizer, num_labels=1)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_sequence_classifier_folder(classifier_folder, policy_tokenizer) -> None:
    from prefkit.eval.scorers import SequenceClassifierScorer

    prompts = ["What is the capital of France?", "Name a colour."]
    completions = [" Paris.", " Red"]
    ids = policy_ids(policy_tokenizer, completions)
    with load_reward([str(classifier_folder)], policy_tokenizer=policy_tokenizer) as reward:
        output = reward(prompts, completions, ids)
    direct = SequenceClassifierScorer(classifier_folder, device="cpu", progress=False)
    np.testing.assert_allclose(output.rewards, direct.score(prompts, completions), rtol=1e-6)
    assert output.rewards[0] != output.rewards[1]


# --------------------------------------------------------------------- reward servers


def test_a_served_model_gives_the_local_rewards(rm_folder) -> None:
    model = RewardModel.load(rm_folder)
    model.cache = None
    direct = model.score(PROMPTS, COMPLETIONS)
    with ThreadServer.for_folder(rm_folder) as server:
        with load_reward([server.url], timeout_s=10, retries=1) as reward:
            output = reward(PROMPTS, COMPLETIONS, [[1]] * 3)
    np.testing.assert_allclose(output.rewards, direct, rtol=1e-5, atol=1e-5)
    assert reward.names == [server.url]


class _FaultyHandler(http.server.BaseHTTPRequestHandler):
    """Answers 503 to the first ``failures`` requests, then rewards; or sleeps ``delay``."""

    failures = 0
    delay = 0.0
    seen: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (the http.server spelling)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append(body)
        time.sleep(type(self).delay)
        if len(type(self).seen) <= type(self).failures:
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "busy"}}')
            return
        answer = json.dumps({"rewards": [float(len(q)) for q in body["query"]]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def faulty_server():
    handler = type("Handler", (_FaultyHandler,), {"seen": [], "failures": 0, "delay": 0.0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield handler, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_server_5xx_is_retried_then_answers(faulty_server) -> None:
    handler, url = faulty_server
    handler.failures = 2
    with load_reward([url], retries=3, timeout_s=5) as reward:
        output = reward(PROMPTS, COMPLETIONS, [[1]] * 3)
    assert len(handler.seen) == 3  # two 503s, then the answer
    queries = [prompt + completion for prompt, completion in zip(PROMPTS, COMPLETIONS)]
    assert handler.seen[-1] == {"query": queries, "prompts": PROMPTS}
    assert output.rewards == [float(len(q)) for q in queries]


def test_server_that_keeps_failing_is_a_clear_error(faulty_server) -> None:
    handler, url = faulty_server
    handler.failures = 100
    with load_reward([url], retries=2, timeout_s=5) as reward:
        with pytest.raises(UserInputError, match=rf"reward server {url}.*after 3 attempts.*503"):
            reward(PROMPTS, COMPLETIONS, [[1]] * 3)
    assert len(handler.seen) == 3


def test_server_that_times_out_is_a_clear_error(faulty_server) -> None:
    handler, url = faulty_server
    handler.delay = 1.0
    with load_reward([url], retries=1, timeout_s=0.2) as reward:
        with pytest.raises(UserInputError, match=r"after 2 attempts.*Timeout"):
            reward(PROMPTS, COMPLETIONS, [[1]] * 3)


def test_conversation_prompts_use_the_policy_chat_template(faulty_server) -> None:
    handler, url = faulty_server
    tokenizer = build_tokenizer(extra_words=["hi"])
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    conversation = (Message("user", "hi"),)
    with load_reward([url], policy_tokenizer=tokenizer) as reward:
        reward([conversation], ["a b"], [[1]])
    assert handler.seen[-1] == {
        "query": ["<user>hi<assistant>a b"],
        "prompts": ["<user>hi<assistant>"],
    }


def test_reward_is_a_context_manager_that_closes_clients(faulty_server) -> None:
    _, url = faulty_server
    with load_reward([url]) as reward:
        assert isinstance(reward, Reward)
    assert reward.functions[0].client._http.is_closed
