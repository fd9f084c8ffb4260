"""Notebook 07: how much of the vocabulary the data needs, and what a calibration-derived vocabulary costs.

Williams & Aletras (2023) prune the embedding rows of tokens a task never uses and report no loss in accuracy
with a large cut in memory. ``vocabulary_usage`` measures, from tokens alone, how many distinct tokens each
task and each calibration source uses (and how that grows with the calibration set), and which share of each
task's tokens a calibration set's vocabulary covers. ``vocabulary_table`` reads the vocabulary grid's runs
(``grids.vocabulary_grid``): what each kept, the parameters and bytes it saved, and its accuracy against the
same model and method with the full vocabulary, paired over documents. ``vocabulary_verdict`` tests the
published claim as a rule (V1, below), with the same verdict vocabulary and equivalence test as claim F4.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd

from ..runs.store import Store
from .grids import StudyGrid
from .profiles import Profile, findings_profile, get_profile, resolve_sources

# V1's equivalence margin: one accuracy point, as F4 (a difference below it is no loss for any reader of the
# papers' tables, and the budgets here resolve it).
V1_MARGIN = 0.01
V1_STATEMENT = ("A vocabulary of the tasks' own tokens keeps accuracy (within +-1 point, paired over documents) "
                "while cutting the model's parameters (Williams & Aletras 2023)")
V1_RULE = ("per (model, method): TOST (+-1 point) on per-document accuracy differences, task vocabulary - full; "
           "holds: every 90% CI inside +-1 point; does not hold: one outside; untestable: 80%-power bound > 1 point")


def vocabulary_usage(profile: Profile, tokenizer, counts: tuple | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(usage, coverage), from tokens alone (no forward pass).

    ``usage``: one row per task or evaluation text of the profile's suite (``kind`` task / perplexity) and per
    calibration set of each real ``vocab_sources`` source at each of ``counts`` samples (default: the profile's
    sample counts and vocabulary sizes) of ``seq_len`` tokens, set 0: ``tokens``, ``distinct`` ids and their
    ``share`` of the vocabulary. ``coverage``: per (calibration set, task or text), the share of that task's
    tokens the set's ids cover (1 - the token-level out-of-vocabulary rate a vocabulary built from the set gives)."""
    import torch

    from ..data.sampling import sample
    from ..data.spec import CalibrationSpec
    from ..evaluate.vocabulary import suite_tokens
    vocab_size = len(tokenizer)
    evaluation = suite_tokens(tokenizer, profile.suite)
    rows = [{"kind": kind, "name": name, "num_samples": np.nan, "tokens": int(t.numel()),
             "distinct": int(torch.unique(t).numel())} for (kind, name), t in evaluation.items()]
    counts = tuple(sorted(set(counts or (tuple(profile.sample_counts) + tuple(profile.vocab_sizes)))))
    sources = resolve_sources(profile.vocab_sources) if profile.vocab_sources else ()
    coverage = []
    for source in sources:
        for n in counts:
            cal = sample(CalibrationSpec(source, n, profile.seq_len, profile.seed, 0), tokenizer, progress=False)
            ids = torch.unique(cal.input_ids)
            rows.append({"kind": "calibration", "name": source, "num_samples": n, "tokens": int(cal.input_ids.numel()),
                         "distinct": int(ids.numel())})
            kept = torch.zeros(vocab_size + 1, dtype=torch.bool)
            kept[ids] = True
            for (kind, name), t in evaluation.items():
                coverage.append({"source": source, "num_samples": n, "calibration_tokens": int(cal.input_ids.numel()),
                                 "kind": kind, "name": name,
                                 "coverage": float(kept[t.clamp(0, vocab_size)].float().mean()) if t.numel() else 1.0})
    usage = pd.DataFrame(rows)
    usage["share"] = usage["distinct"] / vocab_size
    return usage, pd.DataFrame(coverage)


