"""Files and inputs a deployment should not meet, from the red-team run of 2026-12-06: special files that hang a
reader, sidecars written to crash the parser or re-signed after an edit, libraries that are not intvit modules,
a full disk, a module cache that cannot be written, edited ONNX graphs, a damaged ``.npy`` header, inputs that
are not image arrays. Each must give one clear error naming the file, quickly, with nothing written."""
import json
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

import intvit
from intvit.calibration.data import CalibrationDataError, load_npy
from intvit.cli import main
from intvit.runtime import ModuleMismatchError, load
from intvit.tvm_backend.importer import UnsupportedGraphError
from intvit.tvm_backend.runtime import compile_to_file, sidecar_digest
from conftest import images


@pytest.fixture(autouse=True)
def private_module_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INTVIT_MODULE_CACHE", str(tmp_path / "cache"))


def _raises_within(seconds: float, fn):
    """The exception ``fn()`` raises, failing the test if it has not returned or raised within ``seconds`` (a
    reader blocked on a FIFO would otherwise hang the suite)."""
    outcome = []

    def run():
        try:
            fn()
            outcome.append(None)
        except BaseException as exc:            # noqa: BLE001 - handed to the test
            outcome.append(exc)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        pytest.fail(f"still blocked after {seconds} s")
    assert outcome[0] is not None, "expected an error"
    return outcome[0]


def _copy_module(src, dst, edit=None, resign=False):
    """``src`` (.so + sidecar) copied to ``dst`` with ``edit(meta)`` applied to the sidecar, re-signed (its own
    digest recomputed, as someone forging it would) when ``resign``."""
    shutil.copyfile(src, dst)
    meta = json.loads(open(str(src) + ".json").read())
    if edit:
        edit(meta)
    if resign:
        meta["sidecar_sha256"] = sidecar_digest(meta)
    with open(str(dst) + ".json", "w") as f:
        json.dump(meta, f)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("case", ["fifo module", "fifo sidecar", "device module", "fifo model file", "fifo onnx",
                                  "fifo npy"])
def test_fifos_and_devices_are_refused_not_read(compiled_pair, tmp_path, case):
    """A FIFO or a device opened for reading blocks (or never ends) — ``load``, ``intvit.load``, the compiler
    and the ``.npy`` reader hung on one, holding the folder's lock; each is now refused by its file type."""
    d, so, _, _, _ = compiled_pair
    target = {"fifo module": "m.so", "fifo sidecar": "m.so.json", "device module": "m.so",
              "fifo model file": "m.safetensors", "fifo onnx": "m.onnx", "fifo npy": "x.npy"}[case]
    if case == "fifo sidecar":
        shutil.copyfile(so, tmp_path / "m.so")
    elif case in ("fifo module", "device module"):
        shutil.copyfile(str(so) + ".json", tmp_path / "m.so.json")
    if case == "device module":
        os.symlink("/dev/zero", tmp_path / target)
    else:
        os.mkfifo(tmp_path / target)
    act = {"fifo module": lambda: load(tmp_path / "m.so"), "fifo sidecar": lambda: load(tmp_path / "m.so"),
           "device module": lambda: load(tmp_path / "m.so"),
           "fifo model file": lambda: intvit.load(tmp_path / "m.safetensors"),
           "fifo onnx": lambda: compile_to_file(tmp_path / "m.onnx", tmp_path / "out.so"),
           "fifo npy": lambda: load_npy(tmp_path / "x.npy")}[case]
    exc = _raises_within(20, act)
    kind = "character device" if case == "device module" else "FIFO (named pipe)"
    assert isinstance(exc, OSError) and f"is a {kind}, not a regular file" in str(exc), exc
    assert not (tmp_path / "out.so").exists()


def test_links_to_nothing_are_named_as_links(compiled_pair, tmp_path):
    _, so, _, _, _ = compiled_pair
    os.symlink("gone.so", tmp_path / "dangling.so")
    with pytest.raises(FileNotFoundError, match="is a link to gone.so, which does not exist"):
        load(tmp_path / "dangling.so")
    os.symlink("loop2.so", tmp_path / "loop1.so")
    os.symlink("loop1.so", tmp_path / "loop2.so")
    with pytest.raises(OSError, match="loop1.so \\(Too many levels of symbolic links\\)"):
        load(tmp_path / "loop1.so")


