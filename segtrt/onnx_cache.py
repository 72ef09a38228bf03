"""On-the-fly ONNX exports for ``--backend onnxruntime|tensorrt``, cached by content.

The key is a sha256 over the model identity (plans, dataset, checkpoint bytes), the fold, the
export options and the exporting versions, never a file time. Exports are dynamic-batch so one
file serves every ``--batch-size``; each is written atomically under a lock, so two processes
exporting the same model neither corrupt nor duplicate it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from segtrt import __version__
from segtrt.config import PredictSettings, cache_dir
from segtrt.errors import SegtrtError
from segtrt.io.locking import file_lock

log = logging.getLogger(__name__)


def export_key(identity: str, fold: str, options: dict) -> str:
    """sha256 over what makes an export differ: model, fold, options, segtrt and torch versions."""
    body = {"identity": identity, "fold": str(fold), "options": options,
            "segtrt": __version__, "torch": torch.__version__}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def usable_export(path: Path, identity: str, fold: str) -> bool:
    """True when the cached ``path`` is a readable ONNX file exported from this model's fold; a corrupt
    or foreign file is logged and False (the caller exports it again in its place)."""
    from segtrt.onnx_metadata import read_metadata

    try:
        meta = read_metadata(path)
    except SegtrtError as error:
        log.warning("cached ONNX %s is unusable, exporting it again: %s", path, error)
        return False
    if meta.get("model_identity") != identity or str(meta.get("fold")) != str(fold):
        log.warning("cached ONNX %s belongs to model %s fold %s, not to this one; exporting it again", path,
                    meta.get("model_identity"), meta.get("fold"))
        return False
    return True


def cached_exports(model, settings: PredictSettings, root: Path | None = None) -> list[Path]:
    """One checked ONNX file per fold of ``model`` (a LoadedModel), exported on first use."""
    from segtrt.export import export_onnx, model_metadata

    root = (root or cache_dir()) / "onnx"
    options = {"precision": settings.precision, "dynamic_batch": True}
    folder = model.folder
    paths = []
    for fold, network in zip(folder.folds, model.networks):
        path = root / f"{export_key(model.identity, fold, options)}.onnx"
        with file_lock(path.with_suffix(".lock")):
            if path.exists() and usable_export(path, model.identity, fold):
                log.info("fold %s: reusing cached ONNX %s", fold, path)
            else:
                log.info("fold %s: exporting %s ONNX to %s (first use)", fold, settings.precision, path)
                export_onnx(network, path,
                            patch_size=folder.patch_size, in_channels=folder.num_input_channels,
                            metadata=model_metadata(model, fold), **options)
        paths.append(path)
    return paths
