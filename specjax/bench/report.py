"""Outputs of a benchmark run: the summary table as CSV and LaTeX, and plots.

`write_report(workdir, rows, records)` is called at the end of
`specjax.bench.experiment.run_experiment` and writes, next to `table.md`:

  table.csv                  one row per method, every `metrics.Summary` field,
                             floats at full precision (`repr`), accept_per_depth
                             spread over columns accept_ge_1, accept_ge_2, ...
  table.tex                  the same rows as a booktabs `tabular` (needs
                             \\usepackage{booktabs}); method names escaped
  speedup_by_category.png    median per-prompt speedup vs the baseline per
                             Spec-Bench category, grouped bars per method
  tau_vs_draft_length.png    tau against k for methods whose name carries a
                             draft length `k=...` (e.g. sd_chain(k=3), pld(k=10))
  accept_per_depth.png       P(at least d drafts accepted) and the conditional
                             rate P(>= d | >= d - 1), from the accept histograms

Plots use matplotlib's Agg canvas through the object API (no pyplot, so the
global backend of a notebook is left alone); matplotlib comes with the
`plots` extra (`pip install 'specjax[plots]'`). Without it the plot functions
raise an ImportError naming the extra, and `write_report` still writes the
tables. A plot with nothing to show (no method with a k, no histogram, no
baseline) is skipped.

Definitions of the columns are in `specjax.bench.metrics`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import re
import statistics
import warnings
from collections.abc import Sequence
from pathlib import Path

from specjax.bench.metrics import Record, Summary

CSV_NAME, TEX_NAME = "table.csv", "table.tex"
PLOT_NAMES = ("speedup_by_category.png", "tau_vs_draft_length.png", "accept_per_depth.png")
_SCALARS = [f.name for f in dataclasses.fields(Summary) if f.name != "accept_per_depth"]


# -- tables ------------------------------------------------------------------


def csv_text(rows: Sequence[Summary]) -> str:
    """The summary rows as CSV: scalar fields, then accept_ge_1..accept_ge_D."""
    depth = max((len(s.accept_per_depth) for s in rows), default=0)
    cols = _SCALARS + [f"accept_ge_{d}" for d in range(1, depth + 1)]
    out = [cols]
    for s in rows:
        vals = [_cell(getattr(s, c)) for c in _SCALARS]
        acc = list(s.accept_per_depth)
        vals += [repr(float(acc[d])) if d < len(acc) else "" for d in range(depth)]
        out.append(vals)
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(out)
    return buf.getvalue()


def _cell(x) -> str:
    return repr(float(x)) if isinstance(x, float) else str(x)


def read_csv(path: str | Path) -> list[dict]:
    """Rows of a `table.csv` with numbers parsed back (floats, ints) and
    accept_per_depth rebuilt as a list."""
    types = {f.name: f.type for f in dataclasses.fields(Summary)}
    out = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            d: dict = {}
            acc = []
            for k, v in row.items():
                if k.startswith("accept_ge_"):
                    if v != "":
                        acc.append(float(v))
                elif types.get(k) in ("float", float):
                    d[k] = float(v)
                elif types.get(k) in ("int", int):
                    d[k] = int(v)
                else:
                    d[k] = v
            d["accept_per_depth"] = acc
            out.append(d)
    return out


_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                "^": r"\textasciicircum{}"}


def tex_escape(text: str) -> str:
    """`text` with LaTeX's special characters escaped (for method names)."""
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in str(text))


_TIMES = r"$\times$"


def _tex_num(x: float, fmt: str, suffix: str = "") -> str:
    return "--" if math.isnan(x) else format(x, fmt) + suffix


