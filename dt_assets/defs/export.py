"""Export stage: the champion generator as ONNX and TorchScript for an MC framework.

Files go to ``exports/<model>/v<version>/`` in storage: ``generator.onnx``, ``generator.pt``
(TorchScript) and ``interface.json`` (input/output names, shapes, dtypes, units, geometry, model URI,
and the ONNX Runtime check). The graph and its check are :mod:`dt_assets.model.export`.
"""

import tempfile
from pathlib import Path

import dagster as dg
import torch

from resources import ModelRegistry, StorageResource

from ..fsio import atomic_file
from ..model.export import (
    INTERFACE_FILE,
    ONNX_FILE,
    OPSET,
    TORCHSCRIPT_FILE,
    ExportError,
    check_onnx,
    error_bound,
    export_onnx,
    export_torchscript,
    interface,
)
from ..model.generation import load_generator
from ..model.registry import resolve_version, version_uri
from .configs import ExportedGeneratorConfig
from .validation import champion_model


@dg.asset(
    deps=[champion_model],
    group_name="export",
    kinds={"onnx", "pytorch"},
    description="The champion generator for an MC framework: ONNX (dynamic batch; noise, energy in GeV and angle "
    "in rad in, deposits in MeV out, the preprocessing inverted in the graph) and TorchScript, with interface.json; "
    "ONNX Runtime is checked against PyTorch on random conditions.",
)
def exported_generator(
    context: dg.AssetExecutionContext,
    config: ExportedGeneratorConfig,
    storage: StorageResource,
    registry: ModelRegistry,
) -> dg.MaterializeResult:
    import onnxruntime  # here, not at import: loading the definitions stays light

    registry.activate()
    model_uri = config.resolved_uri()
    try:
        version = resolve_version(model_uri)
    except LookupError as exc:
        hint = " (no version holds that alias yet: materialize champion_model first)" if "@" in model_uri else ""
        raise dg.Failure(f"nothing to export: {exc}{hint}") from None
    uri = version_uri(version)
    generator = load_generator(uri)
    folder = storage.url("exports", version.name, f"v{version.version}")
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(generator, Path(tmp) / ONNX_FILE)
        torchscript_path = export_torchscript(generator, Path(tmp) / TORCHSCRIPT_FILE)
        try:
            error = check_onnx(generator, onnx_path, n=config.check_events, seed=config.seed)
        except ExportError as exc:
            raise dg.Failure(str(exc)) from None
        record = interface(generator, uri, OPSET) | {
            "check": {
                "runtime": f"onnxruntime {onnxruntime.__version__} (CPU)",
                "showers": config.check_events,
                "seed": config.seed,
                "max_relative_error": error,
                "bound": error_bound(generator),
            }
        }
        sizes = {}
        for path in (onnx_path, torchscript_path):
            sizes[path.name] = path.stat().st_size
            with atomic_file(f"{folder}/{path.name}", storage.options()) as handle:
                handle.write(path.read_bytes())
    storage.write_json(f"{folder}/{INTERFACE_FILE}", record)
    context.log.info(
        f"exported {uri} to {folder}: ONNX Runtime within {error:.2g} of PyTorch (bound {error_bound(generator):g})"
    )
    return dg.MaterializeResult(
        metadata={
            "model_uri": uri,
            "model_version": int(version.version),
            "onnx": dg.MetadataValue.path(f"{folder}/{ONNX_FILE}"),
            "torchscript": dg.MetadataValue.path(f"{folder}/{TORCHSCRIPT_FILE}"),
            "interface": dg.MetadataValue.path(f"{folder}/{INTERFACE_FILE}"),
            "max_relative_error": error,
            "relative_error_bound": error_bound(generator),
            "check_events": config.check_events,
            "onnx_opset": OPSET,
            "onnx_bytes": sizes[ONNX_FILE],
            "torchscript_bytes": sizes[TORCHSCRIPT_FILE],
            "onnxruntime_version": onnxruntime.__version__,
            "torch_version": torch.__version__,
            "geometry": generator.geometry.name,
        }
    )
