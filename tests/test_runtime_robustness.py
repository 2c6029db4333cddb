"""The runtime and its files under what a deployment meets: short-lived caller threads, fork, other users,
files replaced or edited while they are read, killed writers, odd inputs (each found by a red-team run)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

import intvit
from intvit.runtime import ModuleMismatchError, load
from intvit.tvm_backend import callers, runtime
from intvit.tvm_backend.runtime import _directory_lock, compile_to_file
from conftest import images


@pytest.fixture(autouse=True)
def private_module_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INTVIT_MODULE_CACHE", str(tmp_path / "cache"))


def _os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through Linux's /proc")
def test_short_lived_caller_threads_leave_no_threads_behind(compiled_pair):
    """Each calling thread used to get a TVM thread pool of its own that outlived it (100 callers left 200
    threads polling); calls now run on a fixed set of workers, so the count stops growing."""
    _, so, _, q, _ = compiled_pair
    module = load(so)
    x = images(1, seed=11)
    want = q.forward_int(x).numpy()
    got = []

    def call_once():
        got.append(module.run(x)[1])
    before = _os_threads()
    for _ in range(40):
        t = threading.Thread(target=call_once)
        t.start()
        t.join()
    pool = int(os.environ.get("TVM_NUM_THREADS") or os.cpu_count())      # TVM's threads per calling thread
    assert _os_threads() - before <= callers.worker_count() * (1 + pool) < 40
    assert len(got) == 40 and all(np.array_equal(g, want) for g in got)


def test_a_forked_child_runs_a_module_its_parent_ran(compiled_pair):
    """TVM's thread pool does not survive fork: a child forked after its parent ran the module spun forever.
    The child now starts workers of its own and gets the parent's answer."""
    _, so, _, q, _ = compiled_pair
    module = load(so)
    x = images(1, seed=12)
    want = module.run(x)[1]
    pid = os.fork()
    if pid == 0:                                          # the child: exit code says what it saw
        try:
            os._exit(0 if np.array_equal(module.run(x)[1], want) else 3)
        except BaseException:
            os._exit(4)
    assert _wait_for_child(pid) == 0
    assert np.array_equal(want, q.forward_int(x).numpy())


