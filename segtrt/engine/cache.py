"""Engine cache: build a plan once per (model, TensorRT, GPU, build options) and reuse it.

Layout: ``<cache_dir>/<key>.engine`` (the plan), ``<key>.engine.json`` (its metadata) and
``<key>.engine.lock``. The key is a sha256 over the ONNX bytes (and its external weight files), the
TensorRT flavor and version, the target GPU name and compute capability, and the build options that
change the engine (batch profile, optimization level, workspace) — never a modification time.

On a machine without a CUDA GPU the target is the explicit string ``cpu-build``: such engines are real
plans (TensorRT-RTX builds without a GPU) but are keyed apart from any GPU's.

Writes are atomic (temporary file + ``os.replace``; the plan first, the metadata last, so metadata means
"complete"). Builders of the same entry serialize on an exclusive lock of the ``.lock`` file: the
second waits, then reuses the first one's plan.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from segtrt import config
from segtrt.engine.build import BuildOptions, BuildResult, build_from_options
from segtrt.engine.flavors import load_flavor
from segtrt.engine.inspect import IOSpec
from segtrt.io.locking import file_lock
from segtrt.errors import BackendUnavailableError, EngineError
from segtrt.io.writers import atomic_write_bytes

log = logging.getLogger(__name__)

METADATA_FORMAT = 1
CPU_BUILD_TARGET = "cpu-build"
_FIELD_GROUPS = {
    "onnx_sha256": "model",
    "flavor": "TensorRT",
    "trt_version": "TensorRT",
    "gpu_name": "GPU",
    "compute_capability": "GPU",
    "batch_range": "build options",
    "opt_level": "build options",
    "workspace_mb": "build options",
    "format": "metadata format",
}


@dataclass(frozen=True)
class BuildTarget:
    """The GPU an engine is built for; ``gpu_name`` is ``cpu-build`` when no CUDA GPU is visible."""

    gpu_name: str
    compute_capability: str | None = None

    def describe(self) -> str:
        if self.compute_capability is None:
            return f"'{self.gpu_name}'"
        return f"'{self.gpu_name}' (cc {self.compute_capability})"


def current_target(device: torch.device | str | None = None) -> BuildTarget:
    """The GPU torch sees (``device``, else the current CUDA device), or the ``cpu-build`` target."""
    if not torch.cuda.is_available():
        log.info("no CUDA GPU visible: engines are keyed to the target '%s'", CPU_BUILD_TARGET)
        return BuildTarget(CPU_BUILD_TARGET)
    index = None if device is None else torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    major, minor = torch.cuda.get_device_capability(index)
    return BuildTarget(torch.cuda.get_device_name(index), f"{major}.{minor}")


@dataclass(frozen=True)
class EngineMetadata:
    """The JSON written beside a plan. ``fields`` are the key's inputs; the rest describes the build."""

    key: str
    fields: dict[str, Any]
    plan_sha256: str
    plan_bytes: int
    io: tuple[IOSpec, ...]
    batch_range: tuple[int, int, int] | None
    build_seconds: float
    compute_dtypes: dict[str, int]
    onnx_path: str
    created_utc: str

    @property
    def flavor(self) -> str:
        return str(self.fields["flavor"])

    def to_json(self) -> str:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        data["io"] = [spec.as_dict() for spec in self.io]
        data["batch_range"] = None if self.batch_range is None else list(self.batch_range)
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "EngineMetadata":
        data = json.loads(text)
        data["io"] = tuple(IOSpec.from_dict(spec) for spec in data["io"])
        data["batch_range"] = None if data["batch_range"] is None else tuple(data["batch_range"])
        return cls(**data)


@dataclass(frozen=True)
class CachedEngine:
    """A plan on disk with its metadata. ``hit``: reused (True) or built by this call (False)."""

    plan_path: Path
    metadata: EngineMetadata
    hit: bool
    build: BuildResult | None = None

    def read_plan(self) -> bytes:
        return self.plan_path.read_bytes()


def metadata_path(plan_path: Path) -> Path:
    return plan_path.with_name(plan_path.name + ".json")


def sha256_onnx(onnx_path: str | Path) -> str:
    """sha256 over the ONNX file and, in order, every external weight file it references."""
    path = Path(onnx_path)
    if not path.is_file():
        raise EngineError(f"ONNX file {path} does not exist; export one first (segtrt export)")
    digest = hashlib.sha256(path.read_bytes())
    for location in external_data_files(path):
        digest.update(location.encode())
        digest.update((path.parent / location).read_bytes())
    return digest.hexdigest()


def external_data_files(onnx_path: Path) -> list[str]:
    """Sorted relative locations of the external weight files an ONNX model references."""
    try:
        import onnx
    except ImportError as exc:
        raise BackendUnavailableError(
            "the engine cache reads the ONNX file with the onnx package; install it: pip install 'segtrt[onnx]'"
        ) from exc
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as error:  # protobuf's DecodeError, and others for truncated or foreign files
        raise EngineError(
            f"{onnx_path} is not a readable ONNX model ({type(error).__name__}: {error}); "
            "expected an ONNX file written by segtrt export"
        ) from None
    locations = set()
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            entries = {entry.key: entry.value for entry in tensor.external_data}
            locations.add(entries["location"])
    return sorted(locations)


def key_fields(onnx_sha256: str, flavor: str, version: str, target: BuildTarget, options: BuildOptions) -> dict:
    """Everything the cache key covers, as a JSON-able dict."""
    return {
        "format": METADATA_FORMAT,
        "onnx_sha256": onnx_sha256,
        "flavor": flavor,
        "trt_version": version,
        "gpu_name": target.gpu_name,
        "compute_capability": target.compute_capability,
        **options.key_fields(),
    }


