"""The float ONNX every ONNX peer starts from, an ONNX Runtime session for the bench, and ORT's own static
INT8 of that ONNX (one definition, used by ``intvit bench`` on CPU and CUDA and by ``intvit eval``'s peers)."""
from __future__ import annotations

import torch


def ort_session(path_or_bytes, threads: int):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    # ORT's workers spin after each run by default; interleaved with other backends on a small
    # machine that spinning steals their cores (torch FP32 at batch 1 measured 2.7x slower).
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path_or_bytes, so, providers=["CPUExecutionProvider"])


def export_float_onnx(model, channels: int, image: int, path: str) -> None:
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, channels, image, image),), path, dynamo=False,
                          input_names=["pixel_values"], output_names=["logits"], opset_version=17,
                          dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}})


def quantize_qdq(fp32_path: str, input_name: str, calib: torch.Tensor, path: str, symmetric: bool = False) -> None:
    """ORT's static INT8: QDQ format, per-channel int8 weights, uint8 activations, min-max calibration.

    ``symmetric``: int8 activations with zero points 0 (what TensorRT's explicit quantization accepts).
    """
    import logging

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{input_name: calib[i:i + 1].numpy()} for i in range(calib.shape[0])])

        def get_next(self):
            return next(self.items, None)

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)          # ORT's quantizer logs advice on the root logger
    try:
        quantize_static(fp32_path, path, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                        weight_type=QuantType.QInt8,
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True} if symmetric else None)
    finally:
        root.setLevel(level)
