#!/usr/bin/env python
"""Train segtrt's embedded demonstration model and write ``sample_data/``.

The model is a small nnU-Net v2 style 3D U-Net (``PlainConvUNet`` from dynamic-network-architectures,
features 8-16-32-32-32) for four abdominal organs, trained on ONE real CT scan published with
TotalSegmentator (Apache-2.0; see ``/work/shared/data/totalseg_examples/SOURCE.md``):
``example_ct_sm.nii.gz``, 122x101x30 voxels at 3 mm, with TotalSegmentator's labels as targets.

Those labels are outputs of TotalSegmentator, not expert ground truth, and the model is evaluated on
the scan it was trained on: it demonstrates the tool chain; it is not a clinical model and does not
generalise (held out, the example DICOM series of another patient, with contrast, got liver Dice 0.02 to
0.74 over four training seeds during development).

What is written (all in nnU-Net v2.8.1's own formats, so nnU-Net's predictor loads the folder):

    sample_data/
      SOURCE.md                   attribution of the copied data and how the model was made
      example_ct.nii.gz           unchanged copy of example_ct_sm.nii.gz
      example_seg_totalseg.nii.gz unchanged copy of example_seg.nii.gz (TotalSegmentator label ids)
      example_seg.nii.gz          the same segmentation mapped to this model's label ids
      model/dataset.json, model/plans.json, model/fold_0/checkpoint_final.pth

Training departs from nnU-Net's recipe only where a few CPU minutes demand it: AdamW (lr 5e-3, poly
decay) instead of SGD, batch size 1, 260 iterations, flips and intensity scaling as the only
augmentations. The checkpoint therefore holds no optimizer state (``optimizer_state`` is None):
nnU-Net's predictor never reads it; to fine-tune with nnU-Net use ``-pretrained_weights``.

Determinism: fixed seeds, ``torch.use_deterministic_algorithms(True)``, one CPU thread and a fixed
number of iterations. On the same machine and torch build the network weights are bitwise
reproducible; the wall-clock timestamps nnU-Net keeps in the checkpoint's ``logging`` differ per run.

Regenerate (260 iterations, about 8 to 11 minutes on one CPU core of a shared machine)::

    .venv/bin/python scripts/train_sample_model.py \
        --data-dir /work/shared/data/totalseg_examples --out-dir sample_data

Arrays are in SimpleITK order (z, y, x); spacings are in mm in the same order.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn

#: TotalSegmentator ``total`` label id -> this model's label id (kidneys merged).
TOTALSEG_TO_MODEL = {5: 1, 1: 2, 2: 3, 3: 3, 6: 4}
LABELS = {"background": 0, "liver": 1, "spleen": 2, "kidney": 3, "stomach": 4}

SPACING_MM = (3.0, 3.0, 3.0)
PATCH_SIZE = (32, 112, 128)
FEATURES = (8, 16, 32, 32, 32)
STRIDES = ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2))
MIRROR_AXES = (0, 1, 2)
DATASET_NAME = "Dataset999_SegtrtSample"
CONFIGURATION = "3d_fullres"

SEED = 12345
BATCH_SIZE = 1
EPOCHS = 13
ITERATIONS_PER_EPOCH = 20
INITIAL_LR = 5e-3
WEIGHT_DECAY = 3e-5
FOREGROUND_PROBABILITY = 0.5  # share of patches centred on a random voxel of a random present class
DS_LEVELS = 4  # decoder outputs of a 5-stage U-Net with deep supervision
NNUNET_FOREGROUND_SAMPLES = 10e7  # nnU-Net's fingerprint draws this many intensities over the dataset
NNUNET_FINGERPRINT_SEED = 1234


@dataclass(frozen=True)
class Case:
    """One training case at the model's spacing, zero-padded to at least the patch size:
    image (1, z, y, x) float32 normalized, seg (z, y, x) int64."""

    name: str
    image: np.ndarray
    seg: np.ndarray


# ----------------------------------------------------------------------------------------- reading


def read_image(path: Path) -> sitk.Image:
    """Read a NIfTI file with SimpleITK."""
    return sitk.ReadImage(str(path))


def map_labels(totalseg: np.ndarray) -> np.ndarray:
    """Map a TotalSegmentator label map (any shape) to this model's ids; other structures -> 0."""
    out = np.zeros(totalseg.shape, dtype=np.uint8)
    for source_id, model_id in TOTALSEG_TO_MODEL.items():
        out[totalseg == source_id] = model_id
    return out


