"""Generation engines: ``hf`` (batched ``transformers`` generate) and ``vllm`` (optional).

An engine takes :class:`Request` s (prompt token ids and a sequence seed) and
returns one :class:`Completion` per request, in request order. Both engines
write the same thing, so the candidate-set files do not depend on the engine.

The ``hf`` engine sorts the requests by prompt length and cuts them into batches
of ``batch_size``, so each batch is left-padded to about its own length, and
runs ``model.generate`` with the KV cache. Sampling is done by
:class:`~prefkit.generate.sampling.GumbelSampler` on top of greedy decoding, so
each sequence draws from its own seeded stream whatever batch it lands in.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from prefkit.errors import UserInputError
from prefkit.generate.config import SamplingConfig
from prefkit.generate.sampling import GumbelSampler

__all__ = ["Completion", "HFEngine", "Request", "VLLMEngine", "vllm_unavailable_reason"]

FinishReason = Literal["eos", "length", "stop"]


@dataclass(frozen=True)
class Request:
    """One sequence to generate."""

    prompt_ids: tuple[int, ...]
    """The prompt's token ids (already truncated to fit)."""
    seed: int
    """The sequence's own seed (:func:`~prefkit.generate.config.sequence_seed`)."""


@dataclass(frozen=True)
class Completion:
    """What one request produced."""

    text: str
    """The response text (decoded; cut before a stop string)."""
    num_tokens: int
    """Tokens generated, EOS not counted."""
    finish_reason: FinishReason
    """``eos`` (the model ended it), ``length`` (max-new-tokens reached) or ``stop`` (a stop string)."""
    token_ids: tuple[int, ...] = ()
    """The generated token ids (``num_tokens`` of them), then the EOS token that ended the
    response when ``finish_reason`` is ``eos``; padding never included."""


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the earliest stop string, and whether one was found."""
    positions = [text.find(stop) for stop in stops]
    found = [position for position in positions if position >= 0]
    if not found:
        return text, False
    return text[: min(found)], True


def decode_continuation(tokenizer: Any, prompt_ids: Sequence[int], new_ids: Sequence[int]) -> str:
    """The text that ``new_ids`` add after the prompt, leading space included.

    Decoding the new tokens alone loses the space in front of the first word for
    word-level and SentencePiece tokenizers, so the whole sequence is decoded and
    the prompt's own decoding is cut off its front.
    """
    prompt_text = tokenizer.decode(list(prompt_ids), skip_special_tokens=True)
    full_text = tokenizer.decode([*prompt_ids, *new_ids], skip_special_tokens=True)
    if full_text.startswith(prompt_text):
        return full_text[len(prompt_text) :]
    return tokenizer.decode(list(new_ids), skip_special_tokens=True)


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every token that ends a response: the tokenizer's EOS and the model's generation EOS."""
    ids: list[int] = []
    candidates: list[Any] = [tokenizer.eos_token_id]
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        candidates.append(generation_config.eos_token_id)
    for value in candidates:
        for token in value if isinstance(value, (list, tuple)) else [value]:
            if token is not None and token not in ids:
                ids.append(int(token))
    return ids


