"""Compression: one sequential layer-wise driver and the methods behind one protocol."""
from .driver import compress, decoder_blocks, make_method
from .methods import METHODS

__all__ = ["METHODS", "compress", "decoder_blocks", "make_method"]
