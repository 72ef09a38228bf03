"""Real nnU-Net v2 model folders, made by nnU-Net's own tooling, for tests.

``make_model_folder`` writes a tiny synthetic raw dataset in nnU-Net's format (5 cases of 40^3
voxels, or 16x48x48 at 5x1x1 mm; ellipsoid "organs" with distinct intensities in noisy tissue), then
runs nnunetv2's fingerprint extraction, experiment planner, preprocessor and ``nnUNetTrainer.run_training``
(CPU, 5 epochs of 25 iterations) in this process, so ``dataset.json``, ``plans.json`` and
``fold_K/checkpoint_final.pth`` are exactly what nnU-Net writes. Our only edits go into the planned
3d_fullres configuration before preprocessing: 8..64 features per stage instead of 32..320, a patch of
at most 24^3 and a batch of at most 2, so that one fold trains in about 15-35 s on two cores. The
trained models segment unseen synthetic cases with Dice ~0.83-0.99 per label (2 labels; with 32^3
patches and 100 iterations one fold in six never learned one class).

``run_nnunet_reference`` runs nnunetv2's ``nnUNetPredictor`` on such a folder: the reference for
parity tests.

Array order is (z, y, x) everywhere; spacings are in mm in that order. Origins and directions are in
SimpleITK's physical (x, y, z) convention.

Test helper only: imports nnunetv2, which segtrt itself never does.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing.pool
import os
import random
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import SimpleITK as sitk

DATASET_NAME = "Dataset001_Synthetic"
CONFIGURATION = "3d_fullres"
TRAINER = "nnUNetTrainer"
FILE_ENDING = ".nii.gz"
NUM_TRAINING_CASES = 5  # nnU-Net's default split is 5-fold: one validation case per fold
ISOTROPIC_CASE = ((40, 40, 40), (1.0, 1.0, 1.0))  # shape (voxels), spacing (mm), (z, y, x)
ANISOTROPIC_CASE = ((16, 48, 48), (5.0, 1.0, 1.0))  # spacing ratio 5 > nnU-Net's threshold of 3
BASE_FEATURES = 8  # nnU-Net plans 32 (doubling per stage up to 320)
MAX_FEATURES = 64
MAX_PATCH = 24  # voxels per axis; smaller than the cases, so inference tiles several windows
MAX_BATCH = 2
NUM_EPOCHS = 5
ITERATIONS_PER_EPOCH = 25
#: torch threads while training: one thread is ~20% slower than two on an idle 2-core machine but
#: does not collapse (we saw 8x slower epochs) when other jobs share the cores
TRAIN_THREADS = 1

#: seconds each make_model_folder call took in this process, keyed by FactorySpec.key
BUILD_SECONDS: dict[str, float] = {}


@dataclass(frozen=True)
class FactorySpec:
    """What kind of nnU-Net model to make.

    network: "PlainConvUNet" (nnU-Net's default planner) or "ResidualEncoderUNet" (nnUNetPlannerResEncM).
    modality: "CT" (CTNormalization, int16 HU) or "MR" (ZScoreNormalization, float32, zero outside the
        body so that nnU-Net crops and normalizes inside the nonzero mask).
    channels: input channels (1 or 2). anisotropic: train at (5, 1, 1) mm instead of (1, 1, 1) mm.
    folds: which folds to train. num_labels: foreground labels (label k is an ellipsoid "organ").
    """

    network: str = "PlainConvUNet"
    modality: str = "CT"
    channels: int = 1
    anisotropic: bool = False
    folds: tuple[int, ...] = (0,)
    num_labels: int = 2

    def __post_init__(self) -> None:
        if self.network not in ("PlainConvUNet", "ResidualEncoderUNet"):
            raise ValueError(f"network must be PlainConvUNet or ResidualEncoderUNet, got {self.network!r}")
        if self.modality not in ("CT", "MR"):
            raise ValueError(f"modality must be CT or MR, got {self.modality!r}")
        if self.channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, got {self.channels}")
        if not 1 <= self.num_labels <= 4:
            raise ValueError(f"num_labels must be 1..4, got {self.num_labels}")

    @property
    def key(self) -> str:
        """Short readable identifier, e.g. ``PlainConvUNet-CT-c1-iso-f0-l2``."""
        folds = "".join(str(f) for f in self.folds)
        geometry = "aniso" if self.anisotropic else "iso"
        return f"{self.network}-{self.modality}-c{self.channels}-{geometry}-f{folds}-l{self.num_labels}"

    @property
    def channel_names(self) -> dict[str, str]:
        names = ("CT", "CT") if self.modality == "CT" else ("T1", "T2")
        return {str(c): names[c] for c in range(self.channels)}

    @property
    def seed(self) -> int:
        return sum(ord(ch) * (i + 1) for i, ch in enumerate(self.key)) % (2**31)


# ---------------------------------------------------------------------------------------------
# synthetic images


def _ellipsoid(coords: tuple[np.ndarray, ...], centre: np.ndarray, semi_axes: np.ndarray) -> np.ndarray:
    """Boolean mask of an axis-aligned ellipsoid; coords are physical mm grids in (z, y, x)."""
    r2 = sum(((c - m) / a) ** 2 for c, m, a in zip(coords, centre, semi_axes))
    return r2 <= 1.0


def _label_map(shape: Sequence[int], spacing: Sequence[float], num_labels: int, body_size: float,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(body mask, label map) of shape (z, y, x): a body ellipsoid holding ``num_labels`` organs.

    body_size: the body's semi-axes as a fraction of the field of view (>= 0.9 fills it).
    """
    extent = np.asarray(shape, float) * np.asarray(spacing, float)
    coords = np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing)], indexing="ij")
    centre = extent / 2 + rng.uniform(-0.03, 0.03, 3) * extent
    body = _ellipsoid(coords, centre, extent * body_size * rng.uniform(0.95, 1.05, 3))
    labels = np.zeros(shape, np.uint8)
    phase = rng.uniform(0, 2 * np.pi)
    size = 1.0 if num_labels <= 2 else 0.75  # organs sit on a circle: smaller when there are more
    for k in range(1, num_labels + 1):
        angle = phase + 2 * np.pi * k / num_labels
        offset = np.array([rng.uniform(-0.06, 0.06), 0.22 * np.sin(angle), 0.22 * np.cos(angle)])
        organ = _ellipsoid(coords, centre + offset * extent, extent * size * rng.uniform(0.18, 0.24, 3))
        labels[organ & body] = k
    return body, labels


