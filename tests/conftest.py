"""Shared fixtures: where the real feedback data sets live."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the project; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not available at {SHARED_DATA}")
    return SHARED_DATA


def top_level_imports(path: Path) -> set[str]:
    """Top-level package names imported anywhere in the Python file at ``path``."""
    import ast

    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    return imported


# ----------------------------------------------------- real services: browser, PostgreSQL


def skip_or_fail_in_ci(reason: str, *, allow_module_level: bool = False) -> None:
    """Skip with ``reason``; under ``CI=true`` fail instead, so CI cannot pass by skipping.

    ``allow_module_level``: called while a test module is imported, skip the whole module
    (under CI the failure is then a collection error).
    """
    import os

    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason, allow_module_level=allow_module_level)


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    """The system Chromium (``make test`` installs Debian's ``chromium`` when missing)."""
    from browser import find_chromium

    found = find_chromium()
    if found is None:
        skip_or_fail_in_ci(
            "chromium is not installed (Debian: apt-get install chromium; "
            "`make test` installs it when run as root)"
        )
    return found


@pytest.fixture(scope="session")
def browser(chromium_executable: str):
    """One headless Chromium driven by Playwright, shared by the session's browser tests."""
    try:
        from browser import Browser
    except ImportError as error:  # pragma: no cover - playwright is in the test extra
        skip_or_fail_in_ci(f"playwright is not installed: {error}")
    chromium = Browser(chromium_executable)
    try:
        yield chromium
    finally:
        chromium.close()


POSTGRES_URL_ENV = "PREFKIT_TEST_POSTGRES_URL"


@pytest.fixture(scope="session")
def postgres_server():
    """URL of a PostgreSQL server the tests may create databases on.

    ``$PREFKIT_TEST_POSTGRES_URL`` when set; otherwise a throwaway cluster started
    from the system's PostgreSQL binaries (see ``tests/postgres.py``) and deleted at
    the end. Skips with the reason when neither is possible (fails under CI).
    """
    import os

    given = os.environ.get(POSTGRES_URL_ENV)
    if given:
        yield given
        return
    from postgres import ClusterError, ThrowawayCluster, find_pg_bin

    bindir = find_pg_bin()
    if bindir is None:
        skip_or_fail_in_ci(
            "PostgreSQL is not installed (no initdb/pg_ctl; Debian: apt-get install "
            f"postgresql; `make test` installs it when run as root; or set {POSTGRES_URL_ENV})"
        )
    try:
        cluster = ThrowawayCluster(bindir)
        url = cluster.start()
    except ClusterError as error:
        skip_or_fail_in_ci(f"could not start a PostgreSQL server: {error}")
    try:
        yield url
    finally:
        cluster.stop()


@pytest.fixture
def postgres_url(postgres_server: str, request: pytest.FixtureRequest):
    """A fresh, empty PostgreSQL database for one test (dropped afterwards)."""
    import re
    import uuid

    from postgres import create_database, drop_database

    name = (
        "t_"
        + re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:40]
        + "_"
        + uuid.uuid4().hex[:8]
    )
    url = create_database(postgres_server, name)
    try:
        yield url
    finally:
        drop_database(postgres_server, name)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test that takes it runs twice: on a SQLite file and on a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'annotate.db'}"
    return request.getfixturevalue("postgres_url")


# ------------------------------------------------------------- libraries of the test extra


def import_or_skip_outside_ci(name: str, *, allow_module_level: bool = False):
    """Import ``name``, a module the test extra installs: skip the test when it cannot be
    imported, fail under ``CI=true`` (``pytest.importorskip`` would skip there too)."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as error:
        skip_or_fail_in_ci(
            f"{name} cannot be imported ({error}); pip install -e '.[test]' installs it",
            allow_module_level=allow_module_level,
        )


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray runtime with 2 CPUs for one test module, quiet, stopped after it (the
    modules that use it skip themselves where Ray is not installed)."""
    import logging

    import ray

    ray.init(
        num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING
    )
    yield
    ray.shutdown()
