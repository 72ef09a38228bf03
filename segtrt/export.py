"""torch -> ONNX export of nnU-Net networks, with metadata and a numerical check of every file.

Graph contract (the same for fp32 and fp16 exports):

* input ``"image"``: (N, C, Z, Y, X) float32, normalized intensities, array order (z, y, x);
* output ``"logits"``: (N, K, Z, Y, X) float32, the network's raw logits (no softmax);
* N is fixed (``batch=N``) or the symbolic dimension ``"batch"`` (``dynamic_batch=True``);
* Z, Y, X are the patch size in voxels, or with ``dynamic_spatial=True`` symbolic dimensions
  named ``"<s>*z"``, ``"<s>*y"``, ``"<s>*x"``: any positive multiple of the network's total stride
  ``s`` on that axis (the product of the encoder's per-stage strides, e.g. 32 on every axis for
  nnU-Net's default 6-stage 3D U-Net). Other sizes break the decoder's skip connections.

``metadata_props`` carry ``segtrt.<key>`` entries with JSON values (``build_metadata`` lists
them; ``read_metadata`` decodes them): model identity, fold, configuration, patch size, channels,
labels, precision, total stride, segtrt and torch versions, and the export options.

Exporter: torch's ``torch.export``-based exporter (``dynamo=True``). In torch 2.14 it is the
default and the maintained one; the TorchScript exporter (``dynamo=False``) still runs but warns
that it is deprecated. Both emit ``InstanceNormalization`` as a native ONNX op for these networks;
dynamo's graph has no ``Identity`` nodes, and its symbolic sizes ("8*z") carry the stride
constraint in the file itself. It is slower (4-25 s for a 4-stage test U-Net on two shared CPU
cores against under 2 s), a cost paid once per export.

fp16: ``segtrt.onnx_fp16`` (a half network with float32 edges and float32 instance norms).

Every export is checked before it is moved into place: ``onnx.checker`` (full check), strict
shape inference of the I/O contract, then ONNX Runtime (CPU) against the torch float32 network on
noise and smooth patches with ``segtrt.verify.TOLERANCES[precision]``. A failure raises
ExportError with the measured numbers and leaves no file behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

import segtrt
from segtrt.errors import ExportError
from segtrt.onnx_fp16 import DEFAULT_KEEP_FP32, HalfPrecisionNetwork
from segtrt.verify import LogitComparison, compare_runners, random_patches, tolerance_for, torch_reference

log = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
METADATA_PREFIX = "segtrt."
PRECISIONS = ("fp32", "fp16")
AXES = ("z", "y", "x")
#: Libraries whose INFO logging floods an export (one line per deduplicated initializer).
_CHATTY_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx", "torch.export")

CheckPlan = Sequence[tuple[int, tuple[int, int, int]]]


@dataclass(frozen=True)
class ExportOptions:
    """How a graph is exported. batch: static batch size (ignored when dynamic_batch).
    opset: ONNX opset (None: the exporter's default, recorded in the result and metadata).
    norm_precision: in fp16 graphs, the precision of the normalization layers ("fp32", the
    default, see segtrt.onnx_fp16; "fp16" makes the graph half precision throughout)."""

    batch: int = 1
    dynamic_batch: bool = False
    dynamic_spatial: bool = False
    precision: str = "fp32"
    opset: int | None = None
    norm_precision: str = "fp32"

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise ExportError(f"precision must be fp32 or fp16, got {self.precision!r}")
        if self.norm_precision not in PRECISIONS:
            raise ExportError(f"norm_precision must be fp32 or fp16, got {self.norm_precision!r}")
        if not self.dynamic_batch and (not isinstance(self.batch, int) or self.batch < 1):
            raise ExportError(f"batch must be a positive integer, got {self.batch!r}; or use a dynamic batch")
        if self.opset is not None and self.opset < 17:
            raise ExportError(f"opset {self.opset} is too old: segtrt exports opset 17 or newer")


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
    patch = _patch_size(patch_size)
    stride = _total_stride(network, total_stride, required=dynamic_spatial)
    if dynamic_spatial:
        _check_multiple(patch, stride)
    check_extra_metadata(metadata or {})
    network = network.eval()
    start = time.perf_counter()
    model = _torch_export(network, patch, in_channels, options, stride)
    export_seconds = time.perf_counter() - start
    num_classes = _static_dim(model.graph.output[0], 1)
    meta = build_metadata(metadata or {}, patch_size=patch, in_channels=in_channels, num_classes=num_classes,
                          options=options, total_stride=stride, opset=_opset(model))
    _set_metadata(model, meta)
    path = Path(path)
    with _staging(path) as tmp:
        _save(model, tmp)
        start = time.perf_counter()
        inferred = check_graph(tmp, in_channels=in_channels, num_classes=num_classes)
        checks: list[LogitComparison] = []
        if check:
            plan = check_plan(patch, options, stride, check_batches)
            labels = (metadata or {}).get("labels")
            checks = check_numerics(tmp, network, plan, in_channels, precision, seed=seed, labels=labels)
        check_seconds = time.perf_counter() - start
    log.info("exported %s (%s, input %s) in %.1f s, checked in %.1f s",
             path, precision, _dims(model.graph.input[0]), export_seconds, check_seconds)
    return ExportResult(
        path=path, precision=precision, opset=_opset(model), input_shape=_dims(model.graph.input[0]),
        output_shape=_dims(model.graph.output[0]), metadata=meta, checks=tuple(checks),
        op_summary=op_summary(inferred), export_seconds=export_seconds, check_seconds=check_seconds,
    )


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
    from segtrt.nnunet import load_model

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


# export ------------------------------------------------------------------------------------------
def _torch_export(network: nn.Module, patch: tuple[int, int, int], in_channels: int, options: ExportOptions,
                  stride: tuple[int, int, int] | None) -> Any:
    """The ONNX ModelProto of ``network`` (or its half-precision wrapper) with segtrt's I/O names."""
    module = network
    if options.precision == "fp16":
        keep = DEFAULT_KEEP_FP32 if options.norm_precision == "fp32" else ()
        module = HalfPrecisionNetwork(network, keep_fp32=keep)
    example_batch = 2 if options.dynamic_batch else options.batch  # an example batch of 1 gets specialised
    example = torch.zeros((example_batch, in_channels, *patch), dtype=torch.float32, device=_device_of(network))
    dims: dict[int, Any] = {}
    if options.dynamic_batch:
        dims[0] = torch.export.Dim("batch", min=1)
    if options.dynamic_spatial:
        for axis, (name, s) in enumerate(zip(AXES, stride), start=2):
            dims[axis] = s * torch.export.Dim(name, min=1)
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                module, (example,), None, dynamo=True, verbose=False, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], opset_version=options.opset, dynamic_shapes=(dims,) if dims else None,
            )
    except Exception as exc:  # the exporter raises many types; the user needs its first line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"torch.onnx.export failed for {type(network).__name__}: {first}") from exc
    return program.model_proto


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter prints progress, warns and logs at INFO; route all of it to DEBUG here."""
    buffer = io.StringIO()
    loggers = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.level, logging.WARNING))
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(buffer):
            warnings.simplefilter("always")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
    for line in buffer.getvalue().splitlines():
        log.debug("exporter: %s", line)
    for w in caught:
        log.debug("exporter warning: %s", w.message)


@contextlib.contextmanager
def _staging(path: Path) -> Iterator[Path]:
    """Yields a temporary file beside ``path``; moved onto ``path`` only if the block succeeds."""
    tmp = path.with_name(path.name + ".partial")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _save(model: Any, path: Path) -> None:
    import onnx

    size = model.ByteSize()
    if size >= 2**31:
        raise ExportError(f"the exported graph is {size / 2**30:.1f} GiB; single-file ONNX is limited to 2 GiB")
    onnx.save_model(model, str(path))


# metadata ----------------------------------------------------------------------------------------
def build_metadata(
    extra: Mapping[str, Any], *, patch_size: Sequence[int], in_channels: int, num_classes: int,
    options: ExportOptions, total_stride: Sequence[int] | None, opset: int,
) -> dict[str, Any]:
    """The ``segtrt.*`` metadata of an export: segtrt's own entries, then ``extra`` (which may add
    keys such as model_identity, fold, configuration, labels, but not replace segtrt's)."""
    meta: dict[str, Any] = {
        "format": "segtrt-onnx-1",
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "layout": "NCZYX",
        "patch_size": [int(p) for p in patch_size],
        "in_channels": int(in_channels),
        "num_classes": int(num_classes),
        "precision": options.precision,
        "total_stride": None if total_stride is None else [int(s) for s in total_stride],
        "opset": int(opset),
        "segtrt_version": segtrt.__version__,
        "torch_version": torch.__version__,
        "export_options": asdict(options),
    }
    check_extra_metadata(extra)
    meta.update({str(k): v for k, v in extra.items()})
    return {f"{METADATA_PREFIX}{k}": v for k, v in meta.items()}


