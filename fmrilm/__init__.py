"""fmrilm: brain-language foundation model."""
__version__ = "0.1.0"
