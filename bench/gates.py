"""Benchmark: the default gates against candidates of known quality (how the thresholds were set).

The candidates are showers of the same MC with its parametrisation slightly changed, as two Geant4
physics lists, or two tunings of GFlash, differ: the radial core and tail widths, the depth of the
shower maximum and the sampling resolution are moved by a ``strength`` s (radii x (1 + 0.04 s),
<ln T> + 0.02 s, resolution x (1 + 0.05 s)). s = 0 is independent MC (the statistical floor). For each
strength the default validation runs (15 cells, 500 events a cell, bootstrap 100, the CaloChallenge
classifier) and the table shows the classifier AUC, FPD, KPD, coverage and which gates pass. The
gates are meant to pass a candidate as close to the MC as the CaloChallenge 2022 leaders were to
Geant4 (classifier AUC about 0.55, FPD a few times the floor) and to fail one that is clearly off.
``--generator FILE`` adds a trained generator as a last row. Prints a table, then one JSON line.

    .venv/bin/python bench/gates.py [--strengths 0 1 2 4] [--generator model.pt]
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from dt_assets.model.generation import load_generator
from dt_assets.physics.gflash import DEFAULT_TUNING, GFlashTuning
from dt_assets.showers.schema import concat_blocks
from dt_assets.simulation import GFlashSimulator, simulate_blocks
from dt_assets.validation.config import ValidationConfig
from dt_assets.validation.promotion import gates
from dt_assets.validation.samples import generate_grid, per_cell, simulate_grid
from dt_assets.validation.validate import validate

GEOMETRY = "small_ecal_15x15x12"
REFERENCE_SEED, CANDIDATE_SEED = 1_000_000, 2_000_000


def perturbed(strength: float) -> GFlashTuning:
    """The default tuning with the radial radii, the shower depth and the resolution moved by ``strength``."""
    radius = 1 + 0.04 * strength
    t = DEFAULT_TUNING
    return dataclasses.replace(
        t,
        rc1=t.rc1 * radius,
        rc3=t.rc3 * radius,
        rt1=t.rt1 * radius,
        ave_t1=t.ave_t1 + 0.02 * strength,
        sampling_resolution=t.sampling_resolution * (1 + 0.05 * strength),
    )


def simulated(cfg: ValidationConfig, tuning: GFlashTuning):
    simulator = GFlashSimulator(tuning)

    def make(n, cell, seed):
        blocks = simulate_blocks(n, cell.energy_range_gev, cell.theta_range_deg, "e-", GEOMETRY, seed, simulator)
        return concat_blocks(list(blocks))

    return per_cell(cfg.conditions_grid(), cfg.events_per_cell, CANDIDATE_SEED, make)


def row(name: str, result) -> dict:
    passed = {g.name: g.passed for g in gates(result)}
    failing = result.failing_checks()
    return {
        "candidate": name,
        "classifier_auc": result.metrics["classifier_auc"].value,
        "fpd": result.metrics["fpd"].value,
        "kpd": result.metrics["kpd"].value,
        "coverage": result.coverage,
        "gates": passed,
        "promotable": all(passed.values()),
        "failing_most": dict(list(failing.items())[:4]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.0, 1.0, 2.0, 4.0])
    parser.add_argument("--generator", default=None, help="a trained generator file to judge as well")
    args = parser.parse_args()
    cfg = ValidationConfig()
    reference = simulate_grid(cfg.conditions_grid(), 2 * cfg.events_per_cell, GEOMETRY, "e-", REFERENCE_SEED)
    rows = []
    for strength in args.strengths:
        result = validate(reference, simulated(cfg, perturbed(strength)), cfg)
        rows.append(row(f"MC, strength {strength:g}", result))
        print(json.dumps(rows[-1]), flush=True)
    if args.generator:
        generator = load_generator(args.generator)
        candidate = generate_grid(generator, cfg.conditions_grid(), cfg.events_per_cell, "e-", CANDIDATE_SEED)
        rows.append(row(f"{generator.family} {args.generator}", validate(reference, candidate, cfg)))
    print(f"\n{'candidate':<28} {'AUC':>6} {'FPD':>8} {'KPD':>9} {'coverage':>9}  gates")
    for r in rows:
        verdict = ", ".join(f"{k} {'ok' if v else 'FAIL'}" for k, v in r["gates"].items())
        print(
            f"{r['candidate'][:28]:<28} {r['classifier_auc']:>6.3f} {r['fpd']:>8.4f} {r['kpd']:>9.5f} "
            f"{r['coverage']:>9.0%}  {verdict}"
        )
    print(json.dumps({"benchmark": "gates", "thresholds": dict(cfg.thresholds), "rows": rows}, default=float))


if __name__ == "__main__":
    main()
