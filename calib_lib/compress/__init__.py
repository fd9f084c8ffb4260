"""Compression: one sequential layer-wise driver and the methods behind one protocol."""
from .blocks import block_linears, decoder_blocks
from .driver import compress, make_method
from .methods import METHODS
from .pipelines import PIPELINES

__all__ = ["METHODS", "PIPELINES", "block_linears", "compress", "decoder_blocks", "make_method"]
