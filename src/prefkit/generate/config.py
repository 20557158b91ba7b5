"""Sampling settings and per-sequence seeds (pure Python: no torch, so the CLI starts fast)."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

from prefkit.errors import UserInputError

__all__ = ["FINISH_REASONS", "SamplingConfig", "sequence_seed"]

FINISH_REASONS = ("eos", "length", "stop")


@dataclass(frozen=True)
class SamplingConfig:
    """How candidates are sampled; validated on construction."""

    num_samples: int = 4
    """Responses sampled per prompt (N)."""
    temperature: float = 1.0
    """Softmax temperature; 0 is greedy decoding (every sample then equal)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens with this much probability (1 = off)."""
    top_k: int = 0
    """Keep only the k most likely tokens (0 = off)."""
    max_new_tokens: int = 256
    """Most tokens generated per response; a response cut here has finish reason 'length'."""
    stop: tuple[str, ...] = field(default_factory=tuple)
    """Strings that end a response (finish reason 'stop'); the text is cut before the string."""
    seed: int = 0
    """Seed of the run; each prompt and sample index gets its own stream derived from it."""

    def __post_init__(self) -> None:
        for name, minimum in (("num_samples", 1), ("max_new_tokens", 1), ("top_k", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise UserInputError(
                    f"{name.replace('_', '-')} must be an integer >= {minimum}, got {value!r}"
                )
        if not self.temperature >= 0:
            raise UserInputError(f"temperature must be >= 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise UserInputError(f"top-p must be in (0, 1], got {self.top_p!r}")
        if any(not isinstance(text, str) or not text for text in self.stop):
            raise UserInputError(f"stop strings must be non-empty, got {list(self.stop)!r}")
        object.__setattr__(self, "stop", tuple(self.stop))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["stop"] = list(self.stop)
        return out


def sequence_seed(seed: int, prompt_key: str, sample_index: int) -> int:
    """A 63-bit seed for one (prompt, sample index): the same in every batch and every run."""
    digest = hashlib.sha256(f"{seed}\0{sample_index}\0{prompt_key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)
