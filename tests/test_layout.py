"""Selective 16-bit layout: chosen GEMM inputs at int16, still integer-only and bit-exact in torch, ORT, TVM."""
import pytest

import intvit
from intvit.quantize.layout import resolve_layout, widenable_points
from conftest import assert_exact_in_ort_tvm_and_file, images


@pytest.fixture(scope="module")
def wide_qvit(tiny_vit):
    return intvit.quantize(tiny_vit, images(32), intvit.QuantConfig(
        progress=False, int16=("blocks.0.*", "norm"), auto_int16=2, matching_images=16))


def test_layout_patterns_and_auto_widening(wide_qvit):
    layout = wide_qvit.meta["layout"]
    assert {f"blocks.0.{p}" for p in ("norm1", "ctx", "norm2", "gelu")} | {"norm"} <= set(layout)
    auto = wide_qvit.meta["auto_int16"]
    assert len(auto) == 2 and all(p.startswith("blocks.1.") for p in auto)     # block 0 was already wide
    assert set(layout) == {f"blocks.0.{p}" for p in ("norm1", "ctx", "norm2", "gelu")} | {"norm"} | set(auto)
    assert all(wide_qvit.bits[p] == 16 for p in layout) and wide_qvit.bits["blocks.1.q"] == 8
    s8 = wide_qvit.amax["blocks.0.norm1"] / 127
    assert wide_qvit.scales["blocks.0.norm1"] == pytest.approx(wide_qvit.amax["blocks.0.norm1"] / 32767)
    assert wide_qvit.scales["blocks.0.norm1"] < s8 / 200


def test_wide_layout_is_bit_exact_in_ort_and_tvm_and_reloads(wide_qvit, tmp_path):
    from intvit.tvm_backend.inspect_ir import float_ops_in_integer_region
    from intvit.tvm_backend.importer import to_relax
    proto, again = assert_exact_in_ort_tvm_and_file(wide_qvit, images(8, seed=5), tmp_path / "w.safetensors")
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("MatMul") >= 5 + 2          # 4 widened linears in block 0 + the head, A·V per block
    assert float_ops_in_integer_region(to_relax(proto, batch=2)) == []
    assert again.meta["layout"] == wide_qvit.meta["layout"]


def test_layout_errors(tiny_vit):
    with pytest.raises(ValueError, match="int16 pattern 'blocks.9.*' matches no widenable quant point"):
        intvit.quantize(tiny_vit, images(8), intvit.QuantConfig(progress=False, int16=("blocks.9.*",)))
    q = intvit.quantize(tiny_vit, images(8), intvit.QuantConfig(progress=False))
    assert "blocks.1.q" not in widenable_points(q.spec)
    with pytest.raises(ValueError, match="matches no widenable"):
        resolve_layout(q.spec, "blocks.1.q")
    q.meta["layout"] = {"blocks.1.fc1": 16}
    with pytest.raises(ValueError, match="'blocks.1.fc1', which is not a widenable quant point"):
        q.refreeze()


def test_quantize_cli_layout_flags(tmp_path, capsys):
    from intvit.cli import main
    out = tmp_path / "f.safetensors"
    assert main(["quantize", "fmnist", "--quiet", "--max-images", "32", "--int16", "blocks.0.*,norm", "-o", str(out)]) == 0
    assert set(intvit.load(out).meta["layout"]) == {f"blocks.0.{p}" for p in ("norm1", "ctx", "norm2", "gelu")} | {"norm"}
    assert main(["quantize", "fmnist", "--quiet", "--max-images", "32", "--int16", "block.0.*",
                 "-o", str(tmp_path / "g.safetensors")]) == 2
    assert "int16 pattern 'block.0.*' matches no widenable" in capsys.readouterr().err
    assert not (tmp_path / "g.safetensors").exists()


def test_auto_exclude_widens_the_budgeted_number_of_points(tiny_qvit):
    import copy

    from intvit.quantize.layout import auto_exclude
    q = copy.deepcopy(tiny_qvit)
    chosen = auto_exclude(q, images(16), budget=3, max_images=16)
    assert len(chosen) == 3 and set(q.meta["layout"]) == set(chosen)
    assert all(q.bits[p] == 16 for p in chosen)
