"""Exports the production tools read: a calibration set as a datasets folder, a compressed model as a
transformers checkpoint, each with its calibration card; nothing partial on bad input or failure."""
import errno
import json
import os

import numpy as np
import pytest
import torch
import yaml

from calib_lib import export
from calib_lib.errors import InvalidInput
from calib_lib.cli import main
from calib_lib.compress import compress
from calib_lib.data import SOURCES
from calib_lib.data.sampling import CalibrationSpec, NotEnoughDataError, sample
from calib_lib.export import (CARD, ID_COLUMNS, ExportFolderError, export_calibration_set, load_calibration_set,
                              model_card, read_card, save_compressed)

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike".split()


@pytest.fixture
def corpus(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(f"marker{i:03d} " + " ".join(rng.choice(WORDS, size=int(rng.integers(80, 300))))
                                for i in range(30)))
    return path


def _spec(path, **kw):
    return CalibrationSpec(**{"source": "custom", "path": str(path), "num_samples": 4, "seq_len": 32, **kw})


def _leftovers(folder):
    """Everything in ``folder`` but the corpus file: temporary folders a failed export must not leave."""
    return sorted(p.name for p in folder.iterdir() if p.name != "corpus.txt")


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


# ------------------------------------------------------------------------------------------ calibration sets

def test_set_round_trips_through_datasets_with_its_card(corpus, tiny_llama, tmp_path):
    from datasets import load_from_disk
    model, tok = tiny_llama
    cal = sample(_spec(corpus), tok)
    out = tmp_path / "sets" / "news-4x32"
    card = export_calibration_set(cal, tok, out, model=model)
    ds = load_from_disk(str(out))                       # plain datasets, no calib_lib
    assert ds.column_names == ["input_ids", "attention_mask", "text"] and len(ds) == 4
    assert torch.equal(torch.tensor(ds["input_ids"]), cal.input_ids)
    assert torch.equal(torch.tensor(ds["attention_mask"]), torch.ones_like(cal.input_ids))
    assert ds["text"] == [tok.decode(row) for row in cal.input_ids.tolist()]
    assert ds.info.license == SOURCES["custom"].license
    on_disk = read_card(out)
    assert on_disk == json.loads(json.dumps(card))
    assert on_disk["fingerprint"] == cal.fingerprint and on_disk["spec"] == cal.spec.normalized()
    assert on_disk["source"]["id"] == "custom" and on_disk["source"]["license"] == SOURCES["custom"].license
    assert on_disk["source"]["origin"] == cal.origin and on_disk["shape"] == [4, 32]
    assert {"vocab_coverage", "distinct_2", "zipf_coefficient"} <= set(on_disk["diagnostics"])
    assert on_disk["calib_lib"] and on_disk["model"]["name"] == "tiny-llama"
    readme = (out / "README.md").read_text()
    assert "oneshot(" in readme and "model.quantize(" in readme and cal.fingerprint in readme
    assert torch.equal(torch.tensor(load_calibration_set(out)["input_ids"]), cal.input_ids)
    # the spec on the card reproduces the set
    assert torch.equal(sample(CalibrationSpec.from_dict(on_disk["spec"]), tok).input_ids, cal.input_ids)


def test_set_is_what_llm_compressor_and_gptqmodel_read(corpus, tiny_llama, tmp_path):
    """llm-compressor and GPTQModel do not install with the pinned transformers/torch; this follows their code
    (llmcompressor 0.14.0.1 datasets/utils.py, gptqmodel 7.7.0 utils/calibration.py) on the exported folder."""
    from datasets import load_from_disk
    from transformers import default_data_collator
    model, tok = tiny_llama
    cal = sample(_spec(corpus), tok)
    export_calibration_set(cal, tok, tmp_path / "set")
    ds = load_from_disk(str(tmp_path / "set"))
    # llm-compressor: a dataset with input_ids is taken as tokenized; its truncation collator ends in
    # default_data_collator, which leaves string columns out; the batch goes to model(**batch)
    assert "input_ids" in ds.column_names
    batch = default_data_collator([ds[i] for i in range(len(ds))])
    assert set(batch) == set(ID_COLUMNS) and torch.equal(batch["input_ids"], cal.input_ids)
    assert torch.equal(_logits(model, cal.input_ids), model(**batch).logits.detach())
    # GPTQModel: a row with "text" is tokenized again, so the card hands it the id columns only
    rows = ds.select_columns(list(ID_COLUMNS)).to_list()
    assert all(set(row) == set(ID_COLUMNS) for row in rows)
    assert [row["input_ids"] for row in rows] == cal.input_ids.tolist()


