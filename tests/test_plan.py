"""A profile's run plan (study.plan): every run the notebooks ask for, once, claims first."""
import pandas as pd

from calib_lib import study
from calib_lib.study import grids, planning as plan_mod, profiles
from conftest import REPO


def _notebook_keys(profile):
    """Keys of every grid the notebooks read: every grid for the profile's model; 06's grids and 07's vocabulary
    grid for each findings model; 08's summaries for each summary model."""
    keys = set()
    for name, grid in grids.GRIDS.items():
        if name != "dense":
            keys |= {s.key for s in grid(profile).specs}
    for model in profile.findings_models:
        cfg = profiles.findings_profile(profile, model)
        for name in plan_mod.VERDICT_GRIDS:
            keys |= {s.key for s in grids.GRIDS[name](cfg).specs}
    for cfg in study.vocabulary_profiles(profile).values():
        keys |= {s.key for s in grids.vocabulary_grid(cfg).specs}
    for model in profile.summary_models:
        keys |= {s.key for s in grids.GRIDS["summarization"](profiles.findings_profile(profile, model)).specs}
    return keys


def test_the_plan_holds_every_run_the_notebooks_need_once():
    cfg = study.get_profile("tiny")
    frame = study.plan(cfg)
    assert frame["key"].is_unique
    assert set(frame["key"]) == _notebook_keys(cfg)
    assert list(frame["order"]) == list(range(len(frame)))


def test_the_plan_puts_baselines_and_the_claims_pair_first_and_one_model_after_the_other():
    cfg = study.get_profile("standard")
    frame = study.plan(cfg)
    summaries = frame[frame["tier"] == 4]
    assert set(summaries["grid"]) == {"summarization"} and set(summaries["model"]) == set(cfg.summary_models)
    assert summaries["order"].min() == len(frame) - len(summaries)                    # 08 last of all
    late = frame[frame["tier"] == 3]
    assert set(late["grid"]) == {"selection"} and late["order"].max() < summaries["order"].min()   # then 09
    assert late["order"].min() == len(frame) - len(summaries) - len(late)
    frame = frame[frame["tier"] < 3]
    first = frame[frame["model"] == cfg.model]
    assert first["order"].max() < frame[frame["model"] != cfg.model]["order"].min()
    assert first.iloc[0]["method_label"] == "dense" and first.iloc[0]["grid"] == "baselines"
    pair = plan_mod.claim_pair(cfg)
    assert pair == {"sparsegpt 50%", "gptq 3-bit g128"}
    tiers = first["tier"].to_numpy()
    assert (tiers[:-1] <= tiers[1:]).all()                        # tier 0, then 1, then 2
    assert set(first.loc[first["tier"] == 0, "method_label"]) <= pair | {"dense", "magnitude 50%", "rtn 3-bit g128"}
    assert set(first.loc[first["tier"] == 2, "grid"]) == {"sequence_length"}


def test_a_second_model_gets_only_what_its_verdicts_read():
    cfg = study.get_profile("standard")
    gemma = profiles.findings_profile(cfg, "gemma3-270m")
    assert gemma.model == "gemma3-270m" and gemma.methods == profiles.claim_methods(cfg)
    assert gemma.self_methods == (profiles.SPARSEGPT_24,)
    assert profiles.findings_profile(cfg, cfg.model) is cfg
    frame = study.plan(cfg)
    other = frame[(frame["model"] == "gemma3-270m") & (frame["grid"] != "summarization")]   # 08: its own grid
    assert not set(other["grid"]) & set(plan_mod.NOTEBOOK_ONLY_GRIDS)
    labels = set(other["method_label"])
    assert "wanda 50%" not in labels and "awq 3-bit g128" not in labels


def test_the_standard_budget_meets_the_evidence_issue():
    """#18's floor: >= 4 real sources + random + self drawn >= 5 times, 32 x 512, >= 6 counts up to >= 128 for
    SparseGPT, Wanda and GPTQ, replicates for every method, >= 6 tasks of >= 300 documents, >= 3 texts."""
    cfg = study.get_profile("standard")
    assert cfg.num_samples == 32 and cfg.seq_len == 512 and cfg.sets >= 5
    drawn = set(cfg.variance_sources)
    assert {"random-vocab", "self"} <= drawn and len(drawn - {"random-vocab", "self"}) >= 4
    assert len(cfg.sample_counts) >= 6 and min(cfg.sample_counts) == 1 and max(cfg.sample_counts) >= 128
    assert {m["name"] for m in cfg.count_methods} == {"sparsegpt", "wanda", "gptq"}
    names = {m["name"] for m in cfg.methods + cfg.baselines + cfg.self_methods}
    assert {"sparsegpt", "wanda", "gptq", "awq", "magnitude", "rtn"} <= names
    assert any(m.get("n") == 2 and m["name"] == "sparsegpt" for m in cfg.self_methods)
    assert any(m.get("n") == 2 and m["name"] == "wanda" for m in cfg.self_methods)
    assert cfg.replicates >= 2
    assert len(cfg.suite["tasks"]) >= 6 and cfg.suite["task_limit"] >= 300 and len(cfg.suite["ppl_texts"]) >= 3
    floor = grids.noise_floor_grid(cfg)
    assert {p[0]["method_label"] for p in floor.points} == {"sparsegpt 50%", "wanda 50%", "gptq 3-bit g128",
                                                            "awq 3-bit g128"}


