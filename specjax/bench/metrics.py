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
  ms per target forward: 1000 * (sum of seconds) / (sum of target forwards)
    over the method's prompts; for a speculative method one forward is one
    whole draft-verify step (drafting, the target forward over the tree,
    acceptance, commit, host overhead), prefill counted as a forward.
  step cost (x AR): ms per target forward of the method / ms per target
    forward of the baseline, both pooled over the prompts both ran. It is the
    measured denominator of the cost model of `theory.performance.speedup`,
    gamma c + c(gamma + 1) / c(1) (draft cost plus verification cost of the
    tree, in autoregressive steps), measured as a whole.
  modelled speedup: tau / step cost, i.e. `theory.performance.speedup` with
    the expected tokens per step E = tau and the step cost both measured in
    this run (1 for the baseline; "-" for a method that neither reports an
    accept histogram nor makes one token per forward, e.g. HF peers with an
    assistant). Pooled over prompts, the measured speedup equals exactly
        modelled * N / (F * tau)
    (N = the autoregressive baseline's forwards = its generated tokens; F =
    the method's forwards = steps + one prefill per prompt turn), so the two
    columns differ only by (i) prefill: the first token of a turn costs one
    forward in both methods, a factor N / (N - 1 + tau) for one turn; (ii) tokens
    accepted beyond max_new_tokens / EOS, counted in tau but not generated;
    (iii) the median of per-prompt ratios vs a pooled ratio. Reading tau,
    step cost and the modelled speedup together shows where the time goes:
    tau is what the drafts buy, the step cost what they cost.
"""

from __future__ import annotations

import dataclasses
import functools
import math
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
    # quality metrics of the output (`bench.quality`) and a decoder's own (`GenResult.metrics`)
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    # a multi-output decoder's outputs of the first turn (beams, drafts), best first
    outputs: list[list[int]] = dataclasses.field(default_factory=list)

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
    ms_per_call: float = float("nan")  # ms per target forward (one step), prefill included
    step_cost: float = float("nan")  # ms per forward / the baseline's, same prompts
    modelled_speedup: float = float("nan")  # tau / step_cost (theory.performance.speedup)


def _quantile(xs, q):
    return float(np.quantile(np.asarray(xs), q)) if xs else float("nan")


def ms_per_call(records: Sequence[Record]) -> float:
    """1000 * total seconds / total target forwards (NaN without forwards)."""
    calls = sum(r.target_calls for r in records)
    return 1000.0 * sum(r.seconds for r in records) / calls if calls else float("nan")


def step_cost(records: Sequence[Record], base_records: Sequence[Record]) -> float:
    """Measured cost of one step (target forward) of `records` in baseline steps.

    Pooled over the prompts present in both lists (matched by question_id);
    NaN when none are or the baseline took no time.
    """
    base = {r.question_id: r for r in base_records}
    rs = [r for r in records if r.question_id in base]
    num, den = ms_per_call(rs), ms_per_call([base[r.question_id] for r in rs])
    return num / den if rs and den > 0 else float("nan")


def speedup_ratios(records: Sequence[Record], base: dict[str, Record]) -> list[float]:
    """Per prompt: baseline seconds / method seconds, for prompts the baseline ran."""
    return [base[r.question_id].seconds / r.seconds for r in records
            if r.question_id in base and r.seconds > 0]


def forwards_per_token(records: Sequence[Record]) -> float:
    """All target forwards (prefill included) / generated tokens."""
    return sum(r.target_calls for r in records) / max(1, sum(r.new_tokens for r in records))


def loop_tau(records: Sequence[Record]) -> float:
    """Tokens per decode-loop forward for the cost model.

    tau of the pooled accept histogram when the method reports steps; 1 when
    every forward made exactly one token (autoregressive decoding); NaN when
    neither is known (a peer that drafts but reports no histogram).
    """
    if sum(r.steps for r in records):
        return tau_of_hist(functools.reduce(add_hist, (r.accept_hist for r in records),
                                            np.zeros(1, np.int64)))
    if sum(r.new_tokens for r in records) == sum(r.target_calls for r in records):
        return 1.0
    return float("nan")


def modelled_speedup(tau: float, cost: float) -> float:
    """tau / step cost: `theory.performance.speedup` with E and the step cost measured."""
    return tau / cost if cost > 0 else float("nan")


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
        ratios = speedup_ratios(rs, base)
        identical = "-"
        if check_identity and baseline and m != baseline:
            same = sum(base[r.question_id].tokens == r.tokens for r in rs if r.question_id in base)
            n = sum(r.question_id in base for r in rs)
            identical = "yes" if same == n else f"NO ({same}/{n})"
        cost = step_cost(rs, list(base.values())) if base else float("nan")
        out.append(Summary(
            method=m, prompts=len(rs), tau=tau,
            forwards_per_token=forwards_per_token(rs),
            tokens_per_second=statistics.median(r.tokens_per_second for r in rs),
            speedup=_quantile(ratios, 0.5), speedup_q25=_quantile(ratios, 0.25),
            speedup_q75=_quantile(ratios, 0.75),
            compile_seconds=sum(r.compile_seconds for r in rs),
            identical=identical, accept_per_depth=depth_acc,
            ms_per_call=ms_per_call(rs), step_cost=cost,
            modelled_speedup=modelled_speedup(loop_tau(rs), cost),
        ))
    return out


def _num(x: float, fmt: str, suffix: str = "", missing: str = "-") -> str:
    return missing if math.isnan(x) else format(x, fmt) + suffix


def markdown_table(rows: Sequence[Summary]) -> str:
    head = ("| method | prompts | tau (tokens/forward, bonus incl.) | target fwd/token | "
            "tokens/s (median) | speedup (median [q25, q75]) | "
            "ms/target fwd (step cost x AR) | modelled speedup (tau / step cost) | "
            "compile s | identical to AR |")
    lines = [head, "|" + "---|" * 10]
    for s in rows:
        lines.append(
            f"| {s.method} | {s.prompts} | {s.tau:.2f} | {s.forwards_per_token:.3f} | "
            f"{s.tokens_per_second:.1f} | {s.speedup:.2f}x [{s.speedup_q25:.2f}, {s.speedup_q75:.2f}] | "
            f"{_num(s.ms_per_call, '.1f')} ({_num(s.step_cost, '.2f', 'x')}) | "
            f"{_num(s.modelled_speedup, '.2f', 'x')} | "
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