def cache_key(fields: dict) -> str:
    """sha256 of the canonical JSON of ``fields``."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def get_or_build(
    onnx_path: str | Path,
    options: BuildOptions | None = None,
    cache_dir: str | Path | None = None,
    *,
    engine_path: str | Path | None = None,
    target: BuildTarget | None = None,
    rebuild: bool = False,
) -> CachedEngine:
    """The engine for ``onnx_path``: reused when its metadata matches, else built (under a lock).

    cache_dir: defaults to ``segtrt.config.cache_dir() / "engines"``. engine_path: a chosen plan file
    instead of the keyed cache entry. target: defaults to ``current_target()``.

    A cache entry that is corrupt (unreadable metadata, checksum mismatch) or foreign (metadata for
    another model, TensorRT or GPU) is rebuilt in place, with a warning. At a chosen ``engine_path`` such
    a plan is the user's file: EngineError naming it (delete it, or pass ``rebuild``), never overwritten.
    """
    options = options or BuildOptions()
    flavor = load_flavor(options.flavor)
    options = replace(options, flavor=flavor.name)
    target = target or current_target()
    fields = key_fields(sha256_onnx(onnx_path), flavor.name, flavor.version, target, options)
    key = cache_key(fields)
    keyed = engine_path is None
    if engine_path is None:
        engine_path = Path(cache_dir or config.cache_dir() / "engines") / f"{key}.engine"
    plan_path = Path(engine_path)
    if not rebuild and (cached := reuse_or_rebuild(plan_path, fields, keyed)) is not None:
        return cached
    with file_lock(plan_path.with_name(plan_path.name + ".lock")):
        if not rebuild and (cached := reuse_or_rebuild(plan_path, fields, keyed)) is not None:
            return cached
        result = build_from_options(onnx_path, options)
        metadata = save_engine(plan_path, result, fields, onnx_path)
    return CachedEngine(plan_path, metadata, hit=False, build=result.with_path(plan_path))


def reuse_or_rebuild(plan_path: Path, fields: dict, keyed: bool) -> CachedEngine | None:
    """:func:`reuse`, except that an unusable keyed cache entry means "build it again" (None), logged."""
    try:
        return reuse(plan_path, fields)
    except EngineError as error:
        if not keyed:
            raise
        log.warning("cached engine %s is unusable, rebuilding it: %s", plan_path, error)
        return None


def reuse(plan_path: Path, fields: dict) -> CachedEngine | None:
    """The existing entry when it matches ``fields``; None when absent; EngineError when it differs."""
    meta_path = metadata_path(plan_path)
    if not plan_path.exists():
        return None
    if not meta_path.is_file():
        raise EngineError(
            f"engine {plan_path} has no metadata file {meta_path.name}, so what it was built for is unknown; "
            "rebuild it (segtrt build, or rebuild=True)"
        )
    metadata = _read_metadata_file(plan_path, meta_path)
    check_compatible(plan_path, metadata.fields, fields)
    if hashlib.sha256(plan_path.read_bytes()).hexdigest() != metadata.plan_sha256:
        raise EngineError(
            f"engine {plan_path} does not match the checksum in {meta_path.name} (changed or truncated); "
            "rebuild it (segtrt build, or rebuild=True)"
        )
    log.info("reusing engine %s", plan_path)
    return CachedEngine(plan_path, metadata, hit=True)


def check_compatible(plan_path: Path, built: dict, wanted: dict) -> None:
    """EngineError naming what differs (model, TensorRT, GPU, build options) between two key dicts."""
    differences = []
    for name in sorted(set(built) | set(wanted), key=lambda n: (_FIELD_GROUPS.get(n, n), n)):
        if built.get(name) != wanted.get(name):
            group = _FIELD_GROUPS.get(name, name)
            differences.append(f"{group} {name} is {built.get(name)!r}, wanted {wanted.get(name)!r}")
    if differences:
        raise EngineError(
            f"engine {plan_path} was built for something else: {'; '.join(differences)}; "
            "rebuild it (segtrt build, or rebuild=True)"
        )


def save_engine(plan_path: Path, result: BuildResult, fields: dict, onnx_path: str | Path) -> EngineMetadata:
    """Write the plan, then its metadata, each atomically."""
    metadata = EngineMetadata(
        key=cache_key(fields),
        fields=fields,
        plan_sha256=hashlib.sha256(result.plan).hexdigest(),
        plan_bytes=len(result.plan),
        io=result.io,
        batch_range=result.batch_range,
        build_seconds=round(result.build_seconds, 3),
        compute_dtypes=result.compute_dtypes,
        onnx_path=str(Path(onnx_path).resolve()),
        created_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    atomic_write_bytes(plan_path, result.plan)
    atomic_write_bytes(metadata_path(plan_path), metadata.to_json().encode())
    return metadata


def read_metadata(plan_path: str | Path) -> EngineMetadata | None:
    """The metadata beside a plan, or None when there is none; EngineError when it is unreadable."""
    meta_path = metadata_path(Path(plan_path))
    return _read_metadata_file(Path(plan_path), meta_path) if meta_path.is_file() else None


def _read_metadata_file(plan_path: Path, meta_path: Path) -> EngineMetadata:
    try:
        return EngineMetadata.from_json(meta_path.read_text())
    except (ValueError, KeyError, TypeError) as error:  # JSON syntax, missing or unexpected fields
        raise EngineError(
            f"engine metadata {meta_path} is unreadable ({type(error).__name__}: {error}); delete {plan_path} "
            "and its .json to rebuild it (segtrt build, or rebuild=True)"
        ) from None
