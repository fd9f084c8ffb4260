"""Study profiles and grids (shared runs), the wide results table, and the notebooks on the tiny profile."""
import json
import math

import nbformat
import pandas as pd
import pytest

from calib_lib import notebooks, study
from calib_lib.runs.store import Store

TINY = study.get_profile("tiny")


def _keys(grid):
    return {spec.key for spec in grid.specs}


def test_grids_share_the_base_runs_between_notebooks():
    """The source-domain run of the base source at set 0 is the sample-count run at the base size, the
    sequence-length run at the base length, the seed-variance run at set 0 and the self-calibration real run."""
    base = {study.grids._spec(TINY, m).key for m in TINY.methods}
    for make in (study.sample_count_grid, study.sequence_length_grid, study.source_domain_grid,
                 study.seed_variance_grid, study.self_calibration_grid):
        assert base <= _keys(make(TINY)), make.__name__
    all_keys = set().union(*(_keys(make(TINY)) for make in study.GRIDS.values()))
    points = sum(len(make(TINY).points) for make in study.GRIDS.values())
    assert len(all_keys) < points                                 # shared, not repeated


def test_sequence_length_grid_regimes():
    grid = study.sequence_length_grid(TINY)
    for labels, spec in grid.points:
        cal = spec.calibration
        if labels["regime"].startswith("fixed budget"):
            assert cal.num_samples * cal.seq_len == TINY.token_budget
        else:
            assert cal.num_samples == TINY.num_samples
    assert {s.calibration.seq_len for s in grid.specs} == set(TINY.seq_lens)


def test_every_grid_point_uses_the_profile_suite_and_model():
    for name, make in study.GRIDS.items():
        for spec in make(TINY).specs:
            # 08 scores only summaries: its own suite, with the profile's summary_eval
            suite = f"summaries-{TINY.name}" if name == "summarization" else TINY.suite["name"]
            assert spec.model == TINY.model and spec.suite.name == suite
            assert (spec.suite.summarization is not None) == (name == "summarization")


def test_profile_errors_name_the_fix():
    with pytest.raises(ValueError, match="known: tiny, quick"):
        study.get_profile("huge")
    with pytest.raises(ValueError, match="unknown profile field"):
        study.get_profile("tiny", samples=3)
    assert study.get_profile("quick", model="gemma3-270m").model == "gemma3-270m"
    assert study.get_profile("quick", model=None).model == "smollm2-135m"


def test_unavailable_source_is_refused_with_the_reason(monkeypatch):
    monkeypatch.delenv("CALIB_MIRROR", raising=False)
    with pytest.raises(RuntimeError, match="c4.*CALIB_MIRROR"):
        study.resolve_sources(("c4",))


def test_method_labels():
    assert study.method_label({"name": "wanda", "sparsity": 0.5}) == "wanda 50%"
    assert study.method_label({"name": "sparsegpt", "sparsity": 0.5, "n": 2, "m": 4}) == "sparsegpt 2:4"
    assert study.method_label({"name": "gptq", "bits": 3.0, "group_size": 128.0}) == "gptq 3-bit g128"
    # the published order (block) goes unnamed; the layer order is a variant, named wherever it is used
    assert study.method_label({"name": "gptq", "bits": 3, "sequential": "layer"}) == "gptq 3-bit g128 (layer order)"
    assert study.method_label({"name": "wanda", "sparsity": 0.5, "sequential": "block"}) == "wanda 50%"
    assert study.method_label({"name": "gptq", "bits": 4, "group_size": -1}) == "gptq 4-bit per-channel"
    # every GPTQ column order is named (act-order moves SmolLM2's 3-bit perplexity by a third), all variants in
    # one parenthesis; SpQR's published order is act-order, so the natural order is its variant
    gptq = {"name": "gptq", "bits": 3, "group_size": 128}
    assert study.method_label({**gptq, "act_order": True, "static_groups": True}) == \
        "gptq 3-bit g128 (act-order, static groups)"
    assert study.method_label({**gptq, "act_order": True, "sequential": "layer", "group_grid": "reference"}) == \
        "gptq 3-bit g128 (layer order, act-order, reference group grid)"
    assert study.method_label({"name": "spqr", "act_order": False}) == "spqr 3-bit g16 (natural order)"
    labels = {study.method_label({**gptq, "act_order": a, "static_groups": s}) for a in (0, 1) for s in (0, 1)}
    assert len(labels) == 4
    assert study.method_family("awq") == "quantization" and study.method_family("wanda") == "pruning"


