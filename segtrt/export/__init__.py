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

Modules: ``api`` (the entry points and ``ExportResult``), ``options`` (I/O names,
``ExportOptions``, patch size and stride checks), ``graph`` (the torch exporter call and the
atomic save), ``metadata`` (the ``segtrt.*`` entries), ``checks`` (graph and numerical checks).
Everything public is importable from ``segtrt.export``.
"""

from segtrt.export.api import (
    ExportResult,
    export_loaded_model,
    export_model_folder,
    export_onnx,
    fold_path,
    model_metadata,
)
from segtrt.export.checks import CheckPlan, check_graph, check_numerics, check_plan, op_summary
from segtrt.export.metadata import (
    RESERVED_KEYS,
    build_metadata,
    check_extra_metadata,
)
from segtrt.export.options import AXES, INPUT_NAME, OUTPUT_NAME, PRECISIONS, ExportOptions, network_total_stride
from segtrt.onnx_metadata import METADATA_PREFIX, parse_metadata, read_metadata

__all__ = [
    "AXES", "INPUT_NAME", "METADATA_PREFIX", "OUTPUT_NAME", "PRECISIONS", "RESERVED_KEYS",
    "CheckPlan", "ExportOptions", "ExportResult",
    "build_metadata", "check_extra_metadata", "check_graph", "check_numerics", "check_plan",
    "export_loaded_model", "export_model_folder", "export_onnx", "fold_path", "model_metadata",
    "network_total_stride", "op_summary", "parse_metadata", "read_metadata",
]
