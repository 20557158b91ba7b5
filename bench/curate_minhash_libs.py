"""Which MinHash library ``prefkit curate dedup`` uses: datasketch against rensa.

Both do the same work on the same generated texts: MinHash signatures of word
3-gram shingles (128 permutations) and an LSH index at threshold 0.7, each
text queried and then inserted, as the streaming dedup does. Repeats are
interleaved; medians, the load average and both tools' duplicate counts (they
estimate the same Jaccard, so the counts should be close) go to
``bench/results/curate_minhash_libs.json``.

    .venv/bin/python bench/curate_minhash_libs.py [--texts 20000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path

NUM_PERM = 128
THRESHOLD = 0.7
NGRAM = 3


def make_texts(count: int, seed: int = 0) -> list[str]:
    """Random 40-word texts over a 5,000-word vocabulary; every tenth copies an earlier one
    with two words replaced."""
    rng = random.Random(seed)
    vocabulary = [f"w{index}" for index in range(5000)]
    texts: list[str] = []
    for index in range(count):
        if index >= 10 and index % 10 == 0:
            words = texts[rng.randrange(index)].split()
            for _ in range(2):
                words[rng.randrange(len(words))] = rng.choice(vocabulary)
        else:
            words = [rng.choice(vocabulary) for _ in range(40)]
        texts.append(" ".join(words))
    return texts


def shingles(text: str) -> list[str]:
    words = text.split()
    return [" ".join(words[i : i + NGRAM]) for i in range(len(words) - NGRAM + 1)]


def run_datasketch(texts: list[str]) -> int:
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    duplicates = 0
    signatures = MinHash.bulk(
        [[s.encode() for s in shingles(text)] for text in texts], num_perm=NUM_PERM, seed=1
    )
    for key, signature in enumerate(signatures):
        if lsh.query(signature):
            duplicates += 1
        lsh.insert(key, signature)
    return duplicates


def run_rensa(texts: list[str]) -> int:
    from rensa import RMinHash, RMinHashLSH

    lsh = RMinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM, num_bands=16)
    duplicates = 0
    signatures = RMinHash.from_token_sets(
        [shingles(text) for text in texts], num_perm=NUM_PERM, seed=1
    )
    for key, signature in enumerate(signatures):
        if lsh.query(signature):
            duplicates += 1
        lsh.insert(key, signature)
    return duplicates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench/results/curate_minhash_libs.json")
    args = parser.parse_args()
    texts = make_texts(args.texts)
    tools = {"datasketch": run_datasketch, "rensa": run_rensa}
    seconds: dict[str, list[float]] = {name: [] for name in tools}
    found: dict[str, int] = {}
    load = [os.getloadavg()]
    for _ in range(args.repeats):
        for name, function in tools.items():
            start = time.perf_counter()
            found[name] = function(texts)
            seconds[name].append(time.perf_counter() - start)
    load.append(os.getloadavg())
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    result = {
        "texts": args.texts,
        "planted_near_duplicates": (args.texts - 1) // 10,
        "num_perm": NUM_PERM,
        "threshold": THRESHOLD,
        "ngram": NGRAM,
        "seconds": seconds,
        "median_seconds": medians,
        "texts_per_second": {name: args.texts / value for name, value in medians.items()},
        "datasketch_over_rensa": medians["datasketch"] / medians["rensa"],
        "duplicates_found": found,
        "load_average_before_after": load,
        "python": platform.python_version(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
