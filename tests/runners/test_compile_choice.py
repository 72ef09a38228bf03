"""``--compile auto``: the packages when segtrt's cache has every fold's, eager otherwise, and the reason why."""

from __future__ import annotations

import pytest
import torch

from segtrt.config import PredictSettings
from segtrt.runners import compile_choice, compiled_cache
from tiny_nets import conv_net

SHAPE = (4, 1, 32, 112, 128)
CUDA = torch.device("cuda", 0)


def test_an_explicit_value_is_kept():
    for value in ("off", "default", "aot"):
        choice = compile_choice.choose([conv_net()], [0], SHAPE, PredictSettings(compile=value), torch.device("cpu"))
        assert (choice.requested, choice.chosen, choice.reason) == (value, value, f"requested --compile {value}")


def test_auto_on_the_cpu_is_eager_without_looking(monkeypatch):
    monkeypatch.setattr(compiled_cache, "find", lambda *a, **k: pytest.fail("no lookup on the CPU"))
    choice = compile_choice.choose([conv_net()], [0], SHAPE, PredictSettings(), torch.device("cpu"))
    assert choice.describe()["requested"] == "auto" and choice.chosen == "off" and "auto on cpu" in choice.reason


@pytest.fixture
def gpu_cache(monkeypatch, tmp_path):
    """The lookup as on a GPU without one: ``find`` answers from ``cached`` (network, precision, layout, fp16 copy)
    and records every question in ``asked``."""
    asked, cached = [], set()

    def find(network, shape, precision, channels_last, mode="default", *, device, root=None, half_weights=False):
        asked.append({"shape": shape, "precision": precision, "channels_last": channels_last, "mode": mode,
                      "half_weights": half_weights, "device": device})
        entry = (id(network), precision, channels_last, half_weights)
        return (tmp_path / "compiled" / "x.pt2" if entry in cached else None), f"digest of {id(network)}"

    monkeypatch.setattr(compiled_cache, "find", find)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    monkeypatch.setenv("SEGTRT_CACHE_DIR", str(tmp_path))
    return asked, cached


def test_auto_loads_the_packages_when_every_fold_has_one(gpu_cache):
    asked, cached = gpu_cache
    nets = [conv_net(seed=0), conv_net(seed=1)]
    cached.update({(id(n), "fp16", True, True) for n in nets})
    choice = compile_choice.choose(nets, [0, 1], SHAPE, PredictSettings(precision="fp16"), CUDA)
    assert choice.chosen == "aot" and "every fold" in choice.reason and "NVIDIA H200" in choice.reason
    assert choice.digests == tuple(f"digest of {id(n)}" for n in nets)  # handed to the runners: hashed once
    # what the runner itself will use on CUDA in fp16: channels-last, the fp16 weight copy, inductor's default mode
    assert asked == [{"shape": SHAPE, "precision": "fp16", "channels_last": True, "mode": "default",
                      "half_weights": True, "device": CUDA}] * 2


def test_a_missing_fold_means_eager_and_the_command_that_builds_it(gpu_cache):
    asked, cached = gpu_cache
    nets = [conv_net(seed=0), conv_net(seed=1)]
    cached.add((id(nets[0]), "fp32", True, False))
    choice = compile_choice.choose(nets, [0, 1], SHAPE, PredictSettings(), CUDA)  # fp32, the default
    assert choice.chosen == "off" and "no compiled package for fold 1 " in choice.reason and choice.digests == ()
    assert "`segtrt build MODEL_DIR --compile aot --precision fp32 --batch-size 4`" in choice.reason
    assert [a["half_weights"] for a in asked] == [False, False]


def test_layout_and_weight_options_are_looked_up_and_repeated_in_the_hint(gpu_cache):
    asked, _ = gpu_cache
    settings = PredictSettings(precision="fp16", channels_last="off", half_weights="off", batch_size=2)
    choice = compile_choice.choose([conv_net()], [0], (2, *SHAPE[1:]), settings, CUDA)
    assert asked[0]["channels_last"] is False and asked[0]["half_weights"] is False and asked[0]["shape"][0] == 2
    assert choice.chosen == "off" and "--batch-size 2 --channels-last off --half-weights off`" in choice.reason


@pytest.mark.parametrize("option", [{"cuda_graph": True}, {"freeze": "on"}, {"precompile": "on"},
                                    {"half_weights": "on"}])
def test_auto_stays_eager_with_options_packages_do_not_take(gpu_cache, option):
    asked, _ = gpu_cache
    choice = compile_choice.choose([conv_net()], [0], SHAPE, PredictSettings(**option), CUDA)
    assert choice.chosen == "off" and choice.reason.startswith("auto with --") and asked == []
