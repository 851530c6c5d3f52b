"""Per-prompt records and the summary metrics of a benchmark run.

Definitions (DESIGN.md section 7):
  tau: mean tokens committed per target forward in the decode loop, the
    bonus / correction token counted (prefill excluded). The autoregressive
    baseline has tau = 1.
  target forwards per token: all target forwards (prefill included) divided
    by generated tokens.
  tokens/s: generated tokens / wall-clock seconds of the jitted call,
    compilation excluded (compilation is reported separately).
  speedup: per prompt, (baseline seconds / method seconds) with the
    autoregressive baseline run on the same prompt in the same run; reported
    as the median over prompts, with the 25-75% spread.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
from typing import Sequence

import jax
import numpy as np

from specjax.decode import tau_of_hist


def add_hist(a: Sequence[int], b: Sequence[int]) -> np.ndarray:
    """Sum of two accept histograms of possibly different lengths."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    n = max(len(a), len(b))
    return np.pad(a, (0, n - len(a))) + np.pad(b, (0, n - len(b)))


@dataclasses.dataclass
class Record:
    """One (method, prompt) generation."""

    method: str
    question_id: str
    category: str
    new_tokens: int
    seconds: float
    target_calls: int
    steps: int  # draft-verify steps (0 for autoregressive)
    accept_hist: list[int]  # steps that accepted exactly k drafts
    compile_seconds: float = 0.0
    tokens: list[int] = dataclasses.field(default_factory=list)  # all turns, concatenated
    turn_texts: list[str] = dataclasses.field(default_factory=list)
    turn_tokens: list[int] = dataclasses.field(default_factory=list)  # new tokens per turn
    turn_seconds: list[float] = dataclasses.field(default_factory=list)

    @property
    def tau(self) -> float:
        return tau_of_hist(self.accept_hist)

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else float("nan")


@dataclasses.dataclass
class Summary:
    method: str
    prompts: int
    tau: float
    forwards_per_token: float
    tokens_per_second: float  # median over prompts
    speedup: float  # median of per-prompt ratios vs baseline
    speedup_q25: float
    speedup_q75: float
    compile_seconds: float
    identical: str  # "yes", "no (k/n)", or "-" when not checked
    accept_per_depth: list[float]  # P(at least d drafts accepted), d = 1..


def _quantile(xs, q):
    return float(np.quantile(np.asarray(xs), q)) if xs else float("nan")


def summarize(records: Sequence[Record], baseline: str | None, check_identity: bool) -> list[Summary]:
    """Summary rows per method, in first-seen order."""
    methods = list(dict.fromkeys(r.method for r in records))
    base = {r.question_id: r for r in records if r.method == baseline}
    out = []
    for m in methods:
        rs = [r for r in records if r.method == m]
        hist = functools.reduce(add_hist, (r.accept_hist for r in rs), np.zeros(1, np.int64))
        total_steps = int(hist.sum())
        tau = tau_of_hist(hist)
        # P(at least d drafts accepted in a step), d = 1, 2, ...
        depth_acc = [float(hist[d:].sum() / total_steps) for d in range(1, len(hist))] \
            if total_steps else []
        ratios = [base[r.question_id].seconds / r.seconds for r in rs
                  if r.question_id in base and r.seconds > 0]
        identical = "-"
        if check_identity and baseline and m != baseline:
            same = sum(base[r.question_id].tokens == r.tokens for r in rs if r.question_id in base)
            n = sum(r.question_id in base for r in rs)
            identical = "yes" if same == n else f"NO ({same}/{n})"
        out.append(Summary(
            method=m, prompts=len(rs), tau=tau,
            forwards_per_token=sum(r.target_calls for r in rs) / max(1, sum(r.new_tokens for r in rs)),
            tokens_per_second=statistics.median(r.tokens_per_second for r in rs),
            speedup=_quantile(ratios, 0.5), speedup_q25=_quantile(ratios, 0.25),
            speedup_q75=_quantile(ratios, 0.75),
            compile_seconds=sum(r.compile_seconds for r in rs),
            identical=identical, accept_per_depth=depth_acc,
        ))
    return out


def markdown_table(rows: Sequence[Summary]) -> str:
    head = ("| method | prompts | tau (tokens/forward, bonus incl.) | target fwd/token | "
            "tokens/s (median) | speedup (median [q25, q75]) | compile s | identical to AR |")
    lines = [head, "|" + "---|" * 8]
    for s in rows:
        lines.append(
            f"| {s.method} | {s.prompts} | {s.tau:.2f} | {s.forwards_per_token:.3f} | "
            f"{s.tokens_per_second:.1f} | {s.speedup:.2f}x [{s.speedup_q25:.2f}, {s.speedup_q75:.2f}] | "
            f"{s.compile_seconds:.1f} | {s.identical} |")
    return "\n".join(lines)


class CompileTimer:
    """Accumulates JAX compilation time (tracing + lowering + XLA) while active."""

    _EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
               "/jax/core/compile/jaxpr_to_mlir_module_duration",
               "/jax/core/compile/backend_compile_duration")
    _active: list["CompileTimer"] = []
    _registered = False

    def __init__(self):
        self.seconds = 0.0

    @classmethod
    def _listener(cls, event, duration, **_):
        if event in cls._EVENTS:
            for t in cls._active:
                t.seconds += duration

    def __enter__(self):
        if not CompileTimer._registered:
            jax.monitoring.register_event_duration_secs_listener(CompileTimer._listener)
            CompileTimer._registered = True
        CompileTimer._active.append(self)
        return self

    def __exit__(self, *exc):
        CompileTimer._active.remove(self)
