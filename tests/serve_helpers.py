"""The reward server for tests: a small trained embedding model, served by real uvicorn on
127.0.0.1 (a free port) in a background thread, or by ``prefkit serve`` in its own process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from prefkit.rm.ensemble import train_ensemble
from prefkit.rm.train import RMTrainConfig, default_train_config, train_reward_model
from prefkit.serve.app import LoadedModel, bind_socket, build_server, create_app, load_reward_model
from prefkit.serve.config import ServeConfig
from test_rm_train import keyword_pairs, make_tiny_bert

REPO = Path(__file__).resolve().parents[1]


def small_config(folder: Path) -> RMTrainConfig:
    """Embedding mode on a tiny random BERT: a few seconds of training."""
    return RMTrainConfig(
        backbone=make_tiny_bert(folder / "backbone"),
        cache_dir=str(folder / "cache"),
        features="response",
        max_length=64,
        train=default_train_config(
            "embedding", epochs=2, batch_size=16, lr=3e-3, device="cpu", progress=False
        ),
    )


def train_small_model(folder: Path) -> Path:
    """An embedding reward model on a tiny random BERT, trained for a few seconds."""
    config = small_config(folder)
    train_reward_model(keyword_pairs(64, seed=1), config, folder / "rm", log=lambda line: None)
    return folder / "rm"


def train_small_ensemble(folder: Path, size: int = 3) -> Path:
    """An ensemble of ``size`` such heads (bootstrap resamples, one seed each)."""
    config = small_config(folder)
    train_ensemble(keyword_pairs(64, seed=2), config, folder / "ensemble", size, log=lambda _: None)
    return folder / "ensemble"


class GatedModel:
    """A real reward model whose scoring waits until :meth:`open` (to hold a batch in flight)."""

    def __init__(self, model: Any):
        self.model = model
        self.attributes = getattr(model, "attributes", None)
        self.spec = model.spec
        self.gate = threading.Event()
        self.entered = threading.Event()

    def open(self) -> None:
        self.gate.set()

    def predict_score_members(self, prompts, responses, *, batch_size: int = 64):
        self.entered.set()
        if not self.gate.wait(timeout=30):
            raise TimeoutError("the gate was never opened")
        return self.model.predict_score_members(prompts, responses, batch_size=batch_size)

    def member_preference_probability(self, member_rewards_a, member_rewards_b):
        return self.model.member_preference_probability(member_rewards_a, member_rewards_b)


class CountingModel:
    """A real reward model that counts its scoring calls and the items of each."""

    def __init__(self, model: Any):
        self.model = model
        self.attributes = getattr(model, "attributes", None)
        self.spec = model.spec
        self.calls: list[int] = []

    def predict_score_members(self, prompts, responses, *, batch_size: int = 64):
        self.calls.append(len(responses))
        return self.model.predict_score_members(prompts, responses, batch_size=batch_size)

    def member_preference_probability(self, member_rewards_a, member_rewards_b):
        return self.model.member_preference_probability(member_rewards_a, member_rewards_b)


class ThreadServer:
    """``create_app`` under uvicorn on 127.0.0.1 (a free port), in a background thread."""

    def __init__(
        self,
        loader,
        config: ServeConfig | None = None,
        *,
        wait_ready: bool = True,
        port: int = 0,
    ):
        self.config = config or ServeConfig(port=0)
        self.wait_ready = wait_ready
        self._socket = bind_socket("127.0.0.1", port)
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self.app = create_app(loader, self.config)
        self._server = build_server(self.app, self.config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    @classmethod
    def for_model(cls, model: Any, folder: Path | None = None, **settings: Any) -> ThreadServer:
        loaded = LoadedModel(model, folder)
        return cls(lambda: loaded, ServeConfig(port=0, **settings))

    @classmethod
    def for_folder(cls, folder: Path, **settings: Any) -> ThreadServer:
        return cls(lambda: load_reward_model(folder), ServeConfig(port=0, **settings))

    def __enter__(self) -> ThreadServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the reward server did not start")
            time.sleep(0.01)
        if self.wait_ready:
            with httpx.Client() as client:
                wait_ready(client, self.url)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self._socket.close()
        assert not self._thread.is_alive(), "the reward server did not stop"


def start_cli_server(
    model_dir: Path, *extra: str, env: dict[str, str] | None = None, timeout_s: float = 90.0
) -> tuple[subprocess.Popen, str]:
    """``prefkit serve MODEL_DIR --port 0`` in its own process; returns (process, base URL)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "prefkit", "serve", str(model_dir), "--port", "0", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})},
    )
    holder: list[str] = []
    reader = threading.Thread(target=lambda: holder.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout=timeout_s)
    line = holder[0] if holder else ""
    match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
    if not match:
        process.kill()
        _, errors = process.communicate(timeout=10)
        raise RuntimeError(f"server did not start: {line!r}\n{errors[-2000:]}")
    return process, f"http://127.0.0.1:{match.group(1)}"


def wait_ready(client: Any, url: str, timeout_s: float = 60.0) -> None:
    """Until GET /health answers 200."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if client.get(f"{url}/health").status_code == 200:
                return
        except Exception:  # the port may not accept yet
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} never became ready")


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one series in a Prometheus text page (0 when absent)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    series = f"{name}{{{wanted}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def run_coroutine(coroutine: Any) -> Any:
    """``asyncio.run(coroutine)`` on a thread of its own, so that it works even when this
    thread already runs an event loop (Playwright's sync API, used by the session's browser
    tests, keeps one running on the main thread)."""
    import asyncio

    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = asyncio.run(coroutine)
        except BaseException as error:  # re-raised on the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
