"""Figures shared by the notebooks: one style, one colour per method, uncertainty on every point.

Each function takes a tidy table (one row per run), draws one figure, and returns it; ``save`` writes
``<figures_dir>/<notebook>-<name>.png`` and ``.svg``. The subtitle names the model, the settings and n, so a
figure read on its own says what it shows.

Colours: every method label has one colour in every figure (``method_color``: a fixed colour per method,
a darker shade for N:M sparsity, a lighter one for the layer-order variant), whichever other methods share
the figure; families (pruning, quantization) take their reference method's colour.

Uncertainty marks come from the table itself, so a figure shows what the runs measured:

* ``se_lo:<metric>`` / ``se_hi:<metric>``: an error bar per point (95% interval from the stored task
  standard errors; ``study.summaries.intervals`` adds them);
* ``floor_lo:<metric>`` / ``floor_hi:<metric>``: a shaded band per point or along a curve (the float-noise
  floor of the method: +-t SD of replicate runs that differ only in float order, t on their df);
* ``boot_lo:<metric>`` / ``boot_hi:<metric>``: an error bar (95% paired bootstrap CI over documents);
* several runs at one point (calibration sets): every run as a dot and their mean with the *range*
  (min to max) as a bar. With 3 runs a bootstrap "CI" equals the range, so it is called what it is.

Without any of these columns and one run per point, the figure says "no uncertainty measured" in its legend.
"""
from __future__ import annotations

import math
import re
import textwrap
import zlib
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import to_hex, to_rgb
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullFormatter, NullLocator

from .files import atomic_write

SEED = 0
Z95 = 1.959963984540054

# -- colours -------------------------------------------------------------------------------------------------

# Okabe-Ito colours (distinguishable with the common colour-vision deficiencies), one per method name.
METHOD_COLORS = {
    "dense": "#333333",
    "magnitude": "#56B4E9",     # sky blue: data-free pruning
    "wanda": "#009E73",         # bluish green
    "sparsegpt": "#0072B2",     # blue
    "rtn": "#8C6D31",           # brown: data-free quantization
    "gptq": "#D55E00",          # vermillion
    "awq": "#E69F00",           # orange
    "spqr": "#CC79A7",          # reddish purple
}
METHOD_ORDER = tuple(METHOD_COLORS)
FAMILY_COLORS = {"pruning": METHOD_COLORS["sparsegpt"], "quantization": METHOD_COLORS["gptq"],
                 "none": METHOD_COLORS["dense"]}
_FALLBACK = ("#7570B3", "#66A61E", "#A6761D", "#E7298A", "#1B9E77", "#666666", "#B15928", "#6A3D9A")
_STRUCTURED = re.compile(r"\b\d+:\d+\b")


def _mix(color: str, other: tuple, amount: float) -> str:
    rgb = np.asarray(to_rgb(color))
    return to_hex((1 - amount) * rgb + amount * np.asarray(other))


def method_color(label: str) -> str:
    """The colour of a method label in every figure: its method's colour ('sparsegpt 50%' -> blue),
    darker for N:M sparsity ('sparsegpt 2:4'), lighter for the layer-order variant; a label of an unknown
    method gets a fixed colour from its name (the same in every figure, whatever else is drawn)."""
    label = str(label)
    name = label.split()[0].lower() if label.split() else label
    if name in FAMILY_COLORS and name not in METHOD_COLORS:
        return to_hex(FAMILY_COLORS[name])
    color = METHOD_COLORS.get(name) or _FALLBACK[zlib.crc32(name.encode()) % len(_FALLBACK)]
    if _STRUCTURED.search(label):
        color = _mix(color, (0, 0, 0), 0.4)
    if "layer order" in label:
        color = _mix(color, (1, 1, 1), 0.45)
    return to_hex(color)


def method_order(labels) -> list:
    """Labels in a fixed order: dense, data-free pruning, pruning methods, data-free quantization, quantizers;
    variants after their method."""
    def key(label):
        name = str(label).split()[0].lower() if str(label).split() else str(label)
        return (METHOD_ORDER.index(name) if name in METHOD_ORDER else len(METHOD_ORDER), name,
                bool(_STRUCTURED.search(str(label))), "layer order" in str(label), str(label))
    return sorted(dict.fromkeys(labels), key=key)


def palette(labels) -> dict:
    """{label: colour} for method labels (or family names)."""
    return {label: method_color(label) for label in labels}


def _colors(table: pd.DataFrame, hue: str | None) -> tuple[list, dict]:
    """Hue levels in their fixed order and their colours: method labels and families by ``method_color``,
    any other column by seaborn's colour-blind palette over its sorted values."""
    if hue is None or hue not in table:
        return [None], {None: METHOD_COLORS["sparsegpt"]}
    values = [v for v in table[hue].dropna().unique()]
    if hue in ("method_label", "family", "method"):
        levels = method_order(values)
        return levels, palette(levels)
    levels = sorted(values, key=str)
    return levels, dict(zip(levels, sns.color_palette("colorblind", len(levels)).as_hex()))


