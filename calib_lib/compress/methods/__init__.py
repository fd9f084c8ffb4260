"""Compression methods, found by name through a registry: one small file each."""
from . import awq, pruning, quantization, spqr  # noqa: F401  (registration)
from .base import METHODS, LayerCompressor, LayerwiseMethod, Method

__all__ = ["METHODS", "LayerCompressor", "LayerwiseMethod", "Method"]
