"""``prefkit serve``: the endpoints against the model itself, batching across clients,
the OpenAPI schema, and OpenRLHF's own request (aiohttp). Every test talks real HTTP to
real uvicorn on 127.0.0.1 (a free port) and stops the server itself."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest

from prefkit.rm.model import RewardModel
from prefkit.serve.app import LoadedModel
from serve_helpers import (
    CountingModel,
    GatedModel,
    ThreadServer,
    metric,
    run_coroutine,
    start_cli_server,
    train_small_ensemble,
    train_small_model,
    wait_ready,
)

PROMPTS = ["Say something nice", "Say something", "Describe the weather"]
JSON = {"Content-Type": "application/json"}
RESPONSES = ["an excellent apple river", "stone cloud green table", "music paper excellent light"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return train_small_model(tmp_path_factory.mktemp("serve-model"))


@pytest.fixture(scope="module")
def model(model_dir) -> RewardModel:
    loaded = RewardModel.load(model_dir)
    loaded.cache = None
    return loaded


@pytest.fixture(scope="module")
def server(model_dir):
    with ThreadServer.for_folder(model_dir) as running:
        yield running


def test_compare_uses_the_model_calibration_temperature(model_dir, tmp_path) -> None:
    import shutil

    folder = tmp_path / "calibrated"
    shutil.copytree(model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["temperature"] = 3.0
    (folder / "config.json").write_text(json.dumps(config))
    calibrated = RewardModel.load(folder)
    calibrated.cache = None
    assert calibrated.spec.temperature == 3.0
    pair = {"prompt": PROMPTS[0], "response_a": RESPONSES[0], "response_b": RESPONSES[1]}
    with ThreadServer.for_folder(folder) as running, httpx.Client(base_url=running.url) as client:
        answer = client.post("/v1/compare", json=pair).json()
    rewards = calibrated.score([PROMPTS[0]] * 2, RESPONSES[:2])
    expected = 1.0 / (1.0 + np.exp(-(rewards[0] - rewards[1]) / 3.0))
    assert answer["probabilities"][0] == pytest.approx(expected, abs=1e-6)
    assert answer["probabilities"][0] == pytest.approx(
        calibrated.compare(PROMPTS[0], RESPONSES[0], RESPONSES[1]), abs=1e-6
    )


def test_compare_of_an_ensemble_is_its_members_mean_probability(tmp_path) -> None:
    """An ensemble's /v1/compare equals RewardModel.compare (the mean of the members'
    calibrated probabilities), not sigmoid of the mean margin, also when concurrent
    compare requests share one model call."""
    folder = train_small_ensemble(tmp_path)
    ensemble = RewardModel.load(folder)
    ensemble.cache = None
    assert ensemble.spec.ensemble_size == 3
    pairs = [
        {"prompt": p, "response_a": a, "response_b": b}
        for p in PROMPTS
        for a, b in [(RESPONSES[0], RESPONSES[1]), (RESPONSES[2], RESPONSES[1])]
    ]
    expected = [ensemble.compare(p["prompt"], p["response_a"], p["response_b"]) for p in pairs]
    rewards = ensemble.score(
        [p["prompt"] for p in pairs for _ in "ab"],
        [p[name] for p in pairs for name in ("response_a", "response_b")],
    )
    of_mean_margin = ensemble.preference_probability(rewards[0::2], rewards[1::2])
    # The two differ (the members disagree), so the comparison below can fail.
    assert np.max(np.abs(of_mean_margin - expected)) > 1e-4
    counting = CountingModel(ensemble)
    with ThreadServer.for_model(counting, folder, max_wait_ms=200) as running:

        async def compare_each() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=running.url, timeout=30) as client:
                return await asyncio.gather(*(client.post("/v1/compare", json=p) for p in pairs))

        answers = run_coroutine(compare_each())
        assert all(answer.status_code == 200 for answer in answers), [a.text for a in answers]
        together = httpx.post(f"{running.url}/v1/compare", json=pairs).json()
    probabilities = [answer.json()["probabilities"][0] for answer in answers]
    np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(together["probabilities"], expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(together["rewards_a"], rewards[0::2], rtol=1e-5, atol=1e-6)
    assert len(counting.calls) <= 3, counting.calls  # six concurrent requests, then one list


def test_score_compare_and_get_reward_equal_the_model(server, model) -> None:
    items = [{"prompt": p, "response": r} for p, r in zip(PROMPTS, RESPONSES)]
    with httpx.Client(base_url=server.url) as client:
        scored = client.post("/v1/score", json={"items": items})
        assert scored.status_code == 200, scored.text
        expected = model.score(PROMPTS, RESPONSES)
        np.testing.assert_allclose(scored.json()["rewards"], expected, rtol=1e-5, atol=1e-6)
        attributes = model.score_attributes(PROMPTS, RESPONSES)
        assert set(scored.json()["attributes"]) == set(attributes)
        for name, values in attributes.items():
            np.testing.assert_allclose(
                scored.json()["attributes"][name], values, rtol=1e-5, atol=1e-6
            )

        normalized = client.post("/v1/score", json={"items": items, "normalize": True}).json()
        np.testing.assert_allclose(
            normalized["rewards"],
            model.score(PROMPTS, RESPONSES, normalize=True),
            rtol=1e-5,
            atol=1e-6,
        )
        assert normalized["normalized"] is True

        conversation = [
            {"role": "user", "content": "Say hi"},
            {"role": "assistant", "content": "hi"},
        ]
        turned = client.post(
            "/v1/score", json={"items": [{"prompt": conversation, "response": "excellent"}]}
        )
        np.testing.assert_allclose(
            turned.json()["rewards"],
            model.score(["user: Say hi\n\nassistant: hi"], ["excellent"]),
            rtol=1e-5,
            atol=1e-6,
        )

        one = client.post(
            "/v1/compare",
            json={"prompt": PROMPTS[0], "response_a": RESPONSES[0], "response_b": RESPONSES[1]},
        ).json()
        assert one["probabilities"][0] == pytest.approx(
            model.compare(PROMPTS[0], RESPONSES[0], RESPONSES[1]), abs=1e-6
        )
        several = client.post(
            "/v1/compare",
            json=[
                {"prompt": p, "response_a": RESPONSES[0], "response_b": r}
                for p, r in zip(PROMPTS, RESPONSES)
            ],
        ).json()
        assert several["probabilities"] == pytest.approx(
            [model.compare(p, RESPONSES[0], r) for p, r in zip(PROMPTS, RESPONSES)], abs=1e-6
        )

        queries = [p + r for p, r in zip(PROMPTS, RESPONSES)]
        with_prompts = client.post(
            "/get_reward", json={"query": queries, "prompts": PROMPTS}
        ).json()
        np.testing.assert_allclose(with_prompts["rewards"], expected, rtol=1e-5, atol=1e-6)
        assert (
            with_prompts["scores"] == with_prompts["rewards"] and with_prompts["extra_logs"] == {}
        )
        whole = client.post("/get_reward", json={"query": queries}).json()
        np.testing.assert_allclose(
            whole["rewards"], model.score([""] * 3, queries), rtol=1e-5, atol=1e-6
        )


def test_health_model_and_metrics(server, model_dir) -> None:
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/health").json() == {"status": "ok", "detail": None}
        info = client.get("/v1/model").json()
        config = json.loads((model_dir / "config.json").read_text())
        assert info["kind"] == config["mode"] == "embedding"
        assert info["backbone"] == config["backbone"]["path"]
        assert info["attributes"] == ["reward"]
        assert len(info["weights_sha256"]) == 64
        assert info["limits"]["max_items"] == server.config.max_items
        client.post("/v1/score", json={"items": [{"prompt": "a", "response": "b"}]})
        client.post("/v1/score", json={"items": []})
        page = client.get("/metrics")
        assert page.headers["content-type"].startswith("text/plain")
        text = page.text
        assert metric(text, "prefkit_serve_requests_total", path="/v1/score", code="200") >= 1
        assert metric(text, "prefkit_serve_errors_total", code="422") >= 1
        assert metric(text, "prefkit_serve_model_calls_total") >= 1
        assert metric(text, "prefkit_serve_queue_items") == 0
        assert 'prefkit_serve_request_duration_seconds_bucket{path="/v1/score",le="+Inf"}' in text
        assert "prefkit_serve_batch_items_count" in text


def test_health_is_503_until_the_model_is_loaded(model) -> None:
    release = threading.Event()
    loaded = LoadedModel(model, None)

    def slow_loader() -> LoadedModel:
        release.wait(timeout=30)
        return loaded

    with (
        ThreadServer(slow_loader, wait_ready=False) as running,
        httpx.Client(base_url=running.url) as client,
    ):
        waiting = client.get("/health")
        assert waiting.status_code == 503 and waiting.json()["status"] == "loading"
        early = client.post("/v1/score", json={"items": [{"prompt": "a", "response": "b"}]})
        assert early.status_code == 503 and early.headers["Retry-After"] == "1"
        release.set()
        wait_ready(client, running.url)
        assert (
            client.post("/v1/score", json={"items": [{"prompt": "a", "response": "b"}]}).status_code
            == 200
        )


async def _concurrent_single_items(url: str, count: int) -> list[float]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        answers = await asyncio.gather(
            *(
                client.post(
                    "/v1/score",
                    json={"items": [{"prompt": f"prompt {i}", "response": f"excellent {i}"}]},
                )
                for i in range(count)
            )
        )
    assert all(answer.status_code == 200 for answer in answers), [a.text for a in answers]
    return [answer.json()["rewards"][0] for answer in answers]


@pytest.mark.parametrize("cross_request_batching", [True, False])
def test_concurrent_requests_share_model_calls(model, cross_request_batching) -> None:
    """32 one-item requests at once: far fewer than 32 model calls, each answer equal to
    scoring its item alone. Without cross-request batching (the one-call-per-request
    design) the same load takes exactly 32 calls, so the count is what batching buys."""
    counting = CountingModel(model)
    with ThreadServer.for_model(
        counting, max_wait_ms=100, max_batch_items=64, cross_request_batching=cross_request_batching
    ) as running:
        rewards = run_coroutine(_concurrent_single_items(running.url, 32))
        page = httpx.get(f"{running.url}/metrics").text
    alone = [float(model.score([f"prompt {i}"], [f"excellent {i}"])[0]) for i in range(32)]
    np.testing.assert_allclose(rewards, alone, rtol=1e-5, atol=1e-6)
    assert sum(counting.calls) == 32
    assert metric(page, "prefkit_serve_model_calls_total") == len(counting.calls)
    if cross_request_batching:
        assert len(counting.calls) <= 4, counting.calls
    else:
        assert len(counting.calls) == 32


def test_batches_respect_item_and_token_limits(model) -> None:
    counting = CountingModel(model)
    with ThreadServer.for_model(
        counting, max_wait_ms=200, max_batch_items=8, max_batch_tokens=10_000
    ) as running:
        run_coroutine(_concurrent_single_items(running.url, 32))
    assert max(counting.calls) <= 8 and sum(counting.calls) == 32
    counting.calls.clear()
    # Each item is about 2,500 estimated tokens, so a 10,000-token batch holds at most 4.
    with ThreadServer.for_model(
        counting, max_wait_ms=200, max_batch_items=64, max_batch_tokens=10_000
    ) as running:

        async def long_items() -> None:
            async with httpx.AsyncClient(base_url=running.url, timeout=30) as client:
                answers = await asyncio.gather(
                    *(
                        client.post(
                            "/v1/score",
                            json={"items": [{"prompt": "", "response": "excellent " * 1000}]},
                        )
                        for _ in range(12)
                    )
                )
            assert all(answer.status_code == 200 for answer in answers)

        run_coroutine(long_items())
    assert max(counting.calls) <= 4 and sum(counting.calls) == 12


def test_openapi_schema_matches_the_routes_and_answers(server) -> None:
    with httpx.Client(base_url=server.url) as client:
        schema = client.get("/openapi.json").json()
        routes = {
            (route.path, method.lower())
            for route in server.app.routes
            for method in getattr(route, "methods", ())
            if route.path not in ("/openapi.json",) and method != "HEAD"
        }
        documented = {
            (path, method) for path, operations in schema["paths"].items() for method in operations
        }
        assert documented == routes
        assert routes >= {
            ("/get_reward", "post"),
            ("/v1/score", "post"),
            ("/v1/compare", "post"),
            ("/health", "get"),
            ("/v1/model", "get"),
            ("/metrics", "get"),
        }
        components = schema["components"]["schemas"]
        answers = {
            "/v1/score": client.post(
                "/v1/score", json={"items": [{"prompt": "a", "response": "b"}]}
            ),
            "/v1/compare": client.post(
                "/v1/compare", json={"prompt": "a", "response_a": "b", "response_b": "c"}
            ),
            "/get_reward": client.post("/get_reward", json={"query": ["ab"], "prompts": ["a"]}),
        }
        for path, answer in answers.items():
            reference = schema["paths"][path]["post"]["responses"]["200"]["content"][
                "application/json"
            ]["schema"]["$ref"]
            properties = components[reference.rsplit("/", 1)[1]]
            assert set(answer.json()) == set(properties["properties"]), path
            assert set(properties["required"]) <= set(answer.json())
            request_ref = schema["paths"][path]["post"]["requestBody"]["content"][
                "application/json"
            ]["schema"]
            assert request_ref, path
        error = client.post("/v1/score", json={"items": []}).json()
        assert set(error["error"]) == set(components["ErrorDetail"]["properties"])
        info = client.get("/v1/model").json()
        assert set(info) == set(components["ModelInfo"]["properties"])


def test_openrlhf_remote_reward_request(server, model) -> None:
    """The request OpenRLHF's remote reward function sends: a JSON POST of query, prompts and
    labels, reading ``rewards`` from the answer."""
    aiohttp = pytest.importorskip("aiohttp")
    queries = [p + r for p, r in zip(PROMPTS, RESPONSES)]

    async def request() -> list[float]:
        headers = {"Content-Type": "application/json"}
        data = {"query": queries, "prompts": PROMPTS, "labels": ["", "", ""]}
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{server.url}/get_reward",
                json=data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=180),
            ) as response:
                response.raise_for_status()
                answer = await response.json()
        assert "rewards" in answer
        return answer["rewards"]

    rewards = run_coroutine(request())
    np.testing.assert_allclose(rewards, model.score(PROMPTS, RESPONSES), rtol=1e-5, atol=1e-6)


def test_limits_and_bad_requests_are_4xx_naming_the_field_and_the_server_keeps_serving(
    model,
) -> None:
    limits = {"max_request_bytes": 4096, "max_items": 4, "max_text_chars": 200}
    item = {"prompt": "a", "response": "b"}
    with (
        ThreadServer.for_model(model, **limits) as running,
        httpx.Client(base_url=running.url) as client,
    ):

        def error(response: httpx.Response, status: int) -> dict:
            assert response.status_code == status, response.text
            return response.json()["error"]

        big = error(client.post("/v1/score", json={"items": [item] * 3, "pad": "x" * 5000}), 413)
        assert big["field"] == "body" and "4,096 bytes" in big["message"]
        chunked = client.post(
            "/v1/score", content=iter([b'{"items": [', b" " * 5000, b"]}"])
        )  # no Content-Length: the bytes read decide
        assert error(chunked, 413)["field"] == "body"

        many = error(client.post("/v1/score", json={"items": [item] * 5}), 422)
        assert many["field"] == "items" and "at most 4" in many["message"]
        long = [item, {"prompt": "a", "response": "x" * 201}]
        assert error(client.post("/v1/score", json={"items": long}), 422)["field"] == (
            "items[1].response"
        )
        queries = {"query": ["a b", "c d"], "prompts": ["a", "x"]}
        mismatch = error(client.post("/get_reward", json=queries), 422)
        assert mismatch["field"] == "query[1]" and "prompts[1]" in mismatch["message"]
        missing = error(client.post("/v1/score", json={"items": [{"prompt": "a"}]}), 422)
        assert missing["field"] == "items[0].response"
        wrong = error(
            client.post("/v1/score", json={"items": [{"prompt": "a", "response": 3}]}), 422
        )
        assert wrong["field"] == "items[0].response"
        assert error(client.post("/v1/score", json={"items": []}), 422)["field"] == "items"
        assert error(client.post("/get_reward", json={"query": []}), 422)["field"] == "query"

        broken = error(client.post("/v1/score", content=b'{"items": [', headers=JSON), 400)
        assert broken["field"] == "body" and "not valid JSON" in broken["message"]
        latin1 = '{"items": [{"prompt": "caf\u00e9", "response": "b"}]}'.encode("latin-1")
        undecodable = error(client.post("/v1/score", content=latin1, headers=JSON), 400)
        assert undecodable["field"] == "body" and "not UTF-8" in undecodable["message"]

        as_curl_sends = client.post(  # curl -d without -H: form-encoded, still read as JSON
            "/v1/score",
            content=json.dumps({"items": [item]}).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert as_curl_sends.status_code == 200, as_curl_sends.text

        after = client.post("/v1/score", json={"items": [item]})
        assert after.status_code == 200
        np.testing.assert_allclose(
            after.json()["rewards"], model.score(["a"], ["b"]), rtol=1e-5, atol=1e-6
        )


def test_a_full_queue_answers_503_with_retry_after(model) -> None:
    gated = GatedModel(model)
    settings = {"max_batch_items": 2, "max_items": 2, "max_queue_items": 2, "max_wait_ms": 0}
    two = {"items": [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": "d"}]}
    answers: list[int] = []
    with (
        ThreadServer.for_model(gated, **settings) as running,
        httpx.Client(base_url=running.url, timeout=30) as client,
    ):

        def post() -> None:
            with httpx.Client(base_url=running.url, timeout=30) as own:
                answers.append(own.post("/v1/score", json=two).status_code)

        in_flight = threading.Thread(target=post)
        in_flight.start()
        assert gated.entered.wait(timeout=30)  # the first request is being scored
        queued = threading.Thread(target=post)
        queued.start()
        deadline = time.monotonic() + 30
        while metric(client.get("/metrics").text, "prefkit_serve_queue_items") < 2:
            assert time.monotonic() < deadline, "the second request was never queued"
            time.sleep(0.01)
        full = client.post("/v1/score", json=two)
        assert full.status_code == 503 and full.headers["Retry-After"] == "1"
        assert "queue is full" in full.json()["error"]["message"]
        gated.open()
        in_flight.join(timeout=30)
        queued.join(timeout=30)
        assert answers == [200, 200]
        assert client.post("/v1/score", json=two).status_code == 200


def test_api_keys_guard_every_endpoint_but_health(model) -> None:
    item = {"items": [{"prompt": "a", "response": "b"}]}
    with (
        ThreadServer.for_model(model, api_keys=("first-key", "second-key")) as running,
        httpx.Client(base_url=running.url) as client,
    ):
        assert client.get("/health").status_code == 200
        for method, path in [
            ("POST", "/v1/score"),
            ("POST", "/get_reward"),
            ("POST", "/v1/compare"),
            ("GET", "/v1/model"),
            ("GET", "/metrics"),
            ("GET", "/openapi.json"),
        ]:
            for headers in [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "first-key"}]:
                refused = client.request(method, path, json=item, headers=headers)
                assert refused.status_code == 401, (path, headers, refused.text)
                assert refused.headers["WWW-Authenticate"] == "Bearer"
                assert refused.json()["error"]["field"] == "Authorization"
        for key in ("first-key", "second-key"):
            answer = client.post("/v1/score", json=item, headers={"Authorization": f"Bearer {key}"})
            assert answer.status_code == 200, answer.text


def test_cli_reads_api_keys_from_the_environment(model_dir) -> None:
    process, url = start_cli_server(model_dir, env={"PREFKIT_API_KEYS": "env-one, env-two"})
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            wait_ready(client, url)
            item = {"items": [{"prompt": "a", "response": "b"}]}
            assert client.post("/v1/score", json=item).status_code == 401
            for key in ("env-one", "env-two"):
                headers = {"Authorization": f"Bearer {key}"}
                assert client.post("/v1/score", json=item, headers=headers).status_code == 200
    finally:
        process.terminate()
        _, errors = process.communicate(timeout=30)
    # uvicorn shuts down gracefully, then re-raises the captured SIGTERM
    assert process.returncode in (0, -signal.SIGTERM), errors
    assert "Traceback" not in errors


def test_reward_client_retries_503_and_connection_errors_then_gives_up(model) -> None:
    from prefkit.serve import RewardClient, RewardClientError

    release = threading.Event()
    loaded = LoadedModel(model, None)

    def slow_loader() -> LoadedModel:
        release.wait(timeout=30)
        return loaded

    # 503 with Retry-After while the model loads: retried until it answers.
    with ThreadServer(slow_loader, wait_ready=False) as running:
        threading.Timer(0.5, release.set).start()
        with RewardClient(running.url, max_retries=5, backoff=0.05) as client:
            rewards = client.score(PROMPTS, RESPONSES)
            np.testing.assert_allclose(
                rewards, model.score(PROMPTS, RESPONSES), rtol=1e-5, atol=1e-6
            )
            with pytest.raises(RewardClientError) as refused:
                client.score(["a"], ["x" * 200_000])  # 422 is not retried
            assert refused.value.status == 422 and "items[0].response" in str(refused.value)
        page = httpx.get(f"{running.url}/metrics").text
        assert metric(page, "prefkit_serve_errors_total", code="503") >= 1
        assert metric(page, "prefkit_serve_errors_total", code="422") == 1

    # Nothing listening yet: connection errors are retried until the server is up.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    answers: list[np.ndarray] = []
    with RewardClient(f"http://127.0.0.1:{port}", max_retries=8, backoff=0.1) as client:
        calling = threading.Thread(target=lambda: answers.append(client.score(["a"], ["b"])))
        calling.start()
        time.sleep(0.5)
        with ThreadServer(lambda: loaded, port=port):
            calling.join(timeout=30)
    assert len(answers) == 1
    np.testing.assert_allclose(answers[0], model.score(["a"], ["b"]), rtol=1e-5, atol=1e-6)

    with RewardClient(f"http://127.0.0.1:{port}", max_retries=2, backoff=0.01) as client:
        with pytest.raises(RewardClientError, match="failed after 3 attempts"):
            client.score(["a"], ["b"])


def test_clients_that_disconnect_are_dropped_and_the_server_keeps_serving(model) -> None:
    gated = GatedModel(model)
    one = {"items": [{"prompt": "a", "response": "b"}]}
    with (
        ThreadServer.for_model(gated, max_batch_items=1, max_wait_ms=0) as running,
        httpx.Client(base_url=running.url, timeout=30) as client,
    ):

        def leave_early() -> None:
            with httpx.Client(base_url=running.url, timeout=0.3) as impatient:
                with pytest.raises(httpx.ReadTimeout):
                    impatient.post("/v1/score", json=one)

        leave_early()  # its item is in the (held) model call when it goes
        assert gated.entered.is_set()
        leave_early()  # its item waits in the queue when it goes
        page = client.get("/metrics").text
        deadline = time.monotonic() + 30
        while metric(page, "prefkit_serve_dropped_requests_total", reason="disconnected") < 2:
            assert time.monotonic() < deadline, page
            time.sleep(0.05)
            page = client.get("/metrics").text
        gated.open()
        answer = client.post("/v1/score", json=one)
        assert answer.status_code == 200
        np.testing.assert_allclose(
            answer.json()["rewards"], model.score(["a"], ["b"]), rtol=1e-5, atol=1e-6
        )
        page = client.get("/metrics").text
        assert metric(page, "prefkit_serve_queue_items") == 0
        # the queued item of the second client was never scored
        assert metric(page, "prefkit_serve_dropped_requests_total", reason="abandoned") == 1
        assert metric(page, "prefkit_serve_items_scored_total") == 2


def test_sigterm_finishes_the_request_in_flight_then_exits(model_dir) -> None:
    # The first request of a batch waits --max-wait-ms for others: 3 s in flight.
    process, url = start_cli_server(model_dir, "--max-wait-ms", "3000")
    answers: list[httpx.Response] = []
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            wait_ready(client, url)
            item = {"items": [{"prompt": "a", "response": "b"}]}
            sending = threading.Thread(
                target=lambda: answers.append(client.post("/v1/score", json=item))
            )
            sending.start()
            time.sleep(1.0)
            process.send_signal(signal.SIGTERM)
            sending.join(timeout=30)
        _, errors = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)
    assert len(answers) == 1 and answers[0].status_code == 200, errors
    assert len(answers[0].json()["rewards"]) == 1
    assert process.returncode in (0, -signal.SIGTERM), errors
    assert "Traceback" not in errors


def test_a_request_not_answered_in_time_is_504_and_the_server_keeps_serving(model) -> None:
    gated = GatedModel(model)
    one = {"items": [{"prompt": "a", "response": "b"}]}
    with (
        ThreadServer.for_model(gated, request_timeout_s=0.5, max_wait_ms=0) as running,
        httpx.Client(base_url=running.url, timeout=30) as client,
    ):
        late = client.post("/v1/score", json=one)
        assert late.status_code == 504 and late.headers["Retry-After"] == "1"
        assert "not answered within 0.5 s" in late.json()["error"]["message"]
        gated.open()
        assert client.post("/v1/score", json=one).status_code == 200


def test_listening_on_all_interfaces_without_a_key_warns(model_dir) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefkit",
            "serve",
            str(model_dir),
            "--host",
            "0.0.0.0",
            "--port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PREFKIT_API_KEYS": ""},
    )
    try:
        listening = process.stdout.readline()  # the warning is flushed before this line
    finally:
        process.terminate()
        _, errors = process.communicate(timeout=30)
    assert "listening on http://0.0.0.0:" in listening, errors
    assert "warning: listening on all interfaces" in errors and "PREFKIT_API_KEYS" in errors


def _assert_same_metrics(local, served, where="document") -> None:
    """Every value of two ``prefkit eval --json`` documents equal (floats to 1e-6), but names."""
    if isinstance(local, dict):
        assert set(local) == set(served), where
        for key in local:
            if key != "name":
                _assert_same_metrics(local[key], served[key], f"{where}.{key}")
    elif isinstance(local, list):
        assert len(local) == len(served), where
        for index, (one, other) in enumerate(zip(local, served)):
            _assert_same_metrics(one, other, f"{where}[{index}]")
    elif isinstance(local, float):
        assert served == pytest.approx(local, abs=1e-6), where
    else:
        assert served == local, where


def test_eval_of_a_served_model_equals_eval_of_its_folder(
    model_dir, tmp_path, capsys, monkeypatch
) -> None:
    """``prefkit eval http://...`` through a real server (with an API key) reports the very
    metrics of ``prefkit eval FOLDER``: pairs (with categories), ties and rankings; a wrong
    key and an unreachable server are one-line errors."""
    import dataclasses
    import shutil

    from prefkit.cli import main
    from prefkit.data import write_records
    from prefkit.data.records import PairwiseRecord, RankingRecord
    from test_rm_train import keyword_pairs

    records = [
        dataclasses.replace(record, category="odd" if index % 2 else "even")
        for index, record in enumerate(keyword_pairs(40, seed=7))
    ]
    records.append(PairwiseRecord("tie", "say something", "stone cloud", "green table", "tie"))
    records += [
        RankingRecord(
            f"rank{index}",
            "say something",
            ("excellent apple river", "stone cloud green", "excellent excellent light"),
            scores=(2.0, 0.0, 3.0),
        )
        for index in range(3)
    ]
    data = tmp_path / "test.jsonl"
    write_records(records, data)
    # A calibration temperature other than 1, so the served one must reach the calibration.
    folder = tmp_path / "calibrated"
    shutil.copytree(model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["temperature"] = 2.5
    (folder / "config.json").write_text(json.dumps(config))
    options = ["--bootstrap", "50", "--batch-size", "8"]
    local_json, served_json = tmp_path / "local.json", tmp_path / "served.json"
    assert main(["eval", str(folder), str(data), "--json", str(local_json), *options]) == 0
    with ThreadServer.for_folder(folder, api_keys=("eval-key",)) as running:
        served = ["eval", running.url, str(data), "--json", str(served_json), *options]
        assert main([*served, "--api-key", "eval-key"]) == 0
        local, remote = json.loads(local_json.read_text()), json.loads(served_json.read_text())
        assert remote["name"] == running.url and local["n"] == 40 and local["n_human_ties"] == 1
        assert local["ranking"]["n_prompts"] == 3
        _assert_same_metrics(local, remote)

        monkeypatch.setenv("PREFKIT_API_KEY", "eval-key")  # the key from the environment
        served_json.unlink()
        assert main(served) == 0
        _assert_same_metrics(local, json.loads(served_json.read_text()))

        capsys.readouterr()
        assert main([*served, "--api-key", "wrong-key"]) == 2
        refused = capsys.readouterr().err
        assert "HTTP 401" in refused and "--api-key" in refused and "Traceback" not in refused
        page = httpx.get(
            f"{running.url}/metrics", headers={"Authorization": "Bearer eval-key"}
        ).text
        # Each distinct item is scored once, eight per request, in both evaluations.
        distinct = {(r.prompt, r.response_a) for r in records[:41]}
        distinct |= {(r.prompt, r.response_b) for r in records[:41]}
        distinct |= {(r.prompt, response) for r in records[41:] for response in r.responses}
        requests = metric(page, "prefkit_serve_requests_total", path="/v1/score", code="200")
        assert requests == 2 * -(-len(distinct) // 8)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert main(["eval", f"http://127.0.0.1:{port}", str(data)]) == 2
    unreachable = capsys.readouterr().err
    assert f"http://127.0.0.1:{port}: cannot reach the reward server" in unreachable
    assert "Traceback" not in unreachable


def test_accepted_connections_send_without_waiting_for_acks() -> None:
    """The listening socket says it is TCP, so asyncio turns Nagle's algorithm off on every
    connection it accepts (with protocol 0 it did not, and a response written as headers
    then body waited ~40 ms for the client's delayed ACK)."""
    from prefkit.serve.app import bind_socket

    async def accepted_nodelay() -> int:
        sock = bind_socket("127.0.0.1", 0)
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted = writer.get_extra_info("socket")
            seen.set_result(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_connect, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
            value = await asyncio.wait_for(seen, 10)
            writer.close()
        return value

    assert run_coroutine(accepted_nodelay()) != 0