# -- style, saving, titles -----------------------------------------------------------------------------------

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
    """Title and wrapped subtitle above the axes (savefig's tight bbox keeps them); the title sits above
    every line of the subtitle, so neither overlaps the other or a panel."""
    width, height = fig.get_size_inches()
    lines = textwrap.wrap(subtitle, max(40, int(width * 15))) if subtitle else []
    line = 1.25 * 9 / 72                                  # inches per 9-point line
    # above the figure's top edge, or above whatever already reaches past it: a y-label longer than its panel
    # is tall sticks out above the axes (and ran into the subtitle)
    # Agg-type canvases (inline, PNG) have get_renderer; others (MPLBACKEND=svg or pdf) only the figure's own
    renderer = fig.canvas.get_renderer() if hasattr(fig.canvas, "get_renderer") else fig._get_renderer()
    top = max([1.0] + [ax.yaxis.label.get_window_extent(renderer).y1 / fig.bbox.height
                       for ax in fig.axes if ax.get_ylabel()])
    fig.text(0.5, top + 0.02 / height, "\n".join(lines), ha="center", va="bottom", fontsize=9, color="0.35",
             linespacing=1.25)
    fig.text(0.5, top + (0.06 + len(lines) * line) / height, title, ha="center", va="bottom", fontsize=13,
             fontweight="bold")
    return fig


PLAIN = FuncFormatter(lambda value, _: f"{value:g}")


def _nice_log_ticks(low: float, high: float, max_ticks: int = 7) -> list[float]:
    """Plain-number ticks for a log axis between low and high: 1-2-5 steps, denser when the span is short,
    at most ``max_ticks`` (so labels never crowd)."""
    if not (np.isfinite(low) and np.isfinite(high)) or low <= 0 or high <= low:
        return []
    for subs in ((1,), (1, 3), (1, 2, 5), (1, 1.5, 2, 3, 5, 7), (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9)):
        ticks = [s * 10.0 ** k for k in range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1)
                 for s in subs]
        ticks = sorted(t for t in ticks if low <= t * (1 + 1e-9) and t <= high * (1 + 1e-9))
        if len(ticks) >= 3:
            return ticks if len(ticks) <= max_ticks else ticks[:: math.ceil(len(ticks) / max_ticks)]
    # a short span (within a factor ~2): round numbers as on a linear axis
    ticks = MaxNLocator(nbins=4, steps=[1, 2, 2.5, 5, 10]).tick_values(low, high)
    return [float(t) for t in ticks if low <= t <= high and t > 0]


def _log_axis(ax, axis: str, values=None) -> None:
    """Log scale with plain numbers (30, 100, 300) instead of 3 x 10^1; on x, ticks at the data's values."""
    if axis == "x":
        ax.set_xscale("log", base=2)
        if values is not None:
            ax.set_xticks(sorted(set(values)))
        ax.xaxis.set_major_formatter(PLAIN)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.xaxis.set_minor_locator(NullLocator())
    else:
        ax.set_yscale("log")
        low, high = ax.get_ylim()
        ticks = _nice_log_ticks(low, high)
        if ticks:
            ax.yaxis.set_major_locator(FixedLocator(ticks))
        ax.yaxis.set_major_formatter(PLAIN)
        ax.yaxis.set_minor_formatter(NullFormatter())


def _label(column: str) -> str:
    kind, _, name = column.partition(":")
    if kind == "ppl":
        return "perplexity (geometric mean over texts)" if name == "geomean" else f"{name} perplexity"
    if kind == "kl":
        # short enough to fit the height of a one-row figure's panel (a longer one ran into the suptitle); the
        # subtitles say over which texts the geometric mean is taken
        return "KL to dense (nats/token, geo. mean)" if name == "geomean" else f"{name} KL to dense"
    if kind == "kl_mean":
        return f"{name} KL to dense (nats/token)"
    if kind == "top1":
        return "top-1 agreement with dense"
    if kind in ("acc", "acc_norm"):
        return "mean accuracy over tasks" if name == "mean" else f"{name} {kind}"
    return column.replace("calibration.", "").replace("_", " ")


# -- uncertainty marks ---------------------------------------------------------------------------------------

MARKS = {"se": ("bar", "95% interval from the stored standard errors"),
         "boot": ("bar", "95% paired bootstrap CI over documents"),
         "floor": ("band", "float-noise floor: ±t SD of replicate runs (t on their df)")}


def _marks(table: pd.DataFrame, y: str) -> list[str]:
    """The interval kinds the table carries for column y."""
    return [m for m in MARKS if f"{m}_lo:{y}" in table and f"{m}_hi:{y}" in table
            and table[[f"{m}_lo:{y}", f"{m}_hi:{y}"]].notna().any().any()]


