"""`make twin`: start the Dagster webserver and daemon, drop a new batch of simulated data into the
landing area, and show the loop react: ingestion, retraining, validation, promotion decision.

It starts ``dagster dev`` on the data home's instance with the loop's sensors on, turns them on
through the GraphQL API as well (a user may have stopped them in the UI), writes a 3DGAN HDF5 file
of new Monte Carlo showers (a new seed each time) into ``$CALOTWIN_HOME/landing``, and prints each run
of the loop as it starts and ends. Then it keeps the UI up until Ctrl-C (``--once``: it stops as
soon as the promotion decision is recorded).

The client functions here (:class:`Served`, :class:`DagsterDev`, :func:`graphql`, :func:`start_sensors`,
:func:`loop_runs`, :func:`react`) talk to the webserver over HTTP; the end-to-end test uses them too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from .home import ensure_dagster_home, ensure_home

REPO = Path(__file__).resolve().parents[1]
LOOP_SENSORS = (
    "landing_sensor",
    "ingest_after_landing",
    "ingest_after_failed_landing",
    "retrain_sensor",
    "validate_after_training",
    "promote_after_validation",
    "promote_after_failed_validation",
)
LOOP_JOBS = ("land_files", "ingest_runs", "train_flow", "train_gan", "validate_model", "promote_champion")
FINISHED = ("SUCCESS", "FAILURE", "CANCELED")


def graphql(port: int, query: str, variables: dict[str, Any] | None = None, host: str = "127.0.0.1") -> dict:
    """POST a query to the webserver's /graphql; GraphQL errors raise RuntimeError with the message."""
    request = urllib.request.Request(
        f"http://{host}:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        payload = json.loads(response.read())
    if payload.get("errors"):
        raise RuntimeError(f"GraphQL error: {payload['errors']}")
    return payload["data"]


class Served:
    """A command that serves HTTP on ``host:port``, in its own process group, stopped with SIGTERM.

    ``env`` is the command's whole environment. Use it as a context manager, or call :meth:`start`
    and :meth:`stop`; it is up once ``ready_path`` answers.
    """

    def __init__(
        self,
        command: list[str],
        env: dict[str, str],
        port: int,
        ready_path: str,
        log_path: Path,
        host: str = "127.0.0.1",
    ) -> None:
        self.command, self.env, self.port, self.ready_path = command, env, port, ready_path
        self.host, self.log_path = host, log_path
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 180) -> Served:
        self.log = open(self.log_path, "w")  # noqa: SIM115 - a server's log, closed in stop()
        self.proc = subprocess.Popen(
            self.command,
            cwd=REPO,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"http://{self.host}:{self.port}{self.ready_path}", timeout=5):
                    return self
            except OSError:
                if self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"{self.command[:2]} exited: {self.log_path.read_text()[-3000:]}") from None
                if time.monotonic() > deadline:
                    self.stop()
                    message = f"{self.command[:2]} did not answer in {timeout_s:.0f} s; see {self.log_path}"
                    raise TimeoutError(message) from None
                time.sleep(1)

    def get_json(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://{self.host}:{self.port}{path}", timeout=30) as response:
            return json.loads(response.read())

    def __enter__(self) -> Served:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    #: SIGTERM the whole process group (``make`` does not pass the signal on to what it started)
    term_group = True

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if self.term_group:
                os.killpg(self.proc.pid, signal.SIGTERM)
            else:
                self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                print(f"{self.command[:2]} still up 20 s after SIGTERM: killing it", file=sys.stderr)
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):  # whatever it left behind in its group
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