def _wait_for_child(pid: int, seconds: float = 120) -> int:
    """The exit code of forked child ``pid``; fails the test (after killing it) if it runs past ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("the forked child hung")


def test_a_child_forked_while_another_thread_loads_can_load_and_publish(compiled_pair, tmp_path):
    """Fork while another thread is inside ``load`` (holding the library lock and the folder's shared
    ``flock``): the child used to wait forever on the lock at its first ``load``, and kept the folder locked
    for its whole life, so a writer publishing into that folder waited until the child exited. The child now
    starts with its own lock and closes its copies of the folder locks."""
    _, so, _, q, _ = compiled_pair
    x = images(1, seed=21)
    want = q.forward_int(x).numpy()
    folder = os.path.dirname(os.path.abspath(so))
    holding, release = threading.Event(), threading.Event()

    def loader_in_the_middle():         # what a loading thread holds at the moment of the fork
        with _directory_lock(folder, shared=True), runtime._LIBRARIES_LOCK:
            holding.set()
            release.wait(30)
    t = threading.Thread(target=loader_in_the_middle)
    t.start()
    assert holding.wait(30)
    started_r, started_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(started_w, b"1")                       # the fork handlers have run
            time.sleep(3)                                   # alive while the parent's writer tries below
            os._exit(0 if np.array_equal(load(so).run(x)[1], want) else 3)
        except BaseException:
            os._exit(4)
    release.set()
    t.join()
    assert os.read(started_r, 1) == b"1"
    os.close(started_r), os.close(started_w)
    import fcntl
    fd = os.open(folder, os.O_RDONLY)
    try:                                # a writer's exclusive lock, while the child still runs
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child kept the folder locked")
    finally:
        os.close(fd)
    assert _wait_for_child(pid, seconds=60) == 0


def test_worker_count_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(callers.ENV, "3")
    assert callers.worker_count() == 3
    for text in ("zero", "²"):          # "²".isdigit() is true, and int() refuses it
        monkeypatch.setenv(callers.ENV, text)
        with pytest.raises(ValueError, match=f"INTVIT_RUNTIME_WORKERS='{text}': give a positive whole number"):
            callers.worker_count()
    monkeypatch.delenv(callers.ENV)
    assert callers.worker_count() == callers.DEFAULT_WORKERS == 1


@pytest.mark.parametrize("how", ["others may write", "another owner", "a link"])
def test_a_module_cache_others_could_write_to_is_refused(compiled_pair, tmp_path, monkeypatch, how):
    """The cache holds code the process runs: a folder someone else could write to (a local user pre-creating
    /tmp/intvit-modules-<uid>, mode 0777) would let them swap a library between its check and its load."""
    _, so, _, _, _ = compiled_pair
    cache = tmp_path / "shared-cache"
    if how == "a link":
        (tmp_path / "elsewhere").mkdir()
        os.symlink(tmp_path / "elsewhere", cache)
    else:
        cache.mkdir()
        if how == "others may write":
            os.chmod(cache, 0o777)
        else:
            real_lstat = os.lstat
            monkeypatch.setattr(os, "lstat", lambda p: os.stat_result(
                (*real_lstat(p)[:4], os.getuid() + 1, *real_lstat(p)[5:])) if os.fspath(p) == str(cache)
                else real_lstat(p))
    monkeypatch.setenv("INTVIT_MODULE_CACHE", str(cache))
    monkeypatch.setattr(runtime, "_LIBRARIES", {})          # as in a fresh process: the library is not open yet
    with pytest.raises(ModuleMismatchError, match="another user could replace the code it loads"):
        load(so)


def test_load_waits_while_a_writer_publishes(compiled_pair, tmp_path):
    """A writer renames the .so and its sidecar under an exclusive lock on the folder; load reads both under
    a shared one, so a module recompiled while it loads arrives whole (11 of 12 hot reloads used to fail)."""
    _, so, _, _, _ = compiled_pair
    shutil.copyfile(so, tmp_path / "m.so")
    shutil.copyfile(str(so) + ".json", tmp_path / "m.so.json")
    loaded = []
    with _directory_lock(str(tmp_path)):
        reader = threading.Thread(target=lambda: loaded.append(load(tmp_path / "m.so")))
        reader.start()
        reader.join(timeout=1.0)
        assert reader.is_alive() and not loaded        # waiting for the writer
    reader.join(timeout=60)
    assert len(loaded) == 1


def test_a_model_file_is_read_through_one_open(tiny_qvit, tmp_path, monkeypatch):
    """Tensors and header come from the same bytes: a re-save between two opens paired one file's tensors with
    the other's header ("damaged")."""
    path = tmp_path / "m.safetensors"
    tiny_qvit.save(path)
    opened = []
    real_open = open

    def counting_open(p, *args, **kwargs):
        if os.fspath(p) == str(path):
            opened.append(p)
        return real_open(p, *args, **kwargs)
    monkeypatch.setattr("builtins.open", counting_open)
    back = intvit.load(path)
    assert len(opened) == 1
    x = images(2, seed=5)
    assert torch.equal(back.forward_int(x), tiny_qvit.forward_int(x))


