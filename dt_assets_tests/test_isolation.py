"""A function run in an isolated child: its answer comes back; its crash, memory blow-up or hang is an outcome."""

from __future__ import annotations

import ctypes
import os
import time

import numpy as np
import pytest

from dt_assets.isolation import ChildError, ChildFailedError, Limits, run_isolated


def answer(x: int) -> dict:
    return {"doubled": 2 * x}


def segfault() -> None:
    ctypes.string_at(0)


def allocate(gigabytes: float) -> int:
    return int(np.ones(int(gigabytes * 2**30 / 8)).sum())


def hang() -> None:
    time.sleep(60)


def fail() -> None:
    raise KeyError("no such key")


def test_the_answer_comes_back():
    assert run_isolated(answer, (21,), Limits()) == {"doubled": 42}


@pytest.mark.parametrize(
    ("func", "args", "limits", "check", "status"),
    [
        (segfault, (), Limits(), "crashed", "killed by signal SIGSEGV"),
        (allocate, (2.0,), Limits(memory_mb=256), "out_of_memory", "ran out of its 256 MB memory limit"),
        (hang, (), Limits(timeout_s=1.0), "timeout", "still running after 1 s: killed"),
    ],
)
def test_a_child_that_dies_is_reported_with_how(func, args, limits, check, status):
    started = time.monotonic()
    with pytest.raises(ChildFailedError) as failed:
        run_isolated(func, args, limits)
    assert (failed.value.check, failed.value.status) == (check, status)
    assert time.monotonic() - started < 30
    assert run_isolated(answer, (1,), Limits()) == {"doubled": 2}  # and the next one runs


def test_an_exception_in_the_child_comes_back_by_type_and_message():
    with pytest.raises(ChildError, match="KeyError: 'no such key'"):
        run_isolated(fail, (), Limits())


def variable(name: str) -> str | None:
    return os.environ.get(name)


def test_the_child_sees_the_callers_environment_at_the_call(monkeypatch):
    run_isolated(answer, (1,), Limits())  # the fork server is up before the variable is set
    monkeypatch.setenv("CALOTWIN_ISOLATION_PROBE", "set after the server started")
    assert run_isolated(variable, ("CALOTWIN_ISOLATION_PROBE",), Limits()) == "set after the server started"
