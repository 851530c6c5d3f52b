"""No import cycle in `specjax.models` (issue 16).

Two checks: statically, the graph of module-level imports among
`specjax/models/*.py` is acyclic (imports inside functions run later and do
not count); dynamically, every module imports alone in a fresh interpreter
(`python -c "import specjax.models.X"`), which is where a cycle shows up as
an ImportError of a partially initialised module.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path


PACKAGE = "specjax.models"
ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "specjax" / "models"


def module_name(path: Path) -> str:
    return PACKAGE if path.stem == "__init__" else f"{PACKAGE}.{path.stem}"


def module_level_imports(source: str, name: str) -> set[str]:
    """Absolute names of the modules `source` (module `name`) imports when it
    is imported: import statements outside function bodies (class bodies and
    module-level `if`/`try` run at import time and count; `if TYPE_CHECKING:`
    blocks do not). `from P import A` counts as importing P.A when A is a
    module of this package, else as importing P."""
    package = name if name == PACKAGE else name.rsplit(".", 1)[0]
    found = set()

    def absolute(module: str | None, level: int) -> str:
        if not level:
            return module or ""
        base = package.split(".")[: len(package.split(".")) - (level - 1)]
        return ".".join(base + ([module] if module else []))

    def visit(node):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = absolute(node.module, node.level)
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.add(sub if (MODELS / f"{a.name}.py").exists() and base == PACKAGE
                          else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of `specjax.models` it imports at module level."""
    paths = sorted(MODELS.glob("*.py"))
    names = {module_name(p) for p in paths}
    return {module_name(p): {m for m in module_level_imports(p.read_text(), module_name(p))
                             if m in names and m != module_name(p)}
            for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None if it is acyclic."""
    state: dict[str, int] = {}  # 1: on the DFS stack, 2: done
    stack: list[str] = []

    def dfs(u):
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in state and (cycle := dfs(v)):
                return cycle
        state[u] = 2
        stack.pop()
        return None

    for u in sorted(graph):
        if u not in state and (cycle := dfs(u)):
            return cycle
    return None


def test_checker_sees_cycles_and_module_level_imports():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    src = ("import jax\nfrom specjax.models import linear, ModelConfig\n"
           "from .config import Params\nfrom . import cache\n"
           "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import specjax.models.lm\n"
           "try:\n    import specjax.models.hf_io as h\nexcept ImportError:\n    pass\n"
           "class C:\n    from specjax.models import tokenizer\n"
           "def f():\n    from specjax.models import loading\n")
    assert module_level_imports(src, f"{PACKAGE}.layout") == {
        "jax", "typing", f"{PACKAGE}.linear", PACKAGE, f"{PACKAGE}.config", f"{PACKAGE}.cache",
        f"{PACKAGE}.hf_io", f"{PACKAGE}.tokenizer"}


def test_module_level_import_graph_is_acyclic():
    graph = import_graph()
    assert f"{PACKAGE}.layout" in graph and f"{PACKAGE}.layout_probe" not in graph
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle among specjax/models: {' -> '.join(cycle)}"
    # the layout choice sits below the parameter pytree, which sits below the loaders
    assert f"{PACKAGE}.layout" in graph[f"{PACKAGE}.params"]
    assert not {f"{PACKAGE}.params", f"{PACKAGE}.decoder", f"{PACKAGE}.loading"} & graph[
        f"{PACKAGE}.layout"]


# Runs in one fresh interpreter: forks one child per module named in argv, each
# importing that module alone (no specjax module is loaded before the fork;
# only the third-party libraries specjax uses are, found by a first child, so
# that a child costs milliseconds instead of a full interpreter start with jax).
# Prints the failures as JSON {module: traceback}.
_DRIVER = """
import importlib, json, os, sys, traceback

def in_child(fn):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            out, code = fn(), 0
        except BaseException:
            out, code = traceback.format_exc(), 1
        os.write(w, json.dumps(out).encode())
        os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        out = json.loads(f.read() or "null")
    return os.waitpid(pid, 0)[1] == 0, out

def third_party():
    before = set(sys.modules)
    importlib.import_module("specjax.models")
    return [m for m in sys.modules if m not in before and m.split(".")[0] != "specjax"]

ok, deps = in_child(third_party)
for m in deps if ok else []:
    try:
        importlib.import_module(m)
    except BaseException:
        pass
assert not [m for m in sys.modules if m.split(".")[0] == "specjax"], "specjax preloaded"
failed = {}
for name in sys.argv[1:]:
    ok, out = in_child(lambda: importlib.import_module(name) and None)
    if not ok:
        failed[name] = out
print(json.dumps(failed))
"""


def test_every_module_imports_alone_in_a_fresh_interpreter():
    modules = sorted(import_graph())
    proc = subprocess.run([sys.executable, "-c", _DRIVER, *modules], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    failed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not failed, "\n\n".join(f"import {m} alone failed:\n{e}" for m, e in failed.items())
