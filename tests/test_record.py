"""Results files say where they came from and are never seen half-written (``bench/record.py``), and
``bench/results/README.md`` names every committed results file and nothing else."""
import json
import os
import re

import pytest

from intvit.bench.record import PROVENANCE, command_line, write_record

RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "results")


def test_a_record_gets_the_command_date_and_machine_it_lacks_and_keeps_what_it_has(tmp_path):
    import intvit
    path = write_record(tmp_path / "r.json", {"rows": [1, 2]}, "intvit eval --json r.json", threads=1)
    record = json.loads(open(path).read())
    assert list(record)[:3] == list(PROVENANCE) and record["rows"] == [1, 2]
    assert record["command"] == "intvit eval --json r.json" and re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d", record["date"])
    assert record["machine"]["intvit"] == intvit.__version__ and record["machine"]["threads"] == 1
    assert record["machine"]["cpu"] and record["machine"]["tvm"]
    own = write_record(tmp_path / "own.json", {"date": "2026-01-01", "machine": {"host": "h"}, "x": 1}, "cmd")
    assert json.loads(open(own).read()) == {"command": "cmd", "date": "2026-01-01", "machine": {"host": "h"}, "x": 1}


def test_a_record_that_cannot_be_written_leaves_the_old_file_whole_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    write_record(path, {"v": 1}, "first")
    before = path.read_text()
    with pytest.raises(TypeError):                       # not JSON: fails before the disk is touched
        write_record(path, {"v": object()}, "second")
    assert path.read_text() == before

    def replace_fails(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", replace_fails)
    with pytest.raises(OSError, match="No space left"):
        write_record(path, {"v": 2}, "third")
    assert path.read_text() == before and sorted(os.listdir(tmp_path)) == ["r.json"]


def test_the_command_line_is_quoted_as_a_shell_would_take_it():
    assert command_line("intvit.bench.qat_eval", ["--out", "a b.json", "--lr", 2e-05]) == \
        "python -m intvit.bench.qat_eval --out 'a b.json' --lr 2e-05"


def test_the_results_index_names_every_results_file_and_only_those():
    index = open(os.path.join(RESULTS, "README.md")).read()
    named = set(re.findall(r"`([\w.+-]+\.(?:json|png))`", index))
    present = {f for f in os.listdir(RESULTS) if f.endswith((".json", ".png"))}
    assert present - named == set(), "results files missing from bench/results/README.md"
    assert named - present == set(), "bench/results/README.md names files that do not exist"
