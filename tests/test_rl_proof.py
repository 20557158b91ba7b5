"""Proof that online RL aligns, on the synthetic language of prefkit.align.synthetic.

The rule: a completion is better the larger its share of good words (``a`` ..
``d``). An embedding reward model (a tiny random-weight BERT, frozen, with a
trained head) learns it from pairs of random completions, 20% of them
mislabelled, so it is an imperfect judge (the reward model of the generation proof,
``tests/test_generate_proof.py``). A tiny random-weight Llama policy is
then trained online on 32 prompts with

- ``rloo`` against the reward model,
- ``grpo`` with the rule itself as a Python reward function,
- ``online_dpo`` against the reward model,

the reward model given as its folder (``--reward`` spec): it scores the decoded text with
its own tokenizer (MiniLM's WordPiece), not the policy's word-level one,

and its samples on 32 other prompts (8 each, fixed seeds) are scored *by the
rule*, not by the reward model, against the samples of the untrained reference
drawn with the same seeds. The policy must beat the reference by at least
``MARGIN`` (the reference writes about 40% good words; the trained policies
65-90%). A flipped advantage sign lowers the share and a zero gradient leaves the
policy equal to the reference (the same samples, a gain of exactly 0): both
fail. The KL to the reference in the last step must be finite and positive.
"""

from __future__ import annotations

import json
import math
import random
import statistics

import pytest

from prefkit.align.synthetic import WORDS, build_model, build_tokenizer, good_fraction
from prefkit.generate.config import SamplingConfig
from prefkit.generate.engines import HFEngine, Request
from prefkit.rl.config import RLConfig
from prefkit.rl.trainer import rl
from prefkit.train.loop import TrainConfig
from test_generate_proof import world  # noqa: F401 (the reward model, a module fixture)
from test_rl_trainer import rule

MARGIN = 0.15
"""Least gain in the share of good words (by the rule) over the reference's samples."""


def _prompt(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3))) + " :"


@pytest.fixture(scope="module")
def rl_world(world):  # noqa: F811 (the fixture imported above)
    """(reward-model folder, train prompts, eval prompts, tokenizer): the reward model of the
    generation proof (the same rule-labelled pairs, 20% of the labels flipped)."""
    _, _, reward_model = world
    prompt_rng = random.Random(1)
    train_prompts = [_prompt(prompt_rng) for _ in range(32)]
    eval_prompts = [_prompt(prompt_rng) for _ in range(32)]
    return reward_model, train_prompts, eval_prompts, build_tokenizer()


def _policy(tokenizer):
    return build_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, seed=1)


def rule_score(model, tokenizer, prompts: list[str]) -> float:
    """Mean share of good words in 8 samples per prompt, with fixed per-sample seeds."""
    engine = HFEngine(model, tokenizer, batch_size=64)
    requests = [
        Request(tuple(tokenizer(prompt)["input_ids"]), 1000 + 8 * index + sample)
        for index, prompt in enumerate(prompts)
        for sample in range(8)
    ]
    completions = engine.generate(requests, SamplingConfig(num_samples=8, max_new_tokens=6))
    return statistics.fmean(good_fraction(completion.text) for completion in completions)


@pytest.mark.parametrize(
    ("algo", "reward_kind", "beta", "steps"),
    [("rloo", "rm", 0.04, 20), ("grpo", "rule", 0.04, 20), ("online_dpo", "rm", 0.1, 30)],
)
def test_policy_samples_score_higher_by_the_rule_than_the_reference(
    rl_world, tmp_path, algo, reward_kind, beta, steps
):
    reward_model, train_prompts, eval_prompts, tokenizer = rl_world
    reward = reward_model if reward_kind == "rm" else rule
    result = rl(
        train_prompts,
        _policy(tokenizer),
        tokenizer,
        reward,
        tmp_path / algo,
        RLConfig(algo=algo, max_new_tokens=6, max_steps=steps, beta=beta),
        TrainConfig(batch_size=8, lr=3e-3, schedule="constant", progress=False),
    )
    reference = rule_score(_policy(tokenizer), tokenizer, eval_prompts)
    trained = rule_score(result.model, tokenizer, eval_prompts)
    assert trained >= reference + MARGIN, (algo, reference, trained)
    last = json.loads(result.train.metrics_path.read_text().splitlines()[-1])
    assert math.isfinite(last["kl"]) and 0 < last["kl"] < 10
