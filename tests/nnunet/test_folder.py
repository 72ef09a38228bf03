"""segtrt.nnunet.folder on real nnU-Net model folders, checked against nnunetv2's own plans handling.

Every test here reads a model folder made by nnU-Net's planner and trainer (tests/nnunet_factory.py,
built once per session); tests that change files work on a copy in tmp_path.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from segtrt.errors import ModelFolderError
from segtrt.nnunet.folder import read_model_folder

pytestmark = pytest.mark.slow

import nnunet_factory
@pytest.fixture
def model_copy(nnunet_model_folder, tmp_path) -> Path:
    """A private copy of the default factory model folder, free to modify."""
    return Path(shutil.copytree(nnunet_model_folder(nnunet_factory.FactorySpec()), tmp_path / "model"))


def _edit_json(path: Path, edit) -> None:
    content = json.loads(path.read_text())
    edit(content)
    path.write_text(json.dumps(content, indent=2))


def _nnunet_managers(folder: Path, configuration: str):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = PlansManager(json.loads((folder / "plans.json").read_text()))
    return plans, plans.get_configuration(configuration)


def test_reads_factory_folder_like_nnunet(nnunet_model_folder):
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    path = nnunet_model_folder(nnunet_factory.FactorySpec())
    folder = read_model_folder(path)
    checkpoint = torch.load(path / "fold_0" / "checkpoint_final.pth", weights_only=False, map_location="cpu")
    plans, config = _nnunet_managers(path, checkpoint["init_args"]["configuration"])
    dataset = json.loads((path / "dataset.json").read_text())
    labels = plans.get_label_manager(dataset)

    assert folder.configuration_name == checkpoint["init_args"]["configuration"] == "3d_fullres"
    assert folder.folds == ("0",)
    assert folder.checkpoint_path("0") == path / "fold_0" / "checkpoint_final.pth"
    assert folder.configuration == config.configuration
    assert folder.patch_size == tuple(config.patch_size)
    assert folder.spacing == tuple(config.spacing)
    assert folder.num_input_channels == determine_num_input_channels(plans, config, dataset)
    assert folder.num_segmentation_heads == labels.num_segmentation_heads
    assert folder.regions_class_order is None and not labels.has_regions
    assert folder.channel_names == ("CT",)
    assert folder.file_ending == dataset["file_ending"] == ".nii.gz"
    assert folder.transpose_forward == tuple(plans.transpose_forward)
    assert folder.transpose_backward == tuple(plans.transpose_backward)


def test_inherits_from_resolves_like_nnunet(model_copy):
    def add_children(plans: dict) -> None:
        plans["configurations"]["3d_child"] = {"inherits_from": "3d_fullres", "patch_size": [24, 24, 24],
                                               "batch_size": 4}
        plans["configurations"]["3d_grandchild"] = {"inherits_from": "3d_child", "spacing": [2.0, 2.0, 2.0]}

    _edit_json(model_copy / "plans.json", add_children)
    folder = read_model_folder(model_copy, configuration="3d_grandchild")
    _, reference = _nnunet_managers(model_copy, "3d_grandchild")
    expected = {k: v for k, v in reference.configuration.items() if k != "inherits_from"}
    assert folder.configuration == expected
    assert folder.patch_size == (24, 24, 24) and folder.spacing == (2.0, 2.0, 2.0)
    assert folder.configuration["architecture"] == json.loads((model_copy / "plans.json").read_text())[
        "configurations"]["3d_fullres"]["architecture"]


def test_circular_inheritance_is_an_error(model_copy):
    def add_cycle(plans: dict) -> None:
        plans["configurations"]["a"] = {"inherits_from": "b"}
        plans["configurations"]["b"] = {"inherits_from": "a"}

    _edit_json(model_copy / "plans.json", add_cycle)
    with pytest.raises(ModelFolderError, match="inherit in a circle: a -> b -> a"):
        read_model_folder(model_copy, configuration="a")


@pytest.mark.parametrize("name", ["dataset.json", "plans.json"])
def test_missing_json_names_the_path(model_copy, name):
    (model_copy / name).unlink()
    with pytest.raises(ModelFolderError) as info:
        read_model_folder(model_copy)
    assert str(model_copy / name) in str(info.value)


def test_missing_fold_or_checkpoint_names_the_path(model_copy, tmp_path):
    with pytest.raises(ModelFolderError) as info:
        read_model_folder(model_copy, folds=(0, 3))
    assert str(model_copy / "fold_3" / "checkpoint_final.pth") in str(info.value)
    with pytest.raises(ModelFolderError) as info:
        read_model_folder(model_copy, folds=(0,), checkpoint_name="checkpoint_latest.pth")
    assert str(model_copy / "fold_0" / "checkpoint_latest.pth") in str(info.value)
    (model_copy / "fold_0" / "checkpoint_final.pth").unlink()
    with pytest.raises(ModelFolderError, match="no fold_\\*/checkpoint_final.pth"):
        read_model_folder(model_copy)
    with pytest.raises(ModelFolderError, match="model folder not found"):
        read_model_folder(tmp_path / "nowhere")


def test_2d_configuration_is_refused(model_copy):
    plans = json.loads((model_copy / "plans.json").read_text())
    assert "2d" in plans["configurations"]  # nnU-Net always plans a 2d configuration
    with pytest.raises(ModelFolderError, match="segtrt runs 3D configurations; '2d' .* 2d patches .*3d_fullres"):
        read_model_folder(model_copy, configuration="2d")


def test_unknown_configuration_lists_choices(model_copy):
    with pytest.raises(ModelFolderError, match=r"'3d_lowres' is not in plans.json; available: \['2d', '3d_fullres'\]"):
        read_model_folder(model_copy, configuration="3d_lowres")


def test_cascade_stage_is_refused(model_copy):
    _edit_json(model_copy / "plans.json", lambda p: p["configurations"].update(
        {"3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}}))
    with pytest.raises(ModelFolderError, match="cascade stage"):
        read_model_folder(model_copy, configuration="3d_cascade_fullres")


def test_folds_are_detected_like_nnunet(model_copy):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    for name in ("fold_10", "fold_2", "fold_all"):
        shutil.copytree(model_copy / "fold_0", model_copy / name)
    (model_copy / "fold_5").mkdir()  # no checkpoint: not a usable fold
    folder = read_model_folder(model_copy)
    reference = nnUNetPredictor.auto_detect_available_folds(str(model_copy), "checkpoint_final.pth")
    assert folder.folds == ("0", "2", "10")
    assert sorted(reference) == [0, 2, 10]
    assert read_model_folder(model_copy, folds=["all", 2]).folds == ("all", "2")

    for name in ("fold_0", "fold_2", "fold_10"):
        shutil.rmtree(model_copy / name)
    assert read_model_folder(model_copy).folds == ("all",)


def _drop_init_args(checkpoint_path: Path) -> None:
    checkpoint = torch.load(checkpoint_path, weights_only=False, map_location="cpu")
    del checkpoint["init_args"]
    torch.save(checkpoint, checkpoint_path)


def test_configuration_falls_back_to_the_only_3d_one(model_copy):
    _drop_init_args(model_copy / "fold_0" / "checkpoint_final.pth")
    assert read_model_folder(model_copy).configuration_name == "3d_fullres"
    _edit_json(model_copy / "plans.json", lambda p: p["configurations"].update(
        {"3d_lowres": {"inherits_from": "3d_fullres", "spacing": [2.0, 2.0, 2.0]}}))
    with pytest.raises(ModelFolderError, match=r"2 3D configurations \['3d_fullres', '3d_lowres'\]"):
        read_model_folder(model_copy)


def test_regions_match_nnunet_label_manager(model_copy):
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    def to_regions(dataset: dict) -> None:
        dataset["labels"] = {"background": 0, "whole": [1, 2], "core": 2}
        dataset["regions_class_order"] = [1, 2]

    _edit_json(model_copy / "dataset.json", to_regions)
    folder = read_model_folder(model_copy)
    dataset = json.loads((model_copy / "dataset.json").read_text())
    reference = LabelManager(dataset["labels"], dataset["regions_class_order"])
    assert folder.has_regions and reference.has_regions
    assert folder.num_segmentation_heads == reference.num_segmentation_heads == 2
    assert folder.regions_class_order == (1, 2)

    _edit_json(model_copy / "dataset.json", lambda d: d.pop("regions_class_order"))
    with pytest.raises(ModelFolderError, match="regions_class_order"):
        read_model_folder(model_copy)


def test_old_plans_without_architecture_are_refused(model_copy):
    _edit_json(model_copy / "plans.json", lambda p: p["configurations"]["3d_fullres"].pop("architecture"))
    with pytest.raises(ModelFolderError, match="has no 'architecture'"):
        read_model_folder(model_copy)
