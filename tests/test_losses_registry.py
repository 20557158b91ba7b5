"""The loss registry: every entry runs in the trainer from its name alone, its flags tell the
truth, the stateful helpers (KTO's KL estimate, BCO's reward shift) keep their numbers worked
out by hand, and a loss registered here trains, checkpoints and resumes without the trainer
knowing it."""

from __future__ import annotations

import ast
import copy
import json
import random
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import prefkit.align.trainer as trainer_module
from prefkit.align.synthetic import build_model, build_tokenizer, random_completion, random_prompt
from prefkit.align.trainer import SFT_TERM, AlignConfig, AlignTask, align, build_examples
from prefkit.data.records import PairwiseRecord, RankingRecord
from prefkit.losses.preference import (
    LOSSES,
    BatchContext,
    BetaConfig,
    LossSpec,
    LossState,
    MismatchedKLEstimate,
    PairedLogps,
    PreferenceLossOutput,
    RewardShift,
    StepContext,
    dpo_sigmoid,
    make_loss,
    register_loss,
    unregister_loss,
)
from prefkit.train.loop import TrainConfig

SMALL = {"max_length": 32, "max_prompt_length": 16, "save_model": False, "cache_ref": False}


def _pairs(count, seed=0):
    rng = random.Random(seed)
    return [
        PairwiseRecord(
            id=str(index),
            prompt=random_prompt(rng, num_words=1 + index % 4),
            response_a=random_completion(rng, 1 + index % 3),
            response_b=random_completion(rng, 2 + index % 2),
            outcome="a" if index % 3 else "b",
        )
        for index in range(count)
    ]


def _rankings(count, seed=0):
    rng = random.Random(seed)
    return [
        RankingRecord(
            id=f"r{index}",
            prompt=random_prompt(rng, num_words=2),
            responses=tuple(random_completion(rng, 1 + slot) for slot in range(3)),
            scores=(float(index % 3), 1.5, 3.0 - index % 2),
        )
        for index in range(count)
    ]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def policy(tokenizer):
    return build_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=0)


@pytest.fixture(scope="module")
def references(tokenizer):
    """Two references unlike each other and unlike the policy."""
    return [
        build_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=seed)
        for seed in (1, 2)
    ]


@pytest.fixture
def registered():
    """``registered(spec)`` registers a loss for this test only."""
    names = []

    def register(spec):
        names.append(register_loss(spec).name)
        return spec

    yield register
    for name in names:
        unregister_loss(name)


def _identity(totals):
    return totals


# ---------------------------------------------------------------------------
# every registered loss, from its name


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_runs_a_step_from_its_name_and_uses_a_reference_as_registered(
    name, policy, references, tokenizer
):
    """One training step of each loss through AlignTask, the reference scored in the step,
    once with each of two different references: a loss registered without a reference gives
    the same losses under both, every other loss different ones. The extra inputs are
    reported under their names, and the state survives state_dict / load_state_dict."""
    spec = LOSSES[name]
    make_loss(name)  # the defaults of every config are valid
    config = AlignConfig(loss=name, precompute_ref=False, **SMALL)
    records = _rankings(4) if spec.kind == "listwise" else _pairs(4)
    examples, _ = build_examples(records, tokenizer, config.kind, config.tokenize_config())
    indices = list(range(len(examples)))
    step_losses = []
    for reference in references:
        task = AlignTask(examples, config, pad_id=tokenizer.pad_token_id, reference_model=reference)
        task.before_step(policy, indices, [indices], _identity)
        with torch.no_grad():
            losses, metrics = task.loss(policy, task.collate(indices))
        task.after_optimizer_step(_identity)
        assert losses.shape == (len(examples),) and bool(torch.isfinite(losses).all()), name
        assert set(spec.extra_inputs) <= set(metrics), name
        step_losses.append(losses)

        saved = json.loads(json.dumps(task.state_dict()))  # checkpoints hold JSON values
        fresh = AlignTask(
            examples, config, pad_id=tokenizer.pad_token_id, reference_model=reference
        )
        fresh.load_state_dict(saved)
        assert fresh.state_dict() == task.state_dict(), name
    if spec.uses_reference:
        assert not torch.equal(step_losses[0], step_losses[1]), name
    else:
        assert torch.equal(step_losses[0], step_losses[1]), name


def test_the_trainer_names_no_loss_but_the_default_and_the_sft_term():
    """No ``loss == "kto"`` in the trainer: of the registered names, its code holds only the
    default of AlignConfig.loss and the SFT term that sft_weight adds, each once."""
    tree = ast.parse(Path(trainer_module.__file__).read_text())
    named = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in LOSSES
    ]
    assert sorted(named) == sorted([AlignConfig.loss, SFT_TERM])
    assert not hasattr(trainer_module, "REFERENCE_FREE_LOSSES")


