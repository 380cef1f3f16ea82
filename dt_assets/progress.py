"""Progress of long work: log lines at a steady cadence and, for command-line work, tqdm bars.

One :class:`Progress` serves every long loop (simulating a run, an epoch of training, the
validation's MC reference and generation). Fed with :meth:`Progress.update` (or by iterating
:meth:`Progress.wrap`), it

- sends a line such as ``"1024/5000 events, 830 events/s, ETA 5 s"`` to its ``log`` callable
  (Dagster's ``context.log.info``, Pipes' ``log.info``, ``print``) at most every ``every_s``
  seconds while the work runs, and a final line (``"5000/5000 events, 830 events/s, done in 6 s"``)
  when it closes;
- draws a tqdm bar (rate, ETA) on stderr when bars are on. Bars are off unless a command-line
  entry point (``make demo``, the training CLI, the benchmarks) calls :func:`enable_bars` in its own
  process, so a Dagster run worker, whose stderr goes to the compute logs, never draws one.

The cadence defaults to :data:`EVENTS_EVERY_S` (simulation, generation) and :data:`STEPS_EVERY_S`
(training steps); ``$CALOTWIN_PROGRESS_EVERY_S`` overrides both (0: a line per update). The clock
is injectable, so the cadence is testable without sleeping.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = [
    "EVENTS_EVERY_S",
    "EVERY_ENV",
    "STEPS_EVERY_S",
    "Progress",
    "Snapshot",
    "bars_enabled",
    "cadence",
    "duration",
    "echo",
    "enable_bars",
    "rate_text",
]

#: environment variable that overrides every log cadence (seconds; 0 logs every update)
EVERY_ENV = "CALOTWIN_PROGRESS_EVERY_S"
#: default seconds between log lines of simulation and generation
EVENTS_EVERY_S = 10.0
#: default seconds between log lines of the steps within a training epoch
STEPS_EVERY_S = 30.0

T = TypeVar("T")
_bars = False


def enable_bars(on: bool = True) -> None:
    """Draw tqdm bars (on stderr) for every :class:`Progress` of this process from now on.

    For command-line entry points only; never call it in code that runs in a Dagster run worker.
    """
    global _bars
    _bars = on


def bars_enabled() -> bool:
    """Whether :func:`enable_bars` turned bars on in this process."""
    return _bars


def cadence(default: float, environ: Mapping[str, str] | None = None) -> float:
    """Seconds between log lines: ``$CALOTWIN_PROGRESS_EVERY_S`` when set, else ``default``."""
    value = (os.environ if environ is None else environ).get(EVERY_ENV, "").strip()
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"${EVERY_ENV}={value!r}: not a number of seconds") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"${EVERY_ENV}={value!r}: must be a number of seconds >= 0")
    return seconds


def duration(seconds: float) -> str:
    """A duration for a log line: "45 s" below 2 minutes, "2.5 min" below 10, "12 min" below 2 hours, else "3.5 h"."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 600:
        return f"{seconds / 60:.1f} min"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def rate_text(rate: float) -> str:
    """A rate for a log line: whole numbers from 10 up ("830"), two significant digits below ("4.2")."""
    return f"{rate:.0f}" if rate >= 10 else f"{rate:.2g}"


def echo(line: str, file: Any = None) -> None:
    """Print a line (to stdout by default) without breaking the bars drawn on stderr."""
    file = sys.stdout if file is None else file
    if _bars:
        from tqdm import tqdm

        tqdm.write(line, file=file)
        file.flush()
    else:
        print(line, file=file, flush=True)


