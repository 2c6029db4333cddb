"""Run the GPU validation bundle (``bench.gpu_bundle``) on a machine with a runtime-only TVM: exactness, then latency.

On the lent GPU machine (``bench/gpu_check.sh`` sets the path up)::

    python -m intvit.bench.gpu_check .gpu_bundle --out $OUT

1. **Exactness**: every ``exact`` module (three models, batch 1 and 8) runs
   on the GPU on its 16 images; its int32 logits must equal the PyTorch
   integer model's, computed where the bundle was built (and there checked
   equal to the x86-64 module, which runs here too). So CUDA = torch = CPU.
2. **Latency** (``--device cuda`` only): intvit INT8, TVM FP32 and FP16 from
   the bundle (their lifted weights filled with random values of the right
   dtype on the GPU), and PyTorch eager FP32, FP16 and BF16 on the same
   architectures with random weights, for DeiT-S and ViT-B at batch 1, 8, 32;
   timed by ``bench.cuda_latency.measure_cuda`` (CUDA events, interleaved
   rounds, TVM on torch's stream). Ratios: each backend's median ÷ intvit's.

Writes ``gpu_check.json`` and ``gpu_check.png`` (when matplotlib is there) to
``--out``. ``--device cpu`` is the dry run ``gpu_bundle.dry_run`` makes:
exactness on the x86-64 modules, and every CUDA module checked for its
embedded device code (loading one needs the GPU driver).
Imports nothing of TVM's compiler.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import time

import numpy as np

TORCH_DTYPES = ("float32", "float16", "bfloat16")


@dataclasses.dataclass
class _Timed:
    """What ``measure_cuda`` needs of a backend."""
    run: object
    memory: str = "device"
    unavailable: str | None = None
    engine_mib: float | None = None


def load_cuda_runtime() -> None:
    """Load TVM's CUDA runtime (``libtvm_runtime_cuda.so``, which registers the CUDA module loader): a
    runtime-only TVM does not load it by itself. It links ``libcudart.so.13`` (beside it in the bundle) and
    the driver's ``libcuda.so.1``."""
    from pathlib import Path

    from tvm.base import _LOADED_LIBS
    from tvm_ffi.libinfo import load_lib_ctypes
    if "tvm_runtime_cuda" not in _LOADED_LIBS:
        lib_dir = Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent
        _LOADED_LIBS["tvm_runtime_cuda"] = load_lib_ctypes(package="tvm", target_name="tvm_runtime_cuda",
                                                           extra_lib_paths=[lib_dir], mode="RTLD_LOCAL")


def _vm(path: str, device: str):
    import tvm
    from tvm.runtime.vm import VirtualMachine
    if device == "cuda":
        from ..tvm_backend.cuda import install_loader
        load_cuda_runtime()
        install_loader()            # hands TVM the fatbin intvit embedded at build time
    dev = tvm.cuda(0) if device == "cuda" else tvm.cpu()
    return VirtualMachine(tvm.runtime.load_module(path), dev), dev


