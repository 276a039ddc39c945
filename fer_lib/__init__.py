"""fer_lib: the package behind the FER-2013 study notebooks."""
import importlib
import warnings

from tqdm import TqdmWarning

__version__ = "0.1.0"

with warnings.catch_warnings():
    # Without ipywidgets, tqdm.auto falls back to text bars (what saved notebooks want) but warns
    # "IProgress not found" into every notebook; importing it once here keeps that out.
    warnings.simplefilter("ignore", TqdmWarning)
    importlib.import_module("tqdm.auto")


def __getattr__(name):
    """`fer_lib.load_model(path)` and `fer_lib.detect_emotions(image)`, as the README says, without
    importing torch for every `fer` command."""
    if name == "load_model":
        from .models import load_model
        return load_model
    if name == "detect_emotions":
        from .predict import detect_emotions
        return detect_emotions
    raise AttributeError(f"module 'fer_lib' has no attribute {name!r}")
