"""Load a trained nnU-Net model folder into ready-to-run torch networks, one per fold."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from segtrt.errors import ModelFolderError
from segtrt.nnunet.checkpoint import CheckpointReader
from segtrt.nnunet.folder import DEFAULT_CHECKPOINT, ModelFolder, read_model_folder
from segtrt.nnunet.network import build_network, load_weights
from segtrt.io.hashing import file_sha256

log = logging.getLogger(__name__)

_HASH_CHUNK = 1 << 20


@dataclass
class LoadedModel:
    """The networks of a model folder, in eval mode on one device.

    networks: one per fold, in ``folder.folds`` order; each maps (N, C, Z, Y, X) float32 to
        logits (N, K, Z, Y, X) with C = folder.num_input_channels, K = folder.num_segmentation_heads.
    mirror_axes: spatial axes (0 = z, 1 = y, 2 = x of the network input) allowed for test-time
        mirroring, from the first checkpoint; () when it allows none.
    identity: sha256 hex digest over plans.json, dataset.json, the configuration name and every
        fold's checkpoint bytes; the same files give the same identity wherever they are.
    """

    folder: ModelFolder
    networks: list[torch.nn.Module]
    mirror_axes: tuple[int, ...]
    trainer_name: str
    identity: str


def model_identity(folder: ModelFolder, checkpoint_digests: dict[Path, str] | None = None) -> str:
    """sha256 over plans.json, dataset.json, the configuration name and each fold's checkpoint.

    checkpoint_digests: sha256 hex digests of checkpoint files already read (CheckpointReader.digests);
    a checkpoint's digest stands for its bytes, so such files are not read again.
    """
    digest = hashlib.sha256()
    known = checkpoint_digests or {}

    def add(label: str, path: Path | None = None, text: str | None = None) -> None:
        digest.update(f"\0{label}\0".encode())
        if text is not None:
            digest.update(text.encode())
            return
        with open(path, "rb") as handle:
            while chunk := handle.read(_HASH_CHUNK):
                digest.update(chunk)

    add("plans.json", folder.path / "plans.json")
    add("dataset.json", folder.path / "dataset.json")
    add("configuration", text=folder.configuration_name)
    for fold in folder.folds:
        path = folder.checkpoint_path(fold)
        if path in known:
            add(f"fold_{fold} sha256", text=known[path])
        else:
            add(f"fold_{fold} sha256", text=file_sha256(path))
    return digest.hexdigest()


def _mirror_axes(checkpoint: dict, path: Path) -> tuple[int, ...]:
    axes = checkpoint.get("inference_allowed_mirroring_axes")
    if axes is None:
        return ()
    try:
        result = tuple(int(a) for a in axes)
    except (TypeError, ValueError) as error:
        raise ModelFolderError(f"{path}: inference_allowed_mirroring_axes is {axes!r}; expected axes 0..2") from error
    if any(a not in (0, 1, 2) for a in result):
        raise ModelFolderError(f"{path}: inference_allowed_mirroring_axes is {axes!r}; expected axes 0..2")
    return result


def _check_configuration(checkpoint: dict, folder: ModelFolder, path: Path) -> None:
    recorded = (checkpoint.get("init_args") or {}).get("configuration")
    if isinstance(recorded, str) and recorded != folder.configuration_name:
        raise ModelFolderError(
            f"{path} was trained with configuration '{recorded}', but '{folder.configuration_name}' was "
            f"requested; use --configuration {recorded}"
        )


def _load_fold(folder: ModelFolder, fold: str, read: CheckpointReader,
               device: torch.device) -> tuple[torch.nn.Module, dict]:
    path = folder.checkpoint_path(fold)
    checkpoint = read.take(path)
    _check_configuration(checkpoint, folder, path)
    network = build_network(folder.configuration, folder.num_input_channels, folder.num_segmentation_heads)
    try:
        load_weights(network, checkpoint["network_weights"])
    except ModelFolderError as error:
        raise ModelFolderError(f"fold {fold} ({path}): {error}") from error
    return network.to(device).eval(), checkpoint


def load_model(path: str | Path, *, configuration: str | None = None, folds: Sequence[int | str] | None = None,
               checkpoint_name: str = DEFAULT_CHECKPOINT, trust: bool = False,
               device: str | torch.device = "cpu") -> LoadedModel:
    """Read a model folder and load every requested fold's network onto ``device``.

    See :func:`read_model_folder` for ``configuration``/``folds`` defaults and
    :func:`load_checkpoint` for ``trust``.
    """
    device = torch.device(device)
    read = CheckpointReader(trust)  # every checkpoint is read from disk once: hashed, unpickled, used
    folder = read_model_folder(path, configuration, folds, checkpoint_name, trust=trust, read_checkpoint=read)
    networks: list[torch.nn.Module] = []
    mirror_axes: tuple[int, ...] = ()
    trainer_name = ""
    for index, fold in enumerate(folder.folds):
        network, checkpoint = _load_fold(folder, fold, read, device)
        networks.append(network)
        axes = _mirror_axes(checkpoint, folder.checkpoint_path(fold))
        if index == 0:
            mirror_axes, trainer_name = axes, str(checkpoint.get("trainer_name", ""))
        elif axes != mirror_axes:
            log.warning("fold %s allows mirroring axes %s, fold %s %s; using %s as nnU-Net does",
                        fold, axes, folder.folds[0], mirror_axes, mirror_axes)
    log.info("loaded %s (%s, folds %s, trainer %s) on %s", folder.path, folder.configuration_name,
             ",".join(folder.folds), trainer_name or "unknown", device)
    return LoadedModel(folder=folder, networks=networks, mirror_axes=mirror_axes, trainer_name=trainer_name,
                       identity=model_identity(folder, read.digests))


def describe(model: LoadedModel) -> dict[str, Any]:
    """What was loaded, for run reports."""
    folder = model.folder
    return {"model_folder": str(folder.path), "configuration": folder.configuration_name,
            "folds": list(folder.folds), "trainer": model.trainer_name, "identity": model.identity,
            "mirror_axes": list(model.mirror_axes)}
