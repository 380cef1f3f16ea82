"""Preprocessing (transform, selection, stable splits) and the streaming training data."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from dt_assets import simulate
from dt_assets.model.preprocess import SPLITS, Transform, preprocess_blocks, preprocessed_transform, split_of
from dt_assets.model.stream import TrainingData
from dt_assets.showers.store import open_store, write_blocks


def test_transform_thresholds_scales_and_inverts():
    t = Transform()
    cells_mev = np.array([0.05, 0.5, 10.0, 1000.0], dtype=np.float32)  # 0.05 MeV is below 1e-4 GeV
    scaled = t.forward(cells_mev)
    assert scaled[0] == 0.0
    np.testing.assert_allclose(scaled[1:], (cells_mev[1:] / 1000) ** 0.85, rtol=1e-6)
    np.testing.assert_allclose(t.inverse(scaled)[1:], cells_mev[1:], rtol=1e-5)
    assert Transform.from_dict(t.to_dict()) == t
    with pytest.raises(ValueError, match="power must be positive"):
        Transform(power=0.0)


def test_split_is_stable_when_a_run_grows_and_follows_the_fractions():
    first = split_of("mc-abc-1", np.arange(1000))
    grown = split_of("mc-abc-1", np.arange(10000))
    assert np.array_equal(first, grown[:1000])  # adding events never moves one
    fractions = np.bincount(grown, minlength=3) / len(grown)
    np.testing.assert_allclose(fractions, [0.8, 0.1, 0.1], atol=0.015)
    assert not np.array_equal(split_of("mc-abc-2", np.arange(1000)), first)  # another run, another draw
    with pytest.raises(ValueError, match="summing to 1"):
        split_of("x", np.arange(3), (0.5, 0.2, 0.2))


def test_preprocessing_selects_scales_and_records_its_inverse(small_showers):
    raw = small_showers.copy(deep=True)
    raw.energy_deposit.values[3] = 0.0  # an empty event is dropped
    blocks = list(preprocess_blocks([raw.isel(event=slice(0, 256)), raw.isel(event=slice(256, 300))], "mc-x-1"))
    ds = xr.concat(blocks, dim="event")
    assert ds.sizes["event"] == 299 and 3 not in ds.source_event.values
    kept = ds.source_event.values
    transform = preprocessed_transform(blocks[0])
    assert transform == Transform()
    np.testing.assert_allclose(ds.energy.values, raw.primary_energy.values[kept] / 100, rtol=1e-6)
    thresholded = np.where(raw.energy_deposit.values[kept] >= 0.1, raw.energy_deposit.values[kept], 0)
    np.testing.assert_allclose(transform.inverse(ds.cells.values), thresholded, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ds.total.values, thresholded.sum(axis=(1, 2, 3)) / 1000, rtol=1e-4)
    assert set(np.unique(ds.split.values)) == {0, 1, 2}
    assert np.abs(ds.measured_theta.values - ds.theta.values).mean() < 0.2


def test_preprocessing_streams_one_block_at_a_time(small_showers):
    consumed = []

    def blocks():
        for start in range(0, 300, 100):
            consumed.append(start)
            yield small_showers.isel(event=slice(start, start + 100))

    stream = preprocess_blocks(blocks(), "mc-x-1")
    next(stream)
    assert consumed == [0]


@pytest.fixture(scope="module")
def two_stores(tmp_path_factory, small_showers):
    root = tmp_path_factory.mktemp("pre")
    urls = []
    other = simulate(200, (10.0, 100.0), (60.0, 120.0), geometry="small_ecal_15x15x12", seed=99)
    for i, showers in enumerate((small_showers, other)):
        url = str(root / f"run{i}.zarr")
        write_blocks(preprocess_blocks([showers], f"mc-run-{i}"), url)
        urls.append(url)
    return urls


def test_batches_are_full_train_events_in_a_seeded_epoch_order(two_stores):
    data = TrainingData(two_stores)
    n_train = sum(int((open_store(u).split.values == SPLITS["train"]).sum()) for u in two_stores)
    assert data.n_events() == n_train
    batches = list(data.batches(16, epoch=0, seed=1))
    assert len(batches) == n_train // 16 and all(len(b) == 16 for b in batches)
    assert batches[0].cells.shape == (16, 1, 15, 15, 12)
    again = list(data.batches(16, epoch=0, seed=1))
    assert all(np.array_equal(a.energy, b.energy) for a, b in zip(batches, again, strict=True))
    other_epoch = list(data.batches(16, epoch=1, seed=1))
    assert not np.array_equal(batches[0].energy, other_epoch[0].energy)
    train_energies = np.concatenate([open_store(u).energy.values[open_store(u).split.values == 0] for u in two_stores])
    seen = np.concatenate([b.energy.numpy() for b in batches])
    assert np.isin(seen, train_energies).all() and len(np.unique(seen)) == len(seen)  # no repeats in an epoch


def test_ranks_get_equal_numbers_of_batches_from_disjoint_chunks(two_stores):
    data = TrainingData(two_stores)
    per_rank = [list(data.batches(8, epoch=0, rank=r, world_size=2)) for r in (0, 1)]
    assert len(per_rank[0]) == len(per_rank[1]) == data.steps_per_epoch(8, 2)
    seen = [set(np.concatenate([b.energy.numpy() for b in batches]).tolist()) for batches in per_rank]
    assert not seen[0] & seen[1]


def test_memory_is_bounded_by_the_buffer(two_stores, monkeypatch):
    data = TrainingData(two_stores, buffer_chunks=1)
    loads = []
    original = TrainingData.load

    def counting(self, chunk, split):
        loads.append(chunk)
        return original(self, chunk, split)

    monkeypatch.setattr(TrainingData, "load", counting)
    stream = data.batches(8, epoch=0)
    next(stream)
    assert len(loads) == 1  # the first batch needed one chunk, not the whole data set
