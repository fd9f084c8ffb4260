"""Exports that production compression tools read: calibration sets as ``datasets`` folders, compressed models
as transformers checkpoints, each with a calibration card.

Why: practitioners compress with llm-compressor or GPTQModel and ask there which calibration data to use
(llm-compressor #1522, GPTQModel #1483). A set chosen with calib_lib helps them only in the form those tools
read, and only with a record of what it is: where the text came from and under which licence, the exact spec
that reproduces it, its fingerprint and diagnostics.

- ``export_calibration_set``: a folder that ``datasets.load_from_disk`` opens, with the columns
  ``input_ids`` (the set's exact ids, int64), ``attention_mask`` (all ones: every window is full) and
  ``text`` (each row decoded, to read; tokenizing it again need not give the ids back, as windows start and
  end mid-word and tokenizers add a BOS token), plus ``calibration_card.json`` and ``README.md``.
  llm-compressor 0.14 takes a dataset with an ``input_ids`` column as already tokenized and its collator
  skips string columns; GPTQModel 7.7 tokenizes a row's ``text`` in preference to its ``input_ids``, so the
  card says to pass both tools only the id columns (``ID_COLUMNS``). Neither tool installs beside the pinned
  torch and transformers (llmcompressor 0.14.0.1 wants transformers <= 5.17, gptqmodel 7.7.0 wants
  torch >= 2.14.1), so ``tests/test_export.py`` follows their code on an exported folder instead.
- ``save_compressed``: ``save_pretrained`` (safetensors), the tokenizer and the card: transformers reloads the
  model with identical logits, and vLLM reads the same checkpoint layout. calib_lib quantizes by fake
  quantization (each weight is its dequantized value on the layer's grid, ``compress.quant``), so a quantized
  checkpoint is dense: any tool loads it and none gains memory from it. Packed integer weights (compressed-tensors'
  pack-quantized format) would need the ``compressed-tensors`` package, which the pinned environment lacks.
- ``export_model``: the compressed model of a run spec, computed exactly as the run computes it
  (``runs.runner.compress_run``), saved with ``save_compressed``.

A folder appears complete or not at all: it is written into a temporary folder beside the target, every file
is fsync'd, and the folder is renamed into place. An existing non-empty target is refused before any work, and
a calibration budget the source cannot fill fails while sampling, before anything is written.
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from .errors import InvalidInput
from .files import TMP_SUFFIX, fsync_dir, fsync_file, remove_stale, temp_name

CARD = "calibration_card.json"
CARD_FORMAT = "calib_lib.calibration_card"
README = "README.md"
# The columns to hand a compression tool: GPTQModel re-tokenizes ``text`` when a row has it.
ID_COLUMNS = ("input_ids", "attention_mask")
_PACKAGES = ("calib_lib", "torch", "transformers", "tokenizers", "datasets", "safetensors")


class ExportFolderError(InvalidInput):
    """The export's target folder cannot take it (exists and is not empty, is a file, cannot be written)."""


# ---------------------------------------------------------------------------------------------- folders

def check_export_folder(folder: str | Path, what: str = "export folder") -> Path:
    """The target as an absolute path, once it is sure the export can go there: a new or empty folder whose
    nearest existing ancestor is a writable directory. Nothing is created."""
    path = Path(folder).expanduser().resolve()
    if path.exists():
        if not path.is_dir():
            raise ExportFolderError(f"{what} {path} is a file; export into a new folder")
        if any(path.iterdir()):
            raise ExportFolderError(f"{what} {path} exists and is not empty; export into a new folder, or delete "
                                    "this one first (an export never writes into or over existing files)")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ExportFolderError(f"cannot create {what} {path}: {ancestor} is a file, not a directory; choose "
                                "another path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ExportFolderError(f"cannot create {what} {path}: the directory {ancestor} is not writable; choose "
                                "another path or change its permissions")
    return path


def _renamed(err: OSError, tmp: Path, path: Path) -> OSError | None:
    """The same error naming the target rather than the temporary folder the user never asked for (None when
    it names something else)."""
    if err.errno is None or not str(err.filename or "").startswith(str(tmp)):
        return None
    return type(err)(err.errno, err.strerror, str(path))


