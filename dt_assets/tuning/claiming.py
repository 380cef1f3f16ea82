"""The fixed budget of a study and the claiming of its trials: :func:`enqueue_budget` puts WAITING trials in the
study once, and each worker takes one at a time with the storage's atomic WAITING -> RUNNING transition."""

from __future__ import annotations

from typing import cast

import optuna
from optuna.trial import TrialState

from .heartbeats import HeartbeatStorage, heartbeat_interval, retried


def enqueue_budget(study: optuna.Study, n_trials: int) -> int:
    """Top the study up to ``n_trials`` trials in all (WAITING ones for the workers to claim; a lost
    trial run again counts once); returns how many were added (0 when the study already has that many,
    e.g. a study run again)."""
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    trials = study.get_trials(deepcopy=False)
    missing = n_trials - (len(trials) - len(retried(trials)))
    for _ in range(max(0, missing)):
        study.enqueue_trial({})
    return max(0, missing)


def claim_trial(study: optuna.Study) -> optuna.Trial | None:
    """Take one WAITING trial of the study (atomically: of several workers asking, one gets it);
    None when none is left. Workers never create trials, so the budget is exact. The claim records
    the trial's first heartbeat (when the storage has them on)."""
    claimed = claim(study)
    return None if claimed is None else claimed[0]


def claim(study: optuna.Study) -> tuple[optuna.Trial, int] | None:
    storage = study._storage  # Study has no public accessor for it; the storage calls below are public
    study_id = storage.get_study_id_from_name(study.study_name)
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
        try:
            if storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                if heartbeat_interval(storage):
                    cast(HeartbeatStorage, storage).record_heartbeat(trial_id)
                return optuna.Trial(study, trial_id), trial_id
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker claimed and finished it meanwhile
    return None