@dataclass(frozen=True)
class Snapshot:
    """Where a :class:`Progress` stands when it logs a line."""

    done: int
    total: int | None
    elapsed_s: float
    final: bool = False

    @property
    def rate(self) -> float:
        """Units done per second (0 before any time has passed)."""
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the rate so far; None when the total or the rate is unknown."""
        if self.total is None or self.rate <= 0:
            return None
        return max(self.total - self.done, 0) / self.rate


class Progress:
    """Progress of ``total`` units of work (``None``: unknown), reported through ``log`` and a bar.

    ``log`` gets a line at most every ``every_s`` seconds (default: :func:`cadence` of
    :data:`EVENTS_EVERY_S`) and a final one when the work ends (unless ``final_line`` is false);
    ``line`` formats a :class:`Snapshot` into that line (default: ``"desc: done/total unit, rate
    unit/s, ETA t"``). ``bars`` (default: :func:`bars_enabled`) draws a tqdm bar on stderr; ``leave``
    is tqdm's (the default keeps only a top-level bar on screen). ``started`` is the ``clock``
    reading at which the work began (default: now).

    Use it as a context manager, or iterate :meth:`wrap`; either closes it at the end.
    """

    def __init__(
        self,
        total: int | None,
        desc: str = "",
        unit: str = "events",
        log: Callable[[str], None] | None = None,
        every_s: float | None = None,
        *,
        bars: bool | None = None,
        line: Callable[[Snapshot], str] | None = None,
        final_line: bool = True,
        leave: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        started: float | None = None,
    ) -> None:
        if every_s is not None and every_s < 0:
            raise ValueError(f"every_s must be >= 0, got {every_s}")
        self.total = total
        self.desc = desc
        self.unit = unit
        self.log = log
        self.every_s = cadence(EVENTS_EVERY_S) if every_s is None else every_s
        self.format = line or self.default_line
        self.final_line = final_line
        self.clock = clock
        self.started = clock() if started is None else started
        self.done = 0
        self.closed = False
        self._last_line_at = self.started
        self._logged_done = 0
        self.bar = None
        if bars_enabled() if bars is None else bars:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                desc=desc or None,
                unit=unit,
                leave=leave,
                file=sys.stderr,
                dynamic_ncols=True,
                mininterval=0.1 if getattr(sys.stderr, "isatty", lambda: False)() else 2.0,  # fewer in a log file
            )

    def default_line(self, snap: Snapshot) -> str:
        """``"desc: 1024/5000 events, 830 events/s, ETA 5 s"`` (``"..., done in 6 s"`` when final)."""
        counts = f"{snap.done}/{snap.total}" if snap.total is not None else f"{snap.done}"
        text = f"{counts} {self.unit}, {rate_text(snap.rate)} {self.unit}/s"
        if snap.final:
            text += f", done in {duration(snap.elapsed_s)}"
        elif snap.eta_s is not None:
            text += f", ETA {duration(snap.eta_s)}"
        return f"{self.desc}: {text}" if self.desc else text

    def snapshot(self, final: bool = False) -> Snapshot:
        return Snapshot(self.done, self.total, self.clock() - self.started, final)

    def update(self, n: int = 1) -> None:
        """``n`` more units done: moves the bar, and logs a line when ``every_s`` has passed since the last
        line (not once the total is reached: the final line reports the end)."""
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        if self.log is None or (self.total is not None and self.done >= self.total):
            return
        if self.clock() - self._last_line_at >= self.every_s:
            self._emit(final=False)

    def _emit(self, final: bool) -> None:
        snap = self.snapshot(final)
        self._last_line_at = self.started + snap.elapsed_s
        self._logged_done = self.done
        if self.log is not None:
            self.log(self.format(snap))

    def close(self, final: bool = True) -> None:
        """End the work: the final line (when ``final``, and units were done since the last line), the bar."""
        if self.closed:
            return
        self.closed = True
        if final and self.final_line and self.log is not None and self.done > self._logged_done:
            self._emit(final=True)
        if self.bar is not None:
            self.bar.close()

    def wrap(self, iterable: Iterable[T], count: Callable[[T], int] | None = None) -> Iterator[T]:
        """Yield the items of ``iterable``, counting ``count(item)`` units (default 1) once each is consumed;
        closes at the end (without the final line when the loop stopped early or failed)."""
        completed = False
        try:
            for item in iterable:
                yield item
                self.update(1 if count is None else count(item))
            completed = True
        finally:
            self.close(final=completed)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(final=exc_type is None)
