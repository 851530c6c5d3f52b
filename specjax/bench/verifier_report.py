"""Tables and plots of the verifier-vs-optimum comparison (`theory_experiment.run`).

`markdown_table` (one block per temperature: rows = verifiers and optima,
columns = draft counts, cells "mean ± se" and the gap to the optimum of the
verifier's draft law, Hu et al. arXiv:2502.18779, Sec. 6), `plot`
(acceptance vs number of drafts) and `write_outputs` (table.md,
results.json, plot.png and the per-row arrays in rows.npz).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from specjax.bench.verifier_rates import OPTIMA, VERIFIERS

# Display names of the columns.
NAMES = {
    "single": "single draft (1 - TV)",
    "rrs_with_replacement": "RRS, with replacement",
    "kseq": "K-SEQ (rho*)",
    "rrs_without_replacement": "RRS, without replacement",
    "greedy": "greedy drafts (= their optimum)",
    "optimal_iid": "optimum, i.i.d. drafts",
    "optimal_without_replacement": "optimum, without replacement",
}


def markdown_table(result: dict[str, Any], group: str = "all") -> str:
    """One block per temperature: rows = verifiers and optima, columns = draft counts.

    Cells are "mean ± se" (cluster-robust over prompts) and, for the
    verifiers with a gap, "(gap x ± se%)" to the optimum of their draft law
    (the se of the paired differences).
    """
    ns = result["num_drafts"]
    lines = []
    for t in result["temperatures"]:
        s = result["summary"][str(t)][group]
        lines.append(f"**temperature {t}** ({s['rows']} positions, {s['prompts']} prompts; "
                     f"n = 1, 1 - TV(p, q) = {_fmt(s['mean']['single'], s['se']['single'])})")
        lines.append("")
        lines.append("| verifier | " + " | ".join(f"n = {n}" for n in ns) + " |")
        lines.append("|---|" + "---|" * len(ns))
        for k in VERIFIERS + OPTIMA:
            cells = []
            for j in range(len(ns)):
                cell = _fmt(s["mean"][k][j], s["se"][k][j])
                if k in s["gap_percent"] and k != "greedy":
                    gap, gse = s["gap_percent"][k][j], s["gap_se_percent"][k][j]
                    gse = f" ± {gse:.2f}" if gse is not None and np.isfinite(gse) else ""
                    cell += f" (gap {gap:.2f}{gse}%)"
                cells.append(cell)
            lines.append(f"| {NAMES[k]} | " + " | ".join(cells) + " |")
        notes = []
        lo, hi = s["rrs_without_replacement_mean_bounds"]
        wide = [f"n = {n}: [{a:.4f}, {b:.4f}]" for n, a, b in zip(ns, lo, hi) if b - a > 5e-5]
        if wide:
            notes.append("RRS without replacement is the midpoint of certified bounds; bounds on "
                         "the mean: " + ", ".join(wide))
        if s["max_dropped_p"] > 0 or s["max_dropped_q"] > 0:
            note = (f"support truncated to p or q >= {result['settings']['min_prob']:g} "
                    f"(mean {s['mean_support']:.0f} tokens; dropped mass per row <= "
                    f"{s['max_dropped_p']:.1e} of p, {s['max_dropped_q']:.1e} of q)")
            val = result["summary"][str(t)].get("validation")
            if val:
                note += (f"; {len(val['rows'])} rows recomputed on the full vocabulary differ by "
                         f"<= {val['max_abs_diff_exact_columns']:.1e}")
            notes.append(note)
        bad = {k: v for k, v in s["violations"].items() if v}
        if bad:
            notes.append(f"CONSISTENCY VIOLATIONS: {bad}")
        if notes:
            lines.append("")
            lines += [f"- {n}." for n in notes]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _fmt(mean: float, se: float | None) -> str:
    if se is None or not np.isfinite(se):  # one prompt: no standard error
        return f"{mean:.4f}"
    return f"{mean:.4f} ± {se:.4f}"


def plot(result: dict[str, Any], path: str | Path, group: str = "all", title: str = "") -> Path:
    """Acceptance vs number of drafts, one panel per temperature, optima dashed.

    n = 1 is the single-draft rate 1 - TV(p, q), shared by every line.
    Error bars: one cluster-robust standard error.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [1] + list(result["num_drafts"])
    temps = result["temperatures"]
    style = {
        "rrs_with_replacement": dict(color="C0", marker="o"),
        "kseq": dict(color="C1", marker="s"),
        "rrs_without_replacement": dict(color="C2", marker="^"),
        "greedy": dict(color="C3", marker="D"),
        "optimal_iid": dict(color="C0", marker="", linestyle="--"),
        "optimal_without_replacement": dict(color="C2", marker="", linestyle="--"),
    }
    fig, axes = plt.subplots(1, len(temps), figsize=(5 * len(temps), 4.2), sharey=True,
                             squeeze=False)
    for ax, t in zip(axes[0], temps):
        s = result["summary"][str(t)][group]
        for k in VERIFIERS + OPTIMA:
            y = np.array([s["mean"]["single"]] + list(s["mean"][k]))
            e = np.array([s["se"]["single"]] + list(s["se"][k]), dtype=float)
            ax.errorbar(ns, y, yerr=np.nan_to_num(e), label=NAMES[k], capsize=2, **style[k])
        ax.set_title(f"temperature {t} ({s['rows']} positions)")
        ax.set_xlabel("number of drafts n")
        ax.set_xticks(ns)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean acceptance rate")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_outputs(result: dict[str, Any], workdir: str | Path, title: str = "") -> dict[str, Path]:
    """Writes table.md (all prompts, then per source), results.json, plot.png and rows.npz.

    rows.npz holds the per-row arrays ("<temperature>/<column>", "prompt",
    "source"), for analyses beyond the summary.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rows = result.get("rows")
    if rows is not None:
        arrays = {f"{t}/{k}": v for t, cols in rows["per_temperature"].items()
                  for k, v in cols.items()}
        np.savez(workdir / "rows.npz", prompt=rows["prompt"], source=rows["source"], **arrays)
        result = {k: v for k, v in result.items() if k != "rows"}
    first = result["summary"][str(result["temperatures"][0])]
    groups = [g for g in first if g != "validation"]
    parts = [f"### {g}\n\n" + markdown_table(result, g) for g in groups]
    (workdir / "table.md").write_text("\n".join(parts))
    (workdir / "results.json").write_text(json.dumps(jsonable(result), indent=1))
    png = plot(result, workdir / "plot.png", title=title)
    paths = dict(table=workdir / "table.md", results=workdir / "results.json", plot=png)
    if rows is not None:
        paths["rows"] = workdir / "rows.npz"
    return paths


def jsonable(x):
    """`x` with numpy scalars as Python numbers and NaN as None (for json.dumps)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if math.isnan(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x

