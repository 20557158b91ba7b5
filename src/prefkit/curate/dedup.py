"""Duplicate and near-duplicate records: exact, MinHash with LSH, and semantic.

What is compared is chosen by ``field`` (see :func:`prefkit.curate.text.unit_texts`):
the prompt, the responses (as an unordered set), or the prompt with the
responses. Three methods:

- ``exact``: the normalised text (NFKC, case folded, whitespace collapsed; see
  :func:`prefkit.curate.text.normalize`) hashed with BLAKE2b.
- ``minhash`` (the default): exact first, then MinHash signatures of word
  ``ngram`` shingles of the normalised words (punctuation dropped), computed by
  rensa's ``RMinHash`` (chosen over datasketch by ``bench/curate_minhash_libs.py``:
  about 9x faster at the same settings), and LSH banding (:func:`lsh_bands`): per
  band, the records are sorted by a 64-bit hash of their band and every pair in a
  run of equal hashes is a candidate, as in rensa's ``RMinHashLSH`` but a few
  bytes per record and band instead of its hash tables (about 2.8 KB per record
  at 32 bands). Every candidate is verified: two records are duplicates when
  their estimated Jaccard similarity (the share of equal signature values) is at
  least ``threshold``, so a collision of two band hashes costs one verification,
  never a wrong merge. A text shorter than ``ngram`` words is one shingle.
- ``semantic``: embeddings of the frozen encoder through the reward model's
  embedding cache, grouped by seeded k-means, and within each group every pair
  with cosine similarity at least ``semantic_threshold`` (SemDeDup, Abbas et al.
  2023; the departure: the kept member is chosen by ``keep`` rather than by
  distance to the centroid).

Duplicates are joined transitively (union-find) into clusters; ``keep`` picks
one member of each cluster (the first, the longest, or the highest
``metadata[score_key]``) and the others are dropped. Rankings and candidate sets
also lose responses that duplicate another response of the same record (the
same method; semantic runs use MinHash for this); a record left with fewer
than two responses is dropped.

Memory: the records are spilled to a temporary JSONL file and read back for
writing; in memory are per record a parent index, a length, a score, an 8-byte
hash and its entry in the table of exact keys. The signatures and the band
hashes go to temporary files; banding holds one band's hashes and their order at
a time (about 40 bytes per record) and the candidate pairs, and verification
reads the signature rows of a few thousand pairs at a time. The semantic method holds the
embeddings, (N, D) float32.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from array import array
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from prefkit.curate.stats import CurateStats, RecordProblems
from prefkit.curate.text import Field, normalize, unit_texts, words, words_of_normalized
from prefkit.data.errors import OnError
from prefkit.data.records import (
    AnyRecord,
    RankingRecord,
    record_from_dict,
    render_text,
    text_length,
)
from prefkit.data.write import write_records
from prefkit.progress import progress_iter

CHUNK = 4096
"""Records whose signatures are computed in one call."""


@dataclass
class DedupConfig:
    """Settings of ``prefkit curate dedup`` / :func:`dedup_records`."""

    field: Field = "pair"
    """What is compared: prompt, response (the responses as an unordered set), pair or all
    (the prompt with every response; for pairs the same as pair)."""
    method: Literal["exact", "minhash", "semantic"] = "minhash"
    """exact: equal normalised text (NFKC, case folded, whitespace collapsed); minhash: exact, then
    estimated Jaccard of word n-gram shingles via MinHash LSH; semantic: cosine of frozen-encoder
    embeddings within k-means clusters."""
    ngram: int = 3
    """Words per shingle (minhash)."""
    num_perm: int = 128
    """MinHash permutations (minhash)."""
    threshold: float = 0.6
    """Estimated Jaccard similarity at or above which two texts are near-duplicates (minhash)."""
    semantic_threshold: float = 0.95
    """Cosine similarity at or above which two embeddings are duplicates (semantic)."""
    clusters: int | None = None
    """k-means clusters (semantic); none = the square root of the record count."""
    keep: Literal["first", "longest", "highest-score"] = "first"
    """Which member of a cluster is kept: the first read, the longest (characters of the compared
    text), or the highest metadata[score-key]."""
    score_key: str = "score"
    """Metadata key holding the score for --keep highest-score."""
    within_record: bool = True
    """Also remove responses of a ranking that duplicate another response of the same record."""
    seed: int = 0
    """Seed of the MinHash permutations and of k-means."""
    backbone: str | None = None
    """Encoder checkpoint folder (semantic); none = the packaged all-MiniLM-L6-v2."""
    max_length: int = 256
    """Tokens per text embedded (semantic)."""
    cache_dir: str | None = None
    """Embedding cache folder (semantic); none = the reward model's default cache."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        if self.field not in ("prompt", "response", "pair", "all"):
            raise ValueError(
                f"DedupConfig: field must be prompt, response, pair or all, got {self.field!r}"
            )
        if self.method not in ("exact", "minhash", "semantic"):
            raise ValueError(
                f"DedupConfig: method must be exact, minhash or semantic, got {self.method!r}"
            )
        if self.keep not in ("first", "longest", "highest-score"):
            raise ValueError(
                f"DedupConfig: keep must be first, longest or highest-score, got {self.keep!r}"
            )
        if self.ngram < 1 or self.num_perm < 2:
            raise ValueError("DedupConfig: ngram must be >= 1 and num_perm >= 2")
        if not 0.0 < self.threshold <= 1.0 or not 0.0 < self.semantic_threshold <= 1.0:
            raise ValueError("DedupConfig: threshold and semantic_threshold must be in (0, 1]")
        if self.clusters is not None and self.clusters < 1:
            raise ValueError(f"DedupConfig: clusters must be >= 1, got {self.clusters}")


