"""Compression: one sequential layer-wise driver and the methods behind one protocol; vocabulary pruning
(``vocabulary``), which shrinks the embedding and head instead."""
from .blocks import block_linears, decoder_blocks
from .driver import compress, make_method
from .methods import METHODS
from .pipelines import PIPELINES
from .vocabulary import VocabularyPruning, prune_vocabulary

__all__ = ["METHODS", "PIPELINES", "VocabularyPruning", "block_linears", "compress", "decoder_blocks", "make_method",
           "prune_vocabulary"]
