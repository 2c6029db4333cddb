"""Shared fixtures: small real Hugging Face models with seeded random weights."""
import os

import pytest
import torch

# Every integer op asserts its documented input range in the tests (``intvit.ops.checks``): a backend or a
# quantization change that pushed an op outside its proven range fails here instead of wrapping silently.
os.environ.setdefault("INTVIT_CHECK_RANGES", "1")


def hf_vit(image=32, patch=8, dim=64, layers=2, heads=4, mlp=128, labels=10, channels=3, seed=0):
    from transformers import ViTConfig, ViTForImageClassification
    torch.manual_seed(seed)
    cfg = ViTConfig(image_size=image, patch_size=patch, num_channels=channels, hidden_size=dim,
                    num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=mlp,
                    num_labels=labels)
    return ViTForImageClassification(cfg).eval()


def images(n, channels=3, size=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, channels, size, size, generator=g)


@pytest.fixture(scope="session")
def tiny_vit():
    return hf_vit()


@pytest.fixture(scope="session")
def deit_tiny_qvit():
    """A DeiT-Tiny-shaped HF ViT (192-d, 3 heads, 12 layers, 224 px) with random weights, quantized."""
    import intvit
    model = hf_vit(image=224, patch=16, dim=192, layers=12, heads=3, mlp=768, labels=1000)
    return intvit.quantize(model, images(8, size=224), intvit.QuantConfig(progress=False))


@pytest.fixture(scope="session")
def embedded_qvit():
    """The embedded Fashion-MNIST ViT, quantized on 128 of its calibration images."""
    import intvit
    from intvit.models import fmnist
    return intvit.quantize(fmnist.load_model(), fmnist.load_calibration_set(128), intvit.QuantConfig(progress=False))


