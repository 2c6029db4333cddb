"""The CPU peers a user of an AMX Xeon would pick, as ``intvit bench`` backends (issue 16, item 4).

=========================== ==========================================================================
``openvino_fp32``           the float ONNX in OpenVINO, inference precision forced to f32
``openvino_default``        the float ONNX in OpenVINO at its default precision (bf16 where the CPU
                            has AMX-BF16 or AVX512-BF16, else f32: the report records which)
``openvino_int8``           OpenVINO after NNCF post-training INT8 quantization (``nncf.quantize``,
                            transformer model type) on the same calibration images
``torch_bf16``              the float model cast to bfloat16, PyTorch eager
``torch_compile_bf16``      the same through ``torch.compile`` (inductor, full graph, static shapes)
``pt2e_int8_inductor``      PyTorch PT2E static INT8 (torchao ``X86InductorQuantizer``, the same
                            calibration images) compiled by inductor with freezing, which lowers the
                            quantized linears to oneDNN int8 kernels
=========================== ==========================================================================

Each is optional: a missing package (``pip install 'intvit[peers]'``) or a
failed build makes the row unavailable with the reason, not the run. All are
built for one batch size (OpenVINO reshapes the model to it; the compiled
torch modules have static shapes) with the bench's thread count. The BF16
and INT8 peers are not bit-exact with anything; they are here for their speed.
"""
from __future__ import annotations

import copy
import os
import warnings

import numpy as np
import torch

PEER_BACKENDS = ("openvino_fp32", "openvino_default", "openvino_int8", "torch_bf16", "torch_compile_bf16",
                 "pt2e_int8_inductor")


def openvino_backend(fp32_onnx: str, input_name: str, batch: int, threads: int, precision: str | None = None,
                     calib: torch.Tensor | None = None, save_dir: str | None = None):
    """``(run, size_bytes, artifact)`` for the float ONNX in OpenVINO at ``batch``: ``precision`` "f32" forces
    float32 (None: OpenVINO's default); ``calib`` quantizes it to INT8 with NNCF first."""
    import openvino as ov
    core = ov.Core()
    model = core.read_model(fp32_onnx)
    model.reshape({input_name: [batch, *_static_tail(model.input(input_name).get_partial_shape())]})
    size, artifact = os.path.getsize(fp32_onnx), "float ONNX file"
    if calib is not None:
        import nncf
        samples = [calib[i:i + batch].numpy() for i in range(0, calib.shape[0] - batch + 1, batch)]
        model = nncf.quantize(model, nncf.Dataset(samples), model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=len(samples) * batch)
        path = os.path.join(save_dir, f"openvino-int8-b{batch}.xml")
        ov.save_model(model, path)
        size, artifact = os.path.getsize(path[:-4] + ".bin"), "OpenVINO IR weights (.bin)"
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    used = hint.to_string() if hasattr(hint, "to_string") else str(hint)        # "bf16", "f32"
    output = compiled.output(0)

    def run(x):
        return request.infer({0: x})[output]
    return run, size, f"{artifact}; inference precision {used}"


def _static_tail(shape) -> list[int]:
    """The non-batch dimensions of an OpenVINO partial shape (which must be static)."""
    return [int(d.get_length()) for d in list(shape)[1:]]


def torch_bf16_backend(model: torch.nn.Module, batch: int, compiled: bool, example: np.ndarray):
    """``run`` for ``model`` in bfloat16 (logits returned as float32), eager or through ``torch.compile``."""
    bf16 = copy.deepcopy(model).eval().to(torch.bfloat16)
    fn = torch.compile(bf16, backend="inductor", fullgraph=True, dynamic=False) if compiled else bf16

    def run(x):
        with torch.no_grad():
            out = fn(torch.from_numpy(x).to(torch.bfloat16))
            return (out.logits if hasattr(out, "logits") else out).float().numpy()
    run(example)                                   # torch.compile compiles here
    return run, bf16


def pt2e_inductor_backend(model: torch.nn.Module, calib: torch.Tensor, batch: int, example: np.ndarray):
    """``run`` for PT2E INT8 (``accuracy_peers.pt2e_converted``) compiled by inductor with freezing."""
    import torch._inductor.config as inductor_config

    from .accuracy_peers import pt2e_converted
    converted = pt2e_converted(model, calib, batch)
    fn = torch.compile(converted, backend="inductor", fullgraph=True, dynamic=False)

    def run(x):
        with torch.no_grad(), inductor_config.patch(freezing=True):
            out = fn(torch.from_numpy(x))
            return (out.logits if hasattr(out, "logits") else out).numpy()
    with warnings.catch_warnings():                # inductor's oneDNN lowering warns about its own tensor copies
        warnings.simplefilter("ignore", UserWarning)
        run(example)                               # compiles (and freezes the weights) here
    return run