def _record(metrics):
    return {"metrics": metrics, "timings": {"total": 1.0}}


def test_wide_table_pivots_metrics_and_takes_the_geometric_mean(tmp_path):
    store = Store(tmp_path / "runs.sqlite")
    spec = study.grids._spec(TINY, TINY.methods[0])
    store.put(spec.key, "done", spec.label(), spec.normalized(), _record([
        {"kind": "perplexity", "name": "wikipedia", "metric": "perplexity", "value": 10.0},
        {"kind": "perplexity", "name": "news", "metric": "perplexity", "value": 40.0},
        {"kind": "task", "name": "arc_easy", "metric": "acc", "value": 0.5},
        {"kind": "task", "name": "arc_easy", "metric": "acc_norm", "value": 0.4},
        {"kind": "task", "name": "copa", "metric": "skipped", "value": float("nan")},
        {"kind": "task", "name": "mean", "metric": "acc", "value": 0.5}]))
    table = study.wide(store)
    row = table.iloc[0]
    assert row["ppl:geomean"] == pytest.approx(20.0)
    assert row["acc:arc_easy"] == 0.5 and row["acc_norm:arc_easy"] == 0.4 and row["acc:mean"] == 0.5
    assert "acc:copa" not in table.columns
    assert row["method_label"] == study.method_label(TINY.methods[0]) == "sparsegpt 50%" and row["family"] == "pruning"
    assert study.task_columns(table) == ["acc:arc_easy"]
    grid = study.source_domain_grid(study.get_profile("tiny", sources=("wikipedia",)))
    merged = grid.results(store)
    assert len(merged) == 1 and merged.iloc[0]["key"] == spec.key


def test_findings_are_written_atomically_and_merged(tmp_path):
    study.save_finding(tmp_path, "01_sample_count", "a", {"x": 1.0})
    study.save_finding(tmp_path, "02_sequence_length", "b")
    findings = study.load_findings(tmp_path)
    assert findings["01_sample_count"]["text"] == "a" and findings["02_sequence_length"]["text"] == "b"
    assert not list(tmp_path.glob("*.tmp"))
    assert study.fmt(float("nan")) == "n/a" and study.fmt(1.234, 1) == "1.2"


