"""External jobs in flight (:class:`_Launched`), and the one kind every compute can start: a local
process in its own process group (:class:`_Process`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path


class _Launched:
    """An external job in flight: its state, cancellation, and its log file."""

    log_path: Path
    label: str

    def poll(self) -> str | None:
        """None while it runs; "" once it succeeded; the reason once it failed."""
        raise NotImplementedError

    def cancel(self) -> None:
        raise NotImplementedError


#: ``python -c`` program that runs ``argv[1:]`` with SIGINT and SIGTERM at their defaults. An ignored signal is
#: inherited across exec, and a Dagster process started in the background (SIGINT ignored) ignores SIGTERM
#: too after any in-process run: Dagster maps SIGTERM to SIGINT's handler. Without this, cancel's SIGTERM
#: would not stop the job, only the SIGKILL 15 s later.
DEFAULT_SIGNALS = (
    "import os, signal, sys\n"
    "for s in (signal.SIGINT, signal.SIGTERM):\n"
    "    signal.signal(s, signal.SIG_DFL)\n"
    "os.execvp(sys.argv[1], sys.argv[1:])"
)


class _Process(_Launched):
    """A local process in its own process group (its log: ``folder/log_name``), started with SIGINT and
    SIGTERM at their defaults whatever this process does with them (:data:`DEFAULT_SIGNALS`)."""

    def __init__(
        self, command: list[str], env: Mapping[str, str], folder: Path, label: str, log_name: str = "train.log"
    ) -> None:
        self.log_path = folder / log_name
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", DEFAULT_SIGNALS, *command],
                env={**os.environ, **env},
                cwd=folder,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: cancel stops torchrun and its workers
            )
        self.label = label

    def poll(self) -> str | None:
        code = self.process.poll()
        if code is None:
            return None
        return "" if code == 0 else f"exit code {code}"

    def cancel(self) -> None:
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
