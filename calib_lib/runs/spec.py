"""RunSpec: (model, method and its parameters, calibration spec, evaluation suite) and its stable key.

A spec is written as YAML/JSON:

    model: smollm2-135m
    method: {name: sparsegpt, sparsity: 0.5}
    calibration: {source: news, num_samples: 32, seq_len: 512, seed: 0, set_index: 0}
    eval: quick                       # a suite name or a suite mapping
    vocabulary: suite                 # optional: prune the embedding and head to these token ids (below)

``vocabulary`` (``compress.vocabulary``) runs after the method, on the compressed model: ``suite`` keeps the
tokens of the evaluation data itself (Williams & Aletras 2023's dynamic setting), ``{ids: calibration,
calibration: {...}}`` every token of a calibration set, ``{ids: frequent, k: 8192, calibration: {...}}`` the
k most frequent tokens of one. ``calibration`` may be left out when the run's method has a calibration set:
the vocabulary then comes from that very set (written out in the key).

Everything is checked before any run starts; an error names the field's path (``method.sparsity``).
The key is a sha256 of the normalised spec plus the ``version`` of every component that produces the
run's numbers (``component_versions``: model loading, calibration source and strategy, method, compression
pipeline, evaluation protocol). Rerunning the same spec is a cache hit; a component whose numbers changed
bumps its version, so its runs are recomputed; a refactor that changes no number keeps every stored run.
``tests/test_golden.py`` holds each version to its outputs on a tiny model.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields

from ..errors import FieldError, InvalidInput

TOP_LEVEL = {"model", "method", "calibration", "eval", "dtype", "batch_size", "replicate", "vocabulary"}
# Where a pruned vocabulary's token ids come from (``VocabularySpec.ids``).
VOCABULARY_ORIGINS = {"suite": "the evaluation suite's own tokens (the paper's dynamic setting)",
                      "calibration": "every token of a calibration set",
                      "frequent": "the k most frequent tokens of a calibration set"}

# Numerical-noise replicates of one configuration differ only at rounding level: replicate r forwards the
# calibration set through each block in batches of another size (so the per-layer sums, Hessians and
# activation norms, are accumulated in another order) and dithers every block's inputs by one float32 ulp
# seeded by r (compress.pipelines.dither: the rounding differences another machine's kernels make, which a
# batch size alone does not: Wanda's masks do not move with it). Replicate 0 is the run itself.
REPLICATE_BATCH_SIZES = (8, 4, 16, 2, 32)
FLOAT_ORDER_FIELDS = ("batch_size", "replicate")


class SpecError(InvalidInput):
    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path


@dataclass(frozen=True)
class VocabularySpec:
    """Which token ids a run's vocabulary pruning keeps (``compress.vocabulary.prune_vocabulary``)."""
    ids: str                         # a key of VOCABULARY_ORIGINS
    calibration: object | None = None  # CalibrationSpec the "calibration" and "frequent" ids are drawn from
    k: int | None = None             # "frequent": how many of the most frequent tokens

    def normalized(self) -> dict:
        out = {"ids": self.ids}
        if self.calibration is not None:
            out["calibration"] = self.calibration.normalized()
        if self.k is not None:
            out["k"] = self.k
        return out

    def label(self) -> str:
        """'vocab: suite', 'vocab: wikipedia/16x128/set0', 'vocab: top-4096 of code/16x128/set0'."""
        if self.ids == "suite":
            return "vocab: suite"
        cal = self.calibration
        where = f"{cal.source}/{cal.num_samples}x{cal.seq_len}/set{cal.set_index}"
        return f"vocab: top-{self.k} of {where}" if self.ids == "frequent" else f"vocab: {where}"