# ---------------------------------------------------------------------------
# the stateful helpers, by hand


def _kl_context(global_batch, micro_batches, sum_over_ranks, scored):
    def log_ratios(pairs):
        scored.extend(pairs)
        return torch.tensor([i + j / 100 for i, j in pairs], dtype=torch.float32)

    return StepContext(global_batch, micro_batches, sum_over_ranks, log_ratios, torch.device("cpu"))


def test_kl_estimate_pairs_each_example_with_the_previous_one_of_the_global_batch():
    """Global batch (5, 7, 9, 11) on two ranks, one micro-batch each; the stand-in log-ratio
    of pair (i, j) is i + j / 100. Pairs: (5, 11), (7, 5), (9, 7), (11, 9): 5.11 + 7.05 +
    9.07 + 11.09 = 32.32 over 4 pairs, z0 = 8.08 on both ranks. Evaluation batch (3, 4, 5):
    (3, 5), (4, 3), (5, 4): (3.05 + 4.03 + 5.04) / 3 = 4.04; a batch of one: 0."""
    global_batch = [5, 7, 9, 11]
    rank_1, rank_1_scored = MismatchedKLEstimate(), []
    rank_1_totals = []

    def keep_rank_1(totals):
        rank_1_totals.append(totals.clone())
        return totals

    rank_1.before_step(_kl_context(global_batch, [[9, 11]], keep_rank_1, rank_1_scored))
    rank_0, rank_0_scored = MismatchedKLEstimate(), []
    rank_0.before_step(
        _kl_context(global_batch, [[5, 7]], lambda t: t + rank_1_totals[0], rank_0_scored)
    )
    assert rank_0_scored == [(5, 11), (7, 5)] and rank_1_scored == [(9, 7), (11, 9)]
    like = torch.zeros(2, dtype=torch.float64)
    training = BatchContext([5, 7], True, like, lambda pairs: pytest.fail("no scoring"))
    z0 = rank_0.inputs(training)["kl_estimate"]
    assert z0.dtype == torch.float64 and float(z0) == pytest.approx(8.08, abs=1e-5)

    scored = []
    evaluation = BatchContext(
        [3, 4, 5], False, like, _kl_context([], [], _identity, scored).mismatched_log_ratios
    )
    assert float(rank_0.inputs(evaluation)["kl_estimate"]) == pytest.approx(4.04, abs=1e-5)
    assert scored == [(3, 5), (4, 3), (5, 4)]
    single = BatchContext([3], False, like, lambda pairs: pytest.fail("no pair in one example"))
    assert float(rank_0.inputs(single)["kl_estimate"]) == 0.0

    rank_0.after_step(_identity)
    with pytest.raises(RuntimeError, match="before_step"):
        rank_0.inputs(training)
    assert rank_0.state_dict() == {}


def test_kl_estimate_does_not_depend_on_the_micro_batches():
    split, whole = MismatchedKLEstimate(), MismatchedKLEstimate()
    split.before_step(_kl_context([1, 2, 3, 4], [[1], [2, 3], [4]], _identity, []))
    whole.before_step(_kl_context([1, 2, 3, 4], [[1, 2, 3, 4]], _identity, []))
    like = torch.zeros(1)
    context = BatchContext([1], True, like, lambda pairs: pytest.fail("no scoring"))
    assert torch.equal(split.inputs(context)["kl_estimate"], whole.inputs(context)["kl_estimate"])


def test_reward_shift_is_the_mean_of_the_earlier_steps_and_survives_a_checkpoint():
    """Step 1: micro-batches with rewards (1, 2, 3) and (4) on this rank, (6) on the other:
    delta at step 1 is 0, then (1 + 2 + 3 + 4 + 6) / 5 = 3.2. Step 2: (10) here and nothing
    on the other rank: (16 + 10) / 6 = 4.333..."""
    state = RewardShift()
    like = torch.zeros(1, dtype=torch.float64)
    context = BatchContext([0], True, like, lambda pairs: pytest.fail("no scoring"))
    assert float(state.inputs(context)["reward_shift"]) == 0.0
    state.after_micro_batch(torch.tensor([1.0, 2.0, 3.0]))
    state.after_micro_batch(torch.tensor([4.0]))
    assert float(state.inputs(context)["reward_shift"]) == 0.0  # only earlier steps count
    state.after_step(lambda totals: totals + torch.tensor([6.0, 1.0], dtype=torch.float64))
    assert float(state.inputs(context)["reward_shift"]) == pytest.approx(3.2)

    resumed = RewardShift()
    resumed.load_state_dict(json.loads(json.dumps(state.state_dict())))
    assert resumed.state_dict() == state.state_dict() == {"reward_shift": {"count": 5, "mean": 3.2}}
    for running in (state, resumed):
        running.after_micro_batch(torch.tensor([10.0]))
        running.after_step(_identity)
        assert running.reward_shift.mean == pytest.approx(26 / 6)

    idle = RewardShift()  # a rank with no example in the step still folds the others' sums
    idle.after_step(lambda totals: totals + torch.tensor([3.0, 2.0], dtype=torch.float64))
    assert idle.state_dict() == {"reward_shift": {"count": 2, "mean": 1.5}}


