"""Rewards for online training: reward models, Python functions and reward servers behind one call.

:func:`load_reward` turns the ``--reward`` specs of ``prefkit rl`` into a :class:`Reward`,
which scores a batch of samples and returns one reward per sample
(:class:`RewardOutput`). A spec is one of:

- a folder written by ``prefkit rm train`` (any mode, an ensemble included);
- a Hugging Face sequence-classification folder with one output (safetensors only,
  no remote code);
- ``python:package.module:function``, a function of TRL's reward-function shape
  ``f(prompts, completions, completion_ids, **columns) -> list[float | None]``
  (``async def`` functions too); the current directory is searched for the module
  first, as ``python -m`` does;
- an ``http://`` or ``https://`` URL of a reward server that speaks OpenRLHF's
  ``/get_reward`` shape (``prefkit serve`` does), called through
  :class:`prefkit.serve.RewardClient` with a timeout and retries;
- in Python, any callable of the function shape.

Reward models always score the decoded completion *text*, tokenized again with their
own tokenizer: the policy's token ids are never fed to a reward model, so a reward
model with another tokenizer than the policy scores what the policy wrote, not
garbage. ``completion_ids`` reach Python functions only.

Combining several rewards follows TRL's ``GRPOTrainer``: the reward of a sample is
the weighted sum of the values of the functions that gave one; a function returns
None for a sample it does not apply to (a math checker on a poem), and only a sample
that no function rewards gets None (the trainer leaves it out of its group).

With an ensemble reward model (``prefkit rm train --ensemble K``) and
``uncertainty_penalty`` L, the model's reward is ``mean - L * std`` over its members'
rewards, the uncertainty-weighted optimisation of Coste et al. (2023), "Reward Model
Ensembles Help Mitigate Overoptimization", sec. 3.2 (UWO); the std is the population
std (``ddof = 0``) over the K members.
"""

from __future__ import annotations

import abc
import asyncio
import importlib
import inspect
import math
import numbers
import os
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prefkit.data.records import Text, render_text
from prefkit.errors import UserInputError

__all__ = ["Reward", "RewardFunction", "RewardOutput", "load_reward"]


@dataclass(frozen=True)
class RewardOutput:
    """The rewards of one batch of samples."""

    rewards: list[float | None]
    """Weighted sum over the functions that rewarded the sample; None where none did."""
    per_function: dict[str, list[float | None]]
    """Each function's own (unweighted) values, keyed by :attr:`Reward.names`."""


class RewardFunction(abc.ABC):
    """One reward: a name, a call on a batch, and resources to release.

    Subclasses implement :meth:`values`; :class:`Reward` checks what they return.
    """

    name: str

    @abc.abstractmethod
    def values(
        self,
        prompts: Sequence[Text],
        completions: Sequence[str],
        completion_ids: Sequence[Sequence[int]],
        columns: dict[str, Sequence[Any]],
    ) -> Any:
        """One value (a number or None) per sample."""

    def close(self) -> None:  # noqa: B027 (a hook: most rewards hold nothing to release)
        """Release clients and threads (nothing by default)."""


class ModelReward(RewardFunction):
    """A ``prefkit rm train`` folder; raw rewards (not normalised: GRPO and RLOO centre them
    per group anyway), ``mean - L * std`` for an ensemble with an uncertainty penalty L."""

    def __init__(
        self, path: Path, *, device: str, uncertainty_penalty: float, batch_size: int = 64
    ):
        from prefkit.rm.model import RewardModel

        self.name = f"rm:{path}"
        self.model = RewardModel.load(path, device=device)
        if hasattr(self.model, "cache"):
            # Completions are new texts at every step: storing their embeddings would only
            # grow the embedding cache.
            self.model.cache = None
        self.batch_size = batch_size
        self.uncertainty_penalty = uncertainty_penalty
        if uncertainty_penalty > 0 and self.model.spec.ensemble_size < 2:
            raise UserInputError(
                f"--uncertainty-penalty {uncertainty_penalty}: {path} is one reward model, not "
                "an ensemble, so its rewards have no spread to penalise; train one with "
                "`prefkit rm train --ensemble K` or leave the penalty at 0"
            )

    def values(self, prompts, completions, completion_ids, columns) -> np.ndarray:
        texts = [render_text(prompt) for prompt in prompts]
        if self.uncertainty_penalty == 0:
            return self.model.score(texts, list(completions), batch_size=self.batch_size)
        members = self.model.predict_members(texts, list(completions), batch_size=self.batch_size)
        member_rewards = members.mean(axis=2)  # (K, N): each member's reward per sample
        return member_rewards.mean(axis=0) - self.uncertainty_penalty * member_rewards.std(axis=0)


