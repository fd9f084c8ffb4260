"""Execute the study notebooks with papermill and export each to HTML.

    calib study --profile quick            # what `make run` does

The studies run first (01-05, 07, 09, 08; each extends the shared results store), then 06_findings and
10_explore, which read it, and 00_overview last, which indexes their figures and findings (``ORDER``). Executed notebooks and their HTML land in ``results/<profile>/``, figures in
``figures/``. A failing notebook raises an error naming the notebook and its failing cell; the
executed copy up to that cell is kept next to the others for reading, and every finished run stays in
the store, so a rerun continues where it stopped.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from .errors import InvalidInput, UserError
from .files import atomic_write_text
from .paths import NOTEBOOK_DIR, REPO

STUDIES = ("01_sample_count", "02_sequence_length", "03_source_domain", "04_seed_variance",
           "05_self_calibration", "07_vocabulary", "09_selection", "08_summarization")
# 06 tests the six claims on the runs 01-05 made (on quick: no run of its own), so make run includes it;
# 10_explore shows every run of the store interactively (no run of its own); 00_overview comes last to index
# every finding.
ORDER = STUDIES + ("06_findings", "10_explore", "00_overview")
# notebooks that only read the store (every other one computes the runs it misses)
READS_ONLY = ("00_overview", "10_explore")


class NotebookFailed(UserError, RuntimeError):
    pass


def notebook_names(only: list[str] | None = None) -> list[str]:
    available = sorted(p.stem for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    order = [n for n in ORDER if n in available] + [n for n in available if n not in ORDER]
    if not only:
        return [n for n in order if n in ORDER]
    unknown = [n for n in only if n not in available]
    if unknown:
        raise InvalidInput(f"unknown notebook(s) {unknown}; available: {', '.join(available)}")
    return [n for n in order if n in only]


def _html(executed: Path, exclude_input: bool = False) -> Path:
    """The executed notebook as one HTML file (figures embedded as data URIs: it needs no other file);
    `exclude_input`: without the code cells' source, as a report reads."""
    import nbformat
    from nbconvert import HTMLExporter
    exporter = HTMLExporter(exclude_input=exclude_input, exclude_input_prompt=exclude_input,
                            exclude_output_prompt=exclude_input)
    body, _ = exporter.from_notebook_node(nbformat.read(executed, as_version=4))
    target = executed.with_suffix(".html")
    atomic_write_text(target, body)
    return target


def _failed_cell(executed: Path) -> str:
    """Index and first line of the cell papermill marked as failing."""
    import nbformat
    try:
        nb = nbformat.read(executed, as_version=4)
    except Exception:                                          # noqa: BLE001 - best effort for the message
        return "unknown cell"
    code_index = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        code_index += 1
        if any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            first = next((line for line in cell.source.splitlines() if line.strip()), "")
            return f"code cell {code_index} of the executed notebook ({first[:80]!r})"
    return "unknown cell"


def default_figures_dir(profile: str) -> Path:
    """figures/ for the main job's profile (quick), figures/<profile>/ for every other, so that executing
    the standard profile puts its figures next to the quick ones instead of over them."""
    return REPO / "figures" if profile == "quick" else REPO / "figures" / profile


def _seen_from_notebooks(path: Path) -> str:
    """``path`` as the kernels (cwd notebooks/) should be given it: relative when it lies in the repository
    (``../results/quick``), so that an executed notebook names no machine's directories and re-executing it
    elsewhere changes no line of it; absolute otherwise."""
    try:
        path.relative_to(REPO)
    except ValueError:
        return str(path)
    return os.path.relpath(path, NOTEBOOK_DIR)


def _repo_relative_metadata(executed: Path) -> None:
    """Papermill records the absolute input and output paths in the notebook's metadata: keep them
    repository-relative, as the parameters are."""
    import nbformat
    nb = nbformat.read(executed, as_version=4)
    meta = nb.metadata.get("papermill", {})
    changed = False
    for key in ("input_path", "output_path"):
        value = meta.get(key)
        if value:
            try:
                meta[key] = str(Path(value).resolve().relative_to(REPO))
                changed = True
            except ValueError:
                pass
    if changed:
        nbformat.write(nb, executed)