def test_notebooks_have_one_parameters_cell_and_the_python3_kernel():
    names = notebooks.notebook_names()
    assert names[-1] == "00_overview" and len(names) == 11 and "06_findings" in names and "09_selection" in names and "08_summarization" in names and "10_explore" in names
    for path in sorted(notebooks.NOTEBOOK_DIR.glob("*.ipynb")):
        name = path.stem
        nb = nbformat.read(path, as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, name
        assert nb.metadata["kernelspec"]["name"] == "python3"
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{name} is committed executed"
    template = nbformat.read(notebooks.TEMPLATE_DIR / "sensitivity.ipynb", as_version=4)
    assert len([c for c in template.cells if "parameters" in c.metadata.get("tags", [])]) == 1
    assert all(not c.get("outputs") for c in template.cells if c.cell_type == "code")
    with pytest.raises(ValueError, match="unknown notebook"):
        notebooks.notebook_names(["07_nothing"])


EXPECTED_FIGURES = ["01_sample_count-trend", "02_sequence_length-trend", "03_source_domain-by-source",
                    "03_source_domain-domain-matrix", "04_seed_variance-sets", "04_seed_variance-swing", "04_seed_variance-variance",
                    "05_self_calibration-by-data", "07_vocabulary-usage", "07_vocabulary-tradeoff",
                    # tiny has a second findings model, as standard has: 07 draws it apart, under its name
                    "07_vocabulary-usage-tiny-gemma3", "07_vocabulary-tradeoff-tiny-gemma3",
                    "08_summarization-runs", "08_summarization-claims"]


# notebook -> keys of the runs it added to tiny_study's store (the notebooks run in ORDER on one store)
NOTEBOOK_RUNS: dict[str, set] = {}


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    import sqlite3
    out = tmp_path_factory.mktemp("study")
    seen: set = set()

    def log(message):
        if "] done in" in message:
            with sqlite3.connect(out / "results" / "runs.sqlite") as db:
                keys = {k for (k,) in db.execute("SELECT key FROM runs WHERE status = 'done'")}
            NOTEBOOK_RUNS[message[1:message.index("]")]] = keys - seen
            seen.update(keys)

    rows = notebooks.execute_notebooks("tiny", results_dir=out / "results", figures_dir=out / "figures", log=log)
    return out, rows


def test_each_notebook_computes_only_runs_of_its_declared_grids(tiny_study):
    """`calib study` refuses a sweep-first profile's notebooks by the runs study.notebook_keys says they read:
    every run a notebook adds must be among them, and the read-only ones add none."""
    profile = study.get_profile("tiny")
    assert set(NOTEBOOK_RUNS) == set(notebooks.ORDER) and sum(map(len, NOTEBOOK_RUNS.values())) > 50
    for name, keys in NOTEBOOK_RUNS.items():
        assert keys <= study.notebook_keys(profile, [name]), name
    assert not NOTEBOOK_RUNS["00_overview"] and not NOTEBOOK_RUNS["10_explore"]
    assert study.notebook_keys(profile, ["00_overview", "10_explore"]) == set()


def test_every_notebook_runs_on_the_tiny_profile_and_writes_its_figures(tiny_study):
    out, rows = tiny_study
    assert [r["notebook"] for r in rows] == list(notebooks.ORDER)
    for name in EXPECTED_FIGURES:
        for ext in ("png", "svg"):
            path = out / "figures" / f"{name}.{ext}"
            assert path.is_file() and path.stat().st_size > 1000, path
    for row in rows:
        assert (out / "results" / f"{row['notebook']}.html").is_file()
    findings = study.load_findings(out / "results")
    assert set(findings) == set(notebooks.STUDIES) | {"06_findings"}
    # 07 reports each findings model under its name; 08 summarised with both summary models
    assert findings["07_vocabulary"]["text"].count("**tiny-gemma3**") == 1
    store = Store(out / "results" / "runs.sqlite", read_only=True)
    model_of = {run["key"]: run["spec"]["model"] for run in store.records("done")}
    assert set(store.summaries()["key"].map(model_of)) == {"tiny-llama", "tiny-gemma3"}
    for text in (f["text"] for f in findings.values()):
        assert text and "nan" not in text.lower().replace("n/a", "")
    # 05 pairs its self-generated runs with 03's real sources too: each comparison, with either, has its paired CI
    f05 = findings["05_self_calibration"]["text"]
    assert f05.count("paired bootstrap CI") == f05.count("base source") + f05.count("(as claim F4)") > 0
    overview = nbformat.read(out / "results" / "00_overview.ipynb", as_version=4)
    rendered = json.dumps([c.get("outputs") for c in overview.cells if c.cell_type == "code"])
    assert "01_sample_count-trend.png" in rendered and findings["04_seed_variance"]["text"][:40] in rendered
    explore_html = (out / "results" / "10_explore.html").read_text()
    assert explore_html.count('class="calib-view"') == 2 and "vegaEmbed" in explore_html


def test_rerun_with_a_full_store_executes_no_run_and_gives_identical_numbers(tiny_study):
    out, _ = tiny_study
    store = Store(out / "results" / "runs.sqlite")
    before = store.count()
    table_before = study.wide(store).sort_values("key").reset_index(drop=True)
    findings_before = study.load_findings(out / "results")
    notebooks.execute_notebooks("tiny", only=["04_seed_variance"], results_dir=out / "results",
                      figures_dir=out / "figures", log=lambda *a: None)
    assert store.count() == before
    assert study.load_findings(out / "results")["04_seed_variance"] == findings_before["04_seed_variance"]
    table_after = study.wide(store).sort_values("key").reset_index(drop=True)
    assert table_after.equals(table_before)


def test_a_failing_notebook_names_its_cell(tmp_path, monkeypatch):
    broken = tmp_path / "notebooks"
    broken.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell("profile = 'tiny'")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("raise ValueError('boom')")]
    nbformat.write(nb, broken / "01_sample_count.ipynb")
    monkeypatch.setattr(notebooks, "NOTEBOOK_DIR", broken)
    with pytest.raises(notebooks.NotebookFailed, match=r"01_sample_count failed in code cell \d+ of the executed notebook \(.raise ValueError"):
        notebooks.execute_notebooks("tiny", results_dir=tmp_path / "r", figures_dir=tmp_path / "f", html=False,
                          log=lambda *a: None)


