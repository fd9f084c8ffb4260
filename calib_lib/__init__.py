"""calib_lib: study how calibration data changes pruned and quantized language models."""
from .models import load_model

__version__ = "0.1.0"
__all__ = ["load_model", "__version__"]