def _expected_accuracy(store: Store, keys: list[str]) -> pd.DataFrame:
    """Per (key, task, doc_id): accuracy with ties among the best choices broken uniformly at random
    (``evaluate.vocabulary.expected_accuracy``: a document whose every choice holds a pruned token scores
    1/choices, not lm-eval's "choice 0 wins")."""
    from ..errors import StoreError
    try:
        choices = store.choices(keys)
    except StoreError:
        return pd.DataFrame(columns=["key", "name", "doc_id", "expected"])
    choices = choices[choices["loglik"].notna()]
    best = choices.groupby(["key", "name", "doc_id"])["loglik"].transform("max")
    top = choices["loglik"] == best                   # -inf == -inf: a document whose every choice is pruned ties all
    frame = choices.assign(top=top.astype(float), gold_top=(top & choices["is_gold"].astype(bool)).astype(float))
    sums = frame.groupby(["key", "name", "doc_id"])[["top", "gold_top"]].sum()
    return (sums["gold_top"] / sums["top"]).rename("expected").reset_index()


def vocabulary_table(store: Store, grid: StudyGrid) -> pd.DataFrame:
    """One row per finished run of the vocabulary grid: its method and vocabulary, what it kept (tokens, share of
    the vocabulary), the model's parameters and bytes before and after, accuracy and perplexity, KL(pruned ||
    unpruned), the share of the tasks' tokens and of their gold answers the vocabulary covers, and for pruned
    runs the paired difference in accuracy to its full-vocabulary run (``base_key``): mean over tasks, SE,
    95% CI, the TOST of V1 and the same with ties broken at random."""
    from ..stats import paired_accuracy_differences, paired_tost
    table = grid.results(store)
    if table.empty:
        return table
    keys = list(dict.fromkeys(list(table["key"]) + list(table["base_key"])))
    documents = None
    try:
        documents = store.documents(keys)
    except Exception:        # runs scored before per-document records: the paired columns stay empty
        pass
    expected = _expected_accuracy(store, keys)
    expected_mean = (expected.groupby(["key", "name"])["expected"].mean().groupby("key").mean()
                     if len(expected) else pd.Series(dtype=float))
    rows, vocab_of = [], {}
    for _, r in table.iterrows():
        vocab = vocab_of[r["key"]] = (store.get(r["key"]) or {}).get("vocabulary") or {}
        row = {"key": r["key"], "base_key": r["base_key"], "model": r["model"], "method_label": r["method_label"],
               "vocabulary_kind": r["vocabulary_kind"], "vocabulary_data": r["vocabulary_data"],
               "source": r.get("source", np.nan), "num_samples": r.get("num_samples", np.nan),
               "kept": vocab.get("kept", np.nan), "vocab_size": vocab.get("vocab_size", np.nan),
               "parameters_before": vocab.get("model_parameters_before", np.nan),
               "parameters_after": vocab.get("model_parameters_after", np.nan),
               "bytes_after": vocab.get("model_bytes_after", np.nan),
               "oov_input_tokens": vocab.get("oov_input_tokens", np.nan),
               "acc:mean": r.get("acc:mean", np.nan), "ppl:geomean": r.get("ppl:geomean", np.nan),
               "expected_acc": float(expected_mean.get(r["key"], np.nan))}
        kl = [c for c in r.index if c.startswith("kl_to_unpruned:") and pd.notna(r[c])]
        row["kl_to_unpruned"] = float(np.mean([r[c] for c in kl])) if kl else (0.0 if not vocab else np.nan)
        task_cov = [v for k, v in (vocab.get("coverage") or {}).items() if k.startswith("task/")]
        row["task_token_coverage"] = float(np.mean(task_cov)) if task_cov else (1.0 if not vocab else np.nan)
        if documents is not None:
            gold = documents[(documents["key"] == r["key"]) & (documents["kind"] == "task")]["gold_loglik"]
            row["gold_covered"] = float(np.isfinite(gold.astype(float)).mean()) if len(gold) else np.nan
            if r["key"] != r["base_key"]:
                pairs = paired_accuracy_differences(documents, r["key"], r["base_key"])
                if pairs:
                    tost = paired_tost(pairs, V1_MARGIN)
                    half95 = 1.959964 * tost["se"]
                    row.update(difference=tost["difference"], se=tost["se"],
                               ci95_low=tost["difference"] - half95, ci95_high=tost["difference"] + half95,
                               ci90_low=tost["ci_low"], ci90_high=tost["ci_high"], p_tost=tost["p_tost"],
                               mde=tost["mde"], documents=tost["documents"], docs_per_task=tost["docs_per_task"],
                               needed_docs_per_task=tost["needed_docs_per_task"])
        rows.append(row)
    out = pd.DataFrame(rows)
    base = out.set_index("key")["expected_acc"]
    out["expected_difference"] = out["expected_acc"] - out["base_key"].map(base)
    # a full-vocabulary run's size: what its pruned runs measured before pruning (the same weights)
    pruned = out[out["vocabulary_kind"] != "none"].dropna(subset=["parameters_before"]).drop_duplicates("base_key")
    for column, measured in (("parameters_before", "parameters_before"), ("vocab_size", "vocab_size")):
        out[column] = out[column].fillna(out["key"].map(pruned.set_index("base_key")[measured]))
    before = {r["base_key"]: vocab_of[r["key"]].get("model_bytes_before", np.nan) for _, r in pruned.iterrows()}
    full = out["vocabulary_kind"] == "none"
    out.loc[full, "bytes_after"] = out.loc[full, "key"].map(before)
    out.loc[full, "kept"] = out.loc[full, "vocab_size"]
    out["parameters_after"] = out["parameters_after"].fillna(out["parameters_before"])
    out["parameter_cut"] = 1 - out["parameters_after"] / out["parameters_before"]
    out["kept_share"] = out["kept"] / out["vocab_size"]
    return out