def test_findings_notebook_on_the_tiny_profile_reuses_runs_and_writes_six_verdicts(tiny_study):
    out, _ = tiny_study
    store = Store(out / "results" / "runs.sqlite")
    before = store.count()
    notebooks.execute_notebooks("tiny", only=["06_findings"], results_dir=out / "results", figures_dir=out / "figures",
                      log=lambda *a: None)
    assert store.count() == before                  # every run it needs was made by notebooks 01-05
    import pandas as pd
    verdicts = pd.read_csv(out / "results" / "findings_verdicts.csv")
    # every claim on each findings model (two, as on standard), in the profile's model order
    assert list(verdicts["claim"]) == ["F1", "F2", "F3", "F4", "F5", "F6"] * 2
    assert list(verdicts["model"]) == ["tiny-llama"] * 6 + ["tiny-gemma3"] * 6
    from calib_lib.findings import UNTESTABLE
    assert set(verdicts["verdict"]) <= {"holds", "does not hold", "inconclusive", UNTESTABLE}
    for claim in ("f1", "f2", "f3", "f4", "f5", "f6"):
        for model in ("tiny-llama", "tiny-gemma3"):
            assert (out / "figures" / f"06_findings-{claim}-{model}.png").is_file()
    headline = pd.read_csv(out / "results" / "headline.csv")
    assert list(headline["model"].unique()) == ["tiny-llama", "tiny-gemma3"]


def test_study_verdicts_reads_the_store_only_and_agrees_with_the_findings_notebook(tiny_study, capsys, tmp_path):
    """`calib study --verdicts`: the interim view of a sweep. Same verdicts as 06 (which ran just before on the
    same store), no run started, no file in the results folder created or changed."""
    import pandas as pd

    from calib_lib import findings
    from calib_lib.cli import main
    out, _ = tiny_study
    results = out / "results"
    assert (results / "findings_verdicts.csv").is_file()          # written by 06 in the test above
    before = {p: p.stat().st_mtime_ns for p in results.rglob("*") if p.is_file()}
    count = Store(results / "runs.sqlite", read_only=True).count()
    assert main(["study", "--profile", "tiny", "--verdicts", "--results-dir", str(results)]) == 0
    printed = capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in results.rglob("*") if p.is_file()} == before
    assert Store(results / "runs.sqlite", read_only=True).count() == count
    notebook = pd.read_csv(results / "findings_verdicts.csv")
    for row in notebook.itertuples():
        assert f"{row.model} {row.claim}: {row.verdict}\n" in printed
    # the library call behind it, compared field by field
    store = study.results_store(results, read_only=True)
    again = pd.concat([findings.model_verdicts(findings.verdict_inputs("tiny", m, store, run=False))
                       for m in notebook["model"].unique()], ignore_index=True)
    assert list(again["verdict"]) == list(notebook["verdict"]) and list(again["summary"]) == list(notebook["summary"])
    # a stored grid counts its runs; an empty results folder is refused with the command that fills it
    assert "seed_variance" in printed
    assert main(["study", "--profile", "tiny", "--verdicts", "--results-dir", str(tmp_path / "empty")]) == 2
    assert "compute some first with `calib study --profile tiny --runs-only`" in capsys.readouterr().err
    assert not (tmp_path / "empty").exists()


def test_notebooks_without_task_data_rest_on_perplexity_and_say_so(tmp_path, monkeypatch):
    """A fresh machine has no offline mirror: tasks are skipped, and the notebooks that branch on
    accuracy still run, draw their figures from perplexity and say why accuracy is missing."""
    monkeypatch.delenv("CALIB_MIRROR", raising=False)
    notebooks.execute_notebooks("tiny", only=["04_seed_variance", "01_sample_count"], results_dir=tmp_path / "r",
                      figures_dir=tmp_path / "f", html=False, log=lambda *a: None)
    findings = study.load_findings(tmp_path / "r")
    assert "task accuracy is unavailable" in findings["04_seed_variance"]["text"]
    assert "task accuracy is unavailable" in findings["01_sample_count"]["text"]
    assert (tmp_path / "f" / "04_seed_variance-swing.png").is_file()
    table = study.wide(Store(tmp_path / "r" / "runs.sqlite"))
    assert not study.has_accuracy(table) and table["ppl:geomean"].notna().all()


