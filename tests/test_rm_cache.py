"""The embedding cache: sorted shards read through memory maps, old shards, concurrent writers.

Values are hand-made: the embedding of key ``i`` is ``i + [0, 0.1, 0.2, ...]`` and
its token count ``i``, so every row read back can be checked exactly.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import struct
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from prefkit.rm.encoder import EmbeddingCache, EncodedTexts, FrozenEncoder
from prefkit.rm.heads import NUM_TEXT_STATISTICS, build_features, text_statistics
from test_rm_train import make_tiny_bert

DIM = 4
NAMESPACE = "test-namespace"


def key(index: int) -> bytes:
    return hashlib.sha256(f"text {index}".encode()).digest()


def rows_of(indices) -> EncodedTexts:
    """The hand-made rows of ``indices``: embedding ``i + 0.1 * arange(DIM)``, ``i`` tokens."""
    indices = np.asarray(list(indices), dtype=np.int64)
    embeddings = indices[:, None].astype(np.float32) + 0.1 * np.arange(DIM, dtype=np.float32)
    return EncodedTexts(embeddings.astype(np.float32), indices.copy())


def store(cache: EmbeddingCache, indices) -> Path:
    indices = list(indices)
    return cache.store(NAMESPACE, [key(i) for i in indices], rows_of(indices))


def write_unsorted_shard(
    root: Path, namespace: str, digests: list[bytes], computed: EncodedTexts
) -> Path:
    """A shard as the version before sorted shards wrote it (its ``_write_shard``, verbatim but
    for the return): rows in insertion order, no metadata."""
    folder = root / namespace
    folder.mkdir(parents=True, exist_ok=True)
    name = f"shard-{uuid.uuid4().hex}"
    staging = folder / f".{name}.partial"
    tensors = {
        "keys": torch.from_numpy(
            np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(-1, 32).copy()
        ),
        "embeddings": torch.from_numpy(np.ascontiguousarray(computed.embeddings)),
        "num_tokens": torch.from_numpy(computed.num_tokens.astype(np.int64)),
    }
    save_file(tensors, str(staging))
    os.replace(staging, folder / f"{name}.safetensors")
    return folder / f"{name}.safetensors"


def test_hits_and_misses_across_shards(tmp_path):
    writer = EmbeddingCache(tmp_path)
    store(writer, range(0, 30))
    store(writer, range(30, 45))
    store(writer, [90, 91])
    reader = EmbeddingCache(tmp_path)
    queries = [44, 3, 100, 90, 3, 29, 30, 200, 0]
    found, encoded = reader.read(NAMESPACE, [key(i) for i in queries], DIM)
    assert found.tolist() == [True, True, False, True, True, True, True, False, True]
    expected = rows_of(queries)
    hits = np.flatnonzero(found)
    np.testing.assert_array_equal(encoded.embeddings[hits], expected.embeddings[hits])
    np.testing.assert_array_equal(encoded.num_tokens[hits], expected.num_tokens[hits])
    assert not encoded.embeddings[~found].any() and not encoded.num_tokens[~found].any()
    assert len(reader.shards(NAMESPACE)) == 3
    # An empty query and an empty namespace.
    assert reader.read(NAMESPACE, [], DIM)[0].shape == (0,)
    found, encoded = reader.read("other", [key(1)], DIM)
    assert not found.any() and encoded.embeddings.shape == (1, DIM)


def test_written_shards_are_sorted_by_key_and_keep_each_row_with_its_key(tmp_path):
    path = store(EmbeddingCache(tmp_path), range(50))
    tensors = load_file(path)
    keys = [bytes(row) for row in tensors["keys"].numpy()]
    assert keys == sorted(keys) and len(set(keys)) == 50
    index = {k: i for i, k in enumerate(key(i) for i in range(50))}
    for row, digest in enumerate(keys):
        np.testing.assert_array_equal(
            tensors["embeddings"][row].numpy(), rows_of([index[digest]]).embeddings[0]
        )
        assert int(tensors["num_tokens"][row]) == index[digest]


def test_a_text_in_several_shards_is_read_from_the_last_shard_by_name(tmp_path):
    cache = EmbeddingCache(tmp_path)
    first = store(cache, [1, 2, 3])
    second = cache.store(  # key 2 again, with other values
        NAMESPACE,
        [key(2), key(7)],
        EncodedTexts(np.full((2, DIM), -5, np.float32), np.array([8, 9])),
    )
    last = max(first, second, key=lambda p: p.name)
    found, encoded = EmbeddingCache(tmp_path).read(NAMESPACE, [key(2), key(7), key(1)], DIM)
    assert found.all()
    if last == second:
        assert encoded.embeddings[0].tolist() == [-5.0] * DIM and encoded.num_tokens[0] == 8
    else:
        np.testing.assert_array_equal(encoded.embeddings[0], rows_of([2]).embeddings[0])
    assert encoded.num_tokens.tolist()[1:] == [9, 1]


def test_shards_of_the_previous_version_are_read(tmp_path):
    """A folder written by the previous writer (rows in insertion order), then one new shard."""
    old_indices = [17, 3, 250, 8, 41, 0, 99]
    write_unsorted_shard(tmp_path, NAMESPACE, [key(i) for i in old_indices], rows_of(old_indices))
    cache = EmbeddingCache(tmp_path)
    queries = [0, 99, 5, 17, 250, 41]
    found, encoded = cache.read(NAMESPACE, [key(i) for i in queries], DIM)
    assert found.tolist() == [True, True, False, True, True, True]
    np.testing.assert_array_equal(encoded.embeddings[found], rows_of(queries).embeddings[found])
    np.testing.assert_array_equal(encoded.num_tokens[found], rows_of(queries).num_tokens[found])
    # The old shard's keys are held sorted in memory: 32 bytes of key + 8 of row per text.
    assert cache.index_bytes(NAMESPACE) == 40 * len(old_indices)
    store(cache, [5, 6])
    found, encoded = cache.read(NAMESPACE, [key(i) for i in queries], DIM)
    assert found.all()
    np.testing.assert_array_equal(encoded.embeddings, rows_of(queries).embeddings)
    assert cache.index_bytes(NAMESPACE) == 40 * len(old_indices)  # the new shard adds none


def test_a_cache_of_the_previous_version_serves_encode_without_the_encoder(tmp_path):
    bert = make_tiny_bert(tmp_path / "bert")
    texts = ["one text", "another text", "one text", "a third"]
    encoder = FrozenEncoder(bert, max_length=16)
    namespace = EmbeddingCache.namespace(encoder)
    unique = list(dict.fromkeys(texts))
    computed = encoder.encode(unique)
    digests = [EmbeddingCache.text_digest(namespace, "right", text) for text in unique]
    write_unsorted_shard(tmp_path / "cache", namespace, digests, computed)
    again = FrozenEncoder(bert, max_length=16)
    encoded = EmbeddingCache(tmp_path / "cache").encode(again, texts)
    assert again.calls == 0 and again._model is None
    rows = [unique.index(text) for text in texts]
    np.testing.assert_array_equal(encoded.embeddings, computed.embeddings[rows])
    np.testing.assert_array_equal(encoded.num_tokens, computed.num_tokens[rows])
    # A new text is embedded, stored in a second (sorted) shard, and read back from it.
    more = FrozenEncoder(bert, max_length=16)
    extended = EmbeddingCache(tmp_path / "cache").encode(more, [*texts, "a fourth"])
    assert more.calls == 1
    np.testing.assert_array_equal(extended.embeddings[:4], encoded.embeddings)
    last = FrozenEncoder(bert, max_length=16)
    final = EmbeddingCache(tmp_path / "cache").encode(last, ["a fourth", "a third"])
    assert last.calls == 0
    np.testing.assert_array_equal(final.embeddings, extended.embeddings[[4, 3]])


def test_opening_holds_no_embeddings_and_rows_are_read_from_disk_when_looked_up(tmp_path):
    """Opening reads the headers only (no key index in memory for sorted shards); a row is
    read at lookup time: a row rewritten in place in the file is seen by the next lookup."""
    path = store(EmbeddingCache(tmp_path), range(1000))
    cache = EmbeddingCache(tmp_path)
    [shard] = cache.shards(NAMESPACE)
    assert cache.index_bytes(NAMESPACE) == 0 and shard.sorted_keys is None
    found, before = cache.read(NAMESPACE, [key(7)], DIM)
    assert found.all()
    np.testing.assert_array_equal(before.embeddings[0], rows_of([7]).embeddings[0])

    # Find key 7's row in the file and overwrite its embedding in place.
    with path.open("rb") as handle:
        (header_size,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(header_size))
    keys = load_file(path)["keys"].numpy()
    row = next(r for r in range(len(keys)) if bytes(keys[r]) == key(7))
    begin = 8 + header_size + header["embeddings"]["data_offsets"][0] + row * DIM * 4
    with path.open("r+b") as handle:
        handle.seek(begin)
        handle.write(np.full(DIM, 42.0, dtype=np.float32).tobytes())
    found, after = cache.read(NAMESPACE, [key(7), key(8)], DIM)
    assert after.embeddings[0].tolist() == [42.0] * DIM
    np.testing.assert_array_equal(after.embeddings[1], rows_of([8]).embeddings[0])


def test_unfinished_and_broken_shards(tmp_path):
    store(EmbeddingCache(tmp_path), [1])
    (tmp_path / NAMESPACE / ".shard-unfinished.partial").write_bytes(b"half a shard")
    assert EmbeddingCache(tmp_path).read(NAMESPACE, [key(1)], DIM)[0].all()
    with pytest.raises(ValueError, match="expected \\(1, 8\\)"):
        EmbeddingCache(tmp_path).read(NAMESPACE, [key(1)], 8)
    broken = tmp_path / NAMESPACE / "shard-broken.safetensors"
    broken.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
    with pytest.raises(ValueError, match="shard-broken.safetensors: not a readable"):
        EmbeddingCache(tmp_path).read(NAMESPACE, [key(1)], DIM)


def write_shards(root: str, start: int, stop: int, per_shard: int, first_written, go) -> None:
    """Process body: store keys start..stop-1 in shards of ``per_shard``; after the first,
    wait until the reader has seen it."""
    cache = EmbeddingCache(root)
    for number, begin in enumerate(range(start, stop, per_shard)):
        store(cache, range(begin, min(begin + per_shard, stop)))
        if number == 0:
            first_written.set()
            go.wait(60)


def test_readers_see_whole_shards_while_two_processes_write(tmp_path):
    """Two writer processes store overlapping keys (0..199 and 100..299) while this process
    reads all 300 again and again: every row found is right, the found set only grows, and
    in the end every key is found (100..199 twice, in different shards)."""
    context = multiprocessing.get_context("spawn")
    events = [(context.Event(), context.Event()) for _ in range(2)]
    writers = [
        context.Process(target=write_shards, args=(str(tmp_path), start, start + 200, 20, *pair))
        for start, pair in zip((0, 100), events, strict=True)
    ]
    for writer in writers:
        writer.start()
    queries = [key(i) for i in range(300)]
    expected = rows_of(range(300))
    cache = EmbeddingCache(tmp_path)

    def check() -> np.ndarray:
        found, encoded = cache.read(NAMESPACE, queries, DIM)
        np.testing.assert_array_equal(encoded.embeddings[found], expected.embeddings[found])
        np.testing.assert_array_equal(encoded.num_tokens[found], expected.num_tokens[found])
        return found

    try:
        for first_written, _ in events:
            assert first_written.wait(120)
        found = check()
        assert found[0:20].all() and found[100:120].all()  # each writer's first shard
        for _, go in events:
            go.set()
        previous = found
        while any(writer.is_alive() for writer in writers):
            found = check()
            assert (found >= previous).all()
            previous = found
        for writer in writers:
            writer.join(60)
            assert writer.exitcode == 0
        assert check().all()
        assert len(cache.shards(NAMESPACE)) == 20
    finally:
        for writer in writers:
            if writer.is_alive():
                writer.kill()


def test_stats_features_filled_row_by_row_equal_the_per_text_statistics():
    texts = ["Hello there! Is this fine?", "", "see http://example.org now", "ONE two. Three"]
    embeddings = np.arange(8, dtype=np.float32).reshape(4, 2)
    chars = np.array([len(t) for t in texts], dtype=np.float32)
    tokens = np.array([7, 2, 6, 5], dtype=np.float32)
    features = build_features(
        ("response", "length", "stats"), embeddings, embeddings, chars, tokens, texts
    )
    expected = np.concatenate(
        [
            embeddings,
            np.stack([np.log1p(chars), np.log1p(tokens)], axis=1),
            np.array([text_statistics(t) for t in texts], dtype=np.float32),
        ],
        axis=1,
    )
    assert features.dtype == np.float32 and features.shape == (4, 2 + 2 + NUM_TEXT_STATISTICS)
    np.testing.assert_array_equal(features, expected)
    with pytest.raises(ValueError, match="got 3 response texts for 4 rows"):
        build_features(("stats",), embeddings, embeddings, chars, tokens, texts[:3])


@pytest.mark.parametrize("num_queries", [2, 80])
def test_keys_sharing_their_first_eight_bytes_are_told_apart(tmp_path, num_queries):
    """64 stored keys all begin with the same 8 bytes (the prefix the many-query search
    compares first); 2 queries take the whole-key search, 80 the prefix search."""
    shared = [b"\x00" * 8 + hashlib.sha256(f"k{i}".encode()).digest()[:24] for i in range(80)]
    cache = EmbeddingCache(tmp_path)
    cache.store(NAMESPACE, shared[:64], rows_of(range(64)))
    wanted = list(range(80))[::-1][:num_queries] if num_queries == 80 else [63, 70]
    found, encoded = cache.read(NAMESPACE, [shared[i] for i in wanted], DIM)
    assert found.tolist() == [i < 64 for i in wanted]
    np.testing.assert_array_equal(encoded.embeddings[found], rows_of(wanted).embeddings[found])
    np.testing.assert_array_equal(encoded.num_tokens[found], rows_of(wanted).num_tokens[found])