def _bar(ax, x, y, low, high, color, *, lw=1.3, capsize=2.5, zorder=3):
    ok = np.isfinite(low) & np.isfinite(high) & np.isfinite(y)
    if ok.any():
        yerr = np.vstack([np.maximum(y[ok] - low[ok], 0), np.maximum(high[ok] - y[ok], 0)])
        ax.errorbar(np.asarray(x)[ok], y[ok], yerr=yerr, fmt="none", ecolor=color, elinewidth=lw,
                    capsize=capsize, zorder=zorder)


def _draw_marks(ax, part: pd.DataFrame, x, y: str, color, *, curve: bool, width: float = 0.0) -> set:
    """Error bars and floor bands of `part`'s rows at positions x; returns the mark kinds drawn."""
    drawn = set()
    values = part[y].to_numpy(dtype=float)
    for mark in _marks(part, y):
        low = part[f"{mark}_lo:{y}"].to_numpy(dtype=float)
        high = part[f"{mark}_hi:{y}"].to_numpy(dtype=float)
        if not (np.isfinite(low) & np.isfinite(high)).any():
            continue
        drawn.add(mark)
        if MARKS[mark][0] == "bar":
            _bar(ax, x, values, low, high, color)
        elif curve and len(values) > 1:
            ok = np.isfinite(low) & np.isfinite(high)
            ax.fill_between(np.asarray(x, dtype=float)[ok], low[ok], high[ok], color=color, alpha=0.16, lw=0,
                            zorder=1)
        else:
            half = max(width, 0.08) / 2
            for xi, lo, hi in zip(np.asarray(x, dtype=float), low, high):
                if np.isfinite(lo) and np.isfinite(hi):
                    ax.fill_between([xi - half, xi + half], [lo, lo], [hi, hi], color=color, alpha=0.2, lw=0,
                                    zorder=1)
    return drawn


def _references(ax, references: dict | None, y: str, colored: bool = True) -> list[tuple]:
    """Horizontal lines: {label: {metric: value}}; dense dashed grey, other labels (data-free baselines)
    dotted in their method's colour. Returns (value, label, colour) for ``_reference_labels``, which names
    each line once the axis limits are final."""
    drawn = []
    for label, values in (references or {}).items():
        value = (values or {}).get(y)
        if value is None or not np.isfinite(float(value)) or (ax.get_yscale() == "log" and float(value) <= 0):
            continue
        dense = str(label) == "dense"
        color = "0.4" if dense or not colored else method_color(label)
        ax.axhline(float(value), ls="--" if dense else ":", lw=1.1, color=color, zorder=0.5)
        drawn.append((float(value), str(label), color))
    return drawn


def _reference_labels(ax, drawn: list[tuple], min_gap: float = 9.0) -> None:
    """Name each reference line at the right end of its axis, nudging labels apart (in points) so that lines
    close together keep readable names."""
    if not drawn:
        return
    fig = ax.figure
    to_points = 72 / fig.dpi
    placed = []
    for value, label, color in sorted(drawn):
        y_points = ax.transData.transform((0, value))[1] * to_points
        offset = 2.0
        if placed and y_points + offset < placed[-1] + min_gap:
            offset = placed[-1] + min_gap - y_points
        placed.append(y_points + offset)
        ax.annotate(label, xy=(1, value), xycoords=("axes fraction", "data"), xytext=(-2, offset),
                    textcoords="offset points", ha="right", va="bottom", fontsize=7.5, color=color,
                    annotation_clip=False)


def _merge_reference(reference: dict | None, references: dict | None) -> dict:
    merged = {}
    if reference:
        merged["dense"] = reference
    merged.update(references or {})
    return merged


def _legend(fig, ax, levels, colors, hue, *, styles: dict | None = None, marks: set = frozenset(),
            ranges: bool = False, runs_note: str = "") -> None:
    """One legend right of the last panel: methods (colours), styles (line dashes), then what the marks mean."""
    handles = []
    if hue is not None and len(levels) and levels != [None]:
        handles.append(Line2D([], [], ls="none", label={"method_label": "method"}.get(hue, hue)))
        handles += [Line2D([], [], color=colors[level], marker="o", lw=1.6, label=str(level)) for level in levels]
    if styles:
        handles.append(Line2D([], [], ls="none", label=""))
        handles += [Line2D([], [], color="0.3", ls=dash, lw=1.6, label=str(name)) for name, dash in styles.items()]
    notes = []
    for mark in ("se", "boot"):
        if mark in marks:
            notes.append(Line2D([], [], color="0.3", marker="|", markersize=9, ls="none", label=MARKS[mark][1]))
    if "floor" in marks:
        notes.append(Patch(color="0.3", alpha=0.2, label=MARKS["floor"][1]))
    if ranges:
        notes.append(Line2D([], [], color="0.15", marker="D", markersize=5, ls="none",
                            label=f"mean; bar: range (min-max) over {runs_note or 'the runs'}"))
    if not notes:
        notes.append(Line2D([], [], ls="none", label="one run per point; no uncertainty measured"))
    handles += [Line2D([], [], ls="none", label="")] + notes
    legend = ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False, fontsize=8)
    for text in legend.get_texts():
        if text.get_text() in ({"method_label": "method"}.get(hue, hue), ):
            text.set_fontweight("bold")