#: per channel: (tissue, outside-body value, intensity offset of label k over tissue for k = 1..4).
#: Label 2 is darker than tissue so that CT's clipping to the foreground percentiles keeps tissue
#: in range and every class stays separable by intensity.
_INTENSITIES = {
    ("CT", 0): (40.0, -1000.0, (260.0, -150.0, 520.0, 130.0)),
    ("CT", 1): (60.0, -1000.0, (150.0, 300.0, -100.0, 450.0)),
    ("MR", 0): (200.0, 0.0, (250.0, -120.0, 450.0, 120.0)),
    ("MR", 1): (400.0, 0.0, (-150.0, 200.0, -250.0, 100.0)),
}
NOISE_SIGMA = 15.0


def _channel(spec: FactorySpec, channel: int, body: np.ndarray, labels: np.ndarray,
             rng: np.random.Generator) -> np.ndarray:
    """One image channel (z, y, x): CT in HU (int16) or MR in arbitrary units (float32)."""
    tissue, outside, offsets = _INTENSITIES[(spec.modality, channel)]
    image = np.where(body, tissue, outside) + np.concatenate([[0.0], offsets])[labels]
    image = image + rng.normal(0.0, NOISE_SIGMA, image.shape)
    if spec.modality == "CT":
        return np.round(image).astype(np.int16)
    scale = rng.uniform(0.8, 1.25)  # MR intensities have no absolute scale; z-scoring removes it
    return np.where(body, np.maximum(image * scale, 1.0), 0.0).astype(np.float32)


def _write(array: np.ndarray, path: Path, spacing: Sequence[float], origin: Sequence[float],
           direction: Sequence[float]) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing([float(s) for s in reversed(spacing)])  # SimpleITK is (x, y, z)
    image.SetOrigin([float(o) for o in origin])
    image.SetDirection([float(d) for d in direction])
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)


def _channel_paths(path_or_paths: Path | str | Sequence[Path | str], channels: int) -> list[Path]:
    if isinstance(path_or_paths, (str, Path)):
        prefix = str(path_or_paths)
        return [Path(f"{prefix}_{c:04d}{FILE_ENDING}") for c in range(channels)]
    paths = [Path(p) for p in path_or_paths]
    if len(paths) != channels:
        raise ValueError(f"{len(paths)} paths given for a {channels}-channel image")
    return paths