class DagsterDev(Served):
    """``dagster dev`` (webserver and daemon) on the workspace, with the first-visit popup marked seen.

    It is stopped by a SIGTERM to ``dagster dev`` alone, which then shuts its webserver, daemon and
    code server down in order.
    """

    term_group = False

    def __init__(self, env: dict[str, str], port: int, log_path: Path, host: str = "127.0.0.1") -> None:
        dagster = str(Path(sys.executable).with_name("dagster"))
        command = [dagster, "dev", "-w", str(REPO / "workspace.yaml"), "-h", host, "-p", str(port)]
        super().__init__(command, env, port, "/server_info", log_path, host)

    def start(self, timeout_s: float = 180) -> DagsterDev:
        super().start(timeout_s)
        graphql(self.port, "mutation { setNuxSeen }", host=self.host)
        return self


_REPOS = """{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name }
  sensors { name sensorState { status } } schedules { name scheduleState { status } } } } } }"""


def loop_states(port: int, host: str = "127.0.0.1") -> dict[str, str]:
    """RUNNING / STOPPED of every sensor and schedule in the workspace, by name."""
    nodes = graphql(port, _REPOS, host=host)["repositoriesOrError"]["nodes"]
    states: dict[str, str] = {}
    for repo in nodes:
        states |= {s["name"]: s["sensorState"]["status"] for s in repo["sensors"]}
        states |= {s["name"]: s["scheduleState"]["status"] for s in repo["schedules"]}
    return states


def start_sensors(port: int, names: tuple[str, ...] = LOOP_SENSORS, host: str = "127.0.0.1") -> dict[str, str]:
    """Turn sensors on through GraphQL (as the UI's toggle does); returns their states afterwards."""
    (repo,) = graphql(port, _REPOS, host=host)["repositoriesOrError"]["nodes"]
    selector = {"repositoryLocationName": repo["location"]["name"], "repositoryName": repo["name"]}
    running = {s["name"] for s in repo["sensors"] if s["sensorState"]["status"] == "RUNNING"}
    for name in names:
        if name in running:
            continue
        data = graphql(
            port,
            """mutation($s: SensorSelector!) { startSensor(sensorSelector: $s) {
                 __typename ... on Sensor { sensorState { status } } ... on PythonError { message } } }""",
            {"s": {**selector, "sensorName": name}},
            host=host,
        )["startSensor"]
        if data["__typename"] != "Sensor":
            raise RuntimeError(f"could not start {name}: {data}")
    states = loop_states(port, host)
    return {name: states[name] for name in names}


def loop_runs(port: int, host: str = "127.0.0.1") -> list[dict[str, Any]]:
    """Every run, oldest first: id, job, status, tags (as a dict), creation, start and end times (s)."""
    data = graphql(
        port,
        """{ runsOrError(limit: 200) { ... on Runs { results {
             runId jobName status creationTime startTime endTime tags { key value } } } } }""",
        host=host,
    )
    runs = data["runsOrError"]["results"]
    for run in runs:
        run["tags"] = {t["key"]: t["value"] for t in run["tags"]}
    return list(reversed(runs))


def latest_metadata(port: int, asset: str, host: str = "127.0.0.1") -> dict[str, Any] | None:
    """The latest materialization's text, int, float, bool and path metadata of an asset, or None."""
    data = graphql(
        port,
        """query($p: [String!]!) { assetOrError(assetKey: {path: $p}) { ... on Asset {
             assetMaterializations(limit: 1) { runId timestamp metadataEntries { label
               ... on TextMetadataEntry { text } ... on IntMetadataEntry { intValue }
               ... on FloatMetadataEntry { floatValue } ... on BoolMetadataEntry { boolValue }
               ... on PathMetadataEntry { path } } } } } }""",
        {"p": [asset]},
        host=host,
    )["assetOrError"]
    found = data.get("assetMaterializations") if data else None
    if not found:
        return None
    values: dict[str, Any] = {"run_id": found[0]["runId"], "timestamp": float(found[0]["timestamp"]) / 1000}
    for entry in found[0]["metadataEntries"]:
        values[entry["label"]] = next(
            (entry[k] for k in ("text", "intValue", "floatValue", "boolValue", "path") if k in entry), None
        )
    return values


