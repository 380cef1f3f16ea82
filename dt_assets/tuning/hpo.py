"""Hyper-parameter optimisation of either generator family with Optuna, judged by the physics validation.

A study tunes one family (:class:`~dt_assets.tuning.search_space.SearchSpace`): for the 3DGAN learning
rates, loss weights, batch size, latent size and label-flip rate; for the flow family the learning rate,
EMA decay, batch size and the shape flow's width. Each trial trains a small model epoch by epoch; after every epoch the
generator makes showers at the conditions of a small MC reference and
:func:`dt_assets.validation.validate.validate` scores them (the validation's ``score``: FPD by
default, lower is better; ``coverage`` is maximised). The score is reported to Optuna after each
epoch, and a :class:`optuna.pruners.MedianPruner` stops trials whose intermediate score is worse
than the median of the earlier trials at the same epoch. The final epoch's score is the trial's
value. Every trial is an MLflow child run of the study's run (params, per-epoch score and losses).

Several workers share one study through any Optuna RDB URL: sqlite under the data home by default
(a few processes on one machine; each write waits up to
:data:`~dt_assets.tuning.storage.SQLITE_TIMEOUT_S` for the lock), or PostgreSQL / MySQL for workers on
several machines. The budget is fixed up front: :func:`~dt_assets.tuning.claiming.enqueue_budget` puts
``n_trials`` WAITING trials in the study once, and each worker (:func:`~dt_assets.tuning.worker.run_worker`)
claims one at a time with the storage's atomic WAITING -> RUNNING transition and never creates trials
itself. So a study ends with exactly ``n_trials`` trials, numbered
0..n-1, each run by exactly one worker, however many workers share it and whenever they start.
(With ``study.optimize(n_trials=...)`` the count is per worker, and with ``MaxTrialsCallback``
workers that start a trial at the same time overshoot the budget.)

A worker that dies (killed, out of memory, its node lost) loses no trial: a worker records a
heartbeat in the storage every ``heartbeat_interval_s`` while it runs a trial, and a RUNNING trial
without one for ``grace_period_s`` is failed by whichever worker looks next and run again, with the
same parameters, as a new WAITING trial (at most ``max_retries`` times; its MLflow run is marked
FAILED). A worker leaves only when no trial is WAITING or RUNNING, so a lost trial is always picked up
while one worker lives. The lost trial stays in the study as FAIL and does not count toward the
budget; its retry names it (``system_attrs["failed_trial"]``).

A worker is a plain process: ``python -m dt_assets.tuning.hpo worker JOB.json --worker N``, where
JOB.json is an :class:`~dt_assets.tuning.job.HpoJob` (what the ``hpo_study`` asset writes). The asset starts its workers
through the compute resource: processes on this machine, or one Slurm array job (``--worker
$SLURM_ARRAY_TASK_ID``). Workers on several nodes need a storage they all reach (PostgreSQL or
MySQL; sqlite over NFS locks badly) and data, reference and checkpoint URLs visible from the nodes.

Its modules: :mod:`.job` (:class:`HpoJob`), :mod:`.storage` (the study's storage and :func:`open_study`),
:mod:`.claiming` (the budget and the claiming of trials), :mod:`.heartbeats` (heartbeats and the retries of lost
trials), :mod:`.worker` (:func:`run_worker` and the trial's objective) and :mod:`.summary` (:func:`summarise`, the
plots); this module is the worker's entry point.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from .job import HpoJob
from .worker import run_worker

log = logging.getLogger("dt_assets.tuning.hpo")  # one logger for the HPO, the same name when run as __main__


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dt_assets.tuning.hpo", description=__doc__.split("\n", 1)[0])
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker", help="claim and run the study's waiting trials until none is left")
    worker.add_argument("job", help="the HpoJob JSON file (the hpo_study asset writes one per study)")
    worker.add_argument("--worker", type=int, default=0, help="this worker's index (seeds its sampler)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    job = HpoJob.from_json(Path(args.job).read_text())
    ran = run_worker(job, args.worker)
    log.info(f"worker {args.worker}: no waiting trial left; ran trial(s) {ran}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