# -- figures -------------------------------------------------------------------------------------------------

_DASHES = ["-", "--", ":", "-."]


def trend(table: pd.DataFrame, x: str, ys: list[str], *, hue: str = "method_label", col_wrap: int | None = None,
          logx: bool = True, logy: list[str] | None = None, title: str, subtitle: str,
          style_col: str | None = None, reference: dict | None = None, references: dict | None = None):
    """One panel per metric: the metric against x (e.g. num_samples), one line per hue (and line style per
    ``style_col``). Marks from the table's interval columns (see the module docstring): bars and, along the
    curve, the float-noise band; several runs at one x are averaged and their range drawn. ``reference``:
    {metric: value} of the dense model (dashed line); ``references``: {label: {metric: value}} for more
    horizontal lines (data-free baselines, in their method's colour)."""
    logy = logy or []
    refs = _merge_reference(reference, references)
    levels, colors = _colors(table, hue)
    styles = ({s: _DASHES[i % len(_DASHES)] for i, s in enumerate(sorted(table[style_col].dropna().unique(), key=str))}
              if style_col else {None: "-"})
    fig, axes = plt.subplots(1, len(ys), figsize=(4.6 * len(ys), 3.8), squeeze=False)
    marks, ranges, most, labels = set(), False, 1, []
    # lines of different methods side by side at each x (a few % of an octave), so their bars never coincide
    series = [(level, style) for level in levels for style in styles]
    dodge = {key: (i - (len(series) - 1) / 2) * (0.05 if len(series) > 1 else 0) for i, key in enumerate(series)}

    def shifted(values, key):
        values = np.asarray(values, dtype=float)
        return values * 2.0 ** dodge[key] if logx else values + dodge[key] * _linear_step(table[x])

    for ax, y in zip(axes[0], ys):
        for level in levels:
            for style_value, dash in styles.items():
                part = table
                if level is not None:
                    part = part[part[hue] == level]
                if style_value is not None:
                    part = part[part[style_col] == style_value]
                part = part.dropna(subset=[x, y]).sort_values(x)
                if part.empty:
                    continue
                color, key = colors[level], (level, style_value)
                counts = part.groupby(x)[y].size()
                if counts.max() > 1:
                    agg = part.groupby(x)[y].agg(["mean", "min", "max"]).reset_index()
                    ax.plot(shifted(agg[x], key), agg["mean"], color=color, ls=dash, marker="o", ms=4, lw=1.6,
                            zorder=4)
                    _bar(ax, shifted(agg[x], key), agg["mean"].to_numpy(float), agg["min"].to_numpy(float),
                         agg["max"].to_numpy(float), color)
                    ax.scatter(shifted(part[x], key), part[y], s=9, color=color, alpha=0.5, zorder=3, lw=0)
                    ranges, most = True, max(most, int(counts.max()))
                else:
                    ax.plot(shifted(part[x], key), part[y], color=color, ls=dash, marker="o", ms=4, lw=1.6, zorder=4)
                    marks |= _draw_marks(ax, part, shifted(part[x], key), y, color, curve=True)
        if logx:
            _log_axis(ax, "x", table[x].dropna())
        if y in logy:
            ax.set_yscale("log")
        labels.append((ax, _references(ax, refs, y)))
        if y in logy:
            _log_axis(ax, "y")
        ax.set_xlabel(_label(x))
        ax.set_ylabel(_label(y))
    _legend(fig, axes[0][-1], levels, colors, hue, styles=styles if style_col else None, marks=marks,
            ranges=ranges, runs_note=f"up to {most} runs")
    fig.tight_layout()
    for ax, drawn in labels:
        _reference_labels(ax, drawn)
    return _finish(fig, title, subtitle)


def _linear_step(values: pd.Series) -> float:
    """The smallest gap between distinct x values (the unit a linear-axis dodge is a fraction of)."""
    distinct = np.unique(values.dropna().to_numpy(dtype=float))
    return float(np.min(np.diff(distinct))) if len(distinct) > 1 else 1.0


def _slots(levels: list, width: float = 0.8) -> dict:
    """Horizontal offset of each hue level inside a category (dodged side by side)."""
    n = max(len(levels), 1)
    step = width / n
    return {level: -width / 2 + step * (i + 0.5) for i, level in enumerate(levels)}, step