def _v1_outcome(r, margin: float, alpha: float) -> str:
    """V1's rule on one (model, method) row: its 90% CI wholly outside the margin, its TOST (and a cut), its
    80%-power bound, in that order."""
    from ..stats import UNTESTABLE
    if r.ci90_low > margin or r.ci90_high < -margin:
        return "does not hold"
    if r.p_tost < alpha and r.parameter_cut > 0:
        return "holds"
    return UNTESTABLE if r.mde > margin else "inconclusive"


def vocabulary_verdict(table: pd.DataFrame, *, margin: float = V1_MARGIN, alpha: float = 0.05) -> dict:
    """V1 on the task-derived vocabulary rows of ``vocabulary_table``: holds when the 90% CI of every (model,
    method)'s paired difference to its full-vocabulary run lies inside +-`margin` (TOST p < alpha for each) and
    each cut parameters; does not hold when one CI lies wholly outside (at any budget); otherwise untestable when
    the design's 80%-power equivalence bound exceeds the margin (the row says how many documents per task would
    do); else
    inconclusive. The 95% CI (does it contain 0: the issue's "inside the paired CI of dense") is reported too, and
    each (model, method)'s own outcome under the same rule (``outcome`` in the summary)."""
    from ..stats import UNTESTABLE
    rows = table[(table["vocabulary_kind"] == "task")] if len(table) else table
    base = {"claim": "V1", "statement": V1_STATEMENT, "rule": V1_RULE, "what_would_decide": ""}
    if rows.empty or "difference" not in rows or rows["difference"].isna().all():
        return {**base, "verdict": UNTESTABLE, "summary": "untestable: no task-vocabulary run with per-document "
                "task records (the suite has no tasks here, or the runs are missing)",
                "what_would_decide": "run the vocabulary grid with an evaluation suite that has tasks"}
    rows = rows[rows["difference"].notna()]
    # each (model, method) by the same rule, so that a reader sees which decide when the whole claim does not
    # (a pair that barely changes its answers decides at a budget where a noisier pair stays open)
    rows = rows.assign(outcome=[_v1_outcome(r, margin, alpha) for r in rows.itertuples()])
    per = "; ".join(f"{r.model} {r.method_label.split(' + ')[0]} {r.outcome}: {100 * r.difference:+.2f} points "
                    f"(95% CI {100 * r.ci95_low:+.2f} to {100 * r.ci95_high:+.2f}, {int(r.documents)} documents), "
                    f"{100 * r.parameter_cut:.0f}% fewer parameters" for r in rows.itertuples())
    worst = rows.loc[rows["p_tost"].idxmax()]
    numbers = {"p_value": float(worst["p_tost"]), "effect_size": float(worst["difference"]),
               "ci_low": float(worst["ci90_low"]), "ci_high": float(worst["ci90_high"]), "mde": float(rows["mde"].max()),
               "n": int(rows["documents"].sum()),
               "ci95_contains_zero": bool(((rows["ci95_low"] <= 0) & (rows["ci95_high"] >= 0)).all())}
    decide = (f"needs >= {int(rows['needed_docs_per_task'].max()):,} documents per task (has "
              f"{int(rows['docs_per_task'].min())}) for a +-{100 * margin:g} point equivalence at 80% power")
    # the claim from its rows' outcomes (one rule, ``_v1_outcome``): against it where one row is, for it where all are
    outside = bool((rows["outcome"] == "does not hold").any())
    # a CI wholly outside the margin decides against the claim at any budget; only equivalence needs the power
    if numbers["mde"] > margin and not outside:
        return {**base, **numbers, "verdict": UNTESTABLE, "what_would_decide": decide,
                "summary": f"untestable: the 80%-power equivalence bound is +-{100 * numbers['mde']:.1f} points > "
                           f"+-{100 * margin:g} ({per})"}
    holds = bool((rows["outcome"] == "holds").all())
    verdict = "does not hold" if outside else "holds" if holds else "inconclusive"
    return {**base, **numbers, "verdict": verdict, "summary": per,
            "what_would_decide": decide if verdict == "inconclusive" else ""}


