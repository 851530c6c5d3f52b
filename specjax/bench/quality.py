"""Quality metrics of a run's outputs, next to its speed: the figures the decoders'
papers report (issue 19's `configs/decoders.py`).

Per record (`Record.metrics`, merged with a decoder's own `GenResult.metrics`):
  bits/token  the output's mean surprise -log2 p under the untransformed target,
              teacher-forced after its prompt: perplexity = 2 ** bits (Mirostat's
              perplexity control, Basu et al. arXiv:2007.14966)
  rep-4       the share of repeated 4-grams in the output (momentum decoding, Lan et
              al. arXiv:2212.02175; contrastive search)
  distinct-2  distinct bigrams / bigrams of the output (diverse beam search,
              Vijayakumar et al. arXiv:1610.02424, report it over a prompt's beams:
              a decoder's own "beams distinct-2")
  json valid  1 if the output is a JSON document valid for the prompt's schema
              (`Prompt.schema`; JSONSchemaBench-style compliance), else 0
  outputs, outputs distinct-2, outputs bits/token   for a decoder of several outputs
              (`Record.outputs`: diverse beam search's beams, superposed decoding's
              drafts): their number, distinct bigrams over all of them (the diversity
              diverse beam search reports) and their mean surprise under the target
              (superposed decoding's coherence)

`quality_table` is the per-method mean of every metric, a second table of
`table.md`.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from specjax.bench.metrics import Record
from specjax.bench.prompts import Prompt
from specjax.decoders import metrics as text_metrics

# (prompts, outputs) -> per output sum of natural-log probabilities, float[B]
Scorer = Callable[[Sequence[Sequence[int]], Sequence[Sequence[int]]], np.ndarray]


def add_quality(records: Sequence[Record], prompts: Sequence[Prompt],
                prompt_ids: Callable[[Prompt], list[int]], score: Scorer | None,
                validate: Callable[[str, str], bool] | None = None, batch: int = 8) -> None:
    """Adds the metrics of the module docstring to each record's `metrics` (in place).

    Args:
      prompt_ids: a prompt's token ids as the methods saw them (first turn).
      score: log-likelihood scorer (None: no bits/token).
      validate: (text, schema JSON) -> valid, for prompts with a schema.
    """
    by_id = {p.question_id: p for p in prompts}
    for r in records:
        toks = list(r.tokens)
        r.metrics["rep-4"] = text_metrics.repeated_ngram_fraction(toks, 4)
        r.metrics["distinct-2"] = text_metrics.distinct_n([toks], 2)
        if r.outputs:
            r.metrics["outputs"] = float(len(r.outputs))
            r.metrics["outputs distinct-2"] = text_metrics.distinct_n(r.outputs, 2)
        p = by_id.get(r.question_id)
        if validate is not None and p is not None and p.schema:
            r.metrics["json valid"] = float(validate(r.turn_texts[0] if r.turn_texts else "",
                                                     p.schema))
    if score is None:
        return
    todo = [r for r in records if r.tokens and r.question_id in by_id]
    for i in range(0, len(todo), batch):
        part = todo[i:i + batch]
        # first turn only: the turns of a multi-turn record follow different prompts
        outs = [r.tokens[:r.turn_tokens[0]] if r.turn_tokens else r.tokens for r in part]
        ll = score([prompt_ids(by_id[r.question_id]) for r in part], outs)
        for r, out, value in zip(part, outs, ll):
            if out:
                r.metrics["bits/token"] = _bits(value, len(out))
    for r in records:
        outs = [o for o in r.outputs if o]
        if outs and r.question_id in by_id:
            ll = score([prompt_ids(by_id[r.question_id])] * len(outs), outs)
            r.metrics["outputs bits/token"] = _bits(float(np.sum(ll)), sum(map(len, outs)))


def _bits(log_likelihood: float, tokens: int) -> float:
    """Mean surprise in bits per token of `tokens` tokens of natural-log likelihood."""
    return float(-log_likelihood / tokens / math.log(2))


def quality_table(records: Sequence[Record]) -> str:
    """Markdown: per method (first-seen order), the mean of each metric over its records
    ("-" where it has none)."""
    methods = list(dict.fromkeys(r.method for r in records))
    keys = list(dict.fromkeys(k for r in records for k in r.metrics))
    if not keys:
        return ""
    lines = ["| method | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
    for m in methods:
        cells = []
        for k in keys:
            vals = [r.metrics[k] for r in records if r.method == m and k in r.metrics]
            cells.append(f"{np.mean(vals):.3f}" if vals else "-")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
