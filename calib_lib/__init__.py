"""calib_lib: study how calibration data changes pruned and quantized language models."""
import warnings

# tqdm.auto in a notebook kernel without ipywidgets warns on import; its text bars are what we want.
warnings.filterwarnings("ignore", message="IProgress not found")

from .models import load_model

__version__ = "0.1.0"
__all__ = ["load_model", "__version__"]