def make_test_image(path_or_paths: Path | str | Sequence[Path | str], spec: FactorySpec, *,
                    shape: Sequence[int] = (48, 48, 48), spacing: Sequence[float] = (1.0, 1.0, 1.0),
                    origin: Sequence[float] = (0.0, 0.0, 0.0),
                    direction: Sequence[float] = (1, 0, 0, 0, 1, 0, 0, 0, 1), seed: int = 0,
                    label_path: Path | str | None = None) -> list[Path]:
    """Write one synthetic case like the training data of ``spec``; return its channel files.

    path_or_paths: a case prefix ``dir/case`` (files ``dir/case_0000.nii.gz``, ... in nnU-Net's naming)
        or one path per channel. shape: voxels (z, y, x). spacing: mm (z, y, x). origin and direction:
        SimpleITK physical (x, y, z) convention, direction as 9 row-major floats. label_path: where to
        also write the ground-truth label map (uint8), if given.
    """
    rng = np.random.default_rng(seed)
    # CT: the body fills the field of view (an abdominal crop). Air would clip to the same normalized
    # value as the darkest organ and take far more training to tell apart. MR: zero outside a smaller
    # body, so that nnU-Net crops to the nonzero box and normalizes inside the mask.
    body_size = 1.0 if spec.modality == "CT" else 0.42
    body, labels = _label_map(shape, spacing, spec.num_labels, body_size, rng)
    paths = _channel_paths(path_or_paths, spec.channels)
    for c, path in enumerate(paths):
        _write(_channel(spec, c, body, labels, rng), path, spacing, origin, direction)
    if label_path is not None:
        _write(labels, Path(label_path), spacing, origin, direction)
    return paths


def _write_raw_dataset(folder: Path, spec: FactorySpec) -> None:
    shape, spacing = ANISOTROPIC_CASE if spec.anisotropic else ISOTROPIC_CASE
    identity = (1, 0, 0, 0, 1, 0, 0, 0, 1)
    for i in range(NUM_TRAINING_CASES):
        case = f"case_{i:03d}"
        make_test_image(folder / "imagesTr" / case, spec, shape=shape, spacing=spacing, origin=(0, 0, 0),
                        direction=identity, seed=spec.seed + i, label_path=folder / "labelsTr" / f"{case}{FILE_ENDING}")
    labels = {"background": 0, **{f"organ{k}": k for k in range(1, spec.num_labels + 1)}}
    dataset = {"channel_names": spec.channel_names, "labels": labels, "numTraining": NUM_TRAINING_CASES,
               "file_ending": FILE_ENDING, "name": "synthetic test dataset for segtrt"}
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))


# ---------------------------------------------------------------------------------------------
# nnU-Net's pipeline, in this process


@contextlib.contextmanager
def _nnunet_environment(root: Path) -> Iterator[tuple[Path, Path, Path]]:
    """Point nnU-Net's folders at ``root``; data augmentation in-process; restore on exit."""
    folders = {"nnUNet_raw": root / "nnUNet_raw", "nnUNet_preprocessed": root / "nnUNet_preprocessed",
               "nnUNet_results": root / "nnUNet_results"}
    # nnUNet_n_proc_DA: the planner sets torch's thread count to it (must be >= 1); training sets it to 0
    settings = {**{k: str(v) for k, v in folders.items()}, "nnUNet_n_proc_DA": "1", "nnUNet_compile": "false"}
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    try:
        yield folders["nnUNet_raw"], folders["nnUNet_preprocessed"], folders["nnUNet_results"]
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _threads_instead_of_processes(*modules: types.ModuleType) -> Iterator[None]:
    """Run nnU-Net's ``multiprocessing.get_context("spawn").Pool`` code on a thread pool.

    Spawned workers would re-import torch and nnunetv2 (~10 s each here); a one-thread pool runs the
    very same nnU-Net code sequentially in this process.
    """
    shim = types.SimpleNamespace(get_context=lambda method=None: types.SimpleNamespace(
        Pool=multiprocessing.pool.ThreadPool))
    originals = [m.multiprocessing for m in modules]
    for m in modules:
        m.multiprocessing = shim
    try:
        yield
    finally:
        for m, original in zip(modules, originals):
            m.multiprocessing = original


def _plan_and_preprocess(spec: FactorySpec, preprocessed: Path) -> str:
    """Fingerprint, plan, shrink the network, preprocess 3d_fullres; return the plans identifier.

    MAX_PATCH = 24 divides by every planned stride product along an axis (at most 2**3 here).
    """
    from nnunetv2.experiment_planning.dataset_fingerprint import fingerprint_extractor
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners import (
        nnUNetPlannerResEncM)
    from nnunetv2.preprocessing.preprocessors import default_preprocessor

    with _threads_instead_of_processes(fingerprint_extractor, default_preprocessor):
        extractor = fingerprint_extractor.DatasetFingerprintExtractor(DATASET_NAME, num_processes=1)
        extractor.show_progress_bar = False
        extractor.run(overwrite_existing=True)
        planner_class = ExperimentPlanner if spec.network == "PlainConvUNet" else nnUNetPlannerResEncM
        planner = planner_class(DATASET_NAME)
        planner.plan_experiment()
        plans_file = preprocessed / DATASET_NAME / f"{planner.plans_identifier}.json"
        _shrink_network(plans_file)
        preprocessor = default_preprocessor.DefaultPreprocessor(verbose=False)
        preprocessor.show_progress_bar = False
        preprocessor.run(DATASET_NAME, CONFIGURATION, planner.plans_identifier, num_processes=1)
    return planner.plans_identifier


