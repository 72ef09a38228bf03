"""segtrt.nnunet.checkpoint: safe loading of nnU-Net checkpoints with a minimal allow-list."""

from __future__ import annotations

import collections
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from segtrt.errors import ModelFolderError, UntrustedCheckpointError
from segtrt.nnunet.checkpoint import load_checkpoint


class ForeignObject:
    """A class no allow-list knows: unpickling it could run arbitrary code."""

    def __init__(self, value: int = 3) -> None:
        self.value = value


class TaggedOrderedDict(collections.OrderedDict):
    """An OrderedDict subclass: a different global than collections.OrderedDict."""


def _nnunet_like_checkpoint() -> dict:
    """The structure nnU-Net's trainer saves, with the numpy scalars it holds in logging/_best_ema."""
    weights = torch.nn.Conv3d(1, 2, 3).state_dict()
    return {
        "network_weights": weights,
        "optimizer_state": {"state": {}, "param_groups": [{"lr": 0.01, "params": [0, 1]}]},
        "grad_scaler_state": None,
        "logging": {"train_losses": [np.float32(0.5), np.float32(0.25)], "ema_fg_dice": [np.float64(0.7)],
                    "dice_per_class_or_region": [[np.float32(0.9), np.float32(0.8)]], "lrs": [0.01, 0.005]},
        "_best_ema": np.float32(0.7),
        "current_epoch": 2,
        "init_args": {"plans": {}, "configuration": "3d_fullres", "fold": 0, "dataset_json": {},
                      "device": torch.device("cpu")},
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }


def _rewrite_pickle(path: Path, replacements: list[tuple[bytes, bytes]]) -> None:
    """Rewrite the pickle inside a torch zip checkpoint (as if written by another numpy/device)."""
    source = path.with_suffix(".orig")
    shutil.move(path, source)
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("/data.pkl"):
                for old, new in replacements:
                    assert old in data, old
                    data = data.replace(old, new)
            zout.writestr(item.filename, data)
    source.unlink()


def _assert_same_checkpoint(loaded: dict, original: dict) -> None:
    assert loaded["network_weights"].keys() == original["network_weights"].keys()
    for key, tensor in original["network_weights"].items():
        torch.testing.assert_close(loaded["network_weights"][key], tensor, rtol=0, atol=0)
    assert loaded["logging"] == original["logging"]
    assert loaded["inference_allowed_mirroring_axes"] == original["inference_allowed_mirroring_axes"]


# ------------------------------------------------------------------------------------------------
# fast: hand-made checkpoints with nnU-Net's structure


def test_allow_list_loads_numpy_scalars_that_plain_weights_only_refuses(tmp_path):
    original = _nnunet_like_checkpoint()
    torch.save(original, tmp_path / "c.pth")
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(tmp_path / "c.pth", weights_only=True)
    loaded = load_checkpoint(tmp_path / "c.pth")
    _assert_same_checkpoint(loaded, original)
    assert type(loaded["_best_ema"]) is np.float32


def test_allow_list_is_scoped_to_the_call(tmp_path):
    torch.save(_nnunet_like_checkpoint(), tmp_path / "c.pth")
    before = set(map(repr, torch.serialization.get_safe_globals()))  # unordered: torch keeps a set
    load_checkpoint(tmp_path / "c.pth")
    assert set(map(repr, torch.serialization.get_safe_globals())) == before
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(tmp_path / "c.pth", weights_only=True)


def test_checkpoint_pickled_with_numpy_1_names_loads(tmp_path):
    """Most trained models were saved with numpy < 2, whose scalar reconstructor lives in numpy.core."""
    original = _nnunet_like_checkpoint()
    torch.save(original, tmp_path / "c.pth")
    _rewrite_pickle(tmp_path / "c.pth", [(b"cnumpy._core.multiarray\nscalar\n", b"cnumpy.core.multiarray\nscalar\n")])
    _assert_same_checkpoint(load_checkpoint(tmp_path / "c.pth"), original)


def test_tensors_tagged_cuda_load_on_cpu(tmp_path):
    original = _nnunet_like_checkpoint()
    torch.save(original, tmp_path / "c.pth")
    # storage locations are pickled as BINUNICODE strings: opcode 'X', 4-byte length, text
    _rewrite_pickle(tmp_path / "c.pth", [(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")])
    loaded = load_checkpoint(tmp_path / "c.pth")
    assert all(t.device.type == "cpu" for t in loaded["network_weights"].values())
    _assert_same_checkpoint(loaded, original)


@pytest.mark.parametrize("foreign", [ForeignObject(), TaggedOrderedDict(a=1)], ids=["custom_class", "ordereddict_subclass"])
def test_foreign_object_is_refused_unless_trusted(tmp_path, foreign):
    checkpoint = _nnunet_like_checkpoint()
    checkpoint["extra"] = foreign
    torch.save(checkpoint, tmp_path / "c.pth")
    with pytest.raises(UntrustedCheckpointError) as info:
        load_checkpoint(tmp_path / "c.pth")
    message = str(info.value)
    assert type(foreign).__name__ in message
    assert "--trust-checkpoint" in message
    assert "\n" not in message
    loaded = load_checkpoint(tmp_path / "c.pth", trust=True)
    assert type(loaded["extra"]) is type(foreign)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(ModelFolderError, match="checkpoint not found: .*nothing.pth"):
        load_checkpoint(tmp_path / "nothing.pth")
    (tmp_path / "garbage.pth").write_bytes(b"this is not a checkpoint")
    with pytest.raises(ModelFolderError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(tmp_path / "garbage.pth")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pth")
    with pytest.raises(ModelFolderError, match="expected a dict with 'network_weights'"):
        load_checkpoint(tmp_path / "plain.pth")


# ------------------------------------------------------------------------------------------------
# slow: checkpoints written by nnU-Net's own trainer


@pytest.mark.slow
def test_real_nnunet_checkpoint_loads_safely(nnunet_model_folder):
    from nnunet_factory import FactorySpec

    path = nnunet_model_folder(FactorySpec()) / "fold_0" / "checkpoint_final.pth"
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(path, weights_only=True, map_location="cpu")
    reference = torch.load(path, weights_only=False, map_location="cpu")
    loaded = load_checkpoint(path)
    assert loaded.keys() == reference.keys()
    _assert_same_checkpoint(loaded, reference)
    assert loaded["init_args"]["configuration"] == "3d_fullres"
    assert loaded["_best_ema"] == reference["_best_ema"]


@pytest.mark.slow
def test_real_checkpoint_with_a_foreign_object_is_refused(nnunet_model_folder, tmp_path):
    from nnunet_factory import FactorySpec

    source = nnunet_model_folder(FactorySpec()) / "fold_0" / "checkpoint_final.pth"
    checkpoint = torch.load(source, weights_only=False, map_location="cpu")
    checkpoint["logging"]["note"] = ForeignObject(7)
    torch.save(checkpoint, tmp_path / "tampered.pth")
    with pytest.raises(UntrustedCheckpointError, match="ForeignObject.*--trust-checkpoint"):
        load_checkpoint(tmp_path / "tampered.pth")
    assert load_checkpoint(tmp_path / "tampered.pth", trust=True)["logging"]["note"].value == 7