def execute_notebooks(profile: str, *, only: list[str] | None = None, results_dir: str | Path | None = None,
            figures_dir: str | Path | None = None, model: str | None = None, backend: str | None = None,
            kernel: str = "python3", html: bool = True, log=print) -> list[dict]:
    """Run the notebooks on a profile; return one summary row per notebook (name, seconds, outputs)."""
    import papermill as pm

    from .study import get_profile
    get_profile(profile)                                        # fail before any kernel starts
    results_dir = Path(results_dir or REPO / "results" / profile).resolve()
    figures_dir = Path(figures_dir or default_figures_dir(profile)).resolve()
    results_dir.mkdir(parents=True, exist_ok=True)
    # Kernels run in notebooks/: paths given relative to where the command started must stay valid there.
    for var in ("CALIB_MIRROR", "CALIB_CACHE"):
        if os.environ.get(var):
            os.environ[var] = str(Path(os.environ[var]).expanduser().resolve())
    summary = []
    for name in notebook_names(only):
        source = NOTEBOOK_DIR / f"{name}.ipynb"
        executed = results_dir / f"{name}.ipynb"
        started = time.time()
        log(f"[{name}] executing on profile {profile!r} ...")
        try:
            pm.execute_notebook(
                str(source), str(executed), kernel_name=kernel, cwd=str(NOTEBOOK_DIR), progress_bar=False,
                parameters={"profile": profile, "model": model, "backend": backend,
                            "results_dir": _seen_from_notebooks(results_dir),
                            "figures_dir": _seen_from_notebooks(figures_dir)})
        except pm.PapermillExecutionError as err:
            raise NotebookFailed(f"notebook {name} failed in {_failed_cell(executed)}: {err.ename}: "
                                 f"{str(err.evalue).rstrip('.')}. The executed copy is {executed}; finished runs are kept "
                                 f"in {results_dir / 'runs'}/ (one file per run), so a rerun continues.") from err
        _repo_relative_metadata(executed)
        row = {"notebook": name, "seconds": round(time.time() - started, 1), "executed": str(executed)}
        if html:
            row["html"] = str(_html(executed))
        log(f"[{name}] done in {row['seconds']} s")
        summary.append(row)
    return summary


TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"


def execute_report(template: str, executed: str | Path, parameters: dict, *, kernel: str = "python3",
                   html: bool = True) -> dict:
    """Execute a report template (``calib_lib/templates/<template>.ipynb``, shipped with the package) with
    papermill into `executed` and, with `html`, write it beside as one self-contained HTML file without the
    code. Nothing is left at `executed` by a failing run but the executed copy named in the error."""
    import papermill as pm
    source = TEMPLATE_DIR / f"{template}.ipynb"
    if not source.is_file():
        raise InvalidInput(f"no report template {template!r} in {TEMPLATE_DIR}")
    executed = Path(executed).resolve()
    executed.parent.mkdir(parents=True, exist_ok=True)
    for var in ("CALIB_MIRROR", "CALIB_CACHE"):
        if os.environ.get(var):
            os.environ[var] = str(Path(os.environ[var]).expanduser().resolve())
    started = time.time()
    try:
        pm.execute_notebook(str(source), str(executed), kernel_name=kernel, cwd=str(executed.parent),
                            progress_bar=False, parameters=parameters)
    except pm.PapermillExecutionError as err:
        raise NotebookFailed(f"report {template} failed in {_failed_cell(executed)}: {err.ename}: "
                             f"{str(err.evalue).rstrip('.')}. The executed copy is {executed}.") from err
    row = {"report": str(executed), "seconds": round(time.time() - started, 1)}
    if html:
        row["html"] = str(_html(executed, exclude_input=True))
    return row


def sensitivity_report(model: str, methods, budget: str = "quick", sources=None, *,
                       results_dir: str | Path = "results/sensitivity", out: str | Path | None = None,
                       html: bool = True, dry_run: bool = False, log=print) -> dict:
    """What ``calib sensitivity`` does: the runs (``study.sensitivity.compute_runs``: inputs checked, cost
    printed, missing runs computed), then the report template executed with papermill and written as one
    self-contained HTML file. Returns the cost and the paths ({"report": None} with `dry_run`)."""
    from .study.sensitivity import compute_runs
    started = time.time()
    runs = compute_runs(model, methods, budget, sources, results_dir=results_dir, out=out, dry_run=dry_run, log=log)
    if dry_run:
        return {"cost": runs["cost"], "report": None, "html": None, "seconds": 0.0}
    executed = execute_report("sensitivity", runs["report"], runs["parameters"], html=html)
    return {"cost": runs["cost"], "report": executed["report"], "html": executed.get("html"),
            "seconds": round(time.time() - started, 1)}