def _shrink_network(plans_file: Path) -> None:
    """Fewer features per stage, a patch of at most MAX_PATCH and a batch of at most MAX_BATCH in
    3d_fullres: our only edits to nnU-Net's plans."""
    plans = json.loads(plans_file.read_text())
    configuration = plans["configurations"][CONFIGURATION]
    configuration["patch_size"] = [min(p, MAX_PATCH) for p in configuration["patch_size"]]
    configuration["batch_size"] = min(configuration["batch_size"], MAX_BATCH)
    arch = configuration["architecture"]["arch_kwargs"]
    arch["features_per_stage"] = [min(BASE_FEATURES * 2**i, MAX_FEATURES) for i in range(arch["n_stages"])]
    plans_file.write_text(json.dumps(plans, indent=4))


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch, numpy and random and use TRAIN_THREADS for one training run; restore afterwards."""
    import torch

    numpy_state, random_state, threads = np.random.get_state(), random.getstate(), torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed % (2**32))
        random.seed(seed)
        torch.set_num_threads(TRAIN_THREADS)
        try:
            yield
        finally:
            np.random.set_state(numpy_state)
            random.setstate(random_state)
            torch.set_num_threads(threads)


def _train_fold(spec: FactorySpec, plans_identifier: str, preprocessed: Path, fold: int) -> None:
    """Train one fold briefly with nnUNetTrainer; it writes fold_K/checkpoint_final.pth itself."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    plans = json.loads((preprocessed / DATASET_NAME / f"{plans_identifier}.json").read_text())
    plans["continue_training"] = False
    dataset_json = json.loads((preprocessed / DATASET_NAME / "dataset.json").read_text())
    os.environ["nnUNet_n_proc_DA"] = "0"  # batches made in this process (SingleThreadedAugmenter)
    try:
        with _seeded(spec.seed + 1000 * (fold + 1)):
            trainer = nnUNetTrainer(plans=plans, configuration=CONFIGURATION, fold=fold, dataset_json=dataset_json,
                                    device=torch.device("cpu"))
            trainer.num_epochs = NUM_EPOCHS
            trainer.num_iterations_per_epoch = ITERATIONS_PER_EPOCH
            trainer.num_val_iterations_per_epoch = 2
            trainer.run_training()
    finally:
        os.environ["nnUNet_n_proc_DA"] = "1"


def make_model_folder(root: Path, spec: FactorySpec) -> Path:
    """Make a trained nnU-Net model folder under ``root``; return it.

    The folder holds dataset.json, plans.json and fold_K/checkpoint_final.pth for every fold in
    ``spec.folds`` (configuration 3d_fullres, trainer nnUNetTrainer), as nnU-Net wrote them.
    """
    start = time.perf_counter()
    root = Path(root)
    with _nnunet_environment(root) as (raw, preprocessed, results):
        _write_raw_dataset(raw / DATASET_NAME, spec)
        plans_identifier = _plan_and_preprocess(spec, preprocessed)
        for fold in spec.folds:
            _train_fold(spec, plans_identifier, preprocessed, fold)
    BUILD_SECONDS[spec.key] = time.perf_counter() - start
    return results / DATASET_NAME / f"{TRAINER}__{plans_identifier}__{CONFIGURATION}"


# ---------------------------------------------------------------------------------------------
# nnU-Net's predictor: the reference


def _case_identifier(first_channel: Path) -> str:
    name = first_channel.name
    if name.endswith(FILE_ENDING):
        name = name[: -len(FILE_ENDING)]
    return name[:-5] if len(name) > 5 and name[-5] == "_" and name[-4:].isdigit() else name


def run_nnunet_reference(model_folder: Path, case_files: list[list[Path]], out_dir: Path, *,
                         folds: Sequence[int | str], mirror: bool, step_size: float = 0.5,
                         save_probabilities: bool = False) -> list[Path]:
    """Predict ``case_files`` (one list of channel files per case) with nnunetv2's nnUNetPredictor.

    Runs on the CPU, sequentially (``predict_from_files_sequential``), Gaussian weighting on.
    Returns one segmentation path per case (``out_dir/<case>.nii.gz``); with ``save_probabilities``
    nnU-Net also writes ``out_dir/<case>.npz`` beside each.
    """
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    predictor = nnUNetPredictor(tile_step_size=step_size, use_gaussian=True, use_mirroring=mirror,
                                perform_everything_on_device=False, device=torch.device("cpu"),
                                verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_folder), use_folds=tuple(folds))
    truncated = [str(out_dir / _case_identifier(Path(files[0]))) for files in case_files]
    predictor.predict_from_files_sequential([[str(f) for f in files] for files in case_files], truncated,
                                            save_probabilities=save_probabilities, overwrite=True)
    return [Path(t + FILE_ENDING) for t in truncated]
