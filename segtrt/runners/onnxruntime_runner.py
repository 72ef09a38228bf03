"""The ONNX Runtime runner: an exported segtrt graph on the CPU, CUDA or TensorRT execution provider.

The graph contract is segtrt.export's: one input (N, C, Z, Y, X) and one output (N, K, Z, Y, X)
with the same spatial size (a U-Net). Inputs and outputs are torch tensors on the runner's device,
bound to ONNX Runtime by pointer through IO binding, so a CUDA patch never visits the host; the
output tensor is preallocated by torch and reused while the batch shape stays the same.

Providers (``provider=``): "cpu" (CPUExecutionProvider, device must be the CPU), "cuda"
(CUDAExecutionProvider, from the onnxruntime-gpu package) and "tensorrt" (TensorrtExecutionProvider,
with CUDA for what TensorRT does not take). A requested provider that this onnxruntime lacks, or
that fails to load, raises BackendUnavailableError naming the available ones: ONNX Runtime's own
habit of quietly running on the CPU instead is checked for after the session is created. On CUDA
and TensorRT, nodes are not allowed to fall back to the CPU provider either
(``session.disable_cpu_ep_fallback``) unless ``allow_cpu_nodes=True``.

On CUDA the session runs on a dedicated torch stream (``user_compute_stream``), ordered after the
caller's current stream before each run and before the caller reads the logits.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import torch

from segtrt.errors import BackendUnavailableError, SegtrtError
from segtrt.onnx_metadata import parse_metadata
from segtrt.runners.base import Runner
from segtrt.runners.binding import (
    KeepAlive,
    OutputBuffers,
    SideStream,
    as_bindable,
    device_index,
    numpy_dtype,
    torch_dtype,
)

log = logging.getLogger(__name__)

#: segtrt provider names -> ONNX Runtime execution provider names.
PROVIDERS: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def import_onnxruntime() -> Any:
    """The onnxruntime module, or BackendUnavailableError saying how to install it."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the onnxruntime backend needs the onnxruntime package ({exc}); "
            "install segtrt[onnx] (CPU) or onnxruntime-gpu (CUDA)"
        ) from exc
    return onnxruntime


def available_providers() -> list[str]:
    """ONNX Runtime's execution providers in this environment (e.g. ['CUDAExecutionProvider', ...])."""
    return list(import_onnxruntime().get_available_providers())


def require_provider(wanted: str, active: list[str], available: list[str]) -> None:
    """Raises BackendUnavailableError unless the session's first provider is ``wanted``.

    ONNX Runtime silently drops a provider it cannot load (missing CUDA, cuDNN or TensorRT
    libraries) and runs on the CPU; the session's ``get_providers()`` shows what it really uses.
    """
    if not active or active[0] != wanted:
        raise BackendUnavailableError(
            f"ONNX Runtime did not enable {wanted} (session providers: {', '.join(active) or 'none'}; "
            f"available: {', '.join(available)}); check that the CUDA, cuDNN or TensorRT libraries it needs "
            "are installed, or choose another provider"
        )