class StopStrings:
    """A ``transformers`` stopping criterion: a row is done once its text holds a stop string.

    The text is decoded as :func:`decode_continuation` does, so a stop string is
    found exactly where the written response will be cut.
    """

    def __init__(
        self, tokenizer: Any, prompts: Sequence[Sequence[int]], width: int, stops: Sequence[str]
    ):
        self.tokenizer = tokenizer
        self.prompts = prompts
        self.width = width
        self.stops = stops

    def __call__(
        self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        done = [
            cut_at_stop(decode_continuation(self.tokenizer, prompt, row[self.width :]), self.stops)[
                1
            ]
            for prompt, row in zip(self.prompts, input_ids.tolist(), strict=True)
        ]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class HFEngine:
    """Batched ``model.generate`` with left padding, the KV cache and length grouping."""

    name = "hf"

    def __init__(
        self, model: Any, tokenizer: Any, *, batch_size: int = 16, shared_prefill: bool = True
    ):
        if batch_size < 1:
            raise UserInputError(f"batch-size must be >= 1, got {batch_size}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.shared_prefill = shared_prefill
        self.eos_ids = eos_token_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else (self.eos_ids[0] if self.eos_ids else 0)

    @torch.inference_mode()
    def generate(
        self,
        requests: Sequence[Request],
        config: SamplingConfig,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[Completion]:
        """One completion per request, in request order; ``progress(sequences, new_tokens)``
        is called after each batch."""
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        device = next(self.model.parameters()).device
        order = sorted(range(len(requests)), key=lambda index: len(requests[index].prompt_ids))
        results: list[Completion | None] = [None] * len(requests)
        generation_config = GenerationConfig(
            do_sample=False,
            max_new_tokens=config.max_new_tokens,
            eos_token_id=self.eos_ids or None,
            pad_token_id=self.pad_id,
        )
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            width = max(len(requests[row].prompt_ids) for row in rows)
            input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)  # (B, T)
            attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
            for slot, row in enumerate(rows):
                ids = requests[row].prompt_ids
                input_ids[slot, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                attention_mask[slot, width - len(ids) :] = 1
            sampler = GumbelSampler([requests[row].seed for row in rows], config)
            stopping = StoppingCriteriaList()
            if config.stop:
                prompts = [requests[row].prompt_ids for row in rows]
                stopping.append(StopStrings(self.tokenizer, prompts, width, config.stop))
            input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
            arguments = {
                "input_ids": input_ids,
                "attention_mask": attention_mask,
                "generation_config": generation_config,
                "logits_processor": LogitsProcessorList([sampler]),
                "stopping_criteria": stopping,
            }
            cache = self._shared_prefill(input_ids, attention_mask)
            if cache is None:
                output = self.model.generate(**arguments)
            else:
                try:
                    output = self.model.generate(**arguments, cache=cache)
                except ValueError as error:  # transformers from before 'cache' replaced the name
                    if "cache" not in str(error):
                        raise
                    output = self.model.generate(**arguments, past_key_values=cache)
            new_tokens = output[:, width:].cpu().tolist()  # (B, <= max_new_tokens)
            batch_tokens = 0
            for slot, row in enumerate(rows):
                completion = self._completion(requests[row].prompt_ids, new_tokens[slot], config)
                results[row] = completion
                batch_tokens += completion.num_tokens
            if progress is not None:
                progress(len(rows), batch_tokens)
        return [result for result in results if result is not None]

    def _shared_prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        """The KV cache of every row's prompt but its last token, each distinct prompt run once.

        The N samples of a prompt sit side by side in a batch, so the prompt is
        encoded once and its cache copied to its rows; ``generate`` then feeds only
        the last prompt token. ``None`` (``generate`` prefills) when no prompt repeats.
        """
        if input_ids.shape[1] < 2 or not self.shared_prefill:
            return None
        width = input_ids.shape[1]
        unique, rows = torch.unique(
            torch.cat([input_ids, attention_mask], dim=1), dim=0, return_inverse=True
        )  # (U, 2T), (B,): a row's ids and mask together
        if len(unique) == len(input_ids):
            return None
        unique_ids, unique_mask = unique[:, :width], unique[:, width:]  # (U, T), (U, T)
        positions = (unique_mask.cumsum(-1) - 1).clamp_min(0)  # left padding: count real tokens
        output = self.model(
            input_ids=unique_ids[:, :-1],
            attention_mask=unique_mask[:, :-1],
            position_ids=positions[:, :-1],
            use_cache=True,
        )
        cache = getattr(output, "cache", None)  # older transformers call it past_key_values
        if cache is None:
            cache = output.past_key_values
        if not hasattr(cache, "batch_select_indices"):
            return None
        cache.batch_select_indices(rows)
        return cache

    def _completion(
        self, prompt_ids: Sequence[int], new_ids: list[int], config: SamplingConfig
    ) -> Completion:
        ended_by_eos = False
        eos: list[int] = []
        for position, token in enumerate(new_ids):
            if token in self.eos_ids:
                new_ids, eos = new_ids[:position], [token]
                ended_by_eos = True
                break
        text = decode_continuation(self.tokenizer, prompt_ids, new_ids)
        text, stopped = cut_at_stop(text, config.stop)
        if stopped and not ended_by_eos:
            # generate pads a row that a stop string ended while others went on.
            while new_ids and new_ids[-1] == self.pad_id:
                new_ids = new_ids[:-1]
        if stopped:
            return Completion(text, len(new_ids), "stop", tuple(new_ids + eos))
        reason: FinishReason = "eos" if ended_by_eos else "length"
        return Completion(text, len(new_ids), reason, tuple(new_ids + eos))


def vllm_unavailable_reason() -> str | None:
    """Why the ``vllm`` engine cannot run here, or ``None`` when it can."""
    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed (pip install 'prefkit[vllm]')"
    if not torch.cuda.is_available():
        return "no GPU is available (vLLM needs CUDA)"
    return None


class VLLMEngine:
    """vLLM's offline ``LLM.generate``, one request per sequence with its own seed."""

    name = "vllm"

    def __init__(self, model_path: str, tokenizer: Any, *, max_model_len: int | None = None):
        from vllm import LLM

        self.tokenizer = tokenizer
        self.llm = LLM(
            model=model_path,
            tokenizer=model_path,
            trust_remote_code=False,
            max_model_len=max_model_len,
            seed=0,
        )

    def generate(
        self,
        requests: Sequence[Request],
        config: SamplingConfig,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[Completion]:
        """One completion per request, in request order (see :meth:`HFEngine.generate`)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = [
            SamplingParams(
                n=1,
                temperature=config.temperature,
                top_p=config.top_p,
                top_k=config.top_k if config.top_k > 0 else -1,
                max_tokens=config.max_new_tokens,
                stop=list(config.stop) or None,
                seed=request.seed,
            )
            for request in requests
        ]
        prompts = [TokensPrompt(prompt_token_ids=list(request.prompt_ids)) for request in requests]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        completions = []
        for request, output in zip(requests, outputs, strict=True):
            sample = output.outputs[0]
            if sample.finish_reason == "length":
                reason: FinishReason = "length"
            elif isinstance(sample.stop_reason, str):
                reason = "stop"
            else:
                reason = "eos"
            new_ids = list(sample.token_ids)
            eos: list[int] = []
            if reason == "eos" and new_ids and new_ids[-1] == self.tokenizer.eos_token_id:
                new_ids, eos = new_ids[:-1], new_ids[-1:]
            text = decode_continuation(self.tokenizer, request.prompt_ids, new_ids)
            if reason == "stop":
                text, _ = cut_at_stop(text, config.stop)
            completions.append(Completion(text, len(new_ids), reason, tuple(new_ids + eos)))
        if progress is not None:
            progress(len(requests), sum(completion.num_tokens for completion in completions))
        return completions
