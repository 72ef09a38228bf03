"""The export entry points: ``export_onnx`` (one network -> one checked .onnx file, an
``ExportResult``) and ``export_model_folder`` / ``export_loaded_model`` (one file per fold of an
nnU-Net v2 model), with the per-fold file names and metadata."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import nn

from segtrt.errors import ExportError
from segtrt.export.checks import CheckPlan, check_graph, check_numerics, check_plan, op_summary
from segtrt.export.graph import model_opset, save_model, static_dim, torch_export_graph, value_dims
from segtrt.io.writers import atomic_path
from segtrt.export.metadata import set_metadata, build_metadata, check_extra_metadata
from segtrt.export.options import ExportOptions, check_multiple, patch_triple, resolve_total_stride
from segtrt.verify.logits import LogitComparison

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportResult:
    """What one export wrote: the file, its I/O shapes (ints or symbolic names), metadata
    (prefixed keys), the numerical checks, output dtypes per op type, and timings (s)."""

    path: Path
    precision: str
    opset: int
    input_shape: tuple[int | str, ...]
    output_shape: tuple[int | str, ...]
    metadata: dict[str, Any]
    checks: tuple[LogitComparison, ...] = ()
    op_summary: dict[str, dict[str, int]] = field(default_factory=dict)
    export_seconds: float = 0.0
    check_seconds: float = 0.0

    def to_dict(self) -> dict:
        data = asdict(self)
        data["path"] = str(self.path)
        data["checks"] = [c.to_dict() for c in self.checks]
        return data


def export_onnx(
    network: nn.Module,
    path: str | Path,
    *,
    patch_size: Sequence[int],
    in_channels: int,
    batch: int = 1,
    dynamic_batch: bool = False,
    dynamic_spatial: bool = False,
    precision: str = "fp32",
    opset: int | None = None,
    metadata: Mapping[str, Any] | None = None,
    total_stride: Sequence[int] | None = None,
    norm_precision: str = "fp32",
    check: bool = True,
    check_batches: int = 2,
    seed: int = 0,
) -> ExportResult:
    """Exports ``network`` (eval mode, deep supervision off) to ``path`` and checks the file.

    patch_size: (Z, Y, X) voxels; in_channels: C. total_stride: per-axis product of the encoder
    strides (read from dynamic-network-architectures networks when None; required for dynamic
    spatial axes). metadata: extra ``segtrt.*`` entries (identity, fold, configuration, labels).
    norm_precision: see ``ExportOptions``. check_batches: patch batches compared with ONNX Runtime
    (see ``check_plan``). The network may live on any device; the check runs it there and ONNX
    Runtime on the CPU.
    """
    options = ExportOptions(batch, dynamic_batch, dynamic_spatial, precision, opset, norm_precision)
    options.validate()
    patch = patch_triple(patch_size)
    stride = resolve_total_stride(network, total_stride, required=dynamic_spatial)
    if dynamic_spatial:
        check_multiple(patch, stride)
    check_extra_metadata(metadata or {})
    network = network.eval()
    start = time.perf_counter()
    model = torch_export_graph(network, patch, in_channels, options, stride)
    export_seconds = time.perf_counter() - start
    num_classes = static_dim(model.graph.output[0], 1)
    meta = build_metadata(metadata or {}, patch_size=patch, in_channels=in_channels, num_classes=num_classes,
                          options=options, total_stride=stride, opset=model_opset(model))
    set_metadata(model, meta)
    path = Path(path)
    plan = check_plan(patch, options, stride, check_batches) if check else None
    inferred, checks, check_seconds = _save_checked(
        model, path, network, in_channels=in_channels, num_classes=num_classes, precision=precision,
        plan=plan, seed=seed, labels=(metadata or {}).get("labels"),
    )
    log.info("exported %s (%s, input %s) in %.1f s, checked in %.1f s",
             path, precision, value_dims(model.graph.input[0]), export_seconds, check_seconds)
    return ExportResult(
        path=path, precision=precision, opset=model_opset(model), input_shape=value_dims(model.graph.input[0]),
        output_shape=value_dims(model.graph.output[0]), metadata=meta, checks=tuple(checks),
        op_summary=op_summary(inferred), export_seconds=export_seconds, check_seconds=check_seconds,
    )


def _save_checked(
    model: Any, path: Path, network: nn.Module, *, in_channels: int, num_classes: int, precision: str,
    plan: CheckPlan | None, seed: int, labels: Mapping[str, int] | None,
) -> tuple[Any, list[LogitComparison], float]:
    """Writes ``model`` to a staging file beside ``path``, checks it (``check_graph``, then
    ``check_numerics`` on ``plan`` unless it is None) and moves it onto ``path`` only if every check
    passes. Returns the shape-inferred ModelProto, the comparisons and the check time (s)."""
    with atomic_path(path) as tmp:
        save_model(model, tmp)
        start = time.perf_counter()
        inferred = check_graph(tmp, in_channels=in_channels, num_classes=num_classes)
        checks: list[LogitComparison] = []
        if plan is not None:
            checks = check_numerics(tmp, network, plan, in_channels, precision, seed=seed, labels=labels)
        check_seconds = time.perf_counter() - start
    return inferred, checks, check_seconds


def export_model_folder(
    model_dir: str | Path,
    out: str | Path,
    *,
    fold: int | str | None = None,
    configuration: str | None = None,
    checkpoint_name: str = "checkpoint_final.pth",
    trust: bool = False,
    **options: Any,
) -> list[ExportResult]:
    """Exports the networks of an nnU-Net v2 model folder: one ONNX file per fold.

    fold: one fold (0-4 or 'all'); None exports every fold the folder has. out: the .onnx path; with
    several folds, fold K goes to ``<stem>_fold<K>.onnx`` beside it. options: ``export_onnx``'s
    keyword options (batch, dynamic_batch, dynamic_spatial, precision, opset, check...).
    """
    from segtrt.io.writers import check_output_file
    from segtrt.nnunet import load_model

    check_output_file(Path(out))
    folds = None if fold is None else [fold]
    model = load_model(model_dir, configuration=configuration, folds=folds, checkpoint_name=checkpoint_name,
                       trust=trust, device="cpu")
    return export_loaded_model(model, out, **options)


def export_loaded_model(model: Any, out: str | Path, **options: Any) -> list[ExportResult]:
    """Like ``export_model_folder`` for an already loaded ``segtrt.nnunet.LoadedModel``."""
    folder = model.folder
    folds = list(folder.folds)
    if len(folds) != len(model.networks):
        raise ExportError(f"the model has {len(model.networks)} networks for folds {folds}; expected one per fold")
    results = []
    for fold, network in zip(folds, model.networks):
        path = fold_path(out, fold, several=len(folds) > 1)
        meta = model_metadata(model, fold)
        results.append(export_onnx(network, path, patch_size=folder.patch_size,
                                   in_channels=folder.num_input_channels, metadata=meta, **options))
    return results


def fold_path(out: str | Path, fold: int | str, *, several: bool) -> Path:
    """``out`` itself for a single fold, else ``<stem>_fold<K><suffix>`` beside it."""
    out = Path(out)
    if not several:
        return out
    suffix = out.suffix or ".onnx"
    return out.with_name(f"{out.stem}_fold{fold}{suffix}")


def model_metadata(model: Any, fold: int | str) -> dict[str, Any]:
    """The model-describing metadata of one fold of a ``LoadedModel`` (JSON-serialisable)."""
    folder = model.folder
    return {
        "model_identity": model.identity,
        "model_path": str(folder.path),
        "fold": fold,
        "configuration": folder.configuration_name,
        "labels": dict(folder.labels),
        "mirror_axes": [int(a) for a in model.mirror_axes],
    }