def test_a_save_killed_before_publishing_leaves_only_a_temp_the_next_save_sweeps(tiny_qvit, tmp_path):
    """safetensors' own writer staged in a hidden ``.tmpXXXXXX`` that SIGKILL left for good; intvit now writes
    the bytes itself, to a temp named after the target that the next writer sweeps."""
    path = tmp_path / "m.safetensors"
    tiny_qvit.save(tmp_path / "source.safetensors")
    killed = subprocess.run([sys.executable, "-c", (
        "import os, intvit\n"
        "m = intvit.load(os.environ['SRC'])\n"
        "os.replace = lambda *a: os.kill(os.getpid(), 9)\n"
        "m.save(os.environ['DST'])\n")], env={**os.environ, "SRC": str(tmp_path / "source.safetensors"),
                                             "DST": str(path)}, capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    left = sorted(p.name for p in tmp_path.iterdir() if p.name not in ("source.safetensors", "cache"))
    assert len(left) == 1 and left[0].startswith("m.safetensors.tmp-")
    tiny_qvit.save(path)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == ["m.safetensors",
                                                                               "source.safetensors"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads and writes regardless of file modes")
def test_unwritable_folder_and_unreadable_file_are_named(tiny_qvit, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    with pytest.raises(PermissionError, match="directory .*ro is not writable"):
        tiny_qvit.save(ro / "m.safetensors")
    path = tmp_path / "m.safetensors"
    tiny_qvit.save(path)
    os.chmod(path, 0)
    with pytest.raises(PermissionError, match="cannot read .*: permission denied"):
        intvit.load(path)


def _copy_module(src, dst, edit=None):
    shutil.copyfile(src, dst)
    meta = json.loads(open(str(src) + ".json").read())
    if edit:
        edit(meta)
    with open(str(dst) + ".json", "w") as f:
        json.dump(meta, f)


def test_the_sidecar_names_its_source_by_digest(compiled_pair):
    """Which ONNX file a module came from, by content, not only by its base name."""
    from intvit.tvm_backend.runtime import file_sha256
    d, so, _, _, _ = compiled_pair
    meta = json.loads(open(str(so) + ".json").read())
    assert meta["source_onnx"] == "a.onnx" and meta["source_onnx_sha256"] == file_sha256(d / "a.onnx")


def test_an_edited_sidecar_is_refused_before_tvm_sees_a_wrong_shape(compiled_pair, tmp_path):
    """The sidecar's own digest: an edited batch used to load and then fail inside TVM (match_cast)."""
    _, so, _, _, _ = compiled_pair
    _copy_module(so, tmp_path / "ok.so")
    load(tmp_path / "ok.so")

    def batch_4(meta):
        meta["batch"], meta["input"]["shape"][0] = 4, 4
    _copy_module(so, tmp_path / "b4.so", batch_4)
    with pytest.raises(ModuleMismatchError, match="was changed after `intvit compile` wrote it"):
        load(tmp_path / "b4.so")

    def batch_4_without_the_digest(meta):       # deleting the digest line does not make the edit pass
        batch_4(meta)
        del meta["sidecar_sha256"]
    _copy_module(so, tmp_path / "b4x.so", batch_4_without_the_digest)
    with pytest.raises(ModuleMismatchError, match="carries no digest of its own fields"):
        load(tmp_path / "b4x.so")


@pytest.mark.parametrize("content, error, phrase", [
    (b"\xff\xfe\x00{", ModuleMismatchError, "is not valid UTF-8 JSON"),
    ("{}".encode("utf-16"), ModuleMismatchError, "is not valid UTF-8 JSON"),
    (None, IsADirectoryError, "is a directory, not an intvit sidecar"),
])
def test_unreadable_sidecars_are_one_clear_error(compiled_pair, tmp_path, content, error, phrase):
    _, so, _, _, _ = compiled_pair
    shutil.copyfile(so, tmp_path / "m.so")
    side = tmp_path / "m.so.json"
    if content is None:
        side.mkdir()
    else:
        side.write_bytes(content)
    with pytest.raises(error, match=phrase):
        load(tmp_path / "m.so")


def test_sidecar_cpu_features_must_be_names(compiled_pair, tmp_path):
    _, so, _, _, _ = compiled_pair
    _copy_module(so, tmp_path / "m.so", lambda meta: meta.update(cpu_features=[1, 2]))
    with pytest.raises(ModuleMismatchError, match="'cpu_features' must list feature names"):
        load(tmp_path / "m.so")


def test_a_link_to_a_module_finds_the_sidecar_of_the_file_it_names(compiled_pair, tmp_path):
    _, so, _, q, _ = compiled_pair
    _copy_module(so, tmp_path / "v3.so")
    os.symlink("v3.so", tmp_path / "current.so")
    x = images(1, seed=13)
    assert np.array_equal(load(tmp_path / "current.so").run(x)[1], q.forward_int(x).numpy())


def test_the_wrong_kind_of_file_names_the_right_loader(compiled_pair, tmp_path):
    d, so, _, _, _ = compiled_pair
    with pytest.raises(ModuleMismatchError, match="is an ONNX file, not a compiled module; compile it first"):
        load(d / "a.onnx")
    with pytest.raises(intvit.IntegerModelFileError, match="is a compiled module .* intvit.runtime.load"):
        intvit.load(so)


def test_odd_inputs_to_a_compiled_module(compiled_pair):
    """An empty batch says so (not "recompile with --batch 0"); bfloat16 tensors are widened exactly; float64
    beyond float32's range is refused like inf, not cast to it with a warning."""
    _, so, _, q, _ = compiled_pair
    module = load(so)
    shape = module.compiled.input_shape
    with pytest.raises(ValueError, match="got an empty batch"):
        module.run(np.zeros((0, *shape[1:]), np.float32))
    x = images(1, seed=14).to(torch.bfloat16)
    assert np.array_equal(module.run(x)[1], module.run(x.float())[1])
    with pytest.raises(ValueError, match="beyond float32's range"):
        module.run(np.full(shape, 1e39, np.float64))


def test_two_threads_compiling_at_once_both_get_their_own_model(compiled_pair, tmp_path):
    """TVM's Relax importer keeps one process-wide builder stack: concurrent compiles failed with an
    AssertionError in to_relax; compile_onnx now takes them one at a time."""
    d, _, _, qa, qb = compiled_pair
    errors = []

    def compile_one(name):
        try:
            compile_to_file(d / f"{name}.onnx", tmp_path / f"{name}.so")
        except Exception as exc:                        # noqa: BLE001 - reported below
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
    threads = [threading.Thread(target=compile_one, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    x = images(1, seed=15)
    for name, q in (("a", qa), ("b", qb)):
        assert np.array_equal(load(tmp_path / f"{name}.so").run(x)[1], q.forward_int(x).numpy())


def test_ctrl_c_while_waiting_cancels_the_call_at_its_next_check(monkeypatch):
    """Ctrl-C in the caller left the call running on its worker to the last image: ``intvit run`` on 60,000
    images took 10 s to stop and a second Ctrl-C aborted the process (red team, 2026-12-06)."""
    steps, started = [], threading.Event()

    def long_call():
        started.set()
        for i in range(400):                      # 20 s unless cancelled
            callers.check_cancelled()
            steps.append(i)
            time.sleep(0.05)
    main = threading.get_ident()
    threading.Thread(target=lambda: (started.wait(10), time.sleep(0.3), signal.pthread_kill(main, signal.SIGINT)),
                     daemon=True).start()
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        callers.on_worker(long_call)
    assert callers.on_worker(lambda: "next call") == "next call"      # not queued behind the cancelled one
    assert time.perf_counter() - t0 < 5 and 0 < len(steps) < 100
    callers.check_cancelled()                     # nothing to cancel outside a call


def test_a_module_runs_from_an_atexit_handler(compiled_pair, tmp_path):
    """The workers are shut down before atexit handlers run: such a call raised 'cannot schedule new futures'."""
    _, so, _, _, _ = compiled_pair
    script = ("import atexit, numpy as np\nfrom intvit.runtime import load\n"
              f"m = load({str(so)!r})\nx = np.zeros((2, 3, 32, 32), np.float32)\n"
              "atexit.register(lambda: print('at exit', m(x).shape, flush=True))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "at exit (2, 10)" in out.stdout, out.stderr[-2000:]


def test_the_command_exits_at_once_on_ctrl_c_during_a_long_run(compiled_pair, tmp_path):
    _, so, _, _, _ = compiled_pair
    np.save(tmp_path / "many.npy", np.zeros((20000, 3, 32, 32), np.float32))    # tens of seconds of calls
    proc = subprocess.Popen([sys.executable, "-m", "intvit", "run", str(so), "--input", str(tmp_path / "many.npy")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(8)                                 # imported, loaded, running
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "intvit run: interrupted", err[-2000:]
    assert time.perf_counter() - t0 < 10 and "Traceback" not in err