def _category_axis(ax, order: list) -> None:
    ax.set_xticks(range(len(order)))
    labels = [str(o) for o in order]
    long = max((len(s) for s in labels), default=0) * len(labels) > 42
    ax.set_xticklabels(labels, rotation=30 if long else 0, ha="right" if long else "center",
                       rotation_mode="anchor")
    ax.set_xlim(-0.6, len(order) - 0.4)


def points(table: pd.DataFrame, x: str, ys: list[str], *, hue: str = "method_label", order: list | None = None,
           logy: list[str] | None = None, title: str, subtitle: str, reference: dict | None = None,
           references: dict | None = None):
    """One panel per metric: one point per (category of x, hue level), side by side. A single run shows
    its interval columns (bars, float-noise band); several runs (calibration sets) show as dots with their
    mean (diamond) and range (bar). ``reference`` / ``references`` as in ``trend``."""
    logy = logy or []
    refs = _merge_reference(reference, references)
    order = list(order) if order is not None else sorted(table[x].dropna().unique(), key=str)
    order = [o for o in order if (table[x] == o).any()] or order
    levels, colors = _colors(table, hue)
    offsets, step = _slots(levels)
    width = max(4.2, 0.36 * len(order) * max(1, len(levels)) ** 0.5 + 1.9)
    fig, axes = plt.subplots(1, len(ys), figsize=(width * len(ys), 4.2), squeeze=False)
    marks, ranges, most, labels = set(), False, 1, []
    for ax, y in zip(axes[0], ys):
        for level in levels:
            part = table if level is None else table[table[hue] == level]
            color = colors[level]
            for i, category in enumerate(order):
                cell = part[part[x] == category].dropna(subset=[y])
                if cell.empty:
                    continue
                centre = i + offsets[level]
                if len(cell) > 1:
                    spread = np.linspace(-0.3, 0.3, len(cell)) * step
                    xs = centre + spread
                    ax.scatter(xs, cell[y], s=14, color=color, alpha=0.65, zorder=3, lw=0)
                    marks |= _draw_marks(ax, cell, xs, y, color, curve=False, width=step * 0.15)
                    values = cell[y].to_numpy(float)
                    _bar(ax, [centre], np.array([values.mean()]), np.array([values.min()]),
                         np.array([values.max()]), "0.15", lw=1.0, capsize=3, zorder=4)
                    ax.scatter([centre], [values.mean()], marker="D", s=30, color=color, edgecolor="0.15",
                               lw=0.8, zorder=5)
                    ranges, most = True, max(most, len(cell))
                else:
                    ax.scatter([centre], cell[y], marker="o", s=30, color=color, zorder=5, lw=0)
                    marks |= _draw_marks(ax, cell, np.array([centre]), y, color, curve=False, width=step * 0.8)
        _category_axis(ax, order)
        if y in logy:
            ax.set_yscale("log")
        labels.append((ax, _references(ax, refs, y)))
        if y in logy:
            _log_axis(ax, "y")
        ax.set_xlabel(_label(x))
        ax.set_ylabel(_label(y))
        ax.grid(axis="x", visible=False)
    _legend(fig, axes[0][-1], levels, colors, hue, marks=marks, ranges=ranges, runs_note=f"{most} runs")
    fig.tight_layout()
    for ax, drawn in labels:
        _reference_labels(ax, drawn)
    return _finish(fig, title, subtitle)


def heatmaps(panels: dict[str, pd.DataFrame], *, title: str, subtitle: str, fmt: str = ".2f",
             cmap: str = "rocket_r", xlabel: str = "", ylabel: str = "", center=None, log: bool = False):
    """Labelled matrices side by side, one per panel title (e.g. calibration source x evaluation text
    for each method). ``log``: colours on a log scale (ratios such as perplexity relative to dense, where
    2x and 0.5x are equally far from 1)."""
    from matplotlib.colors import LogNorm
    first = next(iter(panels.values()))
    fig, axes = plt.subplots(1, len(panels), squeeze=False,
                             figsize=((1.0 * first.shape[1] + 2.5) * len(panels), 0.5 * first.shape[0] + 2.2))
    for ax, (name, matrix) in zip(axes[0], panels.items()):
        values = matrix.astype(float)
        positive = values.to_numpy()[np.isfinite(values.to_numpy()) & (values.to_numpy() > 0)]
        norm = LogNorm(positive.min(), positive.max()) if log and len(positive) and np.ptp(positive) > 0 else None
        sns.heatmap(values, annot=True, fmt=fmt, cmap=cmap, center=None if norm else center, norm=norm, ax=ax,
                    cbar_kws={"shrink": 0.8})
        if norm is not None:
            colorbar = ax.collections[0].colorbar
            colorbar.set_ticks(_nice_log_ticks(positive.min(), positive.max(), 6))
            colorbar.ax.yaxis.set_major_formatter(PLAIN)
            colorbar.ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_title(name, color=method_color(name) if str(name).split()[0] in METHOD_COLORS else "black")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel if ax is axes[0][0] else "")
        ax.tick_params(axis="x", rotation=30)
        for label in ax.get_xticklabels():
            label.set_ha("right")
            label.set_rotation_mode("anchor")
    fig.tight_layout()
    return _finish(fig, title, subtitle)


