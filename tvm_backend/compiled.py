"""``CompiledIntViT``: a compiled integer ViT and its virtual machine (what ``build.compile_onnx`` returns and
``runtime.load`` wraps)."""
from __future__ import annotations

import numpy as np

from .callers import check_cancelled
from .errors import IsaUnavailableError, NoDeviceError


class CompiledIntViT:
    """A compiled integer ViT: ``model(images) -> (logits, int_logits)`` as numpy arrays.

    ``device`` is ``"cpu"`` or ``"cuda"``; the virtual machine is created on
    the first call, so a CUDA module can be built and exported on a machine
    without a GPU. ``isa`` is the CPU GEMMs' instruction set (``ISAS``; None
    for CUDA or unknown): an ``"amx"`` module checks, before its first call,
    that this process may use the AMX tiles (``amx.host_has_amx``), and a
    module for another CPU architecture (``cpu_arch``, e.g. ``"aarch64"``
    built on x86 with ``--cpu neoverse-n1``) refuses to run here.
    ``amx_emulated``: compiled under ``amx_emulator.emulation()``, so its
    tile instructions are the emulator's, whose faults a call raises.
    """

    def __init__(self, executable, batch: int, input_name: str, input_shape, input_dtype, device: str = "cpu",
                 isa: str | None = None, cpu_arch: str | None = None):
        self.executable, self.device, self.isa, self.cpu_arch = executable, device, isa, cpu_arch
        self.batch, self.input_name = batch, input_name
        self.input_shape, self.input_dtype = tuple(input_shape), input_dtype
        self._vm = self._dev = None
        self.tuning = None          # a tuning.TuningSummary when compiled with tune=N
        self.lifted, self.lifted_values = [], []     # build.compile_onnx(lift_weights=...): main's extra inputs
        self.amx_emulated = False   # compiled under amx_emulator.emulation(): its tiles are the emulator's

    def replica(self) -> "CompiledIntViT":
        """The same compiled module with a virtual machine of its own (created on first call): what one more
        caller thread runs on (``runtime.LoadedModule``)."""
        twin = CompiledIntViT(self.executable, self.batch, self.input_name, self.input_shape, self.input_dtype,
                              self.device, self.isa, self.cpu_arch)
        twin.amx_emulated = self.amx_emulated
        return twin

    @property
    def dev(self):
        """The device, checked once (not on every call)."""
        if self._dev is None:
            import tvm
            dev = tvm.cuda(0) if self.device == "cuda" else tvm.cpu()
            if not dev.exist:
                raise NoDeviceError("this module was compiled for an NVIDIA GPU (--target cuda) and this machine "
                                    "has none TVM can use; run it on a GPU machine, or compile for --target llvm")
            self._dev = dev
        return self._dev

    @property
    def vm(self):
        if self._vm is None:
            from tvm.runtime.vm import VirtualMachine     # not tvm.relax: a runtime-only TVM has it too
            if self.device == "cuda":
                from .cuda import install_loader
                install_loader()
            from .arm import machine_arch
            if self.cpu_arch not in (None, machine_arch()):
                raise IsaUnavailableError(
                    f"this module was compiled for {self.cpu_arch} CPUs and this machine is {machine_arch()}: "
                    "write it to a file (intvit compile --cpu ... -o model.so) and run it on such a machine")
            if self.isa == "amx" and not self.amx_emulated:
                from .amx import host_has_amx
                if not host_has_amx():       # before any tile instruction: without the grant they raise SIGILL
                    raise IsaUnavailableError(
                        "this module's GEMMs use Intel AMX, and this CPU has no AMX-INT8 or Linux refused this "
                        "process the tile state (arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA)); recompile it "
                        "with isa='vnni' (intvit compile on this machine picks what it can run)")
            self._vm = VirtualMachine(self.executable, self.dev)
        return self._vm

    def __reduce__(self):
        raise TypeError("a compiled intvit module cannot be pickled (to another process, e.g. a multiprocessing "
                        "pool): its code lives in this process; write it with intvit compile (or "
                        "compile_to_file) and call intvit.runtime.load(path) in each process")

    def __call__(self, images):
        """``(logits, int_logits)`` for any number of images of the compiled image shape.

        The module runs batches of exactly ``self.batch``: ``N`` images take
        ``ceil(N / batch)`` calls, the last one filled up with copies of its own
        last image, and the outputs are cut back to ``N``. Every op of the
        integer graph works per image (static scales, per-token rows), so an
        image's output does not depend on what else is in its batch.
        """
        import tvm
        arr = np.asarray(_host_array(images))
        if arr.ndim == 0 or arr.dtype.kind in "OUSV":
            raise TypeError(f"expected images as an array [N, {', '.join(map(str, self.input_shape[1:]))}] (numpy "
                            f"or torch), got {type(images).__name__}" + (f" of {arr.dtype}" if arr.ndim else ""))
        if arr.ndim != len(self.input_shape) or arr.shape[1:] != self.input_shape[1:]:
            raise ValueError(f"expected input shape {['N', *self.input_shape[1:]]} (any number N of images; "
                             f"this module runs batches of {self.batch}), got {list(arr.shape)}")
        count = arr.shape[0]
        if count == 0:
            raise ValueError(f"got an empty batch (0 images); this module runs batches of {self.batch}")
        arr = self.check_input_dtype(arr)
        self._check_not_lifted()
        outputs = []
        for start in range(0, count, self.batch):
            check_cancelled()                     # the caller was interrupted (Ctrl-C): stop between batches
            chunk = _filled(arr[start:start + self.batch], self.batch)
            out = self.vm["main"](tvm.runtime.tensor(np.ascontiguousarray(chunk), self.dev))
            if self.amx_emulated:
                from .amx_emulator import check
                check()
            outputs.append((out[0].numpy(), out[1].numpy()))
        return tuple(np.concatenate([o[k] for o in outputs])[:count] for k in range(2))

    def check_input_dtype(self, arr: np.ndarray) -> np.ndarray:
        """``arr`` as the module's input dtype, refusing what a cast would silently change: integers or
        booleans into a float module (they are not normalised images), anything but int8 into an int8
        one, and NaN/±Inf (``ops.check_finite_input``)."""
        from ..ops.checks import check_finite_input
        if self.input_dtype == "int8":
            if arr.dtype != np.int8:
                raise TypeError(f"this module takes int8 images (exported with --int8-input), got {arr.dtype}")
            return arr
        if not np.issubdtype(arr.dtype, np.floating):
            raise TypeError(f"this module takes float images (normalised as the float model expects), got "
                            f"{arr.dtype}; convert and normalise them first, e.g. (x / 255 - mean) / std")
        check_finite_input(arr)
        with np.errstate(over="ignore"):
            cast = arr.astype(self.input_dtype, copy=False)
        if cast is not arr and not np.isfinite(cast).all():     # finite float64 beyond float32's range
            raise ValueError(f"the images hold values beyond {self.input_dtype}'s range (|x| > "
                             f"{np.finfo(self.input_dtype).max:.3g}); normalise them as the float model expects")
        return cast

    def run_on_device(self, tensor):
        """Run on an input already on ``self.dev`` (a ``tvm.runtime.Tensor`` of the compiled shape and dtype);
        returns ``(logits, int_logits)`` as tensors on the device: nothing is copied to or from the host."""
        self._check_not_lifted()
        return self.vm["main"](tensor)

    def _check_not_lifted(self) -> None:
        if self.lifted:
            raise TypeError(f"this module was compiled with lift_weights: its main takes the images and "
                            f"{len(self.lifted)} weight tensors; call vm['main'](images, *weights) "
                            "(the weights are in .lifted_values)")


def _filled(chunk: np.ndarray, batch: int) -> np.ndarray:
    """``chunk`` (1..batch images) filled up to ``batch`` images with copies of its last one."""
    short = batch - chunk.shape[0]
    return chunk if short == 0 else np.concatenate([chunk, np.repeat(chunk[-1:], short, axis=0)])


def _host_array(images):
    """A numpy view of ``images``: a torch tensor is detached and brought to the host first (bfloat16, which
    numpy lacks, widened exactly to float32)."""
    if not hasattr(images, "detach"):
        return images
    try:
        t = images.detach().cpu()
        return (t.float() if str(t.dtype) == "torch.bfloat16" else t).numpy()
    except (TypeError, RuntimeError, NotImplementedError) as exc:      # float8, sparse, meta, conjugate views
        raise TypeError(f"cannot read these images as an array (a torch tensor of dtype {images.dtype}, layout "
                        f"{images.layout}, on {images.device}: {str(exc).splitlines()[0][:100]}); pass a dense "
                        "float32 tensor, e.g. images.to_dense().float()") from None
