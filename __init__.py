"""intvit: integer-only quantized inference for vision transformers."""
__version__ = "0.1.0"
