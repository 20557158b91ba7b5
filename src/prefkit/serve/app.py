"""The reward server: a FastAPI app that scores with one reward model, batched across clients.

Endpoints (every one but ``/health`` needs ``Authorization: Bearer KEY`` when keys are set):

- ``POST /get_reward``: OpenRLHF's remote reward model shape. ``{"query": [str],
  "prompts": [str]?, "labels": [...]?}`` -> ``{"rewards", "scores", "extra_logs"}``.
  Each query is the prompt followed by the response; with ``prompts`` the response
  is what follows the prompt, without them the whole query is scored as the
  response (with an empty prompt). ``labels`` are accepted because OpenRLHF sends
  them; a learned reward model has no use for them, so only their count is checked.
- ``POST /v1/score``: ``{"items": [{"prompt", "response"}], "normalize"?}`` -> rewards
  in order, and each attribute's values (``{"reward": ...}`` for a scalar model).
- ``POST /v1/compare``: one ``{"prompt", "response_a", "response_b"}`` or a list of
  them -> P(a preferred) = sigmoid((r_a - r_b) / T) with the model's calibration
  temperature T; for an ensemble, the mean of its members' probabilities. Computed by
  the model's own :meth:`RewardModel.member_preference_probability`, the code
  :meth:`RewardModel.compare` runs, from rewards scored in the shared batches.
- ``GET /health`` (503 until the model is loaded), ``GET /v1/model``, ``GET /metrics``.

Requests go through :class:`Guard` first (API key, body size, UTF-8), then FastAPI's
validation (types, missing fields, empty lists), then the per-request limits
(items, characters). Every error is JSON, ``{"error": {"status", "message",
"field"}}``, naming the field and index. Nothing a request says is used as a path,
and nothing is unpickled.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import socket
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field

from prefkit.data.records import Message, render_text
from prefkit.serve.batching import Batcher, QueueFull, ShuttingDown
from prefkit.serve.config import ServeConfig
from prefkit.serve.metrics import ServerMetrics

if TYPE_CHECKING:
    from prefkit.rm.spec import RewardModelSpec

HEALTH_PATH = "/health"
PATHS = ("/get_reward", "/v1/score", "/v1/compare", HEALTH_PATH, "/v1/model", "/metrics")
DOC_PATHS = ("/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")


# ------------------------------------------------------------------------ request and answer


class ChatMessage(BaseModel):
    """One turn of a conversation."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str


TextValue = str | list[ChatMessage]


class ScoreItem(BaseModel):
    """One (prompt, response) to score; either may be a text or a conversation."""

    prompt: TextValue = Field(
        default="", description="The prompt (empty: score the response alone)."
    )
    response: TextValue


class ScoreRequest(BaseModel):
    items: list[ScoreItem] = Field(min_length=1)
    normalize: bool = Field(
        default=False, description="Standardise rewards by the training data's mean and std."
    )


class ScoreResponse(BaseModel):
    rewards: list[float]
    attributes: dict[str, list[float]] = Field(
        description="Each output of the model (one 'reward' entry for a scalar model)."
    )
    normalized: bool


class ComparePair(BaseModel):
    prompt: TextValue = ""
    response_a: TextValue
    response_b: TextValue


class CompareResponse(BaseModel):
    probabilities: list[float] = Field(description="P(response_a preferred) for each pair.")
    rewards_a: list[float]
    rewards_b: list[float]


class GetRewardRequest(BaseModel):
    query: list[str] = Field(min_length=1, description="Prompt followed by response, per item.")
    prompts: list[str] | None = Field(
        default=None, description="The prompt each query starts with."
    )
    labels: list[Any] | None = Field(
        default=None, description="Accepted for OpenRLHF; only their count is checked."
    )


class GetRewardResponse(BaseModel):
    rewards: list[float]
    scores: list[float]
    extra_logs: dict[str, list[float]]


class ErrorDetail(BaseModel):
    status: int
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class HealthResponse(BaseModel):
    status: Literal["ok", "loading", "failed"]
    detail: str | None = None


class ModelInfo(BaseModel):
    kind: str
    backbone: str
    attributes: list[str]
    weights_sha256: str
    normalization: dict[str, float]
    temperature: float = Field(
        description="Calibration temperature T: P(a preferred) = sigmoid((r_a - r_b) / T)."
    )
    ensemble_size: int = Field(description="Members of an ensemble (1: one model).")
    limits: dict[str, float]
    batching: dict[str, float | bool]


ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 413, 415, 422, 503, 504)}