@dataclass(frozen=True)
class RunSpec:
    model: str
    method: str                      # a method name, or "dense" (no compression)
    method_params: tuple             # sorted (name, value) pairs, defaults filled in
    calibration: object | None       # CalibrationSpec, or None for methods that need none
    suite: object                    # evaluate.Suite
    dtype: str = "float32"
    batch_size: int = 8
    replicate: int = 0               # > 0: a numerical-noise replicate (see REPLICATE_BATCH_SIZES)
    vocabulary: VocabularySpec | None = None   # prune the embedding and head after the method

    def normalized(self) -> dict:
        data = {"model": self.model, "dtype": self.dtype,
                "method": {"name": self.method, **dict(self.method_params)},
                "calibration": self.calibration.normalized() if self.calibration else None,
                "eval": self.suite.to_dict(), "batch_size": self.batch_size}
        if self.replicate:           # only replicates carry the tag: a plain run's key does not change
            data["replicate"] = self.replicate
        if self.vocabulary is not None:   # likewise: a run without vocabulary pruning keeps its key
            data["vocabulary"] = self.vocabulary.normalized()
        return data

    def versions(self) -> dict:
        return component_versions(self)

    @property
    def key(self) -> str:
        payload = json.dumps({"spec": self.normalized(), "versions": self.versions()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:32]

    def method_object(self):
        """The compression method with this spec's parameters (None for the dense model)."""
        from ..compress import METHODS
        return None if self.method == "dense" else METHODS[self.method](**dict(self.method_params))

    def label(self) -> str:
        """'smollm2-135m wanda 50% news/32x512/set0': the method as every table and figure names it."""
        method = self.method_object()
        cal = self.calibration
        where = f" {cal.source}/{cal.num_samples}x{cal.seq_len}/set{cal.set_index}" if cal else ""
        again = f" replicate{self.replicate}(batch {self.batch_size})" if self.replicate else ""
        vocab = f" [{self.vocabulary.label()}]" if self.vocabulary is not None else ""
        return f"{self.model} {method.label() if method else 'dense'}{where}{again}{vocab}"


def _check_type(path: str, value, expected: type):
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, bool) or not isinstance(value, expected):
        raise SpecError(path, f"expected {expected.__name__}, got {type(value).__name__} {value!r}")
    return value


def _method(data, path: str) -> tuple[str, tuple]:
    from ..compress import METHODS
    if isinstance(data, str):
        data = {"name": data}
    if not isinstance(data, dict) or "name" not in data:
        raise SpecError(path, "give the method as a name or a mapping with 'name' and its parameters")
    name = data["name"]
    params = {k: v for k, v in data.items() if k != "name"}
    if name == "dense":
        if params:
            raise SpecError(f"{path}.{next(iter(params))}", "the dense model takes no parameters")
        return "dense", ()
    if name not in METHODS:
        raise SpecError(f"{path}.name", f"unknown method {name!r}; known: dense, {', '.join(METHODS)}")
    cls = METHODS[name]
    known = {f.name: f for f in fields(cls) if f.init}
    for key, value in params.items():
        if key not in known:
            raise SpecError(f"{path}.{key}", f"unknown field for {name}; known: {', '.join(known)}")
        expected = {"int": int, "float": float, "bool": bool}.get(str(known[key].type), None)
        if expected:
            params[key] = _check_type(f"{path}.{key}", value, expected)
    try:
        method = cls(**params)
    except FieldError as err:
        raise SpecError(f"{path}.{err.field}", str(err)) from err
    return name, tuple(sorted(method.params().items()))


def _calibration(data, path: str, needed: bool):
    from ..data.spec import CalibrationSpec
    if data is None:
        if needed:
            raise SpecError(path, "this method needs calibration data: give source, num_samples, seq_len")
        return None
    if not isinstance(data, dict):
        raise SpecError(path, "expected a mapping of calibration fields")
    known = {f.name: f for f in fields(CalibrationSpec)}
    for key in data:
        if key not in known:
            raise SpecError(f"{path}.{key}", f"unknown calibration field; known: {', '.join(known)}")
    if "source" not in data:
        raise SpecError(f"{path}.source", "missing")
    try:
        return CalibrationSpec(**data)
    except FieldError as err:
        raise SpecError(f"{path}.{err.field}", str(err)) from err


def _suite(data, path: str):
    from ..evaluate import Suite, get_suite
    if isinstance(data, str):
        try:
            return get_suite(data)
        except ValueError as err:
            raise SpecError(path, str(err)) from err
    if not isinstance(data, dict):
        raise SpecError(path, "give a suite name (tiny, quick, full) or a mapping of suite fields")
    known = {f.name for f in fields(Suite)}
    for key in data:
        if key not in known:
            raise SpecError(f"{path}.{key}", f"unknown suite field; known: {', '.join(sorted(known))}")
    try:
        return Suite(**{**data, "name": data.get("name", "custom")})
    except FieldError as err:
        raise SpecError(f"{path}.{err.field}", str(err)) from err


