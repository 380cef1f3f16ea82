"""`make champion`: train a generator for the default gates, validate it, and promote and export it if it passes.

On the small CPU preset it registers fresh Monte Carlo electrons (:data:`CHAMPION_RUNS`, 10-200 GeV,
60-120 degrees), ingests and preprocesses them, trains the flow-matching generator with
:data:`CHAMPION_TRAINING` (``flow_model``), validates the new version with the default validation
(``mc_reference``, ``generated_showers``, ``validation_report`` and its blocking checks), decides its
promotion (``champion_model``) and, when a champion exists, exports it for an MC framework
(``exported_generator``: ONNX and TorchScript). 40–55 minutes on 2 cores, most of it training. When
the version does not pass, it says so, names the report and exits with status 1 (bench/README.md has
what this training reached when it was last measured).

Everything is recorded in the same ``$CALOTWIN_HOME`` and ``$DAGSTER_HOME`` as `make demo`, so
``make ui``, ``make mlflow-ui`` and ``make notebook`` show the champion afterwards. Running it again
does no work twice.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from .home import calotwin_home, ensure_dagster_home, ensure_home
from .progress import enable_bars
from .walkthrough import GEOMETRY, QUIET, Session, ingest, print_verdict, train, validate_and_judge

#: fresh MC for the training: four runs of 40 000 electrons (about 90 s of simulation on 2 cores)
CHAMPION_RUNS = [
    {
        "n_events": 40_000,
        "energy_min_gev": 10.0,
        "energy_max_gev": 200.0,
        "theta_min_deg": 60.0,
        "theta_max_deg": 120.0,
        "particle": "e-",
        "seed": 101 + i,
        "geometry": GEOMETRY,
    }
    for i in range(4)
]
#: the flow-matching training that passed the default gates (bench/README.md, "fidelity per CPU-minute"): 4990 steps
#: of 256 with stage 1's layer skewness (``layer_skewness``; the loop's retraining keeps a champion's architecture)
CHAMPION_TRAINING = {
    "geometry": GEOMETRY,
    "particle": "e-",
    "epochs": 10,
    "max_steps_per_epoch": 500,
    "layer_skewness": True,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    enable_bars()
    ensure_home()
    ensure_dagster_home()

    from .defs.configs import FlowModelConfig
    from .defs.export import exported_generator
    from .defs.model import flow_model
    from .defs.validation import CHAMPION

    started = time.monotonic()
    session = Session.open()
    print(f"CaloTwin champion: data home {calotwin_home()}, Dagster home {os.environ['DAGSTER_HOME']}")
    rows = ingest(session, CHAMPION_RUNS, [])
    if rows is None:
        return 1
    config = FlowModelConfig(**CHAMPION_TRAINING)
    events = sum(r["n_events"] for r in CHAMPION_RUNS)
    announce = (
        f"training a flow-matching generator on {events} fresh {config.particle} showers of {GEOMETRY}: "
        f"{config.epochs} epochs of {config.max_steps_per_epoch} steps of {config.batch_size}"
    )
    model = train(session, flow_model, config, announce)
    print(f"\nmodel: {model['model_uri']} ({model['family']}), MLflow run {model['mlflow_run_id']}")
    report, decision = validate_and_judge(session, model)
    print_verdict(session, report, decision)

    session.resources["registry"].activate()
    from .model.registry import alias_version

    champion = alias_version(CHAMPION, config.registered_model_name)
    if champion is None:
        print(f"no champion: version {model['model_version']} did not pass the default gates (see the report)")
        return 1
    export = session.metadata(exported_generator.key)
    if export is None or export["model_version"] != int(champion.version):
        session.materialize([exported_generator], QUIET)
        export = session.metadata(exported_generator.key)
    assert export is not None
    print(
        f"champion:   models:/{champion.name}/{champion.version} ({champion.tags.get('family', '3dgan')}); "
        f"exported to {export['onnx']} (ONNX Runtime within {export['max_relative_error']:.2g} of PyTorch)"
    )
    print(f"done in {time.monotonic() - started:.0f} s; `make ui` shows the lineage, `make notebook` uses the champion")
    return 0


if __name__ == "__main__":
    sys.exit(main())