class ApiError(Exception):
    """An answer other than 200, with a message naming the field."""

    def __init__(
        self,
        status: int,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.headers = headers or {}


def error_response(
    status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"status": status, "message": message, "field": field}}
    return JSONResponse(body, status_code=status, headers=headers)


# ---------------------------------------------------------------------------- the model


class LoadedModel:
    """A reward model and what /v1/model says about it."""

    def __init__(self, model: Any, folder: str | Path | None):
        self.model = model
        self.attribute_names: list[str] = list(getattr(model, "attributes", None) or ["reward"])
        spec: RewardModelSpec = model.spec
        self.kind = spec.mode
        self.backbone = spec.backbone.path
        self.normalization = {"mean": float(spec.reward_mean), "std": float(spec.reward_std)}
        self.temperature = float(spec.temperature)
        self.ensemble_size = int(spec.ensemble_size)
        self.weights_sha256 = weights_digest(Path(folder)) if folder is not None else ""

    def score(
        self, prompts: list[str], responses: list[str], batch_size: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N, K) attribute values, (N,) rewards and (N, E) each ensemble member's reward
        (E = 1 for one model), from one pass of the model."""
        attributes, rewards, members = self.model.predict_score_members(
            prompts, responses, batch_size=batch_size
        )
        return (
            np.asarray(attributes, dtype=np.float64),
            np.asarray(rewards, dtype=np.float64),
            np.asarray(members, dtype=np.float64).T,
        )

    def preference_probability(
        self, member_rewards_a: np.ndarray, member_rewards_b: np.ndarray
    ) -> np.ndarray:
        """(N,) P(a preferred) from (N, E) raw member rewards, as :meth:`RewardModel.compare`:
        the model's calibration temperature, the mean over an ensemble's members."""
        return np.asarray(
            self.model.member_preference_probability(member_rewards_a.T, member_rewards_b.T),
            dtype=np.float64,
        )


def weights_digest(folder: Path) -> str:
    """SHA-256 over every safetensors file of a model folder (names and contents)."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.safetensors")):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------------------ the guard


class Guard:
    """ASGI middleware in front of the app: API keys, body size, UTF-8, and per-path metrics.

    The body is read here (at most ``max_request_bytes``; a larger one is refused
    with 413 as soon as its Content-Length or its bytes say so) and handed on, so
    the app never sees an oversized or undecodable body.
    """

    def __init__(self, app: Any, config: ServeConfig, metrics: ServerMetrics):
        self.app = app
        self.config = config
        self.metrics = metrics
        self._keys = [key.encode() for key in config.api_keys]

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        if not self._keys:
            return True
        value = headers.get(b"authorization", b"")
        scheme, _, token = value.partition(b" ")
        if scheme.lower() != b"bearer":
            token = b""
        token = token.strip()
        # Every key is compared, each in constant time, so timing says nothing about which matched.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(token, key)
        return matched

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path = scope["path"] if scope["path"] in PATHS or scope["path"] in DOC_PATHS else "other"
        status_seen = [500]

        async def send_recording(message: dict) -> None:
            if message["type"] == "http.response.start":
                status_seen[0] = message["status"]
            await send(message)

        try:
            await self._guarded(scope, receive, send_recording)
        finally:
            self.metrics.record_request(path, status_seen[0], time.perf_counter() - started)

    async def _guarded(self, scope: dict, receive: Callable, send: Callable) -> None:
        headers = dict(scope["headers"])
        if scope["path"] != HEALTH_PATH and not self._authorized(headers):
            await error_response(
                401,
                "missing or wrong API key; send the header 'Authorization: Bearer KEY'",
                "Authorization",
                {"WWW-Authenticate": "Bearer"},
            )(scope, receive, send)
            return
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        limit = self.config.max_request_bytes
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._too_large(scope, receive, send, int(declared))
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._too_large(scope, receive, send, None)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as error:
            await error_response(
                400,
                f"the body is not UTF-8 (byte {error.start}: {body[error.start : error.start + 1]!r}); "
                "send JSON encoded as UTF-8",
                "body",
            )(scope, receive, send)
            return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        # Every endpoint takes JSON: read the body as JSON whatever Content-Type says, so
        # ``curl -d '{...}'`` (form-encoded by default) works as documented.
        headers_as_json = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
        headers_as_json.append((b"content-type", b"application/json"))
        await self.app({**scope, "headers": headers_as_json}, replay, send)

    async def _too_large(
        self, scope: dict, receive: Callable, send: Callable, size: int | None
    ) -> None:
        found = f"{size:,} bytes" if size is not None else "more"
        await error_response(
            413,
            f"the body is {found}; at most {self.config.max_request_bytes:,} bytes are accepted "
            "(send fewer items per request, or start the server with a larger --max-request-bytes)",
            "body",
            {"Connection": "close"},
        )(scope, receive, send)


