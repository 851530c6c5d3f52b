"""Batched throughput: SmartSpec vs fixed-length chain SD vs autoregressive decoding.

SmartSpec (Liu et al., "Optimizing Speculative Decoding for Serving Large
Language Models Using Goodput", arXiv:2406.14066) observes that the best
speculation length depends on the batch size: a wider target forward is
almost free at batch 1 (memory bound) but not at batch 32 (compute bound), so
fixed-K speculation can lose to plain decoding at large batches, while a
goodput-optimal K (`specjax.policies.Goodput`, step costs measured at that
batch size) should never do much worse than the better of the two. This module
measures that claim: for each batch size B and method it runs one batch made
of the first B prompts (the prompt list is cycled if shorter) and reports the
generated tokens per second of the whole batch.

Protocol (`run_throughput`): for each B, every method first runs once untimed
(compilation, reported as `compile_seconds`), then `repeats` timed rounds run
the methods back to back (interleaved, so machine noise hits all of them);
the median round time counts. Only real tokens are counted: each row stops at
its first EOS (kept) or at `max_new_tokens`.

Methods are registry specs (`specjax.bench.registry.parse` syntax):
`autoregressive`, `sd_chain/k=K[/policy=...]` and `smartspec[/max_k=K]
[/widths=1.2.3][/step_costs=1;1.2;...]`. The registry's builders wrap a
single prompt (`Generator.fn(ids)`), so the batched calls are made here with
`decode.speculative_generate` on the same drafter (`DraftModel.chain` of the
context's draft model), verifier (`registry.verifier_for`) and policy
(`registry.length_policy`) objects the registry builds. One difference is
deliberate: SmartSpec's step costs are measured at the batch size being run
(the registry measures them at batch 1 only).

Lossless: every method here is lossless (greedy: token-identical to
autoregressive decoding, checked per row as `Cell.identical_rows`; sampled:
the target's law). The benchmark changes no output.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from specjax import decode, policies, settings
from specjax.bench import registry
from specjax.bench.experiment import PromptConfig, checked_keys
from specjax.bench.metrics import CompileTimer
from specjax.drafters.draft_model import DraftModel
from specjax.models.lm import DecoderLM
from specjax.sampling import Sampling

BASELINE = "autoregressive"
BATCHED = ("autoregressive", "sd_chain", "smartspec")  # registry names this module can batch


# -- config ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ThroughputConfig:
    """Typed form of configs/batch_throughput.py (see `from_config_dict`).

    model / draft_model: asset names or paths ("tiny-random": a tiny random
    transformer, the command's test model); batch_sizes: comma list; methods:
    comma list of registry specs; cost_context: cache length at which
    SmartSpec's step costs are timed (0 = median prompt length +
    max_new_tokens / 2); toy_prompts: > 0 replaces the benchmark prompts by
    that many short built-in texts (for the tiny model).
    """

    model: str
    methods: str
    batch_sizes: str = "1,4,16,32"
    draft_model: str = ""
    dtype: str = "float32"
    layout: str = "auto"
    max_new_tokens: int = 64
    repeats: int = 3
    chat: bool = True
    seed: int = 0
    cost_context: int = 0
    toy_prompts: int = 0
    sampling: Sampling = Sampling()
    draft: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    prompts: PromptConfig = PromptConfig()


def from_config_dict(c) -> ThroughputConfig:
    """ThroughputConfig from a ConfigDict / dict; unknown keys raise ValueError naming them."""
    d = c.to_dict() if hasattr(c, "to_dict") else dict(c)
    checked_keys(ThroughputConfig, d, "config")
    d["sampling"] = Sampling(**checked_keys(Sampling, d.get("sampling", {}), "config.sampling"))
    d["prompts"] = PromptConfig(**checked_keys(PromptConfig, d.get("prompts", {}), "config.prompts"))
    d["draft"] = dict(d.get("draft", {}))
    return ThroughputConfig(**d)


def parse_batch_sizes(spec: str | Sequence[int]) -> tuple[int, ...]:
    """`"1,4,16"` or a sequence -> (1, 4, 16); ValueError unless positive and distinct."""
    items = [x.strip() for x in spec.split(",") if x.strip()] if isinstance(spec, str) \
        else list(spec)
    try:
        sizes = tuple(int(x) for x in items)
    except (TypeError, ValueError):
        raise ValueError(f"batch sizes must be integers; got {spec!r}") from None
    if not sizes:
        raise ValueError("no batch sizes given")
    bad = [b for b in sizes if b < 1]
    if bad:
        raise ValueError(f"batch sizes must be positive integers; got {bad} in {list(sizes)}")
    if len(set(sizes)) != len(sizes):
        raise ValueError(f"batch sizes repeat: {list(sizes)}")
    return sizes


def parse_methods(spec: str | Sequence[str]) -> tuple[str, ...]:
    """Comma list / sequence of method specs, validated (name known and batchable)."""
    specs = [x.strip() for x in spec.split(",")] if isinstance(spec, str) else list(spec)
    specs = [s for s in specs if s]
    if not specs:
        raise ValueError("no methods given")
    if len(set(specs)) != len(specs):
        raise ValueError(f"methods repeat: {specs}")
    for s in specs:
        info, _ = registry.parse(s)  # unknown name: ValueError listing the registry
        if info.name not in BATCHED:
            raise ValueError(f"method {info.name!r} is registered but not batched by "
                             f"specjax.bench.throughput; batched methods: {list(BATCHED)}")
    return tuple(specs)


# -- methods --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BatchMethod:
    """A method ready to run on a batch: `generate(prompts) -> decode.Generation`.

    method: the `decode.Method` (None for autoregressive); step_costs: the
    SmartSpec time model used (None otherwise); setup_seconds: time spent
    measuring it.
    """

    name: str
    generate: Callable[[list[list[int]]], decode.Generation]
    method: decode.Method | None = None
    step_costs: tuple[float, ...] | None = None
    setup_seconds: float = 0.0


def build_method(spec: str, ctx: registry.BuildContext, batch: int,
                 cost_context: int = 256) -> BatchMethod:
    """The batched form of registry method `spec` for batch size `batch`.

    autoregressive -> `decode.autoregressive_generate`; sd_chain/k=K (optional
    `policy=`) and smartspec/max_k=K -> `decode.speculative_generate` with a
    chain of K draft-model drafts, the registry's chain verifier and policy.
    A goodput policy without explicit step_costs has them measured now at this
    batch size, with `cost_context` tokens in the cache.
    """
    info, over = registry.parse(spec)
    if info.name not in BATCHED:
        raise ValueError(f"method {info.name!r} is not batched here; batched: {list(BATCHED)}")
    ctx = dataclasses.replace(ctx, args=registry.with_overrides(ctx.args, info.name, over))
    key = jax.random.key(ctx.seed)
    common = dict(max_new_tokens=ctx.max_new_tokens, sampling=ctx.sampling, key=key,
                  eos_ids=ctx.eos_ids)
    if info.name == BASELINE:
        return BatchMethod(spec, lambda prompts: decode.autoregressive_generate(
            ctx.target_params, ctx.target_cfg, prompts, **common))
    s = info.settings(ctx.args)  # the registry's settings: same names and defaults
    if info.name == "sd_chain":
        k, policy_spec, pend = s["k"], s["policy"], s["max_pending"]
    else:  # smartspec
        k, pend, policy_spec = s["max_k"], s["max_pending"], "goodput"
        if s["step_costs"] is not settings.REQUIRED:
            policy_spec = f"goodput:step_costs={settings.show(s['step_costs'])}"
    if k < 1:
        raise ValueError(f"{spec}: the draft length must be >= 1; got {k}")
    measures = policy_spec.partition(":")[0] == "goodput" and "step_costs" not in policy_spec
    widths = registry.with_node_count(s["widths"], k + 1)
    t0 = time.perf_counter()
    policy = registry.length_policy(ctx, policy_spec, max_k=k, batch=batch, context=cost_context,
                                    max_pending=pend, widths=widths,
                                    source=s.get("step_cost_source", "loop"))
    setup = time.perf_counter() - t0 if measures else 0.0
    costs = policy.step_costs if isinstance(policy, policies.Goodput) else None
    dcfg, dparams = ctx.draft()
    drafter = DraftModel.chain(DecoderLM(dcfg), k, pend)
    method = decode.Method(drafter=drafter, verifier=registry.verifier_for(ctx.sampling, drafter),
                           policy=policy, widths=widths if policy else None)
    method.verify_widths()  # malformed widths: ValueError now, not in the first run

    def generate(prompts):
        return decode.speculative_generate(ctx.target_params, ctx.target_cfg, prompts,
                                           method=method, draft_params=dparams, **common)

    return BatchMethod(spec, generate, method, costs, setup)


# -- measurement ----------------------------------------------------------------


@dataclasses.dataclass
class Cell:
    """One (method, batch size) measurement.

    seconds: median of the timed repeats (`repeat_seconds`) for the whole batch;
    row_tokens: generated tokens per row (up to and including EOS, at most
      max_new_tokens); new_tokens their sum;
    target_calls: target forwards summed over rows (prefill included);
    batch_forwards: loop iterations of the batch + 1 (the longest row's calls);
    tau: new_tokens / target_calls, tokens per target forward per row
      (1 for autoregressive; the first token comes from the prefill);
    mean_k: mean number of drafts verified per row-step (0 for autoregressive;
      for smartspec the K the policy chose, averaged over steps and rows);
    width_steps: batch steps run at each verification width (speculative only);
    compile_seconds: JAX compilation time during the untimed warm-up call
      (`warmup_seconds` its wall time); timed_compile_seconds: compilation
      seen during the timed repeats (0 unless something recompiled);
    setup_seconds / step_costs: SmartSpec's step-cost measurement at this B;
    identical / identical_rows: greedy only, token identity with
      autoregressive at the same B (None if not greedy or no baseline run);
    speedup: tokens_per_second / that of autoregressive at the same B.
    """

    method: str
    batch: int
    seconds: float
    repeat_seconds: list[float]
    row_tokens: list[int]
    target_calls: int
    batch_forwards: int
    tau: float
    mean_k: float
    compile_seconds: float
    warmup_seconds: float
    timed_compile_seconds: float
    width_steps: dict[int, int] = dataclasses.field(default_factory=dict)
    setup_seconds: float = 0.0
    step_costs: list[float] | None = None
    identical: bool | None = None
    identical_rows: list[bool] | None = None
    speedup: float | None = None
    tokens: list[list[int]] = dataclasses.field(default_factory=list, repr=False)

    @property
    def new_tokens(self) -> int:
        return int(sum(self.row_tokens))

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else float("nan")


@dataclasses.dataclass
class ThroughputResult:
    methods: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    max_new_tokens: int
    repeats: int
    greedy: bool
    cells: list[Cell]

    def cell(self, method: str, batch: int) -> Cell:
        for c in self.cells:
            if c.method == method and c.batch == batch:
                return c
        raise KeyError(f"no cell for method {method!r} at batch {batch}")


def batch_of(prompts: Sequence[Sequence[int]], batch: int) -> list[list[int]]:
    """The first `batch` prompts, cycling the list if it is shorter."""
    if batch < 1:
        raise ValueError(f"batch size must be >= 1; got {batch}")
    if not prompts:
        raise ValueError("no prompts given")
    return [list(prompts[i % len(prompts)]) for i in range(batch)]


def identical_rows(tokens: Sequence[Sequence[int]], ref: Sequence[Sequence[int]]) -> list[bool]:
    """Per row: are the generated tokens exactly the reference's (same length too)?"""
    if len(tokens) != len(ref):
        raise ValueError(f"{len(tokens)} rows vs {len(ref)} reference rows")
    return [list(a) == list(b) for a, b in zip(tokens, ref)]


def cell_of(name: str, batch: int, gen: decode.Generation, seconds: Sequence[float],
            compile_s: float, warmup_s: float, timed_compile_s: float,
            widths: Sequence[int] = ()) -> Cell:
    """Counters of one (method, batch) run from its `Generation` (pure, host side)."""
    rows = [len(t) for t in gen.tokens]
    calls = np.asarray(gen.target_calls)
    steps = getattr(gen, "steps", None)
    verified = getattr(gen, "verified", None)
    mean_k = (float(np.sum(verified)) / float(np.sum(steps))
              if steps is not None and np.sum(steps) > 0 else 0.0)
    ws = getattr(gen, "width_steps", None)
    width_steps = ({int(w): int(n) for w, n in zip(widths, np.asarray(ws))}
                   if ws is not None else {})
    return Cell(method=name, batch=batch, seconds=float(statistics.median(seconds)),
                repeat_seconds=[float(s) for s in seconds], row_tokens=rows,
                target_calls=int(calls.sum()), batch_forwards=int(calls.max()),
                tau=sum(rows) / max(int(calls.sum()), 1), mean_k=mean_k,
                compile_seconds=float(compile_s), warmup_seconds=float(warmup_s),
                timed_compile_seconds=float(timed_compile_s), width_steps=width_steps,
                tokens=[list(t) for t in gen.tokens])


def run_throughput(
    ctx: registry.BuildContext,
    prompts: Sequence[Sequence[int]],
    batch_sizes: Sequence[int] | str,
    methods: Sequence[str] | str,
    *,
    repeats: int = 3,
    cost_context: int | None = None,
    log: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> ThroughputResult:
    """Measures every (method, batch size); see the module docstring for the protocol.

    Args:
      ctx: target (and draft) model, max_new_tokens, sampling, eos_ids, seed
        and the default method arguments (`config.draft`, e.g. self_layers).
      prompts: token id lists; batch B uses the first B (cycled).
      batch_sizes: e.g. (1, 4, 16, 32) or "1,4,16,32".
      methods: registry specs, e.g. ("autoregressive", "sd_chain/k=4",
        "smartspec/max_k=4"); the baseline for speedups and identity is
        "autoregressive" when present.
      repeats: timed rounds per batch size (median reported).
      cost_context: cache length for SmartSpec's step costs (default: median
        prompt length + max_new_tokens / 2).
      log: called with one progress line per measurement (None: silent).
      clock: the timer (tests may inject one).

    Raises:
      ValueError: bad batch sizes, unknown / unbatched / repeated methods,
        repeats < 1, no or empty prompts.
    """
    sizes = parse_batch_sizes(batch_sizes)
    names = parse_methods(methods)
    if int(repeats) < 1:
        raise ValueError(f"repeats must be >= 1; got {repeats}")
    if not prompts:
        raise ValueError("no prompts given")
    empty = [i for i, p in enumerate(prompts) if len(p) == 0]
    if empty:
        raise ValueError(f"prompts {empty} are empty; every prompt needs at least one token")
    if cost_context is None:
        cost_context = int(np.median([len(p) for p in prompts])) + ctx.max_new_tokens // 2
    log = log or (lambda _: None)
    greedy = ctx.sampling.greedy
    cells = []
    for B in sizes:
        batch = batch_of(prompts, B)
        built = [build_method(n, ctx, B, cost_context) for n in names]
        gens, compile_s, warm_s = {}, {}, {}
        for m in built:  # untimed warm-up: compiles, and gives the outputs
            with CompileTimer() as ct:
                t0 = clock()
                gens[m.name] = m.generate(batch)
                warm_s[m.name] = clock() - t0
            compile_s[m.name] = ct.seconds
        times = {m.name: [] for m in built}
        with CompileTimer() as timed_ct:
            per_method = {m.name: 0.0 for m in built}
            for _ in range(int(repeats)):
                for m in built:  # interleaved: every round runs all methods back to back
                    before = timed_ct.seconds
                    t0 = clock()
                    gens[m.name] = m.generate(batch)
                    times[m.name].append(clock() - t0)
                    per_method[m.name] += timed_ct.seconds - before
        ref = gens.get(BASELINE)
        row = []
        for m in built:
            widths = m.method.verify_widths() if m.method is not None else ()
            c = cell_of(m.name, B, gens[m.name], times[m.name], compile_s[m.name],
                        warm_s[m.name], per_method[m.name], widths)
            c.setup_seconds = m.setup_seconds
            c.step_costs = list(m.step_costs) if m.step_costs is not None else None
            if greedy and ref is not None:
                c.identical_rows = identical_rows(gens[m.name].tokens, ref.tokens)
                c.identical = all(c.identical_rows)
            row.append(c)
        base = next((c for c in row if c.method == BASELINE), None)
        for c in row:
            if base is not None and base.tokens_per_second > 0:
                c.speedup = c.tokens_per_second / base.tokens_per_second
            log(f"B={B:3d} {c.method:32s} {c.tokens_per_second:9.1f} tok/s  tau {c.tau:.2f}  "
                f"k {c.mean_k:.2f}  compile {c.compile_seconds:.1f}s"
                + ("" if c.identical is None else f"  identical {c.identical}"))
        cells += row
    return ThroughputResult(methods=names, batch_sizes=sizes, max_new_tokens=ctx.max_new_tokens,
                            repeats=int(repeats), greedy=greedy, cells=cells)


# -- outputs --------------------------------------------------------------------


def _fmt(x: float | None, fmt: str, suffix: str = "") -> str:
    return "-" if x is None or x != x else f"{x:{fmt}}{suffix}"


def markdown_table(res: ThroughputResult) -> str:
    """Rows = methods; per batch size B the columns `B=.. tok/s` and `B=.. speedup`
    (over autoregressive at the same B)."""
    head = ["method"] + [h for B in res.batch_sizes for h in (f"B={B} tok/s", f"B={B} speedup")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in res.methods:
        cells = [res.cell(m, B) for B in res.batch_sizes]
        vals = [v for c in cells for v in (_fmt(c.tokens_per_second, ".1f"),
                                           _fmt(c.speedup, ".2f", "x"))]
        lines.append("| " + " | ".join([m] + vals) + " |")
    return "\n".join(lines)


def details_table(res: ThroughputResult) -> str:
    """One row per (method, B): tokens, seconds, tau, mean K, compile time, identity."""
    lines = ["| method | B | new tokens | s (median) | tok/s | tau | mean K | batch fwds | "
             "compile s | cost setup s | identical |", "|" + "---|" * 11]
    for m in res.methods:
        for B in res.batch_sizes:
            c = res.cell(m, B)
            ident = "-" if c.identical is None else (
                "yes" if c.identical else f"no ({sum(not r for r in c.identical_rows)} rows)")
            lines.append(f"| {m} | {B} | {c.new_tokens} | {c.seconds:.3f} | "
                         f"{c.tokens_per_second:.1f} | {c.tau:.2f} | {c.mean_k:.2f} | "
                         f"{c.batch_forwards} | {c.compile_seconds:.1f} | "
                         f"{c.setup_seconds:.1f} | {ident} |")
    return "\n".join(lines)


def to_json(res: ThroughputResult, tokens: bool = False) -> dict:
    """A JSON-able dict: settings and one entry per cell (with tokens/s; generated
    token ids only if `tokens`)."""
    cells = []
    for c in res.cells:
        d = dataclasses.asdict(c)
        d["width_steps"] = {str(k): v for k, v in c.width_steps.items()}
        d.update(new_tokens=c.new_tokens, tokens_per_second=c.tokens_per_second)
        if not tokens:
            d.pop("tokens")
        cells.append(d)
    return dict(methods=list(res.methods), batch_sizes=list(res.batch_sizes),
                max_new_tokens=res.max_new_tokens, repeats=res.repeats, greedy=res.greedy,
                cells=cells)


def plot_throughput(res: ThroughputResult, path: str | Path) -> Path:
    """Left: tokens/s vs batch size (log-log), one line per method; right: speedup
    over autoregressive at each B (dashed line at 1). Needs matplotlib (ImportError
    naming the `plots` extra otherwise)."""
    from specjax.bench import report

    fig, (ax0, ax1) = report._figure(10.0, 4.0, ncols=2)
    xs = list(res.batch_sizes)
    for m in res.methods:
        cells = [res.cell(m, B) for B in xs]
        ax0.plot(xs, [c.tokens_per_second for c in cells], marker="o", label=m)
        if any(c.speedup is not None for c in cells):
            ax1.plot(xs, [np.nan if c.speedup is None else c.speedup for c in cells],
                     marker="o", label=m)
    ax1.axhline(1.0, color="black", linestyle="--", linewidth=1)
    for ax in (ax0, ax1):
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel("batch size B")
    ax0.set_yscale("log")
    ax0.set_ylabel("generated tokens / s (whole batch)")
    ax0.set_title("Throughput vs batch size")
    ax1.set_ylabel(f"speedup over {BASELINE} at the same B")
    ax1.set_title("Speedup vs batch size")
    ax0.legend(fontsize="small")
    return report._save(fig, path)
