"""Studies: profiles (the budget), grids (which runs each notebook needs), tables (results as one row per
run) and findings I/O, so notebooks hold no logic of their own. Everything is importable from here:

    from calib_lib import study
    profile = study.get_profile("quick")
    grid = study.sample_count_grid(profile)
    study.run(grid, store)                 # only missing runs execute
    table = grid.results(store)            # one row per (run, grid label): metrics as columns
"""
from . import summaries
from .findings_io import load_findings, save_finding
from .grids import (GRIDS, StudyGrid, baseline_grid, dense_grid, noise_floor_grid, run, sample_count_grid,
                    seed_variance_grid, self_calibration_grid, sequence_length_grid, source_domain_grid,
                    vocabulary_grid, selection_grid, summarization_grid)
from .labels import fmt, method_family, method_label
from .headline import headline_table, headline_view
from .session import NotebookSession, headline_metrics, holds_runs, notebook_path, results_store, setup, stored_results
from .profiles import (AWQ3, CAVEAT_4BIT, GPTQ3, MAGNITUDE, MIRROR_SOURCES, PROFILES, PYPI_SOURCES, RTN3, SPARSEGPT,
                       SPARSEGPT_24, SPQR3, WANDA, WANDA_24, Profile,
                       available_real_sources, claim_methods, describe_budget, findings_profile, get_profile,
                       resolve_sources, suite_fields)
from .planning import notebook_keys, phase_times, plan, plan_summary, results_guide, run_plan, store_contents
from .vocabulary import (vocabulary_finding, vocabulary_profiles, vocabulary_table, vocabulary_usage,
                         vocabulary_verdict, vocabulary_view)
from .tables import (has_accuracy, long_metrics, ppl_columns, rank_of, same_domain_gap, task_columns, wide)

__all__ = ["AWQ3", "CAVEAT_4BIT", "GPTQ3", "GRIDS", "MAGNITUDE", "MIRROR_SOURCES", "NotebookSession", "PROFILES",
           "PYPI_SOURCES", "RTN3", "SPARSEGPT", "SPARSEGPT_24", "SPQR3", "WANDA", "WANDA_24", "Profile",
           "StudyGrid", "available_real_sources", "baseline_grid", "claim_methods", "dense_grid", "findings_profile", "noise_floor_grid", "describe_budget", "fmt", "get_profile",
           "has_accuracy", "headline_metrics", "headline_table", "headline_view", "load_findings", "long_metrics", "method_family", "method_label", "notebook_path",
           "phase_times", "plan", "store_contents", "plan_summary", "results_guide", "ppl_columns", "rank_of", "run_plan", "resolve_sources", "run", "same_domain_gap", "sample_count_grid",
           "save_finding", "seed_variance_grid", "self_calibration_grid", "sequence_length_grid", "results_store", "setup", "stored_results", "holds_runs", "notebook_keys",
           "source_domain_grid", "suite_fields", "summaries", "task_columns", "vocabulary_finding", "vocabulary_grid", "vocabulary_profiles", "selection_grid", "summarization_grid",
           "vocabulary_table", "vocabulary_usage", "vocabulary_verdict", "vocabulary_view", "wide"]
