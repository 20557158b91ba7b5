"""The LLM judge against a fake OpenAI-compatible server on 127.0.0.1 (never a real service)."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from prefkit.data import PairwiseRecord
from prefkit.eval.evaluate import evaluate
from prefkit.eval.scorers import ChatJudge, JudgeError, chat_completions_url, parse_judge_answer

Reply = tuple[
    int, Any, float
]  # status, body (dict or raw bytes), delay in seconds before answering


class FakeServer:
    """A chat-completions endpoint whose behaviour is a function of (request number, request body)."""

    def __init__(self, behaviour: Callable[[int, dict[str, Any]], Reply]):
        self.behaviour = behaviour
        self.requests: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    number = len(server.requests)
                    server.requests.append(body)
                    server.paths.append(self.path)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    status, reply, delay = server.behaviour(number, body)
                    time.sleep(delay)
                    data = reply if isinstance(reply, bytes) else json.dumps(reply).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[int, dict[str, Any]], Reply]], FakeServer]]:
    servers: list[FakeServer] = []

    def start(behaviour: Callable[[int, dict[str, Any]], Reply]) -> FakeServer:
        servers.append(FakeServer(behaviour))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def completion(text: str) -> dict[str, Any]:
    return {
        "id": "x",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
    }


def shown(body: dict[str, Any]) -> tuple[str, str]:
    """The two responses as the judge showed them (A first, B second)."""
    content = body["messages"][-1]["content"]
    first = re.search(r"### Response A\n(.*?)\n\n### Response B", content, re.S).group(1)
    second = re.search(r"### Response B\n(.*?)\n\n### Your verdict", content, re.S).group(1)
    return first, second


def prefers_longer(number: int, body: dict[str, Any]) -> Reply:
    first, second = shown(body)
    return 200, completion("A" if len(first) > len(second) else "B"), 0.0


def judge(server: FakeServer, **options: Any) -> ChatJudge:
    settings = {"backoff": 0.0, "timeout": 5.0, "progress": False, **options}
    return ChatJudge(server.url, "fake-judge", **settings)


def test_each_pair_is_asked_in_both_orders(serve) -> None:
    server = serve(prefers_longer)
    verdict = judge(server).compare("Say hi", "hello there", "hi")
    assert (verdict.outcome, verdict.first, verdict.second) == ("a", "a", "a")
    assert len(server.requests) == 2
    assert sorted(shown(body) for body in server.requests) == [
        ("hello there", "hi"),
        ("hi", "hello there"),
    ]
    assert server.paths == ["/v1/chat/completions"] * 2
    request = server.requests[0]
    assert request["model"] == "fake-judge" and request["temperature"] == 0
    assert "Say hi" in request["messages"][-1]["content"]


def test_position_bias_becomes_a_tie(serve) -> None:
    """A judge that always answers 'A' names a in the first order and b in the second."""
    server = serve(lambda number, body: (200, completion("[[A]]"), 0.0))
    verdict = judge(server).compare("p", "one", "two")
    assert (verdict.outcome, verdict.first, verdict.second) == ("tie", "a", "b")


def test_judge_in_the_engine_with_notes(serve) -> None:
    server = serve(prefers_longer)
    records = [
        PairwiseRecord("1", "p", "a long answer", "short", "a"),
        PairwiseRecord("2", "p", "tiny", "a much longer answer", "a"),  # the judge disagrees
        PairwiseRecord("3", "q", "xx", "yyyy", "b"),
    ]
    run = evaluate(judge(server, concurrency=3), records, n_resamples=0)
    assert run.models[0].name == "judge:fake-judge"
    assert run.models[0].metrics["accuracy"] == pytest.approx(2 / 3)
    assert len(server.requests) == 6
    assert any("0 of 3 pairs got different answers" in note for note in run.notes)


def test_retries_after_a_server_error(serve) -> None:
    def flaky(number: int, body: dict[str, Any]) -> Reply:
        if number == 0:
            return 500, {"error": "overloaded"}, 0.0
        return prefers_longer(number, body)

    server = serve(flaky)
    verdict = judge(server, concurrency=1).compare("p", "longer one", "short")
    assert verdict.outcome == "a" and len(server.requests) == 3


def test_a_client_error_is_not_retried(serve) -> None:
    server = serve(lambda number, body: (400, {"error": "unknown model"}, 0.0))
    with pytest.raises(JudgeError, match="HTTP 400.*unknown model"):
        judge(server, concurrency=1).compare("p", "a", "b")
    assert len(server.requests) <= 2  # at most once per order: no retry (3 retries would make 8)


def test_a_slow_reply_times_out_and_is_retried(serve) -> None:
    def slow_first(number: int, body: dict[str, Any]) -> Reply:
        status, reply, _ = prefers_longer(number, body)
        return status, reply, 1.0 if number == 0 else 0.0

    server = serve(slow_first)
    verdict = judge(server, timeout=0.3, concurrency=1).compare("p", "longer one", "short")
    assert verdict.outcome == "a" and len(server.requests) == 3


def test_gives_up_after_the_last_retry(serve) -> None:
    server = serve(lambda number, body: (200, completion("A"), 1.0))
    started = time.monotonic()
    with pytest.raises(JudgeError, match="failed after 2 attempts.*Timeout"):
        judge(server, timeout=0.2, max_retries=1, concurrency=1).compare("p", "a", "b")
    assert time.monotonic() - started < 3.0


def test_reply_size_is_bounded(serve) -> None:
    server = serve(lambda number, body: (200, completion("A" * 5000), 0.0))
    with pytest.raises(JudgeError, match="larger than 1,000 bytes"):
        judge(server, max_response_bytes=1000, concurrency=1).compare("p", "a", "b")


def test_not_a_chat_completion_is_an_error(serve) -> None:
    server = serve(lambda number, body: (200, {"unexpected": True}, 0.0))
    with pytest.raises(JudgeError, match="not a chat completion"):
        judge(server, concurrency=1).compare("p", "a", "b")
    server = serve(lambda number, body: (200, b"<html>oops</html>", 0.0))
    with pytest.raises(JudgeError, match="not JSON"):
        judge(server, concurrency=1).compare("p", "a", "b")


def test_concurrency_limit(serve) -> None:
    def slow(number: int, body: dict[str, Any]) -> Reply:
        status, reply, _ = prefers_longer(number, body)
        return status, reply, 0.05

    server = serve(slow)
    verdicts = judge(server, concurrency=2).compare_pairs(
        ["p"] * 4, ["aaa", "b", "cc", "d"], ["x", "yy", "z", "ww"]
    )
    assert [verdict.outcome for verdict in verdicts] == ["a", "b", "a", "b"]
    assert len(server.requests) == 8 and server.max_in_flight == 2


def test_unreadable_answers_count_as_ties(serve) -> None:
    server = serve(lambda number, body: (200, completion("I cannot decide."), 0.0))
    chat_judge = judge(server)
    verdict = chat_judge.compare("p", "a", "b")
    assert (verdict.outcome, verdict.first, verdict.second) == ("tie", None, None)
    assert "2 of 2 answers were unreadable" in chat_judge.notes[-1]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("A", "a"),
        ("b", "b"),
        ("[[B]]", "b"),
        ("**A**.", "a"),
        ("Response B is better", "b"),
        ("Tie", "tie"),
        ("Both are fine", None),
        ("", None),
        ("AB", None),
    ],
)
def test_parse_judge_answer(text: str, expected: str | None) -> None:
    assert parse_judge_answer(text) == expected


def test_endpoint_url_forms() -> None:
    assert chat_completions_url("http://h:1") == "http://h:1/v1/chat/completions"
    assert chat_completions_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert (
        chat_completions_url("http://h:1/api/v1/chat/completions")
        == "http://h:1/api/v1/chat/completions"
    )
