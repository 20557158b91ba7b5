"""A reward server that fails mid-run: retried, then a clear error, and the run resumes exactly.

A real HTTP server on 127.0.0.1 (the standard library's, in a thread) answers
OpenRLHF's ``/get_reward`` with the synthetic language's rule. It answers 503 to
every request from the third on while ``failing`` is set. The run (4 steps,
checkpoints every 2) must retry, then stop with an error that names the server and
the status, leave its step-2 checkpoint, and, once the server is healthy again,
resume from it to the weights and metrics of a run that never saw a failure.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from prefkit.align.synthetic import good_fraction
from prefkit.errors import UserInputError
from prefkit.rl.config import RLConfig
from prefkit.rl.trainer import RewardOptions, rl
from prefkit.train.loop import TrainConfig
from test_rl_trainer import TIMING, lines, prompts, tiny_policy

MAX_BODY = 1 << 20


class RuleServer(ThreadingHTTPServer):
    failing = False
    requests = 0


class Handler(BaseHTTPRequestHandler):
    server: RuleServer

    def do_POST(self) -> None:  # noqa: N802 (the http.server spelling)
        length = int(self.headers.get("Content-Length", "0"))
        if self.path != "/get_reward" or length > MAX_BODY:
            self.send_error(404 if self.path != "/get_reward" else 413)
            return
        body = json.loads(self.rfile.read(length))
        self.server.requests += 1
        if self.server.failing and self.server.requests >= 3:
            self.send_error(503, "overloaded")
            return
        rewards = [
            good_fraction(query[len(prompt) :])
            for query, prompt in zip(body["query"], body["prompts"], strict=True)
        ]
        payload = json.dumps({"rewards": rewards}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[RuleServer]:
    httpd = RuleServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def _run(out: Path, url: str):
    model, tokenizer = tiny_policy()

    return rl(
        prompts(8),
        model,
        tokenizer,
        url,
        out,
        RLConfig(algo="rloo", max_new_tokens=5, max_steps=4, beta=0.05),
        TrainConfig(batch_size=4, lr=1e-2, progress=False, checkpoint_every_steps=2),
        reward_options=RewardOptions(timeout_s=5.0, retries=1),
    )


def test_a_failing_reward_server_is_retried_then_an_error_and_the_run_resumes(
    server: RuleServer, tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{server.server_address[1]}"
    whole = _run(tmp_path / "whole", url)
    assert server.requests == 4

    server.requests, server.failing = 0, True
    with pytest.raises(UserInputError, match=rf"reward server {url}: .*2 attempts.*HTTP 503"):
        _run(tmp_path / "cut", url)
    assert server.requests == 4  # two answered, the third request and its one retry refused
    server.failing = False
    resumed = _run(tmp_path / "cut", url)
    assert resumed.train.resumed_from is not None and resumed.train.resumed_from.name == "step-2"
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name

    def strip(line):
        return {key: value for key, value in line.items() if key not in TIMING}

    expected = [strip(line) for line in lines(whole.train.metrics_path)]
    assert [strip(line) for line in lines(resumed.train.metrics_path)] == expected
    assert f"reward/{url}" in expected[0]
