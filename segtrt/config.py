"""Settings dataclasses: every default, every environment read and every settings check lives here.

``PredictSettings`` validates itself when it is created, so the CLI, the Python API and scripts all get
the same one-line :class:`~segtrt.errors.SettingsError` for a value out of range.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path

from segtrt.errors import SettingsError

PRECISIONS = ("fp32", "fp16")
BACKENDS = ("torch", "onnxruntime", "tensorrt", "auto")
#: Backends ``segtrt verify`` compares with the torch float32 reference.
VERIFY_BACKENDS = ("onnxruntime", "tensorrt", "torch")
#: --compile values -> torch.compile / inductor modes (None = eager).
COMPILE_MODES = {"off": None, "default": "default", "max-autotune": "max-autotune-no-cudagraphs",
                 "aot": "default", "aot-max-autotune": "max-autotune-no-cudagraphs"}
#: --compile values that load (or compile once) an AOTInductor package from segtrt's cache.
AHEAD_OF_TIME = ("aot", "aot-max-autotune")
#: every --compile value: ``auto`` picks ``aot`` or ``off`` per run (segtrt.runners.compile_choice)
COMPILE_CHOICES = ("auto", *COMPILE_MODES)
#: --while-compiling values (segtrt.batch.handover)
WHILE_COMPILING = ("eager", "wait")
#: --channels-last values -> TorchRunner(channels_last=...) (None = on when compiling on CUDA).
CHANNELS_LAST = {"auto": None, "on": True, "off": False}
#: --freeze values -> TorchRunner(freeze=...) (None = on when torch.compile-ing on CUDA).
FREEZE = {"auto": None, "on": True, "off": False}
#: --half-weights values -> TorchRunner(half_weights=...) (None = on when torch.compile-ing in fp16 on CUDA).
HALF_WEIGHTS = {"auto": None, "on": True, "off": False}
#: --precompile values -> TorchRunner(precompile=...) (None = on when torch.compile-ing on CUDA unfrozen).
PRECOMPILE = {"auto": None, "on": True, "off": False}
ACCUMULATE_DTYPES = ("float32", "float16")
STREAM_MODES = ("auto", "on", "off")
#: What to do with NaN / +-Inf voxels in an input image: refuse the case, or replace them by 0.
NONFINITE_POLICIES = ("error", "zero")
#: Accepted ``device`` strings: auto, cpu, cuda, cuda:N.
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")

#: Folder of the bundled demonstration model, shipped inside the package (``sample_data/model`` in a
#: source checkout links to it). Used without ``-m`` only, with a warning that names it.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "sample_model"


def cache_dir() -> Path:
    """Root of segtrt's on-disk caches (ONNX exports, engines); ``SEGTRT_CACHE_DIR`` overrides it."""
    env = os.environ.get("SEGTRT_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "segtrt"


@dataclass(frozen=True)
class PredictSettings:
    """How one prediction runs. Shapes and spacings elsewhere are in array order (z, y, x).

    device: ``auto`` (CUDA if present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
    step_size: window step as a fraction of the patch size (nnU-Net's ``tile_step_size``), in (0, 1].
    mirror: test-time mirroring over the model's allowed axes.
    batch_size: patches per forward pass (mirror flips are batched on top when they fit), >= 1.
    precision: network precision; ``fp16`` is autocast (torch) or an fp16 graph (ONNX/TensorRT).
    accumulate_dtype: dtype of the logit/weight accumulators on the device (``float32``/``float16``).
    compile: torch backend only: ``auto`` (default: on CUDA the ahead-of-time packages when segtrt's cache
        has them for this run, else eager; segtrt.runners.compile_choice), ``off``, ``default`` or
        ``max-autotune`` (torch.compile, kernels cached on disk; the first run on a machine compiles), ``aot``
        or ``aot-max-autotune`` (packages, compiled once when missing).
    cuda_graph: torch backend only: replay the network from CUDA graphs (one capture per batch shape; with
        ``compile``, the compiled network's kernels, captured after its first call).
    stream: ``auto``, ``on`` or ``off``: z-streamed aggregation, a patch-tall slab of accumulators on
        the device and the finished logits on the host as float16 (segtrt.streaming); ``auto`` streams
        on CUDA when whole-volume accumulators would exceed 4 GiB.
    overlap_io: in a batch, read the next case and write the previous one in two background threads
        while the current case is on the device (segtrt.batch.scheduler; reads ahead and writes in flight bounded by
        the worker counts); ``False`` does read -> predict -> write strictly in sequence.
    channels_last: torch backend only: ``auto`` (weights and batches in channels_last_3d when compiling on
        CUDA, where it removes cuDNN's layout transposes), ``on`` or ``off``.
    freeze: torch backend only: ``auto`` (inductor's freezing, weights as constants of the compiled graph,
        for ``--compile default / max-autotune`` on CUDA without half_weights), ``on`` or ``off``.
    half_weights: torch backend, fp16 only: ``auto`` (an fp16 copy of the weights, no autocast, when
        compiling on CUDA), ``on`` or ``off``.
    precompile: torch backend only: ``auto`` (save what torch.compile made in segtrt's cache and load it
        in later processes without tracing again, for ``--compile default / max-autotune`` on CUDA without
        frozen weights; segtrt.runners.precompiled), ``on`` or ``off``.
    nonfinite: NaN / Inf voxels in an input: ``error`` (default) refuses the case naming how many and
        where; ``zero`` replaces them by 0 before preprocessing (logged, and recorded in the run report).

    Every value is checked on creation: a wrong one raises SettingsError (one line naming the
    setting, its CLI option, what was received and what is expected).
    """

    device: str = "auto"
    step_size: float = 0.5
    mirror: bool = True
    batch_size: int = 4
    precision: str = "fp32"
    accumulate_dtype: str = "float32"
    save_probabilities: bool = False
    backend: str = "torch"
    folds: tuple[int | str, ...] | None = None
    configuration: str | None = None
    checkpoint_name: str = "checkpoint_final.pth"
    trust_checkpoint: bool = False
    compile: str = "auto"
    cuda_graph: bool = False
    stream: str = "auto"
    overlap_io: bool = True
    channels_last: str = "auto"
    nonfinite: str = "error"
    freeze: str = "auto"
    half_weights: str = "auto"
    precompile: str = "auto"

    def __post_init__(self) -> None:
        _check_choice("device", self.device, "--device", None)
        _check_step_size(self.step_size)
        _check_positive_int("batch_size", self.batch_size, "--batch-size")
        _check_choice("precision", self.precision, "--precision", PRECISIONS)
        _check_choice("accumulate_dtype", self.accumulate_dtype, "--accumulate", ACCUMULATE_DTYPES)
        _check_choice("backend", self.backend, "--backend", BACKENDS)
        _check_choice("compile", self.compile, "--compile", COMPILE_CHOICES)
        _check_choice("stream", self.stream, "--stream", STREAM_MODES)
        _check_choice("nonfinite", self.nonfinite, "--nonfinite", NONFINITE_POLICIES)
        _check_choice("channels_last", self.channels_last, "--channels-last", tuple(CHANNELS_LAST))
        _check_choice("freeze", self.freeze, "--freeze", tuple(FREEZE))
        _check_choice("half_weights", self.half_weights, "--half-weights", tuple(HALF_WEIGHTS))
        _check_choice("precompile", self.precompile, "--precompile", tuple(PRECOMPILE))
        for name, option in (("mirror", "--no-tta"), ("save_probabilities", "--save-probabilities"),
                             ("trust_checkpoint", "--trust-checkpoint"), ("cuda_graph", "--cuda-graph"),
                             ("overlap_io", "--no-overlap-io")):
            if not isinstance(getattr(self, name), bool):
                raise SettingsError(f"{name} ({option}) must be True or False, got {getattr(self, name)!r}")
        _check_folds(self.folds)
        if not isinstance(self.checkpoint_name, str) or not self.checkpoint_name or "/" in self.checkpoint_name:
            raise SettingsError(
                f"checkpoint_name (--checkpoint) must be a file name inside fold_K/, got {self.checkpoint_name!r}"
            )
        if self.configuration is not None and (not isinstance(self.configuration, str) or not self.configuration):
            raise SettingsError(f"configuration (-c) must be a configuration name, got {self.configuration!r}")



@dataclass(frozen=True)
class BatchSettings:
    """How a batch finds its cases and schedules file IO (segtrt.batch). None of these change results.

    recursive: walk nested folders (PACS exports, patient/study/series trees); otherwise a folder's own
        files and its direct DICOM sub-folders are used.
    overwrite: recompute every case even when the manifest says it is done (default: resume).
    io_workers: reader and writer threads each (None: a quarter of the cores, 1 to 4).
    modality / series_description / min_slices / series_uids: DICOM series selection
        (segtrt.batch.series): the modality to use (None: the one the model's channel names; 'any'),
        a regular expression the Series Description must contain, the fewest slices, and the Series
        Instance UIDs to use (empty: all usable).
    while_compiling: with ``--compile`` on one CUDA device, ``wait`` (default) makes the first case wait for
        the compiled network; ``eager`` predicts the first cases with an eager copy of the network while the
        compiled one gets ready on a thread (segtrt.batch.handover; measured no faster on the H200).
    """

    recursive: bool = False
    overwrite: bool = False
    io_workers: int | None = None
    modality: str | None = None
    series_description: str | None = None
    min_slices: int = 10
    series_uids: tuple[str, ...] = ()
    while_compiling: str = "wait"

    def __post_init__(self) -> None:
        _check_choice("while_compiling", self.while_compiling, "--while-compiling", WHILE_COMPILING)
        if self.io_workers is not None and self.io_workers < 1:
            raise SettingsError(f"--io-workers must be at least 1, got {self.io_workers}")
        if self.min_slices < 1:
            raise SettingsError(f"--min-slices must be at least 1, got {self.min_slices}")
        if self.series_description is not None:
            try:
                re.compile(self.series_description)
            except re.error as error:
                raise SettingsError(f"--series-description {self.series_description!r} is not a regular "
                                  f"expression ({error}); expected e.g. 'abdomen|venous'") from None


def default_of(name: str):
    """The default of the ``PredictSettings`` field ``name`` (the CLI shows and uses these)."""
    for field in fields(PredictSettings):
        if field.name == name:
            return field.default
    raise KeyError(name)


def _check_choice(name: str, value: object, option: str, choices: tuple[str, ...] | None) -> None:
    if choices is None:  # the device: auto, cpu, cuda, cuda:N
        if isinstance(value, str) and DEVICE_PATTERN.fullmatch(value):
            return
        raise SettingsError(f"{name} ({option}) must be auto, cpu, cuda or cuda:N, got {value!r}")
    if value not in choices:
        raise SettingsError(f"{name} ({option}) must be one of {', '.join(choices)}, got {value!r}")


def _check_step_size(value: object) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not 0.0 < float(value) <= 1.0:
        raise SettingsError(
            f"step_size (--step-size) must be a fraction of the patch in (0, 1] (nnU-Net uses 0.5), got {value!r}"
        )


def _check_positive_int(name: str, value: object, option: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SettingsError(f"{name} ({option}) must be a whole number >= 1, got {value!r}")


def _check_folds(folds: object) -> None:
    if folds is None:
        return
    if not isinstance(folds, (tuple, list)) or not folds:
        raise SettingsError(f"folds (-f) must be a non-empty tuple of fold names such as (0, 1) or ('all',), "
                            f"got {folds!r}")
    for fold in folds:
        if isinstance(fold, bool) or not isinstance(fold, (int, str)) or str(fold) == "":
            raise SettingsError(f"folds (-f) must be fold numbers or names such as 'all', got {fold!r}")
    names = [str(int(f)) if str(f).isdigit() else str(f) for f in folds]
    if len(set(names)) != len(names):
        raise SettingsError(f"folds (-f) lists a fold twice: {', '.join(str(f) for f in folds)}")


#: cases a Ray actor holds at once by default: one on the device, one being read, one being written
RAY_CASES_PER_ACTOR = 3


@dataclass(frozen=True)
class ScaleSettings:
    """Where a batch runs beyond one device (segtrt.batch.multi_device, segtrt.scaleout). None changes results.

    devices: ``--devices``: one warm predictor per local device, e.g. ('cuda:0', 'cuda:1'); ('all',) for
        every visible CUDA device; ('cpu', 'cpu') gives two CPU workers (for testing). Empty: one device.
    ray_address: ``--ray [ADDRESS]``: run on Ray; 'local' starts a local cluster in this process,
        'auto' or 'host:port' joins a running one. None: no Ray.
    ray_workers: actors to start (None: one per GPU in the cluster, times ``actors_per_gpu``).
    ray_cpu_only: actors take ``num_cpus=1`` and no GPU (then ``ray_workers`` is required).
    actors_per_gpu: actors sharing one GPU (each asks for ``num_gpus=1/actors_per_gpu``), so one
        actor's file IO overlaps another's network.
    max_retries: times a case is tried again after its worker was lost or hit an unexpected error
        before it is quarantined (failed, with every reason in the report).
    cases_per_actor: cases each Ray actor holds at once (threads in the actor: one case on the device
        while the others are read and written), so one actor keeps its GPU fed as the batch job does.
    """

    devices: tuple[str, ...] = ()
    ray_address: str | None = None
    ray_workers: int | None = None
    ray_cpu_only: bool = False
    actors_per_gpu: int = 1
    max_retries: int = 2
    cases_per_actor: int = RAY_CASES_PER_ACTOR

    def __post_init__(self) -> None:
        if self.devices and self.ray_address is not None:
            raise SettingsError("--devices and --ray exclude each other: Ray places its actors on the GPUs itself")
        if self.ray_workers is not None and self.ray_workers < 1:
            raise SettingsError(f"--ray-workers must be at least 1, got {self.ray_workers}")
        if self.actors_per_gpu < 1:
            raise SettingsError(f"--ray-actors-per-gpu must be at least 1, got {self.actors_per_gpu}")
        if self.cases_per_actor < 1:
            raise SettingsError(f"--ray-cases-per-actor must be at least 1, got {self.cases_per_actor}")
        if self.max_retries < 0:
            raise SettingsError(f"--retries must be 0 or more, got {self.max_retries}")
        if self.ray_cpu_only and self.ray_workers is None:
            raise SettingsError("--ray-cpu-only needs --ray-workers N (how many CPU actors to start)")
        if (self.ray_cpu_only or self.ray_workers is not None or self.actors_per_gpu != 1
                or self.cases_per_actor != RAY_CASES_PER_ACTOR) and self.ray_address is None:
            raise SettingsError("--ray-workers, --ray-cpu-only, --ray-actors-per-gpu and --ray-cases-per-actor apply "
                                "with --ray only")

    @property
    def spread(self) -> bool:
        """True when the batch runs on several local devices or on Ray."""
        return bool(self.devices) or self.ray_address is not None
