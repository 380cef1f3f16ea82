"""Run a function in a child process with memory and time limits, so that its crash is an outcome here.

Reading an untrusted file runs a lot of native code (HDF5, compressors) on bytes someone else chose.
:func:`run_isolated` runs ``func(*args)`` in a child process forked from a clean server process
(``multiprocessing``'s *forkserver*, so no locks or threads of the caller are inherited), with:

- a memory limit: the child's address space may grow by ``memory_mb`` beyond what it starts with
  (``RLIMIT_AS``; Linux);
- a time limit: a child still running after ``timeout_s`` is killed.

It returns what ``func`` returned (which must pickle), re-raises nothing the child raised (an exception in
``func`` comes back as :class:`ChildError` with its type and message), gives the child the caller's
environment as it is at the call (object-store credentials, for one), and turns every way the child can
die into :class:`ChildFailedError` with a ``check`` code and the exit status:

- ``out_of_memory``: ``func`` raised ``MemoryError`` (the limit was hit), or the child was killed by SIGKILL
  (what the kernel's out-of-memory killer sends);
- ``timeout``: the time limit was hit (the child was killed);
- ``crashed``: the child died any other way (a segfault, an abort, another exit status).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: the exit status of a child whose function ran out of memory
_OOM_EXIT = 86
_CONTEXT = multiprocessing.get_context("forkserver")
#: modules the fork server imports once, so that each child starts in milliseconds
_CONTEXT.set_forkserver_preload(["dt_assets.landing"])


@dataclass(frozen=True)
class Limits:
    """What a child may use: memory beyond its start (MB) and wall time (s)."""

    memory_mb: int = 4096
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if isinstance(self.memory_mb, bool) or not isinstance(self.memory_mb, int) or self.memory_mb < 64:
            raise ValueError(f"memory_mb must be an integer of at least 64, got {self.memory_mb!r}")
        number = isinstance(self.timeout_s, int | float) and not isinstance(self.timeout_s, bool)
        if not (number and self.timeout_s > 0):
            raise ValueError(f"timeout_s must be a positive number of seconds, got {self.timeout_s!r}")


class ChildFailedError(Exception):
    """The child died: ``check`` is ``crashed``, ``out_of_memory`` or ``timeout``; ``status`` says how."""

    def __init__(self, check: str, status: str) -> None:
        super().__init__(f"{check}: {status}")
        self.check, self.status = check, status


class ChildError(Exception):
    """``func`` raised in the child: its exception's type name and message."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name, self.message = type_name, message


def run_isolated(func: Callable[..., Any], args: tuple, limits: Limits) -> Any:
    """``func(*args)`` run in a child process within ``limits`` (see the module docstring). ``func`` must be a
    module-level function (the child imports it by name)."""
    receive, send = _CONTEXT.Pipe(duplex=False)
    environment = dict(os.environ)  # the fork server keeps the environment it started with; the child gets ours
    child = _CONTEXT.Process(target=_child, args=(send, func, args, limits.memory_mb, environment), daemon=True)
    child.start()
    send.close()
    try:
        if receive.poll(limits.timeout_s):
            try:
                outcome = receive.recv()
            except EOFError:  # it died before it could answer
                outcome = None
        else:
            outcome = None
            if child.is_alive():
                child.kill()
                child.join()
                raise ChildFailedError("timeout", f"still running after {limits.timeout_s:g} s: killed")
        child.join()
    finally:
        receive.close()
        if child.is_alive():
            child.kill()
            child.join()
    if outcome is None:
        raise _failure(child.exitcode, limits)
    kind, value = outcome
    if kind == "error":
        raise ChildError(*value)
    return value


def _failure(exitcode: int | None, limits: Limits) -> ChildFailedError:
    if exitcode == _OOM_EXIT:
        return ChildFailedError("out_of_memory", f"ran out of its {limits.memory_mb} MB memory limit")
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name if -exitcode in signal.Signals._value2member_map_ else str(-exitcode)
        if -exitcode == signal.SIGKILL:
            return ChildFailedError("out_of_memory", f"killed by {name} (the system's out-of-memory killer?)")
        return ChildFailedError("crashed", f"killed by signal {name}")
    return ChildFailedError("crashed", f"exited with status {exitcode} without an answer")


def _child(send: Any, func: Callable[..., Any], args: tuple, memory_mb: int, environment: dict[str, str]) -> None:
    os.environ.clear()
    os.environ.update(environment)  # e.g. object-store credentials set after the fork server started
    _limit_memory(memory_mb)
    try:
        outcome: tuple[str, Any] = ("ok", func(*args))
    except MemoryError:
        os._exit(_OOM_EXIT)
    except Exception as exc:  # reported to the parent by type and message
        outcome = ("error", (type(exc).__name__, str(exc)))
    try:
        send.send(outcome)
    except MemoryError:
        os._exit(_OOM_EXIT)
    send.close()


def _limit_memory(memory_mb: int) -> None:
    """Cap the address space at what it is now plus ``memory_mb`` (Linux; elsewhere no cap)."""
    try:
        import resource

        with open("/proc/self/status") as status:
            size_kb = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
    except (ImportError, OSError, StopIteration, ValueError):
        return
    limit = size_kb * 1024 + memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
