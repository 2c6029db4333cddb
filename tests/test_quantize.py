"""IntegerViT: accuracy against float, modes, determinism, save/load, calibration cache."""
import json

import numpy as np
import pytest
import torch

import intvit
from intvit import ops
from intvit.calibration import calibrate
from intvit.models import to_spec
from intvit.models.spec import linear_layers
from intvit.quantize.qparams import weight_scale
from intvit.quantize.integer_model import FloatWeightsMissingError
from intvit.quantize.serialize import header_digest
from intvit.quantize.fake_quant import fake_quant, fake_quant_weight
from conftest import images, sqnr_db


def test_integer_model_tracks_float_model(tiny_vit, tiny_qvit):
    x = images(16, seed=7)
    ref = tiny_vit(x).logits
    out = tiny_qvit(x)
    assert sqnr_db(out, ref) > 15
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.75


def test_fake_quant_mode_tracks_integer_mode_and_shares_its_grids(tiny_qvit):
    x = images(8, seed=3)
    q = tiny_qvit
    q.mode = "fake"
    fake = q(x)
    q.mode = "int"
    assert sqnr_db(fake, q(x)) > 15
    # The input quantizer and the weight grids are the same in both modes, exactly.
    s_in = q.scales["input"]
    assert torch.equal(torch.round(fake_quant(x, s_in, 8) / s_in).to(torch.int64), q.quantize_input(x))
    for name, lin in linear_layers(q.spec).items():
        s_w = weight_scale(lin.weight)[:, None]
        assert torch.equal(torch.round(fake_quant_weight(lin.weight).double() / s_w).to(torch.int64),
                           q.p(name + ".w"))


def test_fake_quant_passes_gradients_to_weights(tiny_qvit):
    q = tiny_qvit
    q.mode = "fake"
    w = q.spec.blocks[0].fc1.weight
    w.requires_grad_(True)
    try:
        q(images(2)).sum().backward()
        assert w.grad is not None and float(w.grad.abs().sum()) > 0
    finally:
        w.requires_grad_(False)
        w.grad = None
        q.mode = "int"


def test_float_mode_is_the_source_model(tiny_vit, tiny_qvit):
    tiny_qvit.mode = "float"
    try:
        x = images(3)
        assert torch.allclose(tiny_qvit(x), tiny_vit(x).logits, atol=1e-5)
    finally:
        tiny_qvit.mode = "int"


def test_integer_outputs_are_deterministic_and_survive_save_load(tiny_qvit, tmp_path):
    x = images(6, seed=11)
    a, b = tiny_qvit.forward_int(x), tiny_qvit.forward_int(x)
    assert torch.equal(a, b)
    path = tmp_path / "m.intvit.safetensors"
    tiny_qvit.save(path)
    loaded = intvit.load(path)
    assert torch.equal(loaded.forward_int(x), a)
    assert torch.equal(loaded(x), tiny_qvit(x))
    assert loaded.scales == tiny_qvit.scales


def test_corrupted_save_files_are_refused(tiny_qvit, tmp_path):
    path = tmp_path / "m.safetensors"
    tiny_qvit.save(path, include_float=True)
    raw = path.read_bytes()
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(intvit.IntegerModelFileError, match="not a readable intvit model"):
        intvit.load(trunc)

    # Scales altered in the header (the I-ViT issue #6 failure), checksum recomputed: refused, not run.
    def alter_a_range(meta, inner):
        inner["amax"][next(iter(inner["amax"]))] *= 1.7
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(_rewrite_header(raw, alter_a_range))
    with pytest.raises(intvit.IntegerModelFileError, match="corrupted"):
        intvit.load(bad)
    other = tmp_path / "other.safetensors"
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(2)}, other)
    with pytest.raises(intvit.IntegerModelFileError, match="not an intvit"):
        intvit.load(other)
    with pytest.raises(FileNotFoundError):
        intvit.load(tmp_path / "missing.safetensors")


