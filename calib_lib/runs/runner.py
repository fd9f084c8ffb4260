"""Execute one RunSpec: sample calibration data, compress, evaluate, and describe how it went.

Expensive shared work is cached: the dequantized model (on disk, and its pristine weights in memory,
restored before each run instead of reloading), tokenized corpora and self-generated sets (on disk).
"""
from __future__ import annotations

import os
import platform
import resource
import time
from importlib.metadata import PackageNotFoundError, version

import torch

from ..errors import Unavailable
from .spec import RunSpec

_MODELS: dict[tuple[str, str], tuple] = {}


def run_device() -> str:
    """Where runs execute: ``CALIB_DEVICE`` (cpu, cuda, cuda:N), else the GPU when there is one."""
    wanted = os.environ.get("CALIB_DEVICE", "auto")
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if wanted.startswith("cuda") and not torch.cuda.is_available():
        raise Unavailable(f"CALIB_DEVICE={wanted} but torch sees no GPU here; unset it or use cpu")
    return wanted


def pristine_model(name: str, dtype: str):
    """The model with its original weights (restored in place if an earlier run compressed it)."""
    from ..models import load_model
    key = (name, dtype, run_device())
    if key not in _MODELS:
        model, tokenizer = load_model(name, dtype=dtype, device=key[2], log=lambda *a: None)
        _MODELS[key] = (model, tokenizer, {k: v.clone() for k, v in model.state_dict().items()})
    model, tokenizer, weights = _MODELS[key]
    model.load_state_dict(weights)
    for module in model.modules():
        module.__dict__.pop("calib_grid", None)
    return model, tokenizer


def cpu_info() -> dict:
    """The CPU's model name and the instruction set torch dispatches its kernels to (AVX2, AVX512, ...): two
    machines of the same kind can sum in another order, so a search method's near-tie choices (AWQ's grid) and
    timings are read against these."""
    model = None
    try:
        with open("/proc/cpuinfo") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), None)
    except OSError:                     # not Linux
        pass
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except AttributeError:              # an old torch
        capability = None
    return {"cpu_model": model or platform.processor() or None, "cpu_capability": capability}


def environment() -> dict:
    packages = {}
    for name in ("calib_lib", "torch", "transformers", "lm_eval", "datasets", "numpy", "scipy"):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpu": platform.processor() or platform.machine(), **cpu_info(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "packages": packages}


def compress_run(spec: RunSpec, model, calibration: torch.Tensor | None, progress: bool = False) -> dict:
    """Compress ``model`` in place as ``spec``'s run does and return the driver's report.

    The one place a spec's method, parameters, batch size and replicate reach the driver: ``execute`` and
    ``export.compressed_model`` both call it, so an exported model is the very one the run scored.
    """
    from ..compress import compress
    return compress(model, spec.method, calibration, batch_size=spec.batch_size, progress=progress,
                    float_noise=spec.replicate, **dict(spec.method_params))


def _model_size(model) -> tuple[int, int]:
    """(parameters, bytes of parameters and buffers) of a loaded model, each tensor counted once."""
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    parameters = {id(p): p for p in model.parameters()}
    return (sum(p.numel() for p in parameters.values()),
            sum(t.numel() * t.element_size() for t in tensors.values()))


def prune_run_vocabulary(spec: RunSpec, model, tokenizer, progress: bool = False) -> tuple:
    """A copy of ``model`` with its vocabulary pruned as ``spec.vocabulary`` says (``model`` itself stays as it
    is: the runner restores it in place for the next run, which a pruned one's new shapes and hooks would
    refuse), the run's vocabulary record (what was kept, parameters and bytes of the embedding and of the whole
    model before and after, the share of each evaluation text's and task's tokens kept) and metric records of
    KL(pruned || unpruned) per text."""
    import copy

    import numpy as np

    from ..compress.vocabulary import (ids_from_calibration, ids_from_tokens, kept_vocabulary, most_frequent_of,
                                       prune_vocabulary)
    from ..data.sampling import sample
    from ..evaluate.suite import evaluation_windows
    from ..evaluate.vocabulary import kl_to_unpruned, suite_tokens
    vocab = spec.vocabulary
    record = {"ids": vocab.ids}
    tokens = suite_tokens(tokenizer, spec.suite)     # what the evaluation forwards, per text and task
    if vocab.ids == "suite":
        ids = ids_from_tokens(torch.cat([torch.zeros(0, dtype=torch.long), *tokens.values()]),
                              what=f"the evaluation data of suite {spec.suite.name!r}")
    else:
        cal = sample(vocab.calibration, tokenizer, model, progress=progress)
        record.update(calibration_fingerprint=cal.fingerprint, calibration_tokens=int(cal.input_ids.numel()))
        ids = (ids_from_calibration(cal) if vocab.ids == "calibration"
               else most_frequent_of(cal.input_ids, vocab.k, what="the vocabulary's calibration set"))
    record["data_ids"] = int(ids.numel())         # before the special tokens and the fallback are added
    kept_vocabulary(model, ids, tokenizer)          # every input checked before the copy below is made
    parameters_before, bytes_before = _model_size(model)
    pruned = copy.deepcopy(model)
    pruning = prune_vocabulary(pruned, ids, tokenizer)
    parameters_after, bytes_after = _model_size(pruned)
    metrics = []
    for kind, name in tokens:
        if kind != "perplexity":
            continue
        windows = evaluation_windows(name, tokenizer, spec.suite.ppl_seq_len, spec.suite.ppl_windows, spec.suite.seed)
        sums, counts = kl_to_unpruned(pruned, model, windows, progress=progress)
        metrics.append({"kind": "perplexity", "name": name, "metric": "kl_to_unpruned",
                        "value": float(np.sum(sums) / np.sum(counts)), "stderr": None, "n": int(np.sum(counts))})
    record.update({k: v for k, v in pruning.report().items() if k != "oov_tokens"})   # counted after evaluation
    record.update(model_parameters_before=parameters_before, model_parameters_after=parameters_after,
                  model_bytes_before=bytes_before, model_bytes_after=bytes_after,
                  coverage={f"{kind}/{name}": pruning.coverage(text_tokens)
                            for (kind, name), text_tokens in tokens.items()})
    for key, share in record["coverage"].items():
        kind, name = key.split("/", 1)
        metrics.append({"kind": kind, "name": name, "metric": "token_coverage", "value": share,
                        "stderr": None, "n": None})
    return pruned, record, metrics