def array_zyx(image: sitk.Image, dtype: type) -> np.ndarray:
    """Voxel array of ``image`` in (z, y, x) order."""
    return sitk.GetArrayFromImage(image).astype(dtype)


def spacing_zyx(image: sitk.Image) -> list[float]:
    """Voxel spacing of ``image`` in mm, (z, y, x) order."""
    return [float(s) for s in reversed(image.GetSpacing())]


# ------------------------------------------------------------------------------- nnU-Net statistics


def foreground_intensity_properties(images: list[np.ndarray], segs: list[np.ndarray]) -> dict:
    """CT intensity statistics of the labelled voxels, computed the way nnU-Net's fingerprint does.

    nnU-Net draws ``1e8 // n_cases`` intensities per case, with replacement, from the voxels whose
    label is > 0 (``RandomState(1234)`` per case), pools them and takes mean, std, min, max and the
    0.5/50/99.5 percentiles. Inputs: float32 images and label maps of matching shapes (z, y, x) at
    each case's own spacing. Returns nnU-Net's per-channel dict for channel "0".
    """
    per_case = int(NNUNET_FOREGROUND_SAMPLES // len(images))
    drawn = []
    for image, seg in zip(images, segs):
        rs = np.random.RandomState(NNUNET_FINGERPRINT_SEED)
        drawn.append(rs.choice(image[seg > 0], per_case, replace=True))
    pooled = np.concatenate(drawn)
    p005, median, p995 = np.percentile(pooled, (0.5, 50.0, 99.5))
    return {"0": {
        "max": float(np.max(pooled)),
        "mean": float(np.mean(pooled)),
        "median": float(median),
        "min": float(np.min(pooled)),
        "percentile_00_5": float(p005),
        "percentile_99_5": float(p995),
        "std": float(np.std(pooled)),
    }}


def ct_normalize(image: np.ndarray, props: dict) -> np.ndarray:
    """nnU-Net's CTNormalization: clip to the 0.5/99.5 percentiles, subtract mean, divide by std."""
    out = np.clip(image.astype(np.float32), props["percentile_00_5"], props["percentile_99_5"])
    out -= props["mean"]
    out /= max(props["std"], 1e-8)
    return out


# --------------------------------------------------------------------------- plans and dataset.json


def resampling_entries() -> dict:
    """nnU-Net's default resampling functions and kwargs (data order 3, seg/probabilities order 1)."""
    def kwargs(is_seg: bool, order: int) -> dict:
        return {"is_seg": is_seg, "order": order, "order_z": 0, "force_separate_z": None}
    return {
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": kwargs(False, 3),
        "resampling_fn_seg_kwargs": kwargs(True, 1),
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": kwargs(False, 1),
    }


def architecture_entry() -> dict:
    """The ``architecture`` block of the 3d_fullres configuration (a shrunk nnU-Net PlainConvUNet)."""
    n_stages = len(FEATURES)
    return {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": n_stages,
            "features_per_stage": list(FEATURES),
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3]] * n_stages,
            "strides": [list(s) for s in STRIDES],
            "n_conv_per_stage": [2] * n_stages,
            "n_conv_per_stage_decoder": [2] * (n_stages - 1),
            "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def build_plans(fg_props: dict, native_spacings: list[list[float]], native_shapes: list[list[int]],
                shapes_at_target: list[list[int]]) -> dict:
    """plans.json in nnU-Net v2.8.1's schema with one ``3d_fullres`` configuration.

    native_*: each case's spacing (mm) and shape as nnU-Net's fingerprint would see them;
    shapes_at_target: each case's shape at ``SPACING_MM`` (the configuration's median image size).
    """
    configuration = {
        "data_identifier": f"nnUNetPlans_{CONFIGURATION}",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": BATCH_SIZE,
        "patch_size": list(PATCH_SIZE),
        "median_image_size_in_voxels": [float(v) for v in np.median(shapes_at_target, 0)],
        "spacing": list(SPACING_MM),
        "normalization_schemes": ["CTNormalization"],
        "use_mask_for_norm": [False],
        **resampling_entries(),
        "architecture": architecture_entry(),
        "batch_dice": False,
    }
    return {
        "dataset_name": DATASET_NAME,
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [float(v) for v in np.median(native_spacings, 0)],
        "original_median_shape_after_transp": [int(round(v)) for v in np.median(native_shapes, 0)],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {CONFIGURATION: configuration},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": fg_props,
    }


