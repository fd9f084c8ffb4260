"""What every study notebook does before its own question: one call instead of a setup cell per notebook.

    nb = study.setup("01_sample_count", profile, model=model, backend=backend, results_dir=results_dir,
                     figures_dir=figures_dir)
    table, dense_row = nb.run_with_dense(study.sample_count_grid(nb.profile))
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..runs.store import Store
from .grids import StudyGrid, dense_grid, run
from .profiles import CAVEAT_4BIT, Profile, describe_budget, get_profile
from .tables import has_accuracy


@dataclass
class NotebookSession:
    name: str
    profile: Profile
    store: Store
    results_dir: Path
    figures_dir: Path
    backend: str | None

    def run(self, grid: StudyGrid) -> pd.DataFrame:
        """Run the grid's missing runs; its results table."""
        run(grid, self.store, self.backend)
        return grid.results(self.store)

    def run_with_dense(self, grid: StudyGrid) -> tuple[pd.DataFrame, pd.Series]:
        """The grid's results table and the uncompressed model's row (the reference line of every figure)."""
        dense = dense_grid(self.profile)
        dense_row = self.run(dense).iloc[0]
        return self.run(grid), dense_row


def headline_metrics(table: pd.DataFrame) -> list[str]:
    """Perplexity (geometric mean over the texts), and mean task accuracy where tasks ran."""
    return ["ppl:geomean"] + (["acc:mean"] if has_accuracy(table) else [])


def results_store(results_dir: str | Path, read_only: bool = False, existing: bool = False) -> Store:
    """A profile's results store: ``<results_dir>/runs/``, one immutable file per finished run (what git
    keeps: each commit adds only new runs), imported on opening into ``<results_dir>/runs.sqlite`` (a local
    cache, not committed).

    ``existing``: refuse a folder that holds no runs instead of creating an empty store there. The notebooks
    that only read (00_overview, 10_explore) ask for it, so that a mistyped ``results_dir`` names the folder
    rather than reporting "0 runs" from a store it has just created."""
    results_dir = Path(results_dir)
    if existing and not holds_runs(results_dir):
        from ..errors import StoreError
        raise StoreError(f"no runs in {results_dir} (no runs/*.zip, no runs.sqlite): check results_dir, or "
                         f"compute the runs first (`calib study --profile <profile>`)")
    return Store(results_dir / "runs.sqlite", read_only=read_only, archive=results_dir / "runs")


def stored_results(results_dir: str | Path) -> Store | None:
    """``results_store`` opened read-only where `results_dir` holds runs (run files or a store file); None where
    it holds none yet (nothing is created either way)."""
    if holds_runs(results_dir):
        return results_store(results_dir, read_only=True)
    return None


def holds_runs(results_dir: str | Path) -> bool:
    """Whether `results_dir` holds a results store: run files or the store file (nothing is opened)."""
    results_dir = Path(results_dir)
    return (results_dir / "runs.sqlite").is_file() or any((results_dir / "runs").glob("*.zip"))


def notebook_path(path: str | Path) -> Path:
    """A notebook's ``results_dir`` or ``figures_dir`` parameter as a folder. `calib study` passes repository
    folders relative to notebooks/ (``../results/quick``), where papermill runs the kernels, so that executed
    notebooks name no machine's directories; a notebook opened elsewhere (the executed copy in
    results/<profile>/) must still reach the same folders, so a relative path is taken from notebooks/ when
    the kernel runs somewhere else. Absolute paths, and every path outside a source checkout, are kept."""
    from ..paths import NOTEBOOK_DIR
    path = Path(path).expanduser()
    if path.is_absolute() or not NOTEBOOK_DIR.is_dir() or Path.cwd().resolve() == NOTEBOOK_DIR.resolve():
        return path
    return (NOTEBOOK_DIR / path).resolve()


def setup(notebook: str, profile: str, *, model: str | None = None, backend: str | None = None,
          results_dir: str | Path | None = None, figures_dir: str | Path = "../figures",
          header: bool = True) -> NotebookSession:
    """The notebook's profile and store (``results_store``: ``<results_dir>/runs/``, default ``../results/<profile>``),
    the figure style, and (``header``) the profile, budget and 4-bit caveat displayed at the top."""
    from .. import plots
    cfg = get_profile(profile, model=model)
    results_dir = notebook_path(results_dir or f"../results/{profile}")
    store = results_store(results_dir)
    session = NotebookSession(notebook, cfg, store, results_dir, notebook_path(figures_dir), backend or cfg.backend)
    plots.style()
    pd.set_option("display.precision", 3)
    if header:
        from IPython.display import Markdown, display
        display(Markdown(f"**Profile `{cfg.name}`**: {cfg.description}.  \n**Budget**: {describe_budget(cfg)}.  \n"
                         f"**Caveat**: {CAVEAT_4BIT}"))
    return session
