"""Where a study stands (:class:`StudySummary`, :func:`summarise`) and its optimisation plots."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from .heartbeats import retried

log = logging.getLogger("dt_assets.tuning.hpo")  # one logger for the HPO, the same name when run as __main__


@dataclass
class StudySummary:
    """Where a study stands: trials per state, the best trial, and the lost trials run again."""

    n_trials: int
    states: dict[str, int]
    numbers: list[int]
    best_value: float | None
    best_params: dict[str, Any]
    best_trial: int | None
    direction: str
    retried: list[int] = field(default_factory=list)  # lost with their worker (FAIL) and run again

    @property
    def finished(self) -> int:
        """Finished trials, a lost trial that was run again not counted (its retry counts)."""
        done = sum(n for s, n in self.states.items() if s in ("COMPLETE", "PRUNED", "FAIL"))
        return done - len(self.retried)

    @property
    def unfinished(self) -> int:
        """Trials still to run or running (WAITING or RUNNING)."""
        return self.states.get("WAITING", 0) + self.states.get("RUNNING", 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarise(study: optuna.Study) -> StudySummary:
    trials = study.get_trials(deepcopy=False)
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = study.best_trial if complete else None
    return StudySummary(
        n_trials=len(trials),
        states=states,
        numbers=sorted(t.number for t in trials),
        best_value=None if best is None or best.value is None else float(best.value),
        best_params={} if best is None else dict(best.params),
        best_trial=None if best is None else best.number,
        direction=study.direction.name.lower(),
        retried=sorted(retried(trials)),
    )


def optimisation_plots(study: optuna.Study) -> dict[str, bytes]:
    """PNGs of the optimisation history and, with two or more complete trials, the parameter importances."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    out: dict[str, bytes] = {}
    makers: list[tuple[str, Callable[[optuna.Study], Any]]] = [
        ("optimization_history", optuna_plots.plot_optimization_history)
    ]
    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) >= 2:
        makers.append(("param_importances", optuna_plots.plot_param_importances))
    for name, make in makers:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # experimental-API notes; "too few trials" for the importances
            try:
                axes = make(study)
            except (ValueError, RuntimeError) as exc:  # e.g. importances of parameters that never varied
                log.info(f"no {name} plot: {exc}")
                continue
        figure = axes.figure
        try:
            figure.set_size_inches(7.0, 4.0)
            figure.tight_layout()
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=100)
            out[name] = buffer.getvalue()
        finally:
            plt.close(figure)
    return out
