"""Ahead-of-time compiled networks (AOTInductor packages) kept in segtrt's cache, for warm starts.

A compiled network is specific to the weights, the input shape, the precision, the memory layout, the
inductor mode, the GPU (name and compute capability) and the torch / CUDA / Triton versions. All of
them go into a sha256 key (the weights by content, never by file time); one entry is::

    <cache_dir>/compiled/<key>.pt2        the AOTInductor package (kernels and weights)
    <key>.pt2.json                        what it was compiled from and for, and how long it took
    <key>.pt2.lock                        compilers of the same entry wait on it

Writes are atomic (package first, metadata last, so metadata means "complete and loadable"), using
the engine cache's helpers; a later process loads the package instead of tracing and compiling again
(``torch.compile``'s own disk cache still retraces the network in every process).

Before a new package is published it is loaded and run once in a child process, so that a package
this process cannot load costs the child, not the user's run; it becomes a :class:`CompiledCacheError`
naming the working alternative (``--compile default``). On the H200 image (torch 2.11.0+cu130) every
package crashed its loader (SIGSEGV) until 2026-12-03: the image's ``CXX`` links the C++ runtime
statically into the package; segtrt.runners.cxx_toolchain now picks a compiler that does not, and the
packages load and run there. Packages are loaded with torch's C++ loader (:class:`PackageModule`).

The package computes ``network(x)`` under fp16 autocast when ``precision == "fp16"`` (or, for an fp16
copy of the weights, ``half_weights``, without autocast on a float16 input), on an input of exactly
``shape`` in the layout given by ``channels_last`` (see :func:`to_layout`).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from segtrt import config
from segtrt.engine.cache import cache_key, current_target
from segtrt.io.locking import file_lock
from segtrt.io.writers import atomic_write_bytes
from segtrt.errors import CompiledCacheError
from segtrt.io.hashing import file_sha256
from segtrt.runners import cxx_toolchain

log = logging.getLogger(__name__)

FORMAT = 1
#: torch.compile modes -> inductor options of the ahead-of-time compile
INDUCTOR_OPTIONS = {"default": {}, "max-autotune-no-cudagraphs": {"max_autotune": True}}


@dataclass(frozen=True)
class CompiledNetwork:
    """A loaded package. ``warm``: found in the cache (True) or compiled by this call (False).

    seconds: wall time of this call (compile + load when cold, checksum + load when warm).
    """

    module: Callable[[torch.Tensor], torch.Tensor]
    path: Path
    key: str
    warm: bool
    seconds: float
    cxx: str | None = None  # the C++ compiler that built it (from its metadata)

    def describe(self) -> dict:
        info = {"package": str(self.path), "key": self.key[:16], "start": "warm" if self.warm else "cold",
                "seconds": round(self.seconds, 3)}
        if self.cxx:
            info["cxx"] = self.cxx
        return info


def to_layout(batch: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``batch`` (N, C, Z, Y, X) in the runner's layout: exact channels_last_3d strides, or contiguous NCDHW.

    One copy on the batch's device when the memory order must change, else a view. A one-channel NCDHW
    batch already has channels-last memory order, but its strides are ambiguous and torch (and cuDNN)
    then treat it as NCDHW, so every layer after it would run in NCDHW with transposes: it is re-viewed
    with the exact channels-last strides (C stride 1), which costs nothing.
    """
    if not channels_last:
        return batch.contiguous()
    batch = batch.contiguous(memory_format=torch.channels_last_3d)
    exact = channels_last_strides(batch.shape)
    return batch if batch.stride() == exact else batch.as_strided(batch.shape, exact)


def channels_last_strides(shape: Sequence[int]) -> tuple[int, ...]:
    """Strides (elements) of a dense (N, C, Z, Y, X) tensor stored as N, Z, Y, X, C."""
    n, c, z, y, x = shape
    return (z * y * x * c, 1, y * x * c, x * c, c)


