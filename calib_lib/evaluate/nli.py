"""Model-based factual consistency of a summary with its source: SummaC-ZS (Laban et al., 2022).

An NLI model reads (document sentence, summary sentence) pairs; per summary sentence the score is the largest
P(entailment) - P(contradiction) over the document's sentences, and the summary's score is the mean over its
sentences (-1: contradicted, +1: entailed). SummaC's default model is ``tals/albert-xlarge-vitaminc-mnli``
(VitaminC + MNLI); any Hugging Face sequence-classification NLI model works when its labels name entailment
and contradiction (or ``NLI_LABELS`` says which outputs they are).

The model comes from the hub or its local cache (or a local folder). ``nli_model: auto`` is decided when the
spec is made (``auto_choice``): the default model where it can be loaded, else no NLI score, recorded as
unavailable with the reason; the choice is part of the run's key, so a run scored without NLI is never taken
for one scored with it. A model named explicitly is required: a sweep refuses it before any run starts when it
cannot load (``check_nli``).
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from ..errors import InvalidInput, Unavailable

DEFAULT_NLI_MODEL = "tals/albert-xlarge-vitaminc-mnli"
# (entailment index, contradiction index) for models whose config does not name its labels
NLI_LABELS = {"tals/albert-xlarge-vitaminc-mnli": (0, 1)}
MAX_PAIR_TOKENS = 256


def resolve(name: str) -> str:
    return DEFAULT_NLI_MODEL if name == "auto" else name


def _label_indices(name: str, config) -> tuple[int, int]:
    if name in NLI_LABELS:
        return NLI_LABELS[name]
    labels = {int(i): str(label).lower() for i, label in (config.id2label or {}).items()}
    entail = [i for i, label in labels.items() if label.startswith("entail") or label == "supports"]
    contra = [i for i, label in labels.items() if label.startswith("contradict") or label == "refutes"]
    if len(entail) != 1 or len(contra) != 1:
        raise InvalidInput(f"NLI model {name}: its labels {labels} do not name one entailment and one contradiction "
                           "output; add it to calib_lib.evaluate.nli.NLI_LABELS")
    return entail[0], contra[0]


@functools.lru_cache(maxsize=2)
def load_nli(name: str):
    """(tokenizer, model, entailment index, contradiction index); Unavailable, with the reason, when it cannot load."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ..net import hub_reachable
    name = resolve(name)
    local = Path(name).expanduser().is_dir()
    try:
        kwargs = {} if local or hub_reachable() else {"local_files_only": True}
        tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
        model = AutoModelForSequenceClassification.from_pretrained(name, **kwargs).eval()
    except (OSError, ValueError, ImportError) as err:     # a spiece.model tokenizer without sentencepiece: ValueError
        where = "the folder" if local else "the Hugging Face hub or its local cache"
        raise Unavailable(f"NLI model {name} cannot be loaded from {where} ({str(err).splitlines()[0][:120]})") from err
    entail, contra = _label_indices(name, model.config)
    return tokenizer, model, entail, contra


def auto_choice() -> tuple[str | None, str]:
    """What ``nli_model: auto`` means on this machine, decided when a spec is made (so that a run's key says
    whether NLI was scored): (DEFAULT_NLI_MODEL, "") when its files are in the local Hugging Face cache or the
    hub is reachable, else (None, why not)."""
    from ..net import hub_reachable
    try:
        from huggingface_hub import try_to_load_from_cache
        cached = isinstance(try_to_load_from_cache(DEFAULT_NLI_MODEL, "config.json"), str)
    except Exception:                              # an old or unusual hub client: ask the network instead
        cached = False
    if cached or hub_reachable():
        return DEFAULT_NLI_MODEL, ""
    return None, f"{DEFAULT_NLI_MODEL} is not in the local Hugging Face cache and the hub is unreachable"


def check_nli(name: str | None) -> None:
    """A suite that names its NLI model needs it before any run starts; ``auto`` and None need nothing."""
    if name in (None, "auto"):
        return
    load_nli(name)


def consistency(pairs: list[tuple[str, str]], name: str, batch_size: int = 16) -> np.ndarray:
    """SummaC-ZS score of each (document, summary) pair (NaN for an empty summary)."""
    import torch

    from .summary_metrics import sentences
    tokenizer, model, entail, contra = load_nli(name)
    out = np.full(len(pairs), np.nan)
    jobs = []                                       # (pair index, summary sentence index, premise, hypothesis)
    for p, (document, summary) in enumerate(pairs):
        premises = sentences(document) or [document]
        for s, hypothesis in enumerate(sentences(summary)):
            jobs.extend((p, s, premise, hypothesis) for premise in premises)
    scores = np.empty(len(jobs))
    with torch.no_grad():
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start:start + batch_size]
            enc = tokenizer([j[2] for j in chunk], [j[3] for j in chunk], truncation=True,
                            max_length=MAX_PAIR_TOKENS, padding=True, return_tensors="pt")
            probs = torch.softmax(model(**enc).logits.float(), dim=-1)
            scores[start:start + len(chunk)] = (probs[:, entail] - probs[:, contra]).numpy()
    best: dict[tuple[int, int], float] = {}
    for (p, s, _, _), score in zip(jobs, scores):
        best[(p, s)] = max(best.get((p, s), -np.inf), float(score))
    for p in range(len(pairs)):
        per_sentence = [v for (q, _), v in best.items() if q == p]
        if per_sentence:
            out[p] = float(np.mean(per_sentence))
    return out
