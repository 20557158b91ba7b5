"""Scorers: anything that gives a reward to (prompt, response) pairs, or judges two responses.

Two small protocols:

- :class:`Scorer`: ``name`` and ``score(prompts, responses) -> (N,) float array``,
  one reward per (prompt, response) item, batched, with a progress bar.
- :class:`PairJudge`: ``name`` and ``compare_pairs(prompts, responses_a,
  responses_b) -> list[JudgeVerdict]``, for judges that only say which of two
  responses is better (an LLM judge).

Implementations:

- :class:`LengthScorer`: reward = response length in characters (a baseline that
  exposes length bias; on MT data, a sanity floor).
- :class:`PrefkitRewardModelScorer`: a folder written by ``prefkit rm train``.
- :class:`ServedRewardModelScorer`: such a model served by ``prefkit serve``, at an
  ``http://`` or ``https://`` URL (through :class:`prefkit.serve.RewardClient`).
- :class:`SequenceClassifierScorer`: a local Hugging Face
  ``AutoModelForSequenceClassification`` reward model with one output.
- :class:`ImplicitRewardScorer`: a policy as an implicit reward model, as
  RewardBench scores DPO models (Lambert et al., 2024, "RewardBench: Evaluating
  Reward Models for Language Modeling", sec. 3; ``rewardbench/dpo.py``,
  ``DPOInference.get_batch_logps``).
- :class:`ChatJudge`: an LLM judge behind an OpenAI-compatible
  ``/v1/chat/completions`` endpoint, asked in both orders.

:func:`load_scorer` turns a command-line MODEL argument into one of these.

Where this departs from RewardBench's implicit reward
-----------------------------------------------------
* The DPO reward ``beta * (log pi(y|x) - log pi_ref(y|x))`` is reported without
  ``beta``: the factor does not change any ranking or accuracy (RewardBench's
  inference code leaves it out too), but it does scale margins, so calibration
  of this reward is only meaningful up to that factor.
* Items are tokenized as prefkit's alignment trainer tokenizes them
  (:func:`prefkit.align.tokenize.encode_completion`), so a policy trained with
  ``prefkit align`` is scored on the sequences it was trained on: BOS is put
  first only when the tokenizer adds BOS itself (RewardBench always prepends
  it, which doubles or invents one for some tokenizers); EOS ends the response,
  as in RewardBench. With a chat template, plain prompts and responses become a
  user and an assistant turn, as RewardBench formats them.
* RewardBench cuts the prompt to its last 128 tokens when prompt plus the longer
  response exceed 2048 tokens; here an item longer than the model's context
  (``max_length``) keeps the last ``max_length // 2`` prompt tokens and cuts the
  response at its end, and the scorer's ``notes`` count every cut.

Torch and transformers are imported only by the scorers that need them, so the
length scorer and the judge work (and this module imports) without them.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np

from prefkit.data.records import Message, Text, render_text, text_length
from prefkit.progress import progress_bar

if TYPE_CHECKING:
    import torch

__all__ = [
    "Scorer",
    "PairJudge",
    "ScorerError",
    "LengthScorer",
    "PrefkitRewardModelScorer",
    "ServedRewardModelScorer",
    "API_KEY_ENV",
    "SequenceClassifierScorer",
    "ImplicitRewardScorer",
    "IMPLICIT_REWARDS",
    "JudgeVerdict",
    "JudgeError",
    "ChatJudge",
    "is_prefkit_model_folder",
    "load_scorer",
]

ImplicitReward = Literal["dpo", "sum", "mean", "norm"]
IMPLICIT_REWARDS: tuple[str, ...] = ("dpo", "sum", "mean", "norm")
"""``dpo``: sum log pi - sum log pi_ref over response tokens (needs a reference);
``sum``, ``mean``, ``norm``: reference-free sum, mean and negative L2 norm of the
response's token log-probs (RewardBench's ``ref_free_norm`` = sum / avg / norm)."""


class ScorerError(Exception):
    """A scorer cannot be built or used as asked; the message says what to change."""


@runtime_checkable
class Scorer(Protocol):
    """Gives one reward per (prompt, response) item."""

    name: str

    def score(self, prompts: Sequence[Text], responses: Sequence[Text]) -> np.ndarray:
        """(N,) rewards for N items, ``prompts[i]`` with ``responses[i]``; higher is better."""
        ...


@runtime_checkable
class PairJudge(Protocol):
    """Says which of two responses to a prompt is better."""

    name: str

    def compare_pairs(
        self, prompts: Sequence[Text], responses_a: Sequence[Text], responses_b: Sequence[Text]
    ) -> list[JudgeVerdict]:
        """One verdict per pair, in order."""
        ...


def _check_items(prompts: Sequence[Text], responses: Sequence[Text]) -> None:
    if len(prompts) != len(responses):
        raise ValueError(
            f"got {len(prompts)} prompts and {len(responses)} responses; give one prompt per response"
        )


def _progress_bar(total: int, description: str, enabled: bool) -> Any:
    """A tqdm bar on stderr; hidden when ``enabled`` is false or stderr is not a terminal."""
    return progress_bar(total=total, description=description, unit="item", enabled=enabled)


def _length_sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[np.ndarray]:
    """Item indices in batches of similar length, longest first (padding stays small and
    an out-of-memory error shows up in the first batch, not the last)."""
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


# ------------------------------------------------------------------------ length


@dataclass
class LengthScorer:
    """Reward = the response's length in characters (content of every turn)."""

    name: str = "length"

    def score(self, prompts: Sequence[Text], responses: Sequence[Text]) -> np.ndarray:
        _check_items(prompts, responses)
        return np.array([text_length(response) for response in responses], dtype=np.float64)


