import os
from pathlib import Path

import pytest

# Unit tests never touch the network: a hub id must fail fast, not retry.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_llama():
    from calib_lib.models import load_model
    return load_model("tiny-llama", log=lambda *a: None)


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """A private CALIB_CACHE so a test can build, corrupt and rebuild entries freely."""
    monkeypatch.setenv("CALIB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def mirror_available() -> bool:
    root = os.environ.get("CALIB_MIRROR")
    return bool(root) and Path(root).is_dir()