# --------------------------------------------------------------------------------- the app


def _field_path(location: Sequence[Any]) -> str:
    """``("body", "items", 3, "response")`` -> ``items[3].response`` (union branch names dropped)."""
    path = ""
    for part in location:
        if part == "body" and not path:
            continue
        if isinstance(part, int):
            path += f"[{part}]"
        elif isinstance(part, str) and part.isidentifier() and part not in ("str", "list"):
            path += f".{part}" if path else part
    return path or "body"


def _text(value: str | list[ChatMessage]) -> str:
    if isinstance(value, str):
        return value
    return render_text(tuple(Message(turn.role, turn.content) for turn in value))


def create_app(
    load_model: Callable[[], LoadedModel],
    config: ServeConfig | None = None,
    *,
    on_load_error: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """The reward server's ASGI app. ``load_model`` runs on a thread once the app starts;
    until it returns, /health answers 503 and scoring endpoints 503 with Retry-After."""
    config = config or ServeConfig()
    metrics = ServerMetrics()
    state: dict[str, Any] = {"model": None, "status": "loading", "detail": None}
    retry_after = {"Retry-After": str(config.retry_after_s)}

    def load_in_background(loop: asyncio.AbstractEventLoop) -> None:
        try:
            loaded = load_model()
        except BaseException as error:  # reported by /health and to the caller
            state.update(status="failed", detail=f"{type(error).__name__}: {error}")
            if on_load_error is not None:
                loop.call_soon_threadsafe(on_load_error, error)
            return
        state.update(model=loaded, status="ok")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        def score(prompts: list[str], responses: list[str]) -> tuple[np.ndarray, ...]:
            return state["model"].score(prompts, responses, config.max_batch_items)

        batcher = Batcher(score, config, metrics)
        batcher.start()
        app.state.batcher = batcher
        loader = threading.Thread(
            target=load_in_background,
            args=(asyncio.get_running_loop(),),
            name="prefkit-load-model",
            daemon=True,
        )
        loader.start()
        try:
            yield
        finally:
            await batcher.close()

    app = FastAPI(
        title="prefkit reward server",
        version=_version(),
        description="Scores (prompt, response) pairs with one prefkit reward model.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.metrics = metrics
    app.state.config = config
    app.add_middleware(Guard, config=config, metrics=metrics)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(error.status, error.message, error.field, error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = error.errors()
        first = problems[0] if problems else {"loc": ("body",), "msg": "invalid request"}
        if first.get("type") == "json_invalid":
            reason = (first.get("ctx") or {}).get("error", "invalid JSON")
            position = first["loc"][1] if len(first["loc"]) > 1 else "?"
            return error_response(
                400, f"the body is not valid JSON ({reason} at character {position})", "body"
            )
        field = _field_path(first.get("loc", ()))
        message = f"{field}: {first.get('msg', 'invalid value')}"
        if len(problems) > 1:
            message += f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})"
        return error_response(422, message, field)

    def ready_model() -> LoadedModel:
        if state["status"] != "ok":
            raise ApiError(503, f"the model is not ready ({state['status']})", None, retry_after)
        return state["model"]

    def check_count(field: str, count: int) -> None:
        if count > config.max_items:
            raise ApiError(
                422,
                f"{field}: {count} items; at most {config.max_items} per request "
                "(split the request, or start the server with a larger --max-items)",
                field,
            )

    def check_length(field: str, text: str) -> None:
        if len(text) > config.max_text_chars:
            raise ApiError(
                422,
                f"{field}: {len(text):,} characters; at most {config.max_text_chars:,} "
                "(start the server with a larger --max-text-chars)",
                field,
            )

    async def run(
        request: Request, prompts: list[str], responses: list[str]
    ) -> tuple[np.ndarray, ...]:
        """(N, K) attributes, (N,) rewards and (N, E) member rewards of the items."""
        # Scored through the shared queue; gives up on timeout or when the client leaves.
        try:
            future = await request.app.state.batcher.submit(prompts, responses)
        except QueueFull as error:
            raise ApiError(503, f"{error}; retry later", None, retry_after) from None
        except ShuttingDown as error:
            raise ApiError(503, str(error), None, retry_after) from None
        disconnect = asyncio.ensure_future(_wait_for_disconnect(request))
        try:
            done, _ = await asyncio.wait(
                {future, disconnect},
                timeout=config.request_timeout_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            disconnect.cancel()
        if future in done:
            return future.result()
        future.cancel()
        if disconnect in done:
            metrics.dropped_requests["disconnected"] += 1
            raise ApiError(499, "the client disconnected")
        metrics.dropped_requests["timeout"] += 1
        raise ApiError(
            504,
            f"not answered within {config.request_timeout_s:g} s (the server is overloaded); "
            "retry later or with fewer items",
            None,
            retry_after,
        )

    @app.post("/get_reward", response_model=GetRewardResponse, responses=ERRORS)
    async def get_reward(body: GetRewardRequest, request: Request) -> GetRewardResponse:
        """OpenRLHF's remote reward model: one reward per query."""
        ready_model()
        check_count("query", len(body.query))
        for index, query in enumerate(body.query):
            check_length(f"query[{index}]", query)
        if body.prompts is not None and len(body.prompts) != len(body.query):
            raise ApiError(
                422,
                f"prompts: {len(body.prompts)} prompts for {len(body.query)} queries; give one per query",
                "prompts",
            )
        if body.labels is not None and len(body.labels) != len(body.query):
            raise ApiError(
                422,
                f"labels: {len(body.labels)} labels for {len(body.query)} queries; give one per query",
                "labels",
            )
        if body.prompts is None:
            prompts = [""] * len(body.query)
            responses = list(body.query)
        else:
            prompts, responses = [], []
            for index, (prompt, query) in enumerate(zip(body.prompts, body.query)):
                if not query.startswith(prompt):
                    raise ApiError(
                        422,
                        f"query[{index}] does not start with prompts[{index}]; each query is "
                        "its prompt followed by the response",
                        f"query[{index}]",
                    )
                prompts.append(prompt)
                responses.append(query[len(prompt) :])
        _, rewards, _ = await run(request, prompts, responses)
        values = rewards.tolist()
        return GetRewardResponse(rewards=values, scores=values, extra_logs={})

    @app.post("/v1/score", response_model=ScoreResponse, responses=ERRORS)
    async def score(body: ScoreRequest, request: Request) -> ScoreResponse:
        """Rewards (and each attribute) of (prompt, response) items, in order."""
        loaded = ready_model()
        check_count("items", len(body.items))
        prompts, responses = [], []
        for index, item in enumerate(body.items):
            prompt, response = _text(item.prompt), _text(item.response)
            check_length(f"items[{index}].prompt", prompt)
            check_length(f"items[{index}].response", response)
            prompts.append(prompt)
            responses.append(response)
        attributes, rewards, _ = await run(request, prompts, responses)
        if body.normalize:
            rewards = (rewards - loaded.normalization["mean"]) / loaded.normalization["std"]
        return ScoreResponse(
            rewards=rewards.tolist(),
            attributes={
                name: attributes[:, column].tolist()
                for column, name in enumerate(loaded.attribute_names)
            },
            normalized=body.normalize,
        )

    @app.post("/v1/compare", response_model=CompareResponse, responses=ERRORS)
    async def compare(body: ComparePair | list[ComparePair], request: Request) -> CompareResponse:
        """P(response_a preferred over response_b) = sigmoid((r_a - r_b) / T), per pair; for an
        ensemble, the mean of its members' probabilities."""
        loaded = ready_model()
        pairs = body if isinstance(body, list) else [body]
        if not pairs:
            raise ApiError(422, "body: an empty list; give at least one pair", "body")
        check_count("body", 2 * len(pairs))
        prompts, responses = [], []
        for index, pair in enumerate(pairs):
            where = f"[{index}]." if isinstance(body, list) else ""
            prompt = _text(pair.prompt)
            check_length(f"{where}prompt", prompt)
            for name in ("response_a", "response_b"):
                text = _text(getattr(pair, name))
                check_length(f"{where}{name}", text)
                prompts.append(prompt)
                responses.append(text)
        _, rewards, members = await run(request, prompts, responses)
        rewards_a, rewards_b = rewards[0::2], rewards[1::2]
        return CompareResponse(
            probabilities=loaded.preference_probability(members[0::2], members[1::2]).tolist(),
            rewards_a=rewards_a.tolist(),
            rewards_b=rewards_b.tolist(),
        )

    @app.get(HEALTH_PATH, response_model=HealthResponse, responses={503: {"model": HealthResponse}})
    async def health() -> JSONResponse:
        """200 once the model is loaded and the server takes requests; 503 before."""
        body = HealthResponse(status=state["status"], detail=state["detail"]).model_dump()
        code = 200 if state["status"] == "ok" else 503
        return JSONResponse(body, status_code=code, headers=None if code == 200 else retry_after)

    @app.get("/v1/model", response_model=ModelInfo, responses=ERRORS)
    async def model_info() -> ModelInfo:
        """What is loaded, and the server's limits and batching settings."""
        loaded = ready_model()
        return ModelInfo(
            kind=loaded.kind,
            backbone=loaded.backbone,
            attributes=loaded.attribute_names,
            weights_sha256=loaded.weights_sha256,
            normalization=loaded.normalization,
            temperature=loaded.temperature,
            ensemble_size=loaded.ensemble_size,
            limits={
                "max_request_bytes": config.max_request_bytes,
                "max_items": config.max_items,
                "max_text_chars": config.max_text_chars,
                "request_timeout_s": config.request_timeout_s,
                "max_queue_items": config.max_queue_items,
            },
            batching={
                "cross_request_batching": config.cross_request_batching,
                "max_batch_items": config.max_batch_items,
                "max_batch_tokens": config.max_batch_tokens,
                "max_wait_ms": config.max_wait_ms,
            },
        )

    @app.get(
        "/metrics", response_class=PlainTextResponse, responses={401: {"model": ErrorResponse}}
    )
    async def prometheus_metrics() -> PlainTextResponse:
        """Counters and histograms in the Prometheus text format (version 0.0.4)."""
        return PlainTextResponse(
            metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    return app


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _version() -> str:
    from prefkit import __version__

    return __version__


def load_reward_model(
    folder: str | Path, *, device: str = "cpu", embedding_cache: str | Path | None = None
) -> LoadedModel:
    """A model folder read with :meth:`RewardModel.load`.

    Served texts are not written to the embedding cache unless ``embedding_cache``
    names a folder: clients choose the texts, and a cache of them would grow the
    disk without bound.
    """
    from prefkit.rm.model import RewardModel

    model = RewardModel.load(folder, device=device, cache_dir=embedding_cache)
    if embedding_cache is None and hasattr(model, "cache"):
        model.cache = None
    return LoadedModel(model, folder)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0: a free one); connections wait in its backlog
    until uvicorn takes them.

    The protocol is named (IPPROTO_TCP, not 0): asyncio turns Nagle's algorithm off only
    on sockets that say they are TCP, and with it on, a response written as headers and
    then body waited for the client's delayed ACK, about 40 ms a request."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def build_server(app: FastAPI, config: ServeConfig) -> Any:
    """A uvicorn server for ``app``: SIGTERM and Ctrl-C stop taking connections, let the
    requests in flight finish (up to the request timeout), then exit."""
    import uvicorn

    return uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=int(math.ceil(config.request_timeout_s)) + 5,
            lifespan="on",
        )
    )


def serve(
    folder: str | Path,
    config: ServeConfig,
    *,
    device: str = "cpu",
    embedding_cache: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> None:
    """Serve the model in ``folder`` until SIGTERM or Ctrl-C; prints the address first.

    Raises the loading error when the model cannot be loaded.
    """
    sock = bind_socket(config.host, config.port)
    host, port = sock.getsockname()[:2]
    shown_host = f"[{host}]" if ":" in host else host
    failure: list[BaseException] = []

    def stop_on_error(error: BaseException) -> None:
        failure.append(error)
        server.should_exit = True

    app = create_app(
        lambda: load_reward_model(folder, device=device, embedding_cache=embedding_cache),
        config,
        on_load_error=stop_on_error,
    )
    server = build_server(app, config)
    log(f"prefkit serve: listening on http://{shown_host}:{port} (model {folder})")
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if failure:
        raise failure[0]
