"""09's calibration selectors: each a calibration spec override given the profile (``grids.selection_grid``
draws them; ``selection`` compares them). Apart from both so that neither imports the other."""
from __future__ import annotations

from .profiles import resolve_sources

# name -> (calibration override as a function of the profile, where it comes from)
SELECTORS = {
    "random": (lambda p: {}, "random windows (GPTQ-style; the reference)"),
    "coverage": (lambda p: {"strategy": "coverage"}, "ZipCal (Monaco et al. 2026): greedy coverage of distinct tokens"),
    "activation-kmeans": (lambda p: {"strategy": "activation-kmeans"},
                          "COLA (He et al. 2025): k-means medoids of MLP activations"),
    "least-perplexity": (lambda p: {"strategy": "least-perplexity"},
                         "lowest perplexity under the dense model (ZipCal's baseline)"),
    "self": (lambda p: {"source": "self"}, "self-calibration (Williams et al. 2025): generated from BOS"),
    "self-prefix": (lambda p: {"source": "self-prefix", "prefix_source": p.base_source},
                    "Ji et al. (2025): continuations of real prefixes, perplexity-filtered"),
    "mix": (lambda p: {"source": "mix", "mix": {s: 1 / len(resolve_sources(p.sources))
                                                   for s in resolve_sources(p.sources)}},
            "MixCal (2026): a uniform mix of the profile's sources"),
    "document-start": (lambda p: {"strategy": "document-start"},
                       "one sample per document, its first tokens (production tools' default)"),
    "chat": (lambda p: {"strategy": "document-start", "chat_template": True},
             "as document-start, each document a user turn of the chat template"),
}
