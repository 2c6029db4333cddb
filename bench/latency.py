"""INT8 vs FP32 latency, side by side in one process (first slice of ``intvit bench``).

    python -m intvit.bench.latency --model deit_small --batch 1,8 --repeat 10

Backends, measured in interleaved rounds (per round: one untimed call of each
backend, then ``per_round`` timed calls) so that machine drift hits them all
alike and no backend pays for the previous one's spinning worker threads:

* ``torch_fp32``      — the float Hugging Face model, eager.
* ``ort_fp32``        — the float model exported to ONNX, ONNX Runtime.
* ``ort_int8_qdq``    — ORT's own static INT8 (QDQ, per-channel weights) of that ONNX.
* ``intvit_int8_ort`` — intvit's integer-only ONNX graph in ONNX Runtime.
* ``intvit_int8_tvm`` — the same graph compiled by intvit's TVM backend (llvm).

Every backend gets the same thread count (``--threads``; recorded); ORT's
worker spinning is off so an idle backend does not steal the others' cores. Models
with random weights are real HF architectures of the named shapes (no
download); ``fmnist`` is the embedded trained model. Reports median and p90
(ms), images/s, and each backend's median relative to ``intvit_int8_tvm``.
Tests run it in a tiny configuration; they never assert a timing.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import socket
import tempfile
import time

import numpy as np
import torch

SHAPES = {  # name: (image, patch, dim, layers, heads, mlp, labels)
    "tiny": (32, 8, 64, 2, 4, 128, 10),
    "deit_tiny": (224, 16, 192, 12, 3, 768, 1000),
    "deit_small": (224, 16, 384, 12, 6, 1536, 1000),
    "vit_base": (224, 16, 768, 12, 12, 3072, 1000),
}


def build_model(name: str):
    """(float HF model, calibration images, channels, image size)."""
    if name == "fmnist":
        from ..models import fmnist
        return fmnist.load_model(), fmnist.load_calibration_set(64), 1, 28
    from transformers import ViTConfig, ViTForImageClassification
    if name not in SHAPES:
        raise ValueError(f"unknown model {name!r}; choose fmnist or one of {sorted(SHAPES)}")
    image, patch, dim, layers, heads, mlp, labels = SHAPES[name]
    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(
        image_size=image, patch_size=patch, hidden_size=dim, num_hidden_layers=layers,
        num_attention_heads=heads, intermediate_size=mlp, num_labels=labels)).eval()
    calib = torch.randn(16, 3, image, image, generator=torch.Generator().manual_seed(1))
    return model, calib, 3, image


def _ort_session(path_or_bytes, threads):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    # ORT's workers spin after each run by default; interleaved with other backends on a small
    # machine that spinning steals their cores (torch FP32 at batch 1 measured 2.7x slower).
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path_or_bytes, so, providers=["CPUExecutionProvider"])


def _export_float(model, channels, image, path):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, channels, image, image),), path, dynamo=False,
                          input_names=["pixel_values"], output_names=["logits"], opset_version=17,
                          dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}})


def _ort_qdq(fp32_path, calib, path):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"pixel_values": calib[i:i + 1].numpy()} for i in range(calib.shape[0])])

        def get_next(self):
            return next(self.items, None)

    import logging
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)          # ORT's quantizer logs advice on the root logger
    try:
        quantize_static(fp32_path, path, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)


def prepare_model(name: str, threads: int, workdir: str, progress=print) -> dict:
    """Everything that does not depend on the batch size, built once per model."""
    import intvit
    from ..quantize.onnx_export import to_onnx

    torch.set_num_threads(threads)
    os.environ["TVM_NUM_THREADS"] = str(threads)
    model, calib, channels, image = build_model(name)
    fp32 = os.path.join(workdir, f"{name}-fp32.onnx")
    qdq = os.path.join(workdir, f"{name}-qdq.onnx")
    progress(f"  exporting {name} float ONNX and ORT QDQ INT8 ...")
    _export_float(model, channels, image, fp32)
    _ort_qdq(fp32, calib, qdq)
    progress("  intvit: quantizing and exporting the integer graph ...")
    proto = to_onnx(intvit.quantize(model, calib, intvit.QuantConfig(progress=False)))
    s_fp32, s_qdq = _ort_session(fp32, threads), _ort_session(qdq, threads)
    s_int = _ort_session(proto.SerializeToString(), threads)

    def torch_fp32(x):
        with torch.no_grad():
            return model(torch.from_numpy(x)).logits.numpy()

    backends = {
        "torch_fp32": torch_fp32,
        "ort_fp32": lambda x: s_fp32.run(None, {"pixel_values": x})[0],
        "ort_int8_qdq": lambda x: s_qdq.run(None, {"pixel_values": x})[0],
        "intvit_int8_ort": lambda x: s_int.run(None, {"images": x})[0],
    }
    sizes = {"fp32_onnx_mb": os.path.getsize(fp32) / 2**20, "qdq_onnx_mb": os.path.getsize(qdq) / 2**20,
             "intvit_onnx_mb": len(proto.SerializeToString()) / 2**20}
    return {"backends": backends, "proto": proto, "input": (channels, image), "facts": sizes}


def backends_for_batch(prepared: dict, batch: int, progress=print) -> tuple[dict, dict]:
    """The prepared backends plus intvit's TVM module, compiled for ``batch``."""
    from ..tvm_backend.build import compile_onnx
    progress(f"  compiling the integer graph with TVM for batch {batch} ...")
    t0 = time.perf_counter()
    tvm_mod = compile_onnx(prepared["proto"], "llvm", batch=batch)
    facts = {**prepared["facts"], "tvm_compile_s": round(time.perf_counter() - t0, 2)}
    return {**prepared["backends"], "intvit_int8_tvm": lambda x: tvm_mod(x)[0]}, facts