def build_dataset_json(num_training: int) -> dict:
    """dataset.json in nnU-Net v2's schema (one CT channel, NIfTI files)."""
    return {
        "channel_names": {"0": "CT"},
        "labels": dict(LABELS),
        "numTraining": num_training,
        "file_ending": ".nii.gz",
        "name": "segtrt sample: liver, spleen, kidneys, stomach",
        "description": "Demonstration model trained by segtrt's scripts/train_sample_model.py on one CT scan "
                       "with TotalSegmentator labels; not for clinical use.",
        "reference": "Data: github.com/wasserth/TotalSegmentator tests/reference_files (Apache-2.0)",
        "licence": "Apache-2.0",
    }


# ------------------------------------------------------------------------------------------ network


def build_network(plans: dict, num_classes: int, deep_supervision: bool) -> PlainConvUNet:
    """The configuration's PlainConvUNet, initialised as nnU-Net does (He init, neg. slope 1e-2)."""
    kwargs = dict(plans["configurations"][CONFIGURATION]["architecture"]["arch_kwargs"])
    kwargs.update(conv_op=nn.Conv3d, norm_op=nn.InstanceNorm3d, dropout_op=None, nonlin=nn.LeakyReLU)
    network = PlainConvUNet(input_channels=1, num_classes=num_classes, deep_supervision=deep_supervision, **kwargs)
    network.apply(network.initialize)
    return network


# ------------------------------------------------------------------------------------ training data


