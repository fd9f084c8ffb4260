"""environment.yml must mirror requirements.txt exactly: conda users get the same versions."""
import re

import yaml

from conftest import REPO


def _pins(lines):
    pins = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)(\[[^\]]+\])?==([^\s;]+)", line)
        assert match, f"not an exact pin: {line!r}"
        pins[match.group(1).lower().replace("_", "-")] = (match.group(2) or "", match.group(3))
    return pins


def test_environment_yml_mirrors_requirements():
    requirements = _pins((REPO / "requirements.txt").read_text().splitlines())
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    deps = env["dependencies"]
    assert "python=3.11" in deps
    pip_section = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    conda_pins = _pins(pip_section)
    assert conda_pins == requirements, (
        "environment.yml's pip list differs from requirements.txt: "
        f"only in requirements {sorted(set(requirements.items()) - set(conda_pins.items()))}, "
        f"only in environment.yml {sorted(set(conda_pins.items()) - set(requirements.items()))}")


def test_torch_is_pinned_with_lm_eval():
    """lm-eval[hf] without a torch pin in the same install resolves a CUDA build of torch."""
    pins = _pins((REPO / "requirements.txt").read_text().splitlines())
    assert pins["torch"][1] == "2.13.0"
    assert pins["lm-eval"][0] == "[hf]"


def test_required_packages_are_pinned():
    pins = _pins((REPO / "requirements.txt").read_text().splitlines())
    for name in ["jupyterlab", "torch", "transformers", "datasets", "lm-eval", "seaborn", "papermill", "scipy"]:
        assert name in pins, f"{name} is a required package but is not pinned"
