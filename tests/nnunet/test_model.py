"""segtrt.nnunet.network / model: networks identical to the ones nnU-Net builds from the same folder."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from segtrt.errors import ModelFolderError
from segtrt.nnunet.model import load_model
from segtrt.nnunet.network import build_network, load_weights

#: A 3-stage PlainConvUNet configuration in plans.json's format (fast tests, no nnU-Net run needed).
TINY_CONFIGURATION = {
    "patch_size": [8, 8, 8],
    "architecture": {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": 3, "features_per_stage": [4, 8, 8], "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
            "n_conv_per_stage": [2, 2, 2], "n_conv_per_stage_decoder": [1, 1], "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    },
}


def _tiny_config(**architecture_changes) -> dict:
    config = {**TINY_CONFIGURATION, "architecture": dict(TINY_CONFIGURATION["architecture"])}
    arch = config["architecture"]
    for key, value in architecture_changes.items():
        if key in arch:
            arch[key] = value
        else:
            arch["arch_kwargs"] = {**arch["arch_kwargs"], key: value}
    return config


def _randomized(network: torch.nn.Module, seed: int) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return network.eval()


def _outputs(network: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return network(x).numpy()


# ------------------------------------------------------------------------------------------------
# fast: network construction and weight loading rules


@pytest.mark.parametrize("changes, message", [
    ({"network_class_name": "builtins.eval"}, "only imports classes from dynamic_network_architectures"),
    ({"network_class_name": "os.system"}, "only imports classes from dynamic_network_architectures"),
    ({"network_class_name": "torch.nn.Conv3d"}, "only imports classes from dynamic_network_architectures"),
    ({"network_class_name": "dynamic_network_architectures.architectures.unet.NoSuchNet"}, "cannot import"),
    ({"nonlin": "subprocess.Popen"}, "only imports classes from torch.nn or dynamic_network_architectures"),
    ({"nonlin": "torch.nn.functional.relu"}, "not a network module class"),
    ({"nonlin": "torch.nn.LeakyReLU; import os"}, "only imports classes"),
    ({"n_stages": 4}, "arch_kwargs do not fit PlainConvUNet"),
], ids=["builtins", "os", "torch_network", "missing_class", "subprocess_kwarg", "function_kwarg", "injection",
        "bad_kwargs"])
def test_build_network_refuses_what_plans_may_not_import(changes, message):
    with pytest.raises(ModelFolderError, match=message):
        build_network(_tiny_config(**changes), 1, 3)


def test_build_network_has_no_deep_supervision():
    network = build_network(TINY_CONFIGURATION, 2, 3).eval()
    output = network(torch.zeros(1, 2, 8, 8, 8))
    assert isinstance(output, torch.Tensor) and output.shape == (1, 3, 8, 8, 8)


def test_load_weights_accepts_aliases_prefixes_and_absent_supervision_heads():
    source = _randomized(build_network(TINY_CONFIGURATION, 1, 3), seed=1)
    x = torch.randn(1, 1, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = _outputs(source, x)
    full = source.state_dict()
    canonical = {k: v for k, v in full.items()
                 if ".all_modules." not in k and not k.startswith("decoder.encoder.")}
    no_heads = {k: v for k, v in full.items() if not k.startswith("decoder.seg_layers.0.")}  # 1 is used
    wrapped = {f"module.{k}": v for k, v in full.items()}
    compiled = {f"_orig_mod.{k}": v for k, v in full.items()}
    for state_dict in (full, canonical, no_heads, wrapped, compiled):
        target = build_network(TINY_CONFIGURATION, 1, 3).eval()
        load_weights(target, state_dict)
        np.testing.assert_allclose(_outputs(target, x), expected, rtol=0, atol=0)
    assert len(canonical) < len(full)


def test_load_weights_is_strict():
    full = build_network(TINY_CONFIGURATION, 1, 3).state_dict()
    target = build_network(TINY_CONFIGURATION, 1, 3)
    missing = {k: v for k, v in full.items() if "stages.0.0.convs.0" not in k}
    with pytest.raises(ModelFolderError, match="missing \\['encoder.stages.0.0.convs.0.conv.weight'"):
        load_weights(target, missing)
    with pytest.raises(ModelFolderError, match="unexpected \\['extra.weight'\\]"):
        load_weights(target, {**full, "extra.weight": torch.zeros(1)})
    last_head = "decoder.seg_layers.1.weight"
    assert last_head in full  # the head used at inference may not be absent
    with pytest.raises(ModelFolderError, match="missing"):
        load_weights(target, {k: v for k, v in full.items() if not k.startswith("decoder.seg_layers.1.")})
    four_classes = build_network(TINY_CONFIGURATION, 1, 4).state_dict()
    with pytest.raises(ModelFolderError, match="do not fit the network built from plans.json: .*size mismatch"):
        load_weights(target, four_classes)


# ------------------------------------------------------------------------------------------------
# slow: real model folders, compared with nnunetv2's predictor


def _nnunet_networks(model_folder: Path, folds: tuple[int, ...]):
    """nnU-Net's own network for each fold, built and loaded the way nnUNetPredictor does."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_folder), use_folds=folds)
    networks = []
    for parameters in predictor.list_of_parameters:
        predictor.network.load_state_dict(parameters)
        networks.append(copy.deepcopy(predictor.network).eval())
    return predictor, networks


