"""Selecting the part of a pool that serves a target: DSIR, ZIP-FIT, perplexity.

Each method gives every pool record a score from its text (``field``, see
:func:`prefkit.curate.text.unit_texts`), keeps ``budget`` records and writes
them in pool order with ``metadata["select"] = {"method", "score"}``.

- ``dsir`` (Xie et al. 2023, "Data Selection for Language Models via Importance
  Resampling"): hashed n-gram features as in their ``data-selection`` package
  (lower-cased WordPunct tokens, unigrams to ``ngram``-grams, SHA-256 into
  ``num_buckets`` buckets); bag-of-n-grams distributions of the pool and the
  target; the log importance weight of an item is ``sum_j c_j (log p_target(j) -
  log p_pool(j))`` (eq. 1 of the paper with their ``1e-8`` smoothing); the
  budget is drawn without replacement by Gumbel top-k (``gumbel=False``: plain
  top-k). Departure: the pool model is fitted on the whole pool (the package
  caps it at 100,000 tokens per bucket), and the Gumbel noise comes from a
  seeded ``numpy.random.Generator``, not the global ``numpy.random`` state.
- ``zipfit`` (Obbad et al. 2024, "ZIP-FIT"): gzip normalised compression
  distance ``NCD(x, y) = (C(xy) - min(C(x), C(y))) / max(C(x), C(y))``; an item's
  score is ``1 - mean NCD`` to ``target_sample`` target texts (a seeded sample,
  all when fewer); the most aligned are kept.
- ``perplexity`` (as in "Perplexed by Perplexity", Ankner et al. 2024, with a
  small reference model): the perplexity of the text under a local causal LM,
  keeping the ``low``, ``middle`` or ``high`` band of ``budget`` records.

The pool is held in memory (records and scores).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from prefkit.curate.stats import CurateStats
from prefkit.curate.text import Field, unit_texts
from prefkit.data.records import AnyRecord
from prefkit.data.write import write_records
from prefkit.progress import progress_iter

SCORE_LABELS = {
    "dsir": "log importance weight",
    "zipfit": "alignment (1 - mean NCD to the target)",
    "perplexity": "perplexity",
}
_WORDPUNCT = re.compile(r"\w+|[^\w\s]+")  # nltk's WordPunctTokenizer pattern


@dataclass
class SelectConfig:
    """Settings of ``prefkit curate select`` / :func:`select_records`."""

    method: Literal["dsir", "zipfit", "perplexity"] = "dsir"
    """dsir: hashed n-gram importance resampling; zipfit: gzip compression distance to the
    target; perplexity: a band of perplexity under a small causal LM."""
    budget: int = 1000
    """Records to keep."""
    field: Field = "all"
    """Text scored: prompt, response, pair or all (the prompt and every response)."""
    ngram: int = 2
    """dsir: longest n-gram (2 = unigrams and bigrams)."""
    num_buckets: int = 10000
    """dsir: hash buckets of the n-gram features."""
    gumbel: bool = True
    """dsir: draw the budget by Gumbel top-k resampling; --no-gumbel keeps the top weights."""
    target_sample: int = 100
    """zipfit: target texts each pool item is compared with (a seeded sample)."""
    model: str | None = None
    """perplexity: local causal LM checkpoint folder (required for this method)."""
    band: Literal["low", "middle", "high"] = "low"
    """perplexity: keep the lowest, the middle or the highest perplexities."""
    max_length: int = 512
    """perplexity: tokens per text scored."""
    batch_size: int = 8
    """perplexity: texts per forward pass."""
    seed: int = 0
    """Seed of the Gumbel noise and of the target sample."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        if self.method not in ("dsir", "zipfit", "perplexity"):
            raise ValueError(
                f"SelectConfig: method must be dsir, zipfit or perplexity, got {self.method!r}"
            )
        if self.budget < 1 or self.ngram < 1 or self.num_buckets < 1 or self.target_sample < 1:
            raise ValueError(
                "SelectConfig: budget, ngram, num_buckets and target_sample must be >= 1"
            )
        if self.band not in ("low", "middle", "high"):
            raise ValueError(f"SelectConfig: band must be low, middle or high, got {self.band!r}")
        if self.method == "perplexity" and not self.model:
            raise ValueError("SelectConfig: the perplexity method needs a causal LM (--model PATH)")


