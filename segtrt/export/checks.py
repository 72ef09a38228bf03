"""The checks every export passes before it is moved into place: ``check_graph`` (onnx.checker and
strict shape inference of the I/O contract), ``check_numerics`` (ONNX Runtime on the CPU against
the torch float32 network, on the batches ``check_plan`` lists), and ``op_summary`` (output element
types per op type, reported in ``ExportResult``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import nn

from segtrt.errors import ExportError
from segtrt.export.graph import value_dims
from segtrt.export.options import ExportOptions
from segtrt.verify import LogitComparison, compare_runners, random_patches, tolerance_for, torch_reference

log = logging.getLogger(__name__)

CheckPlan = Sequence[tuple[int, tuple[int, int, int]]]


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
    inp, out = value_dims(graph.input[0]), value_dims(graph.output[0])
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