def _vocabulary(data, path: str, run_calibration):
    """A VocabularySpec from ``ids`` (a name or a mapping); ``calibration`` defaults to the run's own set."""
    if data is None:
        return None
    if isinstance(data, str):
        data = {"ids": data}
    if not isinstance(data, dict) or "ids" not in data:
        raise SpecError(path, f"give the vocabulary as one of {', '.join(VOCABULARY_ORIGINS)} or a mapping with "
                              "'ids' (and 'calibration', 'k' where they apply)")
    unknown = [key for key in data if key not in ("ids", "calibration", "k")]
    if unknown:
        raise SpecError(f"{path}.{unknown[0]}", "unknown vocabulary field; known: ids, calibration, k")
    ids = data["ids"]
    if ids not in VOCABULARY_ORIGINS:
        raise SpecError(f"{path}.ids", f"unknown vocabulary origin {ids!r}; known: "
                                       + "; ".join(f"{k} ({v})" for k, v in VOCABULARY_ORIGINS.items()))
    if ids == "suite":
        for key in ("calibration", "k"):
            if key in data:
                raise SpecError(f"{path}.{key}", "the suite's vocabulary is the evaluation data's own tokens: "
                                                 f"remove {key}, or use ids: calibration / frequent")
        return VocabularySpec("suite")
    if "calibration" in data:
        calibration = _calibration(data["calibration"], f"{path}.calibration", True)
    elif run_calibration is not None:
        calibration = run_calibration
    else:
        raise SpecError(f"{path}.calibration", f"vocabulary ids '{ids}' need a calibration set and this run's "
                                               "method has none: give source, num_samples, seq_len")
    k = None
    if ids == "frequent":
        if "k" not in data:
            raise SpecError(f"{path}.k", "missing: how many of the most frequent tokens to keep")
        k = _check_type(f"{path}.k", data["k"], int)
        if k <= 0:
            raise SpecError(f"{path}.k", f"must be a positive number of tokens, got {k}")
    elif "k" in data:
        raise SpecError(f"{path}.k", "k applies to ids: frequent only; remove it or use ids: frequent")
    return VocabularySpec(ids, calibration, k)


def _check_context(model: str, calibration, suite, prefix: str) -> None:
    """Windows longer than the model's context fail here, before the model is even loaded."""
    from ..models.context import declared_context_length
    limit = declared_context_length(model)
    if limit is None:
        return
    if calibration is not None and calibration.seq_len > limit:
        raise SpecError(f"{prefix}calibration.seq_len", f"{calibration.seq_len} tokens exceed the context of "
                                                        f"{model} ({limit}); use at most {limit}")
    if suite.ppl_seq_len > limit:
        raise SpecError(f"{prefix}eval.ppl_seq_len", f"{suite.ppl_seq_len} tokens exceed the context of {model} "
                                                     f"({limit}); use at most {limit}")


def spec_data(normalized: dict) -> dict:
    """A normalised spec (``RunSpec.normalized()``, as stored) as ``parse_spec`` input: calibration only
    for methods that take it."""
    data = {k: normalized[k] for k in ("model", "dtype", "method", "eval", "batch_size", "replicate", "vocabulary")
            if k in normalized}
    if normalized.get("calibration") is not None:
        data["calibration"] = normalized["calibration"]
    return data


def parse_spec(data: dict, path: str = "") -> RunSpec:
    """Validate a spec mapping; any error names the field's full path."""
    prefix = f"{path}." if path else ""
    if not isinstance(data, dict):
        raise SpecError(path or "spec", "expected a mapping")
    for key in data:
        if key not in TOP_LEVEL:
            raise SpecError(f"{prefix}{key}", f"unknown field; known: {', '.join(sorted(TOP_LEVEL))}")
    for key in ("model", "method"):
        if key not in data:
            raise SpecError(f"{prefix}{key}", "missing")
    model = _check_type(f"{prefix}model", data["model"], str)
    method, params = _method(data["method"], f"{prefix}method")
    from ..compress import METHODS
    needs = method != "dense" and METHODS[method].needs_calibration
    calibration = _calibration(data.get("calibration"), f"{prefix}calibration", needs) if needs else None
    suite = _suite(data.get("eval", "quick"), f"{prefix}eval")
    dtype = _check_type(f"{prefix}dtype", data.get("dtype", "float32"), str)
    if dtype not in ("float32", "bfloat16", "float16"):
        raise SpecError(f"{prefix}dtype", f"use float32, bfloat16 or float16, got {dtype!r}")
    batch_size = _check_type(f"{prefix}batch_size", data.get("batch_size", 8), int)
    if batch_size <= 0:
        raise SpecError(f"{prefix}batch_size", f"must be positive, got {batch_size}")
    replicate = _check_type(f"{prefix}replicate", data.get("replicate", 0), int)
    if replicate < 0:
        raise SpecError(f"{prefix}replicate", f"must be 0 (the run itself) or a replicate number >= 1, got {replicate}")
    vocabulary = _vocabulary(data.get("vocabulary"), f"{prefix}vocabulary", calibration)
    if vocabulary is not None and suite.summarization is not None:
        raise SpecError(f"{prefix}eval.summarization", "summaries from a model with a pruned vocabulary are not "
                                                       "supported: remove the run's vocabulary or the suite's summarization")
    _check_context(model, calibration, suite, prefix)
    if vocabulary is not None and vocabulary.calibration is not None:
        _check_context(model, vocabulary.calibration, suite, f"{prefix}vocabulary.")
    return RunSpec(model, method, params, calibration, suite, dtype, batch_size, replicate, vocabulary)