def measure(backends: dict, x: np.ndarray, repeat: int, warmup: int = 3, per_round: int = 3) -> dict:
    """Median/p90 per backend over ``repeat`` rounds of ``per_round`` timed calls each.

    Within a round each backend first gets one untimed call: the previous
    backend's worker threads (OpenMP, ORT, TVM pools) spin for a while after
    its last call and would otherwise be billed to the next one.
    """
    for f in backends.values():
        for _ in range(warmup):
            f(x)
    times = {k: [] for k in backends}
    for _ in range(repeat):                       # interleaved rounds: drift hits every backend alike
        for k, f in backends.items():
            f(x)
            for _ in range(per_round):
                t0 = time.perf_counter_ns()
                f(x)
                times[k].append((time.perf_counter_ns() - t0) / 1e6)
    from ..tvm_backend.runtime import latency_summary
    out = {}
    for k, ts in times.items():
        out[k] = latency_summary(ts)
        out[k]["images_per_s"] = x.shape[0] * 1000.0 / out[k]["median_ms"]
    ref = out["intvit_int8_tvm"]["median_ms"]
    for k in out:
        out[k]["vs_intvit_tvm"] = out[k]["median_ms"] / ref
    return out


def machine_facts(threads: int) -> dict:
    import onnxruntime
    import tvm
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = " ".join(x for x in line.split() if x.startswith(("avx512", "avx2", "avx_vnni")))
                    break
    except OSError:
        pass
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    return {"host": socket.gethostname(), "cpu": cpu, "cpu_flags": flags, "threads": threads,
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "tvm": tvm.__version__}


ALL_BACKENDS = ("torch_fp32", "ort_fp32", "ort_int8_qdq", "intvit_int8_ort", "intvit_int8_tvm")
# intvit's graph in ORT runs the integer nonlinears as generic int64 ONNX ops: a
# correctness reference 10-25x slower than the rest, timed only when asked for.
DEFAULT_BACKENDS = tuple(b for b in ALL_BACKENDS if b != "intvit_int8_ort")


def run(models, batches, repeat, threads, out_dir=None, progress=print, backends=DEFAULT_BACKENDS,
        per_round: int = 3) -> dict:
    unknown = set(backends) - set(ALL_BACKENDS)
    if unknown or "intvit_int8_tvm" not in backends:
        raise ValueError(f"backends must include intvit_int8_tvm and come from {list(ALL_BACKENDS)}; "
                         f"got {list(backends)}")
    report = {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine_facts(threads),
              "repeat": repeat, "per_round": per_round, "results": []}
    with tempfile.TemporaryDirectory() as work:
        for name in models:
            progress(f"[{name}]")
            prepared = prepare_model(name, threads, work, progress)
            c, s = prepared["input"]
            for batch in batches:
                progress(f"[{name}, batch {batch}]")
                fns, facts = backends_for_batch(prepared, batch, progress)
                fns = {k: fns[k] for k in ALL_BACKENDS if k in backends}
                x = np.random.default_rng(0).standard_normal((batch, c, s, s)).astype(np.float32)
                progress(f"  timing {len(fns)} backends x {repeat} interleaved rounds x {per_round} calls ...")
                res = measure(fns, x, repeat, per_round=per_round)
                report["results"].append({"model": name, "batch": batch, **facts, "backends": res})
                progress(format_table(name, batch, res))
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, f"{socket.gethostname()}-{dt.date.today().isoformat()}.json")
        with open(path, "w") as f:
            json.dump(report, f, indent=1)
        report["path"] = path
    return report


def format_table(name, batch, res) -> str:
    lines = [f"  {name} batch {batch}: {'backend':18} {'median ms':>10} {'p90 ms':>9} {'img/s':>8} {'x intvit-tvm':>12}"]
    for k, r in res.items():
        lines.append(f"  {'':{len(name) + 9}}  {k:18} {r['median_ms']:10.2f} {r['p90_ms']:9.2f} "
                     f"{r['images_per_s']:8.1f} {r['vs_intvit_tvm']:12.3f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="deit_small", help="fmnist, tiny, deit_tiny, deit_small or vit_base "
                                                          "(comma-separated for several)")
    p.add_argument("--batch", default="1,8", help="comma-separated batch sizes (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=10, help="interleaved timing rounds (default: %(default)s)")
    p.add_argument("--per-round", type=int, default=3, help="timed calls per backend per round (default: %(default)s)")
    p.add_argument("--backends", default=",".join(DEFAULT_BACKENDS),
                   help=f"comma-separated, from {','.join(ALL_BACKENDS)} (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="threads for every backend (default: %(default)s)")
    p.add_argument("--out", default="bench/results", help="directory for the JSON report (default: %(default)s)")
    a = p.parse_args(argv)
    rep = run(a.model.split(","), [int(b) for b in a.batch.split(",")], a.repeat, a.threads, a.out,
              backends=tuple(a.backends.split(",")), per_round=a.per_round)
    print(f"wrote {rep['path']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
