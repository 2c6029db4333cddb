"""The design card's one-way data flow, checked on the source: every ``intvit`` import (including the ones
made lazily inside functions) goes from a higher layer to a lower one, and no module import circle exists.

Layers, low to high: ``files`` and ``ops`` → ``models`` → ``calibration`` → ``quantize`` → ``tvm_backend`` →
``runtime`` → ``bench`` and ``cli_paths`` (the command line's output checks) → ``cli``. The root package only re-exports the API lazily, so imports of it
(``from .. import __version__``) are not edges.
"""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYER = {"files": 0, "ops": 0, "models": 1, "calibration": 2, "quantize": 3, "tvm_backend": 4, "runtime": 5,
         "bench": 6, "cli_paths": 6, "cli": 7, "__main__": 8}
SKIP_DIRS = {".venv", "tests", ".git", "__pycache__", "results", ".ci", "build", "dist"}


def package_modules() -> dict[str, str]:
    """Dotted name inside ``intvit`` ('' for the root package) → source path."""
    mods = {}
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        for f in files:
            if f.endswith(".py"):
                name = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].replace(os.sep, ".")
                mods[name[:-len("__init__")].rstrip(".") if name.endswith("__init__") else name] = \
                    os.path.join(folder, f)
    return mods


def imports_of(name: str, path: str, mods: dict[str, str]) -> set[str]:
    """The intvit modules ``name`` imports anywhere in its source."""
    package = name.split(".") if name else []
    if not path.endswith("__init__.py"):
        package = package[:-1]
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] + ([node.module] if node.module else [])
            elif node.module and (node.module == "intvit" or node.module.startswith("intvit.")):
                base = [node.module[len("intvit."):]] if node.module != "intvit" else []
            else:
                continue
            module = ".".join(base)
            for alias in node.names:
                sub = ".".join(p for p in (module, alias.name) if p)
                found.add(sub if sub in mods else module)
        elif isinstance(node, ast.Import):
            found |= {a.name[len("intvit."):] for a in node.names if a.name.startswith("intvit.")}
    return {m for m in found if m in mods and m and m != name}


def import_graph() -> dict[str, set[str]]:
    mods = package_modules()
    return {name: imports_of(name, path, mods) for name, path in mods.items()}


def layer(name: str) -> int:
    return LAYER[name.split(".")[0]]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), ignoring package ``__init__``s
    that only gather their submodules."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w in LAYER or w not in graph:        # a subpackage's __init__
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_checker_sees_lazy_imports_and_circles():
    graph = import_graph()
    assert "quantize.onnx_export" in graph["quantize.integer_model"]
    assert "tvm_backend.build" in graph["runtime"] or "tvm_backend.runtime" in graph["runtime"]
    assert cycles({"a.x": {"a.y"}, "a.y": {"a.z"}, "a.z": {"a.x"}, "a.w": {"a.x"}}) == [["a.x", "a.y", "a.z"]]


def test_no_module_import_circle():
    assert cycles(import_graph()) == []


def test_lower_layers_never_import_higher_ones():
    graph = import_graph()
    upward = sorted(f"{m} -> {d}" for m, deps in graph.items() if m for d in deps if layer(d) > layer(m))
    assert upward == []


def test_a_plain_import_reaches_the_documented_dotted_paths():
    """`import intvit` then `intvit.runtime.load`, `intvit.calibration.load_image_folder`, ... as the README
    writes them (the root package loads its subpackages on first use, so `import intvit` stays light)."""
    import subprocess
    import sys
    code = ("import sys, intvit\n"
            "assert 'torch' not in sys.modules\n"
            "fns = [intvit.runtime.load, intvit.calibration.load_image_folder, intvit.tvm_backend.build.compile_onnx,\n"
            "       intvit.ops.requant, intvit.quantize]\n"
            "assert all(callable(f) or f.__name__ == 'intvit.ops.requant' for f in fns)\n"
            "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT + "/..")
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-800:]
