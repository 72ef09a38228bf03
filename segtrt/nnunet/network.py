"""Build the network described by a plans.json configuration and load checkpoint weights into it.

plans.json names classes as dotted strings (``network_class_name``, and the ``arch_kwargs`` listed
in ``_kw_requires_import``, e.g. ``"torch.nn.modules.conv.Conv3d"``). Only classes defined in
``dynamic_network_architectures`` (the network, and building blocks such as residual blocks) or
``torch.nn`` (convolutions, norms, nonlinearities, dropout) are imported: a plans file cannot make
us import or call anything else.
"""

from __future__ import annotations

import importlib
import logging
import re
from typing import Any, Mapping

import torch

from segtrt.errors import ModelFolderError

log = logging.getLogger(__name__)

NETWORK_PACKAGES = ("dynamic_network_architectures",)
BUILDING_BLOCK_PACKAGES = ("torch.nn", "dynamic_network_architectures")
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")
#: prefixes that wrappers add to state-dict keys: DistributedDataParallel, torch.compile
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _in_packages(module_name: str, packages: tuple[str, ...]) -> bool:
    return any(module_name == p or module_name.startswith(p + ".") for p in packages)


def _import_attribute(dotted: str) -> Any:
    """Import the longest importable module prefix of ``dotted`` and fetch the rest as attributes."""
    parts = dotted.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            obj = getattr(obj, attribute, None)
            if obj is None:
                return None
        return obj
    return None


def resolve_class(dotted: str, packages: tuple[str, ...]) -> type[torch.nn.Module]:
    """The torch.nn.Module subclass named ``dotted``, defined in one of ``packages``."""
    if not isinstance(dotted, str) or not _DOTTED.match(dotted) or not _in_packages(dotted, packages):
        raise ModelFolderError(
            f"plans.json names {dotted!r}; segtrt only imports classes from {' or '.join(packages)}"
        )
    obj = _import_attribute(dotted)
    if obj is None:
        raise ModelFolderError(
            f"plans.json names {dotted!r}, which this installation cannot import; "
            "update dynamic-network-architectures or check the plans"
        )
    if not (isinstance(obj, type) and issubclass(obj, torch.nn.Module) and _in_packages(obj.__module__, packages)):
        raise ModelFolderError(
            f"plans.json names {dotted!r}, which is not a network module class from {' or '.join(packages)}"
        )
    return obj


def build_network(configuration: Mapping[str, Any], num_input_channels: int, num_outputs: int) -> torch.nn.Module:
    """Instantiate the configuration's architecture without deep supervision (weights not loaded).

    The network maps (N, num_input_channels, Z, Y, X) to logits (N, num_outputs, Z, Y, X) for
    patch sizes the plans allow.
    """
    architecture = configuration.get("architecture")
    if not isinstance(architecture, Mapping) or "network_class_name" not in architecture:
        raise ModelFolderError("the configuration has no 'architecture.network_class_name' in plans.json")
    network_class = resolve_class(architecture["network_class_name"], NETWORK_PACKAGES)
    kwargs = dict(architecture.get("arch_kwargs", {}))
    for key in architecture.get("_kw_requires_import", ()):
        if kwargs.get(key) is not None:
            kwargs[key] = resolve_class(kwargs[key], BUILDING_BLOCK_PACKAGES)
    kwargs["deep_supervision"] = False
    try:
        network = network_class(input_channels=num_input_channels, num_classes=num_outputs, **kwargs)
    except (TypeError, ValueError, AssertionError) as error:
        raise ModelFolderError(
            f"plans.json's arch_kwargs do not fit {network_class.__name__}: {error}"
        ) from error
    log.debug("built %s: %d inputs, %d outputs", network_class.__name__, num_input_channels, num_outputs)
    return network


# ----------------------------------------------------------------------------------------------
# weights


def _alias_groups(network: torch.nn.Module) -> list[list[str]]:
    """State-dict keys grouped by the tensor they name.

    dynamic_network_architectures registers modules twice (``.conv`` and ``.all_modules.0``; the
    encoder again as ``decoder.encoder``), so one parameter appears under several keys.
    """
    groups: dict[int, list[str]] = {}
    for key, tensor in network.state_dict(keep_vars=True).items():
        groups.setdefault(id(tensor), []).append(key)
    return list(groups.values())


def _unused_at_inference(network: torch.nn.Module) -> tuple[str, ...]:
    """Key prefixes of the deep-supervision heads, which a network without deep supervision never runs."""
    decoder = getattr(network, "decoder", None)
    heads = getattr(decoder, "seg_layers", None)
    if heads is None or getattr(decoder, "deep_supervision", True):
        return ()
    return tuple(f"decoder.seg_layers.{i}." for i in range(len(heads) - 1))


def _strip_wrappers(state_dict: Mapping[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    stripped = {}
    for key, value in state_dict.items():
        new_key = key
        while new_key not in expected and new_key.startswith(_WRAPPER_PREFIXES):
            new_key = new_key.split(".", 1)[1]
        stripped[new_key] = value
    return stripped


def load_weights(network: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load nnU-Net ``network_weights`` into ``network``, strictly.

    Accepts any one key of each alias group, wrapper prefixes (``module.``, ``_orig_mod.``), and
    absent deep-supervision heads (never run at inference). Any other missing or unexpected key,
    or a shape mismatch, raises ModelFolderError.
    """
    expected = set(network.state_dict().keys())
    weights = _strip_wrappers(state_dict, expected)
    unexpected = sorted(set(weights) - expected)
    optional = _unused_at_inference(network)
    current = network.state_dict()
    full: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    for group in _alias_groups(network):
        present = [k for k in group if k in weights]
        if present:
            full.update({k: weights[present[0]] for k in group})
        elif optional and all(k.startswith(optional) for k in group):
            full.update({k: current[k] for k in group})
            log.debug("checkpoint has no %s (deep-supervision head, unused at inference)", group[0])
        else:
            missing.append(group[0])
    if missing or unexpected:
        raise ModelFolderError(
            f"checkpoint weights do not match the network built from plans.json: missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
        )
    try:
        network.load_state_dict(full, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[-1].strip()
        raise ModelFolderError(f"checkpoint weights do not fit the network built from plans.json: {first}") from error
