"""Fixtures starting a real Highwater server, each on a database of its own.

HIGHWATER_BIN names the server binary (default: <repo>/target/debug/highwater, built by cargo);
DATABASE_URL is an admin URL of the PostgreSQL to use (default: postgres on 127.0.0.1:5432).
"""

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid
from typing import Optional, Sequence

import psycopg
import pytest

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(HERE.parent))  # highwater_client and examples/, without installing

from highwater_client import Client, HighwaterError  # noqa: E402

BINARY = pathlib.Path(os.environ.get("HIGHWATER_BIN") or REPO / "target" / "debug" / "highwater")
ADMIN_URL = os.environ.get("DATABASE_URL") or "postgres://postgres@127.0.0.1:5432/postgres"
PROJECTIONS = REPO / "examples" / "projections"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def database_url(name: str) -> str:
    """ADMIN_URL with its database replaced by `name`."""
    parts = urllib.parse.urlsplit(ADMIN_URL)
    return urllib.parse.urlunsplit(parts._replace(path="/" + name))


class Server:
    """One highwater process; stop() and start() again keep its port and database.

    It listens on 127.0.0.1; `address` is what clients dial, `host` (such as "localhost", the
    name a TLS certificate was made for) and the port. `args` are extra `serve` flags (such as
    --auth-file or --tls-cert); `client_options` are the Client options (such as tls_ca) that the
    health probe needs to reach it.
    """

    def __init__(
        self,
        database: str,
        log_path: pathlib.Path,
        projections: bool = False,
        args: Sequence[str] = (),
        host: str = "127.0.0.1",
        client_options: Optional[dict] = None,
    ):
        self.database = database
        self.database_url = database_url(database)
        self.port = free_port()
        self.listen = f"127.0.0.1:{self.port}"
        self.address = f"{host}:{self.port}"
        self.log_path = log_path
        self.projections = projections
        self.args = list(args)
        self.client_options = dict(client_options or {})
        self.process = None

    def start(self, timeout: float = 60.0) -> None:
        args = [
            str(BINARY), "serve",
            "--listen", self.listen,
            "--database-url", self.database_url,
        ]
        if self.projections:
            args += ["--projections", str(PROJECTIONS)]
        args += self.args
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        # Health needs no token, so the probe only needs what it takes to connect (TLS).
        with Client(self.address, timeout=2.0, **self.client_options) as probe:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"highwater exited with {self.process.returncode}:\n{self.log()}")
                try:
                    if probe.health("highwater.v1.EventStoreService") == "SERVING":
                        return
                except HighwaterError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"highwater not ready after {timeout}s:\n{self.log()}")
                time.sleep(0.05)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (a graceful shutdown) and wait; returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise RuntimeError(f"highwater did not stop within {timeout}s after SIGTERM")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def drop_database(name: str) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_server(tmp_path, projections: bool = False, **options):
    """Starts a server on a fresh database, yields it, then stops it and drops the database.
    `options` go to Server (args, host, client_options). For `yield from` in fixtures."""
    if not BINARY.exists():
        pytest.fail(f"no highwater binary at {BINARY}: build it (cargo build) or set HIGHWATER_BIN")
    name = f"hw_py_{uuid.uuid4().hex[:12]}"
    server = Server(name, tmp_path / "highwater.log", projections=projections, **options)
    try:
        server.start()
        yield server
    finally:
        try:
            code = server.stop()
        finally:
            drop_database(name)
        # A server that did not shut down cleanly is a failure of the test that used it.
        assert code == 0, f"highwater exited with {code}:\n{server.log()}"


@pytest.fixture
def server(tmp_path):
    """A running server on a fresh database (dropped afterwards)."""
    yield from run_server(tmp_path, projections=False)


@pytest.fixture
def projection_server(tmp_path):
    """A running server with the repository's example projections (cart_summary) loaded."""
    yield from run_server(tmp_path, projections=True)


@pytest.fixture
def client(server):
    with Client(server.address, timeout=10.0) as c:
        yield c


def query(server: Server, sql: str, *params):
    """Rows of a query run directly on the server's database."""
    with psycopg.connect(server.database_url) as conn:
        return conn.execute(sql, params).fetchall()


def load_example(name: str):
    """Imports examples/<name>.py as a module."""
    import importlib.util

    path = HERE.parent / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
