"""Token positions fed to the backbone while training: prefkit finetune vs TRL RewardTrainer.

Same data and settings as ``bench/rm_speed_vs_trl.py`` (160 UKPConvArg1Strict
training pairs of fold 0, all-MiniLM-L6-v2, 3 epochs, batch 16, max length 128),
one real training run of each. A global forward pre-hook on ``nn.Embedding``
sees every batch of token ids that reaches the backbone's word-embedding table
(the embedding whose size is the tokenizer's vocabulary) while the module is in
training mode, so scoring after training is not counted. For each method it
records the positions fed (batch x padded width, summed over the training
forward passes), how many of them are real tokens (not the pad id), and the
padded share. Nothing is estimated: both trainers are run and counted.
Writes bench/results/rm_padding.json.

    .venv/bin/python bench/rm_padding.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rm_speed_vs_trl import run_prefkit, run_trl, subset  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "rm_padding.json"


class TokenCounter:
    """Counts training-mode batches of token ids through word-embedding tables of one size."""

    def __init__(self, vocab_size: int, pad_token_id: int):
        self.vocab_size = vocab_size
        self.pad_token_id = pad_token_id
        self.positions = 0
        self.real_tokens = 0
        self.forward_passes = 0
        self.sequences = 0

    def __call__(self, module: torch.nn.Module, inputs: tuple) -> None:
        if not (
            isinstance(module, torch.nn.Embedding)
            and module.num_embeddings == self.vocab_size
            and module.training
        ):
            return
        ids = inputs[0]  # (B, T)
        self.positions += ids.numel()
        self.real_tokens += int((ids != self.pad_token_id).sum())
        self.forward_passes += 1
        self.sequences += ids.shape[0]

    def summary(self) -> dict:
        return {
            "positions": self.positions,
            "real_tokens": self.real_tokens,
            "padding_positions": self.positions - self.real_tokens,
            "padded_share": (self.positions - self.real_tokens) / self.positions,
            "forward_passes": self.forward_passes,
            "sequences": self.sequences,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-pairs", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--finetune-lr", type=float, default=3e-5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from prefkit.rm.encoder import default_backbone, load_tokenizer

    tokenizer = load_tokenizer(default_backbone())
    # a few test pairs only: the runners score them after training, outside the count
    train, test = subset(args.train_pairs, 300)
    test = test[:8]
    results: dict = {
        "settings": vars(args),
        "loadavg_1_5_15_at_start": list(os.getloadavg()),
        "methods": {},
    }
    for method in ("prefkit-finetune", "trl-reward-trainer"):
        torch.manual_seed(0)
        counter = TokenCounter(len(tokenizer), tokenizer.pad_token_id)
        handle = torch.nn.modules.module.register_module_forward_pre_hook(counter)
        start = time.perf_counter()
        try:
            with tempfile.TemporaryDirectory() as scratch:
                if method == "prefkit-finetune":
                    run = run_prefkit("finetune", train, test, args, Path(scratch))
                else:
                    run = run_trl(train, test, args, Path(scratch))
        finally:
            handle.remove()
        results["methods"][method] = {
            "pairs_trained": run["pairs_trained"],
            "seconds": time.perf_counter() - start,
            **counter.summary(),
        }
        print(method, results["methods"][method], file=sys.stderr, flush=True)
    results["loadavg_1_5_15_at_end"] = list(os.getloadavg())
    Path(args.results).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