def test_set_can_be_given_as_a_spec_and_every_source_names_a_licence(corpus, tiny_llama, tmp_path):
    model, tok = tiny_llama
    card = export_calibration_set(_spec(corpus, set_index=1), tok, tmp_path / "set", model=model)
    assert card["fingerprint"] == sample(_spec(corpus, set_index=1), tok).fingerprint
    assert all(source.license and source.license != "unknown" for source in SOURCES.values())


def test_existing_non_empty_folder_is_refused_and_left_alone(corpus, tiny_llama, tmp_path):
    _, tok = tiny_llama
    cal = sample(_spec(corpus), tok)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(ExportFolderError, match=r"exists and is not empty; export into a new folder, or delete"):
        export_calibration_set(cal, tok, taken)
    assert os.listdir(taken) == ["notes.txt"] and (taken / "notes.txt").read_text() == "mine"
    with pytest.raises(ExportFolderError, match="is a file; export into a new folder"):
        export_calibration_set(cal, tok, taken / "notes.txt")
    with pytest.raises(ExportFolderError, match="is a file, not a directory"):
        export_calibration_set(cal, tok, taken / "notes.txt" / "set")
    empty = tmp_path / "empty"
    empty.mkdir()
    export_calibration_set(cal, tok, empty)            # an empty folder is taken
    assert (empty / CARD).is_file()
    assert _leftovers(tmp_path) == ["empty", "taken"]


def test_budget_the_corpus_cannot_fill_writes_nothing(corpus, tiny_llama, tmp_path):
    _, tok = tiny_llama
    with pytest.raises(NotEnoughDataError, match=r"supplies only \d+ non-overlapping windows"):
        export_calibration_set(_spec(corpus, num_samples=5000), tok, tmp_path / "new" / "set")
    assert _leftovers(tmp_path) == []


def test_failure_mid_write_leaves_nothing(corpus, tiny_llama, tmp_path, monkeypatch):
    from datasets import Dataset
    _, tok = tiny_llama
    cal = sample(_spec(corpus), tok)
    real = Dataset.save_to_disk

    def save_then_fail(self, path, **kw):
        real(self, path, **kw)                          # the arrow files are written, then the disk fills
        raise OSError(errno.ENOSPC, "No space left on device", os.path.join(path, "state.json"))

    monkeypatch.setattr(Dataset, "save_to_disk", save_then_fail)
    target = tmp_path / "a" / "b" / "set"
    with pytest.raises(OSError) as caught:
        export_calibration_set(cal, tok, target)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)   # names the target
    assert _leftovers(tmp_path) == []                   # no temporary folder, not even the parents made for it


# ------------------------------------------------------------------------------------------ models

@pytest.mark.parametrize("arch, method, params", [("tiny-llama", "rtn", dict(bits=4, group_size=32)),
                                                  ("tiny-llama", "gptq", dict(bits=3, group_size=32)),
                                                  ("tiny-gemma3", "wanda", dict(sparsity=0.5))])
def test_compressed_model_reloads_with_identical_logits(corpus, tmp_path, arch, method, params):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from calib_lib.compress import make_method
    from calib_lib.models import load_model
    model, tok = load_model(arch, log=lambda *a: None)
    cal = sample(_spec(corpus), tok)
    report = compress(model, method, cal.input_ids, batch_size=2, progress=False, **params)
    card = model_card(model, method=make_method(method, **params), report=report,
                      calibration=export.calibration_card(cal, tok, model=model))
    out = save_compressed(model, tok, tmp_path / "model", card=card)
    assert (out / "model.safetensors").is_file() and (out / CARD).is_file() and (out / "README.md").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.randint(0, len(tok), (2, 24), generator=torch.Generator().manual_seed(0))
    assert torch.equal(_logits(reloaded, ids), _logits(model, ids))
    assert AutoTokenizer.from_pretrained(out)("the quick brown fox").input_ids == tok("the quick brown fox").input_ids
    via_calib, _ = load_model(str(out), log=lambda *a: None)      # calib_lib reads its own export too
    assert torch.equal(_logits(via_calib, ids), _logits(model, ids))
    card = read_card(out)
    assert card["calibration"]["fingerprint"] == cal.fingerprint and card["method"]["name"] == method
    assert card["compression"]["pipeline"] == report["pipeline"]


