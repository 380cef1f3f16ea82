"""Real services for end-to-end tests, each on 127.0.0.1 at a free port, stopped at teardown.

The fixtures are in conftest.py (a test asks for them by name and imports from here only the classes it annotates
with):

- :func:`s3_server`: moto's standalone S3 server (``python -m moto.server``; moto is a dev
  dependency, always present) with one bucket, :data:`BUCKET`;
- :func:`postgres`: a throwaway PostgreSQL cluster (``initdb`` in a temporary folder, run as the
  ``postgres`` user when the tests run as root), password authentication over TCP, its Unix socket
  inside that folder;
- :func:`mlflow_server`: ``deploy/mlflow.sh``, an MLflow tracking server backed by that PostgreSQL
  with its artifacts on the S3 server under ``s3://<bucket>/mlflow``. It is started in the
  background (it takes about 20 s on 2 cores); :meth:`MlflowServer.ready` waits for it.

The context managers behind the fixtures (:func:`moto_s3`, :func:`postgres_cluster`,
:func:`mlflow_tracking_server`) can be used on their own. A missing PostgreSQL installation skips
the tests that need it, or fails them when ``CALOTWIN_REQUIRE_SERVICES=1`` (as in CI), naming what
is missing. Each service process runs in its own session, and teardown stops its whole process
group whatever the test did.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote

import pytest

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
REQUIRE_ENV = "CALOTWIN_REQUIRE_SERVICES"
BUCKET = "calotwin"
#: moto accepts any credentials; these are what the clients send
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "calotwin-test", "AWS_SECRET_ACCESS_KEY": "calotwin-test"}
S3_REGION = "us-east-1"
PG_SUPERUSER = "postgres"
PG_PASSWORD = "calotwin-test-pw"


def unavailable(service: str, why: str) -> NoReturn:
    """Skip the test (or fail it when ``CALOTWIN_REQUIRE_SERVICES=1``) because ``service`` cannot run."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{service} is required ({REQUIRE_ENV}=1) but {why}", pytrace=False)
    pytest.skip(f"{service} not available: {why} (set {REQUIRE_ENV}=1 to make this a failure)")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def http_ok(url: str) -> bool:
    """Whether ``url`` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


class Process:
    """A service process started in its own session (so its children are stopped with it), logging to a file."""

    def __init__(self, name: str, args: list[str], log: Path, env: Mapping[str, str] | None = None, cwd=None):
        self.name, self.log = name, log
        with open(log, "wb") as out:
            self.popen = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                start_new_session=True,
            )  # fmt: skip

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, n_chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n_chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to the process group, SIGKILL to what is left after ``timeout``."""
        group = self.popen.pid  # the session leader: its pid is the group id
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)  # children that outlived the leader, or a leader that hung
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)


def wait_until(check: Callable[[], bool], timeout: float, what: str, process: Process | None = None) -> None:
    """Poll ``check`` until it is true; fail with the process's log if it exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if process is not None and not process.alive():
            raise RuntimeError(f"{what}: {process.name} exited ({process.popen.returncode}):\n{process.log_tail()}")
        if time.monotonic() > deadline:
            tail = f":\n{process.log_tail()}" if process is not None else ""
            raise TimeoutError(f"{what}: not ready after {timeout:.0f} s{tail}")
        time.sleep(0.1)


# --- S3 (moto) ------------------------------------------------------------------------------------
@dataclass
class S3Server:
    """moto's S3 server: its endpoint, the bucket made at start, and what clients need to reach it."""

    endpoint: str
    bucket: str
    process: Process

    @property
    def env(self) -> dict[str, str]:
        """Environment for clients (s3fs, boto3): credentials and region, no endpoint (passed explicitly)."""
        return {**S3_CREDENTIALS, "AWS_DEFAULT_REGION": S3_REGION, "AWS_EC2_METADATA_DISABLED": "true"}

    @property
    def storage_options(self) -> dict[str, Any]:
        """fsspec options of the bucket (credentials come from :attr:`env`)."""
        return {"endpoint_url": self.endpoint}

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=S3_REGION,
            aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def fs(self):
        """A fresh s3fs file system on the server (no listing cache)."""
        import s3fs

        return s3fs.S3FileSystem(
            endpoint_url=self.endpoint,
            key=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            secret=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            use_listings_cache=False,
            skip_instance_cache=True,
        )

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key in the bucket under ``prefix``."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


