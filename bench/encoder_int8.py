"""int8 dynamic quantisation of the frozen encoder: how close its embeddings stay, and its speed.

Same texts as ``bench/encoder_speed.py`` (the unique responses of the 160
training pairs of ``bench/rm_speed_vs_trl.py``), the packaged all-MiniLM-L6-v2,
max length 128, batches of 16 longest first, mean pooling over the real tokens,
2 torch threads, one batch at a time. The float32 model is the one prefkit
loads (``load_base_model``); the int8 model is
``torch.ao.quantization.quantize_dynamic`` of it on every ``nn.Linear``. Reports
the cosine similarity between each text's float32 and int8 embeddings
(min, quantiles, max), the same float32 loop against ``FrozenEncoder.encode`` as
a check that the loop computes prefkit's embeddings, and the wall time of one
pass over the texts for each model (medians of ``--repeats``, alternating, in
one process after a warm-up pass). Writes bench/results/encoder_int8.json.

    .venv/bin/python bench/encoder_int8.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from prefkit.rm.encoder import (
    FrozenEncoder,
    default_backbone,
    load_base_model,
    load_tokenizer,
    pool_hidden_states,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from encoder_speed import texts  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "encoder_int8.json"
MAX_LENGTH = 128
BATCH_SIZE = 16


@torch.inference_mode()
def embed(model: torch.nn.Module, tokenizer, data: list[str]) -> np.ndarray:
    """(N, H) mean-pooled embeddings, batches of BATCH_SIZE texts, longest first."""
    lengths = [len(ids) for ids in tokenizer(data, truncation=False)["input_ids"]]
    order = np.argsort(-np.array(lengths), kind="stable")
    out = np.zeros((len(data), model.config.hidden_size), dtype=np.float32)
    for start in range(0, len(data), BATCH_SIZE):
        rows = order[start : start + BATCH_SIZE]
        batch = tokenizer(
            [data[row] for row in rows],
            padding=True,
            truncation=True,
            max_length=MAX_LENGTH,
            return_tensors="pt",
        )
        hidden = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
        out[rows] = pool_hidden_states(hidden, batch["attention_mask"], "mean").numpy()
    return out


def cosine(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """(N,) row-wise cosine similarity."""
    return (left * right).sum(axis=1) / (
        np.linalg.norm(left, axis=1) * np.linalg.norm(right, axis=1)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()
    torch.set_num_threads(2)
    backbone = default_backbone()
    data = texts()
    tokenizer = load_tokenizer(backbone)
    float_model = load_base_model(backbone).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.ao.quantization is deprecated
        int8_model = torch.ao.quantization.quantize_dynamic(
            load_base_model(backbone).eval(), {torch.nn.Linear}, dtype=torch.qint8
        )
    load_start = os.getloadavg()
    float_embeddings = embed(float_model, tokenizer, data)
    int8_embeddings = embed(int8_model, tokenizer, data)
    shipped = FrozenEncoder(backbone, max_length=MAX_LENGTH, batch_size=BATCH_SIZE).encode(data)
    similarity = cosine(float_embeddings, int8_embeddings)
    seconds: dict[str, list[float]] = {"float32": [], "int8": []}
    for _ in range(args.repeats):
        for name, model in (("float32", float_model), ("int8", int8_model)):
            start = time.perf_counter()
            embed(model, tokenizer, data)
            seconds[name].append(time.perf_counter() - start)
    quantiles = np.quantile(similarity, [0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 1.0])
    results = {
        "texts": len(data),
        "max_length": MAX_LENGTH,
        "batch_size": BATCH_SIZE,
        "torch": torch.__version__,
        "quantized_engine": torch.backends.quantized.engine,
        "cosine_float32_vs_int8": dict(
            zip(("min", "p01", "p05", "q1", "median", "q3", "max"), map(float, quantiles))
        ),
        "cosine_float32_vs_int8_mean": float(similarity.mean()),
        "texts_below_0.95": int((similarity < 0.95).sum()),
        "check_min_cosine_loop_vs_frozen_encoder": float(
            cosine(float_embeddings, shipped.embeddings).min()
        ),
        "seconds": seconds,
        "median_seconds": {name: statistics.median(values) for name, values in seconds.items()},
        "loadavg_1_5_15_before": list(load_start),
        "loadavg_1_5_15_after": list(os.getloadavg()),
    }
    Path(args.results).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