def _rewrite_header(raw: bytes, edit) -> bytes:
    """The safetensors file ``raw`` with ``edit(metadata, inner_header)`` applied to its JSON header."""
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    inner = json.loads(header["__metadata__"]["header"])
    edit(header["__metadata__"], inner)
    header["__metadata__"]["header"] = json.dumps(inner)
    if "header_sha256" in header["__metadata__"]:        # a crafted file, consistent with its checksum
        header["__metadata__"]["header_sha256"] = header_digest(header["__metadata__"]["header"])
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    return len(hb).to_bytes(8, "little") + hb + raw[8 + n:]


@pytest.mark.parametrize("field,value,message", [
    ("pool", ["clt"], "pooling \\['clt'\\] is not a list of"),
    ("pool", ["token3"], "pooling"),
    ("patch_size", 7, "not a positive multiple of the patch size 7"),
])
def test_damaged_structure_fields_are_refused(tiny_qvit, tmp_path, field, value, message):
    """A flipped bit in a non-tensor field (the pool name, the patch size) must not load as another model:
    the structure is validated on load (issue 15, finding 2)."""
    path = tmp_path / "m.safetensors"
    tiny_qvit.save(path)

    def damage(meta, inner):
        inner["spec"][field] = value
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(_rewrite_header(path.read_bytes(), damage))
    with pytest.raises(intvit.IntegerModelFileError, match=message):
        intvit.load(bad)


def test_a_changed_header_fails_its_checksum(tiny_qvit, tmp_path):
    """Any byte of the header changed (a valid pooling included) is refused by its checksum before it is
    parsed; structure validation (above) covers crafted files whose checksum was recomputed."""
    path = tmp_path / "m.safetensors"
    tiny_qvit.save(path)
    raw = path.read_bytes()
    assert raw.count(b'\\"pool\\": [\\"cls\\"]') == 1
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(raw.replace(b'\\"pool\\": [\\"cls\\"]', b'\\"pool\\": [\\"mea\\"]'))
    with pytest.raises(intvit.IntegerModelFileError, match="does not match its checksum"):
        intvit.load(bad)


def test_heads_that_do_not_divide_the_width_are_refused(tiny_qvit, tmp_path):
    path = tmp_path / "m.safetensors"
    tiny_qvit.save(path)

    def damage(meta, inner):
        inner["spec"]["blocks"][0]["num_heads"] = 0
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(_rewrite_header(path.read_bytes(), damage))
    with pytest.raises(intvit.IntegerModelFileError, match="block 0: 0 heads do not divide"):
        intvit.load(bad)


def test_version_1_files_load_as_shiftgelu_models(tiny_vit, tmp_path):
    """Files written before the GELU table (format 1, no GELU form in the meta) were ShiftGELU models."""
    q = intvit.quantize(tiny_vit, images(16), intvit.QuantConfig(progress=False, gelu="shift"))
    path = tmp_path / "m.safetensors"
    q.save(path, include_float=True)

    def as_version_1(meta, inner):
        meta["format_version"] = "1"
        del inner["meta"]["gelu"]
    old = tmp_path / "v1.safetensors"
    old.write_bytes(_rewrite_header(path.read_bytes(), as_version_1))
    loaded = intvit.load(old)
    assert loaded.gelu == "shift"
    x = images(4, seed=5)
    assert torch.equal(loaded.forward_int(x), q.forward_int(x))
    with pytest.raises(ValueError, match="unknown gelu"):
        intvit.QuantConfig(gelu="tanh")