def int8_linear_case(lead, rows: int, k: int, n: int, shift: int = 24):
    """A linear layer's operands for the GEMM kernel tests — int8 ``x [*lead, rows, k]`` and ``w [k, n]`` with
    every int8 extreme in the products, an int64 bias, per-channel multipliers ``m`` — and its reference output
    from ``ops``: ``requantize(x·w + bias, m, shift)`` to int8."""
    import numpy as np

    from intvit import ops
    rng = np.random.default_rng(rows * k + n)
    x = rng.integers(-128, 128, (*lead, rows, k)).astype(np.int8)
    w = rng.integers(-128, 128, (k, n)).astype(np.int8)
    x[..., 0, :], w[:, 0] = -128, -128                  # the largest product, every K of the first row
    x[..., -1, :], w[:, -1] = 127, -128
    bias = rng.integers(-2**20, 2**20, n).astype(np.int64)
    m = rng.integers(1, 1 << 12, n).astype(np.int64)
    acc = ops.int_linear(torch.from_numpy(x), torch.from_numpy(w.T.copy()), torch.from_numpy(bias))
    ref = ops.requantize(acc, torch.from_numpy(m), torch.tensor(shift), 8).numpy()
    assert len(np.unique(ref)) > min(100, ref.size // 8)          # the outputs span int8, not just its ends
    return x, w, bias, m, ref


def packed_linear_kernel(x_shape, n: int, k: int, dot, width: str, shift: int = 24):
    """A linear layer's kernel as the importer builds it in ``dot``'s operand form without a +128 shift (the
    16-bit ``VPDPWSSD`` form, AArch64's ``SDOT``): ``dot.b_dtype`` panels, the register tile of ``width``, the
    bias uncompensated, a per-channel requant to int8. Returns ``(PrimFunc, NR)``."""
    from tvm import te

    from intvit.tvm_backend import gemm
    from intvit.tvm_backend.kernels import requant_value
    with gemm.gemm_vectors(width):
        mr, nr = gemm.import_tile(n)
    g = dot.group
    xt = te.placeholder(x_shape, "int8", name="x")
    wt = te.placeholder((-(-n // (16 * nr)) * nr, -(-k // g), 16, g), dot.b_dtype, name="w")
    bt = te.placeholder((n,), "int64", name="b")
    mt = te.placeholder((n,), "int64", name="m")
    ep = lambda z, idx: requant_value(z, idx, mt, shift, 1 << (shift - 1), 0, -128, 127)  # noqa: E731
    out = gemm.packed_gemm_te(xt, wt, bt, mr, n, dot, epilogue=ep, out_dtype="int8", nr=nr)
    return te.create_prim_func([xt, wt, bt, mt, out]), nr


def assert_matches_reference(q, x, make_runner, batches=(1, 8)):
    """Every backend run ``make_runner(batch)(x_batch) -> (logits, int_logits)`` must equal the
    torch integer model exactly (the reference is exact, so it is computed once, batched by 8)."""
    import numpy as np
    ref_int = torch.cat([q.forward_int(x[i:i + 8]) for i in range(0, x.shape[0], 8)])
    ref_float, ref_int = q.dequantize(ref_int).numpy(), ref_int.numpy()
    for batch in batches:
        run = make_runner(batch)
        for i in range(0, x.shape[0] - x.shape[0] % batch, batch):
            logits, int_logits = run(x[i:i + batch])
            assert np.array_equal(int_logits, ref_int[i:i + batch])
            assert np.array_equal(logits, ref_float[i:i + batch])


@pytest.fixture(scope="session")
def tiny_qvit(tiny_vit):
    import intvit
    return intvit.quantize(tiny_vit, images(32), intvit.QuantConfig(progress=False))


@pytest.fixture(scope="session")
def tiny_qvit_shiftgelu(tiny_vit):
    """The tiny ViT with I-ViT's ShiftGELU instead of the default GELU table."""
    import intvit
    return intvit.quantize(tiny_vit, images(32), intvit.QuantConfig(progress=False, gelu="shift"))


from intvit.quantize.metrics import sqnr_db  # noqa: E402,F401  (one definition, shared with reports)


def assert_exact_in_ort_tvm_and_file(q, x, path):
    """``q``'s integer outputs on ``x`` equal ONNX Runtime on its export, the TVM module (llvm) and the
    model reloaded from ``path``; returns ``(onnx proto, reloaded model)``."""
    import numpy as np
    import onnxruntime as ort

    import intvit
    from intvit.quantize.onnx_export import to_onnx
    from intvit.tvm_backend.build import compile_onnx
    ref = q.forward_int(x).numpy()
    proto = to_onnx(q)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    assert np.array_equal(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[1], ref)
    assert np.array_equal(compile_onnx(proto, "llvm", batch=x.shape[0])(x)[1], ref)
    q.save(path)
    again = intvit.load(path)
    assert np.array_equal(again.forward_int(x).numpy(), ref)
    return proto, again


def errors_from_threads(fn, threads: int = 4) -> list:
    """Run ``fn()`` in ``threads`` threads at once; the exceptions they raised (empty when all succeeded)."""
    import threading
    errors = []

    def call():
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 (the caller asserts the list is empty)
            errors.append(exc)
    workers = [threading.Thread(target=call) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return errors


@pytest.fixture(scope="session")
def compiled_pair(tmp_path_factory, tiny_qvit):
    """Two different models compiled for batch 1: (dir, first .so, second .so, their integer models)."""
    import intvit
    from intvit.tvm_backend.runtime import compile_to_file
    d = tmp_path_factory.mktemp("modules")
    other = intvit.quantize(hf_vit(seed=9), images(16), intvit.QuantConfig(progress=False))
    paths = []
    for name, q in (("a", tiny_qvit), ("b", other)):
        q.export_onnx(d / f"{name}.onnx")
        compile_to_file(d / f"{name}.onnx", d / f"{name}.so", batch=1)
        paths.append(d / f"{name}.so")
    return d, paths[0], paths[1], tiny_qvit, other
