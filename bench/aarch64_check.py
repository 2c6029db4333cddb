"""An ARM64 module, compiled here, checked bit for bit against ONNX Runtime on this machine by running it in an
AArch64 Python (``bench/aarch64_emulator.sh``).

``python -m intvit.bench.aarch64_check model.onnx [--cpu neoverse-n1] [--batch 1] [--images 2]
[--python $INTVIT_AARCH64_PYTHON]`` compiles the integer ONNX file for that ARM64 CPU (``intvit compile --cpu``;
needs ``aarch64-linux-gnu-gcc``), runs ONNX Runtime on the same graph here for the reference integer logits
(one of intvit's three bit-exact backends), then loads the module with ``intvit.runtime.load`` in the AArch64
Python and prints whether its integer logits are identical. Correctness only: the emulator's timing means
nothing. Exit status 0 only when they are.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

RUNNER = """import sys, numpy as np
from intvit.runtime import load
d = sys.argv[1]
m = load(d + "/arm.so")
x, ref = np.load(d + "/x.npy"), np.load(d + "/ref.npy")
b = m.meta["batch"]
got = np.concatenate([m.run(x[i:i + b])[1] for i in range(0, len(x), b)])
print("identical" if np.array_equal(got, ref) else
      f"DIFFERENT in {int((got != ref).sum())} of {ref.size} integer logits")
"""


def check(onnx_path: str, python: str, cpu: str = "neoverse-n1", batch: int = 1, images: int = 2,
          seed: int = 0) -> str:
    """The AArch64 run's verdict line: ``"identical"`` or ``"DIFFERENT in …"``."""
    import onnxruntime as ort

    from ..tvm_backend.runtime import compile_to_file
    with tempfile.TemporaryDirectory(prefix="intvit-aarch64-") as d:
        meta = compile_to_file(onnx_path, os.path.join(d, "arm.so"), batch=batch, cpu=cpu)
        shape, dtype = meta["input"]["shape"], meta["input"]["dtype"]
        rng = np.random.default_rng(seed)
        count = -(-images // batch) * batch
        x = rng.standard_normal((count, *shape[1:])).astype(np.float32) if dtype == "float32" else \
            rng.integers(-128, 128, (count, *shape[1:])).astype(np.int8)
        session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        ref = np.concatenate([session.run(None, {name: x[i:i + 1]})[1] for i in range(count)])
        np.save(os.path.join(d, "x.npy"), x)
        np.save(os.path.join(d, "ref.npy"), ref)
        proc = subprocess.run([*python.split(), "-c", RUNNER, d], capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith(("identical", "DIFFERENT"))]
        if proc.returncode or not lines:
            raise RuntimeError(f"the AArch64 Python failed: {proc.stderr.strip().splitlines()[-1:]}")
        return f"{lines[0]} ({count} images, batch {batch}, {cpu}: GEMMs on {meta['isa']})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m intvit.bench.aarch64_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="integer .onnx file from intvit export")
    ap.add_argument("--cpu", default="neoverse-n1", help="LLVM's name of the ARM64 CPU (default: %(default)s)")
    ap.add_argument("--batch", type=int, default=1, help="batch the module is compiled for (default: %(default)s)")
    ap.add_argument("--images", type=int, default=2, help="random images to compare on (default: %(default)s)")
    ap.add_argument("--python", default=os.environ.get("INTVIT_AARCH64_PYTHON"),
                    help="command running the AArch64 Python (default: $INTVIT_AARCH64_PYTHON)")
    args = ap.parse_args(argv)
    if not args.python:
        ap.error("no AArch64 Python: build one with bash bench/aarch64_emulator.sh and pass --python or set "
                 "INTVIT_AARCH64_PYTHON")
    verdict = check(args.model, args.python, args.cpu, args.batch, args.images)
    print(verdict)
    return 0 if verdict.startswith("identical") else 1


if __name__ == "__main__":
    sys.exit(main())
