"""A results file that says where it came from, written whole or not at all.

Every JSON a benchmark or evaluation writes (``intvit bench``, ``intvit eval --json``,
``intvit analyze --json``, the demo's report, the ``python -m intvit.bench.*`` studies)
goes through ``write_record``: the report gets the three provenance keys it lacks —
``command`` (what made it), ``date`` (local date and time) and ``machine`` (``machine.machine_facts``:
CPU model and flags, LLVM's CPU name, cores, threads, GPU, OS, and the versions of
Python, intvit, torch, ONNX Runtime, TVM, transformers and numpy) — and is written
through ``files.write_atomic`` (a temp beside the target renamed over it), so a reader
never sees half a file and a run that fails leaves the previous one intact.
``bench/results/README.md`` indexes the files committed under ``bench/results``.
"""
from __future__ import annotations

import json
import os
import shlex
import sys
import time

from ..files import write_atomic

PROVENANCE = ("command", "date", "machine")


def command_line(module: str, argv: list[str] | None) -> str:
    """The command that ran ``module`` (``python -m intvit.bench.X``) with ``argv`` (``sys.argv[1:]`` when None)."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python", "-m", module, *map(shlex.quote, map(str, args))])


def provenance(command: str, threads: int | None = None, keys=PROVENANCE) -> dict:
    """The ``keys`` of ``{"command", "date", "machine"}`` for ``command`` run now on this machine with
    ``threads`` threads (default: intvit's thread setting, else every core)."""
    found = {"command": command, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if "machine" in keys:
        from ..tvm_backend.threads import ENV
        from .machine import machine_facts
        found["machine"] = machine_facts(threads or int(os.environ.get(ENV, 0)) or os.cpu_count() or 1)
    return {k: found[k] for k in keys}


def write_record(path, report: dict, command: str, threads: int | None = None) -> str:
    """Write ``report`` to ``path`` as JSON, atomically, with the ``PROVENANCE`` keys it lacks put first;
    returns ``path``. Keys the report has are kept (``intvit bench`` records its own date and machine)."""
    record = {**provenance(command, threads, [k for k in PROVENANCE if k not in report]), **report}
    text = json.dumps(record, indent=1) + "\n"       # a report that cannot be written fails before the disk
    os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))), exist_ok=True)
    return write_atomic(path, text)
