"""The annotation database: SQLite by default (one file, WAL), PostgreSQL by URL.

:func:`open_store` connects and brings the schema to the newest Alembic revision.
Every change goes through :meth:`Store.write`, one transaction that commits
before the caller answers the browser: on SQLite it starts with ``BEGIN
IMMEDIATE`` (writers queue for the lock instead of failing half-way), with
``journal_mode=WAL`` and ``synchronous=FULL`` (a commit is on disk when it
returns); on PostgreSQL a commit is durable by default. :meth:`Store.read` is a
plain transaction for pages and reports.

All queries are SQLAlchemy expressions with bound parameters; no SQL text is
ever built from input.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError

from prefkit.annotate.config import AnnotateError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
DEFAULT_DB_ENV = "PREFKIT_ANNOTATE_DB"
DEFAULT_DB = "sqlite:///prefkit-annotate.db"
RETRYABLE_PG_CODES = {"40001", "40P01"}  # serialization failure, deadlock detected

T = TypeVar("T")


def default_url() -> str:
    """``$PREFKIT_ANNOTATE_DB``, else ``prefkit-annotate.db`` in the current folder."""
    return os.environ.get(DEFAULT_DB_ENV) or DEFAULT_DB


def normalise_url(url: str) -> str:
    """A SQLAlchemy URL: a plain path means SQLite; ``postgresql://`` uses psycopg 3."""
    if "://" not in url:
        return f"sqlite:///{Path(url).expanduser().resolve()}"
    try:
        parsed = make_url(url)
    except ArgumentError as error:
        raise AnnotateError(f"--db {url!r}: not a database URL ({error})") from None
    backend = parsed.get_backend_name()
    if backend == "postgresql" or url.startswith("postgres://"):
        parsed = parsed.set(drivername="postgresql+psycopg")
        return parsed.render_as_string(hide_password=False)
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise AnnotateError(
                "--db: an in-memory SQLite database would be lost when the command ends; "
                "give a file (sqlite:///path/to/annotate.db)"
            )
        return url
    raise AnnotateError(
        f"--db {parsed.render_as_string()}: use sqlite:///FILE or postgresql://USER@HOST/DB"
    )


class Store:
    """A connected database; see the module docstring."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.dialect = engine.dialect.name
        self._reader = engine.execution_options(prefkit_begin="DEFERRED")
        # SQLite has one writer at a time: threads of this process queue here, in order,
        # instead of in SQLite's busy handler, which sleeps in growing steps (long tails).
        self._write_lock = threading.Lock() if self.dialect == "sqlite" else nullcontext()

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One write transaction, committed when the block ends without an exception."""
        with self._write_lock, self.engine.begin() as connection:
            yield connection

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self._reader.begin() as connection:
            yield connection

    def retry(self, operation: Callable[[], T], attempts: int = 5) -> T:
        """Run ``operation`` again when PostgreSQL aborted it for a deadlock or a conflict."""
        for attempt in range(attempts):
            try:
                return operation()
            except DBAPIError as error:
                code = getattr(error.orig, "sqlstate", None)
                if code not in RETRYABLE_PG_CODES or attempt == attempts - 1:
                    raise
                time.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.engine.dispose()


def create_store_engine(url: str) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database:
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30.0}, pool_size=10, max_overflow=40)
        _configure_sqlite(engine)
        return engine
    return create_engine(url, pool_size=10, max_overflow=40, pool_pre_ping=True, pool_timeout=60)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        # Leave transactions to the "begin" hook below instead of pysqlite's own.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in (
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=FULL",
            "PRAGMA foreign_keys=ON",
            "PRAGMA busy_timeout=30000",
        ):
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get("prefkit_begin", "IMMEDIATE")
        connection.exec_driver_sql("BEGIN IMMEDIATE" if mode == "IMMEDIATE" else "BEGIN")


def upgrade(engine: Engine) -> None:
    """Apply every Alembic migration the database does not have yet."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Two processes migrating at once take turns (the lock ends with the transaction).
            from sqlalchemy import func

            connection.execute(select(func.pg_advisory_xact_lock(0x70726566)))
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def open_store(url: str | None = None, *, migrate: bool = True) -> Store:
    """Connect to ``url`` (default :func:`default_url`) and migrate the schema to the newest."""
    engine = create_store_engine(url or default_url())
    try:
        if migrate:
            upgrade(engine)
    except OperationalError as error:
        engine.dispose()
        raise AnnotateError(
            f"cannot open the database {engine.url.render_as_string()}: {error.orig}"
        ) from None
    return Store(engine)
