"""Training shows learning; checkpoints resume after SIGKILL; collapse stops with an error; DDP runs."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import REPO, SMALL, torchrun_training
from dt_assets import build_generator, generate, get_geometry, load_generator, simulate, simulate_blocks
from dt_assets.model.preprocess import preprocess_blocks
from dt_assets.model.stream import TrainingData
from dt_assets.model.train import TrainConfig, TrainingCollapsedError, train
from dt_assets.showers.store import write_blocks

GEOMETRY = get_geometry(SMALL)
#: 40 steps of 32: enough to show learning (measured: at worst 4% from MC at 20 and 90 GeV, untrained 90-300%)
LEARNING = TrainConfig(
    epochs=2, batch_size=32, lr_generator=3e-4, lr_discriminator=3e-4, max_steps_per_epoch=20, validation_batches=4
)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """3000 preprocessed electrons, 10-100 GeV, 60-120 deg, small preset."""
    url = str(tmp_path_factory.mktemp("train") / "pre.zarr")
    write_blocks(
        preprocess_blocks(simulate_blocks(3000, (10.0, 100.0), (60.0, 120.0), geometry=SMALL, seed=1), "mc-t-1"), url
    )
    return url


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory):
    torch.manual_seed(0)
    checkpoints = str(tmp_path_factory.mktemp("ckpt"))
    return train(TrainingData([store]), LEARNING, checkpoints, GEOMETRY)


def mean_visible(generator, energy: float, n: int = 200) -> float:
    return float(generate(generator, n, energy, 90.0, seed=5).energy_deposit.sum(("x", "y", "z")).mean())


def test_generated_energy_moves_to_the_mc_at_each_energy(trained):
    # the untrained generator's output is calibrated to the mean 10-200 GeV shower (105 GeV), its response is the
    # noise's scale (E_p/100): it makes next to nothing at 20 GeV; 40 steps of training bring both energies near the MC
    errors = {}
    for name, generator in (("untrained", build_generator(SMALL)), ("trained", trained.generator)):
        errors[name] = max(abs(mean_visible(generator, e) / mc_visible(e) - 1) for e in (20.0, 90.0))
    assert errors["trained"] < 0.25 and errors["trained"] < errors["untrained"] / 2, errors
    last = trained.history[-1]
    assert abs(last["val_esum_over_ep_gan"] / last["val_esum_over_ep_mc"] - 1) < 0.25, last


def mc_visible(energy: float, n: int = 200) -> float:
    return float(simulate(n, energy, 90.0, geometry=SMALL, seed=5).energy_deposit.sum(("x", "y", "z")).mean())


def test_generated_energy_rises_with_the_primary_energy(trained):
    ratio = mean_visible(trained.generator, 90.0) / mean_visible(trained.generator, 20.0)
    assert 3.0 < ratio < 6.5  # MC: 4.5


def test_generated_showers_have_the_simulate_schema(trained):
    gan = generate(trained.generator, 20, (10.0, 100.0), (60.0, 120.0), seed=3)
    mc = simulate(20, (10.0, 100.0), (60.0, 120.0), geometry=SMALL, seed=3)
    assert gan.energy_deposit.dims == mc.energy_deposit.dims and gan.energy_deposit.shape == mc.energy_deposit.shape
    for name in ("energy_deposit", "primary_energy", "theta"):
        assert gan[name].attrs["units"] == mc[name].attrs["units"]
    assert gan.attrs["geometry"] == SMALL and gan.attrs["simulator"] == "calotwin-3dgan"
    assert (gan.energy_deposit.values >= 0).all()
    again = generate(trained.generator, 20, (10.0, 100.0), (60.0, 120.0), seed=3)
    assert np.array_equal(again.energy_deposit.values, gan.energy_deposit.values)


def test_checkpoint_holds_a_loadable_generator(trained):
    loaded = load_generator(trained.checkpoint_url)
    for (name, a), b in zip(trained.generator.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a.cpu(), b), name


def test_a_pickled_model_file_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(build_generator(SMALL), path)  # a whole pickled module, not weights
    with pytest.raises(ValueError, match="not a CaloTwin generator file"):
        load_generator(str(path))


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dt_assets.model.cli", "train", *args]


def test_training_killed_with_sigkill_resumes_from_its_last_checkpoint(store, tmp_path):
    checkpoints = tmp_path / "ckpt"
    common = [
        "--data",
        store,
        "--checkpoint",
        str(checkpoints),
        "--geometry",
        SMALL,
        "--epochs",
        "4",
        "--batch-size",
        "16",
        "--max-steps-per-epoch",
        "3",
        "--report",
        str(tmp_path / "report.json"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cli(*common), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 300
    while not (checkpoints / "last.pt").exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "report.json").exists()
    saved = torch.load(io.BytesIO((checkpoints / "last.pt").read_bytes()), weights_only=True)
    done = int(saved["epoch"]) + 1
    assert 1 <= done < 4
    run = subprocess.run(cli(*common), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["resumed_from_epoch"] == done
    assert [h["epoch"] for h in report["history"]] == [0, 1, 2, 3]
    assert f"epoch {done + 1}/4" in run.stdout and f"epoch {done}/4" not in run.stdout


def test_empty_showers_stop_training_with_a_clear_error(store, tmp_path):
    dead = build_generator(SMALL)
    with torch.no_grad():
        last_conv = [m for m in dead.net.convs if isinstance(m, torch.nn.Conv3d)][-1]
        last_conv.bias.fill_(-1e3)  # the last convolution before the final ReLU: always off
    from dt_assets.model.generation import save_generator

    save_generator(dead, str(tmp_path / "dead.pt"))
    config = TrainConfig(epochs=1, batch_size=16, max_steps_per_epoch=10, collapse_patience=3)
    with pytest.raises(TrainingCollapsedError, match="only empty showers for 3 steps"):
        train(TrainingData([store]), config, str(tmp_path / "ckpt"), GEOMETRY, warm_start=str(tmp_path / "dead.pt"))


def test_non_finite_losses_stop_training_with_a_clear_error(store, tmp_path):
    nan_generator = build_generator(SMALL)
    with torch.no_grad():
        nan_generator.net.linear.weight[0, 0] = float("nan")
    from dt_assets.model.generation import save_generator

    save_generator(nan_generator, str(tmp_path / "nan.pt"))
    config = TrainConfig(epochs=1, batch_size=16, max_steps_per_epoch=3)
    with pytest.raises(TrainingCollapsedError, match="non-finite"):
        train(TrainingData([store]), config, str(tmp_path / "ckpt"), GEOMETRY, warm_start=str(tmp_path / "nan.pt"))


def test_two_process_ddp_training_with_gloo(store, tmp_path):
    torchrun_training(store, tmp_path, "--batch-size", "16")
    assert (tmp_path / "ckpt" / "last.pt").exists()
    assert load_generator(str(tmp_path / "ckpt" / "last.pt")).geometry.name == SMALL


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"lr_generator": 0.0}, "lr_generator must be positive"),
        ({"loss_weights": (1.0, 2.0, 3.0)}, "loss_weights must be four non-negative numbers"),
        ({"label_flip": 0.7}, r"label_flip must lie in \[0, 0.5\)"),
        ({"max_steps_per_epoch": 0}, "max_steps_per_epoch must be >= 1 or None"),
    ],
)
def test_bad_training_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_too_little_data_for_one_batch_is_named(store, tmp_path):
    with pytest.raises(ValueError, match="fewer than one batch of 4096"):
        train(TrainingData([store]), TrainConfig(batch_size=4096), str(tmp_path), GEOMETRY)
