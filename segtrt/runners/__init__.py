"""Runners: one small interface in front of every network backend (torch, ONNX Runtime, TensorRT)."""

from segtrt.runners.base import Runner

__all__ = ["Runner"]
