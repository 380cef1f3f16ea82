"""bench/gpu.py must run on a bare GPU machine: torch, numpy and xarray only."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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
