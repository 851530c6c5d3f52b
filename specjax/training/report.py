"""What a trained head learned, and what that predicts for decoding.

Small training sets give acceptance far below the papers'. `accuracy_table` lists,
per evaluation of a training run (`metrics.jsonl`), the tokens seen and each head's
held-out top-1 accuracy, and the tau that `specjax.theory` predicts for a chain
drafting each head's top-1 token:

    tau = 1 + sum_i prod_{j <= i} alpha_j       (`theory.performance.expected_tokens_per_position`)

with alpha_j = head j's top-1 accuracy times the share of held-out targets inside
the draft vocabulary (a truncated vocabulary cannot draft the others; the trainer's
top-1 counts only targets inside it). Teacher forcing feeds each head the true
earlier tokens, which are exactly the drafts on an accepted path, so for a chain
this is the acceptance model of Leviathan et al. with per-position rates; it
ignores the correlation between heads' errors. `measured_tau` reads the tau of
a benchmark run's records for comparison.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from specjax.theory.performance import expected_tokens_per_position


def read_metrics(workdir) -> list[dict]:
    """The rows of `<workdir>/metrics.jsonl` that hold a validation pass."""
    path = Path(workdir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics.jsonl in {workdir} (a training workdir of "
                                "python -m experiments.train)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if "val_top1_i" in r]


def vocabulary_coverage(records, vocab_ids) -> float:
    """Share of the real tokens of `records` (a corpus split) inside `vocab_ids` (1.0
    without truncation)."""
    if vocab_ids is None:
        return 1.0
    ids = np.asarray(vocab_ids)
    inside = total = 0
    for i in range(len(records)):
        rec = records[i]
        t = np.asarray(rec["tokens"])[np.asarray(rec["segments"]) > 0]
        inside += int(np.isin(t, ids).sum())
        total += t.size
    return inside / max(total, 1)


def predicted_chain_tau(top1, coverage: float = 1.0) -> float:
    """Tau of a top-1 chain over the heads with these held-out accuracies."""
    return float(expected_tokens_per_position(np.clip(np.asarray(top1) * coverage, 0.0, 1.0)))


def accuracy_table(rows: list[dict], coverage: float = 1.0, chain: bool = True) -> str:
    """Markdown: tokens seen, validation loss, per-head top-1 and (chain=True, for
    heads whose i-th predicts i tokens further) the predicted chain tau."""
    n = max(len(r["val_top1_i"]) for r in rows)
    head = ["tokens seen", "val loss"] + [f"top-1 head {i + 1}" for i in range(n)]
    head += ["predicted chain tau"] if chain else []
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"{r['tokens']:,}", f"{r['val_loss']:.3f}"]
        cells += [f"{a:.3f}" for a in r["val_top1_i"]]
        if chain:
            cells.append(f"{predicted_chain_tau(r['val_top1_i'], coverage):.2f}")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def measured_tau(records_path, method: str) -> float:
    """Tokens per target forward (bonus included) of `method` in a benchmark run's
    records.jsonl, over all its prompts."""
    tokens = calls = 0
    for line in Path(records_path).read_text().splitlines():
        r = json.loads(line)
        if r["method"] == method:
            tokens += r["new_tokens"]
            calls += r["target_calls"]
    if not calls:
        raise ValueError(f"no records of method {method!r} in {records_path}")
    return tokens / calls
