"""Every subcommand's user errors: a non-zero exit, one line on stderr naming what is wrong, no traceback
(issue 15, finding 12 and its CLI acceptance test)."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from intvit.cli import main
from intvit.quantize.serialize import header_digest
from intvit.tvm_backend.runtime import compile_to_file
from conftest import images


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_qvit):
    """A saved tiny model, its ONNX and compiled module, and the bad files users hand the CLI."""
    d = tmp_path_factory.mktemp("cli")
    tiny_qvit.save(d / "m.safetensors")
    tiny_qvit.export_onnx(d / "m.onnx")
    compile_to_file(d / "m.onnx", d / "m.so")
    tiny_qvit.export_onnx(d / "i8in.onnx", integer_input=True)
    compile_to_file(d / "i8in.onnx", d / "i8in.so")
    from conftest import hf_vit
    hf_vit(seed=4).save_pretrained(d / "hf")
    np.save(d / "zero_d.npy", np.array(3.0, np.float32))
    np.save(d / "nan.npy", np.full((1, 3, 32, 32), np.nan, np.float32))
    np.save(d / "i8.npy", np.zeros((1, 3, 32, 32), np.int8))
    np.save(d / "small.npy", np.zeros((1, 3, 16, 16), np.float32))
    np.save(d / "ok.npy", np.zeros((2, 3, 32, 32), np.float32))
    (d / "text.npy").write_text("not an array")
    (d / "notonnx.onnx").write_text("hello world")
    (d / "notes.txt").write_text("hello")
    (d / "adir.so").mkdir()
    (d / "badimgs").mkdir()
    (d / "badimgs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    from PIL import Image
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(d / "img.png")
    (d / "oneimg").mkdir()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(d / "oneimg" / "a.png")
    meta = json.loads((d / "m.so.json").read_text())
    for name, edit in (("noinput", lambda m: m.pop("input")), ("nobatch", lambda m: m.pop("batch")),
                       ("list", None)):
        shutil.copyfile(d / "m.so", d / f"{name}.so")
        (d / f"{name}.so.json").write_text(json.dumps([1, 2] if edit is None else _edited(meta, edit)))
    with safe_open(str(d / "m.safetensors"), framework="pt") as f:
        header_meta = f.metadata()
    header = json.loads(header_meta["header"])
    header["spec"]["blocks"][0]["num_heads"] = 0
    text = json.dumps(header)                # a crafted file: consistent with its checksum, broken inside
    save_file(load_file(str(d / "m.safetensors")), str(d / "heads0.safetensors"),
              metadata={**header_meta, "header": text, "header_sha256": header_digest(text)})
    return d


def _edited(meta, edit):
    meta = dict(meta)
    edit(meta)
    return meta


CASES = [  # (argv with {d} for the files' folder, a phrase the one line must hold)
    ("compile {d}/notonnx.onnx -o {d}/x.so", "is not a readable ONNX file"),
    ("compile {d}/missing.onnx -o {d}/x.so", "no ONNX file at"),
    ("compile {d}/m.onnx -o {d}/x.so --target tpu", "unknown target 'tpu'"),
    ("compile {d}/m.onnx -o {d}/no/such/dir/x.so", "does not exist"),
    ("compile {d}/m.onnx -o {d}/adir.so", "it is a directory; give a file name inside it"),
    ("compile {d}/m.onnx -o {d}/x.so --tune 1 --tuning-db {d}/notes.txt", "is a file; give a folder"),
    ("export {d}/m.safetensors -o {d}/adir.so", "it is a directory; give a file name inside it"),
    ("quantize fmnist -o {d}/no/such/dir/q.safetensors", "does not exist"),
    ("quantize fmnist --calib {d}/badimgs -o {d}/q.safetensors", "broken.png is not a readable image"),     # before quantizing, not after
    ("run {d}/m.onnx --input {d}/nan.npy", "is an ONNX file, not a compiled module; compile it first"),
    ("compile {d}/m.onnx -o {d}/x.so --batch 0", "argument --batch: must be at least 1"),
    ("compile {d}/m.onnx -o {d}/x.so --isa sse", "argument --isa: invalid choice: 'sse'"),
    ("compile {d}/m.onnx -o {d}/x.so --cpu bogus", "unknown CPU 'bogus' for --cpu: give LLVM's name"),
    ("compile {d}/m.onnx -o {d}/x.so --cpu x86-64-v3 --target cuda --arch sm_90", "names a CPU for --target llvm"),
    ("compile {d}/m.onnx -o {d}/x.so --cpu x86-64 --isa avx2", "x86-64 has no AVX2; leave isa unset"),
    ("compile {d}/m.onnx -o {d}/x.so --cpu skylake-avx512 --tune 1", "cannot tune a module for --cpu skylake-avx512"),
    ("compile {d}/m.onnx -o {d}/x.so --cpu neoverse-n1 --isa vnni", "is an x86 instruction set and the target CPU "
                                                                    "neoverse-n1 is AArch64"),
    ("compile {d}/m.onnx -o {d}/x.so --cpu cortex-a72 --isa dotprod", "cortex-a72 has no dot-product extension"),
    ("compile {d}/m.onnx -o {d}/x.so --cpu x86-64-v3 --isa dotprod", "is an AArch64 instruction set and the "
                                                                     "target CPU x86-64-v3 is x86"),
    ("run {d}/missing.so --input {d}/nan.npy", "no compiled module at"),
    ("run {d}/m.so --input {d}/zero_d.npy", "expected a batch of images [N, C, H, W]"),
    ("run {d}/m.so --input {d}/text.npy", "is not a numpy .npy array file"),
    ("run {d}/m.so --input {d}/nan.npy", "NaN or infinite value"),
    ("run {d}/m.so --input {d}/i8.npy", "takes float images"),
    ("run {d}/m.so --input {d}/small.npy", "expected input shape"),
    ("run {d}/m.so --input {d}/img.png --std 0", "std must be positive"),
    ("run {d}/m.so --input {d}/notes.txt", "give images (.png"),
    ("run {d}/m.so --input {d}/img.png {d}/nan.npy", "or one .npy array"),
    ("run {d}/noinput.so --input {d}/nan.npy", "field 'input' is missing"),
    ("run {d}/nobatch.so --input {d}/nan.npy", "field 'batch' is missing"),
    ("run {d}/list.so --input {d}/nan.npy", "expected a JSON object, found a JSON list"),
    ("export {d}/missing.safetensors -o {d}/x.onnx", "no intvit model at"),
    ("export {d}/notes.txt -o {d}/x.onnx", "is not a readable intvit model file"),
    ("export {d}/heads0.safetensors -o {d}/x.onnx", "0 heads do not divide the hidden size"),
    ("inspect {d}/notonnx.onnx", "is not a readable ONNX file"),
    ("analyze {d}/m.safetensors --count 0", "argument --count: must be at least 1"),
    ("analyze {d}/m.safetensors", "--images X.npy"),
    ("analyze {d}/m.safetensors --images {d}/small.npy", "expected images of shape [B, 3, 32, 32]"),
    ("analyze {d}/m.safetensors --images {d}/i8.npy", "holds int8 values"),
    ("analyze {d}/m.safetensors --images {d}/ok.npy --clipping --attribution", "ask for one at a time"),
    ("analyze {d}/m.safetensors --images {d}/ok.npy --clipping --png {d}/c.png", "--clipping has no chart"),
    ("quantize fmnist -o {d}/q.safetensors --auto-int16 999", "choose at most 17"),
    ("quantize fmnist -o {d}/q.safetensors --int16 nothing*", "nothing*"),
    ("quantize {d}/no_such_model -o {d}/q.safetensors", "no_such_model"),
    ("demo --images 0", "argument --images: must be at least 1"),
    ("eval --model resnet50", "resnet50"),
    ("quantize fmnist -o {d}/q.safetensors --norm-headroom 0.5", "a factor from 1.0 (the range as calibrated) to 16"),
    ("eval --norm-headroom 1,x", "--norm-headroom expects numbers, e.g. 1,1.5, got 'x'"),
    ("eval --norm-headroom 1,20", "a factor from 1.0 (the range as calibrated) to 16, got 20.0"),
    ("eval --recipes minmax,bogus", "unknown recipe 'bogus'"),        # before any banner or loading
    ("eval --matching ptq,nope", "unknown scale matching ['nope']"),
    ("eval --model dinov2-probe --task cifar10", "--task 'cifar10': choose one of fmnist, mnist, photos"),
    ("eval --train 400", "--task, --size and --train set up the DINOv2 probe"),
    ("eval --model dinov2-probe --train 0", "argument --train: must be at least 1"),
    ("eval --model dinov2-probe --size 100", "give a multiple of 14"),
    ("eval --task photos", "use them with --model dinov2-probe"),
    ("eval --shift dark,fog", "--shift fog: unknown; choose from clean,dark,bright,"),
    ("bench --model tiny --batch 0", "batch"),
    ("frobnicate", "invalid choice: 'frobnicate'"),
    # outputs that would destroy an input, or that cannot be written: refused before any work (red team, 12-06)
    ("compile {d}/m.onnx -o {d}/m.onnx", "is the model this command reads; writing it would destroy it"),
    ("export {d}/m.safetensors -o {d}/m.safetensors", "is the model this command reads"),
    ("export {d}/m.safetensors -o {d}/m.so.json", "is the sidecar of the compiled module"),
    ("quantize fmnist -o {d}/ok.npy --calib {d}/ok.npy", "is the --calib file this command reads"),
    ("quantize {d}/hf -o {d}/hf/model.safetensors --calib {d}/ok.npy", "is a file of the model folder"),
    ("quantize {d}/hf -o {d}/hf/config.json --calib {d}/ok.npy", "would destroy the checkpoint"),
    ("analyze {d}/m.safetensors --images {d}/ok.npy --json {d}/ok.npy", "is the --images file this command reads"),
    ("analyze {d}/m.safetensors --images {d}/ok.npy --png {d}/m.safetensors", "is the model this command reads"),
    ("analyze {d}/m.safetensors --images {d}/ok.npy --json {d}/no/such/r.json", "does not exist"),
    ("eval --json {d}/no/such/r.json", "does not exist"),
    ("bench --model tiny --out {d}/notes.txt", "is a file; give a folder"),
    ("demo --out {d}/notes.txt", "is a file; give a folder"),
    ("compile {d}/m.onnx -o {d}/x.so --batch 3000000000", "must be below 2**31"),
    ("export {d}/m.onnx -o {d}/x.onnx", "is an ONNX file, not an intvit model file"),
    ("export {d}/m.safetensors -o {d}/notes.txt/x.onnx", "notes.txt is a file, not a folder"),
    ("run {d}/m.so --input {d}/ok.npy --bogus", "intvit run: unrecognized arguments: --bogus (see intvit run --help)"),
    ("run {d}/i8in.so --input {d}/img.png", "takes images already quantized to int8"),
]


@pytest.mark.parametrize("argv, phrase", CASES, ids=[c[0].split()[0] + ": " + c[1] for c in CASES])
def test_user_error_is_one_line_and_a_non_zero_exit(files, capfd, argv, phrase):
    code = main(argv.format(d=files).split())
    out, err = capfd.readouterr()
    assert code not in (0, None), out
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(lines) == 1, err
    assert phrase in lines[0], lines[0]
    assert out == "", out                       # arguments are checked before any banner
    assert not (files / "x.so").exists() and not (files / "x.onnx").exists()     # nothing written half-way


def test_a_real_process_exits_non_zero_without_a_traceback(files):
    proc = subprocess.run([sys.executable, "-m", "intvit", "run", str(files / "m.so"), "--input",
                           str(files / "nan.npy")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "Traceback" not in proc.stderr
    assert "NaN or infinite value" in proc.stderr


def test_a_closed_pipe_is_not_an_error_message(files):
    proc = subprocess.run(f"{sys.executable} -m intvit inspect {files / 'm.onnx'} | head -1", shell=True,
                          capture_output=True, text=True, timeout=300)
    assert proc.stdout.startswith(str(files / "m.onnx")) and "Broken pipe" not in proc.stderr


def test_help_imports_neither_torch_nor_tvm():
    """`intvit --help` answers at once: the package's names load on first use, and only `intvit bench` builds the
    options that need torch."""
    code = ("import sys\nfrom intvit.cli import main\nassert main(['--help']) == 0\n"
            "assert main(['demo', '--help']) == 0\n"
            "print('torch' in sys.modules, 'tvm' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-500:]
    assert proc.stdout.strip().splitlines()[-1] == "False False"


def test_the_package_names_load_on_first_use_and_quantize_stays_the_function():
    code = ("import sys, intvit\nassert 'torch' not in sys.modules\nimport intvit.quantize.sanity\n"
            "assert callable(intvit.quantize) and intvit.quantize.__name__ == 'quantize'\n"
            "from intvit import QuantConfig, load, qat, IntegerViT, UnsupportedModelError, CalibrationDataError\n"
            "print(sorted(n for n in intvit.__all__ if n != '__version__'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-500:]
    assert "'quantize'" in proc.stdout and "'QuantConfig'" in proc.stdout


def test_an_empty_output_path_is_one_line(files, capfd):
    assert main(["compile", str(files / "m.onnx"), "-o", ""]) == 2
    err = capfd.readouterr().err.strip()
    assert err == "intvit compile: the compiled module: the path is empty; give a file name"


def test_a_warning_is_one_line_naming_the_subcommand(files, capfd):
    """One calibration image works, with a warning a user can read: one line, no library source line."""
    assert main(["quantize", "fmnist", "--calib", str(files / "oneimg"), "--quiet",
                 "-o", str(files / "one.safetensors")]) == 0
    err = [line for line in capfd.readouterr().err.splitlines() if "warning" in line]
    assert err and err[0].startswith("intvit quantize: warning: calibrating on 1 image:")
    assert len(err) == 1


def test_refused_outputs_leave_every_input_as_it_was(files, capfd):
    """Each command above that named one of its inputs as its output used to overwrite it and say "wrote"
    (the ONNX became the module, the model became ONNX, the checkpoint or the calibration set a model)."""
    import hashlib
    digest = lambda: {p.name: hashlib.sha256(p.read_bytes()).hexdigest()      # noqa: E731
                      for p in sorted(files.rglob("*")) if p.is_file()}
    before = digest()
    for argv in ("compile {d}/m.onnx -o {d}/m.onnx", "export {d}/m.safetensors -o {d}/m.safetensors",
                 "quantize {d}/hf -o {d}/hf/model.safetensors --calib {d}/ok.npy",
                 "analyze {d}/m.safetensors --images {d}/ok.npy --json {d}/ok.npy"):
        assert main(argv.format(d=files).split()) == 2
    capfd.readouterr()
    assert digest() == before


def test_ctrl_c_is_one_line_not_a_traceback(files, capfd, monkeypatch):
    """Ctrl-C in a long command printed a screen of traceback from inside TVM or onnx."""
    import intvit.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "_inspect", interrupted)
    assert main(["inspect", str(files / "m.onnx")]) == 130
    err = capfd.readouterr().err
    assert err.strip() == "intvit inspect: interrupted"


def test_quantize_takes_an_image_size(files, tmp_path, capfd):
    """The calibration-size error advises ``--image-size``; the flag exists and reaches QuantConfig."""
    assert main(["quantize", "fmnist", "-o", str(tmp_path / "q.safetensors"), "--image-size", "3x4x5"]) == 2
    assert "expected H or HxW" in capfd.readouterr().err
    from intvit.cli import build_parser
    args = build_parser().parse_args(["quantize", "fmnist", "-o", "q.safetensors", "--image-size", "56"])
    assert args.image_size == (56, 56)


def test_an_output_on_a_fifo_or_device_is_refused_not_replaced(files, tmp_path, capfd):
    """Publishing renames a new file over the output path: a FIFO (or, as root, /dev/null) there used to be
    replaced by a regular file, with "wrote" and exit 0 (red team, 2026-12-06)."""
    import os
    import stat

    from intvit.bench.record import write_record
    from intvit.files import write_atomic
    fifo = tmp_path / "out.onnx"
    os.mkfifo(fifo)
    for argv in (f"export {files}/m.safetensors -o {fifo}", f"compile {files}/m.onnx -o {fifo}",
                 f"quantize fmnist -o {fifo}"):
        assert main(argv.split()) == 2
        assert "it is a FIFO (named pipe), not a regular file" in capfd.readouterr().err
    for write in (lambda: write_atomic(fifo, b"x"), lambda: write_record(fifo, {}, "cmd"),
                  lambda: intvit_load(files).save(fifo)):
        with pytest.raises(PermissionError, match="FIFO"):
            write()
    sidecar_fifo = tmp_path / "side.so.json"
    os.mkfifo(sidecar_fifo)
    assert main(f"compile {files}/m.onnx -o {tmp_path}/side.so".split()) == 2
    assert "sidecar" in capfd.readouterr().err and not (tmp_path / "side.so").exists()
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and stat.S_ISFIFO(os.stat(sidecar_fifo).st_mode)


def intvit_load(files):
    import intvit
    return intvit.load(files / "m.safetensors")


@pytest.mark.parametrize("config, phrase", [
    ("[1, 2]", "holds a JSON list, not the object of an image processor's settings"),
    ("{x", "is not valid JSON"),
    ('{"image_mean": "grey"}', "must be numbers"),
])
def test_a_broken_preprocessor_config_is_one_line_naming_it(files, tmp_path, capfd, config, phrase):
    model = tmp_path / "hf"
    shutil.copytree(files / "hf", model)
    (model / "preprocessor_config.json").write_text(config)
    assert main(["quantize", str(model), "-o", str(tmp_path / "q.safetensors"), "--calib", str(files / "ok.npy")]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "preprocessor_config.json" in err[0] and phrase in err[0], err
    assert not (tmp_path / "q.safetensors").exists()


@pytest.mark.parametrize("settings, mean, std", [
    ({}, [0.5], [0.5]),
    ({"image_mean": [0.4, 0.5, 0.6], "image_std": [0.2, 0.25, 0.5]}, [0.4, 0.5, 0.6], [0.2, 0.25, 0.5]),
    ({"do_normalize": False, "image_mean": [0.4] * 3, "image_std": [0.2] * 3}, [0.0], [1.0]),
    ({"do_rescale": False, "image_mean": [127.5], "image_std": [51.0]}, [0.5], [0.2]),
    ({"rescale_factor": 1 / 127.5, "image_mean": [1.0], "image_std": [1.0]}, [0.5], [0.5]),
])
def test_the_processor_settings_become_the_mean_and_std_of_pixels_over_255(tmp_path, settings, mean, std):
    """``(p / 255 − mean) / std`` equals the processor's ``(p · rescale − image_mean) / image_std`` (or no
    normalisation with ``do_normalize: false``) on every pixel value (red team: do_normalize was ignored)."""
    from intvit.cli import _hf_normalisation
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(settings))
    got_mean, got_std, _ = _hf_normalisation(str(tmp_path))
    assert got_mean == pytest.approx(mean) and got_std == pytest.approx(std)
    p = np.arange(256.0)
    rescale = settings.get("rescale_factor", 1 / 255) if settings.get("do_rescale", True) else 1.0
    m, s = ((settings.get("image_mean", [0.5])[0], settings.get("image_std", [0.5])[0])
            if settings.get("do_normalize", True) else (0.0, 1.0))
    assert np.allclose((p / 255 - got_mean[0]) / got_std[0], (p * rescale - m) / s)


def test_a_folder_is_calibrated_at_the_image_size_asked_for(files, tmp_path, capfd):
    """``--image-size`` with ``--calib FOLDER`` resized the images to the config's size and then refused them."""
    from PIL import Image
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((40, 50, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "q.safetensors"
    assert main(["quantize", str(files / "hf"), "-o", str(out), "--calib", str(folder), "--image-size", "48x40",
                 "--quiet"]) == 0
    assert "resized to 48x40" in capfd.readouterr().out
    import intvit
    assert intvit.load(out).spec.image_size == (48, 40)


def test_ctrl_c_that_tvm_turns_into_a_runtime_error_is_still_an_interruption(files, capfd, monkeypatch):
    """TVM's pass pipeline re-raises a KeyboardInterrupt as a RuntimeError: `intvit compile` printed
    'intvit compile: RuntimeError' and exit 2 on 2 of 7 Ctrl-Cs (red team, 2026-12-06)."""
    import os
    import signal

    import intvit.cli as cli

    def tvm_like(args):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(100):                   # the handler runs at the next bytecode
                pass
        except KeyboardInterrupt:
            raise RuntimeError("Traceback (most recent call last): ... KeyboardInterrupt") from None
    monkeypatch.setattr(cli, "_compile", tvm_like)
    assert main(["compile", str(files / "m.onnx"), "-o", str(files / "x.so")]) == 130
    assert capfd.readouterr().err.strip() == "intvit compile: interrupted"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler      # never replaced
    assert signal.set_wakeup_fd(-1) == -1                                       # and the wakeup fd put back


def test_labels_are_printed_with_control_characters_escaped():
    from intvit.cli import _printable
    assert _printable("\x1b[2J\x1b[31mPWNED\x1b[0m") == "\\x1b[2J\\x1b[31mPWNED\\x1b[0m"
    assert _printable("T-shirt/top") == "T-shirt/top" and _printable("chat\tnoir\n") == "chat\\tnoir\\n"
    assert _printable("Großkatze 猫") == "Großkatze 猫"