def vocabulary_profiles(profile: str | Profile, model: str | None = None) -> dict[str, Profile]:
    """07's models, each with the profile its vocabulary grid is built from, as the run plan builds them
    (``planning.plan``): without `model`, the profile's own model and its findings models, a second model
    with ``findings_profile``'s methods (the claims' pair); `model` alone where given, on the whole profile
    (``--model X`` runs the notebooks for X)."""
    base = get_profile(profile) if isinstance(profile, str) else profile
    if model:
        return {model: replace(base, model=model)}
    return {name: findings_profile(base, name) for name in dict.fromkeys((base.model, *base.findings_models))}


def figure_name(kind: str, model: str, own_model: str) -> str:
    """A per-model figure's name: `kind` for the profile's own model (the name every single-model profile
    has always written), ``kind-<model>`` for another."""
    return kind if model == own_model else f"{kind}-{model}"


def per_model_text(texts: dict[str, str]) -> str:
    """One model's text as it is; several, each prefixed with its model."""
    if len(texts) == 1:
        return next(iter(texts.values()))
    return " ".join(f"**{name}**: {text}" for name, text in texts.items())


def vocabulary_finding(table: pd.DataFrame, verdict: dict, usage: pd.DataFrame | None = None,
                       coverage: pd.DataFrame | None = None) -> str:
    """The notebook's finding, generated from its numbers."""
    parts = []
    task = table[table["vocabulary_kind"] == "task"] if len(table) else table
    for r in task.itertuples():
        if pd.isna(r.kept):
            continue
        parts.append(f"{r.method_label}: keeps {int(r.kept):,} of {int(r.vocab_size):,} tokens "
                     f"({100 * r.kept_share:.1f}%), {100 * r.parameter_cut:.0f}% fewer model parameters "
                     f"({_millions(r.parameters_before)} -> {_millions(r.parameters_after)})"
                     + (f", accuracy {100 * r.difference:+.2f} points (95% CI {100 * r.ci95_low:+.2f} to "
                        f"{100 * r.ci95_high:+.2f})" if pd.notna(getattr(r, "difference", np.nan)) else ""))
    text = "Task-derived vocabulary: " + ("; ".join(parts) if parts else "no finished run") + "."
    text += f" V1 ({verdict['verdict']}): {verdict['summary']}."
    if verdict.get("what_would_decide"):
        text += f" To decide: {verdict['what_would_decide']}."
    cal = table[table["vocabulary_kind"] == "calibration"] if len(table) else table
    cal = cal[cal["kept"].notna()] if len(cal) else cal
    if len(cal):
        worst = cal.loc[cal["task_token_coverage"].idxmin()]
        best = cal.loc[cal["task_token_coverage"].idxmax()]
        text += (f" Calibration-derived vocabularies keep {_span(cal['kept'].min(), cal['kept'].max(), '{:,.0f}')} "
                 f"tokens; they cover "
                 + (f"{100 * worst.task_token_coverage:.1f}% ({worst.vocabulary_data}) to "
                    f"{100 * best.task_token_coverage:.1f}% ({best.vocabulary_data})"
                    if f"{100 * worst.task_token_coverage:.1f}" != f"{100 * best.task_token_coverage:.1f}"
                    else f"{100 * worst.task_token_coverage:.1f}%") + " of the tasks' tokens")
        if "gold_covered" in cal:
            text += (f" and {_span(100 * cal['gold_covered'].min(), 100 * cal['gold_covered'].max(), '{:.0f}')}% "
                     "of their gold answers (an answer holding a pruned token cannot be produced)")
        if "difference" in cal and cal["difference"].notna().any():
            lo, hi = cal.loc[cal["difference"].idxmin()], cal.loc[cal["difference"].idxmax()]
            if lo.difference == hi.difference:
                text += f"; accuracy against the full vocabulary {100 * lo.difference:+.1f} points for each"
            else:
                text += (f"; accuracy against the full vocabulary {100 * lo.difference:+.1f} ({lo.vocabulary_data}) "
                         f"to {100 * hi.difference:+.1f} points ({hi.vocabulary_data})")
        text += "."
    if coverage is not None and len(coverage):
        tasks = coverage[coverage["kind"] == "task"]
        if len(tasks):
            largest = tasks[tasks["num_samples"] == tasks["num_samples"].max()]
            by_source = largest.groupby("source")["coverage"].mean().sort_values()
            text += (f" From tokens alone, the largest calibration sets ({int(largest['num_samples'].iloc[0])} "
                     "samples) cover "
                     + (f"{100 * by_source.iloc[0]:.1f}% ({by_source.index[0]}) to {100 * by_source.iloc[-1]:.1f}% "
                        f"({by_source.index[-1]})" if len(by_source) > 1
                        else f"{100 * by_source.iloc[0]:.1f}% ({by_source.index[0]})") + " of the tasks' tokens.")
    return text