@contextlib.contextmanager
def moto_s3(workdir: Path, bucket: str = BUCKET, timeout: float = 60.0) -> Iterator[S3Server]:
    """Start moto's S3 server on 127.0.0.1 and create ``bucket``; stop it on exit."""
    port = free_port()
    endpoint = f"http://{HOST}:{port}"
    process = Process(
        "moto", [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)], workdir / "moto.log", cwd=workdir
    )
    try:
        wait_until(lambda: http_ok(endpoint + "/"), timeout, "moto S3 server", process)
        server = S3Server(endpoint=endpoint, bucket=bucket, process=process)
        server.client().create_bucket(Bucket=bucket)
        yield server
    finally:
        process.stop()


# --- PostgreSQL -----------------------------------------------------------------------------------
def postgres_bindir() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: on PATH, from ``pg_config``, or Debian's newest
    ``/usr/lib/postgresql/<version>/bin``."""
    candidates: list[Path] = []
    if found := shutil.which("pg_ctl"):
        candidates.append(Path(found).parent)
    if pg_config := shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10).stdout
            candidates.append(Path(out.strip()))

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", path.parent.name)) or (0,)

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    for path in candidates:
        if (path / "initdb").is_file() and (path / "pg_ctl").is_file():
            return path
    return None


@dataclass
class Postgres:
    """A running PostgreSQL cluster: where it listens and how to log in (superuser, password auth)."""

    host: str
    port: int
    user: str
    password: str
    bindir: Path
    base: Path
    databases: list[str] = field(default_factory=list)

    def url(self, database: str, scheme: str = "postgresql+psycopg2") -> str:
        """A SQLAlchemy URL (psycopg2: SQLAlchemy 2.1 maps plain ``postgresql`` to psycopg 3)."""
        return (
            f"{scheme}://{quote(self.user, safe='')}:{quote(self.password, safe='')}@{self.host}:{self.port}/{database}"
        )

    def connect(self, database: str = "postgres"):
        import psycopg2

        return psycopg2.connect(
            host=self.host, port=self.port, user=self.user, password=self.password, dbname=database, connect_timeout=10
        )

    def create_database(self, name: str) -> str:
        """Create database ``name`` (once); return its name."""
        if name not in self.databases:
            conn = self.connect()
            try:
                conn.autocommit = True
                with conn.cursor() as cursor:
                    cursor.execute(f'CREATE DATABASE "{name}"')
            finally:
                conn.close()
            self.databases.append(name)
        return name

    def query(self, database: str, sql: str, params: tuple = ()) -> list[tuple]:
        conn = self.connect(database)
        try:
            with conn.cursor() as cursor:
                cursor.execute(sql, params)
                return cursor.fetchall()
        finally:
            conn.close()


@contextlib.contextmanager
def postgres_cluster(timeout: float = 60.0) -> Iterator[Postgres]:
    """``initdb`` a cluster in a new temporary folder and start it on 127.0.0.1; stop and remove it on exit.

    As root it runs as the ``postgres`` user (``initdb`` refuses root) through ``runuser``. Durability is
    off (``fsync``, full-page writes): the data is thrown away.
    """
    bindir = postgres_bindir()
    if bindir is None:
        unavailable(
            "PostgreSQL", "no initdb/pg_ctl found (on PATH, via pg_config, or /usr/lib/postgresql/*/bin); "
            "on Debian: apt-get install postgresql",
        )  # fmt: skip
    as_user: list[str] = []
    owner = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            unavailable("PostgreSQL", "running as root and there is no 'postgres' user to run the server as")
        runuser = shutil.which("runuser")
        if runuser is None:
            unavailable("PostgreSQL", "running as root and `runuser` (util-linux) is missing")
        as_user = [runuser, "-u", "postgres", "--"]
    base = Path(tempfile.mkdtemp(prefix="calotwin-pg-"))  # not pytest's tmp_path: the postgres user must enter it
    data, log, pwfile = base / "data", base / "postgres.log", base / "pwfile"
    pwfile.write_text(PG_PASSWORD + "\n")
    pwfile.chmod(0o600)
    if owner is not None:
        for path in (base, pwfile):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    port = free_port()
    started = False
    try:
        _run(
            [*as_user, str(bindir / "initdb"), "-D", str(data), "-U", PG_SUPERUSER, f"--pwfile={pwfile}",
             "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--locale=C", "--no-sync"],
            "initdb", timeout,
        )  # fmt: skip
        options = f"-h {HOST} -p {port} -k {base} -F -c full_page_writes=off -c synchronous_commit=off"
        started = True  # from here on, stop it whatever happens
        _run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", str(int(timeout)),
             "-o", options, "start"],
            "pg_ctl start", timeout + 10, log,
        )  # fmt: skip
        yield Postgres(HOST, port, PG_SUPERUSER, PG_PASSWORD, bindir, base)
    finally:
        if started:
            _stop_postgres([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], data)
        shutil.rmtree(base, ignore_errors=True)


def _run(args: list[str], what: str, timeout: float, log: Path | None = None) -> None:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        extra = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
        raise RuntimeError(f"{what} failed ({proc.returncode}): {proc.stdout[-2000:]}{proc.stderr[-2000:]}{extra}")


def _stop_postgres(stop: list[str], data: Path) -> None:
    """``pg_ctl stop -m immediate``; if that fails, SIGKILL to the postmaster named in postmaster.pid."""
    pid_file = data / "postmaster.pid"
    pid = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int(pid_file.read_text().split()[0])
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        if subprocess.run(stop, capture_output=True, timeout=30, stdin=subprocess.DEVNULL).returncode == 0:
            return
    if pid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


# --- MLflow ---------------------------------------------------------------------------------------
@dataclass
class MlflowServer:
    """An MLflow tracking server started in the background: ``ready()`` waits for it and returns its URI."""

    uri: str
    artifacts: str  # where the server puts artifacts: s3://<bucket>/mlflow
    process: Process
    timeout: float = 120.0

    def ready(self) -> str:
        wait_until(lambda: http_ok(self.uri + "/health"), self.timeout, "MLflow tracking server", self.process)
        return self.uri


def mlflow_executable() -> str:
    """The ``mlflow`` script of this interpreter's environment (else the one on PATH)."""
    beside = Path(sys.executable).with_name("mlflow")
    return str(beside) if beside.exists() else (shutil.which("mlflow") or "mlflow")


