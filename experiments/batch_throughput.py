"""Batched throughput, SmartSpec vs fixed K vs no speculation (arXiv:2406.14066).

    python -m experiments.batch_throughput --config=configs/batch_throughput.py \
        --workdir=workdir/batch_throughput
    python -m experiments.batch_throughput --config=configs/batch_throughput.py:smollm2 \
        --config.batch_sizes=1,4 --config.max_new_tokens=16

Loads the models and prompts of the config, runs `specjax.bench.throughput`
and writes into --workdir: table.md (tokens/s and speedup per batch size,
then per-cell details), results.json (config, machine load, every cell) and
throughput.png (tokens/s and speedup vs batch size; needs matplotlib).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from pathlib import Path

import jax
from absl import app, flags
from ml_collections import config_flags

from specjax.bench import throughput
from specjax.bench import experiment
from specjax.bench.experiment import jsonable, load_models
from specjax.bench.registry import BuildContext

_CONFIG = config_flags.DEFINE_config_file("config", None, "Throughput config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "workdir/batch_throughput", "Output directory.")

TINY_MODEL = "tiny-random"  # a random 2-layer transformer: the test model, no download
TOY_TEXTS = ("def add(a, b): return a + b", "for i in range(9): print(i)",
             "the cat sat on the mat. the", "x = [i * i for i in range(10)]")
PLOT_NAME = "throughput.png"


def tiny_model(seed: int = 0, layout: str = "auto"):
    """(ModelConfig, params) of the random 2-layer transformer named TINY_MODEL."""
    from specjax.models import params as params_lib
    from specjax.models.config import ModelConfig

    cfg = ModelConfig(arch="llama", vocab_size=96, dim=32, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=8, ffn_dim=64)
    params = params_lib.init_params(cfg, jax.random.key(seed), scale=0.3)
    return params_lib.with_layout(cfg, params, layout)


def toy_prompts(n: int, vocab_size: int) -> list[list[int]]:
    """`n` short prompts (TOY_TEXTS cycled), characters mapped to ids in [0, vocab_size)."""
    return [[(ord(ch) - 32) % vocab_size for ch in TOY_TEXTS[i % len(TOY_TEXTS)]]
            for i in range(n)]


def _interleave(groups: list[list]) -> list:
    """Round robin over groups, so that the first B prompts mix the sources."""
    out = []
    for i in range(max((len(g) for g in groups), default=0)):
        out += [g[i] for g in groups if i < len(g)]
    return out


def load(cfg: throughput.ThroughputConfig) -> tuple[BuildContext, list[list[int]], dict]:
    """Target (+ draft), prompts as token ids, and facts for results.json."""
    from specjax.models import loading

    t0 = time.perf_counter()
    tiny = tiny_model(cfg.seed, cfg.layout) if cfg.model == TINY_MODEL else None
    (tcfg, tparams), draft = load_models(cfg.model, cfg.draft_model, cfg.dtype, cfg.layout,
                                         target=tiny)
    if tiny is not None:
        tok, eos = None, ()
    else:
        from specjax.models.tokenizer import stop_token_ids

        tok = loading.load_tokenizer(cfg.model)
        eos = stop_token_ids(tok)
    if cfg.toy_prompts > 0:
        prompts, ids = [f"toy{i}" for i in range(cfg.toy_prompts)], toy_prompts(
            cfg.toy_prompts, tcfg.vocab_size)
    else:
        if tok is None:
            raise ValueError(f"model {TINY_MODEL!r} has no tokenizer; set config.toy_prompts")
        from specjax.bench.experiment import load_prompts
        from specjax.bench.runner import encode_turns

        items = load_prompts(cfg.prompts)
        by_source = {}
        for p in items:
            by_source.setdefault(p.source, []).append(p)
        items = _interleave(list(by_source.values()))
        prompts = [p.question_id for p in items]
        ids = [encode_turns(tok, p, [], cfg.chat) for p in items]
    ctx = BuildContext(target_cfg=tcfg, target_params=tparams, max_new_tokens=cfg.max_new_tokens,
                       sampling=cfg.sampling, eos_ids=tuple(eos),
                       draft_cfg=draft[0] if draft else None,
                       draft_params=draft[1] if draft else None, args=dict(cfg.draft),
                       seed=cfg.seed)
    facts = dict(load_seconds=time.perf_counter() - t0, prompts=prompts,
                 prompt_lengths=[len(x) for x in ids])
    return ctx, ids, facts


def run(cfg: throughput.ThroughputConfig, workdir: str | Path, log=print) -> dict:
    """Measures and writes table.md, results.json and throughput.png into `workdir`."""
    workdir = Path(workdir)
    # bad settings fail before any model is loaded
    throughput.parse_batch_sizes(cfg.batch_sizes)
    throughput.parse_methods(cfg.methods)
    workdir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    ctx, ids, facts = load(cfg)
    res = throughput.run_throughput(
        ctx, ids, cfg.batch_sizes, cfg.methods, repeats=cfg.repeats,
        cost_context=cfg.cost_context or None, log=log)
    table = throughput.markdown_table(res)
    details = throughput.details_table(res)
    (workdir / "table.md").write_text(
        f"Generated tokens / s of the whole batch (median of {res.repeats} runs, "
        f"{res.max_new_tokens} new tokens per row, {cfg.model}"
        + (f" <- {cfg.draft_model}" if cfg.draft_model else
           f" <- self_layers={cfg.draft.get('self_layers', '-')}")
        + f"); speedup over {throughput.BASELINE} at the same B.\n\n"
        + table + "\n\n" + details + "\n")
    result = dict(config=jsonable(dataclasses.asdict(cfg)), **facts,
                  platform=str(jax.devices()[0].platform),
                  load_average_before_after=[list(load_before), list(os.getloadavg())],
                  table=table, **throughput.to_json(res))
    (workdir / "results.json").write_text(json.dumps(result, indent=1))
    try:
        throughput.plot_throughput(res, workdir / PLOT_NAME)
    except ImportError as e:
        warnings.warn(f"{PLOT_NAME} not written: {e}")
    return dict(result, result=res)


def main(argv):
    del argv
    if _CONFIG.value is None:
        raise app.UsageError("--config is required (e.g. --config=configs/batch_throughput.py)")
    cfg = throughput.from_config_dict(_CONFIG.value)
    experiment.enable_compilation_cache()
    experiment.warn_low_map_count()
    out = run(cfg, _WORKDIR.value)
    print(out["table"])
    print(f"results written to {_WORKDIR.value}/results.json")


if __name__ == "__main__":
    app.run(main)