# ------------------------------------------------------------ prefkit reward model


def is_prefkit_model_folder(path: str | Path) -> bool:
    """True for a folder written by ``prefkit rm train`` (its config.json names a prefkit
    ``format_version`` and ``mode``; a Hugging Face config.json has neither)."""
    config_path = Path(path) / "config.json"
    if not config_path.is_file():
        return False
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "format_version" in config and "mode" in config


class PrefkitRewardModelScorer:
    """A prefkit reward-model folder (``prefkit rm train --out DIR``)."""

    def __init__(
        self,
        path: str | Path,
        *,
        name: str | None = None,
        batch_size: int = 64,
        device: str | None = None,
        progress: bool = True,
    ):
        try:
            from prefkit.rm import RewardModel  # type: ignore[attr-defined]
        except ImportError:
            from prefkit.rm.model import RewardModel

        self.name = name or str(path)
        self.batch_size = batch_size
        self.progress = progress
        self.notes: list[str] = []
        self.model = RewardModel.load(path, device=device or _default_device())

    @property
    def temperature(self) -> float:
        """The model's calibration temperature: the engine's calibration uses sigmoid(margin / T)."""
        return self.model.spec.temperature

    def score(self, prompts: Sequence[Text], responses: Sequence[Text]) -> np.ndarray:
        _check_items(prompts, responses)
        rewards = np.zeros(len(responses), dtype=np.float64)
        # Chunks of many batches: the model sorts each chunk by length itself.
        chunk = self.batch_size * 16
        with _progress_bar(len(responses), f"scoring with {self.name}", self.progress) as bar:
            for start in range(0, len(responses), chunk):
                stop = min(start + chunk, len(responses))
                rewards[start:stop] = self.model.score(
                    [render_text(text) for text in prompts[start:stop]],
                    [render_text(text) for text in responses[start:stop]],
                    batch_size=self.batch_size,
                )
                bar.update(stop - start)
        return rewards


# ------------------------------------------------------------ a served reward model

API_KEY_ENV = "PREFKIT_API_KEY"
"""The environment variable a served model's API key is read from when none is given."""


