"""A running Slurm cluster (started outside the tests by `.ci/slurm up`), for the ``slurm`` fixture.

The fixture is in conftest.py (it calls :func:`require_cluster`): a test asks for ``slurm`` by name and imports only
the class, ``from slurm_cluster import SlurmCluster``, to annotate it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

SKIP_REASON = "no Slurm cluster: run `.ci/slurm up` and `source /tmp/calotwin-slurm/env`"
FINAL_STATES = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}
)
# `scontrol show job -o`: one line of Key=Value pairs; a value may hold '=' (TRES=cpu=1,...) and, rarely, spaces
_PAIR = re.compile(r"(?:^|\s)([A-Za-z][\w:/.]*)=(.*?)(?=\s+[A-Za-z][\w:/.]*=|\s*$)")


@dataclass(frozen=True)
class SlurmCluster:
    conf: Path
    partition: str = "debug"

    def job_state(self, job_id: str | int) -> dict[str, str]:
        """`scontrol show job -o <id>` as a dict, e.g. {"JobState": "COMPLETED", "ExitCode": "0:0", ...}."""
        out = subprocess.run(
            ["scontrol", "show", "job", "-o", str(job_id)], check=True, capture_output=True, text=True, timeout=30
        ).stdout
        return dict(_PAIR.findall(out.strip()))

    def submit(self, *sbatch_args: str) -> str:
        """`sbatch --parsable <args>` on this partition; returns the job id."""
        out = subprocess.run(
            ["sbatch", "--parsable", f"--partition={self.partition}", *sbatch_args],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        return out.strip().split(";")[0]

    def wait(self, job_id: str | int, timeout: float = 60.0) -> dict[str, str]:
        """Poll until the job reaches a final state; returns its `job_state`."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.job_state(job_id)
            if info.get("JobState") in FINAL_STATES or time.monotonic() > deadline:
                return info
            time.sleep(0.1)


def _missing() -> str | None:
    """Why there is no usable cluster, or None if there is one."""
    conf = os.environ.get("SLURM_CONF")
    if not conf:
        return "SLURM_CONF is not set"
    if not Path(conf).is_file():
        return f"SLURM_CONF={conf} does not exist"
    if shutil.which("sinfo") is None:
        return "`sinfo` is not on PATH (apt-get install slurm-wlm)"
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%P %t"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "`sinfo` did not answer within 15 s"
    if proc.returncode != 0:
        return f"`sinfo` failed: {proc.stderr.strip() or proc.returncode}"
    return None


def require_cluster() -> SlurmCluster:
    """The cluster that `SLURM_CONF` points at; skips (or fails with CALOTWIN_REQUIRE_SERVICES=1) if none answers."""
    why = _missing()
    if why is not None:
        if os.environ.get("CALOTWIN_REQUIRE_SERVICES") == "1":
            pytest.fail(f"Slurm required (CALOTWIN_REQUIRE_SERVICES=1) but {why}; {SKIP_REASON}")
        pytest.skip(f"{SKIP_REASON} ({why})")
    return SlurmCluster(conf=Path(os.environ["SLURM_CONF"]))
