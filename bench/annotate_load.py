"""Simulated annotators against the annotation server: SQLite against PostgreSQL.

One server process per database (``python -m prefkit.annotate serve``, uvicorn,
one worker) on 127.0.0.1. At each concurrency level (default 1, 10 and 50
annotators) a fresh project of pairwise items is labelled for ``--seconds``
seconds by that many simulated annotators: asyncio httpx clients, each logged in
with its own token, that load the page, read the assignment and CSRF token from
it, and post an answer, in a loop with no think time. Measured: acknowledged
submissions per second, and the p50 / p99 latency of the answer post (answer
stored and committed, redirect sent) and of the page load (lease taken).

Both databases keep their durable settings: SQLite in WAL mode with
``synchronous=FULL``; PostgreSQL (a throwaway cluster from the system binaries,
see ``tests/postgres.py``, or ``--postgres-url``) with ``fsync`` on. The load
generator runs on the same machine as the server and the database, so the
numbers are what a small shared machine gives, not the server's ceiling.
Repeats are interleaved (repeat, level, database); medians over repeats are
reported, with the load average before and after. Writes
``bench/results/annotate_load.json``.

    python bench/annotate_load.py [--seconds 8] [--repeats 3] [--levels 1,10,50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "annotate_load.json"
sys.path.insert(0, str(ROOT / "tests"))  # the throwaway PostgreSQL cluster helper


def start_server(db_url: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefkit.annotate",
            "serve",
            "--db",
            db_url,
            "--port",
            "0",
            "--login-failures-per-minute",
            "1000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    holder: list[str] = []
    reader = threading.Thread(target=lambda: holder.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout=120)
    match = re.search(r"http://127\.0\.0\.1:(\d+)", holder[0] if holder else "")
    if not match:
        process.kill()
        raise RuntimeError(f"server did not start: {process.stderr.read()[-2000:]}")
    return process, f"http://127.0.0.1:{match.group(1)}"


def make_project(db_url: str, name: str, n_items: int, n_annotators: int) -> list[str]:
    from prefkit.annotate.config import ProjectConfig
    from prefkit.annotate.project import add_annotator, create_project
    from prefkit.annotate.store import open_store
    from prefkit.data.records import PairwiseRecord

    records = [
        PairwiseRecord(
            id=f"{name}-{i}",
            prompt=f"Question {i}: which answer is better?",
            response_a=f"First answer to {i}. " * 20,
            response_b=f"Second answer to {i}. " * 20,
            outcome="a",
        )
        for i in range(n_items)
    ]
    store = open_store(db_url)
    try:
        create_project(store, name, records, ProjectConfig(overlap=1, seed=1))
        return [add_annotator(store, name, f"annotator-{k}") for k in range(n_annotators)]
    finally:
        store.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, int(round(q * (len(ordered) - 1)))))
    return ordered[index]


async def annotate(base_url: str, tokens: list[str], seconds: float) -> dict:
    import httpx

    assignment = re.compile(r'name="assignment" value="(\d+)"')
    csrf = re.compile(r'name="csrf" value="([^"]+)"')
    page_ms: list[float] = []
    submit_ms: list[float] = []
    errors: list[str] = []
    clients = [httpx.AsyncClient(base_url=base_url, timeout=60.0) for _ in tokens]
    try:
        projects = []
        for client, token in zip(clients, tokens):
            form = await client.get("/login")
            reply = await client.post(
                "/login", data={"csrf": csrf.search(form.text).group(1), "token": token}
            )
            projects.append(reply.headers["location"])
        start = time.perf_counter()
        stop_at = start + seconds

        async def one(client: httpx.AsyncClient, path: str) -> int:
            done = 0
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                page = await client.get(path)
                t1 = time.perf_counter()
                found = assignment.search(page.text)
                if page.status_code != 200 or not found:
                    errors.append(f"page {page.status_code}")
                    return done
                reply = await client.post(
                    path + "submit",
                    data={
                        "csrf": csrf.search(page.text).group(1),
                        "assignment": found.group(1),
                        "choice": "left",
                    },
                )
                t2 = time.perf_counter()
                if reply.status_code != 303:
                    errors.append(f"submit {reply.status_code}")
                    return done
                page_ms.append(1000 * (t1 - t0))
                submit_ms.append(1000 * (t2 - t1))
                done += 1
            return done

        counts = await asyncio.gather(*(one(c, p) for c, p in zip(clients, projects)))
        elapsed = time.perf_counter() - start
    finally:
        for client in clients:
            await client.aclose()
    return {
        "submissions": sum(counts),
        "seconds": elapsed,
        "submissions_per_s": sum(counts) / elapsed,
        "submit_p50_ms": percentile(submit_ms, 0.50),
        "submit_p99_ms": percentile(submit_ms, 0.99),
        "page_p50_ms": percentile(page_ms, 0.50),
        "page_p99_ms": percentile(page_ms, 0.99),
        "errors": errors[:5],
    }


def main() -> None:
    # a kill (SIGTERM) still stops the servers and deletes the throwaway cluster
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="labelling time per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--levels", default="1,10,50", help="concurrent annotators, comma-separated"
    )
    parser.add_argument(
        "--postgres-url", default=None, help="an existing server (else a throwaway cluster)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    levels = [int(level) for level in args.levels.split(",")]
    load_before = os.getloadavg()

    cluster = None
    postgres_server = args.postgres_url
    if postgres_server is None:
        from postgres import ThrowawayCluster, find_pg_bin

        bindir = find_pg_bin()
        if bindir is None:
            sys.exit(
                "PostgreSQL binaries not found (apt-get install postgresql), or pass --postgres-url"
            )
        cluster = ThrowawayCluster(bindir, fsync=True)
        postgres_server = cluster.start()
    workdir = Path(tempfile.mkdtemp(prefix="prefkit-annotate-bench-"))
    from postgres import create_database

    databases = {
        "sqlite": f"sqlite:///{workdir / 'bench.db'}",
        "postgresql": create_database(postgres_server, "annotate_bench_" + str(os.getpid())),
    }
    # items enough that nobody runs out: generous for ~1000 submissions/s
    n_items = int(1000 * args.seconds) + 100
    servers = {}
    runs: list[dict] = []
    try:
        for backend, url in databases.items():
            from prefkit.annotate.store import open_store

            open_store(url).close()  # migrate before the server starts
            servers[backend] = start_server(url)
        for repeat in range(args.repeats):
            for level in levels:
                for backend, url in databases.items():
                    name = f"r{repeat}-c{level}"
                    tokens = make_project(url, name, n_items, level)
                    result = asyncio.run(annotate(servers[backend][1], tokens, args.seconds))
                    result.update(backend=backend, annotators=level, repeat=repeat)
                    runs.append(result)
                    print(
                        f"{backend:>10} {level:>3} annotators, repeat {repeat}: "
                        f"{result['submissions_per_s']:7.1f} submissions/s, submit p50 "
                        f"{result['submit_p50_ms']:.1f} ms p99 {result['submit_p99_ms']:.1f} ms, "
                        f"page p99 {result['page_p99_ms']:.1f} ms",
                        flush=True,
                    )
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(timeout=30)
        if cluster is not None:
            cluster.stop()

    summary = []
    for level in levels:
        row: dict = {"annotators": level}
        for backend in databases:
            mine = [run for run in runs if run["backend"] == backend and run["annotators"] == level]
            for key in (
                "submissions_per_s",
                "submit_p50_ms",
                "submit_p99_ms",
                "page_p50_ms",
                "page_p99_ms",
            ):
                row[f"{backend}_{key}"] = statistics.median(run[key] for run in mine)
        row["postgresql_over_sqlite_throughput"] = (
            row["postgresql_submissions_per_s"] / row["sqlite_submissions_per_s"]
        )
        summary.append(row)
    import sqlalchemy
    import uvicorn

    output = {
        "description": "acknowledged submissions/s and latency, simulated annotators on loopback",
        "seconds_per_run": args.seconds,
        "repeats": args.repeats,
        "levels": levels,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "sqlalchemy": sqlalchemy.__version__,
            "uvicorn": uvicorn.__version__,
            "load_average_1_5_15_before": load_before,
            "load_average_1_5_15_after": os.getloadavg(),
        },
        "settings": {
            "sqlite": "WAL, synchronous=FULL",
            "postgresql": "fsync on, synchronous_commit on",
        },
        "summary_medians": summary,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(output, indent=2) + "\n")
    for row in summary:
        print(
            f"{row['annotators']:>3} annotators: sqlite {row['sqlite_submissions_per_s']:.1f}/s "
            f"(p99 {row['sqlite_submit_p99_ms']:.1f} ms), postgresql {row['postgresql_submissions_per_s']:.1f}/s "
            f"(p99 {row['postgresql_submit_p99_ms']:.1f} ms)"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
