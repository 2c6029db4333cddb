"""The INT8 a user would otherwise pick, on the same model, images and calibration set (``intvit eval``).

* ``pt2e`` — PyTorch 2 Export post-training quantization with the
  ``X86InductorQuantizer`` default static config (torchao's PT2E): uint8
  asymmetric activations (histogram observers), int8 per-channel weights on
  the linear layers; LayerNorm, softmax, GELU, the attention matmuls and the
  residual adds stay float. The converted model runs its quantize/dequantize
  pairs in PyTorch (what inductor would lower to int8 kernels; the numbers
  are the same).
* ``ort_qdq`` — ONNX Runtime ``quantize_static`` on the float ONNX: QDQ
  format, uint8 activations, int8 per-channel weights, min-max calibration
  (``bench.onnx_float.quantize_qdq``, the same as ``intvit bench``'s row).

Each builder returns ``logits(images) -> tensor``; a peer that cannot run
here (its package missing, an export failure) raises ``PeerUnavailable`` with
the reason, which the report prints instead of a row.
"""
from __future__ import annotations

import os
import tempfile

import torch

from ..quantize.evaluate import PeerUnavailable

PEERS = {"pt2e": "peer: PyTorch PT2E X86Inductor INT8",
         "ort_qdq": "peer: ONNX Runtime QDQ INT8 (MinMax)"}


def _logits(out):
    return out.logits if hasattr(out, "logits") else out


def pt2e_int8(model: torch.nn.Module, calib: torch.Tensor, batch_size: int = 32):
    """PT2E static INT8 of ``model`` (exported for ``batch_size`` images; smaller batches are padded)."""
    converted = pt2e_converted(model, calib, batch_size)

    @torch.no_grad()
    def run(x):
        n = x.shape[0]
        return torch.cat([_logits(converted(_pad(x[i:i + batch_size], batch_size)))[:min(batch_size, n - i)]
                          for i in range(0, n, batch_size)])
    return run


def pt2e_converted(model: torch.nn.Module, calib: torch.Tensor, batch_size: int):
    """``model`` exported for ``batch_size`` images, calibrated on ``calib`` with the ``X86InductorQuantizer``
    default static config and converted (the module PT2E hands to inductor); ``PeerUnavailable`` on failure."""
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
    except ImportError as exc:
        raise PeerUnavailable(f"needs torchao (pip install 'intvit[peers]'): {exc}") from None
    example = calib[:1].expand(batch_size, *calib.shape[1:]).contiguous()
    try:
        with torch.no_grad():
            exported = torch.export.export(model.eval(), (example,)).module()
        quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
        prepared = prepare_pt2e(exported, quantizer)
        with torch.no_grad():
            for i in range(0, calib.shape[0], batch_size):
                prepared(_pad(calib[i:i + batch_size], batch_size))
        return convert_pt2e(prepared)
    except Exception as exc:                     # noqa: BLE001 - any export/quantization failure is a reason
        raise PeerUnavailable(f"PT2E failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None


def ort_qdq_int8(model: torch.nn.Module, calib: torch.Tensor):
    """ONNX Runtime's static QDQ INT8 of ``model`` exported to ONNX (batch dimension dynamic)."""
    import numpy as np

    from .onnx_float import export_float_onnx, ort_session, quantize_qdq

    class Logits(torch.nn.Module):            # ONNX export wants a tensor output
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return _logits(self.inner(x))

    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "int8.onnx")
        try:
            export_float_onnx(Logits(model).eval(), calib.shape[1], calib.shape[-1], fp32)
            quantize_qdq(fp32, "pixel_values", calib, int8)
            session = ort_session(int8, torch.get_num_threads())
        except Exception as exc:                 # noqa: BLE001
            raise PeerUnavailable(f"ONNX export or quantize_static failed: {type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0][:200]}") from None

    def run(x):
        return torch.from_numpy(session.run(None, {"pixel_values": np.ascontiguousarray(x.numpy())})[0])
    return run


BUILDERS = {"pt2e": pt2e_int8, "ort_qdq": ort_qdq_int8}


def build_peer(name: str, model: torch.nn.Module, calib: torch.Tensor):
    """``logits(images)`` of peer ``name``; ``PeerUnavailable`` when it cannot run here."""
    if name not in BUILDERS:
        raise ValueError(f"unknown peer {name!r}; choose from {sorted(BUILDERS)}")
    return BUILDERS[name](model, calib)


def peer_builders(names) -> dict:
    """``{row name: build(model, calib)}`` for ``quantize.evaluate.evaluate_recipes(peers=...)``."""
    unknown = [n for n in names if n not in BUILDERS]
    if unknown:
        raise ValueError(f"unknown peer {unknown}; choose from {sorted(BUILDERS)} or 'none'")
    return {PEERS[n]: BUILDERS[n] for n in names}


def _pad(x: torch.Tensor, n: int) -> torch.Tensor:
    if x.shape[0] == n:
        return x
    return torch.cat([x, x[-1:].expand(n - x.shape[0], *x.shape[1:])])