# ---------------------------------------------------------------------------
# registering a loss


@dataclass(frozen=True)
class AnchoredConfig:
    beta: float = 0.1
    """Temperature of the log-ratios."""


def anchored_sigmoid(
    logps: PairedLogps, margin_anchor: torch.Tensor, config: AnchoredConfig | None = None
) -> PreferenceLossOutput:
    """DPO with its logit moved by an anchor: -log sigmoid(beta * (h_c - h_r) - anchor)."""
    config = config or AnchoredConfig()
    chosen_logratios, rejected_logratios = logps.logratios("anchored_sigmoid")
    logits = config.beta * (chosen_logratios - rejected_logratios) - margin_anchor.detach()
    return PreferenceLossOutput(
        losses=-F.logsigmoid(logits),
        chosen_rewards=config.beta * chosen_logratios.detach(),
        rejected_rewards=config.beta * rejected_logratios.detach(),
    )


class MarginAnchor(LossState):
    """The anchor is the mean reward margin of every pair of the earlier steps."""

    def __init__(self) -> None:
        self.margin_total, self.pairs, self.steps = 0.0, 0, 0
        self._step_totals = torch.zeros(2, dtype=torch.float64)

    def inputs(self, batch: BatchContext) -> dict[str, torch.Tensor]:
        anchor = self.margin_total / self.pairs if self.pairs else 0.0
        return {"margin_anchor": batch.like.new_tensor(anchor)}

    def after_micro_batch(self, rewards: torch.Tensor) -> None:
        chosen, rejected = rewards.double().chunk(2)  # (2B,): chosen then rejected
        self._step_totals += torch.stack(
            [(chosen - rejected).sum(), chosen.new_tensor(len(chosen))]
        )

    def after_step(self, sum_over_ranks) -> None:
        margin_sum, pairs = sum_over_ranks(self._step_totals).tolist()
        self.margin_total += margin_sum
        self.pairs += round(pairs)
        self.steps += 1
        self._step_totals = torch.zeros(2, dtype=torch.float64)

    def state_dict(self) -> dict:
        return {"margin_total": self.margin_total, "pairs": self.pairs, "steps": self.steps}

    def load_state_dict(self, state) -> None:
        self.margin_total, self.pairs, self.steps = (
            state["margin_total"],
            state["pairs"],
            state["steps"],
        )


ANCHORED = LossSpec(
    "anchored_sigmoid",
    anchored_sigmoid,
    AnchoredConfig,
    "paired",
    ("margin_anchor",),
    state=MarginAnchor,
)


