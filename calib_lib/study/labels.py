"""How methods read in tables and figures, and which family each belongs to: asked of the methods
themselves (``Method.label``, ``Method.family``), so a new method needs no entry here."""
from __future__ import annotations

import math

from ..compress import METHODS


def _int(value):
    return int(value) if isinstance(value, float) and value.is_integer() else value


def method_label(method: dict) -> str:
    """'wanda 50%', 'sparsegpt 2:4', 'gptq 3-bit g128', 'wanda 50% (layer order)', 'dense'."""
    method = {k: _int(v) for k, v in method.items()}
    name = method.pop("name")
    return "dense" if name == "dense" else METHODS[name](**method).label()


def method_family(name: str) -> str:
    return METHODS[name].family if name in METHODS else "none"


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def fmt(value: float, digits: int = 2) -> str:
    """A number for prose: NaN reads as 'n/a'."""
    return "n/a" if _missing(value) else f"{value:.{digits}f}"


def fmt_p(value: float, floor: float = 0.001) -> str:
    """A p-value for prose: three decimals, "< 0.001" below the floor (never "0.000"), "n/a" for NaN."""
    if _missing(value):
        return "n/a"
    return f"< {floor:g}" if value < floor else f"{value:.3f}"