def latex_table(rows: Sequence[Summary]) -> str:
    """The summary rows as a booktabs tabular, one line per method.

    Columns as in `metrics.markdown_table`: tau (bonus token included), target
    forwards per token, median tokens/s, speedup (median [q25, q75]), ms per
    target forward and step cost vs the baseline, modelled speedup (tau / step
    cost), compile seconds, identity with greedy autoregressive output.
    """
    head = (r"Method & Prompts & $\tau$ & Fwd/token & Tokens/s & Speedup [q25, q75] & "
            r"ms/fwd (cost) & Modelled & Compile s & Identical \\")
    lines = [r"% requires \usepackage{booktabs}", r"\begin{tabular}{lrrrrlrrrl}", r"\toprule",
             head, r"\midrule"]
    for s in rows:
        cells = [
            tex_escape(s.method), str(s.prompts), f"{s.tau:.2f}", f"{s.forwards_per_token:.3f}",
            f"{s.tokens_per_second:.1f}",
            (f"{_tex_num(s.speedup, '.2f', _TIMES)} "
             f"[{_tex_num(s.speedup_q25, '.2f')}, {_tex_num(s.speedup_q75, '.2f')}]"),
            f"{_tex_num(s.ms_per_call, '.1f')} ({_tex_num(s.step_cost, '.2f', _TIMES)})",
            _tex_num(s.modelled_speedup, ".2f", _TIMES),
            f"{s.compile_seconds:.1f}", tex_escape(s.identical),
        ]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


# -- data behind the plots -----------------------------------------------------


def speedup_by_category(records: Sequence[Record], baseline: str = "autoregressive"
                        ) -> dict[str, dict[str, float]]:
    """{method: {category: median over its prompts of baseline s / method s}}.

    Methods other than the baseline, in first-seen order; categories in
    first-seen order; prompts the baseline did not run are skipped.
    """
    base = {r.question_id: r for r in records if r.method == baseline}
    out: dict[str, dict[str, list[float]]] = {}
    for r in records:
        if r.method == baseline or r.question_id not in base or r.seconds <= 0:
            continue
        out.setdefault(r.method, {}).setdefault(r.category, []).append(
            base[r.question_id].seconds / r.seconds)
    return {m: {c: statistics.median(v) for c, v in cats.items()} for m, cats in out.items()}


_K = re.compile(r"(?<![A-Za-z0-9_])k=(\d+)")


def draft_length(method: str) -> tuple[str, int] | None:
    """("family", k) for a method name carrying `k=<int>`, else None.

    `sd_chain(k=3)` and `sd_chain/k=3` -> ("sd_chain", 3);
    `sd_chain/k=6/self_layers=8` -> ("sd_chain/self_layers=8", 6).
    """
    m = _K.search(method)
    if not m:
        return None
    family = method[:m.start()] + method[m.end():]
    family = re.sub(r"\(\s*,\s*", "(", family)
    family = re.sub(r",\s*\)", ")", family)
    family = family.replace("()", "").replace("//", "/").strip("/, ")
    return family, int(m.group(1))


def tau_by_draft_length(rows: Sequence[Summary]) -> dict[str, list[tuple[int, float]]]:
    """{family: [(k, tau), ...] sorted by k} over rows whose name has a k."""
    out: dict[str, list[tuple[int, float]]] = {}
    for s in rows:
        fk = draft_length(s.method)
        if fk:
            out.setdefault(fk[0], []).append((fk[1], s.tau))
    return {f: sorted(v) for f, v in out.items()}


def conditional_acceptance(marginal: Sequence[float]) -> list[float]:
    """P(>= d | >= d - 1) from P(>= d), d = 1..; NaN where P(>= d - 1) = 0."""
    prev, out = 1.0, []
    for p in marginal:
        out.append(p / prev if prev > 0 else float("nan"))
        prev = p
    return out


# -- plots -------------------------------------------------------------------


