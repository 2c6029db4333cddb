"""Import ``tvm.s_tir.tensor_intrin`` in seconds instead of half a minute.

dlight's tensor-core rule (``dl.gpu.Matmul`` on float16 matmuls for sm_70 and
newer) imports ``tvm.s_tir.tensor_intrin``, which parses every target's
intrinsics with TVMScript. TVMScript's ``prim_func`` entry calls
``inspect.stack()`` once per function, and ``inspect.stack`` looks up the
module of every frame's source file, scanning all of ``sys.modules`` (about
2,000 with torch loaded) each time: 25–40 s for the import on this project's
machine. ``import_tensor_intrinsics`` runs the import with the parser's
``inspect.stack`` replaced by a frame walk that builds the same
``FrameInfo`` records without the module lookup (3 s), and puts the parser's
``inspect`` back afterwards. Once imported, the intrinsics stay registered for
the process, so later dlight runs pay nothing.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import linecache
import sys

PARSER_ENTRIES = ("tvm.tirx.script.parser.entry", "tvm.relax.script.parser.entry", "tvm.script.parser.ir.entry")


def _fast_stack(context: int = 1) -> list[inspect.FrameInfo]:
    """``inspect.stack()`` of the caller, each frame with its current source line, without module lookups."""
    frame, out = sys._getframe(1), []
    while frame is not None:
        file = frame.f_code.co_filename
        line = linecache.getline(file, frame.f_lineno, frame.f_globals)
        out.append(inspect.FrameInfo(frame, file, frame.f_lineno, frame.f_code.co_name,
                                     [line] if line else None, 0 if line else None))
        frame = frame.f_back
    return out


class _InspectWithFastStack:
    """The ``inspect`` module, except that ``stack`` is ``_fast_stack``."""

    def __getattr__(self, name):
        return _fast_stack if name == "stack" else getattr(inspect, name)


@contextlib.contextmanager
def fast_tvmscript_parsing():
    """Within the block, TVMScript's parser entries use ``_fast_stack``; restored on exit."""
    patched = []
    for name in PARSER_ENTRIES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if getattr(module, "inspect", None) is inspect:
            module.inspect = _InspectWithFastStack()
            patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            module.inspect = inspect


def import_tensor_intrinsics() -> None:
    """Import (once per process) ``tvm.s_tir.tensor_intrin``, which dlight's tensor-core rules need."""
    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return
    with fast_tvmscript_parsing():
        importlib.import_module("tvm.s_tir.tensor_intrin")
