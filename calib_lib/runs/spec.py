"""RunSpec: (model, method and its parameters, calibration spec, evaluation suite) and its stable key.

A spec is written as YAML/JSON:

    model: smollm2-135m
    method: {name: sparsegpt, sparsity: 0.5}
    calibration: {source: news, num_samples: 32, seq_len: 512, seed: 0, set_index: 0}
    eval: quick                       # a suite name or a suite mapping

Everything is checked before any run starts; an error names the field's path (``method.sparsity``).
The key is a sha256 of the normalised spec plus a digest of the code that produces the numbers, so
rerunning the same spec is a cache hit and a changed algorithm is not.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path

from ..errors import FieldError

TOP_LEVEL = {"model", "method", "calibration", "eval", "dtype", "batch_size"}


class SpecError(ValueError):
    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path


@dataclass(frozen=True)
class RunSpec:
    model: str
    method: str                      # a method name, or "dense" (no compression)
    method_params: tuple             # sorted (name, value) pairs, defaults filled in
    calibration: object | None       # CalibrationSpec, or None for methods that need none
    suite: object                    # evaluate.Suite
    dtype: str = "float32"
    batch_size: int = 8

    def normalized(self) -> dict:
        return {"model": self.model, "dtype": self.dtype,
                "method": {"name": self.method, **dict(self.method_params)},
                "calibration": self.calibration.normalized() if self.calibration else None,
                "eval": self.suite.to_dict(), "batch_size": self.batch_size}

    @property
    def key(self) -> str:
        payload = json.dumps({"spec": self.normalized(), "code": code_version(self.method)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:32]

    def label(self) -> str:
        params = ",".join(f"{k}={v}" for k, v in self.method_params if k in ("sparsity", "n", "m", "bits", "group_size")
                          or (k == "sequential" and v == "block"))
        cal = self.calibration
        where = f" {cal.source}/{cal.num_samples}x{cal.seq_len}/set{cal.set_index}" if cal else ""
        return f"{self.model} {self.method}({params}){where}"


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
    from ..data.sampling import CalibrationSpec
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
    data = {**data, "name": data.get("name", "custom")}
    for key in ("ppl_texts", "tasks"):
        if key in data:
            data[key] = tuple(data[key])
    return Suite(**data)


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
    return RunSpec(model, method, params, calibration, suite, dtype, batch_size)


# -- code version ------------------------------------------------------------------------------

_PACKAGE = Path(__file__).resolve().parents[1]
_SHARED = ["models/loading.py", "models/tiny.py", "data/corpora.py", "data/sources.py", "data/sampling.py",
           "data/tokenized.py", "data/selfgen.py", "data/wikimarkup.py", "evaluate/perplexity.py",
           "evaluate/suite.py", "evaluate/tasks.py", "compress/driver.py", "compress/quant.py",
           "compress/methods/base.py", "compress/methods/hessian.py", "runs/runner.py"]
_METHOD_FILES = {"magnitude": "compress/methods/pruning.py", "wanda": "compress/methods/pruning.py",
                 "sparsegpt": "compress/methods/pruning.py", "rtn": "compress/methods/quantization.py",
                 "gptq": "compress/methods/quantization.py", "awq": "compress/methods/awq.py"}


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return tree


@functools.lru_cache(maxsize=None)
def _file_digest(relative: str) -> str:
    tree = _strip_docstrings(ast.parse((_PACKAGE / relative).read_text()))
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()


@functools.lru_cache(maxsize=None)
def code_version(method: str) -> str:
    """Digest of the code paths that produce a run's numbers (comments and docstrings ignored)."""
    files = _SHARED + ([_METHOD_FILES[method]] if method in _METHOD_FILES else [])
    return hashlib.sha256("".join(_file_digest(f) for f in files).encode()).hexdigest()[:16]