@dataclass
class SelectReport:
    """What :func:`select_records` did."""

    stats: CurateStats
    method: str
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """(N,) score of every pool record (log importance weight, alignment, or perplexity)."""
    selected: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    """(N,) whether each pool record was kept."""
    ids: list[str] = field(default_factory=list)
    """(N,) pool record ids."""

    @property
    def score_label(self) -> str:
        return SCORE_LABELS[self.method]

    def html(self, title: str = "prefkit curate select") -> str:
        """The HTML report: counts and the distribution of scores, pool against selected."""
        from prefkit.curate.report import render_selection_report

        summary = self.to_dict()
        return render_selection_report(
            title=title,
            method=self.method,
            score_label=self.score_label,
            scores=self.scores,
            selected=self.selected,
            ids=self.ids,
            summary={key: value for key, value in summary.items() if key != "step"},
        )

    def to_dict(self) -> dict[str, Any]:
        def describe(values: np.ndarray) -> dict[str, float] | None:
            if not len(values):
                return None
            return {
                "min": float(values.min()),
                "median": float(np.median(values)),
                "max": float(values.max()),
            }

        return {
            **self.stats.to_dict(),
            "method": self.method,
            "scores_pool": describe(self.scores),
            "scores_selected": describe(self.scores[self.selected]),
        }


# ----------------------------------------------------------------------------- DSIR


def hashed_ngram_counts(text: str, ngram: int, num_buckets: int) -> np.ndarray:
    """(num_buckets,) counts of the text's hashed 1..``ngram``-grams (data-selection's features)."""
    tokens = _WORDPUNCT.findall(text.lower())
    counts = np.zeros(num_buckets, dtype=np.int64)
    for size in range(1, ngram + 1):
        for start in range(len(tokens) - size + 1):
            gram = " ".join(tokens[start : start + size])
            bucket = (
                int.from_bytes(hashlib.sha256(gram.encode("utf-8")).digest(), "big") % num_buckets
            )
            counts[bucket] += 1
    return counts


def dsir_log_weights(
    pool_texts: Sequence[str], target_texts: Sequence[str], ngram: int = 2, num_buckets: int = 10000
) -> np.ndarray:
    """(N,) log importance weights ``c(x) . (log p_target - log p_pool)`` of the pool texts."""
    pool_counts = np.stack(
        [hashed_ngram_counts(t, ngram, num_buckets) for t in pool_texts]
    )  # (N, B)
    target_counts = np.zeros(num_buckets, dtype=np.int64)
    for text in target_texts:
        target_counts += hashed_ngram_counts(text, ngram, num_buckets)
    pool_probs = pool_counts.sum(axis=0) / max(1, pool_counts.sum())
    target_probs = target_counts / max(1, target_counts.sum())
    log_diff = np.log(target_probs + 1e-8) - np.log(pool_probs + 1e-8)  # (B,)
    return pool_counts @ log_diff


def top_k(values: np.ndarray, k: int) -> np.ndarray:
    """(N,) mask of the ``k`` largest values (ties broken by position)."""
    mask = np.zeros(len(values), dtype=bool)
    mask[np.argsort(-values, kind="stable")[:k]] = True
    return mask


def gumbel_top_k(log_weights: np.ndarray, k: int, seed: int) -> np.ndarray:
    """(N,) mask of ``k`` items drawn without replacement with probability proportional to
    ``exp(log_weights)``: the top ``k`` of ``log_weights + Gumbel noise``."""
    noise = np.random.default_rng(seed).gumbel(size=len(log_weights))
    return top_k(log_weights + noise, k)


# -------------------------------------------------------------------------- ZIP-FIT


def compressed_size(data: bytes) -> int:
    return len(gzip.compress(data, compresslevel=9, mtime=0))


def zipfit_scores(
    pool_texts: Sequence[str],
    target_texts: Sequence[str],
    sample: int,
    seed: int,
    progress: bool = False,
) -> np.ndarray:
    """(N,) ``1 - mean NCD`` of each pool text to (a seeded sample of) the target texts."""
    rng = np.random.default_rng(seed)
    chosen = list(target_texts)
    if len(chosen) > sample:
        chosen = [chosen[i] for i in sorted(rng.choice(len(chosen), sample, replace=False))]
    targets = [text.encode("utf-8") for text in chosen]
    target_sizes = [compressed_size(text) for text in targets]
    scores = np.zeros(len(pool_texts), dtype=np.float64)
    for row, text in enumerate(
        progress_iter(pool_texts, description="zipfit", unit="rec", enabled=progress)
    ):
        data = text.encode("utf-8")
        size = compressed_size(data)
        distances = [
            (compressed_size(data + target) - min(size, target_size)) / max(size, target_size)
            for target, target_size in zip(targets, target_sizes, strict=True)
        ]
        scores[row] = 1.0 - float(np.mean(distances))
    return scores