class OnnxRuntimeRunner(Runner):
    """Runs a segtrt ONNX graph with ONNX Runtime.

    onnx_path: the .onnx file (segtrt.export's I/O contract). device: 'cpu' or a CUDA device.
    provider: 'cpu', 'cuda' or 'tensorrt'; default: 'cpu' on the CPU, 'cuda' on a CUDA device.
    provider_options: extra options for that provider (ONNX Runtime's names), applied last.
    tf32: let the CUDA provider use TF32 for float32 convolutions (off by default, so fp32 stays
    within the fp32 tolerance of segtrt.verify). threads: intra-op threads on the CPU (None: ORT's
    default). allow_cpu_nodes: on CUDA/TensorRT, allow ORT to place unsupported nodes on the CPU.

    infer: (N, C, Z, Y, X) float32 on ``device`` -> (N, K, Z, Y, X) in the graph's output dtype
    (float32 for segtrt exports, also at fp16) on ``device``.
    """

    name = "onnxruntime"

    def __init__(
        self,
        onnx_path: str | Path,
        device: torch.device | str = "cpu",
        *,
        provider: str | None = None,
        provider_options: Mapping[str, Any] | None = None,
        tf32: bool = False,
        threads: int | None = None,
        allow_cpu_nodes: bool = False,
    ) -> None:
        super().__init__(_with_index(torch.device(device)))
        self.onnx_path = Path(onnx_path)
        if not self.onnx_path.is_file():
            raise SegtrtError(f"ONNX file {self.onnx_path} does not exist; create it with `segtrt export`")
        self.provider = provider or ("cpu" if self.device.type == "cpu" else "cuda")
        _check_provider_device(self.provider, self.device)
        self.provider_options = dict(provider_options or {})
        self.tf32 = tf32
        self.threads = threads
        self.allow_cpu_nodes = allow_cpu_nodes
        self.session: Any = None
        self.metadata: dict[str, Any] = {}
        self._outputs = OutputBuffers(self.device)
        self._inputs = KeepAlive()
        self._stream: SideStream | None = None

    # lifecycle -------------------------------------------------------------------------------
    def activate_impl(self) -> None:
        ort = import_onnxruntime()
        wanted = PROVIDERS[self.provider]
        available = list(ort.get_available_providers())
        if wanted not in available:
            raise BackendUnavailableError(
                f"ONNX Runtime provider {wanted} was requested but this onnxruntime offers only "
                f"{', '.join(available)}; install onnxruntime-gpu for CUDA/TensorRT or use provider 'cpu'"
            )
        self._stream = SideStream(self.device)
        providers = self._provider_list()
        self.session = _create_session(ort, self.onnx_path, self._session_options(ort), providers)
        active = list(self.session.get_providers())
        try:
            require_provider(wanted, active, available)
        except BackendUnavailableError:
            self.session = None
            raise
        self._read_graph()
        log.info("onnxruntime session on %s: %s (providers %s)", self.device, self.onnx_path.name, active)

    def deactivate_impl(self) -> None:
        self.session = None
        self._outputs.release()
        self._inputs.clear()
        self._stream = None

    def _session_options(self, ort: Any) -> Any:
        options = ort.SessionOptions()
        if self.threads is not None:
            options.intra_op_num_threads = int(self.threads)
        if self.provider != "cpu" and not self.allow_cpu_nodes:
            options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        return options

    def _provider_list(self) -> list[tuple[str, dict[str, str]]]:
        if self.provider == "cpu":
            return [("CPUExecutionProvider", {k: str(v) for k, v in self.provider_options.items()})]
        index = device_index(self.device)
        cuda = {
            "device_id": str(index),
            "use_tf32": "1" if self.tf32 else "0",
            "user_compute_stream": str(self._stream.handle),
            "cudnn_conv_algo_search": "EXHAUSTIVE",
        }
        if self.provider == "cuda":
            cuda.update({k: str(v) for k, v in self.provider_options.items()})
            return [("CUDAExecutionProvider", cuda)]
        trt = {
            "device_id": str(index),
            "user_compute_stream": str(self._stream.handle),
        }
        trt.update({k: str(v) for k, v in self.provider_options.items()})
        return [("TensorrtExecutionProvider", trt), ("CUDAExecutionProvider", cuda)]

    def _read_graph(self) -> None:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1 or len(inputs[0].shape) != 5 or len(outputs[0].shape) != 5:
            raise SegtrtError(
                f"{self.onnx_path} has {len(inputs)} input(s) and {len(outputs)} output(s); segtrt runs graphs "
                "with one (N, C, Z, Y, X) input and one (N, K, Z, Y, X) output, as `segtrt export` writes them"
            )
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        self.input_shape = tuple(inputs[0].shape)
        self.output_shape = tuple(outputs[0].shape)
        self.input_dtype = torch_dtype(inputs[0].type)
        self.output_dtype = torch_dtype(outputs[0].type)
        if not isinstance(self.output_shape[1], int):
            raise SegtrtError(f"{self.onnx_path}: the output's class dimension must be static, got {self.output_shape}")
        batch = self.input_shape[0]
        self.fixed_batch_size = batch if isinstance(batch, int) else None
        self.max_batch_size = self.fixed_batch_size
        self.metadata = parse_metadata(self.session.get_modelmeta().custom_metadata_map)

    # inference -------------------------------------------------------------------------------
    def infer_impl(self, batch: torch.Tensor) -> torch.Tensor:
        self._check_batch(batch)
        out_shape = (batch.shape[0], self.output_shape[1], *batch.shape[2:])
        output = self._outputs.get(self.output_name, out_shape, self.output_dtype)
        binding = self.session.io_binding()
        kind, index = ("cuda", device_index(self.device)) if self.device.type == "cuda" else ("cpu", 0)
        with self._stream.ordered():
            source = self._inputs.hold(as_bindable(batch, self.input_dtype))
            binding.bind_input(
                self.input_name, kind, index, numpy_dtype(self.input_dtype), tuple(source.shape), source.data_ptr()
            )
            binding.bind_output(
                self.output_name, kind, index, numpy_dtype(self.output_dtype), tuple(output.shape), output.data_ptr()
            )
            self.session.run_with_iobinding(binding)
        self._inputs.clear()
        return output

    def _check_batch(self, batch: torch.Tensor) -> None:
        expected = self.input_shape[1:]
        got = tuple(batch.shape[1:])
        mismatch = batch.dim() != 5 or any(isinstance(e, int) and e != g for e, g in zip(expected, got))
        if mismatch:
            raise SegtrtError(
                f"{self.onnx_path.name} takes patches of shape (N, {', '.join(map(str, expected))}), got "
                f"{tuple(batch.shape)}; export with the model's patch size or with --dynamic-spatial"
            )

    def describe(self) -> dict:
        info = {**super().describe(), "onnx": str(self.onnx_path), "provider": self.provider}
        if self.session is not None:
            info["providers"] = list(self.session.get_providers())
        for key in ("precision", "fold", "configuration", "model_identity"):
            if key in self.metadata:
                info[key] = self.metadata[key]
        return info


