"""Where calib_lib keeps its caches and where it looks for the optional offline mirror.

Both locations are explicit: the cache defaults to the user's cache directory (override with
``CALIB_CACHE``); the offline mirror of public datasets is used only when ``CALIB_MIRROR`` names it.
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError

# The source checkout (the study notebooks, results/, figures/); in an installed package these folders are absent.
REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"


def cache_dir() -> Path:
    """Root of every cache calib_lib writes (models, wheels, calibration sets, results)."""
    root = os.environ.get("CALIB_CACHE")
    if root:
        path = Path(root).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        path = Path(base) / "calib_lib"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as err:
        setting = f"CALIB_CACHE={root!r}" if root else f"the default cache {path}"
        raise UserError(f"{setting} is not a directory (a file stands at {err.filename}); point "
                        "CALIB_CACHE at a directory, which is created when missing") from err
    return path


def mirror_dir() -> Path | None:
    """The offline mirror named by ``CALIB_MIRROR``, or None when it is unset.

    A set variable that points nowhere is a configuration mistake, so it raises rather than
    silently falling back to the hub.
    """
    root = os.environ.get("CALIB_MIRROR")
    if not root:
        return None
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        raise FileNotFoundError(
            f"CALIB_MIRROR={root!r} is not a directory. Point it at the offline mirror "
            "(the folder holding MANIFEST.md, corpora/ and tasks/) or unset it."
        )
    return path