def pad_to_patch(array: np.ndarray, patch: tuple[int, ...]) -> np.ndarray:
    """Zero-pad the last three axes (centred, extra voxel high) to at least ``patch`` voxels."""
    pads = [(0, 0)] * (array.ndim - 3)
    for size, p in zip(array.shape[-3:], patch):
        extra = max(p - size, 0)
        pads.append((extra // 2, extra - extra // 2))
    return np.pad(array, pads)


def patch_start(rng: np.random.Generator, case: Case, force_fg: bool) -> list[int]:
    """Corner (z, y, x) of a patch inside the padded case; centred on a labelled voxel if ``force_fg``."""
    shape = case.seg.shape
    if force_fg:
        present = [c for c in np.unique(case.seg) if c > 0]
        cls = present[rng.integers(len(present))]
        voxels = np.argwhere(case.seg == cls)
        centre = voxels[rng.integers(len(voxels))]
        return [int(np.clip(c - p // 2, 0, s - p)) for c, p, s in zip(centre, PATCH_SIZE, shape)]
    return [int(rng.integers(s - p + 1)) for p, s in zip(PATCH_SIZE, shape)]


def sample_patch(rng: np.random.Generator, case: Case, force_fg: bool) -> tuple[np.ndarray, np.ndarray]:
    """One augmented patch: image (1, *PATCH_SIZE) float32, seg PATCH_SIZE int64.

    Augmentation: random flips of each axis (the mirroring nnU-Net also uses at test time) and a
    random intensity scale in [0.9, 1.1].
    """
    start = patch_start(rng, case, force_fg)
    box = tuple(slice(s, s + p) for s, p in zip(start, PATCH_SIZE))
    image, seg = case.image[(slice(None), *box)], case.seg[box]
    for axis in range(3):
        if rng.random() < 0.5:
            image, seg = np.flip(image, axis + 1), np.flip(seg, axis)
    image = image * np.float32(rng.uniform(0.9, 1.1))
    return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(seg, dtype=np.int64)


def sample_batch(rng: np.random.Generator, cases: list[Case]) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch: image (B, 1, *PATCH_SIZE) float32, seg (B, *PATCH_SIZE) int64."""
    images, segs = [], []
    for _ in range(BATCH_SIZE):
        case = cases[int(rng.integers(len(cases)))]
        image, seg = sample_patch(rng, case, rng.random() < FOREGROUND_PROBABILITY)
        images.append(image)
        segs.append(seg)
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(segs))


# -------------------------------------------------------------------------------------------- loss


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """nnU-Net-style soft Dice (per sample, foreground classes only): -mean Dice. logits (B, K, z, y, x)."""
    probs = torch.softmax(logits, 1)[:, 1:]
    onehot = F.one_hot(target, logits.shape[1]).movedim(-1, 1)[:, 1:].to(probs.dtype)
    dims = tuple(range(2, logits.ndim))
    intersect = (probs * onehot).sum(dims)
    denominator = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * intersect + smooth) / torch.clamp(denominator + smooth, min=1e-8)
    return -dice.mean()


def deep_supervision_weights() -> list[float]:
    """nnU-Net's weights 1, 1/2, 1/4, ... with the lowest resolution output dropped, summing to 1."""
    weights = np.array([1 / 2 ** i for i in range(DS_LEVELS)])
    weights[-1] = 0
    return list(weights / weights.sum())


def segmentation_loss(outputs: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Dice + cross-entropy over the deep-supervision outputs (highest resolution first)."""
    total = torch.zeros(())
    for weight, logits in zip(deep_supervision_weights(), outputs):
        if weight == 0:
            continue
        small = F.interpolate(target[:, None].float(), size=logits.shape[2:], mode="nearest-exact")
        small = small[:, 0].long()
        total = total + weight * (F.cross_entropy(logits, small) + soft_dice_loss(logits, small))
    return total


# ---------------------------------------------------------------------------------------- training


def validation_batch(cases: list[Case]) -> tuple[torch.Tensor, torch.Tensor]:
    """One fixed patch (seed 0, foreground-centred) per training case for nnU-Net's pseudo Dice log."""
    rng = np.random.default_rng(0)
    pairs = [sample_patch(rng, case, True) for case in cases]
    return torch.from_numpy(np.stack([p[0] for p in pairs])), torch.from_numpy(np.stack([p[1] for p in pairs]))


@torch.no_grad()
def pseudo_dice(network: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[list, float]:
    """Per-class Dice (np.float64, as nnU-Net logs it) over a batch, and the validation loss."""
    network.eval()
    outputs = network(batch[0])
    loss = float(segmentation_loss(outputs, batch[1]))
    predicted = outputs[0].argmax(1)
    dice = []
    for cls in range(1, len(LABELS)):
        tp = np.float64(((predicted == cls) & (batch[1] == cls)).sum())
        fp = np.float64(((predicted == cls) & (batch[1] != cls)).sum())
        fn = np.float64(((predicted != cls) & (batch[1] == cls)).sum())
        dice.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn > 0 else np.float64("nan"))
    network.train()
    return dice, loss


def new_log() -> dict:
    """An empty nnU-Net training log (the ``logging`` entry of its checkpoints)."""
    keys = ("mean_fg_dice", "ema_fg_dice", "dice_per_class_or_region", "train_losses", "val_losses", "lrs",
            "epoch_start_timestamps", "epoch_end_timestamps")
    return {key: [] for key in keys}


def log_epoch(log: dict, losses: list[float], lr: float, val: tuple[list, float], start: float) -> None:
    """Append one epoch to ``log`` with nnU-Net's value types (numpy float64 for metrics)."""
    dice, val_loss = val
    mean_fg = np.nanmean(dice)
    ema = mean_fg if not log["ema_fg_dice"] else log["ema_fg_dice"][-1] * 0.9 + 0.1 * mean_fg
    log["mean_fg_dice"].append(mean_fg)
    log["ema_fg_dice"].append(ema)
    log["dice_per_class_or_region"].append(dice)
    log["train_losses"].append(np.mean(losses))
    log["val_losses"].append(np.float64(val_loss))
    log["lrs"].append(lr)
    log["epoch_start_timestamps"].append(start)
    log["epoch_end_timestamps"].append(time.time())


def poly_lr(iteration: int, total: int) -> float:
    """nnU-Net's polynomial learning-rate decay (exponent 0.9)."""
    return INITIAL_LR * (1 - iteration / total) ** 0.9


def train(network: nn.Module, cases: list[Case], epochs: int, iterations: int, t0: float) -> dict:
    """AdamW with nnU-Net's poly LR decay; prints progress with elapsed time; returns the training log.

    (nnU-Net's SGD, momentum 0.99, learns only the liver within the few hundred iterations a CPU
    affords here; AdamW learns all four organs.)
    """
    optimizer = torch.optim.AdamW(network.parameters(), INITIAL_LR, weight_decay=WEIGHT_DECAY)
    rng = np.random.default_rng(SEED)
    val_batch, log, total = validation_batch(cases), new_log(), epochs * iterations
    network.train()
    for epoch in range(epochs):
        start, losses = time.time(), []
        lr = poly_lr(epoch * iterations, total)
        for it in range(iterations):
            for group in optimizer.param_groups:
                group["lr"] = poly_lr(epoch * iterations + it, total)
            images, segs = sample_batch(rng, cases)
            loss = segmentation_loss(network(images), segs)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
            optimizer.step()
            losses.append(loss.item())
        log_epoch(log, losses, lr, pseudo_dice(network, val_batch), start)
        dice = ", ".join(f"{name} {d:.3f}" for name, d in zip(list(LABELS)[1:], log["dice_per_class_or_region"][-1]))
        print(f"[{time.time() - t0:6.1f} s] epoch {epoch + 1}/{epochs} loss {log['train_losses'][-1]:.4f} "
              f"val loss {log['val_losses'][-1]:.4f} pseudo Dice: {dice}", flush=True)
    return log


# ------------------------------------------------------------------------------------------ writing


def checkpoint_dict(network: nn.Module, log: dict, plans: dict, dataset_json: dict) -> dict:
    """A checkpoint with the keys and value types nnU-Net v2.8.1's trainer saves (float32 CPU weights).

    ``optimizer_state`` is None: the network was trained with AdamW, not the SGD nnUNetTrainer builds.
    """
    # no copies: aliased entries (encoder.* and decoder.encoder.*) keep sharing storage, as in nnU-Net's files
    weights = {k: v.detach().to("cpu", torch.float32) for k, v in network.state_dict().items()}
    return {
        "network_weights": weights,
        "optimizer_state": None,
        "grad_scaler_state": None,  # nnU-Net uses no grad scaler on CPU
        "logging": log,
        "_best_ema": max(log["ema_fg_dice"]),
        "current_epoch": len(log["train_losses"]),
        "init_args": {"plans": plans, "configuration": CONFIGURATION, "fold": 0, "dataset_json": dataset_json,
                      "device": torch.device("cpu")},
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": MIRROR_AXES,
    }


def write_json(path: Path, content: dict) -> None:
    """Write ``content`` as indented JSON (as nnU-Net's save_json does, sort_keys False)."""
    path.write_text(json.dumps(content, indent=4) + "\n")


def write_source_md(data_dir: Path, out_dir: Path) -> None:
    """Copy the data's SOURCE.md and say what was copied where and how the model was made."""
    text = (data_dir / "SOURCE.md").read_text().rstrip("\n")
    text += (
        "\n\n## What segtrt's sample_data/ holds\n\n"
        "- `example_ct.nii.gz`: unchanged copy of `example_ct_sm.nii.gz`.\n"
        "- `example_seg_totalseg.nii.gz`: unchanged copy of `example_seg.nii.gz` (TotalSegmentator ids).\n"
        "- `example_seg.nii.gz`: the TotalSegmentator segmentation mapped to the model's ids (1 liver <- 5, 2 spleen <- 1, "
        "3 kidney <- 2 and 3, 4 stomach <- 6; everything else 0).\n"
        "- `model/`: an nnU-Net v2 model folder (dataset.json, plans.json, fold_0/checkpoint_final.pth) "
        "trained by this project's `scripts/train_sample_model.py` on `example_ct_sm` alone, with the "
        "labels above as targets. It is a small demonstration model, evaluated on its own training scan; "
        "it is not a clinical model and does not generalise to other scans.\n"
    )
    (out_dir / "SOURCE.md").write_text(text)


def write_sample_data(data_dir: Path, out_dir: Path, plans: dict, dataset_json: dict, checkpoint: dict,
                      example_seg: sitk.Image) -> None:
    """Write the model folder, the example copies and SOURCE.md under ``out_dir``."""
    fold_dir = out_dir / "model" / "fold_0"
    fold_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "model" / "dataset.json", dataset_json)
    write_json(out_dir / "model" / "plans.json", plans)
    torch.save(checkpoint, fold_dir / "checkpoint_final.pth")
    shutil.copyfile(data_dir / "example_ct_sm.nii.gz", out_dir / "example_ct.nii.gz")
    shutil.copyfile(data_dir / "example_seg.nii.gz", out_dir / "example_seg_totalseg.nii.gz")
    mapped = sitk.GetImageFromArray(map_labels(sitk.GetArrayFromImage(example_seg)))
    mapped.CopyInformation(example_seg)
    sitk.WriteImage(mapped, str(out_dir / "example_seg.nii.gz"), useCompression=True)
    write_source_md(data_dir, out_dir)


# --------------------------------------------------------------------------------------------- main


def load_example(data_dir: Path) -> tuple[sitk.Image, sitk.Image]:
    """The example CT (int16 HU, 3 mm) and its TotalSegmentator segmentation."""
    return read_image(data_dir / "example_ct_sm.nii.gz"), read_image(data_dir / "example_seg.nii.gz")


def prepare_case(image: np.ndarray, labels: np.ndarray, fg_props: dict) -> Case:
    """CTNormalization, then zero-padding to the patch size (the scan is already at ``SPACING_MM``).

    nnU-Net would also crop to the nonzero box first; a CT is nonzero almost everywhere, so the
    box is the whole scan (checked by tests/test_sample_data.py).
    """
    normalized = ct_normalize(image, fg_props["0"])
    return Case("example_ct", pad_to_patch(normalized[None], PATCH_SIZE), pad_to_patch(labels, PATCH_SIZE))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("/work/shared/data/totalseg_examples"))
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent.parent / "sample_data")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--iterations-per-epoch", type=int, default=ITERATIONS_PER_EPOCH)
    args = parser.parse_args(argv)
    t0 = time.time()
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    ct, seg = load_example(args.data_dir)
    if spacing_zyx(ct) != list(SPACING_MM):
        raise SystemExit(f"expected the example CT at {SPACING_MM} mm, got {spacing_zyx(ct)}")
    image, labels = array_zyx(ct, np.float32), map_labels(array_zyx(seg, np.int64)).astype(np.int64)
    fg_props = foreground_intensity_properties([image], [labels])
    plans = build_plans(fg_props, [spacing_zyx(ct)], [list(image.shape)], [list(image.shape)])
    dataset_json = build_dataset_json(1)
    cases = [prepare_case(image, labels, fg_props)]
    print(f"[{time.time() - t0:6.1f} s] case {cases[0].image.shape}, CT stats {fg_props['0']}", flush=True)

    network = build_network(plans, len(LABELS), deep_supervision=True)
    log = train(network, cases, args.epochs, args.iterations_per_epoch, t0)
    checkpoint = checkpoint_dict(network, log, plans, dataset_json)
    write_sample_data(args.data_dir, args.out_dir, plans, dataset_json, checkpoint, seg)
    print(f"[{time.time() - t0:6.1f} s] wrote {args.out_dir}", flush=True)


if __name__ == "__main__":
    main()
