"""Padding of each align layout when batches are grouped by one width or the other.

The pairs, tokenizer and batch size of ``bench/align_speed_vs_trl.py`` (128 pairs,
as its 16 steps use, and 1,024 pairs for a longer run). For each layout (plain:
one ``prompt + completion`` row per completion; shared prompt: one row of
``prompt + every completion``) the batches of one epoch are formed by the
training loop's sampler (seed 0, the default) grouped by (a) the plain width,
prompt + longest completion, and (b) the packed width, prompt + all completions;
the padded positions of each layout's rows are counted. No model runs, so the
numbers are exact. Writes bench/results/align_padding.json.

    .venv/bin/python bench/align_padding.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS = Path(__file__).resolve().parent / "results" / "align_padding.json"


def main() -> None:
    from align_speed_vs_trl import BATCH, MAX_LENGTH, _pairs, _records, _tokenizer
    from prefkit.align.trainer import AlignConfig, AlignTask, build_examples
    from prefkit.train.loop import TrainConfig
    from prefkit.train.sampler import LengthGroupedBatchSampler

    tokenizer = _tokenizer()
    seed = TrainConfig().seed
    report = {
        "what": __doc__.split("\n\n")[1].replace("\n", " "),
        "batch_size": BATCH,
        "seed": seed,
    }
    for count in (128, 1024):
        records = _records(_pairs(count))
        tasks = {}
        for layout, shared in (("plain", False), ("shared_prompt", True)):
            config = AlignConfig(
                max_length=MAX_LENGTH,
                max_prompt_length=MAX_LENGTH - 2,
                shared_prompt=shared,
                cache_ref=False,
            )
            examples, _ = build_examples(records, tokenizer, config.kind, config.tokenize_config())
            tasks[layout] = AlignTask(examples, config, pad_id=tokenizer.pad_token_id)
        results = {}
        for layout, task in tasks.items():
            for key, keyed in (
                ("plain_width", tasks["plain"]),
                ("packed_width", tasks["shared_prompt"]),
            ):
                sampler = LengthGroupedBatchSampler(keyed.example_lengths(), BATCH, seed=seed)
                real = padded = 0
                for batch in sampler.batches(0):
                    collated = task.collate(batch)
                    rows = collated.shared if collated.shared is not None else collated.sequences
                    padded += rows.input_ids.numel()
                    real += int((rows.input_ids != tokenizer.pad_token_id).sum())
                results[f"{layout}_grouped_by_{key}"] = {
                    "tokens": real,
                    "positions": padded,
                    "padding_share": 1 - real / padded,
                }
        report[f"{count}_pairs"] = results
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(
        json.dumps({key: value for key, value in report.items() if key.endswith("pairs")}, indent=2)
    )


if __name__ == "__main__":
    main()