def spread(table: pd.DataFrame, x: str, y: str, *, hue: str | None = None, title: str, subtitle: str,
           ylabel: str | None = None, logy: bool = False, expected: str | None = None,
           expected_label: str = "expected from noise alone"):
    """Box plot of spreads with every observation as a dot (e.g. per-task range across sets), one colour per
    method. ``expected``: a column with each row's spread expected from measurement noise alone (e.g. the
    range of 3 draws of binomial noise): its mean per box is drawn as a black bar, the reference a spread
    has to exceed. ``logy``: spreads on a log axis (zeros are dropped from a log axis, and said)."""
    order = sorted(table[x].dropna().unique(), key=str)
    levels, colors = _colors(table, hue)
    hue_levels = None if hue is None else levels
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(order) * max(1, len(levels)) ** 0.5 + 3), 4.0))
    data = table
    dropped = 0
    if logy:
        dropped = int((data[y] <= 0).sum())
        data = data[data[y] > 0]
    sns.boxplot(data=data, x=x, y=y, hue=hue, order=order, hue_order=hue_levels,
                palette=None if hue is None else colors, color=None if hue else METHOD_COLORS["sparsegpt"],
                ax=ax, fliersize=0, boxprops={"alpha": 0.45}, legend=False)
    np.random.seed(SEED)                              # reproducible strip jitter (numpy's global RNG)
    sns.stripplot(data=data, x=x, y=y, hue=hue, order=order, hue_order=hue_levels,
                  palette=None if hue is None else colors, color=None if hue else METHOD_COLORS["sparsegpt"],
                  dodge=hue is not None, ax=ax, size=4, alpha=0.85, legend=False)
    notes = set()
    if expected and expected in table and table[expected].notna().any():
        offsets, step = _slots(levels if hue else [None])
        for i, category in enumerate(order):
            for level in (levels if hue else [None]):
                cell = table[(table[x] == category) & ((table[hue] == level) if hue else True)]
                value = cell[expected].dropna().mean()
                if np.isfinite(value) and (not logy or value > 0):
                    centre = i + offsets[level]
                    ax.hlines(value, centre - step * 0.4, centre + step * 0.4, color="black", lw=2, zorder=6)
        notes.add("expected")
    if logy:
        ax.set_yscale("log")
        _log_axis(ax, "y")
    ax.set_xlabel(_label(x))
    ax.set_ylabel(ylabel or _label(y))
    _category_axis(ax, order)
    handles = []
    if hue is not None:
        handles.append(Line2D([], [], ls="none", label={"method_label": "method"}.get(hue, hue)))
        handles += [Line2D([], [], color=colors[level], marker="o", ls="none", label=str(level)) for level in levels]
    if "expected" in notes:
        handles.append(Line2D([], [], color="black", lw=2, label=expected_label))
    if dropped:
        handles.append(Line2D([], [], ls="none", label=f"{dropped} zero spread(s) not shown on the log axis"))
    if handles:
        legend = ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False, fontsize=8)
        for text in legend.get_texts():
            if hue is not None and text.get_text() == {"method_label": "method"}.get(hue, hue):
                text.set_fontweight("bold")
    fig.tight_layout()
    return _finish(fig, title, subtitle)


# Tol's muted palette (colour-blind safe), one colour per variance component in every figure
COMPONENT_COLORS = {"source": "#332288", "set within source": "#44AA99", "numerical noise": "#DDCC77",
                    "documents": "#DDDDDD"}


