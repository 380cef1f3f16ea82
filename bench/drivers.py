"""Benchmark diagnostic: which high-level features the classifier test separates a trained generator from MC on.

Generates the default validation grid (15 cells of 500 events, the seeds ``bench/fidelity.py`` judges with) from
``--generator FILE``, simulates as many MC events on the same grid, and trains the default classifier
(``ValidationConfig().classifier``) once on all high-level features, then once without each of them
(:mod:`dt_assets.validation.drivers`); E_p and theta stay in every training. Prints the features the classifier
needs most first, with each one's AUC alone, then one JSON line. 18 trainings: about 10 minutes on 2 cores.

    .venv/bin/python bench/drivers.py --generator /tmp/fidelity-flow-15/generator.pt

``--sampling KEY=VALUE`` (a flow, any number of times) changes how the file samples first, as in
``bench/fidelity.py``. ``--epochs N`` trains each classifier N epochs instead of the default's 50 (quicker,
coarser).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
from fidelity import add_generator_options, grid_samples, with_sampling

from dt_assets.model.generation import load_generator
from dt_assets.validation.config import ValidationConfig
from dt_assets.validation.drivers import ClassifierDrivers, classifier_drivers
from dt_assets.validation.observables import compute_observables
from dt_assets.validation.validate import features

#: the conditions: in every training, no row of their own
CONDITIONS = ("E_p", "theta")


def drivers_of(generator, cfg: ValidationConfig) -> ClassifierDrivers:
    """The classifier's drivers for ``generator`` against MC on ``cfg``'s grid (``cfg.events_per_cell`` each)."""
    samples = grid_samples(generator, cfg.conditions_grid(), cfg.events_per_cell)
    names = cfg.scalar_features()
    x = {}
    for role, showers in samples.items():
        observed = compute_observables(showers, names, cfg.threshold_mev, role)
        x[role] = features(cfg, observed, np.arange(showers.sizes["event"]))
    return classifier_drivers(x["reference"], x["candidate"], [*names, *CONDITIONS], cfg.classifier, CONDITIONS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_generator_options(parser)
    parser.add_argument("--epochs", type=int, default=None, help="classifier epochs (default: the validation's)")
    args = parser.parse_args()
    cfg = ValidationConfig()
    try:
        generator = load_generator(args.generator)
        sampling = with_sampling(generator, args.sampling)
        if args.epochs is not None:
            cfg = dataclasses.replace(cfg, classifier=dataclasses.replace(cfg.classifier, epochs=args.epochs))
        if args.events_per_cell is not None:
            cfg = dataclasses.replace(cfg, events_per_cell=args.events_per_cell)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    result = drivers_of(generator, cfg)
    print(f"classifier AUC on all features: {result.auc:.3f}\n")
    print(f"{'feature':<16} {'AUC without it':>15} {'AUC alone':>10}")
    for feature in result.features:
        print(f"{feature.name:<16} {feature.auc_without:>15.3f} {feature.univariate:>10.3f}")
    print(
        json.dumps(
            {
                "generator": args.generator,
                "sampling": sampling,
                "classifier_epochs": cfg.classifier.epochs,
                "events_per_cell": cfg.events_per_cell,
                "auc": result.auc,
                "features": [dataclasses.asdict(f) for f in result.features],
            }
        )
    )


if __name__ == "__main__":
    main()
