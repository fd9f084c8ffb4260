"""The data layer's registries: calibration sources and sampling strategies.

They live apart from their implementations so that ``CalibrationSpec`` (spec.py) can validate and
normalise itself through them without importing the sources, which build ``CalibrationSet`` objects
of spec.py: the imports point one way (spec -> registry <- sources).
"""
from __future__ import annotations

from ..registry import Registry

SOURCES: Registry = Registry("calibration source")       # id -> sources.Source
STRATEGIES: Registry = Registry("sampling strategy")     # name -> strategies.Strategy
