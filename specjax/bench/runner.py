"""Runs named generators over benchmark prompts and records timings.

A generator is anything that maps one prompt's token ids to a `GenResult`:
the autoregressive baseline, a speculative `Method`, or a peer (HuggingFace
transformers). Prompts are run one at a time (batch 1, as Spec-Bench does);
for each prompt every method runs back to back, so slow drifts of the
machine hit all methods alike. A call that compiled is run again so that the
reported seconds never include compilation; compilation time is recorded
separately. Records are appended to a JSONL file as they are produced and a
rerun skips (method, prompt) pairs already there, so an interrupted run
resumes.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from specjax.bench.map_budget import MapBudget
from specjax.bench.metrics import CompileTimer, Record, add_hist
from specjax.bench.prompts import Prompt


@dataclasses.dataclass
class GenResult:
    tokens: list[int]
    target_calls: int
    steps: int = 0
    accept_hist: list[int] = dataclasses.field(default_factory=list)
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)  # a decoder's own
    outputs: list[list[int]] = dataclasses.field(default_factory=list)  # all (beams, drafts)


@dataclasses.dataclass(frozen=True)
class Generator:
    """A named generation function: prompt token ids -> GenResult (with `with_prompt`,
    (ids, the benchmark `Prompt`) -> GenResult: e.g. constrained decoding reads the
    prompt's JSON schema)."""

    name: str
    fn: Callable[..., GenResult]
    jax_based: bool = True  # compilation is tracked and excluded for JAX generators
    with_prompt: bool = False


def encode_turns(tok, prompt: Prompt, answers: Sequence[str], chat: bool) -> list[int]:
    """Token ids for the next turn of `prompt`, given the answers so far."""
    from specjax.models.tokenizer import apply_chat_template

    if prompt.raw or not chat:
        return tok.encode(prompt.turns[len(answers)], add_special_tokens=False)
    conv = []
    for i, a in enumerate(answers):
        conv += [{"role": "user", "content": prompt.turns[i]}, {"role": "assistant", "content": a}]
    conv.append({"role": "user", "content": prompt.turns[len(answers)]})
    return apply_chat_template(tok, conv)


def on_any_process(flag: bool) -> bool:
    """`flag` or-ed over the processes of a `jax.distributed` run."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.max(multihost_utils.process_allgather(np.int32(flag))))


def _timed(gen: Generator, ids: list[int], prompt: Prompt
           ) -> tuple[GenResult, float, float]:
    """Runs `gen` once; reruns if it compiled (on any process, so that processes of a
    multi-host run make the same calls). Returns (result, seconds, compile seconds)."""
    args = (ids, prompt) if gen.with_prompt else (ids,)
    with CompileTimer() as ct:
        t0 = time.perf_counter()
        res = gen.fn(*args)
        seconds = time.perf_counter() - t0
    if on_any_process(ct.seconds > 0):
        t0 = time.perf_counter()
        res = gen.fn(*args)
        seconds = time.perf_counter() - t0
    return res, seconds, ct.seconds


def run(
    generators: Sequence[Generator],
    prompts: Sequence[Prompt],
    tok,
    *,
    chat: bool = True,
    records_path: str | Path | None = None,
    progress: bool = True,
    map_budget: MapBudget | None = None,
) -> list[Record]:
    """Runs every generator on every prompt (all turns) and returns the records.

    Args:
      generators: the methods; the first one is normally the baseline.
      prompts: benchmark items; multi-turn items are answered turn by turn,
        each turn a fresh generation over the whole conversation so far.
      tok: the tokenizer shared by all generators.
      chat: apply the chat template (raw prompts such as HumanEval never are).
      records_path: JSONL file to append records to and resume from.
      progress: show a tqdm bar with live tau and tokens/s.
      map_budget: drops compiled programs between generations when the process
        nears Linux's memory-map limit (default: a `MapBudget()` reading the limit).
    """
    map_budget = MapBudget() if map_budget is None else map_budget
    done: dict[tuple[str, str], Record] = {}
    if records_path and Path(records_path).exists():
        for line in Path(records_path).read_text().splitlines():
            if line.strip():
                r = Record(**json.loads(line))
                done[(r.method, r.question_id)] = r
    sink = open(records_path, "a") if records_path else None
    records = []
    bar = tqdm(total=len(prompts) * len(generators), disable=not progress, desc="generate")
    try:
        for p in prompts:
            for g in generators:
                if (g.name, p.question_id) in done:
                    records.append(done[(g.name, p.question_id)])
                    bar.update()
                    continue
                rec = _run_one(g, p, tok, chat)
                if map_budget.relieve() and progress:
                    tqdm.write(f"[budget] dropped the compiled programs after {g.name} "
                               f"(clear {map_budget.clears}); later methods reload them")
                records.append(rec)
                if sink:
                    sink.write(json.dumps(dataclasses.asdict(rec)) + "\n")
                    sink.flush()
                bar.set_postfix_str(f"{g.name}: tau {rec.tau:.2f}, {rec.tokens_per_second:.1f} tok/s")
                bar.update()
    finally:
        bar.close()
        if sink:
            sink.close()
    return records


def _run_one(g: Generator, p: Prompt, tok, chat: bool) -> Record:
    answers, all_tokens, turn_tokens, turn_seconds = [], [], [], []
    compile_s = 0.0
    calls = steps = 0
    hist = np.zeros(1, np.int64)
    turn_metrics: list[dict[str, float]] = []
    outputs: list[list[int]] = []
    for _ in p.turns:
        ids = encode_turns(tok, p, answers, chat)
        res, s, c = _timed(g, ids, p)
        turn_metrics.append(res.metrics)
        outputs = outputs or res.outputs  # the first turn's
        turn_seconds.append(s)
        turn_tokens.append(len(res.tokens))
        compile_s += c
        calls += res.target_calls
        steps += res.steps
        hist = add_hist(hist, res.accept_hist)
        answers.append(tok.decode(res.tokens, skip_special_tokens=True))
        all_tokens += res.tokens
    return Record(method=g.name, question_id=p.question_id, category=p.category,
                  new_tokens=len(all_tokens), seconds=sum(turn_seconds), target_calls=calls,
                  steps=steps, accept_hist=hist.tolist(), compile_seconds=compile_s,
                  tokens=all_tokens, turn_texts=answers, turn_tokens=turn_tokens,
                  turn_seconds=turn_seconds, metrics=mean_metrics(turn_metrics),
                  outputs=outputs)


def mean_metrics(per_turn: Sequence[dict[str, float]]) -> dict[str, float]:
    """Each metric's mean over the turns that report it."""
    keys = dict.fromkeys(k for m in per_turn for k in m)
    return {k: float(np.mean([m[k] for m in per_turn if k in m])) for k in keys}
