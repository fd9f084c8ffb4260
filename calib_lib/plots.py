"""Seaborn figures shared by the notebooks: one style, titled for a paper, saved as PNG and SVG.

Each function takes a tidy table, draws one figure, writes ``<figures_dir>/<notebook>-<name>.png`` and
``.svg`` and returns the figure. The subtitle names the model, the settings and n, so a figure read on
its own says what it shows. Error bars are bootstrap 95% CIs with a fixed seed (identical reruns).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter, NullFormatter
import seaborn as sns

from .files import atomic_write

ERRORBAR = ("ci", 95)
SEED = 0


def style() -> None:
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.1)
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 150, "savefig.bbox": "tight",
                         "svg.hashsalt": "calib_lib", "svg.fonttype": "none"})


def save(fig, figures_dir: str | Path, notebook: str, name: str) -> list[Path]:
    """Write the figure as PNG and SVG (metadata without dates, so reruns give the same files)."""
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext, metadata in (("png", {"Software": None}), ("svg", {"Date": None, "Creator": None})):
        path = figures_dir / f"{notebook}-{name}.{ext}"
        with atomic_write(path) as handle:
            fig.savefig(handle, format=ext, metadata=metadata)
        paths.append(path)
    return paths


def _finish(fig, title: str, subtitle: str):
    # Title and subtitle sit above the axes (savefig's tight bbox keeps them); neither overlaps a panel.
    fig.text(0.5, 1.0, subtitle, ha="center", va="bottom", fontsize=9, color="0.35")
    fig.text(0.5, 1.045, title, ha="center", va="bottom", fontsize=13, fontweight="bold")
    return fig


PLAIN = FuncFormatter(lambda value, _: f"{value:g}")


def _log_axis(ax, axis: str, values=None) -> None:
    """Log scale with plain numbers (30, 100, 300) instead of 3 x 10^1; ticks at the data's values on x."""
    if axis == "x":
        ax.set_xscale("log", base=2)
        if values is not None:
            ax.set_xticks(sorted(set(values)))
        ax.xaxis.set_major_formatter(PLAIN)
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(PLAIN)
        ax.yaxis.set_minor_formatter(PLAIN)


def _legend(ax) -> None:
    if ax.get_legend():
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1), frameon=False, title=None)
        for text in ax.get_legend().texts:           # section headers when hue and style both show
            if text.get_text() in ("method_label", "regime", "family"):
                text.set_text({"method_label": "method"}.get(text.get_text(), text.get_text()))
                text.set_fontweight("bold")


def _reference(ax, reference: dict | None, y: str) -> None:
    if reference and y in reference and pd.notna(reference[y]):
        ax.axhline(reference[y], ls="--", lw=1, color="0.4")
        ax.annotate("dense", xy=(1, reference[y]), xycoords=("axes fraction", "data"), xytext=(-2, 3),
                    textcoords="offset points", ha="right", fontsize=8, color="0.4")


def _label(column: str) -> str:
    kind, _, name = column.partition(":")
    if kind == "ppl":
        return "perplexity (geometric mean over texts)" if name == "geomean" else f"{name} perplexity"
    if kind in ("acc", "acc_norm"):
        return "mean accuracy over tasks" if name == "mean" else f"{name} {kind}"
    return column.replace("calibration.", "").replace("_", " ")


def trend(table: pd.DataFrame, x: str, ys: list[str], *, hue: str = "method_label", col_wrap: int | None = None,
          logx: bool = True, logy: list[str] | None = None, title: str, subtitle: str,
          style_col: str | None = None, reference: dict | None = None):
    """One panel per metric: the metric against x (e.g. num_samples), one line per hue, CI bars;
    ``reference`` maps a metric to a dashed horizontal line (the dense model)."""
    logy = logy or []
    fig, axes = plt.subplots(1, len(ys), figsize=(4.6 * len(ys), 3.8), squeeze=False)
    for ax, y in zip(axes[0], ys):
        sns.lineplot(data=table, x=x, y=y, hue=hue, style=style_col, marker="o", errorbar=ERRORBAR,
                     seed=SEED, ax=ax, legend=ax is axes[0][-1])
        _reference(ax, reference, y)
        if logx:
            _log_axis(ax, "x", table[x].dropna())
        if y in logy:
            _log_axis(ax, "y")
        ax.set_xlabel(_label(x))
        ax.set_ylabel(_label(y))
    _legend(axes[0][-1])
    fig.tight_layout()
    return _finish(fig, title, subtitle)


def points(table: pd.DataFrame, x: str, ys: list[str], *, hue: str = "method_label", order: list | None = None,
           logy: list[str] | None = None, title: str, subtitle: str, reference: dict | None = None):
    """One panel per metric: a point (mean, CI) per category of x, the individual runs as dots."""
    logy = logy or []
    fig, axes = plt.subplots(1, len(ys), figsize=(4.8 * len(ys), 4.0), squeeze=False)
    for ax, y in zip(axes[0], ys):
        np.random.seed(SEED)                          # seaborn's strip jitter draws from numpy's global RNG
        sns.stripplot(data=table, x=x, y=y, hue=hue, order=order, dodge=True, alpha=0.45, size=4,
                      ax=ax, legend=False)
        sns.pointplot(data=table, x=x, y=y, hue=hue, order=order, dodge=0.4, errorbar=ERRORBAR, seed=SEED,
                      linestyle="none", markers="D", capsize=0.08, ax=ax, legend=ax is axes[0][-1])
        _reference(ax, reference, y)
        if y in logy:
            _log_axis(ax, "y")
        ax.set_xlabel(_label(x))
        ax.set_ylabel(_label(y))
        ax.tick_params(axis="x", rotation=30)
    _legend(axes[0][-1])
    fig.tight_layout()
    return _finish(fig, title, subtitle)


def heatmaps(panels: dict[str, pd.DataFrame], *, title: str, subtitle: str, fmt: str = ".2f",
             cmap: str = "rocket_r", xlabel: str = "", ylabel: str = "", center=None):
    """Labelled matrices side by side, one per panel title (e.g. calibration source x evaluation text
    for each method)."""
    first = next(iter(panels.values()))
    fig, axes = plt.subplots(1, len(panels), squeeze=False,
                             figsize=((1.0 * first.shape[1] + 2.5) * len(panels), 0.5 * first.shape[0] + 2.2))
    for ax, (name, matrix) in zip(axes[0], panels.items()):
        sns.heatmap(matrix.astype(float), annot=True, fmt=fmt, cmap=cmap, center=center, ax=ax,
                    cbar_kws={"shrink": 0.8})
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel if ax is axes[0][0] else "")
    fig.tight_layout()
    return _finish(fig, title, subtitle)


def spread(table: pd.DataFrame, x: str, y: str, *, hue: str | None = None, title: str, subtitle: str,
           ylabel: str | None = None):
    """Box plot of spreads with every observation as a dot (e.g. per-task range across sets)."""
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * table[x].nunique() + 3), 4.0))
    sns.boxplot(data=table, x=x, y=y, hue=hue, ax=ax, fliersize=0, boxprops={"alpha": 0.5})
    np.random.seed(SEED)                              # reproducible strip jitter (numpy's global RNG)
    sns.stripplot(data=table, x=x, y=y, hue=hue, dodge=hue is not None, ax=ax, size=4, alpha=0.8,
                  legend=False)
    ax.set_xlabel(_label(x))
    ax.set_ylabel(ylabel or _label(y))
    ax.tick_params(axis="x", rotation=30)
    _legend(ax)
    fig.tight_layout()
    return _finish(fig, title, subtitle)