@contextlib.contextmanager
def _staged_folder(path: Path, what: str):
    """A fresh temporary folder beside ``path`` that becomes ``path`` when the block ends without an exception,
    and is removed (with any parent folder made for it) when it does not."""
    made = []                              # parents created here: removed again on failure
    parent = path.parent
    while not parent.exists():
        made.append(parent)
        parent = parent.parent
    prefix = f".{path.name}."
    tmp = path.parent / temp_name(prefix, TMP_SUFFIX)
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            remove_stale(path.parent, prefix, TMP_SUFFIX)        # what a killed export left
            tmp.mkdir()
            yield tmp
            for entry in sorted(tmp.rglob("*")):
                if entry.is_file():
                    fsync_file(entry)
            fsync_dir(tmp)
        except OSError as err:
            renamed = _renamed(err, tmp, path)
            if renamed is None:
                raise
            raise renamed from err
        try:
            # rename(2) puts a folder in place whole, and replaces only a missing or empty target
            os.rename(tmp, path)
        except OSError as err:
            if err.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise ExportFolderError(f"{what} {path} was filled by someone else during the export; export "
                                        "into a new folder") from err
            raise
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in made:                              # innermost first; only what is still empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def _json_safe(value):
    """NaN and infinities (a Zipf fit of too few tokens) as null: the card stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _write_card(folder: Path, card: dict, readme: str) -> None:
    (folder / CARD).write_text(json.dumps(_json_safe(card), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    (folder / README).write_text(readme, encoding="utf-8")


def _version(name: str) -> str | None:
    # installed distributions' versions, as run records give them (calib_lib's own package is a layer above)
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _packages() -> dict:
    return {name: _version(name) for name in _PACKAGES}


def _provenance(model) -> dict | None:
    prov = getattr(model, "calib_provenance", None) if model is not None else None
    return prov.to_dict() if prov is not None else None


def read_card(folder: str | Path) -> dict:
    """The calibration card of an exported set or model folder."""
    path = Path(folder).expanduser() / CARD
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise InvalidInput(f"{path.parent} has no {CARD}: it is not a calib_lib export") from err
    except (UnicodeDecodeError, ValueError) as err:
        raise InvalidInput(f"{path}: not a readable calibration card ({err}); export it again") from err
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise InvalidInput(f"{path} is not a calib_lib calibration card")
    return card


# ---------------------------------------------------------------------------------------------- calibration sets

def calibration_card(cal, tokenizer, *, reference: str | None = None, model=None) -> dict:
    """What a calibration set is: source (with its licence), spec, fingerprint, tokenizer, diagnostics.

    ``reference``: a source id whose held-out text the diagnostics' unigram KL/JS compare against (None: no
    divergence, as a run records it).
    """
    from .data.diagnostics import diagnostics
    from .data.sources import load_eval_text
    source = cal.spec.source_entry
    ref_ids = None
    if reference is not None:
        # the first 400k characters, as `calib data sample` compares
        ref_ids = tokenizer(load_eval_text(reference)[:400_000], return_tensors="pt").input_ids[0]
    return {
        "format": CARD_FORMAT, "version": 1, "kind": "calibration_set", "calib_lib": _version("calib_lib"),
        "source": {"id": source.id, "domain": source.domain, "description": source.description,
                   "license": source.license, "origin": cal.origin},
        "spec": cal.spec.normalized(),
        "fingerprint": cal.fingerprint,
        "shape": list(cal.input_ids.shape),
        "tokenizer": {"name": getattr(tokenizer, "name_or_path", "") or None, "digest": cal.tokenizer_digest,
                      "vocab_size": len(tokenizer)},
        "model": _provenance(model),
        "diagnostics": diagnostics(cal.input_ids, len(tokenizer), ref_ids),
        "diagnostics_reference": reference,
        "windows": [list(w) for w in cal.windows],
        "packages": _packages(),
    }


def calibration_dataset(cal, tokenizer):
    """The set as a ``datasets.Dataset``: ``input_ids`` (int64), ``attention_mask`` (ones) and ``text``."""
    from datasets import Dataset, DatasetInfo, Features, List, Value
    ids = cal.input_ids.tolist()
    features = Features({"input_ids": List(Value("int64")), "attention_mask": List(Value("int64")),
                         "text": Value("string")})
    source = cal.spec.source_entry
    info = DatasetInfo(description=f"calib_lib calibration set from {source.id} ({source.description}); "
                                   f"fingerprint {cal.fingerprint}",
                       license=source.license, features=features)
    return Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(row) for row in ids],
                              "text": [tokenizer.decode(row) for row in ids]}, info=info)


def _usage(n: int, seq_len: int) -> str:
    return f"""```python
from datasets import load_from_disk
ds = load_from_disk("<this folder>")                      # columns: input_ids, attention_mask, text
calibration = ds.select_columns(["input_ids", "attention_mask"])

# llm-compressor: a dataset with input_ids is used as it is, not tokenized again
from llmcompressor import oneshot
oneshot(model=model, recipe=recipe, dataset=calibration, num_calibration_samples={n}, max_seq_length={seq_len})

# GPTQModel: a list of {{"input_ids", "attention_mask"}} rows
model.quantize(calibration.to_list(), batch_size=1)
```

