"""The latency benchmark runs end to end in a tiny configuration (no timing is asserted)."""
import json

from intvit.bench import latency


def test_latency_bench_tiny_configuration(tmp_path):
    lines = []
    rep = latency.run(["tiny"], [1, 2], repeat=1, threads=1, out_dir=str(tmp_path), progress=lines.append,
                      backends=latency.ALL_BACKENDS, per_round=1)
    saved = json.loads(open(rep["path"]).read())
    assert [r["batch"] for r in saved["results"]] == [1, 2]
    result = saved["results"][1]
    assert set(result["backends"]) == {"torch_fp32", "ort_fp32", "ort_int8_qdq", "intvit_int8_ort",
                                       "intvit_int8_tvm"}
    assert all(r["median_ms"] > 0 and r["images_per_s"] > 0 for r in result["backends"].values())
    assert result["backends"]["intvit_int8_tvm"]["vs_intvit_tvm"] == 1.0
    assert saved["machine"]["threads"] == 1 and saved["machine"]["tvm"]
    assert any("intvit_int8_tvm" in line for line in lines)


def test_latency_bench_rejects_unknown_model_and_backend():
    import pytest
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        latency.build_model("resnet")
    with pytest.raises(ValueError, match="backends must include intvit_int8_tvm"):
        latency.run(["tiny"], [1], repeat=1, threads=1, backends=("torch_fp32", "tensorrt"))
