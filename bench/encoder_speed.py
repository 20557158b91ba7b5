"""The frozen encoder's pieces, timed apart: parallel vs serial batches, batch size, loading.

Same texts as ``bench/rm_speed_vs_trl.py`` (the unique responses of its 160 training
pairs, UKPConvArg1Strict fold 0), the packaged all-MiniLM-L6-v2, max length 128,
2 torch threads. Each timing runs in its own process (cold, as a training run
would be), the methods interleaved round by round; medians over ``--repeats``.

- ``encode_parallel``: ``FrozenEncoder.encode`` as shipped (batches of 16, run side
  by side on CPU, one intra-op thread each);
- ``encode_serial_16`` / ``encode_serial_32``: one batch at a time on all threads,
  batches of 16 / 32 (32 was the earlier default);
- ``load_direct``: ``load_base_model`` (tensors loaded straight from safetensors);
- ``load_from_pretrained``: ``AutoModel.from_pretrained`` on the same folder.

The model classes are imported before every clock. Padding (share of padded
positions in the encoder's batches, longest first) is computed from the token counts.
Writes bench/results/encoder_speed.json.

    .venv/bin/python bench/encoder_speed.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "encoder_speed.json"
METHODS = (
    "encode_parallel",
    "encode_serial_16",
    "encode_serial_32",
    "load_direct",
    "load_from_pretrained",
)


def texts() -> list[str]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from rm_speed_vs_trl import subset

    train, _ = subset(160, 300)
    return sorted({text for record in train for text in (record.response_a, record.response_b)})


def worker(method: str) -> float:
    import torch
    import transformers.models.bert.modeling_bert  # noqa: F401  (imported before every clock)
    from transformers import AutoModel

    from prefkit.rm.encoder import FrozenEncoder, default_backbone, load_base_model

    torch.set_num_threads(2)
    backbone = default_backbone()
    if method.startswith("load"):
        start = time.perf_counter()
        if method == "load_direct":
            load_base_model(backbone)
        else:
            AutoModel.from_pretrained(backbone, use_safetensors=True, dtype=torch.float32)
        return time.perf_counter() - start
    batch_size = 32 if method == "encode_serial_32" else 16
    encoder = FrozenEncoder(backbone, max_length=128, batch_size=batch_size)
    if method != "encode_parallel":
        encoder.cpu_workers = lambda num_batches: (1, torch.get_num_threads())
    data = texts()
    encoder.model  # noqa: B018 (loading is timed by the load_* methods)
    start = time.perf_counter()
    encoder.encode(data)
    return time.perf_counter() - start


def padding(batch_size: int) -> dict[str, float]:
    from prefkit.rm.encoder import FrozenEncoder, default_backbone

    encoder = FrozenEncoder(default_backbone(), max_length=128)
    lengths = sorted(
        (min(int(count), 128) for count in encoder.count_tokens(texts())), reverse=True
    )
    padded = sum(
        max(lengths[start : start + batch_size]) * len(lengths[start : start + batch_size])
        for start in range(0, len(lengths), batch_size)
    )
    return {
        "tokens": sum(lengths),
        "padded_positions": padded,
        "padding_share": 1 - sum(lengths) / padded,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", choices=METHODS, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()
    if args.worker:
        print("SECONDS", worker(args.worker))
        return
    seconds: dict[str, list[float]] = {method: [] for method in METHODS}
    for repeat in range(args.repeats):
        for method in METHODS:
            output = subprocess.run(
                [sys.executable, __file__, "--worker", method],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            value = float(
                next(line for line in output.splitlines() if line.startswith("SECONDS")).split()[1]
            )
            seconds[method].append(value)
            print(repeat, method, f"{value:.3f} s", file=sys.stderr)
    medians = {method: statistics.median(values) for method, values in seconds.items()}
    report = {
        "what": __doc__.split("\n\n")[1].replace("\n", " "),
        "texts": len(texts()),
        "seconds_each_run": seconds,
        "median_seconds": medians,
        "ratios": {
            "serial_16_over_parallel": medians["encode_serial_16"] / medians["encode_parallel"],
            "serial_32_over_parallel": medians["encode_serial_32"] / medians["encode_parallel"],
            "from_pretrained_over_direct": medians["load_from_pretrained"] / medians["load_direct"],
        },
        "padding": {"batch_16": padding(16), "batch_32": padding(32)},
    }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(report, indent=2) + "\n")
    print(
        json.dumps(
            {"median_seconds": medians, "ratios": report["ratios"], "padding": report["padding"]},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