@dataclass
class DedupReport:
    """What :func:`dedup_records` did."""

    stats: CurateStats
    """Records read, kept and dropped by reason; responses removed."""
    num_clusters: int = 0
    """Clusters with more than one member."""
    bands: tuple[int, int] | None = None
    """(LSH bands, rows per band) used by minhash."""
    clusters_path: Path | None = None
    """The cluster report written, when asked for."""
    dropped_ids: list[str] = field(default_factory=list)
    """Ids of the records dropped as duplicates (in input order)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.stats.to_dict(),
            "clusters": self.num_clusters,
            "lsh_bands_rows": list(self.bands) if self.bands else None,
        }


# ------------------------------------------------------------------------ parameters


def lsh_bands(threshold: float, num_perm: int, min_recall: float = 0.9) -> tuple[int, int]:
    """(bands, rows), bands * rows == num_perm (rensa requires a divisor): of the band counts
    that make a pair at exactly ``threshold`` an LSH candidate with probability at least
    ``min_recall``, the one with the fewest false candidates (the area under the S-curve
    1 - (1 - s^rows)^bands below ``threshold``). Candidates are verified on the signatures,
    so a false candidate costs time, a missed one costs recall."""
    grid = np.linspace(0.0, threshold, 201)
    best: tuple[float, int, int] | None = None
    for bands in range(1, num_perm + 1):
        if num_perm % bands:
            continue
        rows = num_perm // bands
        if 1.0 - (1.0 - threshold**rows) ** bands < min_recall:
            continue
        false_area = float(np.trapezoid(1.0 - (1.0 - grid**rows) ** bands, grid))
        if best is None or false_area < best[0]:
            best = (false_area, bands, rows)
    return (num_perm, 1) if best is None else (best[1], best[2])


def shingles(text: str, ngram: int) -> list[str]:
    """Word ``ngram`` shingles of the normalised words; a shorter text is one shingle."""
    return _shingles_of_words(words(text), ngram)


def _shingles_of_words(tokens: list[str], ngram: int) -> list[str]:
    if len(tokens) <= ngram:
        return [" ".join(tokens)] if tokens else []
    return list(map(" ".join, zip(*(tokens[start:] for start in range(ngram)))))


def exact_key(text: str) -> int:
    """A 64-bit hash of the normalised text."""
    return _key_of_normalized(normalize(text))


def _key_of_normalized(normalized: str) -> int:
    return int.from_bytes(hashlib.blake2b(normalized.encode(), digest_size=8).digest(), "little")


def minhash_signatures(texts: list[str], config: DedupConfig) -> np.ndarray:
    """(N, num_perm) uint32 rensa ``RMinHash`` signatures of ``texts``."""
    return _signatures_of_shingles([shingles(text, config.ngram) for text in texts], config)


def _signatures_of_shingles(sets: list[list[str]], config: DedupConfig) -> np.ndarray:
    from rensa import RMinHash

    rows = RMinHash.digests_from_token_sets(sets, num_perm=config.num_perm, seed=config.seed)
    return np.array(rows, dtype=np.uint32).reshape(len(sets), config.num_perm)


_MIX = np.uint64(0x9E3779B97F4A7C15)


def band_hashes(signatures: np.ndarray, bands: int) -> np.ndarray:
    """(N, bands) uint64: a hash of each band of rows of ``signatures`` (N, num_perm)."""
    rows = signatures.shape[1] // bands
    values = signatures.astype(np.uint64).reshape(len(signatures), bands, rows)
    hashed = np.zeros((len(signatures), bands), dtype=np.uint64)
    for row in range(rows):  # multiply-add chain, then the splitmix64 finaliser
        hashed = hashed * _MIX + values[:, :, row] + np.uint64(row + 1)
    hashed ^= hashed >> np.uint64(30)
    hashed *= np.uint64(0xBF58476D1CE4E5B9)
    hashed ^= hashed >> np.uint64(27)
    hashed *= np.uint64(0x94D049BB133111EB)
    hashed ^= hashed >> np.uint64(31)
    return hashed


def equal_key_pairs(keys: np.ndarray) -> np.ndarray:
    """Sorted codes ``a * N + b`` (a < b) of every pair of positions of ``keys`` (N,) holding
    the same value; the work is linear in N plus the number of pairs."""
    count = len(keys)
    if count < 2:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(keys, kind="stable")  # equal keys stay in ascending position
    ordered = keys[order]
    starts = np.ones(count, dtype=bool)
    starts[1:] = ordered[1:] != ordered[:-1]
    run_start = np.flatnonzero(starts)
    run_end = np.append(run_start[1:], count)[np.cumsum(starts) - 1]  # (N,) end of each run
    live = np.flatnonzero(run_end - np.arange(count) > 1)  # places with a later run member
    codes = []
    distance = 1
    while len(live):
        live = live[live + distance < run_end[live]]
        if not len(live):
            break
        codes.append(order[live].astype(np.int64) * count + order[live + distance])
        distance += 1
    return np.unique(np.concatenate(codes)) if codes else np.zeros(0, dtype=np.int64)


# ------------------------------------------------------------------------ clustering


class _UnionFind:
    def __init__(self) -> None:
        self.parent = array("q")

    def add(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, item: int) -> int:
        root = item
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[item] != root:  # path compression
            self.parent[item], item = root, self.parent[item]
        return root

    def union(self, a: int, b: int) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if (
            root_a != root_b
        ):  # the lower index becomes the root: clusters do not depend on order of unions
            low, high = sorted((root_a, root_b))
            self.parent[high] = low


class _SignatureFile:
    """MinHash signatures on disk, (N, num_perm) uint32, and one file of band hashes per LSH
    band, (N,) uint64, appended a chunk at a time."""

    READ_PAIRS = 16384
    """Pairs compared per batch of row reads."""

    def __init__(self, folder: Path, num_perm: int, bands: int):
        self.path = folder / "signatures.u32"
        self.num_perm = num_perm
        self.bands = bands
        self.count = 0
        self._handle = open(self.path, "w+b")  # written, then read back by row
        self._band_paths = [folder / f"band{band:04d}.u64" for band in range(bands)]
        self._band_handles = [open(path, "wb") for path in self._band_paths]

    def append(self, signatures: np.ndarray) -> None:
        self._handle.write(np.ascontiguousarray(signatures, dtype=np.uint32).tobytes())
        hashed = band_hashes(signatures, self.bands)  # (C, bands)
        for band, handle in enumerate(self._band_handles):
            handle.write(np.ascontiguousarray(hashed[:, band]).tobytes())
        self.count += len(signatures)

    def band(self, band: int) -> np.ndarray:
        """(N,) uint64 hashes of band ``band``."""
        self._band_handles[band].flush()
        return np.fromfile(self._band_paths[band], dtype=np.uint64, count=self.count)

    def similarities(self, rows_a: np.ndarray, rows_b: np.ndarray) -> np.ndarray:
        """(P,) estimated Jaccard similarity of each pair of rows."""
        self._handle.flush()
        out = np.zeros(len(rows_a), dtype=np.float64)
        for start in range(0, len(rows_a), self.READ_PAIRS):
            stop = start + self.READ_PAIRS
            needed, where = np.unique(
                np.concatenate([rows_a[start:stop], rows_b[start:stop]]), return_inverse=True
            )
            stored = self._read_rows(needed)  # (R, num_perm)
            half = stop - start if stop <= len(rows_a) else len(rows_a) - start
            out[start:stop] = (stored[where[:half]] == stored[where[half:]]).mean(axis=1)
        return out

    def _read_rows(self, rows: np.ndarray) -> np.ndarray:
        # One read per row rather than a memory map: the kernel maps the cached pages around
        # each touched one as well, and random rows would soon hold the whole file resident.
        width = self.num_perm * 4
        descriptor = self._handle.fileno()
        data = b"".join(os.pread(descriptor, width, int(row) * width) for row in rows.tolist())
        return np.frombuffer(data, dtype=np.uint32).reshape(len(rows), self.num_perm)

    def close(self) -> None:
        for handle in [self._handle, *self._band_handles]:
            handle.close()


class _MinHashIndex:
    """Near-duplicate search: signatures appended a chunk at a time, then LSH banding and the
    verification of every candidate pair."""

    def __init__(self, config: DedupConfig, folder: Path):
        self.config = config
        self.bands = lsh_bands(config.threshold, config.num_perm)
        self.signatures = _SignatureFile(folder, config.num_perm, self.bands[0])

    def add_chunk(self, shingle_sets: list[list[str]]) -> None:
        """Append the signatures of ``shingle_sets`` as the next rows."""
        self.signatures.append(_signatures_of_shingles(shingle_sets, self.config))

    def duplicate_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Rows (a, b), a < b, sharing a band whose estimated Jaccard similarity is at least
        the threshold, sorted."""
        count = self.signatures.count
        candidates = np.zeros(0, dtype=np.int64)
        for band in range(self.bands[0]):
            found = equal_key_pairs(self.signatures.band(band))
            candidates = np.union1d(candidates, found) if len(candidates) else found
        rows_a, rows_b = np.divmod(candidates, count) if count else (candidates, candidates)
        similarity = self.signatures.similarities(rows_a, rows_b)
        verified = similarity >= self.config.threshold
        return rows_a[verified], rows_b[verified]


