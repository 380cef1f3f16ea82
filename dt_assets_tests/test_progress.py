"""Progress of long work: log lines at a steady cadence (fake clock), bars only when enabled, the
training's step hook, and the progress lines in the Dagster log of simulation, training and validation."""

from __future__ import annotations

import re

import dagster as dg
import pytest
import torch

from conftest import SMALL, register_untrained_generator
from dt_assets import get_geometry, simulate_blocks
from dt_assets.defs.data import raw_showers, simulation_runs
from dt_assets.defs.validation import generated_showers, mc_reference
from dt_assets.model.job import StepProgress, step_line
from dt_assets.model.preprocess import preprocess_blocks
from dt_assets.model.stream import TrainingData
from dt_assets.model.train import StepReport, TrainConfig, train
from dt_assets.progress import (
    EVERY_ENV,
    Progress,
    Snapshot,
    bars_enabled,
    cadence,
    duration,
    echo,
    enable_bars,
    rate_text,
)
from dt_assets.showers.store import write_blocks
from resources import LocalStorage, ModelRegistry

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def bars():
    """Bars on for one test (off again afterwards, whatever happens)."""
    enable_bars()
    yield
    enable_bars(False)


def test_a_line_comes_once_every_s_has_passed_with_rate_and_eta_then_a_final_line():
    clock, lines = FakeClock(), []
    progress = Progress(5000, "simulating run-1", "events", lines.append, every_s=10, clock=clock)
    clock.now = 5.0
    progress.update(1000)
    assert lines == []  # 5 s < every_s
    clock.now = 10.0
    progress.update(1000)
    assert lines == ["simulating run-1: 2000/5000 events, 200 events/s, ETA 15 s"]
    clock.now = 15.0
    progress.update(1000)
    assert len(lines) == 1  # 5 s since the last line
    clock.now = 20.0
    progress.update(1000)
    assert lines[-1] == "simulating run-1: 4000/5000 events, 200 events/s, ETA 5 s"
    clock.now = 25.0
    progress.update(1000)
    assert len(lines) == 2  # the total is reached: the final line reports it
    progress.close()
    assert lines[-1] == "simulating run-1: 5000/5000 events, 200 events/s, done in 25 s"
    progress.close()
    assert len(lines) == 3


def test_wrap_counts_consumed_items_and_an_unknown_total_has_no_eta():
    clock, lines = FakeClock(), []
    progress = Progress(None, "reading f", "events", lines.append, every_s=0, clock=clock)
    consumed = []
    for block in progress.wrap([256, 256, 88], count=lambda n: n):
        clock.now += 2.0
        consumed.append(block)
        assert progress.done == sum(consumed) - block  # counted once the consumer is done with it
    assert lines == [
        "reading f: 256 events, 128 events/s",
        "reading f: 512 events, 128 events/s",
        "reading f: 600 events, 100 events/s",
    ]
    assert progress.closed


def test_a_loop_that_fails_or_stops_early_logs_no_final_line():
    clock, lines = FakeClock(), []
    with pytest.raises(RuntimeError), Progress(10, "x", log=lines.append, every_s=100, clock=clock) as progress:
        clock.now = 1.0
        progress.update(3)
        raise RuntimeError("boom")
    assert lines == [] and progress.closed
    progress = Progress(10, "y", log=lines.append, every_s=100, clock=clock)
    for _ in progress.wrap(range(10)):
        break  # the abandoned generator closes the progress
    assert lines == [] and progress.closed


def test_durations_and_rates_read_well_and_eta_follows_the_rate():
    assert [duration(s) for s in (0.4, 45, 119, 150, 600, 5400, 9000)] == [
        "0 s",
        "45 s",
        "119 s",
        "2.5 min",
        "10 min",
        "90 min",
        "2.5 h",
    ]
    assert [rate_text(r) for r in (830.4, 48.0, 4.23, 0.256)] == ["830", "48", "4.2", "0.26"]
    snap = Snapshot(done=120, total=500, elapsed_s=60.0)
    assert snap.rate == 2.0 and snap.eta_s == 190.0
    assert Snapshot(done=0, total=500, elapsed_s=0.0).eta_s is None