class ServedRewardModelScorer:
    """A reward model served by ``prefkit serve`` at ``url``, scored as if it were local.

    Texts are rendered here as :class:`PrefkitRewardModelScorer` renders them and sent
    ``batch_size`` items per ``/v1/score`` request; the calibration temperature comes
    from ``/v1/model``, so every metric equals that of the model's folder. The server's
    503 answers and connection errors are retried (see :class:`~prefkit.serve.RewardClient`);
    anything else, and a server that stays unreachable, is a :class:`ScorerError`.
    """

    def __init__(
        self,
        url: str,
        *,
        name: str | None = None,
        api_key: str | None = None,
        batch_size: int = 64,
        timeout: float = 60.0,
        max_retries: int = 4,
        progress: bool = True,
    ):
        try:
            from prefkit.serve.client import RewardClient
        except ImportError as error:
            raise ScorerError(
                f"{url}: a served model needs httpx ({error}); pip install 'prefkit[serve]'"
            ) from None
        if batch_size < 1:
            raise ScorerError(f"{url}: the batch size must be >= 1, got {batch_size}")
        self.name = name or url
        self.url = url
        self.batch_size = batch_size
        self.progress = progress
        self.notes: list[str] = []
        self.client = RewardClient(url, api_key=api_key, timeout=timeout, max_retries=max_retries)
        self.info = self._call(self.client.model_info)
        if "temperature" not in self.info:
            raise ScorerError(
                f"{url}: /v1/model does not give the model's calibration temperature; serve "
                "the model with this version of 'prefkit serve'"
            )
        self.temperature = float(self.info["temperature"])
        """The served model's calibration temperature, as :attr:`PrefkitRewardModelScorer.temperature`."""

    def _call(self, function: Any, *args: Any) -> Any:
        from prefkit.serve.client import RewardClientError

        try:
            return function(*args)
        except RewardClientError as error:
            if error.status == 401:
                raise ScorerError(
                    f"{self.url}: the server refused the API key (HTTP 401); give the key it "
                    f"was started with, with --api-key KEY or ${API_KEY_ENV}"
                ) from None
            if error.status is None:
                raise ScorerError(
                    f"{self.url}: cannot reach the reward server ({error}); is 'prefkit serve' "
                    "running there?"
                ) from None
            raise ScorerError(f"{self.url}: the reward server answered {error}") from None

    def score(self, prompts: Sequence[Text], responses: Sequence[Text]) -> np.ndarray:
        _check_items(prompts, responses)
        rewards = np.zeros(len(responses), dtype=np.float64)
        with _progress_bar(len(responses), f"scoring with {self.name}", self.progress) as bar:
            for start in range(0, len(responses), self.batch_size):
                stop = min(start + self.batch_size, len(responses))
                rewards[start:stop] = self._call(
                    self.client.score,
                    [render_text(text) for text in prompts[start:stop]],
                    [render_text(text) for text in responses[start:stop]],
                )
                bar.update(stop - start)
        return rewards

    def close(self) -> None:
        self.client.close()


def is_url(spec: str) -> bool:
    """True for an ``http://`` or ``https://`` MODEL (a served reward model)."""
    return spec.startswith(("http://", "https://"))


# ----------------------------------------------------------- Hugging Face models


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _read_hf_config(path: Path) -> Any:
    from transformers import AutoConfig

    if not (path / "config.json").is_file():
        raise ScorerError(f"{path}: no config.json; expected a Hugging Face model folder")
    return AutoConfig.from_pretrained(str(path), trust_remote_code=False)


def _require_safetensors(path: Path) -> None:
    if not any(path.glob("*.safetensors")):
        pickled = sorted(item.name for item in path.glob("*.bin"))
        found = f" (found {', '.join(pickled)})" if pickled else ""
        raise ScorerError(
            f"{path}: no .safetensors weights{found}. prefkit loads safetensors only, since "
            "pickled weights can run code when loaded; convert the folder with "
            "model.save_pretrained(path, safe_serialization=True) in a trusted environment."
        )


def _load_hf_model(path: Path, auto_class: Any, device: str) -> Any:
    import torch

    _require_safetensors(path)
    # float32 on CPU (bfloat16 matmuls are far slower there); bfloat16 on a GPU.
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    model = auto_class.from_pretrained(
        str(path), trust_remote_code=False, use_safetensors=True, dtype=dtype
    )
    return model.to(device).eval()


def _load_hf_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ScorerError(
                f"{path}: the tokenizer has no pad, eos or unk token to pad batches with; "
                "set pad_token in tokenizer_config.json"
            )
        tokenizer.pad_token = fallback
    return tokenizer


def _messages(prompt: Text, response: Text) -> list[dict[str, str]]:
    """Chat messages for a chat template: the prompt's turns (a plain prompt is one user
    turn) followed by the response's (a plain response is one assistant turn)."""
    if isinstance(prompt, str):
        turns = [{"role": "user", "content": prompt}] if prompt else []
    else:
        turns = [message.to_dict() for message in prompt]
    if isinstance(response, str):
        return [*turns, {"role": "assistant", "content": response}]
    return [*turns, *(message.to_dict() for message in response)]