def inductor_cache_dir() -> str:
    """Where inductor keeps kernels: ``TORCHINDUCTOR_CACHE_DIR`` if set, else ``<segtrt cache>/inductor``."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(config.cache_dir() / "inductor"))
    return os.environ["TORCHINDUCTOR_CACHE_DIR"]


class Forward(torch.nn.Module):
    """``network(x)``, under CUDA fp16 autocast for ``precision == "fp16"`` (weights stay fp32, like nnU-Net)."""

    def __init__(self, network: torch.nn.Module, precision: str) -> None:
        super().__init__()
        self.network = network
        self.fp16 = precision == "fp16"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fp16:
            with torch.autocast("cuda", dtype=torch.float16):
                return self.network(x)
        return self.network(x)


def network_sha256(network: torch.nn.Module, as_half: bool = False) -> str:
    """sha256 over the network's class, its module tree (repr) and every distinct state-dict tensor.

    Tensors are hashed in NCDHW order whatever their memory layout; aliased entries (one tensor under
    two names, as dynamic-network-architectures has) are hashed once, under their first name.
    as_half: the digest of ``network.half()`` (floating-point tensors cast to float16), without the copy.
    """
    digest = hashlib.sha256()
    digest.update(f"{type(network).__module__}.{type(network).__qualname__}\0{network!r}\0".encode())
    seen: set[tuple[int, int]] = set()
    for name, tensor in network.state_dict().items():
        identity = (tensor.data_ptr(), tensor.numel())
        if identity in seen:
            continue
        seen.add(identity)
        if as_half and tensor.is_floating_point():
            tensor = tensor.half()
        data = tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()
        digest.update(f"\0{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(data.tobytes())
    return digest.hexdigest()


def key_fields(network_digest: str, shape: Sequence[int], precision: str, channels_last: bool, mode: str,
               device: torch.device, input_dtype: str = "float32") -> dict[str, Any]:
    """Everything a compiled package depends on, as a JSON-able dict (the key is its sha256)."""
    if device.type == "cuda":
        target = current_target(device)
        where = {"gpu_name": target.gpu_name, "compute_capability": target.compute_capability}
    else:
        where = {"cpu_capability": torch.backends.cpu.get_cpu_capability()}
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "format": FORMAT, "network_sha256": network_digest, "input_shape": [int(s) for s in shape],
        "input_dtype": input_dtype, "precision": precision,
        "layout": "channels_last_3d" if channels_last else "ncdhw", "inductor_mode": mode,
        "device_type": device.type, **where, "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda, "triton_version": triton_version,
    }


def get_or_compile(network: torch.nn.Module, shape: Sequence[int], precision: str, channels_last: bool,
                   mode: str = "default", *, device: torch.device, root: str | Path | None = None,
                   rebuild: bool = False, half_weights: bool = False,
                   network_digest: str | None = None) -> CompiledNetwork:
    """The package for ``network`` on inputs of ``shape``: loaded from the cache, else compiled (locked).

    network: on ``device``, in eval mode, its weights in the layout that ``channels_last`` names.
    root: defaults to ``segtrt.config.cache_dir() / "compiled"``. rebuild: compile even when cached.
    half_weights: ``network`` is an fp16 copy: the package takes float16 batches and runs without autocast.
    network_digest: ``network_sha256(network)`` when the caller has it already (as :func:`find` returned it).
    """
    if mode not in INDUCTOR_OPTIONS:
        raise CompiledCacheError(f"compile mode must be one of {', '.join(INDUCTOR_OPTIONS)}, got {mode!r}")
    start = time.perf_counter()
    fields, key, path = _entry(network_digest or network_sha256(network), shape, precision, channels_last, mode,
                               device, root, half_weights)
    if not rebuild and (found := _reuse(path, fields, device)) is not None:
        return CompiledNetwork(found[0], path, key, True, time.perf_counter() - start, found[1].get("cxx"))
    with file_lock(path.with_name(path.name + ".lock")):
        if not rebuild and (found := _reuse(path, fields, device)) is not None:
            return CompiledNetwork(found[0], path, key, True, time.perf_counter() - start, found[1].get("cxx"))
        compile_seconds, cxx = _compile(network, shape, precision, channels_last, mode, device, path, fields,
                                        half_weights)
        module = _load(path, device)
    log.info("compiled %s ahead of time in %.1f s -> %s", fields["layout"], compile_seconds, path)
    return CompiledNetwork(module, path, key, False, time.perf_counter() - start, cxx)


def find(network: torch.nn.Module, shape: Sequence[int], precision: str, channels_last: bool,
         mode: str = "default", *, device: torch.device, root: str | Path | None = None,
         half_weights: bool = False) -> tuple[Path | None, str]:
    """(the cached package :func:`get_or_compile` would load for these arguments or None, the weights' digest
    it is keyed on, for ``get_or_compile(network_digest=...)``); loads nothing.

    network: the fp32 network as loaded (any layout); with ``half_weights`` the package of its fp16 copy is
    looked up. A package counts once its metadata exists (written last, after the probe passed).
    """
    digest = network_sha256(network, as_half=half_weights)
    _, _, path = _entry(digest, shape, precision, channels_last, mode, device, root, half_weights)
    return (path if path.is_file() and _metadata_path(path).is_file() else None), digest


def _entry(network_digest: str, shape, precision: str, channels_last: bool, mode: str, device: torch.device,
           root, half_weights: bool) -> tuple[dict, str, Path]:
    """(key fields, key, package path) of one cache entry."""
    fields = key_fields(network_digest, shape, precision, channels_last, mode, device,
                        "float16" if half_weights else "float32")
    if half_weights:  # (absent otherwise: packages compiled before this option keep their keys)
        fields["weights"] = "fp16 copy"
    key = cache_key(fields)
    return fields, key, Path(root or config.cache_dir() / "compiled") / f"{key}.pt2"


def read_metadata(path: str | Path) -> dict | None:
    """The metadata beside a package, or None when there is none."""
    meta = _metadata_path(Path(path))
    return json.loads(meta.read_text()) if meta.is_file() else None


def _metadata_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _reuse(path: Path, fields: dict, device: torch.device) -> tuple[Callable, dict] | None:
    """(the loaded package, its metadata) when the entry is complete and matches; None when absent; error
    when damaged."""
    if not path.exists():
        return None
    metadata = read_metadata(path)
    if metadata is None:
        raise CompiledCacheError(f"compiled network {path} has no metadata file; delete it or rebuild it "
                                 "(segtrt build MODEL_FOLDER --rebuild)")
    if metadata["fields"] != fields:
        raise CompiledCacheError(f"compiled network {path} was made for other settings than its name says; "
                                 "delete it or rebuild it (segtrt build MODEL_FOLDER --rebuild)")
    if file_sha256(path) != metadata["package_sha256"]:
        raise CompiledCacheError(f"compiled network {path} does not match the checksum in its metadata "
                                 "(changed or truncated); delete it or rebuild it (segtrt build MODEL_FOLDER --rebuild)")
    log.info("loading compiled network %s", path)
    return _load(path, device), metadata


def _compile(network, shape, precision, channels_last, mode, device, path: Path, fields: dict,
             half_weights: bool = False) -> tuple[float, str]:
    """Export ``Forward(network)`` on a random example and write its AOTInductor package, atomically,
    built by the C++ compiler :func:`segtrt.runners.cxx_toolchain.choose` picks (named in the metadata).
    Returns (seconds, that compiler)."""
    start = time.perf_counter()
    toolchain = cxx_toolchain.choose()
    inductor_cache_dir()
    with torch.inference_mode(False), torch.no_grad():  # callers may be inside inference_mode; export is not
        generator = torch.Generator(device).manual_seed(0)
        dtype = torch.float16 if half_weights else torch.float32
        example = to_layout(torch.randn(tuple(shape), device=device, generator=generator).to(dtype), channels_last)
        # an fp16 copy of the weights runs as it is; fp32 weights under autocast for fp16
        forward = Forward(network, "fp32" if half_weights else precision).eval()
        program = torch.export.export(forward, (example,), strict=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp.pt2")
    try:
        from torch._inductor import aoti_compile_and_package

        options = {**INDUCTOR_OPTIONS[mode], "cpp.cxx": (None, toolchain.cxx)}
        aoti_compile_and_package(program, package_path=str(tmp), inductor_configs=options)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        probe(tmp, shape, channels_last, device, dtype)
        digest, size = file_sha256(tmp), tmp.stat().st_size
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    metadata = {"key": cache_key(fields), "fields": fields, "package_sha256": digest, "package_bytes": size,
                "compile_seconds": round(seconds, 3), **toolchain.describe(),
                "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    atomic_write_bytes(_metadata_path(path), json.dumps(metadata, indent=2, sort_keys=True).encode())
    return seconds, toolchain.cxx


class PackageModule:
    """A loaded package, called like the network: one batch in, its logits out.

    Loaded by torch's C++ package loader (``torch._C._aoti.AOTIModelPackageLoader``, what
    ``torch._inductor.aoti_load_package`` wraps) so that a warm start imports nothing of torch's
    compiler: locally (CPU, torch 2.14, 2026-12-03) ``aoti_load_package`` took 3.3 s, importing
    ``torch._dynamo`` among others, against under 0.01 s for the loader alone; on the H200 image
    (torch 2.11) it took 60-67 s before the loader was even constructed. The package's single input and
    output need none of the wrapper's pytree flattening.
    """

    def __init__(self, path: Path, device: torch.device) -> None:
        index = device.index if device.type == "cuda" and device.index is not None else -1
        try:
            self.loader = torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, 1, index)
        except (AttributeError, TypeError) as exc:  # older torch: another loader, or none
            raise CompiledCacheError(f"--compile aot: torch {torch.__version__} cannot load AOTInductor packages the "
                                     f"way segtrt does (its package loader differs: {exc}); update torch or use "
                                     "--compile default") from exc

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.loader.run([batch])[0]


def _load(path: Path, device: torch.device) -> Callable:
    return PackageModule(path, device)


_PROBE = """
import sys, torch
path, shape, channels_last, device = sys.argv[1], eval(sys.argv[2]), sys.argv[3] == "1", torch.device(sys.argv[4])
loader = torch._C._aoti.AOTIModelPackageLoader(path, "model", False, 1, device.index if device.index is not None else -1)
model = lambda batch: loader.run([batch])[0]
x = torch.randn(shape, device=device).to(getattr(torch, sys.argv[5]))
if channels_last:
    n, c, z, y, w = shape
    x = x.contiguous(memory_format=torch.channels_last_3d).as_strided(shape, (z * y * w * c, 1, y * w * c, w * c, c))