def test_plan_summary_counts_done_runs(tmp_path):
    cfg = study.get_profile("tiny")
    frame = study.plan(cfg)
    store = study.results_store(tmp_path)
    first = frame.iloc[0]
    store.put(first["key"], "done", first["label"], first["spec"].normalized(), {"metrics": []})
    summary = study.plan_summary(frame, store)
    assert int(summary["done"].sum()) == 1 and int(summary["runs"].sum()) == len(frame)
    assert isinstance(summary, pd.DataFrame)


def test_plan_summary_estimates_hours_left_from_finished_runs_of_the_same_kind(tmp_path):
    cfg = study.get_profile("tiny")
    frame = study.plan(cfg)
    store = study.results_store(tmp_path)
    classes = frame["spec"].map(lambda spec: plan_mod.cost_class(spec.normalized()))
    sparsegpt = frame[classes.map(lambda c: c == (cfg.model, "sparsegpt", False, False, False))]
    for (_, row), total in zip(sparsegpt.iloc[:3].iterrows(), (10.0, 30.0, 500.0)):   # 500: a paused run
        store.put(row["key"], "done", row["label"], row["spec"].normalized(),
                  {"metrics": [], "timings": {"total": total}})
    seconds = plan_mod.estimated_seconds(frame, store)
    own = classes.map(lambda c: c[0] == cfg.model)
    assert (seconds[sparsegpt.index] == 30.0).all()                       # the class's median, not its mean
    other = classes.map(lambda c: c[1] != "sparsegpt" and not c[3]) & own
    assert (seconds[other[other].index] == 30.0).all()                     # the model's median for its kind
    summaries = classes.map(lambda c: c[3])
    assert summaries.any() and seconds[summaries].isna().all()            # no summary run finished: unknown
    assert (~own).any() and seconds[~own].isna().all()                     # nor any run of the second model
    summary = study.plan_summary(frame, store)
    left = summary[summary["model"] == cfg.model].set_index("grid")["hours_left"]
    assert pd.isna(left["summarization"]) and left.drop("summarization").notna().all()
    assert summary.loc[summary["model"] != cfg.model, "hours_left"].isna().all()
    not_done = (~frame["key"].isin(sparsegpt["key"].iloc[:3])) & ~summaries & own
    assert abs(summary["hours_left"].sum() - 30.0 * not_done.sum() / 3600) < 1e-9


def test_phase_times_are_medians_per_model_and_method_with_cpu_seconds_where_recorded(tmp_path):
    cfg = study.get_profile("tiny")
    frame = study.plan(cfg)
    store = study.results_store(tmp_path)
    assert study.phase_times(store).empty
    classes = frame["spec"].map(lambda spec: plan_mod.cost_class(spec.normalized()))
    sparsegpt = frame[classes.map(lambda c: c[1:] == ("sparsegpt", False, False, False))]
    for (_, row), total in zip(sparsegpt.iloc[:3].iterrows(), (10.0, 30.0, 500.0)):   # 500: a paused run
        extra = {"cpu_seconds": {"total": total / 2}} if total != 10.0 else {}           # older runs lack it
        store.put(row["key"], "done", row["label"], row["spec"].normalized(),
                  {"metrics": [], "timings": {"compression": total / 5, "total": total}, **extra})
    failed = frame[classes.map(lambda c: c[1] == "wanda")].iloc[0]
    store.put(failed["key"], "failed", failed["label"], failed["spec"].normalized(), {"error": "boom"})
    table = study.phase_times(store)
    assert list(table.index) == [(cfg.model, "sparsegpt")]                 # the failed run is not counted
    row = table.iloc[0]
    assert row["total"] == 30.0 and row["compression"] == 6.0 and row["runs"] == 3
    assert row["cpu_total"] == (15.0 + 250.0) / 2                          # the median of the runs that have it
    assert pd.isna(row["calibration"])                                     # no run recorded that phase