def test_model_card_describes_the_weights(tiny_llama):
    model, _ = tiny_llama
    from calib_lib.compress import make_method
    quant = model_card(model, method=make_method("gptq", bits=4, group_size=128))
    assert quant["weights"]["values"].startswith("fake-quantized") and "4-bit g128" in quant["weights"]["values"]
    assert quant["method"]["params"]["bits"] == 4 and quant["calibration"] is None
    assert model_card(model, method="magnitude")["weights"]["values"].startswith("pruned")
    assert model_card(model)["method"] is None


def test_failed_model_save_leaves_nothing(tiny_llama, tmp_path, monkeypatch):
    model, tok = tiny_llama

    def fail(*a, **kw):
        raise RuntimeError("tokenizer cannot be saved")

    monkeypatch.setattr(tok, "save_pretrained", fail)
    with pytest.raises(RuntimeError):
        save_compressed(model, tok, tmp_path / "model")
    assert list(tmp_path.iterdir()) == []


def test_a_vocabulary_pruned_model_is_refused_before_anything_is_written(tmp_path):
    from calib_lib.compress import prune_vocabulary
    from calib_lib.models import load_model
    model, tok = load_model("tiny-llama", log=lambda *a: None)       # its own copy: pruning is in place
    prune_vocabulary(model, list(range(40)), tok)
    with pytest.raises(InvalidInput, match="vocabulary is pruned"):
        save_compressed(model, tok, tmp_path / "model")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ command line

def test_cli_export_model_is_the_model_the_run_computes(corpus, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from calib_lib.models import load_model
    from calib_lib.runs import parse_spec
    from calib_lib.runs.runner import compress_run
    data = {"model": "tiny-llama", "method": {"name": "gptq", "bits": 4, "group_size": 32},
            "calibration": {"source": "custom", "path": str(corpus), "num_samples": 4, "seq_len": 32},
            "eval": {"ppl_texts": ["news"], "ppl_windows": 2, "ppl_seq_len": 32}, "batch_size": 2}
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(data))
    out = tmp_path / "exported"
    assert main(["export", "model", "--spec", str(spec_file), "--out", str(out)]) == 0
    assert "AutoModelForCausalLM.from_pretrained" in capsys.readouterr().out
    spec = parse_spec(data)
    card = read_card(out)
    assert card["run"]["key"] == spec.key and card["method"]["name"] == "gptq"
    assert card["calibration"]["source"]["license"] == SOURCES["custom"].license
    model, tok = load_model("tiny-llama", log=lambda *a: None)
    compress_run(spec, model, sample(spec.calibration, tok, model).input_ids)
    ids = torch.randint(0, len(tok), (2, 24), generator=torch.Generator().manual_seed(1))
    assert torch.equal(_logits(AutoModelForCausalLM.from_pretrained(out), ids), _logits(model, ids))
    # the same folder again: one line naming the fix, the export left as it was
    before = sorted(os.listdir(out))
    capsys.readouterr()                                 # transformers' loading bars
    assert main(["export", "model", "--spec", str(spec_file), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("calib: --out ") and "not empty; export into a new folder, or delete" in err
    assert len(err.strip().splitlines()) == 1 and sorted(os.listdir(out)) == before


def test_cli_export_set_and_its_bad_input(corpus, tmp_path, capsys):
    def export_set(out, num_samples=4):
        return main(["export", "set", "--source", "custom", "--path", str(corpus), "--model", "tiny-llama",
                     "--num-samples", str(num_samples), "--seq-len", "32", "--reference", "none", "--out", str(out)])

    out = tmp_path / "set"
    assert export_set(out) == 0
    assert "select_columns" in capsys.readouterr().out
    assert load_calibration_set(out).num_rows == 4
    assert export_set(out) == 2
    assert "not empty" in capsys.readouterr().err
    # a budget the corpus cannot fill without overlap: one line saying what fits, nothing written
    assert export_set(tmp_path / "over", num_samples=5000) == 2
    err = capsys.readouterr().err
    assert "supplies only" in err and "Lower num_samples" in err and len(err.strip().splitlines()) == 1
    assert _leftovers(tmp_path) == ["set"]
