"""The integer model executes integer ops only between the input quantizer and the dequantize."""
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import images

ALLOWED = {torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool}


class DtypeWalker(TorchDispatchMode):
    """Records every aten op executed, with the dtypes of its tensor inputs and outputs."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        dtypes = set()
        for v in list(args) + list((kwargs or {}).values()) + [out]:
            for t in (v if isinstance(v, (list, tuple)) else [v]):
                if isinstance(t, torch.Tensor):
                    dtypes.add(t.dtype)
        self.ops.append((str(func), dtypes))
        return out


def float_ops(model, x):
    x_int = model.quantize_input(x)
    with DtypeWalker() as walker:
        out = model.forward_int_core(x_int)
    assert out.dtype == torch.int64
    return walker.ops, [(op, d) for op, d in walker.ops if not d <= ALLOWED]


def test_deit_tiny_shaped_model_runs_integer_only_end_to_end(deit_tiny_qvit):
    q, x = deit_tiny_qvit, images(1, size=224)
    ops_run, floats = float_ops(q, x)
    assert len(ops_run) > 12 * 20          # the walk really saw the whole network
    assert floats == []
    logits = q(x)
    assert logits.shape == (1, 1000) and logits.dtype == torch.float32


def test_walker_detects_a_float_op(tiny_qvit):
    # The check must be able to fail: a float op inside the walked region is reported.
    x_int = tiny_qvit.quantize_input(images(1))
    with DtypeWalker() as walker:
        (x_int.float() * 0.5).to(torch.int64)
    assert any(not d <= ALLOWED for _, d in walker.ops)


def test_tiny_model_integer_only(tiny_qvit):
    assert float_ops(tiny_qvit, images(2))[1] == []
