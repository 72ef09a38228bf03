"""Reading trained nnU-Net v2 model folders: plans, dataset, checkpoints, networks."""

from segtrt.nnunet.checkpoint import CheckpointReader, load_checkpoint
from segtrt.nnunet.folder import ModelFolder, read_model_folder, resolve_configuration
from segtrt.nnunet.model import LoadedModel, load_model, model_identity
from segtrt.nnunet.network import build_network, load_weights

__all__ = [
    "LoadedModel",
    "ModelFolder",
    "build_network",
    "CheckpointReader",
    "load_checkpoint",
    "load_model",
    "load_weights",
    "model_identity",
    "read_model_folder",
    "resolve_configuration",
]
