"""intvit.quantize: float ViT → integer-only ViT (PTQ), fake-quant for QAT, save/load."""
from .api import load, quantize
from .config import QuantConfig
from .integer_model import IntegerViT
from .serialize import IntegerModelFileError
from .wrapper import IntegerBackbone

__all__ = ["IntegerBackbone", "IntegerModelFileError", "IntegerViT", "QuantConfig", "load", "quantize"]