def variance_shares(table: pd.DataFrame, *, title: str, subtitle: str, components: list[str] | None = None,
                    hatched: tuple[str, ...] = ("documents",), labels: dict | None = None, bar: str = "method_label",
                    panel: str = "metric_label", share: str = "share", annotation: str | None = "annotation"):
    """Stacked horizontal bars of shares: one panel per `panel` value (a metric), one bar per `bar` value (a
    method, in ``method_order``, its label in its method colour), one segment per component in the fixed
    order `components` (colours ``COMPONENT_COLORS``), its share printed inside when it is wide enough.
    Components in `hatched` are drawn hatched (a variance of another kind, e.g. the documents' sampling
    variance shared by all runs); `labels` renames components in the legend. `annotation`: a column whose
    text is written right of each bar (e.g. the total SD on the metric's scale). A bar without any finite
    share says 'not estimable'."""
    if table is None or table.empty or panel not in table:
        fig, ax = plt.subplots(figsize=(8.0, 1.6))
        ax.axis("off")
        ax.text(0.5, 0.5, "nothing to decompose: no runs with a calibration source and set", ha="center",
                va="center", color="0.35")
        return _finish(fig, title, subtitle)
    components = list(components or dict.fromkeys(table["component"]))
    labels = labels or {}
    panels = list(dict.fromkeys(table[panel]))
    bars = method_order(table[bar].dropna().unique()) if bar in ("method_label", "family", "method") else sorted(
        table[bar].dropna().unique(), key=str)
    fallback = dict(zip([c for c in components if c not in COMPONENT_COLORS],
                        sns.color_palette("colorblind", len(components)).as_hex()))
    colors = {c: COMPONENT_COLORS.get(c, fallback.get(c)) for c in components}
    heights = [0.42 * len(bars) + 0.75 for _ in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8.0, sum(heights) + 0.9), sharex=True, squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, name in zip(axes[:, 0], panels):
        cells = table[table[panel] == name]
        for i, level in enumerate(bars):
            cell = cells[cells[bar] == level].set_index("component")
            shares = cell[share].astype(float).reindex(components) if len(cell) else pd.Series(dtype=float)
            left = 0.0
            for component in components:
                value = float(shares.get(component, np.nan))
                if not np.isfinite(value) or value <= 0:
                    continue
                hatch = component in hatched
                ax.barh(i, value, left=left, height=0.66, color=colors[component],
                        hatch="///" if hatch else None, edgecolor="0.35" if hatch else "white", lw=0.6, zorder=3)
                if value >= 0.07:
                    dark = component == "source"
                    ax.text(left + value / 2, i, f"{100 * value:.0f}%", ha="center", va="center", fontsize=7.5,
                            color="white" if dark else "0.1", zorder=4,
                            bbox=None if not hatch else {"facecolor": colors[component], "edgecolor": "none",
                                                         "pad": 0.6})
                left += value
            if not np.isfinite(shares.to_numpy(dtype=float)).any():
                ax.text(0.01, i, "not estimable (see the table's notes)", va="center", fontsize=7.5, color="0.35")
            if annotation and annotation in cell and len(cell):
                ax.annotate(str(cell[annotation].iloc[0]), xy=(1, i), xycoords=("axes fraction", "data"),
                            xytext=(5, 0), textcoords="offset points", va="center", fontsize=7.5, color="0.25",
                            annotation_clip=False)
        ax.set_yticks(range(len(bars)))
        ax.set_yticklabels([str(b) for b in bars])
        for tick, level in zip(ax.get_yticklabels(), bars):
            if bar in ("method_label", "family", "method"):
                tick.set_color(method_color(level))
        ax.set_ylim(len(bars) - 0.4, -0.6)
        ax.set_xlim(0, 1)
        ax.set_title(str(name), loc="left", fontsize=10)
        ax.grid(axis="y", visible=False)
    axes[-1, 0].xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{100 * value:.0f}%"))
    axes[-1, 0].set_xlabel("share of the variance of one score")
    handles = [Patch(facecolor=colors[c], edgecolor="0.35" if c in hatched else colors[c],
                     hatch="///" if c in hatched else None, label=labels.get(c, c)) for c in components]
    fig.tight_layout()
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, frameon=False, fontsize=8)
    return _finish(fig, title, subtitle)


def vocabulary_usage(usage: pd.DataFrame, coverage: pd.DataFrame, *, title: str, subtitle: str):
    """07, from tokens alone. Left: distinct tokens of each calibration source against the calibration tokens
    drawn (log-log), with each task's and text's own distinct tokens as dashed lines. Right: the share of each
    task's tokens that the largest set of each source covers (1 - its token-level out-of-vocabulary rate)."""
    cal = usage[usage["kind"] == "calibration"] if len(usage) else usage
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.2), gridspec_kw={"width_ratios": [1.25, 1]})
    ax = axes[0]
    sources = list(dict.fromkeys(cal["name"])) if len(cal) else []
    colors = dict(zip(sources, sns.color_palette("colorblind", max(len(sources), 1)).as_hex()))
    for source in sources:
        part = cal[cal["name"] == source].sort_values("tokens")
        ax.plot(part["tokens"], part["distinct"], "o-", color=colors[source], label=source, lw=1.4, ms=4)
    evaluation = usage[usage["kind"] == "task"] if len(usage) else usage
    for i, (_, r) in enumerate(evaluation.sort_values("distinct").iterrows()):
        ax.axhline(r["distinct"], color="0.55", lw=0.8, ls="--", zorder=1)
        # alternate sides, so that tasks with similar counts do not print over each other
        ax.annotate(f"{r['name']} ({r['distinct']:,})", xy=(i % 2, r["distinct"]), xycoords=("axes fraction", "data"),
                    xytext=(3 if i % 2 == 0 else -3, 2), textcoords="offset points", fontsize=7, color="0.35",
                    ha="left" if i % 2 == 0 else "right")
    if len(cal):
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(PLAIN)
            axis.set_minor_formatter(NullFormatter())
        ax.legend(title="calibration source", fontsize=8, title_fontsize=8, loc="lower right", frameon=False)
    ax.set_xlabel("calibration tokens drawn")
    ax.set_ylabel("distinct tokens (vocabulary kept)")
    ax.set_title("vocabulary of a calibration set as it grows", loc="left", fontsize=10)
    ax = axes[1]
    tasks = coverage[coverage["kind"] == "task"] if len(coverage) else coverage
    if len(tasks):
        largest = tasks[tasks["num_samples"] == tasks["num_samples"].max()]
        matrix = largest.pivot_table(index="name", columns="source", values="coverage", aggfunc="first") * 100
        sns.heatmap(matrix, annot=True, fmt=".1f", cmap="rocket", vmin=max(0.0, float(np.nanmin(matrix.to_numpy())) - 5),
                    vmax=100, ax=ax, cbar_kws={"shrink": 0.8, "label": "% of the task's tokens kept"})
        ax.set_title(f"tokens kept by a {int(largest['num_samples'].iloc[0])}-sample set", loc="left", fontsize=10)
        ax.set_xlabel("calibration source")
        ax.set_ylabel("task")
    else:
        ax.axis("off")
        ax.text(0.5, 0.5, "no task tokens (the suite has no tasks here)", ha="center", va="center", color="0.35")
    fig.tight_layout()
    return _finish(fig, title, subtitle)