def _lines(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def _task_state(out_dir):
    newest = max((out_dir / "checkpoints").iterdir(), key=lambda path: int(path.name[5:]))
    return json.loads((newest / "state.json").read_text())["task"]


def _align_anchored(policy, reference, tokenizer, out_dir, callbacks=(), **train_args):
    model = copy.deepcopy(policy)
    settings = {"batch_size": 8, "lr": 1e-2, "progress": False, "schedule": "constant"}
    settings.update(epochs=2, checkpoint_every_steps=1, **train_args)
    result = align(
        _pairs(16),
        model,
        tokenizer,
        out_dir,
        AlignConfig(loss="anchored_sigmoid", loss_args={"beta": 0.5}, **SMALL),
        TrainConfig(**settings),
        ref_model=copy.deepcopy(reference),
        callbacks=callbacks,
    )
    return model, result


def test_a_registered_loss_trains_with_its_state_through_the_unchanged_trainer(
    registered, policy, references, tokenizer, tmp_path
):
    """16 pairs, batches of 8, two epochs: 4 steps of 8 pairs each. The anchor of step k is
    the mean reward margin of steps 1 .. k - 1, i.e. the mean of their logged
    ``reward_margin``; with 4 micro-batches per step the anchors are the same."""
    registered(ANCHORED)
    _align_anchored(policy, references[0], tokenizer, tmp_path / "one")
    _align_anchored(policy, references[0], tokenizer, tmp_path / "four", grad_accum_steps=4)
    lines = _lines(tmp_path / "one")
    assert len(lines) == 4 and lines[0]["margin_anchor"] == 0.0
    for step in range(1, 4):
        earlier = [line["reward_margin"] for line in lines[:step]]
        expected = sum(earlier) / step
        assert lines[step]["margin_anchor"] == pytest.approx(expected, abs=1e-6), step
    assert abs(lines[3]["margin_anchor"]) > 1e-3  # not trivially 0 == 0
    accumulated = [line["margin_anchor"] for line in _lines(tmp_path / "four")]
    assert accumulated == pytest.approx([line["margin_anchor"] for line in lines], abs=1e-6)
    state = _task_state(tmp_path / "one")
    assert state["steps"] == 4 and state["pairs"] == 32


def test_a_registered_losss_state_survives_checkpoint_and_resume(
    registered, policy, references, tokenizer, tmp_path
):
    registered(ANCHORED)

    class Stop(Exception):
        pass

    def stop_at_step_3(event):
        if event.kind == "checkpoint" and event.global_step == 3:
            raise Stop

    full, _ = _align_anchored(policy, references[0], tokenizer, tmp_path / "full")
    with pytest.raises(Stop):
        _align_anchored(policy, references[0], tokenizer, tmp_path / "cut", [stop_at_step_3])
    assert _task_state(tmp_path / "cut")["steps"] == 3
    resumed, result = _align_anchored(policy, references[0], tokenizer, tmp_path / "cut")
    assert result.train.resumed_from is not None and result.train.resumed_from.name == "step-3"
    for (name, expected), actual in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(actual, expected), name
    full_lines, cut_lines = _lines(tmp_path / "full"), _lines(tmp_path / "cut")
    assert [m["margin_anchor"] for m in cut_lines] == [m["margin_anchor"] for m in full_lines]
    assert [m["loss"] for m in cut_lines] == [m["loss"] for m in full_lines]
    assert _task_state(tmp_path / "cut") == _task_state(tmp_path / "full")


def test_a_registered_reference_free_loss_gets_no_reference(
    registered, policy, tokenizer, tmp_path
):
    """Registered without a reference, a loss's container has none, and align refuses one."""

    def chosen_nll(logps: PairedLogps, config: BetaConfig | None = None) -> PreferenceLossOutput:
        assert logps.ref_chosen_logps is None and logps.ref_rejected_logps is None
        return PreferenceLossOutput(
            losses=-logps.policy_chosen_logps,
            chosen_rewards=logps.policy_chosen_logps.detach(),
            rejected_rewards=logps.policy_rejected_logps.detach(),
        )

    registered(LossSpec("chosen_nll", chosen_nll, BetaConfig, "paired", uses_reference=False))
    config = AlignConfig(loss="chosen_nll", **SMALL)
    assert not config.needs_reference
    examples, _ = build_examples(_pairs(2), tokenizer, "paired", config.tokenize_config())
    task = AlignTask(examples, config, pad_id=tokenizer.pad_token_id)
    losses, metrics = task.loss(policy, task.collate([0, 1]))
    torch.testing.assert_close(losses, -metrics["chosen_logps"])
    with pytest.raises(ValueError, match="uses no reference model"):
        align(_pairs(2), policy, tokenizer, tmp_path, config, ref_model=policy)


def test_a_state_that_does_not_supply_the_registered_inputs_is_named(
    registered, policy, references, tokenizer
):
    registered(
        LossSpec("forgetful", dpo_sigmoid, BetaConfig, "paired", ("anchor",), state=LossState)
    )
    config = AlignConfig(loss="forgetful", precompute_ref=False, **SMALL)
    examples, _ = build_examples(_pairs(2), tokenizer, "paired", config.tokenize_config())
    task = AlignTask(examples, config, pad_id=0, reference_model=references[0])
    with pytest.raises(ValueError, match=r"takes the extra inputs \['anchor'\].*supplied \[\]"):
        task.loss(policy, task.collate([0, 1]))


def test_registration_checks_the_entry(registered):
    with pytest.raises(ValueError, match="already registered"):
        register_loss(LossSpec("sigmoid", dpo_sigmoid, BetaConfig, "paired"))
    with pytest.raises(ValueError, match="no state to supply"):
        LossSpec("shifted", dpo_sigmoid, BetaConfig, "paired", ("reward_shift",))
    with pytest.raises(ValueError, match="scores_mismatched_pairs needs a reference"):
        LossSpec(
            "kl",
            dpo_sigmoid,
            BetaConfig,
            "paired",
            uses_reference=False,
            state=MismatchedKLEstimate,
            scores_mismatched_pairs=True,
        )
    with pytest.raises(ValueError, match="kind must be"):
        LossSpec("graded", dpo_sigmoid, BetaConfig, "pointwise")
    with pytest.raises(ValueError, match="unknown loss 'plain'"):
        AlignConfig(loss="plain")
    registered(LossSpec("plain", dpo_sigmoid, BetaConfig, "paired"))
    assert AlignConfig(loss="plain", loss_args={"beta": 0.2}).loss_spec is LOSSES["plain"]
    assert make_loss("plain", beta=0.2).keywords["config"] == BetaConfig(beta=0.2)
