"""A throwaway PostgreSQL cluster for tests: initdb in a temporary folder, a free port.

The server binaries come from the system (Debian's ``postgresql`` package puts
them in ``/usr/lib/postgresql/VERSION/bin``; ``make test`` installs it when it is
missing). PostgreSQL refuses to run as root, so as root the cluster is created
and run as the ``postgres`` user the package adds. The cluster listens on
127.0.0.1 only, trusts local connections (it lives for one test run), and is
stopped and deleted at the end. ``fsync`` is off (unless asked for) to keep creating a database per
test cheap: the durability tests kill the annotation server, never PostgreSQL, so a
committed transaction survives them either way.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

SUPERUSER = "prefkit"


class ClusterError(RuntimeError):
    """The cluster could not be created or started (the message says why)."""


def find_pg_bin() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl`` (newest Debian version first), if any."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(os.path.realpath(on_path)).parent
    folders = glob.glob("/usr/lib/postgresql/*/bin")
    folders.sort(
        key=lambda path: int(Path(path).parent.name) if Path(path).parent.name.isdigit() else 0
    )
    for folder in reversed(folders):
        if (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ThrowawayCluster:
    """``start()`` returns a URL to the ``postgres`` database as a superuser; ``stop()`` deletes it all."""

    def __init__(self, bindir: Path, *, fsync: bool = False):
        self.bindir = bindir
        self.fsync = fsync
        self.root = Path(tempfile.mkdtemp(prefix="prefkit-postgres-"))
        self.data = self.root / "data"
        self.port = 0
        self._run_as: list[str] = []
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                raise ClusterError("running as root and runuser is missing: cannot run PostgreSQL")
            try:
                import pwd

                account = pwd.getpwnam("postgres")
            except KeyError:
                raise ClusterError(
                    "running as root and there is no 'postgres' user to run the server as"
                ) from None
            os.chown(self.root, account.pw_uid, account.pw_gid)
            self._run_as = ["runuser", "-u", "postgres", "--"]
        self.root.chmod(0o755)

    def _run(self, *command: str, timeout: float = 60.0) -> None:
        try:
            result = subprocess.run(
                [*self._run_as, *command],
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
                cwd=self.root,  # the postgres user may not be allowed into the current folder
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise ClusterError(f"{Path(command[0]).name}: {error}") from None
        if result.returncode != 0:
            raise ClusterError(
                f"{Path(command[0]).name} exited {result.returncode}: "
                f"{(result.stderr or result.stdout).strip()[-600:]}"
            )

    def start(self) -> str:
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        )
        for _ in range(3):  # the free port can be taken by someone else before we bind it
            self.port = free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -c port={self.port} "
                f"-c unix_socket_directories={self.root} -c max_connections=200 "
                "-c shared_buffers=32MB"
                + ("" if self.fsync else " -c fsync=off -c full_page_writes=off")
            )
            try:
                self._run(
                    str(self.bindir / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.root / "server.log"),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    "60",
                    "start",
                    timeout=90.0,
                )
                return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"
            except ClusterError as error:
                last = error
        log = self.root / "server.log"
        tail = log.read_text(errors="replace")[-600:] if log.exists() else ""
        raise ClusterError(f"{last}\n{tail}")

    def stop(self) -> None:
        if self.data.exists():
            try:
                self._run(
                    str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"
                )
            except ClusterError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)


def create_database(server_url: str, name: str) -> str:
    """Create database ``name`` on the server; returns its URL."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(
        server_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True
    ) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    base, _, _ = server_url.rpartition("/")
    return f"{base}/{name}"


def drop_database(server_url: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(
        server_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True
    ) as connection:
        connection.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
