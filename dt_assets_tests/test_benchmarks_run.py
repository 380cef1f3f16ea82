"""bench/gpu.py must run on a bare GPU machine: torch, numpy and xarray only; bench/fidelity.py trains what its
options say and refuses a bad one by name; bench/drivers.py ranks a generator's features."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO

BLOCKED = ("zarr", "mlflow", "dagster", "dagster_mlflow", "scipy", "fsspec", "h5py")


def test_gpu_benchmark_needs_only_torch_numpy_and_xarray(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in BLOCKED)
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "2"}
    run = subprocess.run(
        [sys.executable, "bench/gpu.py", "--device", "cpu", "--quick", "--train-minutes", "0.05", "--seconds", "0.1"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert {r["precision"] for r in result["generation"]} == {"fp32", "bf16"}
    assert all(r["samples_per_s"] > 0 for r in result["training_step"])
    assert result["fidelity"]["steps"] > 0 and result["fidelity"]["esum_over_ep_mc"] > 0
    flow = result["flow_fidelity"]
    assert flow["steps"] > 0 and flow["esum_over_ep_flow"] > 0 and flow["generation_showers_per_s"] > 0


def run_bench(script: str, *args: str, timeout: float = 120, threads: int | None = None):
    """``bench/<script> args`` from the repository root, its output captured; ``threads`` sets OMP_NUM_THREADS."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    return subprocess.run(
        [sys.executable, f"bench/{script}", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env
    )


def untrained_flow_file(folder: Path) -> Path:
    """An untrained flow of the small preset saved in ``folder`` (what the diagnostics' tests sample)."""
    from dt_assets import build_generator
    from dt_assets.model.generation import save_generator

    path = folder / "flow.pt"
    save_generator(build_generator("small_ecal_15x15x12", "flow"), str(path))
    return path


def _fidelity_bench():
    spec = importlib.util.spec_from_file_location("fidelity_bench", REPO / "bench" / "fidelity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fidelity_bench_trains_the_settings_it_is_given():
    bench = _fidelity_bench()
    settings = bench.training_settings("flow", ["stage2_hidden=1024", "lr=5e-4"])
    config = bench.family_config("flow", 296, 0, settings)
    assert (config.stage2_hidden, config.lr, config.epochs, config.max_steps_per_epoch) == (1024, 5e-4, 10, 296)
    assert config.architecture()["stage2_hidden"] == 1024  # what the generator is built with
    gan = bench.family_config("3dgan", 3, 0, bench.training_settings("3dgan", ["loss_weights=2,0.1,0.1,0.1"]))
    assert gan.loss_weights == (2.0, 0.1, 0.1, 0.1)


def test_fidelity_bench_sets_a_flows_sampling_and_refuses_a_bad_value_by_name():
    from dt_assets import get_geometry
    from dt_assets.model.flow import FlowGenerator

    bench = _fidelity_bench()
    flow = FlowGenerator(get_geometry("small_ecal_15x15x12"))
    assert flow.arch.barycentre_shift  # the default
    settings = bench.with_sampling(flow, ["barycentre_shift=False", "tilt_width_saturation=1.5"])
    assert settings["barycentre_shift"] is False and not flow.arch.barycentre_shift
    assert flow.arch.tilt_width_saturation == 1.5
    with pytest.raises(ValueError, match="--sampling 'barycentre_shift=maybe': barycentre_shift takes true or false"):
        bench.with_sampling(flow, ["barycentre_shift=maybe"])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--train", "stage2_hiden=3"], "--train 'stage2_hiden=3': give KEY=VALUE, KEY one of"),
        (["--train", "seed=3"], "--train 'seed=3': give KEY=VALUE"),  # the bench sets it (--seed)
        (["--train", "lr=fast"], "--train 'lr=fast': lr takes a float"),
        (["--train", "stage2_hidden=0"], "stage2_hidden must be a positive integer, got 0"),
        (["--minutes", "1"], "give --family and --minutes or --steps"),  # both
        (["--steps", "5"], "--steps must be at least 10"),
    ],
)
def test_fidelity_bench_refuses_a_bad_option_by_name(options, message, tmp_path):
    args = ["--family", "flow", "--steps", "2960", "--out", str(tmp_path)]
    if options[0] == "--steps":
        args = ["--family", "flow", "--out", str(tmp_path)]
    run = run_bench("fidelity.py", *args, *options)
    assert run.returncode == 2 and message in run.stderr, run.stderr[-2000:]


def test_drivers_bench_ranks_every_feature_of_a_generator(tmp_path):
    # an untrained flow on a light grid (20 events a cell, 2 classifier epochs): every high-level feature gets its
    # AUC without it and alone, the ones the classifier needs most first; a missing file is refused by name
    from dt_assets.validation.config import ValidationConfig

    path = untrained_flow_file(tmp_path)
    run = run_bench(
        "drivers.py", "--generator", str(path), "--epochs", "2", "--events-per-cell", "20", timeout=300, threads=2
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    names = [f["name"] for f in result["features"]]
    assert sorted(names) == sorted(ValidationConfig().scalar_features())  # the conditions stay in, unranked
    without = [f["auc_without"] for f in result["features"]]
    assert without == sorted(without) and all(0.5 <= f["univariate"] <= 1 for f in result["features"])
    assert 0 <= result["auc"] <= 1 and result["classifier_epochs"] == 2 and result["events_per_cell"] == 20
    missing = run_bench("drivers.py", "--generator", str(tmp_path / "none.pt"))
    assert missing.returncode == 2 and "none.pt: no such generator or checkpoint" in missing.stderr, missing.stderr


def test_shapes_bench_gives_three_shape_numbers_per_cell(tmp_path):
    # an untrained flow on a light grid (40 events a cell): every cell gets its MC and generated numbers. MC's are
    # physics: a shower off-centre in y has its tail on that side (centre and skewness correlate), and the layers'
    # own x skewness follows the angle (positive at 62 degrees, negative at 118: the shower crosses each layer
    # obliquely); a sample too small to correlate is refused by name
    path = untrained_flow_file(tmp_path)
    run = run_bench("shapes.py", "--generator", str(path), "--events-per-cell", "40", timeout=300, threads=2)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    cells = result["cells"]
    assert len(cells) == 15 and result["events_per_cell"] == 40
    mc = {cell: numbers["mc"] for cell, numbers in cells.items()}
    assert all(n["low_cells"] > 0 for n in mc.values())
    assert np.mean([n["corr_center_skewness_y"] for n in mc.values()]) > 0.3
    assert mc["E195_T62"]["layer_m3_x"] > 0.05 and mc["E195_T118"]["layer_m3_x"] < -0.05, mc
    refused = run_bench("shapes.py", "--generator", str(path), "--events-per-cell", "1")
    assert refused.returncode == 2 and "--events-per-cell must be at least 2, got 1" in refused.stderr