class _Deduplicator:
    """Pass one: per record its hash, length and score, and the unions of duplicates."""

    def __init__(self, config: DedupConfig, folder: Path):
        self.config = config
        self.union = _UnionFind()
        self.first_with_key: dict[int, int] = {}
        self.exact_keys = array("Q")
        self.lengths = array("q")
        self.scores = array("d")
        self.compared = array("b")
        self.row_of = array("q")  # record -> signature or embedding row; -1: exact copy or empty
        self.owner = array("q")  # row -> record
        self.index = _MinHashIndex(config, folder) if config.method == "minhash" else None
        self.pending: list[list[str]] = []
        self.semantic_texts: list[str] = []
        self.embeddings: np.ndarray | None = None

    def add(self, record: AnyRecord, score: float) -> None:
        position = self.union.add()
        text = "\n\n".join(unit_texts(record, self.config.field))
        normalized = normalize(text)
        key = _key_of_normalized(normalized)
        self.exact_keys.append(key)
        self.lengths.append(len(text))
        self.scores.append(score)
        self.row_of.append(-1)
        if not normalized:  # an empty text duplicates nothing
            self.compared.append(0)
            return
        self.compared.append(1)
        first = self.first_with_key.setdefault(key, position)
        if first != position:
            self.union.union(position, first)
            return
        if self.config.method == "exact":
            return
        self.row_of[position] = len(self.owner)
        self.owner.append(position)
        if self.index is not None:
            self.pending.append(
                _shingles_of_words(words_of_normalized(normalized), self.config.ngram)
            )
            if len(self.pending) >= CHUNK:
                self.index.add_chunk(self.pending)
                self.pending.clear()
        else:
            self.semantic_texts.append(text)

    def finish(self) -> None:
        if self.index is not None:
            self.index.add_chunk(self.pending)
            self.pending.clear()
            rows_a, rows_b = self.index.duplicate_pairs()
            for row_a, row_b in zip(rows_a.tolist(), rows_b.tolist(), strict=True):
                self.union.union(self.owner[row_a], self.owner[row_b])
        elif self.config.method == "semantic":
            self.embeddings = embed_texts(self.semantic_texts, self.config)
            for row_a, row_b in semantic_pairs(self.embeddings, self.config):
                self.union.union(self.owner[row_a], self.owner[row_b])
            self.semantic_texts.clear()

    def similarities(self, records_a: list[int], records_b: list[int]) -> list[float]:
        """Similarity of each pair of records as the method measures it (1 for exact copies)."""
        out = [1.0] * len(records_a)
        measured = [
            index
            for index, (a, b) in enumerate(zip(records_a, records_b, strict=True))
            if self.exact_keys[a] != self.exact_keys[b]
        ]
        if not measured:
            return out
        # An exact copy is measured through the first record with its text.
        rows_a, rows_b = (
            np.array(
                [
                    self.row_of[self.first_with_key[self.exact_keys[side[index]]]]
                    for index in measured
                ],
                dtype=np.int64,
            )
            for side in (records_a, records_b)
        )
        if self.embeddings is not None:
            values = np.einsum("pd,pd->p", self.embeddings[rows_a], self.embeddings[rows_b])
        else:
            assert self.index is not None
            values = self.index.signatures.similarities(rows_a, rows_b)
        for index, value in zip(measured, values.tolist(), strict=True):
            out[index] = float(value)
        return out

    def clusters(self) -> dict[int, list[int]]:
        """Root -> members (in input order) of every cluster of more than one record."""
        count = len(self.union.parent)
        roots = np.fromiter(map(self.union.find, range(count)), dtype=np.int64, count=count)
        compared = np.frombuffer(self.compared, dtype=np.int8).astype(bool)
        sizes = np.bincount(roots[compared], minlength=count)  # (N,) members per root
        clustered = np.flatnonzero(compared & (sizes[roots] > 1))
        members: dict[int, list[int]] = defaultdict(list)
        for position, root in zip(clustered.tolist(), roots[clustered].tolist(), strict=True):
            members[root].append(position)
        return dict(members)

    def keeper(self, group: list[int]) -> int:
        """The member of ``group`` that is kept (ties go to the first read)."""
        if self.config.keep == "longest":
            return max(group, key=lambda member: (self.lengths[member], -member))
        if self.config.keep == "highest-score":
            return max(group, key=lambda member: (self.scores[member], -member))
        return group[0]

    def close(self) -> None:
        if self.index is not None:
            self.index.signatures.close()