@pytest.mark.slow
@pytest.mark.parametrize("spec_kwargs", [{}, {"network": "ResidualEncoderUNet", "modality": "MR", "channels": 2}],
                         ids=["PlainConvUNet", "ResidualEncoderUNet"])
def test_network_matches_nnunet_predictor(nnunet_model_folder, spec_kwargs):
    from nnunet_factory import FactorySpec

    spec = FactorySpec(**spec_kwargs)
    path = nnunet_model_folder(spec)
    model = load_model(path)
    predictor, (reference,) = _nnunet_networks(path, (0,))
    assert type(model.networks[0]) is type(reference)
    assert type(reference).__name__ == spec.network
    assert model.trainer_name == predictor.trainer_name == "nnUNetTrainer"
    assert model.mirror_axes == tuple(predictor.allowed_mirroring_axes) == (0, 1, 2)
    assert not model.networks[0].training
    x = torch.randn(2, spec.channels, *model.folder.patch_size, generator=torch.Generator().manual_seed(3))
    ours, theirs = _outputs(model.networks[0], x), _outputs(reference, x)
    assert ours.shape == (2, spec.num_labels + 1, *model.folder.patch_size)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=0)  # same weights, same ops: bit-identical


@pytest.mark.slow
def test_two_folds_load_their_own_weights(nnunet_model_folder):
    from nnunet_factory import FactorySpec

    path = nnunet_model_folder(FactorySpec(folds=(0, 1)))
    model = load_model(path)
    assert model.folder.folds == ("0", "1")
    _, references = _nnunet_networks(path, (0, 1))
    x = torch.randn(1, 1, *model.folder.patch_size, generator=torch.Generator().manual_seed(4))
    outputs = [_outputs(n, x) for n in model.networks]
    for ours, reference in zip(outputs, references):
        np.testing.assert_allclose(ours, _outputs(reference, x), rtol=0, atol=0)
    assert np.abs(outputs[0] - outputs[1]).max() > 1e-3  # different folds, different networks
    only_fold_1 = load_model(path, folds=[1])
    np.testing.assert_allclose(_outputs(only_fold_1.networks[0], x), outputs[1], rtol=0, atol=0)


@pytest.mark.slow
def test_identity_follows_content_not_location(nnunet_model_folder, tmp_path):
    from nnunet_factory import FactorySpec

    path = nnunet_model_folder(FactorySpec())
    identity = load_model(path).identity
    moved = Path(shutil.copytree(path, tmp_path / "elsewhere"))
    assert load_model(moved).identity == identity

    checkpoint_path = moved / "fold_0" / "checkpoint_final.pth"
    checkpoint = torch.load(checkpoint_path, weights_only=False, map_location="cpu")
    key = next(iter(checkpoint["network_weights"]))
    checkpoint["network_weights"][key].view(-1)[0] += 1e-3
    torch.save(checkpoint, checkpoint_path)
    assert load_model(moved).identity != identity


@pytest.mark.slow
def test_requesting_another_configuration_than_trained_is_an_error(nnunet_model_folder, tmp_path):
    import json

    from nnunet_factory import FactorySpec

    folder = Path(shutil.copytree(nnunet_model_folder(FactorySpec()), tmp_path / "model"))
    plans = json.loads((folder / "plans.json").read_text())
    plans["configurations"]["3d_same"] = {"inherits_from": "3d_fullres"}
    (folder / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(ModelFolderError, match="trained with configuration '3d_fullres', but '3d_same'"):
        load_model(folder, configuration="3d_same")


@pytest.mark.slow
@pytest.mark.gpu
def test_load_model_on_cuda(nnunet_model_folder):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    from nnunet_factory import FactorySpec

    path = nnunet_model_folder(FactorySpec())
    on_cpu, on_gpu = load_model(path), load_model(path, device="cuda")
    assert all(p.device.type == "cuda" for p in on_gpu.networks[0].parameters())
    x = torch.randn(1, 1, *on_cpu.folder.patch_size)
    with torch.no_grad():
        expected = on_cpu.networks[0](x).numpy()
        got = on_gpu.networks[0](x.cuda()).cpu().numpy()
    # cuDNN convolutions run in TF32 by default (10-bit mantissa, ~1e-3 relative error per layer);
    # not measured here (no GPU on the development machine): 1e-2 of the logit range bounds it loosely
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-2 * np.abs(expected).max())


def test_each_checkpoint_is_read_from_disk_once(monkeypatch):
    from pathlib import Path

    from segtrt.config import DEFAULT_MODEL_DIR
    from segtrt.nnunet import load_model
    from segtrt.nnunet.model import model_identity

    reads: list[str] = []
    original = Path.read_bytes

    def counting(self):
        if self.suffix == ".pth":
            reads.append(self.name)
        return original(self)

    monkeypatch.setattr(Path, "read_bytes", counting)
    monkeypatch.setattr("segtrt.nnunet.model.file_sha256", lambda path: (_ for _ in ()).throw(AssertionError(path)))
    model = load_model(DEFAULT_MODEL_DIR)
    assert reads == ["checkpoint_final.pth"], reads  # one fold: the configuration lookup reused the same read
    monkeypatch.undo()
    assert model.identity == model_identity(model.folder)  # the digest of the read equals the file's