#: Metadata keys segtrt writes itself (``build_metadata``); callers may not set them.
RESERVED_KEYS = frozenset({
    "format", "input_name", "output_name", "layout", "patch_size", "in_channels", "num_classes", "precision",
    "total_stride", "opset", "segtrt_version", "torch_version", "export_options",
})


def check_extra_metadata(extra: Mapping[str, Any]) -> None:
    """ExportError unless every entry has a free key and a JSON-serialisable value."""
    for key, value in extra.items():
        if key in RESERVED_KEYS:
            raise ExportError(f"metadata key {key!r} is written by segtrt itself; use another name")
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise ExportError(f"metadata {key!r} must be JSON-serialisable, got {type(value).__name__}") from exc


def _set_metadata(model: Any, meta: Mapping[str, Any]) -> None:
    import onnx

    onnx.helper.set_model_props(model, {k: json.dumps(v) for k, v in meta.items()})


def parse_metadata(props: Mapping[str, str]) -> dict[str, Any]:
    """``segtrt.*`` entries of an ONNX ``metadata_props`` mapping, prefix removed, JSON decoded."""
    out: dict[str, Any] = {}
    for key, value in props.items():
        if key.startswith(METADATA_PREFIX):
            try:
                out[key[len(METADATA_PREFIX):]] = json.loads(value)
            except ValueError:
                out[key[len(METADATA_PREFIX):]] = value
    return out