Pass only the id columns: GPTQModel tokenizes a row's `text` in preference to its `input_ids`, and the text,
tokenized again, need not give these ids back (windows start mid-word; tokenizers add a BOS token). The ids
belong to the tokenizer named above: use them only with a model that shares it."""


def _diagnostics_table(diag: dict) -> str:
    rows = [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in diag.items()]
    return "| diagnostic | value |\n|---|---|\n" + "\n".join(rows)


def _set_readme(card: dict) -> str:
    src, spec = card["source"], card["spec"]
    n, seq_len = card["shape"]
    return f"""# Calibration set: {src['id']}, {n} x {seq_len} tokens (set {spec['set_index']}, seed {spec['seed']})

Exported by calib_lib {card['calib_lib']}. `{CARD}` holds everything below as JSON, with the window of every row.

- **source**: {src['id']} ({src['domain']}): {src['description']}; text from `{src['origin']}`
- **licence of the source text**: {src['license']}
- **spec** (reproduces the set with calib_lib): `{json.dumps(spec)}`
- **fingerprint** (sha256 of the ids and shape): `{card['fingerprint']}`
- **tokenizer**: {card['tokenizer']['name'] or 'unnamed'}, digest `{card['tokenizer']['digest']}`

{_diagnostics_table(card['diagnostics'])}

## Use

{_usage(n, seq_len)}
"""


def export_calibration_set(calibration, tokenizer, folder: str | Path, *, model=None, reference: str | None = None,
                           progress: bool = False) -> dict:
    """Write a calibration set (a ``CalibrationSet``, or a ``CalibrationSpec`` sampled here for ``tokenizer``
    and ``model``) as a ``datasets`` folder with its card; return the card.

    ``folder`` must be new or empty (``ExportFolderError`` otherwise, before any sampling); it appears
    complete or not at all.
    """
    from .data.spec import CalibrationSpec
    path = check_export_folder(folder)
    if isinstance(calibration, CalibrationSpec):
        from .data.sampling import sample
        calibration = sample(calibration, tokenizer, model, progress=progress)    # a shortfall fails here
    card = calibration_card(calibration, tokenizer, reference=reference, model=model)
    dataset = calibration_dataset(calibration, tokenizer)
    with _staged_folder(path, "export folder") as tmp, _datasets_quiet(not progress):
        dataset.save_to_disk(str(tmp))
        _write_card(tmp, card, _set_readme(card))
    return card


@contextlib.contextmanager
def _datasets_quiet(quiet: bool):
    """``datasets`` without its progress bars (a one-shard save), as it was afterwards."""
    from datasets.utils.tqdm import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    if not quiet or are_progress_bars_disabled():
        yield
        return
    disable_progress_bars()
    try:
        yield
    finally:
        enable_progress_bars()


def load_calibration_set(folder: str | Path):
    """An exported set as a ``datasets.Dataset``, after checking its ids against the card's fingerprint."""
    from datasets import load_from_disk

    from .data.spec import fingerprint
    path = Path(folder).expanduser()
    card = read_card(path)
    if card.get("kind") != "calibration_set":
        raise InvalidInput(f"{path} holds a {card.get('kind')}, not a calibration set")
    dataset = load_from_disk(str(path))
    ids = torch.tensor(dataset["input_ids"], dtype=torch.long)
    if fingerprint(ids) != card["fingerprint"]:
        raise InvalidInput(f"{path}: the token ids do not match the card's fingerprint (edited or damaged); "
                           "export the set again")
    return dataset


# ---------------------------------------------------------------------------------------------- models

def model_card(model, *, run=None, method=None, report: dict | None = None, calibration: dict | None = None) -> dict:
    """What a compressed model is: its dense origin, the method and its parameters, the run (a ``RunSpec``:
    key, label, spec) when there is one, the compression report's summary and the calibration card."""
    from .compress import make_method
    if run is not None and method is None and run.method != "dense":
        method = run.method_object()
    if isinstance(method, str):
        method = make_method(method)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    if method is None and report is None and run is None:
        # nothing says what was done to these weights: do not claim they are the dense ones
        weights = "as given (no method or run named: compressed or not, this card cannot tell)"
    elif method is None:
        weights = "dense, as loaded (no compression)"
    elif method.family == "quantization":
        # compress.quant: weights are stored as their dequantized grid values (fake quantization)
        weights = (f"fake-quantized: every weight of the compressed linear layers is its dequantized value on the "
                   f"layer's {method.setting()} grid, stored densely in {dtype}; the checkpoint is not smaller "
                   "than the dense one")
    else:
        weights = f"pruned: removed weights are stored as zeros, densely in {dtype}"
    card = {
        "format": CARD_FORMAT, "version": 1, "kind": "compressed_model", "calib_lib": _version("calib_lib"),
        "model": _provenance(model),
        "architecture": type(model).__name__,
        "method": None if method is None else {"name": method.name, "label": method.label(),
                                               "family": method.family, "params": method.params()},
        "weights": {"format": "safetensors (transformers save_pretrained)", "dtype": dtype, "values": weights},
        "run": None if run is None else {"key": run.key, "label": run.label(), "spec": run.normalized(),
                                         "versions": run.versions()},
        "compression": None,
        "calibration": calibration,
        "packages": _packages(),
        # what can still differ from the run's own model: the run key fixes the spec, not the machine (BLAS
        # threads and the device change float order, which GPTQ at 3 bits can turn into other roundings) nor the
        # copy of the source text: compare calibration.fingerprint with the run's calibration_fingerprint
        "machine": {"device": str(next(model.parameters()).device), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__},
    }
    if report is not None:
        sparsities = [v["sparsity"] for v in report["layers"].values() if "sparsity" in v]
        card["compression"] = {"pipeline": report["pipeline"], "damping_retries": report["damping_retries"],
                               "seconds": round(report["seconds"], 3),
                               "mean_layer_sparsity": sum(sparsities) / len(sparsities) if sparsities else None,
                               "calibration_shape": report["calibration_shape"]}
    return card