class ClassifierReward(RewardFunction):
    """A Hugging Face sequence-classification reward model (one output), through
    :class:`prefkit.eval.scorers.SequenceClassifierScorer`: its chat template when it has
    one, left-truncated to its context."""

    def __init__(self, path: Path, *, device: str):
        from prefkit.eval.scorers import ScorerError, SequenceClassifierScorer

        self.name = f"rm:{path}"
        try:
            self.scorer = SequenceClassifierScorer(path, device=device, progress=False)
        except ScorerError as error:
            raise UserInputError(f"--reward {path}: {error}") from None

    def values(self, prompts, completions, completion_ids, columns) -> np.ndarray:
        return self.scorer.score(list(prompts), list(completions))


class FunctionReward(RewardFunction):
    """A Python function of TRL's reward-function shape; coroutines run on a private event
    loop in a thread of its own (so this works whether or not the caller runs a loop)."""

    def __init__(self, function: Callable[..., Any], name: str):
        self.function = function
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def values(self, prompts, completions, completion_ids, columns) -> Any:
        result = self.function(
            prompts=list(prompts),
            completions=list(completions),
            completion_ids=[list(ids) for ids in completion_ids],
            **{key: list(value) for key, value in columns.items()},
        )
        if inspect.isawaitable(result):
            result = asyncio.run_coroutine_threadsafe(_awaited(result), self._event_loop()).result()
        return result

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=self._loop.run_forever, name=f"reward {self.name}", daemon=True
            )
            self._thread.start()
        return self._loop

    def close(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()
            self._loop = self._thread = None


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


class HTTPReward(RewardFunction):
    """A reward server with OpenRLHF's ``/get_reward`` shape.

    Each query is the prompt text followed by the completion, and ``prompts`` carries
    the prompt text, so the server scores exactly the completion. The prompt text is
    what the policy was given: a conversation prompt rendered by the policy
    tokenizer's chat template (with the generation prompt) when it has one, as
    OpenRLHF's trainers send it, else :func:`prefkit.data.records.render_text`.
    """

    def __init__(
        self,
        url: str,
        *,
        policy_tokenizer: Any,
        timeout_s: float,
        retries: int,
        api_key: str | None,
    ):
        from prefkit.serve.client import RewardClient

        self.name = url
        self.policy_tokenizer = policy_tokenizer
        self.client = RewardClient(url, api_key=api_key, timeout=timeout_s, max_retries=retries)

    def prompt_text(self, prompt: Text) -> str:
        if isinstance(prompt, str):
            return prompt
        tokenizer = self.policy_tokenizer
        if tokenizer is not None and getattr(tokenizer, "chat_template", None):
            messages = [message.to_dict() for message in prompt]
            return tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        return render_text(prompt)

    def values(self, prompts, completions, completion_ids, columns) -> list[float]:
        from prefkit.serve.client import RewardClientError

        texts = [self.prompt_text(prompt) for prompt in prompts]
        queries = [text + completion for text, completion in zip(texts, completions)]
        try:
            return self.client.get_reward(queries, texts)
        except RewardClientError as error:
            raise UserInputError(f"reward server {self.name}: {error}") from None

    def close(self) -> None:
        self.client.close()


class Reward:
    """Several reward functions, weighted; call it on a batch of samples.

    ``prompts[i]`` is the prompt of sample i (repeated for each of its generations),
    ``completions[i]`` the decoded completion, ``completion_ids[i]`` the policy's token
    ids of it, and each keyword column holds one value per sample. Every value is
    checked: a function that raises, returns a wrong number of values, or a value that
    is not a finite number or None is a :class:`prefkit.errors.UserInputError` naming
    the function and the sample.
    """

    def __init__(self, functions: Sequence[RewardFunction], weights: Sequence[float]):
        if not functions:
            raise UserInputError("no reward given; pass at least one --reward")
        if len(weights) != len(functions):
            raise UserInputError(
                f"{len(weights)} reward weights for {len(functions)} rewards; give one weight each"
            )
        for weight in weights:
            if not isinstance(weight, numbers.Real) or not math.isfinite(weight):
                raise UserInputError(f"reward weight {weight!r}: expected a finite number")
        self.functions = list(functions)
        self.names = _unique_names([function.name for function in functions])
        self.weights = [float(weight) for weight in weights]

    def __call__(
        self,
        prompts: Sequence[Text],
        completions: Sequence[str],
        completion_ids: Sequence[Sequence[int]],
        **columns: Sequence[Any],
    ) -> RewardOutput:
        count = len(completions)
        for field, values in (("prompts", prompts), ("completion_ids", completion_ids)):
            if len(values) != count:
                raise ValueError(f"{len(values)} {field} for {count} completions")
        for key, values in columns.items():
            if len(values) != count:
                raise ValueError(f"column {key!r} has {len(values)} values for {count} completions")
        per_function: dict[str, list[float | None]] = {}
        for name, function in zip(self.names, self.functions):
            try:
                values = function.values(prompts, completions, completion_ids, dict(columns))
            except UserInputError:
                raise
            except Exception as error:
                raise UserInputError(
                    f"reward {name} raised {type(error).__name__} on samples 0 to {count - 1}: "
                    f"{error}"
                ) from error
            per_function[name] = _checked(name, values, count)
        rewards: list[float | None] = []
        for index in range(count):
            given = [
                (weight, values[index])
                for weight, values in zip(self.weights, per_function.values())
                if values[index] is not None
            ]
            rewards.append(sum(w * v for w, v in given) if given else None)  # type: ignore[operator]
        return RewardOutput(rewards=rewards, per_function=per_function)

    def close(self) -> None:
        for function in self.functions:
            function.close()

    def __enter__(self) -> Reward:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _checked(name: str, values: Any, count: int) -> list[float | None]:
    """The values of reward ``name`` as floats and Nones, or an error naming the sample."""
    if isinstance(values, np.ndarray):
        values = values.tolist()
    if isinstance(values, str | bytes | dict) or not isinstance(values, Sequence):
        raise UserInputError(
            f"reward {name} returned {type(values).__name__}; expected a list of {count} "
            "numbers (or None)"
        )
    if len(values) != count:
        raise UserInputError(
            f"reward {name} returned {len(values)} values for {count} samples; expected one "
            "per sample (None for a sample it does not reward)"
        )
    out: list[float | None] = []
    for index, value in enumerate(values):
        if value is None:
            out.append(None)
            continue
        if not isinstance(value, numbers.Real):
            raise UserInputError(
                f"reward {name}, sample {index}: {value!r} ({type(value).__name__}) is not a "
                "number; return a float, or None for no reward"
            )
        number = float(value)
        if not math.isfinite(number):
            raise UserInputError(
                f"reward {name}, sample {index}: {number} is not finite; return a finite "
                "number, or None for no reward"
            )
        out.append(number)
    return out


def _unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out


def _import_function(spec: str) -> Callable[..., Any]:
    """The function of ``python:package.module:function``, the current directory first on the
    module search path."""
    target = spec.removeprefix("python:")
    module_name, _, function_name = target.rpartition(":")
    if not module_name or not function_name:
        raise UserInputError(
            f"--reward {spec}: expected python:package.module:function, e.g. "
            "python:my_rewards:length_reward"
        )
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise UserInputError(f"--reward {spec}: cannot import {module_name}: {error}") from None
    finally:
        if added:
            sys.path.remove(cwd)
    function = getattr(module, function_name, None)
    if not callable(function):
        raise UserInputError(f"--reward {spec}: {module_name} has no function {function_name!r}")
    return function


def _function_name(function: Callable[..., Any]) -> str:
    module = getattr(function, "__module__", None) or "?"
    qualname = getattr(function, "__qualname__", None) or type(function).__name__
    return f"python:{module}:{qualname}"


def _load_one(
    spec: str | Callable[..., Any],
    *,
    policy_tokenizer: Any,
    device: str,
    uncertainty_penalty: float,
    timeout_s: float,
    retries: int,
    api_key: str | None,
) -> RewardFunction:
    if callable(spec) and not isinstance(spec, str):
        return FunctionReward(spec, _function_name(spec))
    if not isinstance(spec, str) or not spec:
        raise UserInputError(f"--reward {spec!r}: expected a folder, python:module:function or URL")
    if spec.startswith("python:"):
        return FunctionReward(_import_function(spec), spec)
    if spec.startswith(("http://", "https://")):
        return HTTPReward(
            spec,
            policy_tokenizer=policy_tokenizer,
            timeout_s=timeout_s,
            retries=retries,
            api_key=api_key,
        )
    from prefkit.eval.scorers import is_prefkit_model_folder

    path = Path(spec)
    if is_prefkit_model_folder(path):
        return ModelReward(path, device=device, uncertainty_penalty=uncertainty_penalty)
    if (path / "config.json").is_file():
        return ClassifierReward(path, device=device)
    raise UserInputError(
        f"--reward {spec}: not a reward-model folder (no config.json), a "
        "python:module:function spec or an http(s):// URL"
    )


def load_reward(
    specs: Sequence[str | Callable[..., Any]],
    weights: Sequence[float] | None = None,
    *,
    policy_tokenizer: Any = None,
    device: str = "cpu",
    uncertainty_penalty: float = 0.0,
    timeout_s: float = 30.0,
    retries: int = 3,
    api_key: str | None = None,
) -> Reward:
    """A :class:`Reward` from ``--reward`` specs (see the module docstring) and their weights
    (default 1 each). ``policy_tokenizer`` formats conversation prompts for reward servers;
    ``uncertainty_penalty`` applies to ensemble reward-model folders; ``timeout_s``,
    ``retries`` and ``api_key`` to reward servers (``api_key`` defaults to the
    ``PREFKIT_API_KEY`` environment variable)."""
    if isinstance(specs, str) or callable(specs):
        specs = [specs]  # type: ignore[list-item]
    if uncertainty_penalty < 0 or not math.isfinite(uncertainty_penalty):
        raise UserInputError(
            f"--uncertainty-penalty {uncertainty_penalty}: expected a finite number >= 0"
        )
    if timeout_s <= 0 or retries < 0:
        raise UserInputError(
            f"reward timeout {timeout_s} s and retries {retries}: expected > 0 and >= 0"
        )
    weights = [1.0] * len(specs) if weights is None else list(weights)
    if len(weights) != len(specs):
        raise UserInputError(
            f"--reward-weights has {len(weights)} weights for {len(specs)} --reward specs; "
            "give one each"
        )
    key = api_key if api_key is not None else os.environ.get("PREFKIT_API_KEY") or None
    functions: list[RewardFunction] = []
    try:
        for spec in specs:
            functions.append(
                _load_one(
                    spec,
                    policy_tokenizer=policy_tokenizer,
                    device=device,
                    uncertainty_penalty=uncertainty_penalty,
                    timeout_s=timeout_s,
                    retries=retries,
                    api_key=key,
                )
            )
        if uncertainty_penalty > 0 and not any(isinstance(f, ModelReward) for f in functions):
            raise UserInputError(
                f"--uncertainty-penalty {uncertainty_penalty}: it applies to an ensemble "
                "reward-model folder, and none of the --reward specs is one"
            )
        return Reward(functions, weights)
    except BaseException:
        for function in functions:
            function.close()
        raise
