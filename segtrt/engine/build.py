"""Build a TensorRT (or TensorRT-RTX) plan from an ONNX file.

The network is strongly typed: every tensor keeps the dtype the ONNX graph gives it, so an fp16 engine
comes from an fp16 graph (segtrt's exporter writes a half network with fp32 I/O casts), never from a
builder precision flag (TensorRT 11 removed them). Only dynamic axes get an optimization profile, and only
the batch axis (0) may be dynamic: the patch size is fixed by the nnU-Net plans.
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from segtrt.engine.flavors import Flavor, load_flavor
from segtrt.engine.inspect import IOSpec, dtype_name, network_io_specs
from segtrt.errors import EngineError
from segtrt.io.writers import atomic_write_bytes

log = logging.getLogger(__name__)

DEFAULT_MIN_BATCH = 1
#: Default opt (and max) batch of a dynamic profile: segtrt's default prediction batch size.
DEFAULT_OPT_BATCH = 4
OPT_LEVELS = range(0, 6)


@dataclass(frozen=True)
class BuildOptions:
    """Builder settings. None means TensorRT's default (opt level 3, workspace = GPU memory).

    Batches are patches per forward pass. ``timing_cache`` is a file path; it speeds up builds but does
    not change the engine's contract, so it is not part of the engine cache key.
    """

    min_batch: int | None = None
    opt_batch: int | None = None
    max_batch: int | None = None
    opt_level: int | None = None
    workspace_mb: int | None = None
    timing_cache: Path | None = None
    flavor: str = "auto"

    def key_fields(self) -> dict[str, Any]:
        """The settings that change the built engine, with batch defaults resolved."""
        return {
            "batch_range": list(resolve_batch_range(self.min_batch, self.opt_batch, self.max_batch)),
            "opt_level": self.opt_level,
            "workspace_mb": self.workspace_mb,
        }

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["timing_cache"] = None if self.timing_cache is None else str(self.timing_cache)
        return data


@dataclass(frozen=True)
class BuildResult:
    """A serialized plan and what is known about it without deserializing it.

    io: I/O specs read from the parsed network and the profile given to the builder.
    batch_range: (min, opt, max) of the profile, None for a static graph.
    compute_dtypes: convolution/deconvolution layers counted by output dtype, e.g. {"float16": 13}.
    """

    plan: bytes
    io: tuple[IOSpec, ...]
    build_seconds: float
    flavor: str
    version: str
    options: BuildOptions
    batch_range: tuple[int, int, int] | None
    compute_dtypes: dict[str, int] = field(default_factory=dict)
    timing_cache_saved: bool = False
    plan_path: Path | None = None

    def with_path(self, path: Path) -> "BuildResult":
        return replace(self, plan_path=Path(path))


def resolve_batch_range(
    min_batch: int | None, opt_batch: int | None, max_batch: int | None
) -> tuple[int, int, int]:
    """(min, opt, max) batch of a dynamic profile: min defaults to 1, opt to max (or 4), max to opt."""
    low = DEFAULT_MIN_BATCH if min_batch is None else min_batch
    if opt_batch is not None:
        opt = opt_batch
    else:
        opt = max_batch if max_batch is not None else max(DEFAULT_OPT_BATCH, low)
    high = opt if max_batch is None else max_batch
    if not 1 <= low <= opt <= high:
        raise EngineError(
            f"batch profile min={low} opt={opt} max={high} is invalid; expected 1 <= min <= opt <= max"
        )
    return low, opt, high


def build_engine(
    onnx_path: str | Path,
    *,
    min_batch: int | None = None,
    opt_batch: int | None = None,
    max_batch: int | None = None,
    opt_level: int | None = None,
    workspace_mb: int | None = None,
    timing_cache: str | Path | None = None,
    flavor: str = "auto",
) -> BuildResult:
    """Build a plan from ``onnx_path`` (see ``BuildOptions`` for the settings)."""
    options = BuildOptions(
        min_batch=min_batch,
        opt_batch=opt_batch,
        max_batch=max_batch,
        opt_level=opt_level,
        workspace_mb=workspace_mb,
        timing_cache=None if timing_cache is None else Path(timing_cache),
        flavor=flavor,
    )
    return build_from_options(onnx_path, options)


def build_from_options(onnx_path: str | Path, options: BuildOptions) -> BuildResult:
    """Parse, configure, build; EngineError for anything the user can fix."""
    path = Path(onnx_path)
    if not path.is_file():
        raise EngineError(f"ONNX file {path} does not exist; export one first (segtrt export)")
    flavor = load_flavor(options.flavor)
    logger = flavor.make_logger()
    builder = flavor.module.Builder(logger)
    network = builder.create_network(flavor.network_flags())
    parser = flavor.module.OnnxParser(network, logger)  # owns the weights: alive until the build returns
    parse_onnx(parser, path)
    config = builder.create_builder_config()
    configure(flavor, config, options)
    profile, batch_range = add_profile(builder, config, network, options)
    use_cache = load_timing_cache(flavor, config, options.timing_cache)
    log.info("building %s with %s", path.name, flavor.label)
    start = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if plan is None:
        reason = "; ".join(" ".join(m.split()) for m in logger.errors[-3:]) or "no reason given"
        raise EngineError(f"{flavor.label} could not build an engine from {path}: {reason}")
    if use_cache:
        atomic_write_bytes(options.timing_cache, bytes(config.get_timing_cache().serialize()))
    log.info("built %s in %.2f s (%d bytes)", path.name, seconds, plan.nbytes)
    return BuildResult(
        plan=bytes(plan),
        io=network_io_specs(network, profile),
        build_seconds=seconds,
        flavor=flavor.name,
        version=flavor.version,
        options=options,
        batch_range=batch_range,
        compute_dtypes=conv_dtypes(network, flavor),
        timing_cache_saved=use_cache,
    )


def parse_onnx(parser: Any, path: Path) -> None:
    """Parse from the file (so external weight files resolve); EngineError naming the failing node."""
    if parser.parse_from_file(str(path)):
        return
    errors = [parser.get_error(i) for i in range(parser.num_errors)]
    if not errors:
        raise EngineError(f"the TensorRT ONNX parser rejected {path} without saying why")
    first = describe_parser_error(errors[0])
    more = f" (+{len(errors) - 1} more errors)" if len(errors) > 1 else ""
    raise EngineError(f"the TensorRT ONNX parser rejected {path}: {first}{more}")


def describe_parser_error(error: Any) -> str:
    """One line: node index, name and operator (when the error has a node), code and description."""
    description = " ".join(str(error.desc()).split())
    code = getattr(error.code(), "name", str(error.code()))
    if error.node() < 0:
        return f"{code}: {description}"
    return f"node {error.node()} '{error.node_name()}' (op {error.node_operator()}): {code}: {description}"


def configure(flavor: Flavor, config: Any, options: BuildOptions) -> None:
    """Optimization level and workspace limit; no precision flags (the network is strongly typed)."""
    trt = flavor.module
    if options.opt_level is not None:
        if options.opt_level not in OPT_LEVELS:
            raise EngineError(f"--opt-level {options.opt_level} is out of range; expected 0 to 5 (default 3)")
        config.builder_optimization_level = options.opt_level
    if options.workspace_mb is not None:
        if options.workspace_mb <= 0:
            raise EngineError(f"--workspace {options.workspace_mb} MB is invalid; expected a positive size")
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)


def add_profile(
    builder: Any, config: Any, network: Any, options: BuildOptions
) -> tuple[Any | None, tuple[int, int, int] | None]:
    """One optimization profile over the batch axis of dynamic inputs; none for a static graph."""
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    dynamic = [t for t in inputs if any(d < 0 for d in tuple(t.shape))]
    if not dynamic:
        check_static_batch(inputs, options)
        return None, None
    batch_range = resolve_batch_range(options.min_batch, options.opt_batch, options.max_batch)
    profile = builder.create_optimization_profile()
    for tensor in dynamic:
        shape = tuple(tensor.shape)
        if any(d < 0 for d in shape[1:]):
            raise EngineError(
                f"input '{tensor.name}' has shape {shape}: only the batch axis may be dynamic; "
                "export the ONNX with a fixed patch size"
            )
        min_s, opt_s, max_s = ((b, *shape[1:]) for b in batch_range)
        profile.set_shape(tensor.name, min_s, opt_s, max_s)
    config.add_optimization_profile(profile)
    return profile, batch_range


def check_static_batch(inputs: list[Any], options: BuildOptions) -> None:
    """A static graph cannot honour batch options that differ from its batch: say so."""
    named = (("min", options.min_batch), ("opt", options.opt_batch), ("max", options.max_batch))
    given = {k: v for k, v in named if v is not None}
    for tensor in inputs:
        static = tuple(tensor.shape)[0]
        wrong = {k: v for k, v in given.items() if v != static}
        if wrong:
            raise EngineError(
                f"input '{tensor.name}' has a static batch of {static} but batch options {wrong} were given; "
                "export the ONNX with a dynamic batch or drop the batch options"
            )


def load_timing_cache(flavor: Flavor, config: Any, path: Path | None) -> bool:
    """Attach the timing cache at ``path`` (empty when the file is new); True when it will be saved."""
    if path is None:
        return False
    if not flavor.supports_timing_cache:
        log.warning("%s ignores timing caches; %s is neither read nor written", flavor.label, path)
        return False
    data = Path(path).read_bytes() if Path(path).is_file() else b""
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, False):
        raise EngineError(
            f"timing cache {path} was made by another TensorRT version or GPU; delete it or pass another path"
        )
    return True


def conv_dtypes(network: Any, flavor: Flavor) -> dict[str, int]:
    """Convolution and deconvolution layers of the parsed network, counted by output dtype."""
    kinds = {flavor.module.LayerType.CONVOLUTION, flavor.module.LayerType.DECONVOLUTION}
    counts: collections.Counter[str] = collections.Counter()
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type in kinds:
            counts[dtype_name(layer.get_output(0).dtype)] += 1
    return dict(counts)