def _figure(width: float, height: float, ncols: int = 1):
    """A matplotlib Figure on an Agg canvas (no pyplot, no global backend change)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(
            "plots need matplotlib, which comes with the `plots` extra: "
            "pip install 'specjax[plots]' (or pip install matplotlib)") from e
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]


def plot_speedup_by_category(records: Sequence[Record], path: str | Path,
                             baseline: str = "autoregressive") -> Path | None:
    """Grouped bars: per category, one bar per method (median speedup vs the
    baseline); a dashed line at 1. None (nothing written) without data."""
    data = speedup_by_category(records, baseline)
    if not data:
        return None
    cats = list(dict.fromkeys(c for v in data.values() for c in v))
    methods = list(data)
    fig, (ax,) = _figure(max(5.0, 1.2 * len(cats) * max(1, len(methods)) ** 0.5 + 2), 4.0)
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(cats))]
        ys = [data[m].get(c, float("nan")) for c in cats]
        ax.bar(xs, ys, width=width, label=m)
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(cats)), cats, rotation=20, ha="right")
    ax.set_ylabel(f"speedup vs {baseline} (median per prompt)")
    ax.set_title("Speedup per category")
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_tau_vs_draft_length(rows: Sequence[Summary], path: str | Path) -> Path | None:
    """tau (bonus included) against the draft length k, one line per method
    family; the dotted line tau = k + 1 is the ceiling. None without a k."""
    data = tau_by_draft_length(rows)
    if not data:
        return None
    fig, (ax,) = _figure(5.0, 4.0)
    kmax = 1
    for fam, pts in data.items():
        ks, taus = zip(*pts)
        kmax = max(kmax, max(ks))
        ax.plot(ks, taus, marker="o", label=fam)
    ax.plot([0, kmax], [1, kmax + 1], color="gray", linestyle=":", label="ceiling k + 1")
    ax.set_xlabel("draft length k")
    _integer_ticks(ax)
    ax.set_ylabel("tau (tokens / target forward, bonus incl.)")
    ax.set_title("Tokens per forward vs draft length")
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_acceptance_per_depth(rows: Sequence[Summary], path: str | Path) -> Path | None:
    """Left: P(at least d drafts accepted in a step); right: the conditional
    rate P(>= d | >= d - 1). One line per method with a histogram."""
    data = {s.method: _trim_zeros(s.accept_per_depth) for s in rows if s.accept_per_depth}
    if not data:
        return None
    fig, (ax0, ax1) = _figure(9.0, 4.0, ncols=2)
    for m, acc in data.items():
        ds = range(1, len(acc) + 1)
        ax0.plot(ds, acc, marker="o", label=m)
        ax1.plot(ds, conditional_acceptance(acc), marker="o", label=m)
    ax0.set_title("P(at least d drafts accepted)")
    ax1.set_title("P(>= d accepted | >= d - 1 accepted)")
    for ax in (ax0, ax1):
        ax.set_xlabel("depth d")
        ax.set_ylim(-0.02, 1.02)
        _integer_ticks(ax)
    ax0.legend(fontsize="small")
    return _save(fig, path)


def _trim_zeros(acc: Sequence[float]) -> list[float]:
    """acc up to its first zero (depths past a tree's depth are never reached)."""
    acc = list(acc)
    last = max((i for i, a in enumerate(acc) if a > 0), default=-1)
    return acc[: min(len(acc), last + 2)]


def _integer_ticks(ax):
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _save(fig, path) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


# -- everything ----------------------------------------------------------------


def write_report(workdir: str | Path, rows: Sequence[Summary], records: Sequence[Record],
                 baseline: str = "autoregressive") -> dict:
    """Writes table.csv, table.tex and the plots into `workdir`.

    Returns {"tables": [paths], "plots": [paths written], "skipped": {name: why}}.
    Missing matplotlib skips the plots (reason recorded) but never the tables.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / CSV_NAME).write_text(csv_text(rows))
    (workdir / TEX_NAME).write_text(latex_table(rows))
    out = {"tables": [workdir / CSV_NAME, workdir / TEX_NAME], "plots": [], "skipped": {}}
    jobs = [(PLOT_NAMES[0], lambda p: plot_speedup_by_category(records, p, baseline)),
            (PLOT_NAMES[1], lambda p: plot_tau_vs_draft_length(rows, p)),
            (PLOT_NAMES[2], lambda p: plot_acceptance_per_depth(rows, p))]
    for name, job in jobs:
        try:
            written = job(workdir / name)
        except ImportError as e:
            out["skipped"][name] = str(e)
            warnings.warn(f"{name} not written: {e}")
            continue
        if written is None:
            out["skipped"][name] = "nothing to plot"
        else:
            out["plots"].append(written)
    return out
