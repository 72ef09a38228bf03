"""nnU-Net v2's export (``convert_predicted_logits_to_segmentation_with_correct_shape``) on tensors.

Logits (K, z, y, x) in network order and spacing are resampled back to the cropped shape with the
configuration's probability resampling (order 1, nearest along a separate low-resolution axis by
default), turned into labels (argmax, ties to the first class) or region labels (sigmoid > 0.5,
painted in ``regions_class_order``), pasted into the uncropped shape and transposed back to the input
array order (Z, Y, X). Computation runs on ``device`` (default: the logits' device); logits parked
on the host (segtrt.streaming) move there a few channels at a time.

Resampling is channel-independent, so labels are computed a few channels at a time with a running
argmax: memory grows with the crop volume, not with (number of classes x crop volume).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import torch

from segtrt.errors import ModelFolderError
from segtrt.preprocess import Preprocessed, PreprocessPlan

logger = logging.getLogger(__name__)

#: Upper bound on the bytes of resampled logits held at once while computing labels.
_PASS_BYTES = 1 << 30


def label_dtype(max_label: int) -> torch.dtype:
    """Smallest torch integer dtype holding labels 0..max_label (uint8, int16 or int32)."""
    if max_label <= 255:
        return torch.uint8
    if max_label <= torch.iinfo(torch.int16).max:
        return torch.int16
    return torch.int32


def resample_logits_to_crop(logits: torch.Tensor, pre: Preprocessed, plan: PreprocessPlan) -> torch.Tensor:
    """Logits (K, z, y, x) at network spacing -> (K, *pre.shape_after_cropping), transposed order.

    Keeps the logits' dtype on the spline path (as nnU-Net does); float32 on the torch path.
    """
    return plan.probabilities_resampling.apply(logits, pre.shape_after_cropping, pre.network_spacing,
                                               pre.spacing_transposed, keep_dtype=True)


def logits_to_segmentation(logits: torch.Tensor, pre: Preprocessed, plan: PreprocessPlan,
                           regions_class_order: Sequence[int] | None = None, *,
                           channels_per_pass: int | None = None,
                           device: torch.device | None = None) -> torch.Tensor:
    """Label map (Z, Y, X) in the input's array order and shape, on ``device``.

    logits: (K, z, y, x) network output for the case described by ``pre``, on ``device`` or on the
        host (pinned memory makes the per-pass transfers asynchronous).
    regions_class_order: dataset.json's list for region-based models (one label per channel);
        None for ordinary softmax models, whose label is the argmax channel.
    channels_per_pass: channels resampled at once (default: as many as fit in about 1 GiB).
    device: where resampling and the label map happen (None: the logits' device).
    Returns uint8 (int16/int32 when labels exceed 255); 0 outside the crop box.
    """
    _check_logits(logits, regions_class_order)
    device = logits.device if device is None else torch.device(device)
    if regions_class_order is None:
        dtype = label_dtype(logits.shape[0] - 1)
        labels = _argmax_labels(logits, pre, plan, channels_per_pass, device, dtype)
    else:
        dtype = label_dtype(max(int(c) for c in regions_class_order))
        labels = _region_labels(logits, pre, plan, regions_class_order, dtype, channels_per_pass, device)
    full = torch.zeros(pre.shape_before_cropping, dtype=dtype, device=device)
    full[pre.crop_slices()] = labels.to(dtype)
    return full.permute(plan.transpose_backward).contiguous()


def logits_to_probabilities(logits: torch.Tensor, pre: Preprocessed, plan: PreprocessPlan,
                            regions_class_order: Sequence[int] | None = None, *,
                            channels_per_pass: int | None = None,
                            device: torch.device | None = None) -> torch.Tensor:
    """Probabilities (K, Z, Y, X) float32 in the input's array order, as nnU-Net saves them.

    Softmax over channels (sigmoid per channel for region models). Outside the crop box the
    background channel is 1 and the others 0 (all 0 for region models). Channels are resampled a few
    at a time on ``device`` (None: the logits' device) straight into the result, which lives with
    the logits: host logits give a host result (softmax on the host), so the peak on ``device`` is
    one pass. The result is a permuted view when transpose_backward is not the identity.
    """
    _check_logits(logits, regions_class_order)
    device = logits.device if device is None else torch.device(device)
    full = torch.zeros((logits.shape[0], *pre.shape_before_cropping), dtype=torch.float32,
                       device=logits.device)
    if regions_class_order is None:
        full[0] = 1.0
    inside = full[(slice(None), *pre.crop_slices())]
    for start, chunk in _channel_passes(logits, pre, plan, channels_per_pass, device):
        inside[start:start + chunk.shape[0]] = chunk
    if regions_class_order is None:
        _softmax_(inside)
    else:
        inside.sigmoid_()
    return full.permute(0, *(a + 1 for a in plan.transpose_backward))


def _softmax_(x: torch.Tensor) -> None:
    """Softmax over dim 0 in place (max-shifted, like ``torch.softmax``), without a second copy."""
    x.sub_(x.amax(dim=0, keepdim=True)).exp_()
    x.div_(x.sum(dim=0, keepdim=True))


def _check_logits(logits: torch.Tensor, regions_class_order: Sequence[int] | None) -> None:
    if logits.ndim != 4:
        raise ValueError(f"expected logits of shape (K, z, y, x), got {tuple(logits.shape)}")
    if regions_class_order is not None and len(regions_class_order) != logits.shape[0]:
        raise ModelFolderError(f"dataset.json regions_class_order has {len(regions_class_order)} entries "
                               f"but the network predicts {logits.shape[0]} regions; they must match")


def _channel_passes(logits: torch.Tensor, pre: Preprocessed, plan: PreprocessPlan,
                    channels_per_pass: int | None,
                    device: torch.device) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (first channel, resampled logits of a few channels, on ``device``) over all channels."""
    if channels_per_pass is None:
        voxels = max(1, pre.shape_after_cropping[0] * pre.shape_after_cropping[1]
                     * pre.shape_after_cropping[2])
        channels_per_pass = max(1, _PASS_BYTES // (4 * voxels))
    for start in range(0, logits.shape[0], channels_per_pass):
        chunk = logits[start:start + channels_per_pass].to(device, non_blocking=True)
        yield start, resample_logits_to_crop(chunk, pre, plan)


def _argmax_labels(logits: torch.Tensor, pre: Preprocessed, plan: PreprocessPlan,
                   channels_per_pass: int | None, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Running argmax over channel passes; a later channel wins only when strictly larger.

    The running index is kept in the label ``dtype`` (uint8 for up to 256 classes), not argmax's
    int64: for a 600 x 512 x 512 crop that is 0.16 GB instead of 1.26 GB per index volume.
    """
    best_value = best_index = None
    for start, chunk in _channel_passes(logits, pre, plan, channels_per_pass, device):
        wide = chunk.argmax(dim=0)
        value = chunk.gather(0, wide[None])[0]
        index = wide.to(dtype)
        del wide, chunk
        if start:
            index += start
        if best_value is None:
            best_value, best_index = value, index
            continue
        better = value > best_value
        torch.maximum(best_value, value, out=best_value)
        best_index = torch.where(better, index, best_index)
    return best_index


def _region_labels(logits: torch.Tensor, pre: Preprocessed, plan: PreprocessPlan,
                   regions_class_order: Sequence[int], dtype: torch.dtype,
                   channels_per_pass: int | None, device: torch.device) -> torch.Tensor:
    """Paint ``regions_class_order[i]`` where sigmoid(channel i) > 0.5, later regions on top."""
    labels = torch.zeros(pre.shape_after_cropping, dtype=dtype, device=device)
    for start, chunk in _channel_passes(logits, pre, plan, channels_per_pass, device):
        for offset in range(chunk.shape[0]):
            inside = torch.sigmoid(chunk[offset].float()) > 0.5
            labels.masked_fill_(inside, int(regions_class_order[start + offset]))
    return labels
