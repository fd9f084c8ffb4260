"""Executed notebooks name repository paths relative to the notebooks, never this machine's directories."""

from pathlib import Path

import nbformat

from calib_lib import notebooks
from calib_lib.notebooks import NOTEBOOK_DIR, REPO


def test_paths_inside_the_repository_are_given_to_kernels_relative_to_the_notebooks(tmp_path):
    assert notebooks._seen_from_notebooks(REPO / "results" / "quick") == "../results/quick"
    assert notebooks._seen_from_notebooks(REPO / "figures") == "../figures"
    # from notebooks/, the relative path reaches the same folder
    assert (NOTEBOOK_DIR / "../results/quick").resolve() == (REPO / "results" / "quick").resolve()
    assert notebooks._seen_from_notebooks(tmp_path / "r") == str(tmp_path / "r")     # outside: absolute


def test_papermill_metadata_is_rewritten_repository_relative(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["papermill"] = {"input_path": str(NOTEBOOK_DIR / "04_seed_variance.ipynb"),
                                "output_path": str(REPO / "results" / "quick" / "04_seed_variance.ipynb"),
                                "parameters": {"profile": "quick"}}
    path = tmp_path / "executed.ipynb"
    nbformat.write(nb, path)
    notebooks._repo_relative_metadata(path)
    meta = nbformat.read(path, as_version=4).metadata["papermill"]
    assert meta["input_path"] == "notebooks/04_seed_variance.ipynb"
    assert meta["output_path"] == "results/quick/04_seed_variance.ipynb"
    assert str(REPO) not in path.read_text()

    outside = tmp_path / "outside.ipynb"
    nb.metadata["papermill"] = {"input_path": str(tmp_path / "x.ipynb"), "output_path": str(outside)}
    nbformat.write(nb, outside)
    notebooks._repo_relative_metadata(outside)
    assert nbformat.read(outside, as_version=4).metadata["papermill"]["output_path"] == str(outside)


def test_an_executed_copy_opened_outside_notebooks_reaches_the_same_folders(tmp_path, monkeypatch):
    from calib_lib import study
    # where papermill runs the kernels: the relative path is kept (printed paths stay machine-free)
    monkeypatch.chdir(NOTEBOOK_DIR)
    assert study.notebook_path("../results/quick") == Path("../results/quick")
    # the executed copy opened in results/quick/ (or anywhere else): taken from notebooks/, not from the cwd
    monkeypatch.chdir(tmp_path)
    assert study.notebook_path("../results/quick") == (REPO / "results" / "quick").resolve()
    assert study.notebook_path("../figures") == (REPO / "figures").resolve()
    assert study.notebook_path(tmp_path / "mine") == tmp_path / "mine"            # absolute: as given
