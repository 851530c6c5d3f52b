"""Benchmark results in the layout of a seed paper's table.

A paper-table config (`configs/papers/*.py`) is an ordinary experiment config
with `paper_table = NAME`; after the run, `run_experiment` writes
`paper_table.md` with `render(NAME, records, ...)`: the paper's rows and
columns filled with this run's measurements, under a header that names the
paper, the table mirrored, the paper's models and hardware, and the stand-ins
used here. Every number is computed from the run's `metrics.Record`s with the
definitions of `specjax.bench.metrics` (tau = block efficiency = mean tokens
per draft-verify step, bonus token included; speedup = median over prompts of
baseline seconds / method seconds in the same run).

Layouts (`LAYOUTS`):
  speedup_by_task   Spec-Bench's layout (Xia et al., arXiv:2401.07851), used by
                    Token Recycling, PEARL and CS Drafting: one row per method,
                    the median speedup per task (MT-bench's eight categories
                    pooled, HumanEval as its own task), the mean accepted
                    tokens (tau) and the overall speedup.
  leviathan         Leviathan et al. (arXiv:2211.17192) Table 3: task, draft
                    model M_q, temperature, gamma, alpha, speed. alpha is the
                    per-token acceptance rate that gives the measured tau under
                    the paper's i.i.d. model, tau = (1 - a^(g+1)) / (1 - a).
  block_efficiency  SpecTr / RSD / DySpec: per method the draft shape, block
                    efficiency (tau), the measured step cost, tau / step cost
                    (RSD's "MBSU" with the step cost measured instead of
                    modelled from parameter counts), latency per token, token
                    rate and speedup.
  best_fixed_k      SpecDec++ (arXiv:2405.19715) Table: per method the mean
                    accepted length, target forwards per token, speedup and the
                    gain over the best fixed-K chain of the same run.
The theory paper (Hu et al., arXiv:2502.18779) is mirrored by
`configs/papers/optimal_multidraft.py`, which runs `experiments.theory_optimal`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import statistics
from collections.abc import Callable, Sequence

from specjax.bench import metrics
from specjax.bench.metrics import Record

MT_BENCH = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem",
            "humanities")
TASK_NAMES = {**{c: "MT-bench" for c in MT_BENCH}, "translation": "Translation",
              "summarization": "Summarization", "qa": "QA", "math_reasoning": "Math",
              "rag": "RAG", "humaneval": "HumanEval"}


def task_of(category: str) -> str:
    """Spec-Bench task of a prompt category (MT-bench's eight pooled)."""
    return TASK_NAMES.get(category, category)


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """What a layout may show besides the records."""

    model: str
    draft_model: str
    temperature: float
    baseline: str = "autoregressive"


@dataclasses.dataclass(frozen=True)
class PaperNote:
    """The header of a paper table: which table of which paper, on what."""

    paper: str  # citation with arXiv id
    table: str  # the paper's table mirrored, and what its rows/columns are
    paper_setting: str  # the paper's models and hardware
    here: str = ""  # what stands in for them (model pair is added from RunInfo)


def _median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _x(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.2f}x"


def _f(v: float, fmt: str = ".2f") -> str:
    return "-" if math.isnan(v) else format(v, fmt)


def _by_method(records: Sequence[Record]) -> dict[str, list[Record]]:
    out: dict[str, list[Record]] = {}
    for r in records:
        out.setdefault(r.method, []).append(r)
    return out


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return (["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            + ["| " + " | ".join(r) + " |" for r in rows])


def speedup_by_task(records: Sequence[Record], info: RunInfo) -> list[str]:
    """Rows: methods; columns: median speedup per task, MAT (tau), overall speedup."""
    tasks = list(dict.fromkeys(task_of(r.category) for r in records))
    base = {r.question_id: r for r in records if r.method == info.baseline}
    rows = []
    for m, rs in _by_method(records).items():
        cells = [_x(_median(metrics.speedup_ratios([r for r in rs if task_of(r.category) == t], base)))
                 for t in tasks]
        tau = metrics.loop_tau(rs)
        rows.append([m, *cells, _f(tau), _x(_median(metrics.speedup_ratios(rs, base)))])
    return _table(["Method", *tasks, "MAT (tau)", "Overall"], rows)


def acceptance_from_tau(tau: float, gamma: int) -> float:
    """alpha with (1 - alpha^(gamma+1)) / (1 - alpha) = tau (Leviathan et al. Eq. 1).

    The left side increases from 1 (alpha = 0) to gamma + 1 (alpha = 1); solved by
    bisection. NaN when tau is NaN or gamma < 1.
    """
    if math.isnan(tau) or gamma < 1:
        return float("nan")
    tau = min(max(tau, 1.0), gamma + 1.0)
    lo, hi = 0.0, 1.0
    for _ in range(60):
        a = (lo + hi) / 2
        e = gamma + 1.0 if a == 1.0 else (1 - a ** (gamma + 1)) / (1 - a)
        lo, hi = (a, hi) if e < tau else (lo, a)
    return (lo + hi) / 2


def draft_length(method: str) -> int | None:
    """gamma of a method name: the value of `k=`, `max_k=` or `gamma=` in it."""
    m = re.search(r"(?:^|[(,/])(?:k|max_k|gamma)=(\d+)", method)
    return int(m.group(1)) if m else None


def leviathan(records: Sequence[Record], info: RunInfo) -> list[str]:
    """Rows: (task, method) for methods with a draft length; Leviathan et al. Table 3."""
    base = {r.question_id: r for r in records if r.method == info.baseline}
    rows = []
    tasks = list(dict.fromkeys(task_of(r.category) for r in records))
    for t in tasks:
        for m, rs in _by_method(records).items():
            gamma = draft_length(m)
            if m == info.baseline or gamma is None:
                continue
            rs = [r for r in rs if task_of(r.category) == t]
            tau = metrics.loop_tau(rs)
            rows.append([t, info.draft_model or "self", f"{info.temperature:g}", m, str(gamma),
                         _f(acceptance_from_tau(tau, gamma)), _f(tau),
                         _x(_median(metrics.speedup_ratios(rs, base)))])
    return _table(["Task", "M_q", "Temp", "method", "gamma", "alpha", "tau", "Speed"], rows)


def block_efficiency(records: Sequence[Record], info: RunInfo) -> list[str]:
    """Rows: methods; block efficiency, step cost, MBSU (measured), latency, speedup."""
    base_rs = [r for r in records if r.method == info.baseline]
    base = {r.question_id: r for r in base_rs}
    rows = []
    for m, rs in _by_method(records).items():
        tau = metrics.loop_tau(rs)
        cost = metrics.step_cost(rs, base_rs)
        tps = _median([r.tokens_per_second for r in rs])
        rows.append([m, _f(tau), _x(cost), _f(metrics.modelled_speedup(tau, cost)),
                     _f(1000.0 / tps if tps > 0 else float("nan"), ".1f"), _f(tps, ".2f"),
                     _x(_median(metrics.speedup_ratios(rs, base)))])
    return _table(["Method", "Block efficiency (tau)", "Step cost (x AR)",
                   "MBSU (tau / step cost)", "Latency (ms/token)", "Token rate (tokens/s)",
                   "Speedup"], rows)


def best_fixed_k(records: Sequence[Record], info: RunInfo) -> list[str]:
    """Rows: methods; accepted length, forwards/token, speedup, gain over the best fixed K.

    The best fixed K is the `sd_chain(k=...)` method with the highest median speedup.
    """
    base = {r.question_id: r for r in records if r.method == info.baseline}
    groups = _by_method(records)
    speed = {m: _median(metrics.speedup_ratios(rs, base)) for m, rs in groups.items()}
    fixed = {m: s for m, s in speed.items() if m.startswith("sd_chain(k=") and "+" not in m}
    best = max(fixed, key=fixed.get) if fixed else None
    rows = []
    for m, rs in groups.items():
        fwd = metrics.forwards_per_token(rs)
        gain = (f"{100 * (speed[m] / speed[best] - 1):+.1f}%" if best and m != best
                and not math.isnan(speed[m]) else ("(best fixed K)" if m == best else "-"))
        rows.append([m, _f(metrics.loop_tau(rs)), _f(fwd, ".3f"), _x(speed[m]), gain])
    return _table(["Method", "Mean accepted length (tau)", "Target fwd / token", "Speedup",
                   "vs best fixed K"], rows)


LAYOUTS: dict[str, Callable[[Sequence[Record], RunInfo], list[str]]] = {
    "speedup_by_task": speedup_by_task,
    "leviathan": leviathan,
    "block_efficiency": block_efficiency,
    "best_fixed_k": best_fixed_k,
}


def render(layout: str, note: PaperNote, records: Sequence[Record], info: RunInfo) -> str:
    """The paper table as Markdown: the note, then the layout's table."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown paper table layout {layout!r}; valid: {sorted(LAYOUTS)}")
    if not records:
        raise ValueError("no records to tabulate")
    pair = f"{info.draft_model} -> {info.model}" if info.draft_model else info.model
    n = len({r.question_id for r in records})
    head = [f"**{note.paper}**, {note.table}.", "",
            f"- Paper: {note.paper_setting}.",
            f"- Here: {pair}, temperature {info.temperature:g}, {n} prompts, this machine's "
            f"CPU{'; ' + note.here if note.here else ''}.",
            "- tau = tokens per draft-verify step (bonus token included); speedup = median "
            "over prompts of autoregressive seconds / method seconds, same run.", ""]
    return "\n".join(head + LAYOUTS[layout](records, info)) + "\n"
