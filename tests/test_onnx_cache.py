"""segtrt.onnx_cache: exports keyed by content, reused, and exported again when the cached file is
corrupt or belongs to another model."""

from __future__ import annotations

import logging
import types

import onnx
import torch
from torch import nn

from segtrt.config import PredictSettings
from segtrt.onnx_cache import cached_exports


def tiny_model(identity: str = "model-a") -> types.SimpleNamespace:
    """What cached_exports reads of a LoadedModel: one fold of a Conv3d -> InstanceNorm -> 1x1 Conv net."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.InstanceNorm3d(4, affine=True), nn.Conv3d(4, 2, 1)).eval()
    folder = types.SimpleNamespace(folds=("0",), patch_size=(8, 8, 8), num_input_channels=1, path="tiny",
                                   configuration_name="3d_fullres", labels={"background": 0, "thing": 1})
    return types.SimpleNamespace(folder=folder, networks=[net], identity=identity, mirror_axes=(0, 1, 2))


def test_corrupt_cached_export_is_exported_again(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="segtrt.onnx_cache")
    model, settings = tiny_model(), PredictSettings(device="cpu", backend="onnxruntime")
    (path,) = cached_exports(model, settings, root=tmp_path)
    original = path.read_bytes()
    path.write_bytes(original[: len(original) // 3])  # an interrupted copy of the cache
    (again,) = cached_exports(model, settings, root=tmp_path)
    assert again == path and "unusable, exporting it again" in caplog.text
    onnx.checker.check_model(onnx.load(str(again)))
    caplog.clear()
    cached_exports(model, settings, root=tmp_path)
    assert "reusing cached ONNX" in caplog.text and "again" not in caplog.text