def _context_limit(model: Any, tokenizer: Any, max_length: int | None) -> int:
    """Longest sequence to feed: ``max_length`` if given, else the model's context (at most 8192)."""
    if max_length is not None:
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        return max_length
    limits = [8192]
    positions = getattr(model.config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        limits.append(positions)
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < 1_000_000:
        limits.append(tokenizer_limit)
    return min(limits)


class SequenceClassifierScorer:
    """A local Hugging Face sequence-classification reward model (one output, ``num_labels=1``).

    The item is rendered with the tokenizer's chat template when it has one (the
    prompt as user turn(s), the response as the assistant turn); otherwise the
    prompt and response are encoded as a text pair. Items longer than the context
    lose tokens from the start, so the end of the response (where decoder reward
    models read their score) is kept; truncations are counted in ``notes``.
    Only safetensors weights are loaded, and no remote code is run.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        name: str | None = None,
        batch_size: int = 8,
        max_length: int | None = None,
        device: str | None = None,
        progress: bool = True,
    ):
        from transformers import AutoModelForSequenceClassification

        folder = Path(path)
        config = _read_hf_config(folder)
        if getattr(config, "num_labels", None) != 1:
            raise ScorerError(
                f"{folder}: a reward model has one output (num_labels = 1); this model has "
                f"num_labels = {getattr(config, 'num_labels', None)}. A classifier with several "
                "labels is not a reward model."
            )
        self.name = name or str(path)
        self.batch_size = batch_size
        self.progress = progress
        self.device = device or _default_device()
        self.tokenizer = _load_hf_tokenizer(folder)
        self.model = _load_hf_model(folder, AutoModelForSequenceClassification, self.device)
        if self.model.config.pad_token_id is None:
            # Decoder classifiers find the last real token through pad_token_id.
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.max_length = _context_limit(self.model, self.tokenizer, max_length)
        self.uses_chat_template = bool(getattr(self.tokenizer, "chat_template", None))
        self.notes: list[str] = []

    def encode(self, prompt: Text, response: Text) -> tuple[list[int], bool]:
        """Token ids of one item, and whether it was truncated."""
        tokenizer = self.tokenizer
        if self.uses_chat_template:
            text = tokenizer.apply_chat_template(_messages(prompt, response), tokenize=False)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        elif render_text(prompt):
            ids = tokenizer(render_text(prompt), render_text(response))["input_ids"]
        else:
            ids = tokenizer(render_text(response))["input_ids"]
        if len(ids) <= self.max_length:
            return list(ids), False
        return list(ids[len(ids) - self.max_length :]), True

    def score(self, prompts: Sequence[Text], responses: Sequence[Text]) -> np.ndarray:
        import torch

        from prefkit.align.logprobs import pack_sequences

        _check_items(prompts, responses)
        encoded = [self.encode(prompt, response) for prompt, response in zip(prompts, responses)]
        n_truncated = sum(truncated for _, truncated in encoded)
        if n_truncated:
            self.notes.append(
                f"{self.name}: {n_truncated} of {len(encoded)} items were longer than "
                f"{self.max_length} tokens and lost tokens from their start"
            )
        rewards = np.zeros(len(encoded), dtype=np.float64)
        pad_id = self.tokenizer.pad_token_id
        with _progress_bar(len(encoded), f"scoring with {self.name}", self.progress) as bar:
            for rows in _length_sorted_batches([len(ids) for ids, _ in encoded], self.batch_size):
                batch = pack_sequences([((), encoded[row][0]) for row in rows], pad_id)  # (B, T)
                with torch.inference_mode():
                    logits = self.model(
                        input_ids=batch.input_ids.to(self.device),
                        attention_mask=batch.attention_mask.to(self.device),
                    ).logits  # (B, 1)
                rewards[rows] = logits[:, 0].float().cpu().numpy()
                bar.update(len(rows))
        return rewards


def _as_conversation(tokenizer: Any, prompt: Text, response: Text) -> tuple[Text, Text]:
    """With a chat template, a plain prompt becomes a user turn and a plain response an
    assistant turn (RewardBench formats DPO models' inputs with their chat template);
    without one, the texts stay as they are."""
    if not getattr(tokenizer, "chat_template", None):
        return prompt, response
    if isinstance(prompt, str):
        prompt = (Message("user", prompt),) if prompt else ()
    if isinstance(response, str):
        response = (Message("assistant", response),)
    return prompt, response


def response_token_logps(model: Any, batch: Any, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of each completion token of a :class:`prefkit.align.logprobs.SequenceBatch`.

    Returns ``(token_logps, mask)``, both ``(R, T - 1)``: entry t is
    log p(token t+1 | tokens <= t), zero where token t+1 is not a completion token,
    and the mask is 1 where it is. A completion token at position 0 (no context at
    all) cannot be scored and is left out.
    """
    import torch

    from prefkit.align.logprobs import token_logps

    input_ids = batch.input_ids.to(device)  # (R, T)
    with torch.inference_mode():
        logits = model(input_ids=input_ids, attention_mask=batch.attention_mask.to(device)).logits
        per_token = token_logps(logits[:, :-1], input_ids[:, 1:])  # (R, T - 1), float32 at least
        mask = batch.completion_mask[:, 1:].to(device).to(per_token.dtype)  # (R, T - 1)
    return (per_token * mask).cpu(), mask.cpu()


class ImplicitRewardScorer:
    """A policy (causal LM) as an implicit reward model, as RewardBench scores DPO models.

    ``reward`` picks the formula, over the response's tokens y_1..y_T (EOS included):

    * ``dpo``: sum_t log pi(y_t | x, y_<t) - sum_t log pi_ref(y_t | x, y_<t), the
      DPO implicit reward without beta (Rafailov et al., 2023, "Direct Preference
      Optimization", eq. 5; RewardBench sec. 3); needs ``reference``.
    * ``sum``: sum_t log pi(y_t | ...), reference-free (RewardBench ``ref_free_norm="sum"``).
    * ``mean``: the sum divided by T (RewardBench ``"avg"``).
    * ``norm``: minus the L2 norm of the vector of token log-probs,
      -sqrt(sum_t log pi(y_t | ...)^2) (RewardBench ``"norm"``, its reference-free default).

    Both models must share the policy's tokenizer. Log-probs are computed in
    float32 from the logits whatever the model's dtype. Tokenization and
    truncation: see the module docstring.
    """

    def __init__(
        self,
        policy: str | Path,
        *,
        reference: str | Path | None = None,
        reward: ImplicitReward | None = None,
        name: str | None = None,
        batch_size: int = 4,
        max_length: int | None = None,
        device: str | None = None,
        progress: bool = True,
    ):
        from transformers import AutoModelForCausalLM

        reward = reward or ("dpo" if reference is not None else None)
        if reward is None:
            raise ScorerError(
                f"{policy}: a policy scores responses as an implicit reward model: give a "
                "reference model (--ref PATH, reward = log pi - log pi_ref) or a reference-free "
                "variant (--implicit-reward sum|mean|norm)"
            )
        if reward not in IMPLICIT_REWARDS:
            raise ScorerError(
                f"implicit reward must be one of {', '.join(IMPLICIT_REWARDS)}, got {reward!r}"
            )
        if reward == "dpo" and reference is None:
            raise ScorerError("the 'dpo' implicit reward needs a reference model (--ref PATH)")
        if reward != "dpo" and reference is not None:
            raise ScorerError(
                f"the '{reward}' implicit reward is reference-free; drop --ref, or use "
                "--implicit-reward dpo to compare with the reference"
            )
        self.reward = reward
        self.name = name or (f"{policy} ({reward})" if reward != "dpo" else str(policy))
        self.batch_size = batch_size
        self.progress = progress
        self.device = device or _default_device()
        folder = Path(policy)
        _read_hf_config(folder)
        self.tokenizer = _load_hf_tokenizer(folder)
        self.policy = _load_hf_model(folder, AutoModelForCausalLM, self.device)
        self.reference = None
        if reference is not None:
            reference_folder = Path(reference)
            _read_hf_config(reference_folder)
            self.reference = _load_hf_model(reference_folder, AutoModelForCausalLM, self.device)
            policy_vocab = self.policy.get_input_embeddings().weight.shape[0]
            reference_vocab = self.reference.get_input_embeddings().weight.shape[0]
            if policy_vocab != reference_vocab:
                raise ScorerError(
                    f"{reference}: vocabulary of {reference_vocab} tokens, but the policy "
                    f"{policy} has {policy_vocab}; the reference must share the policy's tokenizer"
                )
        self.max_length = _context_limit(self.policy, self.tokenizer, max_length)
        self.notes: list[str] = []

    def _reduce(self, token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B,) reward from (B, T - 1) masked token log-probs (the reference-free variants)."""
        import torch

        if self.reward == "mean":
            return token_logps.sum(dim=-1) / mask.sum(dim=-1).clamp(min=1.0)
        if self.reward == "norm":
            return -torch.linalg.vector_norm(token_logps, ord=2, dim=-1)
        return token_logps.sum(dim=-1)  # "sum", and each side of "dpo"

    def score(self, prompts: Sequence[Text], responses: Sequence[Text]) -> np.ndarray:
        from prefkit.align.logprobs import pack_sequences
        from prefkit.align.tokenize import (
            TokenizeConfig,
            TokenizeStats,
            encode_completion,
            tokenizer_adds_bos,
        )

        _check_items(prompts, responses)
        # The prompt keeps at most half the context (its last tokens), the response the rest.
        config = TokenizeConfig(max_length=self.max_length, max_prompt_length=self.max_length // 2)
        stats = TokenizeStats()
        adds_bos = tokenizer_adds_bos(self.tokenizer)
        encoded = [
            encode_completion(
                self.tokenizer,
                *_as_conversation(self.tokenizer, prompt, response),
                config,
                stats,
                adds_bos=adds_bos,
            )
            for prompt, response in zip(prompts, responses)
        ]
        if stats.truncated_prompts or stats.truncated_completions:
            self.notes.append(f"{self.name}: {stats.summary()}")
        pad_id = self.tokenizer.pad_token_id
        rewards = np.zeros(len(encoded), dtype=np.float64)
        with _progress_bar(len(encoded), f"scoring with {self.name}", self.progress) as bar:
            for rows in _length_sorted_batches(
                [len(item.input_ids) for item in encoded], self.batch_size
            ):
                batch = pack_sequences(
                    [(encoded[row].prompt_ids, encoded[row].completion_ids) for row in rows], pad_id
                )  # (B, T)
                token_logps, mask = response_token_logps(self.policy, batch, self.device)
                values = self._reduce(token_logps, mask)
                if self.reference is not None:
                    reference_logps, _ = response_token_logps(self.reference, batch, self.device)
                    values = values - reference_logps.sum(dim=-1)
                rewards[rows] = values.double().numpy()
                bar.update(len(rows))
        return rewards


# ------------------------------------------------------------------ LLM judge


class JudgeError(Exception):
    """The judge endpoint failed (after retries) or answered something unusable."""


@dataclass(frozen=True)
class JudgeVerdict:
    """The judge's decision on one pair, asked in both orders."""

    outcome: Literal["a", "b", "tie"]
    """``a`` or ``b`` when both orders agree; ``tie`` when they disagree (position bias)
    or when an answer could not be read."""
    first: Literal["a", "b", "tie"] | None
    """The answer with ``a`` shown first (None: unreadable answer)."""
    second: Literal["a", "b", "tie"] | None
    """The answer with ``b`` shown first, mapped back to the names a / b."""


_JUDGE_SYSTEM = (
    "You are an impartial evaluator of AI assistant responses. You compare two responses "
    "to the same user prompt and decide which one is better."
)
_JUDGE_TEMPLATE = """Which response answers the user's prompt better? Judge helpfulness, correctness, honesty and harmlessness. Do not let the order of the responses or their length sway you.

### User prompt
{prompt}

### Response A
{first}

### Response B
{second}

### Your verdict
Reply with exactly one letter: A if Response A is better, B if Response B is better."""

_ANSWER = re.compile(r"^[\W_]*(?:response\s+)?(a|b|tie)\b", re.IGNORECASE)
_RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


def parse_judge_answer(text: str) -> Literal["a", "b", "tie"] | None:
    """``a`` / ``b`` / ``tie`` from the judge's reply ("A", "[[B]]", "**A**.", "Response B",
    "tie"), read from its start; None when it starts with anything else."""
    match = _ANSWER.match(text.strip())
    return match.group(1).lower() if match else None  # type: ignore[return-value]


def chat_completions_url(url: str) -> str:
    """The chat-completions endpoint for a server URL given with or without its path
    (``http://host:8000``, ``http://host:8000/v1`` or the full endpoint)."""
    stripped = url.rstrip("/")
    if stripped.endswith("/chat/completions"):
        return stripped
    if stripped.endswith("/v1"):
        return stripped + "/chat/completions"
    return stripped + "/v1/chat/completions"


class ChatJudge:
    """An LLM judge behind an OpenAI-compatible chat-completions endpoint.

    Each pair is asked twice, with a shown first and with b shown first; the
    verdict is the common answer when the two agree and a tie when they do not,
    which cancels a judge's preference for a position (Zheng et al., 2023,
    "Judging LLM-as-a-Judge with MT-Bench and Chatbot Arena", sec. 3.4: swap
    positions, and call it a tie when the verdicts are inconsistent).

    Requests run on ``concurrency`` threads. A request that times out (``timeout``
    seconds for the whole exchange), fails to connect, or gets HTTP 408/409/425/
    429/5xx is retried up to ``max_retries`` times with exponential backoff
    (``backoff * 2**attempt`` seconds, or the server's Retry-After when longer,
    at most 60 s). Other HTTP errors, a reply larger than ``max_response_bytes``
    or a reply that is not a chat completion raise :class:`JudgeError` at once,
    and the whole comparison stops: a judge that cannot be reached does not turn
    into a column of ties.
    """

    def __init__(
        self,
        url: str,
        model: str,
        *,
        api_key: str | None = None,
        name: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff: float = 1.0,
        concurrency: int = 4,
        max_response_bytes: int = 1_000_000,
        max_tokens: int = 8,
        progress: bool = True,
    ):
        if (
            timeout <= 0
            or max_retries < 0
            or backoff < 0
            or concurrency < 1
            or max_response_bytes < 1
        ):
            raise ValueError(
                "timeout must be > 0, max_retries >= 0, backoff >= 0, concurrency >= 1 and "
                f"max_response_bytes >= 1; got {timeout}, {max_retries}, {backoff}, "
                f"{concurrency}, {max_response_bytes}"
            )
        self.url = chat_completions_url(url)
        self.model = model
        self.api_key = api_key
        self.name = name or f"judge:{model}"
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.concurrency = concurrency
        self.max_response_bytes = max_response_bytes
        self.max_tokens = max_tokens
        self.progress = progress
        self.notes: list[str] = []

    # -- one request ---------------------------------------------------------------------

    def _read_limited(self, response: Any, deadline: float) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no complete reply within {self.timeout} s")
            chunk = response.read(65536)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > self.max_response_bytes:
                raise JudgeError(
                    f"{self.url}: reply larger than {self.max_response_bytes:,} bytes; refusing to "
                    "read more (raise max_response_bytes if this endpoint is trusted)"
                )
            chunks.append(chunk)

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        failure = ""
        for attempt in range(self.max_retries + 1):
            delay = self.backoff * 2**attempt
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                deadline = time.monotonic() + self.timeout
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = self._read_limited(response, deadline)
                return json.loads(raw.decode("utf-8"))
            except urllib.error.HTTPError as error:
                detail = error.read(500).decode("utf-8", "replace").strip()
                failure = f"HTTP {error.code}" + (f": {detail}" if detail else "")
                if error.code not in _RETRY_STATUS:
                    raise JudgeError(f"{self.url}: {failure}") from None
                retry_after = error.headers.get("Retry-After") if error.headers else None
                if retry_after and retry_after.strip().isdigit():
                    delay = max(delay, float(retry_after))
            except (TimeoutError, urllib.error.URLError, ConnectionError) as error:
                failure = f"{type(error).__name__}: {getattr(error, 'reason', error)}"
            except ValueError as error:
                raise JudgeError(f"{self.url}: the reply is not JSON ({error})") from None
            if attempt < self.max_retries:
                time.sleep(min(delay, 60.0))
        raise JudgeError(
            f"{self.url}: failed after {self.max_retries + 1} attempts; last error: {failure}"
        )

    def ask(self, prompt: Text, first: Text, second: Text) -> Literal["a", "b", "tie"] | None:
        """One request: which of ``first`` (shown as A) and ``second`` (B) is better."""
        content = _JUDGE_TEMPLATE.format(
            prompt=render_text(prompt), first=render_text(first), second=render_text(second)
        )
        reply = self._post(
            {
                "model": self.model,
                "messages": [
                    {"role": "system", "content": _JUDGE_SYSTEM},
                    {"role": "user", "content": content},
                ],
                "temperature": 0,
                "max_tokens": self.max_tokens,
            }
        )
        try:
            text = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise JudgeError(
                f"{self.url}: the reply is not a chat completion (expected choices[0].message.content), "
                f"found {json.dumps(reply)[:200]}"
            ) from None
        return parse_judge_answer(text if isinstance(text, str) else "")

    # -- pairs ---------------------------------------------------------------------------

    def compare(self, prompt: Text, response_a: Text, response_b: Text) -> JudgeVerdict:
        """The verdict on one pair (two requests)."""
        return self.compare_pairs([prompt], [response_a], [response_b])[0]

    def compare_pairs(
        self, prompts: Sequence[Text], responses_a: Sequence[Text], responses_b: Sequence[Text]
    ) -> list[JudgeVerdict]:
        if not len(prompts) == len(responses_a) == len(responses_b):
            raise ValueError(
                f"got {len(prompts)} prompts, {len(responses_a)} responses a and "
                f"{len(responses_b)} responses b; give one of each per pair"
            )
        n = len(prompts)
        answers: list[Any] = [None] * (2 * n)
        swap = {"a": "b", "b": "a", "tie": "tie", None: None}
        with (
            ThreadPoolExecutor(max_workers=self.concurrency) as pool,
            _progress_bar(2 * n, f"asking {self.name}", self.progress) as bar,
        ):
            futures = {}
            for i in range(n):
                futures[pool.submit(self.ask, prompts[i], responses_a[i], responses_b[i])] = 2 * i
                futures[pool.submit(self.ask, prompts[i], responses_b[i], responses_a[i])] = (
                    2 * i + 1
                )
            try:
                for future, slot in futures.items():
                    answer = future.result()
                    answers[slot] = answer if slot % 2 == 0 else swap[answer]
                    bar.update(1)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        verdicts = []
        n_unreadable = n_disagree = 0
        for i in range(n):
            first, second = answers[2 * i], answers[2 * i + 1]
            n_unreadable += (first is None) + (second is None)
            agree = first is not None and first == second
            n_disagree += first is not None and second is not None and first != second
            verdicts.append(JudgeVerdict(first if agree else "tie", first, second))
        if n:
            self.notes.append(
                f"{self.name}: {n_disagree} of {n} pairs got different answers in the two orders "
                f"(scored as ties); {n_unreadable} of {2 * n} answers were unreadable (their pairs "
                "scored as ties)"
            )
        return verdicts


# --------------------------------------------------------------------- loading


def load_scorer(
    spec: str,
    *,
    reference: str | None = None,
    implicit_reward: str | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    progress: bool = True,
    api_key: str | None = None,
) -> Scorer:
    """A scorer from a command-line MODEL argument.

    ``length`` is the length baseline. An ``http://`` or ``https://`` URL is a model
    served by ``prefkit serve`` (``api_key``, else ``$PREFKIT_API_KEY``, is sent as its
    Bearer token). A folder is, by its config.json: a prefkit
    reward model (``prefkit rm train``), a Hugging Face sequence-classification
    model (a reward model with one output), or a Hugging Face causal LM, scored as
    an implicit reward (needs ``reference`` or ``implicit_reward``).
    """
    sizes = {} if batch_size is None else {"batch_size": batch_size}
    if is_url(spec):
        if reference is not None or implicit_reward is not None:
            raise ScorerError(
                f"{spec}: --ref / --implicit-reward apply to policies, not to a served reward model"
            )
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
        return ServedRewardModelScorer(spec, api_key=key, progress=progress, **sizes)
    path = Path(spec)
    if spec == "length" and not path.is_dir():
        return LengthScorer()
    if not path.exists():
        raise ScorerError(
            f"{spec}: no such folder; a MODEL is a reward-model folder, a policy folder "
            "(with --ref or --implicit-reward), the http:// URL of a 'prefkit serve' server "
            "or the word 'length'"
        )
    if not path.is_dir():
        raise ScorerError(f"{spec}: a MODEL is a folder (with config.json), not a file")
    if is_prefkit_model_folder(path):
        if reference is not None or implicit_reward is not None:
            raise ScorerError(
                f"{spec}: --ref / --implicit-reward apply to policies, not to a prefkit reward model"
            )
        return PrefkitRewardModelScorer(path, name=spec, device=device, progress=progress, **sizes)
    config = _read_hf_config(path)
    architectures = list(getattr(config, "architectures", None) or [])
    if any(name.endswith("ForSequenceClassification") for name in architectures):
        if reference is not None or implicit_reward is not None:
            raise ScorerError(
                f"{spec}: a sequence-classification reward model gives rewards itself; "
                "--ref / --implicit-reward apply to policies (causal LMs)"
            )
        return SequenceClassifierScorer(path, name=spec, device=device, progress=progress, **sizes)
    if any(name.endswith(("ForCausalLM", "LMHeadModel")) for name in architectures):
        return ImplicitRewardScorer(
            path,
            reference=reference,
            reward=implicit_reward,  # type: ignore[arg-type]
            device=device,
            progress=progress,
            **sizes,
        )
    raise ScorerError(
        f"{spec}: cannot tell what kind of model this is (architectures {architectures or 'missing'} "
        "in config.json); expected a prefkit reward model, a *ForSequenceClassification "
        "reward model or a *ForCausalLM policy"
    )