def read_metadata(path: str | Path) -> dict[str, Any]:
    """segtrt's metadata of an exported .onnx file (keys without the ``segtrt.`` prefix)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return parse_metadata({p.key: p.value for p in model.metadata_props})


# checks ------------------------------------------------------------------------------------------
def check_graph(path: Path, *, in_channels: int, num_classes: int) -> Any:
    """onnx.checker (full check) and strict shape inference of the I/O contract; returns the
    shape-inferred ModelProto."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
        inferred = onnx.shape_inference.infer_shapes(onnx.load(str(path)), check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"the exported graph fails the ONNX checker: {str(exc).splitlines()[0]}") from exc
    graph = inferred.graph
    inp, out = _dims(graph.input[0]), _dims(graph.output[0])
    float32 = onnx.TensorProto.FLOAT
    types_ok = all(v.type.tensor_type.elem_type == float32 for v in (graph.input[0], graph.output[0]))
    shapes_ok = len(inp) == 5 and len(out) == 5 and inp[1] == in_channels and out[1] == num_classes
    if not (types_ok and shapes_ok and out[0] == inp[0] and out[2:] == inp[2:]):
        raise ExportError(
            f"the exported graph maps {inp} to {out}; expected float32 (N, {in_channels}, Z, Y, X) -> "
            f"float32 (N, {num_classes}, Z, Y, X) with the same N and spatial size"
        )
    return inferred


def check_plan(
    patch: tuple[int, int, int], options: ExportOptions, stride: tuple[int, int, int] | None, batches: int
) -> list[tuple[int, tuple[int, int, int]]]:
    """(batch size, (Z, Y, X)) of each check batch: ``batches`` at the patch size (a dynamic batch
    alternates 1 and 2), plus, with dynamic spatial axes, one batch a stride smaller per axis."""
    sizes = [(1 + i % 2) if options.dynamic_batch else options.batch for i in range(max(batches, 1))]
    plan = [(b, patch) for b in sizes]
    if options.dynamic_spatial and stride is not None:
        smaller = tuple(p - s if p > s else p for p, s in zip(patch, stride))
        plan.append((sizes[0], smaller))  # type: ignore[arg-type]
    return plan