def test_noise_floor_and_baseline_grids():
    from calib_lib.runs.spec import check_replicates
    quick = study.get_profile("quick")
    grid = study.noise_floor_grid(quick)
    assert len(grid.specs) == len(quick.methods) * (quick.replicates + 1)
    for label in {labels["method_label"] for labels, _ in grid.points}:
        members = [spec for labels, spec in grid.points if labels["method_label"] == label]
        assert [s.replicate for s in members] == [0, 1, 2]
        check_replicates([s.normalized() for s in members])
    base = study.grids._spec(quick, quick.methods[0])
    assert grid.points[0][1].key == base.key                     # replicate 0 is the study's own base run
    baselines = study.baseline_grid(quick)
    assert [labels["method_label"] for labels, _ in baselines.points] == ["dense", "magnitude 50%", "rtn 3-bit g128"]
    assert all(spec.calibration is None for spec in baselines.specs)


def test_optional_sources_join_only_where_available(monkeypatch):
    monkeypatch.delenv("CALIB_MIRROR", raising=False)
    assert study.resolve_sources(("wikipedia",), ("c4",)) == ("wikipedia",)


def test_wide_table_keeps_kl_and_standard_errors_apart_from_perplexity(tmp_path):
    """KL to dense and top-1 agreement are scored per perplexity text: they get their own columns (they once
    shared ``ppl:<text>`` with perplexity), and each task's stored standard error rides along as ``se:``."""
    store = Store(tmp_path / "runs.sqlite")
    spec = study.grids._spec(TINY, TINY.methods[0])
    text = {"kind": "perplexity", "stderr": None}
    store.put(spec.key, "done", spec.label(), spec.normalized(), _record([
        {**text, "name": "wikipedia", "metric": "perplexity", "value": 10.0},
        {**text, "name": "wikipedia", "metric": "kl_mean", "value": 0.5},
        {**text, "name": "wikipedia", "metric": "kl_p99", "value": 4.0},
        {**text, "name": "wikipedia", "metric": "top1_agreement", "value": 0.8},
        {**text, "name": "news", "metric": "kl_mean", "value": 2.0},
        {**text, "name": "news", "metric": "perplexity", "value": 40.0},
        {**text, "name": "news", "metric": "top1_agreement", "value": 0.6},
        {"kind": "task", "name": "arc_easy", "metric": "acc", "value": 0.5, "stderr": 0.3},
        {"kind": "task", "name": "copa", "metric": "acc", "value": 0.7, "stderr": 0.4},
        {"kind": "task", "name": "mean", "metric": "acc", "value": 0.6, "stderr": None}]))
    row = study.wide(store).iloc[0]
    assert row["ppl:wikipedia"] == 10.0 and row["ppl:news"] == 40.0 and row["ppl:geomean"] == pytest.approx(20.0)
    assert row["kl_mean:wikipedia"] == 0.5 and row["kl_p99:wikipedia"] == 4.0 and row["top1:news"] == 0.6
    assert row["kl:geomean"] == pytest.approx(1.0) and row["top1:mean"] == pytest.approx(0.7)
    assert row["se:acc:copa"] == 0.4 and row["se:acc:mean"] == pytest.approx(math.sqrt(0.3 ** 2 + 0.4 ** 2) / 2)
    assert row["replicate"] == 0
    assert study.tables.figure_metrics(study.wide(store)) == ["ppl:geomean", "kl:geomean", "acc:mean"]
    assert study.tables.documents(store, study.wide(store)) is None        # no per-document records stored


def test_documents_of_several_tables_reads_every_runs_records_once():
    """05 pairs its self-generated runs with 03's real sources: the records of both tables' runs, each run once
    (with only its own table's, the paired CI against a 03 run came out empty and its sentence dropped it)."""
    class Recording:
        def documents(self, keys):
            self.keys = keys
            return pd.DataFrame({"key": keys})
    store = Recording()
    a, b = pd.DataFrame({"key": ["k1", "k2"]}), pd.DataFrame({"key": ["k2", "k3"]})
    assert list(study.tables.documents(store, a, b)["key"]) == ["k1", "k2", "k3"] == store.keys
    assert study.tables.documents(store, None, a.iloc[0:0]) is None