def _millions(count: float) -> str:
    """A parameter count in millions: whole millions from 100 M (never an exponent), 3 digits below (a tiny
    test model has a fraction of one)."""
    millions = count / 1e6
    return f"{millions:,.0f} M" if millions >= 100 else f"{millions:.3g} M"


def _span(low: float, high: float, fmt: str) -> str:
    """'low-high', or one number where both print the same (a single vocabulary, or several of one size)."""
    low, high = fmt.format(low), fmt.format(high)
    return low if low == high else f"{low}-{high}"


def _mib(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value / 2 ** 20:,.0f} MiB"


def vocabulary_view(table: pd.DataFrame) -> pd.DataFrame:
    """The table as the notebook shows it: points and percentages, millions of parameters, MiB."""
    if table.empty:
        return table
    view = pd.DataFrame({
        "method": table["method_label"].str.split(" + ", regex=False).str[0], "vocabulary": table["vocabulary_data"],
        "kept tokens": table["kept"], "kept %": 100 * table["kept_share"],
        "params (M)": table["parameters_after"] / 1e6, "cut %": 100 * table["parameter_cut"],
        "size": table["bytes_after"].map(_mib), "acc %": 100 * table["acc:mean"],
        "Δacc (points)": 100 * table.get("difference", np.nan),
        "95% CI": [f"{100 * lo:+.2f} to {100 * hi:+.2f}" if pd.notna(lo) else ""
                   for lo, hi in zip(table.get("ci95_low", [np.nan] * len(table)),
                                     table.get("ci95_high", [np.nan] * len(table)))],
        "Δacc ties random": 100 * table["expected_difference"],
        "task tokens kept %": 100 * table["task_token_coverage"],
        "gold answers kept %": 100 * table.get("gold_covered", np.nan),
        "KL to unpruned": table["kl_to_unpruned"], "ppl": table["ppl:geomean"]})
    return view.round(2)