# -- numerical-noise replicates ------------------------------------------------------------------

def replicates(spec: RunSpec, count: int = 2) -> list[RunSpec]:
    """``spec`` and ``count`` replicates of it that differ only in float order (the driver's batch size,
    ``REPLICATE_BATCH_SIZES``), each tagged ``replicate: r`` so it has its own key. The spread of a metric
    over them is the configuration's numerical noise floor."""
    from dataclasses import replace
    sizes = [b for b in REPLICATE_BATCH_SIZES if b != spec.batch_size]
    if not 0 <= count <= len(sizes):
        raise InvalidInput(f"replicates: count must be 0..{len(sizes)} (one per batch size of "
                           f"{REPLICATE_BATCH_SIZES} other than the spec's), got {count}")
    return [spec] + [replace(spec, batch_size=b, replicate=r) for r, b in enumerate(sizes[:count], start=1)]


def float_order_free(normalized: dict) -> str:
    """A normalised spec without its float-order fields, as JSON: equal for replicates of one configuration."""
    return json.dumps({k: v for k, v in normalized.items() if k not in FLOAT_ORDER_FIELDS}, sort_keys=True)


def check_replicates(normalized_specs: list[dict]) -> None:
    """Refuse a replicate group whose specs differ in anything but float order (batch size, replicate)."""
    if len(normalized_specs) < 2:
        raise InvalidInput(f"a noise floor needs at least two replicates of one configuration, got "
                           f"{len(normalized_specs)}; make them with calib_lib.runs.spec.replicates(spec)")
    first = normalized_specs[0]
    for other in normalized_specs[1:]:
        differing = sorted(k for k in set(first) | set(other)
                           if k not in FLOAT_ORDER_FIELDS and first.get(k) != other.get(k))
        if differing:
            raise InvalidInput(f"these replicates differ in {', '.join(differing)}, not only in float order "
                               "(batch_size, replicate): make them with calib_lib.runs.spec.replicates(spec)")


# -- versions ------------------------------------------------------------------------------------

def component_versions(spec: RunSpec) -> dict:
    """The version of every component that produces the numbers of ``spec``'s run (enters its key)."""
    from ..compress import PIPELINES
    from ..evaluate.suite import EVALUATION_VERSION
    from ..models.registry import LOADING_VERSION
    versions = {"model_loading": LOADING_VERSION, "evaluation": EVALUATION_VERSION}
    method = spec.method_object()
    if method is not None:
        versions.update(method=method.version, pipeline=PIPELINES[method.pipeline].version)
    if spec.calibration is not None:
        versions.update(spec.calibration.source_entry.versions(spec.calibration))
    if spec.suite.summarization is not None:
        from ..data.summarization import SUMMARY_DATA_VERSION
        from ..evaluate.summary_metrics import SUMMARY_METRICS_VERSION
        versions.update(summary_data=SUMMARY_DATA_VERSION, summary_metrics=SUMMARY_METRICS_VERSION)
    if spec.vocabulary is not None:
        from ..compress.vocabulary import VOCABULARY_VERSION
        versions["vocabulary"] = VOCABULARY_VERSION
        cal = spec.vocabulary.calibration
        if cal is not None:
            of_source = cal.source_entry.versions(cal)
            versions["vocabulary_source"] = of_source.pop("source")
            for name, version in of_source.items():
                versions[f"vocabulary_{name}"] = version
    return versions