@pytest.mark.parametrize("text, phrase", [
    ("[" * 100_000 + "]" * 100_000, "RecursionError"),
    ('{"batch": ' + "9" * 5000 + "}", "ValueError: Exceeds the limit"),
])
def test_sidecars_written_to_crash_the_parser_are_refused(compiled_pair, tmp_path, text, phrase):
    _, so, _, _, _ = compiled_pair
    shutil.copyfile(so, tmp_path / "m.so")
    (tmp_path / "m.so.json").write_text(text)
    with pytest.raises(ModuleMismatchError, match=f"m.so.json is not a sidecar `intvit compile` writes \\({phrase}"):
        load(tmp_path / "m.so")


@pytest.mark.parametrize("edit, phrase", [
    (lambda m: m.update(preprocessing={"mean": [0.5]}), "field 'preprocessing' must hold"),
    (lambda m: m.update(preprocessing={"mean": [0.5], "std": [0.0]}), "field 'preprocessing' must hold"),
    (lambda m: m.update(cpu_arch=["x86_64"]), "fields 'cpu_arch' and 'mcpu' must be names"),
    (lambda m: (m.update(batch=10**30), m["input"]["shape"].__setitem__(0, 10**30)), "each below 2\\*\\*31"),
    (lambda m: (m.update(batch=2**31 - 1), m["input"]["shape"].__setitem__(0, 2**31 - 1)),
     "holds 6,597,069,763,584 values per call, more than intvit compiles"),
    (lambda m: m["input"].update(shape=[1, 3, 2**30, 2**30]), "values per call, more than intvit compiles"),
    (lambda m: m.update(output={"a": 1}), "field 'output' is \\{'a': 1\\}, not the name"),
])
def test_re_signed_sidecars_with_impossible_fields_are_refused_at_load(compiled_pair, tmp_path, edit, phrase):
    """Its own digest stops an accidental edit; a forger recomputes it, so the fields are checked too (these
    loaded, then failed as KeyError 'std' in `intvit run`, or OverflowError in the call)."""
    _, so, _, _, _ = compiled_pair
    _copy_module(so, tmp_path / "m.so", edit, resign=True)
    with pytest.raises(ModuleMismatchError, match=phrase):
        load(tmp_path / "m.so")


def test_a_re_signed_sidecar_with_another_batch_fails_its_call_clearly(compiled_pair, tmp_path):
    _, so, _, _, _ = compiled_pair

    def batch_2(meta):
        meta["batch"], meta["input"]["shape"][0] = 2, 2
    _copy_module(so, tmp_path / "m.so", batch_2, resign=True)
    module = load(tmp_path / "m.so")
    with pytest.raises(ModuleMismatchError, match="this module's code takes another input shape than its sidecar's "
                                                  "\\[2, 3, 32, 32\\]"):
        module.run(images(2))


def test_libraries_that_are_not_intvit_modules_are_named(compiled_pair, tmp_path):
    """A real shared library that is not a TVM module (here zlib's) paired with a
    matching sidecar used to fail with an AttributeError at the first call; bytes that are no library named
    the cache copy instead of the user's file."""
    _, so, _, _, _ = compiled_pair
    other = next((p for p in ("/lib/x86_64-linux-gnu/libz.so.1", "/usr/lib/x86_64-linux-gnu/libz.so.1",
                              "/lib/aarch64-linux-gnu/libz.so.1", "/usr/lib/aarch64-linux-gnu/libz.so.1")
                  if os.path.exists(p)), None)
    from intvit.tvm_backend.runtime import file_sha256

    def pair_with(name, content_path=None, content=None):
        path = tmp_path / name
        if content_path:
            shutil.copyfile(content_path, path)
        else:
            path.write_bytes(content)
        _copy_module(so, tmp_path / "scratch.so", lambda m: m.update(so_sha256=file_sha256(path)), resign=True)
        os.replace(tmp_path / "scratch.so.json", str(path) + ".json")
        return path
    garbage = pair_with("garbage.so", content=b"\x7fELF" + bytes(range(256)) * 4)
    with pytest.raises(ModuleMismatchError, match=f"{garbage} cannot be loaded as a shared library") as info:
        load(garbage)
    assert "cache" not in str(info.value)
    if other is not None:
        with pytest.raises(ModuleMismatchError, match="is a shared library but not a module `intvit compile` wrote"):
            load(pair_with("libz.so", content_path=other))


