"""fer_lib: the package behind the FER-2013 study notebooks."""
__version__ = "0.1.0"