def test_cli_plan_prints_the_plan_and_starts_nothing(tmp_path, capsys):
    from calib_lib.cli import main
    assert main(["study", "--profile", "tiny", "--plan", "--results-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"{len(study.plan('tiny'))} runs in all, 0 done" in out and "baselines" in out
    assert not (tmp_path / "runs").exists() and not (tmp_path / "runs.sqlite").exists()


def test_notebooks_of_a_sweep_first_profile_refuse_to_start_its_missing_runs(tmp_path, monkeypatch, capsys):
    from dataclasses import replace

    import pytest

    from calib_lib import cli
    from calib_lib.errors import InvalidInput
    from calib_lib.notebooks import notebook_names
    swept = replace(profiles.PROFILES["tiny"], sweep_first=True)
    monkeypatch.setitem(profiles.PROFILES, "tiny", swept)
    frame = study.plan(swept)
    needed = study.notebook_keys(swept, notebook_names(None))
    assert needed == set(frame["key"])                  # the plan is what the notebooks read, both ways
    last = frame[frame["grid"] == "summarization"].iloc[-1]      # only 08 reads it
    store = study.results_store(tmp_path)
    for row in frame[frame["key"] != last["key"]].itertuples():
        store.put(row.key, "done", row.label, row.spec.normalized(), {"metrics": [], "timings": {"total": 7200.0}})
    store.export_archive()
    assert cli.main(["study", "--profile", "tiny", "--results-dir", str(tmp_path), "--no-html"]) == 2
    err = capsys.readouterr().err
    assert f"1 of the {len(needed)} runs" in err and "--runs-only" in err and "--allow-runs" in err
    assert "(~2.0 hours on this kind of machine)" in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*.ipynb"))                                  # no notebook executed
    args = cli.build_parser().parse_args(["study", "--profile", "tiny", "--results-dir", str(tmp_path)])
    for only, allow in ((["10_explore", "00_overview"], False), (["04_seed_variance", "06_findings"], False),
                        (None, True)):                  # read-only notebooks; notebooks whose runs are all stored
        args.only, args.allow_runs = only, allow
        cli._refuse_foreground_sweep(args, REPO)
    args.only, args.allow_runs = ["08_summarization"], False
    with pytest.raises(InvalidInput, match=r"1 of the \d+ runs these tiny notebooks read"):
        cli._refuse_foreground_sweep(args, REPO)
    args.only, args.results_dir = None, str(tmp_path / "empty")        # nothing stored: no estimate, no folder
    with pytest.raises(InvalidInput, match=f"{len(needed)} of the {len(needed)} runs") as refused:
        cli._refuse_foreground_sweep(args, REPO)
    assert "hours" not in str(refused.value) and not (tmp_path / "empty").exists()
    store.put(last["key"], "done", last["label"], last["spec"].normalized(), {"metrics": []})
    store.export_archive()
    args.results_dir = str(tmp_path)
    cli._refuse_foreground_sweep(args, REPO)                                 # every run is stored
    monkeypatch.setitem(profiles.PROFILES, "tiny", replace(swept, sweep_first=False))
    args.results_dir = str(tmp_path / "empty")
    cli._refuse_foreground_sweep(args, REPO)                                 # quick and tiny compute their own


def test_a_model_named_explicitly_gets_its_summary_grid_in_the_plan():
    cfg = study.get_profile("tiny", model="tiny-gptneox")
    assert "tiny-gptneox" not in cfg.summary_models
    frame = study.plan(cfg, ["tiny-gptneox"])
    keys = study.notebook_keys(cfg, ["08_summarization"], "tiny-gptneox")
    assert keys and keys <= set(frame["key"])


def test_results_guide_counts_archived_runs_and_shows_repo_relative_folders(tmp_path):
    quick = tmp_path / "results" / "quick"
    (quick / "runs").mkdir(parents=True)
    key = study.plan("quick")["key"].iloc[0]
    (quick / "runs" / f"{key}.zip").write_bytes(b"")               # counted by name, not opened
    (quick / "01_sample_count.html").write_text("")
    text = study.results_guide(quick, tmp_path / "figures", "quick")
    row = next(line for line in text.splitlines() if line.startswith("| `quick`"))
    assert f"| 1 / {len(study.plan('quick'))} | 1 |" in row and "`results/quick/`" in row and "`figures/`" in row
    assert str(tmp_path) not in text
    assert "`figures/standard/`" in text


def test_07_reads_each_findings_models_vocabulary_grid_as_the_plan_builds_it():
    """07 prunes the vocabulary of every findings model (the plan computes those grids): a second model with the
    claims' pair of methods only, so the notebook reads exactly the runs the sweep made; --model X alone, whole."""
    from dataclasses import replace
    cfg = replace(study.get_profile("tiny"), findings_models=("tiny-llama", "tiny-gemma3"))
    models = study.vocabulary_profiles(cfg)
    assert list(models) == ["tiny-llama", "tiny-gemma3"]
    assert models["tiny-llama"] is cfg and models["tiny-gemma3"] == profiles.findings_profile(cfg, "tiny-gemma3")
    keys = study.notebook_keys(cfg, ["07_vocabulary"])
    frame = study.plan(cfg)
    assert keys <= set(frame["key"])                   # (a run sits under the first grid that asks for it)
    gemma = {s.key for s in grids.vocabulary_grid(models["tiny-gemma3"]).specs}
    assert gemma and gemma <= keys
    alone = study.vocabulary_profiles(cfg, "tiny-gemma3")
    assert list(alone) == ["tiny-gemma3"] and alone["tiny-gemma3"].methods == cfg.methods
    named = study.get_profile("tiny", model="tiny-gemma3")          # as `calib study --model` builds it
    assert study.notebook_keys(named, ["07_vocabulary"], "tiny-gemma3") <= set(study.plan(named, ["tiny-gemma3"])["key"])


def test_06_with_a_second_model_named_reads_the_claims_grids_the_sweep_made(monkeypatch):
    """`calib study --only 06_findings --model X`, X a findings model other than the profile's own: 06 tests X
    on findings_profile(profile name, X) (the claims' pair), so the refusal asks for those runs, which the sweep
    (no --model) computes, and not for the whole profile's grids on X, which it never does."""
    from dataclasses import replace
    tiny = study.get_profile("tiny")
    cfg = replace(tiny, findings_models=("tiny-llama", "tiny-gemma3"), methods=tiny.methods + (profiles.WANDA,))
    monkeypatch.setitem(profiles.PROFILES, "tiny", cfg)
    named = study.get_profile("tiny", model="tiny-gemma3")          # as the CLI builds it for --model
    keys = study.notebook_keys(named, ["06_findings"], "tiny-gemma3")
    second = profiles.findings_profile(cfg, "tiny-gemma3")
    assert profiles.WANDA not in second.methods                     # the claims' pair only
    assert keys == {s.key for g in plan_mod.VERDICT_GRIDS for s in grids.GRIDS[g](second).specs}
    assert keys <= set(study.plan(cfg)["key"])
    assert study.notebook_keys(cfg, ["06_findings"], "tiny-llama") == {
        s.key for g in plan_mod.VERDICT_GRIDS for s in grids.GRIDS[g](cfg).specs}


def test_store_contents_counts_runs_per_model_and_folds_vocabulary_runs_into_one_entry_per_method():
    runs = pd.DataFrame({
        "model": ["m1", "m1", "m1", "m1", "m2"],
        "method_label": ["dense", "wanda 50%", "dense + vocab: c4/32x512/set0", "dense + vocab: a + b",
                         "wanda 50% + vocab: suite"],
        "vocabulary": [None, float("nan"), "vocab: c4/32x512/set0", "vocab: a + b", "vocab: suite"]})
    text = study.store_contents(runs)
    assert text.startswith("5 finished runs in `runs/` (m1 4, m2 1); methods: dense, wanda 50%.")
    # a vocabulary whose name holds ' + ' is still cut off whole, not at its last ' + '
    assert text.endswith("With a pruned vocabulary (07): dense (2 vocabularies), wanda 50% (1 vocabulary).")
    assert "c4/32x512" not in text
    assert study.store_contents(runs.iloc[:0], "x/runs/") == "No finished runs in `x/runs/` yet."
    assert "pruned vocabulary" not in study.store_contents(runs.iloc[:2].drop(columns="vocabulary"))


def test_a_reading_notebook_refuses_a_folder_without_runs_and_creates_nothing(tmp_path):
    import pytest

    from calib_lib.errors import StoreError
    typo = tmp_path / "reslts" / "quick"
    with pytest.raises(StoreError, match=f"no runs in {typo}.*check results_dir"):
        study.results_store(typo, existing=True)
    assert not (tmp_path / "reslts").exists()
    store = study.results_store(tmp_path / "quick")                 # a study notebook creates its store
    assert study.results_store(tmp_path / "quick", existing=True).path == store.path


def test_reading_notebooks_alone_on_a_folder_without_runs_are_refused_in_one_line(tmp_path, capsys):
    from calib_lib import cli
    empty = tmp_path / "reslts"
    assert cli.main(["study", "--profile", "tiny", "--only", "10_explore", "00_overview", "--results-dir",
                     str(empty), "--no-html"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"no runs in {empty} for 10_explore, 00_overview to read" in err and len(err.splitlines()) == 1
    assert not empty.exists()