def check_numerics(
    path: Path, network: nn.Module, plan: CheckPlan, in_channels: int, precision: str, *,
    seed: int = 0, labels: Mapping[str, int] | None = None,
) -> list[LogitComparison]:
    """ONNX Runtime (CPU) vs the torch float32 ``network`` on test patches; ExportError past tolerance.

    plan: (batch size, (Z, Y, X)) per check batch; even batches are noise, odd ones smooth fields
    (``segtrt.verify.random_patches``). Limits: ``segtrt.verify.TOLERANCES[precision]``.
    """
    from segtrt.runners.onnxruntime_runner import OnnxRuntimeRunner

    tolerance = tolerance_for(precision)
    reference = torch_reference(network)
    results = []
    with OnnxRuntimeRunner(path, "cpu") as runner:
        for i, (b, shape) in enumerate(plan):
            kind = "noise" if i % 2 == 0 else "smooth"
            patches = random_patches(i % 2 + 1, in_channels, shape, batch=b, seed=seed + i)[-1:]
            result = compare_runners(
                reference, lambda x: runner(x.cpu()), patches, tolerance, labels=labels,
                label=f"onnxruntime cpu {precision} vs torch fp32 ({kind}, batch {b}, patch {shape})",
            )
            log.debug("%s", result.summary())
            if not result.passed:
                raise ExportError(f"numerical check failed: {result.summary()}")
            results.append(result)
    return results


def op_summary(model: Any) -> dict[str, dict[str, int]]:
    """Per op type, how many nodes produce each output element type, from a shape-inferred model
    (e.g. ``{'Conv': {'float16': 15}, 'InstanceNormalization': {'float32': 14}}``)."""
    import onnx

    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.output, *graph.input)}
    summary: dict[str, dict[str, int]] = {}
    for node in graph.node:
        elem = types.get(node.output[0]) if node.output else None
        name = onnx.helper.tensor_dtype_to_np_dtype(elem).name if elem else "unknown"
        counts = summary.setdefault(node.op_type, {})
        counts[name] = counts.get(name, 0) + 1
    return summary


# helpers -----------------------------------------------------------------------------------------
def network_total_stride(network: nn.Module) -> tuple[int, int, int] | None:
    """Per-axis (z, y, x) product of the encoder's stage strides of a dynamic-network-architectures
    U-Net (``network.encoder.strides``); None when the network does not expose them."""
    strides = getattr(getattr(network, "encoder", None), "strides", None)
    if not strides:
        return None
    total = [1, 1, 1]
    for stage in strides:
        per_axis = [stage] * 3 if isinstance(stage, int) else list(stage)
        if len(per_axis) != 3:
            return None
        total = [t * int(s) for t, s in zip(total, per_axis)]
    return (total[0], total[1], total[2])


def _total_stride(network: nn.Module, given: Sequence[int] | None, *, required: bool) -> tuple[int, int, int] | None:
    stride = tuple(int(s) for s in given) if given is not None else network_total_stride(network)
    if stride is not None and (len(stride) != 3 or min(stride) < 1):
        raise ExportError(f"total_stride must be three positive integers (z, y, x), got {given!r}")
    if stride is None and required:
        raise ExportError(
            f"dynamic spatial axes need the network's total stride, which {type(network).__name__} does not "
            "expose as encoder.strides; pass total_stride=(sz, sy, sx)"
        )
    return stride  # type: ignore[return-value]


def _check_multiple(patch: tuple[int, int, int], stride: tuple[int, int, int] | None) -> None:
    if stride is not None and any(p % s for p, s in zip(patch, stride)):
        raise ExportError(
            f"patch size {patch} is not a multiple of the network's total stride {stride} (z, y, x); "
            "dynamic spatial axes need multiples of the stride"
        )


def _patch_size(patch_size: Sequence[int]) -> tuple[int, int, int]:
    patch = tuple(int(p) for p in patch_size)
    if len(patch) != 3 or min(patch) < 1:
        raise ExportError(f"patch_size must be three positive voxel counts (z, y, x), got {tuple(patch_size)!r}")
    return (patch[0], patch[1], patch[2])


def _device_of(network: nn.Module) -> torch.device:
    param = next(network.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _dims(value_info: Any) -> tuple[int | str, ...]:
    return tuple(d.dim_param if d.dim_param else int(d.dim_value) for d in value_info.type.tensor_type.shape.dim)


def _static_dim(value_info: Any, axis: int) -> int:
    dim = _dims(value_info)[axis]
    if not isinstance(dim, int):
        raise ExportError(f"the exported output has a symbolic class dimension {dim!r}; expected a number")
    return dim


def _opset(model: Any) -> int:
    return next(int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx"))
