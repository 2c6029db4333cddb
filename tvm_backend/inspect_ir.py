"""Inspect a lowered Relax module: no float op between the input quantizer and the dequantize.

After ``LegalizeOps`` every operator of ``main`` is a ``call_tir`` into a
PrimFunc. The integer region of ``main``'s bindings starts after the first
binding that yields an integer tensor (the input quantizer's cast to int8)
and ends where the trailing run of float bindings (the dequantize) begins.
Inside it, every bound tensor must be integer and every called PrimFunc must
contain no floating-point type at all.
"""
from __future__ import annotations


def _name(x) -> str:
    return str(getattr(x, "name_hint", None) or getattr(x, "name", x))


def _dtype(var) -> str:
    ty = getattr(var, "ty", None)
    return str(getattr(ty, "dtype", ""))


def _is_float(dtype: str) -> bool:
    return dtype.startswith(("float", "bfloat"))


def float_ops_in_integer_region(mod) -> list[str]:
    """Names of bindings / PrimFuncs that use floats inside the integer region (empty = integer-only)."""
    from tvm import relax

    lowered = relax.transform.LegalizeOps()(mod)
    main = lowered["main"]
    bindings = [b for block in main.body.blocks for b in block.bindings]
    problems = []
    start = next((k for k, b in enumerate(bindings) if _dtype(b.var).startswith(("int", "uint"))), None)
    if start is None:
        return ["no integer region found"]
    end = len(bindings)
    while end > start + 1 and (not _dtype(bindings[end - 1].var) or _is_float(_dtype(bindings[end - 1].var))):
        end -= 1                               # the dequantize (and the output tuple)
    for b in bindings[start + 1:end]:
        dtype = _dtype(b.var)
        if not dtype or _is_float(dtype):
            problems.append(f"{_name(b.var)}: {dtype or 'non-tensor'}")
        value = b.value
        if isinstance(value, relax.Call) and value.op.name == "relax.call_tir":
            gv = value.args[0]
            if "float" in lowered[gv].script():
                problems.append(f"{_name(gv)}: PrimFunc uses floating point")
    return problems
