"""segtrt: fast, faithful inference for nnU-Net v2 models (torch, ONNX Runtime, TensorRT)."""

__version__ = "0.1.0"