def execute(spec: RunSpec, progress: bool = False) -> dict:
    from ..data.diagnostics import diagnostics
    from ..data.sampling import sample
    from ..evaluate.fidelity import model_identity
    from ..evaluate.records import pack_blocks
    from ..evaluate.suite import ensure_dense_references, score

    # Wall-clock seconds per phase, and the process's CPU seconds (every thread) beside them: a run slowed by a
    # second heavy job, or paused (SIGSTOP) mid-way, keeps honest CPU figures for cost estimates.
    timings, cpu_seconds = {}, {}
    started, cpu_started = time.time(), time.process_time()

    def phase_done(name, wall_since, cpu_since):
        timings[name] = time.time() - wall_since
        cpu_seconds[name] = time.process_time() - cpu_since

    model, tokenizer = pristine_model(spec.model, spec.dtype)
    phase_done("load", started, cpu_started)
    record: dict = {"versions": spec.versions(),
                    "model_provenance": model.calib_provenance.to_dict()}
    model_id = model_identity(spec.model, spec.dtype)          # the dense model this run is compared with
    from ..evaluate.summarization import check_summarization
    check_summarization(spec.suite.summarization, tokenizer, spec.model)   # refused before any compute
    if spec.suite.kl_to_dense:
        # The dense model's next-token distributions on the suite's texts, cached once per (model, text,
        # windows): computed now, while the weights in memory are still the uncompressed ones.
        t, c = time.time(), time.process_time()
        ensure_dense_references(model, tokenizer, spec.suite, model_id, progress=progress)
        phase_done("dense_reference", t, c)
    calibration = None
    if spec.calibration is not None:
        t, c = time.time(), time.process_time()
        cal = sample(spec.calibration, tokenizer, model, progress=progress)
        calibration = cal.input_ids
        phase_done("calibration", t, c)
        record.update(calibration_fingerprint=cal.fingerprint, calibration_origin=cal.origin,
                      calibration_diagnostics=diagnostics(cal.input_ids, len(tokenizer)))
    if spec.method != "dense":
        t, c = time.time(), time.process_time()
        report = compress_run(spec, model, calibration, progress)
        phase_done("compression", t, c)
        sparsities = [v["sparsity"] for v in report["layers"].values() if "sparsity" in v]
        record["compression"] = {"damping_retries": report["damping_retries"],
                                 "mean_layer_sparsity": sum(sparsities) / len(sparsities) if sparsities else None}
    vocabulary_metrics = []
    if spec.vocabulary is not None:
        t, c = time.time(), time.process_time()
        model, record["vocabulary"], vocabulary_metrics = prune_run_vocabulary(spec, model, tokenizer, progress)
        phase_done("vocabulary", t, c)
    t, c = time.time(), time.process_time()
    evaluation = score(model, tokenizer, spec.suite, progress=progress, model_id=model_id, model_name=spec.model)
    record["metrics"] = evaluation.metrics + vocabulary_metrics
    if evaluation.generation is not None:
        record["generation"] = evaluation.generation
    if spec.vocabulary is not None:
        record["vocabulary"]["oov_input_tokens"] = model.vocab_pruning.oov_tokens
    record["documents"] = pack_blocks(evaluation.documents)      # the store keeps them in their own table
    phase_done("evaluation", t, c)
    phase_done("total", started, cpu_started)
    record["timings"] = timings
    record["cpu_seconds"] = cpu_seconds
    record["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    record["environment"] = environment()
    return record