def embed_texts(texts: list[str], config: DedupConfig) -> np.ndarray:
    """(N, D) unit-length float32 embeddings through the reward model's embedding cache."""
    from prefkit.progress import ProgressCounter
    from prefkit.rm.encoder import EmbeddingCache, FrozenEncoder, encode_texts, resolve_backbone

    encoder = FrozenEncoder(resolve_backbone(config.backbone), max_length=config.max_length)
    with ProgressCounter("dedup: embedding", "text", enabled=config.progress) as counter:
        encoded = encode_texts(
            encoder, texts, cache=EmbeddingCache(config.cache_dir), progress=counter
        )
    embeddings = encoded.embeddings
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings / np.maximum(norms, 1e-12)


def kmeans(points: np.ndarray, clusters: int, seed: int, iterations: int = 20) -> np.ndarray:
    """(N,) cluster of each point: spherical k-means (cosine), seeded k-means++ start."""
    rng = np.random.default_rng(seed)
    count = len(points)
    clusters = min(clusters, count)
    centres = [points[rng.integers(count)]]
    for _ in range(1, clusters):
        distance = 1.0 - np.max(points @ np.array(centres).T, axis=1)  # (N,)
        weights = np.clip(distance, 0.0, None)
        total = weights.sum()
        choice = rng.choice(count, p=weights / total) if total > 0 else rng.integers(count)
        centres.append(points[choice])
    centre_matrix = np.array(centres)  # (K, D)
    labels = np.zeros(count, dtype=np.int64)
    for _ in range(iterations):
        labels = np.argmax(points @ centre_matrix.T, axis=1)
        for cluster in range(clusters):
            chosen = points[labels == cluster]
            if len(chosen):
                mean = chosen.sum(axis=0)
                centre_matrix[cluster] = mean / max(float(np.linalg.norm(mean)), 1e-12)
    return labels


