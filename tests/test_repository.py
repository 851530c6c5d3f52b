"""The repository as a new user meets it: self-contained, and layered.

- `make run`'s config runs from a copy of the repository in a directory with
  no sibling folders (nothing may be read from outside the repository except
  the asset cache, `~/.cache/specjax`, filled by pinned, hash-checked fetches);
- no tracked file refers to a path beside the repository;
- the layers: nothing in `specjax` imports `experiments` or `configs`; the core
  (`models`, `verify`, `trees`, `theory`, `sampling`, `policies`, `drafters`,
  `decode`) never imports `bench`; and `models`, `verify`, `trees`, `theory`
  never import `drafters` either;
- `specjax.drafters` and `specjax.bench` expose the names the README uses.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def tracked_files() -> list[str]:
    """The repository's files as a clone has them (git's index), else the tree."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True,
                             capture_output=True).stdout.decode()
        return [f for f in out.split("\0") if f and (ROOT / f).exists()]
    except (OSError, subprocess.CalledProcessError):
        skip = {".venv", "workdir", ".git", "__pycache__", "dist", "build"}
        return [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                if p.is_file() and not skip & set(p.relative_to(ROOT).parts)]


def module_imports(path: Path) -> set[str]:
    """Every module a Python file imports, at any depth (function-level too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


# (importing package, packages it must not import)
LAYERS = [
    ("specjax", ("experiments", "configs", "tests")),
    ("specjax.models", ("specjax.drafters", "specjax.bench", "specjax.decode")),
    ("specjax.verify", ("specjax.drafters", "specjax.bench", "specjax.decode")),
    ("specjax.trees", ("specjax.drafters", "specjax.bench", "specjax.decode")),
    ("specjax.theory", ("specjax.drafters", "specjax.bench", "specjax.decode")),
    ("specjax.sampling", ("specjax.drafters", "specjax.bench")),
    ("specjax.policies", ("specjax.bench",)),
    ("specjax.drafters", ("specjax.bench",)),
    ("specjax.decode", ("specjax.bench",)),
]


def test_layering():
    bad = []
    for path in sorted((ROOT / "specjax").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for name in module_imports(path):
            for package, forbidden in LAYERS:
                if _under(module, package):
                    bad += [f"{module} imports {name}" for f in forbidden if _under(name, f)]
    assert not bad, "layering violations:\n" + "\n".join(sorted(set(bad)))


def test_public_faces_expose_the_readme_names():
    import specjax.bench
    import specjax.drafters

    readme = (ROOT / "README.md").read_text()
    for package in (specjax.drafters, specjax.bench):
        pattern = rf"from {re.escape(package.__name__)} import ([A-Za-z_][A-Za-z_0-9, ]*)"
        used = {n.strip() for m in re.finditer(pattern, readme) for n in m.group(1).split(",")}
        used |= set(re.findall(rf"{re.escape(package.__name__)}\.([A-Z][A-Za-z0-9_]*)", readme))
        assert used, f"the README uses no names of {package.__name__}"
        missing = sorted(n for n in used if not hasattr(package, n))
        assert not missing, f"{package.__name__} lacks {missing}"
        assert set(package.__all__) <= set(dir(package))
    for name in ("PromptLookup", "TokenRecycling", "DraftModel", "Kangaroo", "Swift"):
        assert name in specjax.drafters.__all__


OUTSIDE = re.compile(r"\.\./shared|/work/shared|shared/data/")


def test_no_tracked_file_refers_outside_the_repository():
    hits = []
    for f in tracked_files():
        if f.endswith((".py", ".ipynb", ".toml", ".cfg", ".md", ".txt", ".yaml", ".yml",
                       ".json", ".sh")) or f in ("Makefile", ".ci/run"):
            if f == "tests/test_repository.py":
                continue
            text = (ROOT / f).read_text(errors="replace")
            hits += [f"{f}: {m.group(0)}" for m in OUTSIDE.finditer(text)]
    assert not hits, "references outside the repository:\n" + "\n".join(hits)


@pytest.mark.slow
def test_quickstart_runs_from_a_copy_with_no_siblings(tmp_path):
    """`make run`'s config (its tiny variant), run from a copy of the tracked files."""
    clone = tmp_path / "specjax-clone"
    for f in tracked_files():
        (clone / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, clone / f)
    assert [p.name for p in tmp_path.iterdir()] == ["specjax-clone"]  # no siblings
    env = dict(os.environ, PYTHONPATH=str(clone))
    workdir = clone / "workdir" / "quickstart"
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.run", "--config=configs/quickstart.py:tiny",
         f"--workdir={workdir}"],
        cwd=clone, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    text = json.dumps(results)
    for method in ("autoregressive", "pld", "token_recycling"):
        assert method in text
    loaded = subprocess.run(
        [sys.executable, "-c", "import specjax, experiments; print(specjax.__file__, "
         "experiments.__file__)"], cwd=clone, env=env, capture_output=True, text=True, check=True)
    assert all(p.startswith(str(clone)) for p in loaded.stdout.split())
