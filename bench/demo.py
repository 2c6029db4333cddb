"""``intvit demo``: the whole product on the embedded model, offline, in about a minute.

1. quantize the embedded Fashion-MNIST ViT (``models/fmnist``) on its shipped
   calibration images;
2. export the integer ONNX graph;
3. compile it with TVM for this CPU (``tvm_backend``; AMX or VNNI GEMMs where
   the CPU has them);
4. run the compiled module on the shipped test images: top-1 next to the
   float model's, agreement, logit SQNR;
5. check the compiled module against the PyTorch integer model, bit for bit,
   on a sample;
6. time the compiled INT8 module against the float PyTorch model, in this
   process, interleaved (``latency.measure``);

then print where every file went and what to run next. ``run_demo`` returns
the report that ``intvit demo`` also writes as JSON.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import time

import numpy as np
import torch

SAMPLE = 64             # test images the bit-exactness check compares
TIMING_REPEAT = 15      # interleaved timing rounds (each: one untimed call, then 3 timed ones per backend)


def run_demo(out_dir: str, n_images: int | None, n_calib: int, config, batch: int = 8, threads: int = 2,
             progress=print, command: str = "intvit demo") -> dict:
    """Run the six steps; ``config`` is the ``QuantConfig``; ``progress(line)`` hears each step; ``command``
    is recorded in the report as the command that ran it."""
    import intvit
    from intvit.models import fmnist
    from intvit.quantize.metrics import scores
    from intvit.runtime import load
    from intvit.tvm_backend.runtime import compile_to_file

    from .latency import measure
    from .machine import machine_facts

    torch.set_num_threads(threads)
    os.makedirs(out_dir, exist_ok=True)
    paths = {kind: os.path.join(out_dir, name) for kind, name in (
        ("model", "fmnist-vit.int8.safetensors"), ("onnx", "fmnist-vit.int8.onnx"), ("module", "fmnist-vit.int8.so"),
        ("sample", "sample-images.npy"), ("report", "demo-report.json"))}
    model = fmnist.load_model()
    calib = fmnist.load_calibration_set(n_calib)
    images, labels = fmnist.load_test_set(n_images)
    seconds = {}

    def step(k: int, text: str, fn):
        progress(f"[{k}/6] {text}")
        t0 = time.perf_counter()
        value = fn()
        seconds[text.split()[0]] = round(time.perf_counter() - t0, 2)
        return value

    config = dataclasses.replace(config, mean=fmnist.MEAN, std=fmnist.STD)     # recorded with the model
    qmodel = step(1, f"quantize the embedded ViT (HF ViTForImageClassification, "
                     f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters) on {calib.shape[0]} "
                     "calibration images", lambda: intvit.quantize(model, calib, config))
    qmodel.save(paths["model"])
    step(2, "export the integer ONNX graph", lambda: qmodel.export_onnx(paths["onnx"]))
    meta = step(3, f"compile it with TVM for this CPU, batch {batch}",
                lambda: compile_to_file(paths["onnx"], paths["module"], batch=batch))
    module = load(paths["module"])
    fp_logits, int8_logits = step(4, f"run the compiled module on {images.shape[0]} test images",
                                  lambda: _logits(model, module, images, batch))
    report = {"model": "fmnist-vit (embedded)", **scores(fp_logits, int8_logits, labels),
              "calib_images": int(calib.shape[0]), "batch": batch, "isa": meta.get("isa"), "mcpu": meta.get("mcpu")}
    sample = images[:min(SAMPLE, images.shape[0])]
    differing = step(5, f"compare it with the PyTorch integer model on {sample.shape[0]} images, bit for bit",
                     lambda: _differing_elements(qmodel, module, sample, batch))
    report.update(bit_exact_images=int(sample.shape[0]), differing_elements=differing)
    x = images[:batch].numpy() if images.shape[0] >= batch else np.resize(images.numpy(), (batch, *images.shape[1:]))
    np.save(paths["sample"], x)
    with torch.no_grad():
        timings = step(6, f"time INT8 (compiled) against FP32 (PyTorch) at batch {batch}, interleaved",
                       lambda: measure({"int8": module, "fp32": lambda b: model(torch.from_numpy(b)).logits}, x,
                                       TIMING_REPEAT))
    report.update(int8_ms=timings["int8"]["median_ms"], fp32_ms=timings["fp32"]["median_ms"],
                  int8_p90_ms=timings["int8"]["p90_ms"], fp32_p90_ms=timings["fp32"]["p90_ms"],
                  speedup=round(timings["fp32"]["median_ms"] / timings["int8"]["median_ms"], 2),
                  timing_samples=timings["int8"]["samples"], seconds=seconds, files=paths,
                  date=time.strftime("%Y-%m-%dT%H:%M:%S%z"), command=command,
                  machine=machine_facts(threads))
    return report


def noisy(report: dict) -> bool:
    """Timings another process disturbed (``stats.disturbed``) for either backend."""
    from .stats import disturbed
    return any(disturbed({"p90_ms": report[f"{k}_p90_ms"], "median_ms": report[f"{k}_ms"]}) for k in ("int8", "fp32"))


def cli_prefix() -> str:
    """How to run intvit again from the user's shell: ``intvit`` where that is on PATH, else the script that
    runs now (``.venv/bin/intvit`` in an environment not activated), else ``python -m intvit``."""
    script = sys.argv[0]
    if os.path.basename(script) == "intvit":
        on_path = shutil.which("intvit")
        if on_path and os.path.realpath(on_path) == os.path.realpath(script):
            return "intvit"
        return script
    return f"{sys.executable} -m intvit"


def _logits(model, module, images: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Float logits from PyTorch and INT8 logits from the compiled module (the last batch padded, then cut)."""
    fp, iq = [], []
    with torch.no_grad():
        for i in range(0, images.shape[0], batch):
            x = images[i:i + batch]
            fp.append(model(x).logits)
            padded = torch.cat([x, x[-1:].expand(batch - x.shape[0], *x.shape[1:])]) if x.shape[0] < batch else x
            iq.append(torch.from_numpy(module(padded.numpy()))[:x.shape[0]])
    return torch.cat(fp), torch.cat(iq)


