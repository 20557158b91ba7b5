"""The annotation server: server-rendered pages, a little plain JavaScript, and its security.

Pages: ``/login``; ``/p/PROJECT/`` (the item to label now), ``/p/PROJECT/guidelines``,
``/p/PROJECT/admin`` and ``/p/PROJECT/admin/export.jsonl`` (admins). Answers are
posted to ``/p/PROJECT/submit``, ``/skip`` and ``/undo`` and answered with a
redirect once committed (post/redirect/get, so a reload never posts again).

Security:

- login with a token (only its hash is stored); a session cookie that is
  ``HttpOnly`` and ``SameSite=Strict`` (``Secure`` with ``--secure-cookies``);
- a CSRF token on every form post (per session; for the login form, a cookie
  matched against the form);
- a Content-Security-Policy that allows only this server's own script and
  stylesheet (no inline script, no other origin), plus ``nosniff``, no framing,
  no referrer;
- failed logins are limited per client address (HTTP 429 past the limit);
- a session sees only its own project, and an annotator only their own
  assignments; the admin pages need an admin token;
- request bodies are bounded (HTTP 413); every dataset string is escaped by the
  templates (Jinja2 autoescape) and guidelines are Markdown with raw HTML off.
"""

from __future__ import annotations

import functools
import json
import math
import socket
import sys
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from sqlalchemy import delete, insert, select
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from prefkit.annotate import assign
from prefkit.annotate.agreement import describe_alpha
from prefkit.annotate.assign import AssignmentError, Project
from prefkit.annotate.config import ServeConfig
from prefkit.annotate.schema import annotators, projects, sessions
from prefkit.annotate.security import FailureLimiter, hash_token, new_token, same_token
from prefkit.annotate.store import Store
from prefkit.annotate.tasks import STRENGTHS, AnswerError, displayed_answer, parse_answer

SESSION_COOKIE = "prefkit_session"
LOGIN_COOKIE = "prefkit_login"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]
STATIC_FILES = {
    "annotate.js": "text/javascript",
    "annotate.css": "text/css",
    "favicon.svg": "image/svg+xml",
}
MAX_ADMIN_ITEMS = 500


@functools.lru_cache(maxsize=64)
def render_guidelines(markdown: str) -> Markup:
    """Guidelines Markdown as safe HTML: raw HTML is escaped, images are off, and links
    with ``javascript:``, ``vbscript:``, ``file:`` or ``data:`` targets are not made."""
    if not markdown.strip():
        return Markup("")
    from markdown_it import MarkdownIt

    parser = MarkdownIt("commonmark", {"html": False}).disable("image")
    return Markup(parser.render(markdown))


