"""Load nnU-Net v2 checkpoints without running arbitrary pickled code.

A ``checkpoint_final.pth`` is a pickled dict (``network_weights``, ``init_args``, ``trainer_name``,
``inference_allowed_mirroring_axes``, ``logging``, ``_best_ema``, optimizer state, ...). Besides
tensors and plain containers it holds numpy scalars (losses and pseudo-Dice values in ``logging``
and ``_best_ema``), which ``torch.load(weights_only=True)`` refuses. We allow exactly the globals
those scalars need, for the duration of one load, and nothing else: any other pickled object is
refused with :class:`UntrustedCheckpointError` unless the user passes ``trust=True``
(``--trust-checkpoint``), which unpickles everything (``weights_only=False``).
"""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segtrt.errors import ModelFolderError, UntrustedCheckpointError

log = logging.getLogger(__name__)

#: numpy's scalar reconstructor (``numpy._core.multiarray.scalar`` on numpy 2,
#: ``numpy.core.multiarray.scalar`` on numpy 1), taken from a scalar so it works on both.
_NUMPY_SCALAR = np.float32(0).__reduce__()[0]


def _numpy_allow_list() -> list[Any]:
    """The extra globals a real nnU-Net checkpoint needs, and no others.

    - the scalar reconstructor, under its numpy-2 name and the numpy-1 name that checkpoints
      written with numpy < 2 (most trained models) refer to;
    - ``numpy.dtype`` and the float32 / float64 dtype classes the unpickler builds: float32 from
      losses and pseudo-Dice; float64 because numpy < 2 promotes ``float32 * python float`` (the
      pseudo-Dice EMA) to float64.
    """
    return [
        _NUMPY_SCALAR,
        (_NUMPY_SCALAR, "numpy.core.multiarray.scalar"),
        (_NUMPY_SCALAR, "numpy._core.multiarray.scalar"),
        np.dtype,
        type(np.dtype(np.float32)),
        type(np.dtype(np.float64)),
    ]


_REFUSAL_PATTERNS = (
    r"GLOBAL (\S+) was not an allowed global",
    r"but got <class '([^']+)'>",
    r"whose module (\S+) is blocked",
)


def _refused_global(message: str) -> str:
    """The global named in torch's weights-only refusal message (or its first line)."""
    for pattern in _REFUSAL_PATTERNS:
        match = re.search(pattern, message)
        if match:
            return match.group(1)
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return lines[-1] if lines else "an unknown object"


def _one_line(text: str, limit: int = 200) -> str:
    """First non-empty line of an error text, shortened: segtrt errors are one line."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    first = lines[0] if lines else ""
    return first if len(first) <= limit else first[: limit - 3] + "..."


def _torch_load(path: Path, *, trust: bool, map_location: Any, mmap: bool, data: bytes | None) -> Any:
    source = path if data is None else io.BytesIO(data)
    mmap = mmap and data is None
    if trust:
        log.warning("loading %s with full unpickling (--trust-checkpoint): it can run arbitrary code", path)
        return torch.load(source, map_location=map_location, weights_only=False, mmap=mmap)
    with torch.serialization.safe_globals(_numpy_allow_list()):
        return torch.load(source, map_location=map_location, weights_only=True, mmap=mmap)


def load_checkpoint(path: str | Path, *, trust: bool = False, map_location: Any = "cpu",
                    mmap: bool = False, data: bytes | None = None) -> dict:
    """Load an nnU-Net checkpoint dict.

    trust: False (default) unpickles only tensors, plain containers and numpy float scalars;
        True unpickles anything (only for checkpoints from a trusted source).
    map_location: where tensors go (checkpoints trained on a GPU are tagged ``cuda:0``; the
        default "cpu" loads them on machines without one).
    mmap: memory-map tensor storages instead of reading them (cheap when only metadata is needed).
    data: the file's bytes, already read (then ``path`` only names it in messages; mmap is ignored).
    Raises ModelFolderError when the file is missing or not a checkpoint, UntrustedCheckpointError
    when it holds an object outside the allow-list.
    """
    path = Path(path)
    if data is None and not path.is_file():
        raise ModelFolderError(f"checkpoint not found: {path}")
    try:
        checkpoint = _torch_load(path, trust=trust, map_location=map_location, mmap=mmap, data=data)
    except pickle.UnpicklingError as error:
        if trust or "Weights only load failed" not in str(error):
            raise ModelFolderError(f"{path} is not a readable PyTorch checkpoint: {_one_line(error)}") from error
        refused = _refused_global(str(error))
        raise UntrustedCheckpointError(
            f"{path} contains a pickled object outside the allow-list for nnU-Net checkpoints ({refused}); "
            "if you trust where this file came from, load it anyway with --trust-checkpoint"
        ) from error
    except Exception as error:  # a damaged or foreign file fails in many ways inside torch/pickle
        raise ModelFolderError(
            f"{path} is not a readable PyTorch checkpoint ({type(error).__name__}: {_one_line(error)})"
        ) from error
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("network_weights"), dict):
        raise ModelFolderError(
            f"{path} is not an nnU-Net checkpoint: expected a dict with 'network_weights', "
            f"got {type(checkpoint).__name__}"
        )
    return checkpoint


class CheckpointReader:
    """Reads each checkpoint file once: its bytes are hashed (sha256, for the model identity) and
    unpickled, and the loaded dict is kept until :meth:`take` hands it over.

    One reader serves a whole start-up (segtrt.nnunet.load_model): the configuration lookup of the first
    fold and the weight loading of every fold, so no checkpoint is read from disk twice.
    """

    def __init__(self, trust: bool = False) -> None:
        self.trust = trust
        self.digests: dict[Path, str] = {}
        self._loaded: dict[Path, dict] = {}

    def __call__(self, path: str | Path) -> dict:
        """The checkpoint at ``path`` (read now, or the dict read earlier)."""
        path = Path(path)
        if path not in self._loaded:
            if not path.is_file():
                raise ModelFolderError(f"checkpoint not found: {path}")
            data = path.read_bytes()
            self.digests[path] = hashlib.sha256(data).hexdigest()
            self._loaded[path] = load_checkpoint(path, trust=self.trust, map_location="cpu", data=data)
        return self._loaded[path]

    def take(self, path: str | Path) -> dict:
        """Like calling the reader, and forget the dict (its tensors are freed once the caller is done)."""
        checkpoint = self(path)
        del self._loaded[Path(path)]
        return checkpoint