def _differing_elements(qmodel, module, sample: torch.Tensor, batch: int) -> int:
    """How many integer logits of the compiled module differ from the PyTorch integer model's (0 = bit-exact)."""
    differing = 0
    for i in range(0, sample.shape[0] - sample.shape[0] % batch, batch):
        x = sample[i:i + batch]
        differing += int((module.run(x.numpy())[1] != qmodel.forward_int(x).numpy()).sum())
    return differing


def format_report(report: dict, cli: str = "intvit") -> str:
    """The demo's summary; ``cli`` is how the next commands invoke intvit (``cli_prefix()``)."""
    files = report["files"]
    names = {"amx": "Intel AMX", "vnni": "AVX-512 VNNI", "avxvnni": "AVX-VNNI", "avx2": "AVX2 vpmaddwd",
             "dotprod": "ARM64 sdot"}
    isa = names.get(report.get("isa"), report.get("isa") or "generic")
    exact = ("yes, 0 differing logits" if report["differing_elements"] == 0
             else f"NO: {report['differing_elements']} differing logits (please report this)")
    return "\n".join([
        "",
        f"  FP32 top-1 (PyTorch)          {100 * report['fp32_top1']:6.2f} %",
        f"  INT8 top-1 (compiled module)  {100 * report['int8_top1']:6.2f} %   (delta "
        f"{100 * report['delta_top1']:+.2f} pt, {report['fixed']} fixed / {report['broken']} broken)",
        f"  top-1 agreement               {100 * report['top1_agreement']:6.2f} %",
        f"  logit SQNR                    {report['sqnr_db']:6.2f} dB",
        f"  bit-exact vs PyTorch integer  {exact} ({report['bit_exact_images']} images)",
        f"  latency, batch {report['batch']:<3}            INT8 {report['int8_ms']:.3f} ms ({isa} GEMMs) vs FP32 "
        f"{report['fp32_ms']:.3f} ms: {report['speedup']:.2f}x",
        f"                                (medians of {report['timing_samples']} calls each; p90 INT8 "
        f"{report['int8_p90_ms']:.3f} ms, FP32 {report['fp32_p90_ms']:.3f} ms)",
        *(["  note: these timings are noisy (a p90 over 1.5x its median): another process is using the CPU; "
           "rerun on a quiet machine before quoting them"] if noisy(report) else []),
        "",
        f"  integer model    {files['model']}",
        f"  integer ONNX     {files['onnx']}",
        f"  compiled module  {files['module']} (+ .json sidecar)",
        f"  sample images    {files['sample']}",
        f"  report           {files['report']}",
        "",
        "next:",
        *_commands([(f"{cli} run {files['module']} --input {files['sample']}", "top-5 per image"),
                    (f"{cli} inspect {files['onnx']}", "the integer graph's ops"),
                    (f"{cli} eval", "accuracy next to PyTorch PT2E and ONNX Runtime INT8"),
                    (f"{cli} bench --model deit_small --batch 1,8", "latency against FP32 and INT8 peers")]),
    ])


def _commands(rows: list[tuple[str, str]]) -> list[str]:
    width = max(len(cmd) for cmd, _ in rows)
    return [f"  {cmd:<{width}}  # {what}" for cmd, what in rows]