def test_the_cadence_comes_from_the_environment_when_set(monkeypatch):
    assert cadence(30.0, {}) == 30.0
    assert cadence(30.0, {EVERY_ENV: "2.5"}) == 2.5
    for bad in ("soon", "-1", "nan"):
        with pytest.raises(ValueError, match=EVERY_ENV):
            cadence(30.0, {EVERY_ENV: bad})
    monkeypatch.setenv(EVERY_ENV, "0")
    lines = []
    progress = Progress(3, log=lines.append, clock=FakeClock())
    progress.update()
    progress.update()
    assert progress.every_s == 0 and len(lines) == 2
    monkeypatch.delenv(EVERY_ENV)
    assert Progress(3).every_s == 10.0


def test_bars_are_off_by_default(capsys):
    assert not bars_enabled()
    with Progress(100, "quiet", log=None) as progress:
        progress.update(100)
    echo("a line")
    out, err = capsys.readouterr()
    assert progress.bar is None and err == "" and out == "a line\n"


def test_bars_are_drawn_on_stderr_when_enabled(bars, capsys):
    lines = []
    with Progress(100, "loud", "events", lines.append, every_s=1e9) as progress:
        progress.update(40)
        progress.update(60)
        echo("between bars")
    out, err = capsys.readouterr()
    assert "loud" in err and "100/100" in err and "events/s" in err
    assert out == "between bars\n"
    assert len(lines) == 1 and lines[0].startswith("loud: 100/100 events, ")  # the log is independent of bars
    with Progress(5, "explicitly off", bars=False) as progress:
        progress.update(5)
    assert progress.bar is None and "explicitly off" not in capsys.readouterr().err


def reports(epoch: int, epochs: int, steps: int, batch: int, seconds_per_step: float, start_epoch: int = 0):
    for step in range(1, steps + 1):
        yield StepReport(epoch, epochs, step, steps, step * batch, step * seconds_per_step, start_epoch)


def test_step_progress_logs_steps_within_an_epoch_at_its_cadence(bars, capsys):
    clock, lines = FakeClock(), []
    with StepProgress(lines.append, every_s=30, clock=clock) as steps:
        for report in reports(epoch=1, epochs=4, steps=200, batch=24, seconds_per_step=0.5, start_epoch=1):
            clock.now = 1000.0 + report.seconds
            steps(report)
        assert steps.run is not None and steps.run.total == 600 and steps.run.done == 200
    # 2 steps/s of 24 samples; a line at 30, 60 and 90 s; none at the epoch's end (the epoch line follows)
    assert lines == [
        "epoch 2/4: step 60/200, 48 samples/s, epoch ETA 70 s",
        "epoch 2/4: step 120/200, 48 samples/s, epoch ETA 40 s",
        "epoch 2/4: step 180/200, 48 samples/s, epoch ETA 10 s",
    ]
    err = capsys.readouterr().err
    assert "training" in err and "200/600" in err
    assert step_line(0, 2, Snapshot(done=1, total=3, elapsed_s=0.0), 16) == "epoch 1/2: step 1/3, 0 samples/s"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """200 preprocessed electrons on the small preset: 10 training batches of 16."""
    url = str(tmp_path_factory.mktemp("progress") / "pre.zarr")
    blocks = simulate_blocks(200, (10.0, 100.0), (60.0, 120.0), geometry=SMALL, seed=3)
    write_blocks(preprocess_blocks(blocks, "mc-progress-1"), url)
    return url