def drop_batch(landing: Path, n_events: int, geometry: str, seed: int) -> Path:
    """Write a new 3DGAN HDF5 batch of Monte Carlo showers into the landing folder, as an uploader
    should: under a temporary name first, renamed when complete."""
    from .showers.hdf5 import write_hdf5
    from .simulation import simulate

    landing.mkdir(parents=True, exist_ok=True)
    name = f"twin-batch-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-s{seed}.h5"
    showers = simulate(n_events, (10.0, 200.0), (60.0, 120.0), "e-", geometry=geometry, seed=seed)
    partial = landing / f"{name}.part"
    write_hdf5(showers, str(partial), layout="3dgan")
    partial.rename(landing / name)
    return landing / name


def follow(port: int, since: float, timeout_s: float, host: str = "127.0.0.1") -> list[dict[str, Any]]:
    """Print the loop's runs created after ``since`` as they change state; return them (oldest first)
    once a promotion run has finished or a loop run other than a validation failed."""
    seen: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = [r for r in loop_runs(port, host) if r["jobName"] in LOOP_JOBS and r["creationTime"] >= since]
        for run in runs:
            if seen.get(run["runId"]) != run["status"]:
                seen[run["runId"]] = run["status"]
                extra = run["tags"].get("calotwin/model_uri") or run["tags"].get("dagster/partition", "")
                print(f"  {time.strftime('%H:%M:%S')}  {run['jobName']:<17} {run['status']:<9} {extra}", flush=True)
        done = [r for r in runs if r["status"] in FINISHED]
        if any(r["jobName"] == "promote_champion" for r in done):
            return runs
        if any(r["status"] != "SUCCESS" and r["jobName"] != "validate_model" for r in done):
            return runs
        time.sleep(1)
    raise TimeoutError(f"the loop did not reach a promotion decision within {timeout_s:.0f} s")


def react(
    port: int, landing: Path, events: int, geometry: str, seed: int, timeout_s: float, host: str = "127.0.0.1"
) -> tuple[Path, list[dict[str, Any]]]:
    """Drop a new batch into ``landing`` and follow the loop to its promotion decision: the batch's
    path and the loop's runs."""
    started = time.time()
    batch = drop_batch(landing, events, geometry, seed)
    print(f"dropped {batch.name} ({events} new showers) into {landing}; the loop reacts:", flush=True)
    return batch, follow(port, started, timeout_s, host)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "3000")))
    parser.add_argument("--events", type=int, default=1000, help="showers in the new batch (default 1000)")
    parser.add_argument("--geometry", default="small_ecal_15x15x12", help="geometry preset of the batch")
    parser.add_argument("--once", action="store_true", help="stop once the promotion decision is recorded")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the loop (default 1800)")
    args = parser.parse_args(argv)
    home = ensure_home()
    ensure_dagster_home()
    env = {**os.environ, "CALOTWIN_LOOP": "on", "CALOTWIN_HOME": str(home)}
    url = f"http://{args.host}:{args.port}"
    print(f"CaloTwin twin: data home {home}; starting the Dagster webserver and daemon on {url}")
    with DagsterDev(env, args.port, home / "twin-dagster.log", args.host) as server:
        states = start_sensors(server.port, host=args.host)
        print("loop sensors: " + ", ".join(f"{k} {v}" for k, v in states.items()))
        seed = int(time.time()) % 1_000_000  # new data each time
        react(server.port, home / "landing", args.events, args.geometry, seed, args.timeout, args.host)
        decision = latest_metadata(server.port, "champion_model", args.host)
        if decision:
            verb = "promoted to champion" if decision.get("promoted") else "not promoted"
            print(f"promotion: version {decision.get('candidate_version')} {verb}: {decision.get('reason')}")
        print(f"quarantine: {home / 'quarantine'} (bad files land there with a .json reason)")
        if args.once:
            return 0
        print(f"the UI stays up at {url}; drop more files into {home / 'landing'}; Ctrl-C stops it")
        try:
            while server.proc is not None and server.proc.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            print("stopping")
    return 0


if __name__ == "__main__":
    sys.exit(main())
