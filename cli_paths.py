"""The command line's output paths, checked before a command does any work or prints anything.

A command's outputs must not be its inputs (``intvit compile m.onnx -o m.onnx``
replaced the ONNX file with the module and said "wrote"), nor a file it does
not own (the sidecar of a compiled module, the float checkpoint in the model
folder being quantized), and they must be writable *now*: ``analyze``, ``eval``
and ``bench`` used to find an unwritable ``--json`` or ``--out`` only after
minutes of work, and then fail with a bare errno.
"""
from __future__ import annotations

import os

from .files import check_output_folder, check_writable_target, same_file

# The files of a Hugging Face model folder that `intvit quantize` reads.
_CHECKPOINT_FILES = ("config.json", "preprocessor_config.json", "generation_config.json")
_CHECKPOINT_SUFFIXES = (".bin", ".safetensors", ".pt", ".pth", ".index.json")


def preflight(args) -> None:
    """Refuse the parsed ``args``' output paths that would destroy an input or cannot be written (one
    ``OSError`` or ``ValueError`` naming the flag)."""
    outputs, inputs, folders = _paths(args)
    for flag, path, what in outputs:
        _check_spares_inputs(flag, path, inputs)
        if args.command != "compile":        # compile writes its own sidecar, over an older one
            _check_not_a_sidecar(flag, path)
        check_writable_target(path, what)
    for flag, path in folders:
        check_output_folder(path, flag)


def _paths(args) -> tuple[list, dict, list]:
    """``(outputs, inputs, folders)`` of a command: outputs as ``(flag, path, what)``, inputs as ``{flag:
    path}``, folder outputs as ``(flag, path)``."""
    command = args.command
    model = {"model": getattr(args, "model", None)}
    if command == "quantize":
        return [("-o", args.output, "the quantized model")], {**model, "--calib": args.calib}, []
    if command == "export":
        return [("-o", args.output, "the ONNX file")], model, []
    if command == "compile":
        return ([("-o", args.output, "the compiled module"), ("-o", args.output + ".json", "the module's sidecar")],
                model, [])
    if command == "analyze":
        outputs = [(flag, path, what) for flag, path, what in (("--json", args.json, "the JSON report"),
                                                             ("--png", args.png, "the chart")) if path]
        return outputs, {**model, "--images": args.images}, []
    if command == "eval":
        return ([("--json", args.json, "the JSON report")] if args.json else []), {}, []
    if command in ("bench", "demo"):
        return [], {}, [("--out", args.out)]
    return [], {}, []


def _check_spares_inputs(flag: str, path: str, inputs: dict) -> None:
    for in_flag, source in inputs.items():
        if not source or not os.path.exists(source):      # a name ('fmnist'), or missing: nothing to destroy
            continue
        name = "the model" if in_flag == "model" else f"the {in_flag} file"
        if os.path.isdir(source):
            _check_spares_checkpoint(flag, path, source)
        elif same_file(path, source):
            raise FileExistsError(f"{flag} {path} is {name} this command reads; writing it would destroy it — "
                                  "give another output path")


def _check_spares_checkpoint(flag: str, path: str, folder: str) -> None:
    """An existing file in the model folder that the loader reads (config, weights) is not an output, unless it
    is an earlier intvit model file."""
    from .quantize.serialize import is_intvit_model_file
    if not os.path.isfile(path) or not same_file(os.path.dirname(os.path.abspath(path)), folder):
        return
    name = os.path.basename(path)
    if (name in _CHECKPOINT_FILES or name.endswith(_CHECKPOINT_SUFFIXES)) and not is_intvit_model_file(path):
        raise FileExistsError(f"{flag} {path} is a file of the model folder {folder} this command reads; writing "
                              "it would destroy the checkpoint — give another output path")


def _check_not_a_sidecar(flag: str, path: str) -> None:
    """``model.so.json`` beside ``model.so`` belongs to the compiled module: another command's output there
    would leave the module unloadable."""
    if path.endswith(".json") and os.path.isfile(path[:-len(".json")]) and os.path.isfile(path):
        module = path[:-len(".json")]
        with open(path, "rb") as f:
            head = f.read(4096)
        if b'"so_sha256"' in head or b'"tvm_version"' in head:
            raise FileExistsError(f"{flag} {path} is the sidecar of the compiled module {module}; writing it "
                                  "would leave the module unloadable — give another output path")