def test_training_calls_the_step_hook_after_every_step_and_resumes_counting(store, tmp_path):
    config = TrainConfig(epochs=2, batch_size=16, max_steps_per_epoch=2, validation_batches=1)
    seen, lines, epochs = [], [], []
    torch.manual_seed(0)
    with StepProgress(lines.append, every_s=0) as steps:
        train(
            TrainingData([store]),
            config,
            str(tmp_path),
            get_geometry(SMALL),
            on_epoch=[epochs.append],
            on_step=[seen.append, steps],
        )
    assert [(r.epoch, r.epochs, r.step, r.steps, r.samples, r.start_epoch) for r in seen] == [
        (0, 2, 1, 2, 16, 0),
        (0, 2, 2, 2, 32, 0),
        (1, 2, 1, 2, 16, 0),
        (1, 2, 2, 2, 32, 0),
    ]
    assert all(r.seconds > 0 for r in seen) and seen[1].seconds > seen[0].seconds
    assert len(epochs) == 2
    step = re.compile(r"epoch (\d)/2: step 1/2, [\d.]+ samples/s, epoch ETA \d+ s")
    assert [step.fullmatch(line).group(1) for line in lines] == ["1", "2"], lines
    # a resumed training counts from where it resumed
    resumed: list[StepReport] = []
    train(
        TrainingData([store]),
        TrainConfig(epochs=3, batch_size=16, max_steps_per_epoch=2, validation_batches=1),
        str(tmp_path),
        get_geometry(SMALL),
        on_step=[resumed.append],
    )
    assert [(r.epoch, r.step, r.start_epoch) for r in resumed] == [(2, 1, 2), (2, 2, 2)]


def messages(instance: dg.DagsterInstance, result: dg.ExecuteInProcessResult) -> list[str]:
    return [record.user_message for record in instance.all_logs(result.run_id)]


def test_raw_showers_logs_its_progress_in_dagster(home, instance, monkeypatch):
    monkeypatch.setenv(EVERY_ENV, "0")
    storage = LocalStorage()
    run = {"n_events": 300, "energy_min_gev": 10.0, "energy_max_gev": 100.0, "geometry": SMALL, "seed": 8}
    registered = dg.materialize(
        [simulation_runs],
        run_config={"ops": {"simulation_runs": {"config": {"simulations": [run]}}}, **QUIET},
        instance=instance,
        resources={"storage": storage},
    )
    (key,) = instance.get_dynamic_partitions("simulation_runs")
    assert registered.success
    result = dg.materialize(
        [raw_showers], partition_key=key, instance=instance, resources={"storage": storage}, run_config=QUIET
    )
    lines = [m for m in messages(instance, result) if m.startswith(f"simulating {key}: ")]
    assert len(lines) == 2, lines  # one per block of 256, the second being the final line
    assert re.fullmatch(rf"simulating {key}: 256/300 events, \d+ events/s, ETA \d+ s", lines[0])
    assert re.fullmatch(rf"simulating {key}: 300/300 events, \d+ events/s, done in \d+ s", lines[1])


def test_the_mc_reference_and_the_generation_log_their_progress_per_cell(home, instance, monkeypatch):
    monkeypatch.setenv(EVERY_ENV, "0")
    register_untrained_generator(seed=1)
    reference = {"geometry": SMALL, "events_per_cell": 10, "n_energies": 2, "angles_deg": [90.0]}
    result = dg.materialize(
        [mc_reference, generated_showers],
        instance=instance,
        resources={"storage": LocalStorage(), "registry": ModelRegistry()},
        run_config={"ops": {"mc_reference": {"config": reference}}, **QUIET},
    )
    logged = messages(instance, result)
    simulated = [m for m in logged if re.match(r"simulating ref-\w+: ", m)]
    assert [m.split(": ")[1].split(",")[0] for m in simulated] == ["20/40 events", "40/40 events"], simulated
    assert simulated[-1].endswith(" s") and "done in" in simulated[-1]
    generated = [m for m in logged if m.startswith("generating with v1: ")]
    assert [m.split(": ")[1].split(",")[0] for m in generated] == ["10/20 events", "20/20 events"], generated
    assert "ETA" in generated[0] and "done in" in generated[1]
