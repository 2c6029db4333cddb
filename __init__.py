"""intvit: integer-only quantized inference for vision transformers.

    import intvit
    qmodel = intvit.quantize(float_vit, calib_images)          # IntegerViT, integer mode
    logits = qmodel(images)                                     # float logits after one dequantize
    int_logits = qmodel.forward_int(images)                     # the int32 logits themselves
    qmodel.save("model.intvit.safetensors"); intvit.load("model.intvit.safetensors")
    tuned = intvit.qat(qmodel, (train_images, train_labels), epochs=3)   # quantization-aware fine-tuning
"""
__version__ = "0.1.0"

from .models import UnsupportedModelError  # noqa: E402
from .calibration import CalibrationDataError  # noqa: E402
from .quantize import IntegerModelFileError, IntegerViT, QuantConfig, load  # noqa: E402
from .quantize import quantize  # noqa: E402  (the function; the subpackage stays intvit.quantize in sys.modules)
from .quantize.qat import qat  # noqa: E402

__all__ = ["CalibrationDataError", "IntegerModelFileError", "IntegerViT", "QuantConfig",
           "UnsupportedModelError", "load", "qat", "quantize", "__version__"]