def semantic_pairs(embeddings: np.ndarray, config: DedupConfig) -> Iterator[tuple[int, int]]:
    """Pairs of rows (a < b) in one k-means cluster with cosine >= ``semantic_threshold``."""
    if len(embeddings) < 2:
        return
    clusters = config.clusters or max(1, round(math.sqrt(len(embeddings))))
    labels = kmeans(embeddings, clusters, config.seed)
    for cluster in np.unique(labels):
        rows = np.flatnonzero(labels == cluster)
        if len(rows) < 2:
            continue
        cosine = embeddings[rows] @ embeddings[rows].T  # (M, M)
        first, second = np.nonzero(np.triu(cosine >= config.semantic_threshold, k=1))
        for a, b in zip(first.tolist(), second.tolist(), strict=True):
            yield int(rows[a]), int(rows[b])


def _record_score(record: AnyRecord, config: DedupConfig, problems: RecordProblems) -> float | None:
    """The score ``--keep highest-score`` ranks by (0 otherwise); ``None``: rejected."""
    if config.keep != "highest-score":
        return 0.0
    value = record.metadata.get(config.score_key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        problems.reject(
            record,
            f"metadata.{config.score_key}",
            f"expected a finite number to rank duplicates by, found {value!r}",
            "missing_score",
            hint="Score the data first, or choose --keep first|longest",
        )
        return None
    return float(value)


def dedup_responses(
    record: RankingRecord, config: DedupConfig
) -> tuple[RankingRecord | None, list[list[int]]]:
    """``record`` without responses that duplicate another of its responses, and the groups
    of duplicate response indices; ``None`` when fewer than two responses are left."""
    texts = [render_text(response) for response in record.responses]
    keys = [exact_key(text) for text in texts]
    union = _UnionFind()
    for _ in texts:
        union.add()
    signatures = None if config.method == "exact" else minhash_signatures(texts, config)
    for a in range(len(texts)):
        for b in range(a + 1, len(texts)):
            same = keys[a] == keys[b] or (
                signatures is not None
                and float((signatures[a] == signatures[b]).mean()) >= config.threshold
            )
            if same and normalize(texts[a]):
                union.union(a, b)
    groups: dict[int, list[int]] = defaultdict(list)
    for position in range(len(texts)):
        groups[union.find(position)].append(position)
    duplicates = [group for group in groups.values() if len(group) > 1]
    if not duplicates:
        return record, []
    scores = record.preference_scores()

    def rank(position: int) -> tuple[float, int]:
        if config.keep == "longest":
            return (float(text_length(record.responses[position])), -position)
        if config.keep == "highest-score":
            score = scores[position]
            return (-math.inf if score is None else score, -position)
        return (0.0, -position)

    keep = sorted(max(group, key=rank) for group in groups.values())
    if len(keep) < 2:
        return None, duplicates
    removed = [position for position in range(len(texts)) if position not in keep]
    metadata = {**record.metadata, "dedup_removed_responses": removed}
    trimmed = RankingRecord(
        id=record.id,
        prompt=record.prompt,
        responses=tuple(record.responses[i] for i in keep),
        scores=None if record.scores is None else tuple(record.scores[i] for i in keep),
        ranks=None if record.ranks is None else tuple(record.ranks[i] for i in keep),
        response_ids=None
        if record.response_ids is None
        else tuple(record.response_ids[i] for i in keep),
        category=record.category,
        metadata=metadata,
    )
    return trimmed, duplicates


def dedup_records(
    records: Iterable[AnyRecord],
    out_path: str | os.PathLike[str],
    config: DedupConfig | None = None,
    *,
    clusters_path: str | os.PathLike[str] | None = None,
    on_error: OnError = "raise",
    rejects_path: str | os.PathLike[str] | None = None,
) -> DedupReport:
    """Write ``records`` without duplicates to ``out_path``; see the module docstring.

    ``clusters_path`` (JSONL) receives one line per cluster of more than one
    record (``kept``: the kept id; ``members``: each id with its similarity to the
    kept one and the reason it was dropped), then one line per ranking that had
    duplicate responses (``record``, ``duplicate_responses``: groups of indices).
    Records that cannot be ranked by ``--keep highest-score`` follow ``on_error``.
    """
    config = config or DedupConfig()
    stats = CurateStats("dedup")
    problems = RecordProblems("dedup", on_error, Path(rejects_path) if rejects_path else None)
    report = DedupReport(stats)
    near_reason = {"minhash": "near_duplicate", "semantic": "semantic_duplicate"}.get(
        config.method, "exact_duplicate"
    )
    with tempfile.TemporaryDirectory(prefix="prefkit-dedup-") as scratch:
        folder = Path(scratch)
        spill_path = folder / "records.jsonl"
        dedup = _Deduplicator(config, folder)
        try:
            ids: list[str] = []
            with open(spill_path, "w", encoding="utf-8") as spill:
                for record in progress_iter(
                    records, description="dedup", unit="rec", enabled=config.progress
                ):
                    stats.n_read += 1
                    score = _record_score(record, config, problems)
                    if score is None:
                        stats.dropped["rejected_missing_score"] += 1
                        continue
                    spill.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
                    ids.append(record.id)
                    dedup.add(record, score)
            dedup.finish()
            report.bands = dedup.index.bands if dedup.index is not None else None
            clusters = dedup.clusters()
            report.num_clusters = len(clusters)
            dropped: dict[int, str] = {}
            cluster_rows = []
            groups = [clusters[root] for root in sorted(clusters)]
            keepers = [dedup.keeper(group) for group in groups]
            similarity = iter(
                dedup.similarities(
                    [member for group in groups for member in group],
                    [keeper for group, keeper in zip(groups, keepers, strict=True) for _ in group],
                )
            )
            for group, keeper in zip(groups, keepers, strict=True):
                members = []
                for member in group:
                    reason = None
                    if member != keeper:
                        exact_copy = dedup.exact_keys[member] == dedup.exact_keys[keeper]
                        reason = "exact_duplicate" if exact_copy else near_reason
                        dropped[member] = reason
                    members.append(
                        {
                            "id": ids[member],
                            "kept": member == keeper,
                            "similarity": round(next(similarity), 4),
                            "reason": reason,
                        }
                    )
                cluster_rows.append({"kept": ids[keeper], "size": len(group), "members": members})
            for reason in dropped.values():
                stats.dropped[reason] += 1
            report.dropped_ids = [ids[member] for member in sorted(dropped)]
            within_rows: list[dict[str, Any]] = []
            write_records(_kept_records(spill_path, dropped, config, stats, within_rows), out_path)
        finally:
            dedup.close()
            problems.close()
    if clusters_path is not None:
        report.clusters_path = Path(clusters_path)
        report.clusters_path.parent.mkdir(parents=True, exist_ok=True)
        with open(clusters_path, "w", encoding="utf-8") as handle:
            for row in [*cluster_rows, *within_rows]:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return report


def _kept_records(
    spill_path: Path,
    dropped: dict[int, str],
    config: DedupConfig,
    stats: CurateStats,
    within_rows: list[dict[str, Any]],
) -> Iterator[AnyRecord]:
    with open(spill_path, encoding="utf-8") as spill:
        for position, line in enumerate(spill):
            if position in dropped:
                continue
            record = record_from_dict(json.loads(line))
            if config.within_record and isinstance(record, RankingRecord):
                trimmed, groups = dedup_responses(record, config)
                if groups:
                    within_rows.append({"record": record.id, "duplicate_responses": groups})
                if trimmed is None:
                    stats.dropped["within_record_duplicates"] += 1
                    continue
                if trimmed is not record:
                    stats.changed["responses_removed"] += 1
                record = trimmed
            stats.n_kept += 1
            yield record