def test_a_module_cache_that_cannot_be_written_is_named(compiled_pair, tmp_path, monkeypatch):
    from intvit.tvm_backend import runtime
    _, so, _, _, _ = compiled_pair
    monkeypatch.setattr(runtime, "_LIBRARIES", {})      # not loaded yet in this process: copied to the cache
    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("INTVIT_MODULE_CACHE", str(tmp_path / "afile" / "cache"))
    with pytest.raises(OSError, match="cannot write to the module cache .*afile/cache .*set INTVIT_MODULE_CACHE"):
        load(so)


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A 64 KB tmpfs (root only; skipped where mounting is not allowed)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root in a system that allows it")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_a_full_disk_names_the_output_not_a_temp_file(compiled_pair, tiny_filesystem):
    d, _, _, _, _ = compiled_pair
    with pytest.raises(OSError, match=f"cannot write the compiled module to {tiny_filesystem}/m.so: No space left") \
            as info:
        compile_to_file(d / "a.onnx", tiny_filesystem / "m.so")
    assert ".tmp" not in str(info.value) and os.listdir(tiny_filesystem) == []


def _strip_digest(proto):
    """``proto`` without its ``intvit.graph_sha256`` property (in place; returned)."""
    from intvit.quantize.onnx_export import DIGEST_KEY
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key != DIGEST_KEY]
    del proto.metadata_props[:]
    for key, value in kept:
        proto.metadata_props.add(key=key, value=value)
    return proto


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_a_folder_that_takes_no_files_is_refused_before_compiling(compiled_pair, capsys):
    """``os.access`` calls /proc writable for root: the compile ran whole, then the linker failed on a temp
    name. A file is now created and removed there first."""
    d, _, _, _, _ = compiled_pair
    assert main(["compile", str(d / "a.onnx"), "-o", "/proc/m.so"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "cannot write the compiled module to /proc/m.so: a file cannot be created in /proc" in err


@pytest.mark.parametrize("edit, phrase", [
    (lambda g: g.output.pop(), "has outputs \\['logits'\\]; it must give 'logits' and 'int_logits'"),
    (lambda g: g.input.append(g.input[0].__class__(name="second", type=g.input[0].type)),
     "has inputs \\['images', 'second'\\]; it must take one"),
])
def test_edited_onnx_graphs_are_refused_before_any_output(compiled_pair, tmp_path, capsys, edit, phrase):
    """A graph without ``int_logits`` compiled, and every run of the module then failed with an IndexError; a
    second input was called "not an intvit graph" though it was one."""
    import onnx
    d, _, _, _, _ = compiled_pair
    proto = onnx.load(str(d / "a.onnx"))
    edit(proto.graph)
    _strip_digest(proto)                # as an editor who knows the digest would (else: "was changed after")
    onnx.save(proto, str(tmp_path / "edited.onnx"))
    with pytest.raises(UnsupportedGraphError, match=phrase):
        compile_to_file(tmp_path / "edited.onnx", tmp_path / "m.so")
    assert main(["compile", str(tmp_path / "edited.onnx"), "-o", str(tmp_path / "m.so")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and not (tmp_path / "m.so").exists()


@pytest.mark.parametrize("edit, phrase", [
    (lambda n: n.domain == "intvit" and n.op_type == "Shiftmax", "intvit op 'Shiftmaxx' has no TVM kernel"),
    (lambda n: n.op_type == "MatMulInteger", "ONNX op MatMulIntegerx is not supported by the TVM importer"),
])
def test_a_graph_refused_mid_import_prints_one_line(compiled_pair, tmp_path, edit, phrase):
    """An op the importer does not know is found while TVM's block builder is open; TVM then printed a second
    stderr line of its own ("BlockBuilder destroyed with remaining blocks!") under intvit's error. It is
    printed by TVM's C++ when the builder is freed, so the CLI runs in a child and its whole stderr is read."""
    import onnx
    d, _, _, _, _ = compiled_pair
    proto = _strip_digest(onnx.load(str(d / "a.onnx")))
    node = next(n for n in proto.graph.node if edit(n))
    node.op_type += "x"
    onnx.save(proto, str(tmp_path / "edited.onnx"))
    child = subprocess.run([sys.executable, "-m", "intvit", "compile", str(tmp_path / "edited.onnx"), "-o",
                            str(tmp_path / "m.so")], capture_output=True, text=True, timeout=300)
    assert child.returncode == 2, child.stderr[-2000:]
    lines = [line for line in child.stderr.splitlines() if "_pytree.py" not in line]   # torch's import notes
    assert len(lines) == 1 and phrase in lines[0], child.stderr[-2000:]
    assert not (tmp_path / "m.so").exists()


def test_an_empty_onnx_file_is_not_inspected_as_an_empty_graph(tmp_path, capsys):
    (tmp_path / "empty.onnx").write_bytes(b"")
    assert main(["inspect", str(tmp_path / "empty.onnx")]) == 2
    assert "is empty (0 bytes), not an ONNX file" in capsys.readouterr().err


def test_a_npy_header_that_claims_more_than_the_file_holds(tmp_path):
    """numpy allocates what the header claims before it reads (2.85 TiB here): refused from the header."""
    path = tmp_path / "huge.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                 "shape": (10**9, 1, 28, 28)})
        f.write(np.zeros((1, 1, 28, 28), np.float32).tobytes())
    with pytest.raises(CalibrationDataError, match="is damaged: its header declares an array of shape "
                                                   "\\[1000000000, 1, 28, 28\\] .* the file holds 3,136 bytes"):
        load_npy(path)


@pytest.mark.parametrize("bad, phrase", [
    (None, "got NoneType"), ("images.png", "got str"), (np.array([["a"]]), "got ndarray of <U1"),
    (torch.zeros(1, 3, 32, 32).to(torch.float8_e4m3fn), "dtype torch.float8_e4m3fn"),
    (torch.zeros(1, 3, 32, 32).to_sparse(), "layout torch.sparse_coo"),
    (torch.empty(1, 3, 32, 32, device="meta"), "on meta"),
])
def test_inputs_that_are_not_image_arrays_are_named(compiled_pair, bad, phrase):
    _, so, _, _, _ = compiled_pair
    with pytest.raises(TypeError, match=phrase):
        load(so).run(bad)


def test_a_module_path_may_be_bytes(compiled_pair):
    _, so, _, q, _ = compiled_pair
    x = images(1, seed=22)
    assert np.array_equal(load(os.fsencode(so)).run(x)[1], q.forward_int(x).numpy())


def test_an_exported_onnx_file_that_changed_is_refused(compiled_pair, tmp_path, capsys):
    """Bit flips in an exported graph used to compile and run with other logits, unnoticed: the export stores
    the graph's SHA-256 (``onnx_export.graph_digest``) and reading checks it; a graph without one (another
    tool's, an older export, or an edit whose author removed the property) is read as it is."""
    import onnx
    from intvit.quantize.onnx_export import DIGEST_KEY, read_onnx
    d, _, _, q, _ = compiled_pair
    path = tmp_path / "m.onnx"
    q.export_onnx(path)
    proto = read_onnx(path)
    assert [p.key for p in proto.metadata_props].count(DIGEST_KEY) == 1
    weight = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
    data = bytearray(path.read_bytes())
    at = data.find(weight.raw_data) + len(weight.raw_data) // 2
    data[at] ^= 0x10                                    # one bit of one weight
    (tmp_path / "flipped.onnx").write_bytes(data)
    with pytest.raises(ValueError, match="flipped.onnx was changed after `intvit export` wrote it"):
        read_onnx(tmp_path / "flipped.onnx")
    assert main(["compile", str(tmp_path / "flipped.onnx"), "-o", str(tmp_path / "m.so")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "was changed after" in err and not (tmp_path / "m.so").exists()
    edited = _strip_digest(onnx.load(str(tmp_path / "flipped.onnx")))
    onnx.save(edited, str(tmp_path / "edited.onnx"))
    assert len(read_onnx(tmp_path / "edited.onnx").graph.initializer) == len(proto.graph.initializer)


def _truncated_copy(so, path, keep: float):
    """The first ``keep`` of ``so``'s bytes at ``path``, with the sidecar re-signed for them (a forgery, or a
    copy tool that rewrote both files): the SHA-256 check passes, so only the library itself can tell."""
    from intvit.tvm_backend.runtime import file_sha256
    data = open(so, "rb").read()
    path.write_bytes(data[:int(len(data) * keep)])
    _copy_module(so, tmp := path.with_name("scratch.so"),
                 lambda meta: meta.update(so_sha256=file_sha256(path)), resign=True)
    os.replace(str(tmp) + ".json", str(path) + ".json")
    tmp.unlink()


@pytest.mark.parametrize("keep", [0.02, 0.3, 0.6, 0.9, 0.999])
def test_a_truncated_library_is_refused_before_it_is_mapped(compiled_pair, tmp_path, keep):
    """A module truncated to 2–60 % of its bytes, with a re-signed sidecar, killed the process with SIGBUS in
    ``load`` (dlopen maps segments past the end of the file; the first touch faults); truncated further on it
    loaded and ran. Both are refused by reading the ELF headers first — checked in a child process, so a
    regression fails this test instead of killing the suite."""
    from intvit.tvm_backend.elf import DamagedLibraryError, check_library_whole
    _, so, _, _, _ = compiled_pair
    check_library_whole(so)                             # the whole module passes
    _truncated_copy(so, tmp_path / "m.so", keep)
    with pytest.raises(DamagedLibraryError, match="it is truncated: its (segment|section|program header|"
                                                  "section header) .* ends at byte"):
        check_library_whole(tmp_path / "m.so")
    child = subprocess.run(
        [sys.executable, "-c", "import sys\nfrom intvit.runtime import load, ModuleMismatchError\n"
         "try:\n    load(sys.argv[1])\nexcept ModuleMismatchError as exc:\n    print(exc)\n    sys.exit(3)\n",
         str(tmp_path / "m.so")], capture_output=True, text=True, timeout=300,
        env={**os.environ, "INTVIT_MODULE_CACHE": str(tmp_path / "cache")})
    assert child.returncode == 3, (child.returncode, child.stderr[-2000:])
    assert f"{tmp_path / 'm.so'} cannot be loaded as a shared library (it is truncated" in child.stdout


@pytest.mark.parametrize("edit, phrase", [
    (lambda b: b[:4] + b"\x01" + b[5:], "not a 64-bit little-endian ELF file"),
    (lambda b: b[:16] + (2).to_bytes(2, "little") + b[18:], "ELF file of type 2, not a shared library"),
    (lambda b: b[:54] + (57).to_bytes(2, "little") + b[56:], "impossible header entry sizes"),
    (lambda b: b[:32] + (2**40).to_bytes(8, "little") + b[40:], "its program header table ends at byte"),
    (lambda b: b[:40], "fewer than an ELF header's 64"),
    (lambda b: b"MZ" + b[2:], "it has no ELF header"),
])
def test_damaged_elf_headers_are_named(compiled_pair, tmp_path, edit, phrase):
    from intvit.tvm_backend.elf import DamagedLibraryError, check_library_whole
    _, so, _, _, _ = compiled_pair
    (tmp_path / "m.so").write_bytes(edit(open(so, "rb").read()))
    with pytest.raises(DamagedLibraryError, match=phrase):
        check_library_whole(tmp_path / "m.so")


@pytest.mark.parametrize("write, phrase", [
    (lambda f: np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                        "shape": (10**22, 0, 28, 28)}),
     "is not a readable numpy .npy array file \\(OverflowError\\)"),
    (lambda f: np.save(f, np.array([[[[object()]]]], dtype=object), allow_pickle=True),
     "holds Python objects, which intvit does not unpickle"),
    (lambda f: np.savez(f, a=np.zeros((1, 3, 32, 32), np.float32)), "is an .npz archive \\(several arrays\\)"),
])
def test_npy_files_numpy_cannot_read_as_one_array_are_named(tmp_path, write, phrase):
    path = tmp_path / "x.npy"
    with open(path, "wb") as f:
        write(f)
    with pytest.raises(CalibrationDataError, match=phrase):
        load_npy(path)


def test_a_loaded_module_cannot_be_pickled_and_says_what_to_do(compiled_pair):
    import pickle
    _, so, _, _, _ = compiled_pair
    module = load(so)
    for obj in (module, module.compiled):
        with pytest.raises(TypeError, match="cannot be pickled .* intvit.runtime.load\\(path\\) in each process"):
            pickle.dumps(obj)


def test_a_link_elsewhere_is_loaded_under_the_lock_of_the_folder_its_module_is_published_in(compiled_pair, tmp_path,
                                                                                            monkeypatch):
    """``load`` locked the link's folder while a writer publishing into the module's own folder holds that
    folder's lock: a recompile racing a load through the link gave 'not the module its sidecar was written
    for' (3 in 6,000 loads in the red team's run)."""
    from intvit.tvm_backend import runtime
    _, so, _, q, _ = compiled_pair
    real, links = tmp_path / "real", tmp_path / "links"
    real.mkdir(), links.mkdir()
    _copy_module(so, real / "m.so")
    (links / "current.so").symlink_to(real / "m.so")
    locked = []
    original = runtime._directory_lock
    monkeypatch.setattr(runtime, "_directory_lock", lambda d, shared=False: (locked.append(d), original(d, shared))[1])
    x = images(1, seed=3)
    assert np.array_equal(load(links / "current.so").run(x)[1], q.forward_int(x).numpy())
    assert locked == [str(real)]


def test_a_module_cache_that_forbids_running_code_is_named(compiled_pair, monkeypatch):
    """A cache on a noexec mount (a hardened /tmp) failed every load with 'recompile it', which cannot help."""
    import tvm
    from intvit.tvm_backend import runtime
    _, so, _, _, _ = compiled_pair

    def noexec(path):
        raise RuntimeError(f"Check failed: (lib_handle_ != nullptr) is false: Failed to load dynamic shared library "
                           f"{path} {path}: failed to map segment from shared object")
    monkeypatch.setattr(tvm.runtime, "load_module", noexec)
    monkeypatch.setattr(runtime, "_LIBRARIES", {})
    with pytest.raises(ModuleMismatchError, match="cannot run from the module cache .*: its file system does not "
                                                  "allow executing code .*set INTVIT_MODULE_CACHE") as err:
        load(so)
    assert "recompile" not in str(err.value) and str(so) + " " not in str(err.value).split("(", 1)[1]


def test_a_batch_of_more_input_values_than_a_module_takes_is_refused_before_compiling(compiled_pair, tmp_path):
    from intvit.tvm_backend.build import MAX_INPUT_VALUES
    d, _, _, _, _ = compiled_pair
    batch = -(-MAX_INPUT_VALUES // (3 * 32 * 32))          # the fewest 3x32x32 images that hold 2**31 values
    with pytest.raises(ValueError, match=f"batch {batch} of 3x32x32 images is 2,147,484,672 input values per call, "
                                         "beyond what a module takes"):
        compile_to_file(d / "a.onnx", tmp_path / "big.so", batch=batch)
    assert not list(tmp_path.iterdir())