def _create_session(ort: Any, path: Path, options: Any, providers: list) -> Any:
    """An InferenceSession; ONNX Runtime's errors (its own exception types) become segtrt errors.

    When a GPU provider cannot start (e.g. TensorRT libraries missing), onnxruntime's Python layer
    retries with its fallback providers; with CPU fallback disabled that retry fails too, so the
    error reported here is the first one in the chain, which names the real cause.
    """
    errors = tuple(
        getattr(ort.capi.onnxruntime_pybind11_state, name)
        for name in ("Fail", "InvalidArgument", "NoSuchFile", "NoModel", "InvalidProtobuf", "InvalidGraph",
                     "NotImplemented", "EPFail", "RuntimeException")
        if hasattr(ort.capi.onnxruntime_pybind11_state, name)
    )
    wanted = providers[0][0]
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except errors as exc:
        root: BaseException = exc
        while root.__cause__ is not None:
            root = root.__cause__
        first = str(root).strip().splitlines()[0] if str(root).strip() else type(root).__name__
        if wanted != "CPUExecutionProvider":
            raise BackendUnavailableError(
                f"ONNX Runtime could not start {wanted} for {path.name}: {first}; install the libraries it "
                "needs (CUDA, cuDNN, TensorRT) or choose another provider"
            ) from exc
        raise SegtrtError(f"ONNX Runtime cannot load {path}: {first}; re-export it with `segtrt export`") from exc


def _with_index(device: torch.device) -> torch.device:
    """'cuda' -> 'cuda:<current>' so that batches on 'cuda:0' match the runner's device."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
    return device


def _check_provider_device(provider: str, device: torch.device) -> None:
    if provider not in PROVIDERS:
        raise BackendUnavailableError(f"ONNX Runtime provider must be one of {', '.join(PROVIDERS)}, got {provider!r}")
    if (provider == "cpu") != (device.type == "cpu"):
        raise BackendUnavailableError(
            f"ONNX Runtime provider {provider!r} cannot run on device {device}; "
            "use provider 'cpu' with --device cpu, 'cuda' or 'tensorrt' with a CUDA device"
        )