def test_wrong_input_shape_and_dtype_are_clear_errors(tiny_qvit):
    with pytest.raises(ValueError, match=r"expected images of shape \[B, 3, 32, 32\]"):
        tiny_qvit(torch.zeros(1, 3, 64, 64))
    with pytest.raises(TypeError, match="expected float images"):
        tiny_qvit(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(TypeError, match="torch.Tensor"):
        tiny_qvit(np.zeros((1, 3, 32, 32), np.float32))


def test_calibration_cache_is_reused(tiny_vit, tmp_path, monkeypatch):
    spec = to_spec(tiny_vit)
    cache = tmp_path / "calib.json"
    first = calibrate(spec, images(8), recipe="percentile", cache_path=cache, progress=False)
    import intvit.calibration.ptq as cal

    def no_forward(*a, **k):
        raise AssertionError("recalibrated although the cache matched")
    monkeypatch.setattr(cal, "float_forward", no_forward)
    again = calibrate(spec, images(8), recipe="percentile", cache_path=cache, progress=False)
    assert again.amax == first.amax
    with pytest.raises(AssertionError, match="recalibrated"):   # different data → recalibrates
        calibrate(spec, images(8, seed=5), recipe="percentile", cache_path=cache, progress=False)


@pytest.mark.parametrize("edit", ["qkv bias", "norm1 gamma", "norm2 beta", "final norm gamma", "pos_patches",
                                  "prefix", "patch bias", "head bias", "fc2 weight", "eps", "pool"])
def test_calibration_cache_notices_any_change_of_the_model(tiny_vit, tmp_path, edit):
    """Every float tensor and setting that reaches the integer model is in the cache's fingerprint."""
    import copy

    from intvit.calibration.ptq import spec_fingerprint
    spec = to_spec(tiny_vit)
    changed = copy.deepcopy(spec)
    blk = changed.blocks[1]
    tensor = {"qkv bias": lambda: blk.qkv.bias, "norm1 gamma": lambda: blk.norm1.weight,
              "norm2 beta": lambda: blk.norm2.bias, "final norm gamma": lambda: changed.final_norm.weight,
              "pos_patches": lambda: changed.pos_patches, "prefix": lambda: changed.prefix_tokens,
              "patch bias": lambda: changed.patch_embed.bias, "head bias": lambda: changed.head.bias,
              "fc2 weight": lambda: blk.fc2.weight}.get(edit)
    if tensor is not None:
        with torch.no_grad():
            tensor().view(-1)[3] += 0.01
    elif edit == "eps":
        blk.norm2.eps = 1e-5
    else:
        changed.pool = ("mean",)
    assert spec_fingerprint(changed) != spec_fingerprint(spec)
    assert spec_fingerprint(copy.deepcopy(spec)) == spec_fingerprint(spec)


@pytest.mark.parametrize("recipe", ["minmax", "percentile", "omse"])
def test_every_recipe_quantizes(tiny_vit, recipe):
    q = intvit.quantize(tiny_vit, images(16), intvit.QuantConfig(recipe=recipe, progress=False))
    assert sqnr_db(q(images(8, seed=9)), tiny_vit(images(8, seed=9)).logits) > 12


def test_requant_constants_follow_ops(tiny_qvit):
    # The stored multipliers are exactly what ops.dyadic_multiplier gives for the scale ratios.
    s = tiny_qvit.scales
    m, e = ops.dyadic_multiplier(2.0**-15 * s["blocks.1.v"] / s["blocks.1.ctx"])
    assert torch.equal(tiny_qvit.p("blocks.1.ctx.rq.m"), m) and torch.equal(tiny_qvit.p("blocks.1.ctx.rq.e"), e)
    assert int(tiny_qvit.p("blocks.0.softmax.x0")) == ops.shiftexp_x0(s["blocks.0.logits"])


def test_threads_saving_one_path_do_not_collide(tiny_qvit, tmp_path):
    """Four threads saving the same path at once (they shared one temp name before): every save succeeds,
    the file loads, and no temp file is left."""
    from conftest import errors_from_threads
    path = tmp_path / "m.safetensors"
    assert errors_from_threads(lambda: tiny_qvit.save(path)) == []
    assert torch.equal(intvit.load(path).forward_int(images(2)), tiny_qvit.forward_int(images(2)))
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_a_deployment_file_holds_integers_at_their_widths(tiny_qvit, tmp_path):
    """By default the file holds only what inference needs, each integer tensor at its narrowest width: smaller
    than the int8 ONNX, and it reloads, runs and exports bit-exactly; float weights only when asked."""
    import os
    from safetensors import safe_open
    compact, full, onnx_path = tmp_path / "c.safetensors", tmp_path / "f.safetensors", tmp_path / "m.onnx"
    tiny_qvit.save(compact)
    tiny_qvit.save(full, include_float=True)
    tiny_qvit.export_onnx(onnx_path)
    assert os.path.getsize(compact) <= 1.1 * os.path.getsize(onnx_path) < os.path.getsize(full)
    umask = os.umask(0o022)
    os.umask(umask)
    assert os.stat(compact).st_mode & 0o777 == 0o666 & ~umask          # as open() creates, not 0600
    with safe_open(str(compact), framework="pt") as f:
        names = list(f.keys())
        assert not any(n.startswith("spec.") for n in names)
        assert f.get_tensor("int.blocks.0.qkv.w").dtype == torch.int8
        assert f.get_tensor("int.blocks.0.qkv.b").dtype in (torch.int16, torch.int32)
    x = images(4, seed=2)
    loaded = intvit.load(compact)
    assert not loaded.has_float_weights and intvit.load(full).has_float_weights
    assert torch.equal(loaded.forward_int(x), tiny_qvit.forward_int(x)) and torch.equal(loaded(x), tiny_qvit(x))
    assert loaded.integer_params().keys() == tiny_qvit.integer_params().keys()
    assert all(loaded.integer_params()[k].dtype == v.dtype for k, v in tiny_qvit.integer_params().items())
    again = tmp_path / "again.onnx"
    loaded.export_onnx(again)
    assert again.read_bytes() == onnx_path.read_bytes()
    with pytest.raises(FloatWeightsMissingError, match="include_float=True"):
        loaded.refreeze()
    loaded.mode = "fake"
    with pytest.raises(ValueError, match="needs the float weights"):
        loaded(x)


def test_a_deployment_file_with_a_changed_integer_is_refused(tiny_qvit, tmp_path):
    path = tmp_path / "c.safetensors"
    tiny_qvit.save(path)
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 1                                            # the last tensor's data
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(raw))
    with pytest.raises(intvit.IntegerModelFileError, match="integer tensors do not match their checksum"):
        intvit.load(bad)