# ----------------------------------------------------------------------- perplexity


def perplexities(
    texts: Sequence[str],
    model_path: str,
    *,
    max_length: int = 512,
    batch_size: int = 8,
    progress: bool = False,
) -> np.ndarray:
    """(N,) perplexity ``exp(mean token NLL)`` of each text under the causal LM at ``model_path``
    (the first token is not predicted; a text of one token has perplexity 1)."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(model_path, trust_remote_code=False).eval()
    encoded = [
        tokenizer(text, truncation=True, max_length=max_length, add_special_tokens=True)[
            "input_ids"
        ]
        for text in texts
    ]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    result = np.ones(len(texts), dtype=np.float64)
    order = np.argsort([-len(ids) for ids in encoded], kind="stable")
    bar = progress_iter(
        range(0, len(order), batch_size), description="perplexity", unit="batch", enabled=progress
    )
    for start in bar:
        rows = order[start : start + batch_size]
        length = max(len(encoded[row]) for row in rows)
        input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)  # (B, T)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for slot, row in enumerate(rows):
            ids = encoded[row]
            input_ids[slot, : len(ids)] = torch.tensor(ids)
            mask[slot, : len(ids)] = 1
        with torch.inference_mode():
            logits = model(input_ids=input_ids, attention_mask=mask).logits.float()  # (B, T, V)
        nll = F.cross_entropy(
            logits[:, :-1].transpose(1, 2), input_ids[:, 1:], reduction="none"
        )  # (B, T-1)
        target_mask = mask[:, 1:].float()
        counts = target_mask.sum(dim=1)
        mean_nll = (nll * target_mask).sum(dim=1) / counts.clamp(min=1)
        for slot, row in enumerate(rows):
            result[row] = math.exp(float(mean_nll[slot])) if counts[slot] > 0 else 1.0
    return result


def band_mask(values: np.ndarray, k: int, band: str) -> np.ndarray:
    """(N,) mask of the ``k`` lowest, middle or highest values."""
    order = np.argsort(values, kind="stable")
    k = min(k, len(values))
    if band == "low":
        chosen = order[:k]
    elif band == "high":
        chosen = order[len(order) - k :]
    else:
        start = (len(order) - k) // 2
        chosen = order[start : start + k]
    mask = np.zeros(len(values), dtype=bool)
    mask[chosen] = True
    return mask


# ---------------------------------------------------------------------------- the step


def select_records(
    pool: Iterable[AnyRecord],
    target: Iterable[AnyRecord],
    out_path: str | os.PathLike[str],
    config: SelectConfig | None = None,
) -> SelectReport:
    """Score the pool toward the target, keep ``budget`` records and write them to ``out_path``."""
    config = config or SelectConfig()
    stats = CurateStats("select")
    records = list(pool)
    stats.n_read = len(records)
    texts = ["\n\n".join(unit_texts(record, config.field)) for record in records]
    target_texts = (
        []
        if config.method == "perplexity"
        else ["\n\n".join(unit_texts(r, config.field)) for r in target]
    )
    if config.method != "perplexity" and not target_texts:
        raise ValueError("select: the target holds no records")
    budget = min(config.budget, len(records))
    if config.method == "dsir":
        scores = dsir_log_weights(texts, target_texts, config.ngram, config.num_buckets)
        selected = (
            gumbel_top_k(scores, budget, config.seed) if config.gumbel else top_k(scores, budget)
        )
    elif config.method == "zipfit":
        scores = zipfit_scores(
            texts, target_texts, config.target_sample, config.seed, config.progress
        )
        selected = top_k(scores, budget)
    else:
        assert config.model is not None
        scores = perplexities(
            texts,
            config.model,
            max_length=config.max_length,
            batch_size=config.batch_size,
            progress=config.progress,
        )
        selected = band_mask(scores, budget, config.band)

    def kept() -> Iterable[AnyRecord]:
        for record, score, chosen in zip(records, scores, selected, strict=True):
            if not chosen:
                continue
            metadata = {
                **record.metadata,
                "select": {"method": config.method, "score": float(score)},
            }
            yield dataclasses.replace(record, metadata=metadata)

    stats.n_kept = write_records(kept(), out_path)
    stats.dropped["not_selected"] = stats.n_read - stats.n_kept
    return SelectReport(stats, config.method, scores, selected, [record.id for record in records])
