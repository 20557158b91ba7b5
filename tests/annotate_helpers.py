"""Shared pieces of the annotation tests: a real server on loopback and a scripted annotator.

:class:`ThreadServer` runs the real ASGI app under uvicorn in a thread of the test
process; :func:`start_cli_server` runs ``prefkit annotate serve`` as a separate
process (for kill -9). :class:`Annotator` is a person with an httpx client: it
logs in with a token, reads the page it is shown and posts the forms on it,
exactly as a browser would (cookies, CSRF field, redirects).
"""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from prefkit.annotate.config import ProjectConfig, ServeConfig
from prefkit.annotate.project import add_annotator, create_project
from prefkit.annotate.store import Store
from prefkit.data.records import PairwiseRecord

REPO = Path(__file__).resolve().parents[1]


def pairs(n: int, *, prefix: str = "p") -> list[PairwiseRecord]:
    """``n`` pairs whose texts say which item and which side they are (for checking swaps)."""
    return [
        PairwiseRecord(
            id=f"{prefix}{i}",
            prompt=f"prompt {i}",
            response_a=f"response A of item {i}",
            response_b=f"response B of item {i}",
            outcome="a",
        )
        for i in range(n)
    ]


def make_project(
    store: Store,
    name: str = "demo",
    n_items: int = 5,
    annotators: tuple[str, ...] = ("ana",),
    **config: Any,
) -> dict[str, str]:
    """A pairwise project of :func:`pairs`; returns name -> token (``admin`` is an admin)."""
    create_project(store, name, pairs(n_items), ProjectConfig(**{"task": "pairwise", **config}))
    tokens = {person: add_annotator(store, name, person) for person in annotators}
    tokens["admin"] = add_annotator(store, name, "admin", admin=True)
    return tokens


class ThreadServer:
    """The annotation app under uvicorn on 127.0.0.1 (a free port), in a background thread."""

    def __init__(self, store: Store, config: ServeConfig | None = None):
        import uvicorn

        from prefkit.annotate.web import bind_socket, create_app

        self._socket = bind_socket("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self._server = uvicorn.Server(
            uvicorn.Config(
                create_app(store, config or ServeConfig()), log_level="warning", access_log=False
            )
        )
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    def __enter__(self) -> ThreadServer:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the annotation server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=20)
        self._socket.close()


def start_cli_server(
    db_url: str, *extra: str, full_cli: bool = False, timeout_s: float = 60.0
) -> tuple[subprocess.Popen, str]:
    """``prefkit annotate serve --port 0`` in its own process; returns (process, base URL).

    ``python -m prefkit.annotate serve`` (the same command, loading only the annotation
    app) unless ``full_cli``, which runs it through ``prefkit`` with every command loaded.
    """
    entry = ["prefkit", "annotate"] if full_cli else ["prefkit.annotate"]
    process = subprocess.Popen(
        [sys.executable, "-m", *entry, "serve", "--db", db_url, "--port", "0", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    holder: list[str] = []
    reader = threading.Thread(target=lambda: holder.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout=timeout_s)  # the first line says where it listens
    line = holder[0] if holder else ""
    match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
    if not match:
        process.kill()
        _, errors = process.communicate(timeout=10)
        raise RuntimeError(f"server did not start: {line!r}\n{errors[-2000:]}")
    return process, f"http://127.0.0.1:{match.group(1)}"


@dataclass
class Shown:
    """What the annotation page shows now."""

    assignment: int | None
    csrf: str
    progress: tuple[int, int]
    left: str
    right: str
    text: str


def read_page(page: str) -> Shown:
    assignment = re.search(r'name="assignment" value="(\d+)"', page)
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)
    progress = re.search(r'id="progress">(\d+) of (\d+)<', page)
    texts = re.findall(
        r'<section class="card response" id="response-\d"><h2>[^<]*</h2><div class="text">(.*?)</div>',
        page,
        re.S,
    )
    return Shown(
        assignment=int(assignment.group(1)) if assignment else None,
        csrf=csrf.group(1) if csrf else "",
        progress=(int(progress.group(1)), int(progress.group(2))) if progress else (0, 0),
        left=html.unescape(texts[0]) if texts else "",
        right=html.unescape(texts[1]) if len(texts) > 1 else "",
        text=page,
    )


class Annotator:
    """One person at a browser, scripted with httpx."""

    def __init__(self, base_url: str, *, timeout_s: float = 20.0):
        self.client = httpx.Client(base_url=base_url, timeout=timeout_s, follow_redirects=False)
        self.project = ""

    def login(self, token: str) -> httpx.Response:
        form = self.client.get("/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
        response = self.client.post("/login", data={"csrf": csrf, "token": token})
        if response.status_code == 303:
            self.project = response.headers["location"].split("/")[2]
        return response

    def page(self) -> Shown:
        response = self.client.get(f"/p/{self.project}/")
        assert response.status_code == 200, (response.status_code, response.text[:500])
        return read_page(response.text)

    def post(self, action: str, shown: Shown, **fields: str) -> httpx.Response:
        data = {"csrf": shown.csrf, **fields}
        if shown.assignment is not None and action in ("submit", "skip"):
            data.setdefault("assignment", str(shown.assignment))
        return self.client.post(f"/p/{self.project}/{action}", data=data)

    def close(self) -> None:
        self.client.close()
