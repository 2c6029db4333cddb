"""intvit: integer-only quantized inference for vision transformers.

    import intvit
    qmodel = intvit.quantize(float_vit, calib_images)          # IntegerViT, integer mode
    logits = qmodel(images)                                     # float logits after one dequantize
    int_logits = qmodel.forward_int(images)                     # the int32 logits themselves
    qmodel.save("model.intvit.safetensors"); intvit.load("model.intvit.safetensors")
    intvit.save(wrapped, "backbone.safetensors"); intvit.export_onnx(wrapped, "backbone.onnx")   # a user module
    tuned = intvit.qat(qmodel, (train_images, train_labels), epochs=3)   # quantization-aware fine-tuning

The names below are imported on first use, so ``import intvit`` (and
``intvit --help``) does not pay for torch. ``intvit.quantize`` is the
function, even after the subpackage of the same name (``intvit.quantize.*``,
reached through imports) has been loaded: the import system binds a freshly
loaded subpackage on its parent, and this package keeps the function instead.
"""
import importlib
import sys
import types

__version__ = "0.1.0"

_LAZY = {  # public name -> (module, attribute)
    "quantize": ("intvit.quantize.api", "quantize"),
    "load": ("intvit.quantize.api", "load"),
    "save": ("intvit.quantize.api", "save"),
    "export_onnx": ("intvit.quantize.api", "export_onnx"),
    "QuantConfig": ("intvit.quantize.config", "QuantConfig"),
    "IntegerViT": ("intvit.quantize.integer_model", "IntegerViT"),
    "IntegerModelFileError": ("intvit.quantize.serialize", "IntegerModelFileError"),
    "qat": ("intvit.quantize.qat", "qat"),
    "UnsupportedModelError": ("intvit.models.errors", "UnsupportedModelError"),
    "CalibrationDataError": ("intvit.calibration.data", "CalibrationDataError"),
}
__all__ = sorted(_LAZY) + ["__version__"]


# subpackages and modules reached as attributes after a plain ``import intvit`` (``intvit.runtime.load``)
_SUBMODULES = ("runtime", "calibration", "models", "ops", "tvm_backend", "bench", "files", "cli")


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")    # the import binds it on this package
    if name not in _LAZY:
        raise AttributeError(f"module 'intvit' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = getattr(importlib.import_module(module), attr)
    vars(sys.modules[__name__])[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))


class _Package(types.ModuleType):
    """Keeps ``intvit.quantize`` the function when the import system binds the ``intvit.quantize`` subpackage."""

    def __setattr__(self, name, value):
        if name == "quantize" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
