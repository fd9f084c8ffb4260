"""Tiny randomly initialised causal LMs with a tokenizer built offline.

Unit tests and the notebooks' ``tiny`` profile use these so that nothing is downloaded and every
forward pass takes milliseconds. Weights are drawn from a fixed seed, so the same name always gives
the same model; the tokenizer is a byte-level BPE trained in-process on the text below.
"""
from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
from ..errors import InvalidInput

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]
VOCAB_SIZE = 384

# Training text for the tiny tokenizer: plain English prose, so common words get merged tokens.
_TOKENIZER_TEXT = """
Post-training compression makes a trained language model smaller without training it again.
Pruning sets weights to zero; quantization stores them with fewer bits. Both methods look at a
small set of unlabeled calibration examples to decide which weights matter. The choice of those
examples, their source, their number, their length and the random draw, changes what the
compressed model can do. A researcher who studies calibration data needs to sample it exactly,
compress the model the same way each time, and evaluate the result on held-out text and tasks.
The quick brown fox jumps over the lazy dog. She sells sea shells by the sea shore. It was the
best of times, it was the worst of times. In the beginning there was the word, and the word was
short. Numbers such as 0 1 2 3 4 5 6 7 8 9 10 100 and 2024 appear in text too, as do names,
places, dates and code like def main(): return 0.
"""


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (any input text encodes) with BOS/EOS/PAD/UNK tokens."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([_TOKENIZER_TEXT] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>", model_max_length=2048)


def _config(architecture: str, vocab_size: int, special: dict[str, int]):
    from transformers import GPTNeoXConfig, Gemma3TextConfig, LlamaConfig, OPTConfig

    common = dict(vocab_size=vocab_size, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=2048, **special)
    if architecture == "llama":
        return LlamaConfig(hidden_size=64, intermediate_size=192, num_key_value_heads=2,
                           tie_word_embeddings=False, **common)
    if architecture == "gemma3":
        return Gemma3TextConfig(hidden_size=64, intermediate_size=192, num_key_value_heads=2,
                                head_dim=16, sliding_window=64, **common)
    if architecture == "gpt_neox":
        return GPTNeoXConfig(hidden_size=64, intermediate_size=192, **common)
    if architecture == "opt":
        return OPTConfig(hidden_size=64, ffn_dim=192, word_embed_proj_dim=64, **common)
    raise InvalidInput(f"unknown tiny architecture {architecture!r}; known: {ARCHITECTURES}")


ARCHITECTURES = ("llama", "gemma3", "gpt_neox", "opt")


def build_tiny_model(architecture: str, seed: int = 0, dtype: torch.dtype = torch.float32):
    """Return (model, tokenizer) for a tiny model of ``architecture`` with weights from ``seed``."""
    tokenizer = build_tokenizer()
    special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
    config = _config(architecture, len(tokenizer), special)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    return model, tokenizer