VOCABULARY_KINDS = {"none": ("full vocabulary", "o"), "task": ("the tasks' own tokens", "s"),
                    "calibration": ("a calibration set's tokens", "^"), "frequent": ("most frequent tokens", "D")}


def vocabulary_tradeoff(table: pd.DataFrame, *, title: str, subtitle: str):
    """07: accuracy against model size. One panel per method; x: the model's parameters (millions) after
    vocabulary pruning; y: the paired accuracy difference to the same model and method with the full vocabulary
    (points, 95% CI over documents), marker by where the vocabulary came from, the full vocabulary at 0."""
    methods = list(dict.fromkeys(table["method_label"].str.split(" + ", regex=False).str[0])) if len(table) else []
    fig, axes = plt.subplots(1, max(len(methods), 1), figsize=(4.6 * max(len(methods), 1), 4.0), squeeze=False,
                             sharey=True)
    for ax, method in zip(axes[0], methods):
        part = table[table["method_label"].str.split(" + ", regex=False).str[0] == method]
        for kind, (label, marker) in VOCABULARY_KINDS.items():
            rows = part[part["vocabulary_kind"] == kind]
            if rows.empty:
                continue
            x = rows["parameters_after"].astype(float) / 1e6
            y = 100 * rows["difference"].astype(float).fillna(0.0) if "difference" in rows else np.zeros(len(rows))
            ax.scatter(x, y, marker=marker, s=42, color=method_color(method), edgecolor="0.2", lw=0.6, zorder=4,
                       label=label, alpha=0.9 if kind != "none" else 1.0)
            if "ci95_low" in rows:
                _bar(ax, x.to_numpy(), np.asarray(y, dtype=float), 100 * rows["ci95_low"].to_numpy(dtype=float),
                     100 * rows["ci95_high"].to_numpy(dtype=float), method_color(method))
            if kind in ("calibration", "frequent"):
                # vocabularies of similar size and accuracy sit on one spot: stacked labels for a few; for many
                # (standard: 12 sets) one line with the range, below the cluster (each set is in the table)
                labelled = list(zip(x, y, rows["vocabulary_data"]))
                if len(labelled) > 4:
                    values = np.asarray(y, dtype=float)
                    lo, hi = int(np.argmin(values)), int(np.argmax(values))
                    ax.annotate(f"{len(rows)} sets: {values[lo]:+.1f} ({labelled[lo][2]}) to {values[hi]:+.1f} "
                                f"({labelled[hi][2]})", (float(x.max()), float(values.min())), xytext=(8, -16),
                                textcoords="offset points", fontsize=6.5, color="0.35")
                    continue
                for j, (xi, yi, text) in enumerate(labelled):
                    ax.annotate(text, (xi, yi), xytext=(5, 3 - 9 * j), textcoords="offset points", fontsize=6.5,
                                color="0.35")
        ax.axhline(0, color="0.4", lw=0.8, zorder=1)
        ax.axhspan(-1, 1, color="0.9", zorder=0, lw=0)
        ax.set_title(method, color=method_color(method), loc="left", fontsize=10)
        ax.set_xlabel("model parameters after pruning (millions)")
    axes[0, 0].set_ylabel("accuracy - full vocabulary (points)")
    handles = [Line2D([], [], marker=m, ls="", color="0.4", label=l) for _, (l, m) in VOCABULARY_KINDS.items()]
    handles.append(Patch(color="0.9", label="+-1 point (V1's margin)"))
    fig.tight_layout()
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=5, frameon=False, fontsize=8)
    return _finish(fig, title, subtitle)