@dataclass(frozen=True)
class Viewer:
    """The logged-in person behind a request."""

    session_id: int
    annotator_id: int
    name: str
    is_admin: bool
    project_id: int
    project_name: str
    csrf: str


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every response and bounds request bodies."""

    def __init__(self, app: ASGIApp, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_body_bytes
                except ValueError:
                    too_big = True
                if too_big:
                    await self._refuse(send)
                    return
        received = 0
        started = too_big = False

        async def bounded_receive() -> Message:
            nonlocal received, too_big
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    too_big = True
                    raise BodyTooLarge
            return message

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if too_big:
                return  # the app's error page for BodyTooLarge is replaced by the 413 below
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        try:
            await self.app(scope, bounded_receive, send_with_headers)
        except BodyTooLarge:
            pass
        if too_big and not started:
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = f"request body over {self.max_body_bytes} bytes\n".encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), *SECURITY_HEADERS],
            }
        )
        await send({"type": "http.response.body", "body": body})


class BodyTooLarge(Exception):
    pass


class AnnotateApp:
    """Route handlers bound to one store and one server configuration."""

    def __init__(self, store: Store, config: ServeConfig):
        self.store = store
        self.config = config
        self.limiter = FailureLimiter(config.login_failures_per_minute)
        self._projects: dict[str, Project] = {}
        self.templates = Environment(
            loader=PackageLoader("prefkit.annotate", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
        )
        self.templates.globals.update(number=_number, describe_alpha=describe_alpha)
        self.static = {
            name: resources.files("prefkit.annotate").joinpath("static", name).read_bytes()
            for name in STATIC_FILES
        }

    # ------------------------------------------------------------------ helpers

    def page(self, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        return HTMLResponse(self.templates.get_template(name).render(**context), status_code=status)

    def message(
        self, heading: str, text: str, status: int, viewer: Viewer | None = None
    ) -> HTMLResponse:
        return self.page("message.html", status, heading=heading, message=text, viewer=viewer)

    def _viewer(self, token: str | None) -> Viewer | None:
        if not token or len(token) > 200:
            return None
        with self.store.read() as connection:
            row = connection.execute(
                select(
                    sessions.c.id,
                    sessions.c.csrf_token,
                    annotators.c.id.label("annotator_id"),
                    annotators.c.name,
                    annotators.c.is_admin,
                    projects.c.id.label("project_id"),
                    projects.c.name.label("project_name"),
                )
                .join(annotators, annotators.c.id == sessions.c.annotator_id)
                .join(projects, projects.c.id == annotators.c.project_id)
                .where(
                    sessions.c.token_hash == hash_token(token), sessions.c.expires_at > time.time()
                )
            ).first()
        if row is None:
            return None
        return Viewer(
            row.id,
            row.annotator_id,
            row.name,
            bool(row.is_admin),
            row.project_id,
            row.project_name,
            row.csrf_token,
        )

    async def viewer(self, request: Request) -> Viewer | None:
        return await run_in_threadpool(self._viewer, request.cookies.get(SESSION_COOKIE))

    def _project(self, viewer: Viewer, name: str) -> Project | None:
        """The viewer's project, if ``name`` is it (another project looks like no project)."""
        if name != viewer.project_name:
            return None
        project = self._projects.get(name)  # a project does not change once created
        if project is None:
            with self.store.read() as connection:
                project = assign.load_project(connection, name)
            if project is not None:
                self._projects[name] = project
        return project

    async def authorised(
        self, request: Request, *, admin: bool = False
    ) -> tuple[Viewer, Project] | Response:
        viewer = await self.viewer(request)
        if viewer is None:
            if request.method == "GET":
                return RedirectResponse("/login", status_code=303)
            return self.message("Not logged in", "Log in again with your token.", 401)
        project = await run_in_threadpool(self._project, viewer, request.path_params["project"])
        if project is None:
            return self.message("Not found", "There is no such project for you.", 404, viewer)
        if admin and not viewer.is_admin:
            return self.message("Forbidden", "This page is for the project's admins.", 403, viewer)
        return viewer, project

    async def form(self, request: Request, viewer: Viewer) -> dict[str, str] | Response:
        """The posted form, after the CSRF check; an error page when it fails."""
        form = await request.form(max_files=0, max_fields=200)
        fields = {key: value for key, value in form.items() if isinstance(value, str)}
        if not same_token(fields.get("csrf"), viewer.csrf):
            return self.message(
                "Form expired",
                "The form was not sent from this page; reload and try again.",
                403,
                viewer,
            )
        return fields

    # ------------------------------------------------------------------- routes

    async def home(self, request: Request) -> Response:
        viewer = await self.viewer(request)
        if viewer is None:
            return RedirectResponse("/login", status_code=303)
        target = f"/p/{viewer.project_name}/" + ("admin" if viewer.is_admin else "")
        return RedirectResponse(target, status_code=303)

    async def login_page(self, request: Request) -> Response:
        return self._login_form(error=None, status=200)

    def _login_form(self, error: str | None, status: int) -> Response:
        csrf = new_token()
        response = self.page("login.html", status, csrf=csrf, error=error, viewer=None)
        self._cookie(response, LOGIN_COOKIE, csrf, max_age=3600)
        return response

    def _cookie(self, response: Response, name: str, value: str, max_age: int) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path="/",
            httponly=True,
            samesite="strict",
            secure=self.config.secure_cookies,
        )

    async def login(self, request: Request) -> Response:
        client = request.client.host if request.client else "unknown"
        wait = self.limiter.retry_after(client)
        if wait > 0:
            response = self.message(
                "Too many attempts",
                f"Too many failed logins; try again in {math.ceil(wait)} s.",
                429,
            )
            response.headers["Retry-After"] = str(math.ceil(wait))
            return response
        form = await request.form(max_files=0, max_fields=10)
        csrf = form.get("csrf")
        if not isinstance(csrf, str) or not same_token(csrf, request.cookies.get(LOGIN_COOKIE, "")):
            return self._login_form("The login form expired; please try again.", 403)
        token = form.get("token")
        found = await run_in_threadpool(
            self._start_session, token if isinstance(token, str) else ""
        )
        if found is None:
            self.limiter.failed(client)
            return self._login_form("Unknown token.", 401)
        session_token, target = found
        response = RedirectResponse(target, status_code=303)
        self._cookie(response, SESSION_COOKIE, session_token, int(self.config.session_hours * 3600))
        response.delete_cookie(LOGIN_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    def _start_session(self, token: str) -> tuple[str, str] | None:
        token = token.strip()
        if not token or len(token) > 200:
            return None
        now = time.time()
        with self.store.write() as connection:
            row = connection.execute(
                select(annotators.c.id, annotators.c.is_admin, projects.c.name)
                .join(projects, projects.c.id == annotators.c.project_id)
                .where(annotators.c.token_hash == hash_token(token))
            ).first()
            if row is None:
                return None
            connection.execute(delete(sessions).where(sessions.c.expires_at < now))
            session_token = new_token()
            connection.execute(
                insert(sessions).values(
                    token_hash=hash_token(session_token),
                    annotator_id=row.id,
                    csrf_token=new_token(),
                    created_at=now,
                    expires_at=now + self.config.session_hours * 3600,
                )
            )
        return session_token, f"/p/{row.name}/" + ("admin" if row.is_admin else "")

    async def logout(self, request: Request) -> Response:
        viewer = await self.viewer(request)
        if viewer is not None:
            fields = await self.form(request, viewer)
            if isinstance(fields, Response):
                return fields

            def end() -> None:
                with self.store.write() as connection:
                    connection.execute(delete(sessions).where(sessions.c.id == viewer.session_id))

            await run_in_threadpool(end)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    async def annotate_page(self, request: Request) -> Response:
        allowed = await self.authorised(request)
        if isinstance(allowed, Response):
            return allowed
        viewer, project = allowed
        return await run_in_threadpool(self._annotate_page, viewer, project, None, None, 200)

    def _annotate_page(
        self,
        viewer: Viewer,
        project: Project,
        lease: assign.Lease | None,
        error: str | None,
        status: int,
        values: dict[str, str] | None = None,
    ) -> Response:
        if lease is None:
            lease = assign.next_lease(self.store, project, viewer.annotator_id, time.time())
        with self.store.read() as connection:
            progress = assign.progress(connection, project, viewer.annotator_id)
        can_undo = progress.done > 0
        shown: list[tuple[str, Any]] = []
        prompt = None
        if lease is not None:
            prompt = lease.content["prompt"]
            responses = lease.content["responses"]
            labels = "AB" if project.task == "pairwise" else None
            for position, index in enumerate(lease.display_order):
                label = labels[position] if labels else f"Response {position + 1}"
                shown.append((label, responses[index]))
            if values is None and lease.draft is not None:
                values = displayed_answer(project.task, lease.draft, lease.display_order)
        return self.page(
            "annotate.html",
            status,
            viewer=viewer,
            task=project.task,
            lease=lease,
            prompt=prompt,
            shown=shown,
            progress=progress,
            can_undo=can_undo,
            values=values or {},
            error=error,
            strengths=STRENGTHS,
            attributes=project.config.attributes,
            guidelines=render_guidelines(project.guidelines),
            max_rationale=self.config.max_rationale_chars,
        )

    async def submit(self, request: Request) -> Response:
        allowed = await self.authorised(request)
        if isinstance(allowed, Response):
            return allowed
        viewer, project = allowed
        fields = await self.form(request, viewer)
        if isinstance(fields, Response):
            return fields
        return await run_in_threadpool(self._submit, viewer, project, fields)

    def _submit(self, viewer: Viewer, project: Project, fields: dict[str, str]) -> Response:
        assignment_id = _int_field(fields.get("assignment"))
        if assignment_id is None:
            return self.message("Bad request", "The form has no assignment.", 400, viewer)
        try:
            with self.store.read() as connection:
                lease = assign.lease_for(connection, project, viewer.annotator_id, assignment_id)
        except AssignmentError as error:
            return self.message("Not found", str(error), error.status, viewer)
        rationale = _clean_text(fields.get("rationale", ""))
        try:
            if len(rationale) > self.config.max_rationale_chars:
                raise AnswerError(
                    f"the rationale has {len(rationale):,} characters; at most "
                    f"{self.config.max_rationale_chars:,}"
                )
            answer = parse_answer(project.task, project.config, fields, lease.display_order)
        except AnswerError as error:
            kept = {key: value[:10_000] for key, value in fields.items() if key != "csrf"}
            return self._annotate_page(viewer, project, lease, str(error), 400, kept)
        try:
            assign.submit(
                self.store,
                project,
                viewer.annotator_id,
                assignment_id,
                answer,
                rationale=rationale or None,
                seconds=_seconds_field(fields.get("seconds")),
                now=time.time(),
            )
        except AssignmentError as error:
            return self._annotate_page(viewer, project, None, str(error), error.status)
        return RedirectResponse(f"/p/{project.name}/", status_code=303)

    async def skip(self, request: Request) -> Response:
        allowed = await self.authorised(request)
        if isinstance(allowed, Response):
            return allowed
        viewer, project = allowed
        fields = await self.form(request, viewer)
        if isinstance(fields, Response):
            return fields
        assignment_id = _int_field(fields.get("assignment"))
        if assignment_id is None:
            return self.message("Bad request", "The form has no assignment.", 400, viewer)
        try:
            await run_in_threadpool(
                assign.skip, self.store, project, viewer.annotator_id, assignment_id
            )
        except AssignmentError as error:
            return self.message("Not found", str(error), error.status, viewer)
        return RedirectResponse(f"/p/{project.name}/", status_code=303)

    async def undo(self, request: Request) -> Response:
        allowed = await self.authorised(request)
        if isinstance(allowed, Response):
            return allowed
        viewer, project = allowed
        fields = await self.form(request, viewer)
        if isinstance(fields, Response):
            return fields
        await run_in_threadpool(
            assign.undo_last, self.store, project, viewer.annotator_id, time.time()
        )
        return RedirectResponse(f"/p/{project.name}/", status_code=303)

    async def guidelines(self, request: Request) -> Response:
        allowed = await self.authorised(request)
        if isinstance(allowed, Response):
            return allowed
        viewer, project = allowed
        return self.page(
            "guidelines.html", viewer=viewer, guidelines=render_guidelines(project.guidelines)
        )

    async def admin(self, request: Request) -> Response:
        allowed = await self.authorised(request, admin=True)
        if isinstance(allowed, Response):
            return allowed
        viewer, project = allowed
        from prefkit.annotate.project import project_report

        report = await run_in_threadpool(project_report, self.store, project.name)
        # items with answers first (the ones there is something to look at), then in order
        shown = sorted(report.items, key=lambda row: -row.n_done)
        return self.page(
            "admin.html", viewer=viewer, report=report, items=shown, max_items=MAX_ADMIN_ITEMS
        )

    async def export(self, request: Request) -> Response:
        allowed = await self.authorised(request, admin=True)
        if isinstance(allowed, Response):
            return allowed
        _, project = allowed
        from prefkit.annotate.project import export_records

        records, _ = await run_in_threadpool(export_records, self.store, project.name)
        body = "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in records)
        return Response(
            body,
            media_type="application/x-ndjson",
            headers={"content-disposition": f'attachment; filename="{project.name}.jsonl"'},
        )

    async def static_file(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC_FILES:
            return PlainTextResponse("not found\n", status_code=404)
        return Response(self.static[name], media_type=STATIC_FILES[name])

    async def health(self, request: Request) -> Response:
        return PlainTextResponse("ok\n")


def _int_field(text: str | None) -> int | None:
    if text is None or not text.isdigit() or len(text) > 18:
        return None
    return int(text)


def _seconds_field(text: str | None) -> float | None:
    """Time on the item as measured by the page; anything implausible is dropped."""
    try:
        seconds = float(text) if text else None
    except ValueError:
        return None
    if seconds is None or not math.isfinite(seconds) or not 0.0 <= seconds <= 86_400.0:
        return None
    return seconds


def _clean_text(text: str) -> str:
    """Drop control characters other than newline and tab (PostgreSQL rejects NUL)."""
    return "".join(c for c in text if c in "\n\t" or not (ord(c) < 32 or ord(c) == 127)).strip()


def _number(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def create_app(store: Store, config: ServeConfig | None = None) -> Starlette:
    """The ASGI application (serve it with uvicorn, or :func:`serve`)."""
    config = config or ServeConfig()
    handlers = AnnotateApp(store, config)
    routes = [
        Route("/", handlers.home),
        Route("/healthz", handlers.health),
        Route("/login", handlers.login_page, methods=["GET"]),
        Route("/login", handlers.login, methods=["POST"]),
        Route("/logout", handlers.logout, methods=["POST"]),
        Route("/static/{name}", handlers.static_file),
        Route("/p/{project}/", handlers.annotate_page, methods=["GET"]),
        Route("/p/{project}/submit", handlers.submit, methods=["POST"]),
        Route("/p/{project}/skip", handlers.skip, methods=["POST"]),
        Route("/p/{project}/undo", handlers.undo, methods=["POST"]),
        Route("/p/{project}/guidelines", handlers.guidelines, methods=["GET"]),
        Route("/p/{project}/admin", handlers.admin, methods=["GET"]),
        Route("/p/{project}/admin/export.jsonl", handlers.export, methods=["GET"]),
    ]
    app = Starlette(routes=routes)
    return SecurityHeaders(app, config.max_body_kib * 1024)  # type: ignore[return-value]


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)  # connections made before uvicorn starts wait in the backlog
    sock.set_inheritable(True)
    return sock


def serve(store: Store, config: ServeConfig) -> None:
    """Serve until interrupted; prints the address (with the port when 0 was asked for)."""
    import uvicorn

    sock = bind_socket(config.host, config.port)
    host, port = sock.getsockname()[:2]
    shown_host = f"[{host}]" if ":" in host else host
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(store, config),
            log_level="warning",
            access_log=False,
            limit_concurrency=500,
            timeout_keep_alive=5,
        )
    )
    print(f"prefkit annotate: serving on http://{shown_host}:{port}/login", flush=True)
    print("(Ctrl-C to stop)", file=sys.stderr, flush=True)
    server.run(sockets=[sock])