@contextlib.contextmanager
def mlflow_tracking_server(
    pg: Postgres, s3: S3Server, workdir: Path, database: str = "mlflow", prefix: str = "mlflow"
) -> Iterator[MlflowServer]:
    """Start ``deploy/mlflow.sh`` (one worker) on 127.0.0.1 against ``pg`` and ``s3``, without waiting for it."""
    pg.create_database(database)
    port = free_port()
    artifacts = f"s3://{s3.bucket}/{prefix}"
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env.update(
        s3.env,
        MLFLOW_PG_HOST=pg.host,
        MLFLOW_PG_PORT=str(pg.port),
        MLFLOW_PG_USER=pg.user,
        MLFLOW_PG_PASSWORD=pg.password,
        MLFLOW_PG_DB=database,
        MLFLOW_ARTIFACTS_DESTINATION=artifacts,
        MLFLOW_S3_ENDPOINT_URL=s3.endpoint,
        MLFLOW_HOST=HOST,
        MLFLOW_PORT=str(port),
        MLFLOW_WORKERS="1",
        MLFLOW=mlflow_executable(),
    )
    process = Process("mlflow", ["bash", str(REPO / "deploy" / "mlflow.sh")], workdir / "mlflow.log", env, workdir)
    try:
        yield MlflowServer(uri=f"http://{HOST}:{port}", artifacts=artifacts, process=process)
    finally:
        process.stop()