def _forge_tensors(path, out, edit):
    """``path`` (saved without float weights) rewritten with ``edit(int_tensors, inner_header)`` applied and
    every digest recomputed, as someone forging a file would."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    from intvit.quantize.serialize import tensors_digest
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    ints = {k[4:]: v for k, v in tensors.items() if k.startswith("int.")}
    inner = json.loads(meta["header"])
    edit(ints, inner)
    inner["int_sha256"] = tensors_digest(ints)
    meta["header"] = json.dumps(inner)
    meta["header_sha256"] = header_digest(meta["header"])
    save_file({"int." + k: v.contiguous() for k, v in ints.items()}, str(out), metadata=meta)


def _drop_row(ints, inner):
    ints["blocks.0.fc1.w"] = ints["blocks.0.fc1.w"][1:]


def _widen(ints, inner):
    inner["int_dtypes"]["blocks.1.qkv.w"] = "int16"


def _remove(ints, inner):
    del ints["blocks.0.gelu.table"], inner["int_dtypes"]["blocks.0.gelu.table"]


def _add(ints, inner):
    ints["blocks.0.extra"], inner["int_dtypes"]["blocks.0.extra"] = torch.zeros(3, dtype=torch.int8), "int8"


def _big_shift(ints, inner):
    ints["blocks.0.fc1.rq.e"] = torch.full_like(ints["blocks.0.fc1.rq.e"], 100)


def _zero_x0(ints, inner):
    ints["blocks.1.softmax.x0"] = torch.zeros_like(ints["blocks.1.softmax.x0"])


def _wide_table(ints, inner):
    ints["blocks.0.gelu.table"] = ints["blocks.0.gelu.table"].to(torch.int16) * 3


@pytest.mark.parametrize("edit, message", [
    (_big_shift, "integer tensor 'blocks.0.fc1.rq.e': blocks.0.fc1.rq: shift in \\[100, 100\\], outside "
                 "\\[1, 62\\] — no frozen model holds that"),
    (_zero_x0, "integer tensor 'blocks.1.softmax.x0': x0 must be <= -1, got 0"),
    (_wide_table, "integer tensor 'blocks.0.gelu.table': values in \\[-?[0-9]+, [0-9]+\\], outside \\[-128, 127\\]"),
    (_drop_row, "integer tensor 'blocks.0.fc1.w' is \\[127, 64\\] int64, and the model's structure needs "
                "\\[128, 64\\] int64"),
    (_widen, "'blocks.1.qkv.w' is \\[192, 64\\] int16, and the model's structure needs \\[192, 64\\] int64"),
    (_remove, "missing \\['blocks.0.gelu.table'\\], unexpected \\[\\]"),
    (_add, "missing \\[\\], unexpected \\['blocks.0.extra'\\]"),
])
def test_forged_integer_tensors_are_refused_at_load(tiny_qvit, tmp_path, edit, message):
    """A deployment file (no float weights) whose tensors were changed and whose digests were recomputed to
    match loaded, then failed inside its first forward pass or ran outside the ops' domain (a shift of 100
    bits; a red-team finding of 2026-12-06): the tensors are now checked against what the header's structure
    needs, by name, shape and dtype, and their values against the domain ``freeze`` writes."""
    path, bad = tmp_path / "m.safetensors", tmp_path / "bad.safetensors"
    tiny_qvit.save(path)
    assert intvit.load(path).integer_params().keys() == tiny_qvit.integer_params().keys()
    _forge_tensors(path, bad, edit)
    with pytest.raises(intvit.IntegerModelFileError, match=f"{bad}: .*{message}"):
        intvit.load(bad)


@pytest.mark.parametrize("config", [dict(gelu="shift"), dict(int16=("blocks.0.*",)),
                                    dict(attention_temperature=True, output_balance=True),
                                    dict(gelu="shift", zero_points=(), migration=())])
def test_deployment_files_of_every_layout_pass_the_load_checks(tiny_vit, tmp_path, config):
    """The structure and value checks of a deployment file hold for what ``freeze`` writes in every layout:
    ShiftGELU's ``x0``, a 16-bit GELU table and int64 accumulators, per-head temperatures, no zero points."""
    q = intvit.quantize(tiny_vit, images(16), intvit.QuantConfig(progress=False, **config))
    q.save(tmp_path / "m.safetensors")
    x = images(2, seed=8)
    assert torch.equal(intvit.load(tmp_path / "m.safetensors").forward_int(x), q.forward_int(x))


def test_a_model_path_may_be_bytes(tiny_qvit, tmp_path):
    import os
    path = os.fsencode(tmp_path / "m.safetensors")
    tiny_qvit.save(path)
    x = images(2, seed=3)
    assert torch.equal(intvit.load(path).forward_int(x), tiny_qvit.forward_int(x))


def test_an_intvit_model_file_is_told_from_its_header(tiny_qvit, tmp_path):
    """``intvit quantize`` may write over an earlier intvit model in the model folder, never over a checkpoint."""
    from safetensors.torch import save_file
    from intvit.quantize.serialize import is_intvit_model_file
    tiny_qvit.save(tmp_path / "q.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "float.safetensors"))
    tiny_qvit.export_onnx(tmp_path / "q.onnx")
    assert is_intvit_model_file(tmp_path / "q.safetensors")
    assert not any(is_intvit_model_file(tmp_path / n) for n in ("float.safetensors", "q.onnx", "missing"))