def _model_readme(card: dict) -> str:
    model = card["model"] or {}
    method = card["method"]
    lines = [f"# {model.get('name') or card['architecture']}: {method['label'] if method else 'dense'}", "",
             f"Exported by calib_lib {card['calib_lib']} with transformers `save_pretrained`: load it with "
             "`AutoModelForCausalLM.from_pretrained(\"<this folder>\")` (or vLLM). `calibration_card.json` holds "
             "everything below as JSON.", ""]
    if model:
        lines.append(f"- **dense model**: {model.get('upstream') or model.get('name')} "
                     f"({model.get('source')}; licence: {model.get('license') or 'see the upstream model'})")
    if method:
        lines.append(f"- **method**: {method['name']} `{json.dumps(method['params'])}`")
    lines.append(f"- **weights**: {card['weights']['values']}")
    if card["run"]:
        lines.append(f"- **run**: `{card['run']['key']}` ({card['run']['label']})")
    cal = card["calibration"]
    if cal:
        src = cal["source"]
        lines += [f"- **calibration**: {src['id']} ({src['description']}), {cal['shape'][0]} x {cal['shape'][1]} "
                  f"tokens, `{json.dumps(cal['spec'])}`",
                  f"- **licence of the calibration text**: {src['license']}",
                  f"- **calibration fingerprint**: `{cal['fingerprint']}`", "",
                  _diagnostics_table(cal["diagnostics"])]
    else:
        lines.append("- **calibration**: none (a data-free method)")
    return "\n".join(lines) + "\n"


def save_compressed(model, tokenizer, folder: str | Path, *, card: dict | None = None) -> Path:
    """Save ``model`` (safetensors) and ``tokenizer`` with ``save_pretrained``, and the card (``model_card``;
    a card of the model alone when none is given), into ``folder``: new or empty, complete or not at all."""
    if getattr(model, "vocab_pruning", None) is not None:
        # its config still names the full vocabulary and its rows are remapped by hooks save_pretrained drops:
        # a reload would be a different, broken model
        raise InvalidInput("this model's vocabulary is pruned (compress.vocabulary), which save_pretrained cannot "
                           "represent: export the model before pruning its vocabulary")
    path = check_export_folder(folder)
    card = card if card is not None else model_card(model)
    with _staged_folder(path, "export folder") as tmp:
        model.save_pretrained(tmp)              # safetensors: transformers' default
        tokenizer.save_pretrained(tmp)
        _write_card(tmp, card, _model_readme(card))
    return path


def compressed_model(spec, progress: bool = False):
    """(model, tokenizer, card): the model of run ``spec`` compressed as its run compresses it (same loading,
    calibration sample and ``runs.runner.compress_run``), not evaluated."""
    from .data.sampling import sample
    from .models import load_model
    from .runs.runner import compress_run, run_device
    model, tokenizer = load_model(spec.model, dtype=spec.dtype, device=run_device(), log=lambda *a: None)
    cal = sample(spec.calibration, tokenizer, model, progress=progress) if spec.calibration is not None else None
    cal_card = calibration_card(cal, tokenizer, model=model) if cal is not None else None
    report = None
    if spec.method != "dense":
        report = compress_run(spec, model, cal.input_ids if cal is not None else None, progress)
    return model, tokenizer, model_card(model, run=spec, report=report, calibration=cal_card)


def export_model(spec, folder: str | Path, progress: bool = False) -> dict:
    """Compress the model of run ``spec`` (``compressed_model``) and save it into ``folder``; return the card.
    The folder is checked before the model is loaded."""
    check_export_folder(folder)
    model, tokenizer, card = compressed_model(spec, progress=progress)
    save_compressed(model, tokenizer, folder, card=card)
    return card