with torch.inference_mode():
    out = model(x)
if device.type == "cuda":
    torch.cuda.synchronize(device)
assert out.shape[0] == shape[0] and out.shape[2:] == x.shape[2:], out.shape
assert bool(torch.isfinite(out).all()), "non-finite logits"
"""


def probe(path: Path, shape: Sequence[int], channels_last: bool, device: torch.device,
          dtype: torch.dtype = torch.float32, timeout_s: float = 600.0) -> None:
    """Load and run the package at ``path`` once in a child process; CompiledCacheError if that fails.

    The child uses only torch (no segtrt import), a random ``dtype`` batch of ``shape`` in the package's layout.
    """
    index = device.index if device.index is not None else (torch.cuda.current_device() if device.type == "cuda" else None)
    where = device.type if index is None else f"{device.type}:{index}"
    command = [sys.executable, "-c", _PROBE, str(path), repr(tuple(int(s) for s in shape)),
               "1" if channels_last else "0", where, str(dtype).removeprefix("torch.")]
    try:
        done = subprocess.run(command, capture_output=True, text=True, encoding="utf-8", errors="replace",
                              timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise CompiledCacheError(f"loading the compiled network took over {timeout_s:.0f} s in a test process; "
                                 "use --compile default") from exc
    if done.returncode != 0:
        how = _exit_reason(done.returncode)
        last = (done.stderr.strip().splitlines() or [""])[-1][:300]
        raise CompiledCacheError(
            f"the ahead-of-time package compiled with torch {torch.__version__} failed when a test process loaded "
            f"and ran it on {where} ({how}{': ' + last if last else ''}); this torch cannot use --compile aot here, "
            "use --compile default (torch.compile with inductor's disk cache)")


def _exit_reason(code: int) -> str:
    if code >= 0:
        return f"exit {code}"
    try:
        return f"signal {signal.Signals(-code).name}"
    except ValueError:
        return f"signal {-code}"