def check_exact(bundle: str, manifest: dict, device: str, progress=print) -> list[dict]:
    """Run every exactness module of ``device`` kind on its images and compare with its reference."""
    import tvm

    from .backends import _reason
    rows = []
    for entry in manifest["exact"]:
        folder = os.path.join(bundle, "exact")
        x = np.load(os.path.join(folder, entry["images"]))
        ref = np.load(os.path.join(folder, entry["reference"]))
        b = entry["batch"]
        n = (len(x) // b) * b
        row = {"model": entry["model"], "batch": b, "device": device, "images": n}
        try:        # one failing module must not cost the rest of a GPU session's checks
            vm, dev = _vm(os.path.join(folder, entry[device]), device)
            got = np.concatenate([vm["main"](tvm.runtime.tensor(x[i:i + b], dev))[1].numpy()
                                  for i in range(0, n, b)])
        except Exception as exc:
            rows.append({**row, "equal": False, "error": _reason(exc)})
            progress(f"exact  {entry['model']:18s} batch {b:2d} on {device}: FAILED {rows[-1]['error']}")
            continue
        differing = int(np.count_nonzero(got != ref[:n]))
        rows.append({**row, "equal": bool(differing == 0 and got.shape == ref[:n].shape),
                     "differing_logits": differing})
        progress(f"exact  {entry['model']:18s} batch {b:2d} on {device}: "
                 + ("bit-exact" if rows[-1]["equal"] else f"{differing} logits differ"))
    return rows



def _random_inputs(entry: dict, dev, rng):
    """Random values for a latency module's images and lifted weights (latency does not depend on them)."""
    import tvm
    x = tvm.runtime.tensor(rng.standard_normal(entry["input"]).astype("float32"), dev)
    weights = []
    for w in entry["lifted"]:
        if w["dtype"].startswith("int"):
            info = np.iinfo(w["dtype"])
            lo, hi = max(info.min, -128), min(info.max, 127)
            value = rng.integers(lo, hi + 1, w["shape"], dtype=w["dtype"])
        else:
            value = (0.02 * rng.standard_normal(w["shape"])).astype(w["dtype"])
        weights.append(tvm.runtime.tensor(value, dev))
    return x, weights


def _torch_runs(model_name: str, batch: int) -> dict:
    """PyTorch eager FP32 / FP16 / BF16 of the same HF architecture (random weights) on ``cuda:0``."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    from .models import SHAPES
    image, patch, dim, layers, heads, mlp, labels = SHAPES[model_name]
    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(
        image_size=image, patch_size=patch, hidden_size=dim, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=mlp, num_labels=labels)).eval()
    runs = {}
    for dtype in TORCH_DTYPES:
        m = copy.deepcopy(model).to("cuda", getattr(torch, dtype))
        x = torch.randn(batch, 3, image, image, device="cuda", dtype=getattr(torch, dtype))

        def run(m=m, x=x):
            with torch.inference_mode():
                return m(pixel_values=x).logits
        runs["torch_" + {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}[dtype]] = _Timed(run, "torch")
    return runs


def _time_group(bundle: str, model: str, batch: int, entries: list[dict], repeat: int, rng, progress) -> dict:
    """``measure_cuda``'s statistics for the bundle's modules of one (model, batch) and the torch baselines."""
    from .backends import REFERENCE
    from .cuda_latency import measure_cuda
    backends = {}
    for entry in sorted(entries, key=lambda e: e["backend"] != "intvit_int8"):
        vm, dev = _vm(os.path.join(bundle, "latency", entry["module"]), "cuda")
        x, weights = _random_inputs(entry, dev, rng)
        backends[entry["backend"]] = _Timed(lambda vm=vm, x=x, w=weights: vm["main"](x, *w))
    backends.update(_torch_runs(model, batch))
    progress(f"latency {model} batch {batch}: {', '.join(backends)}")
    return measure_cuda({(REFERENCE if k == "intvit_int8" else k): v for k, v in backends.items()},
                        batch, repeat, progress=progress)


def check_latency(bundle: str, manifest: dict, repeat: int, progress=print) -> list[dict]:
    """Time every latency module and the torch baselines, one (model, batch) at a time."""
    from .backends import REFERENCE, _reason
    rng = np.random.default_rng(0)
    groups = {}
    for entry in manifest["latency"]:
        groups.setdefault((entry["model"], entry["batch"]), []).append(entry)
    rows = []
    for (model, batch), entries in groups.items():
        try:        # a failing group is reported, and the next one still runs
            stats = _time_group(bundle, model, batch, entries, repeat, rng, progress)
        except Exception as exc:
            rows.append({"model": model, "batch": batch, "backend": REFERENCE, "error": _reason(exc)})
            progress(f"latency {model} batch {batch}: FAILED {rows[-1]['error']}")
            continue
        base = stats[REFERENCE]["median_ms"]
        for name, s in stats.items():
            rows.append({"model": model, "batch": batch, "backend": name, **s,
                         "ratio_to_intvit": s["median_ms"] / base})
            progress(f"  {name:16s} {s['median_ms']:9.3f} ms   {s['median_ms'] / base:5.2f}x intvit")
    return rows


def summary_table(rows: list[dict]) -> str:
    """intvit INT8's median ms per (model, batch), and every other backend's median ÷ intvit's."""
    from .backends import REFERENCE
    others = sorted({r["backend"] for r in rows} - {REFERENCE})
    lines = ["model       batch   intvit ms  " + "  ".join(f"{o:>11s}" for o in others)]
    for model, batch in sorted({(r["model"], r["batch"]) for r in rows}):
        by = {r["backend"]: r for r in rows if (r["model"], r["batch"]) == (model, batch)}
        if REFERENCE not in by:
            continue
        cells = [f"{by[o]['ratio_to_intvit']:10.2f}x" if o in by else f"{'-':>11s}" for o in others]
        lines.append(f"{model:11s} {batch:5d} {by[REFERENCE]['median_ms']:11.3f}  " + "  ".join(cells))
    return "\n".join(lines)


def _chart(rows: list[dict], path: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    groups = sorted({(r["model"], r["batch"]) for r in rows})
    backends = sorted({r["backend"] for r in rows})
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups)), 4))
    width = 0.8 / len(backends)
    for i, b in enumerate(backends):
        ys = [next((r["median_ms"] for r in rows if (r["model"], r["batch"]) == g and r["backend"] == b), 0)
              for g in groups]
        ax.bar([j + i * width for j in range(len(groups))], ys, width, label=b)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))], [f"{m}\nbatch {b}" for m, b in groups])
    ax.set_ylabel("median ms per batch")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m intvit.bench.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", help="the directory bench.gpu_bundle wrote")
    p.add_argument("--out", required=True, help="where gpu_check.json (and .png) go")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cuda: the GPU run; cpu: the dry run (x86-64 modules, CUDA modules only loaded)")
    p.add_argument("--repeat", type=int, default=10, help="interleaved timing rounds (3 timed calls each)")
    p.add_argument("--no-latency", action="store_true", help="exactness only")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    with open(os.path.join(args.bundle, "manifest.json")) as f:
        manifest = json.load(f)
    import tvm
    report = {"device": args.device, "arch": manifest["arch"], "tvm_version": tvm.__version__,
              "tvm_runtime_only": bool(getattr(tvm.base, "_RUNTIME_ONLY", False)), "python": sys.version.split()[0]}
    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            print("gpu_check: no CUDA GPU is visible to torch here; run this on the lent GPU machine "
                  "(bench/gpu_check.sh), or --device cpu for the dry run", file=sys.stderr)
            return 2
        report["gpu"] = torch.cuda.get_device_name(0)
    report["exact"] = check_exact(args.bundle, manifest, args.device)
    if args.device == "cpu":        # the dry run: loading a CUDA module needs the driver; check its device code
        from ..tvm_backend.cuda import EMBED_MARKER
        paths = [os.path.join(args.bundle, "exact", e["cuda"]) for e in manifest["exact"]]
        paths += [os.path.join(args.bundle, "latency", e["module"]) for e in manifest["latency"]]
        for path in paths:
            with open(path, "rb") as f:
                if EMBED_MARKER.encode() not in f.read():
                    raise SystemExit(f"{path} holds no embedded CUDA device code")
        report["cuda_modules_checked"] = len(paths)
    elif not args.no_latency:
        report["latency"] = check_latency(args.bundle, manifest, args.repeat)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
        json.dump(report, f, indent=1)
    timed = [r for r in report.get("latency", []) if "median_ms" in r]
    if timed:
        _chart(timed, os.path.join(args.out, "gpu_check.png"))
        print(summary_table(timed))
    ok = all(r["equal"] for r in report["exact"]) and not any("error" in r for r in report.get("latency", []))
    print(f"{'all' if ok else 'NOT all'} {len(report['exact'])} exactness runs bit-exact; "
          f"report in {args.out}/gpu_check.json ({report['seconds']} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
