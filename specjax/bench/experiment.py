"""A benchmark experiment: typed config, model loading, the run, and its outputs.

`experiments/run.py` turns an ml_collections config into an
`ExperimentConfig` (`from_config_dict`, which rejects unknown keys) and calls
`run_experiment`, which writes into the work directory:

  records.jsonl   one line per (method, prompt), appended as produced (resume)
  results.json    config, per-method summary and the per-prompt records
  table.md        the summary table (also printed)
  table.csv, table.tex, *.png   the same table as CSV / booktabs LaTeX and plots
                  (specjax.bench.report; plots need the `plots` extra)
  answers/NAME.jsonl  generated texts in Spec-Bench's model_answer layout
  paper_table.md  with `paper.layout` set: the run in a seed paper's table layout
                  (specjax.bench.paper_tables; configs/papers/*.py)

`config.mesh` ("data:2,model:4", `sharding.parse_mesh`) loads the weights
straight into their shards and runs the JAX methods on that mesh (the HF peers
run unsharded); with several processes (`jax.distributed`) every process runs
them and process 0 alone writes the outputs. `config.dtype` "auto" is float32
on CPU, bfloat16 on GPU / TPU (`sharding.default_dtype`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import time
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from specjax import sharding
from specjax.bench import metrics, paper_tables, prompts as prompts_lib, quality, registry, report
from specjax.bench import transforms
from specjax.bench.map_budget import peak_resident_bytes
from specjax.bench.runner import Generator, on_any_process, run
from specjax.sampling import Sampling


@dataclasses.dataclass(frozen=True)
class PromptConfig:
    spec_bench_path: str = ""
    spec_bench_categories: str = ""
    spec_bench_ids: str = ""  # explicit question_ids (comma separated) instead of categories
    per_category: int = 1
    humaneval: str = ""
    max_turns: int = 1
    json_schemas: str = ""  # "all" or names of `decoders.schema_suite.SUITE` tasks


@dataclasses.dataclass(frozen=True)
class PaperConfig:
    """A seed paper's table to mirror (`paper_tables.render`); layout "" = none."""

    layout: str = ""
    paper: str = ""
    table: str = ""
    paper_setting: str = ""
    here: str = ""


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    model: str
    methods: str
    draft_model: str = ""
    dtype: str = "auto"  # "float32" / "bfloat16"; auto: sharding.default_dtype()
    layout: str = "auto"  # weight layout, models.params.with_layout (auto: measured on CPU)
    mesh: str = ""  # device mesh, e.g. "data:2,model:4" (sharding.parse_mesh); "" = one device
    peers: str = ""
    transform: str = ""  # every method decodes the transformed target (`bench.transforms`)
    quality: bool = False  # add the outputs' quality metrics (`bench.quality`)
    max_new_tokens: int = 64
    chat: bool = True
    seed: int = 0
    sampling: Sampling = Sampling()
    draft: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    prompts: PromptConfig = PromptConfig()
    paper: PaperConfig = PaperConfig()


def checked_keys(cls, d: Mapping[str, Any], where: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown} in {where}; valid: {sorted(names)}")
    return d


def from_config_dict(c) -> ExperimentConfig:
    """ExperimentConfig from a ConfigDict / dict; unknown keys raise ValueError naming them."""
    d = c.to_dict() if hasattr(c, "to_dict") else dict(c)
    checked_keys(ExperimentConfig, d, "config")
    d["sampling"] = Sampling(**checked_keys(Sampling, d.get("sampling", {}), "config.sampling"))
    d["prompts"] = PromptConfig(**checked_keys(PromptConfig, d.get("prompts", {}), "config.prompts"))
    d["draft"] = dict(d.get("draft", {}))
    d["paper"] = PaperConfig(**checked_keys(PaperConfig, d.get("paper", {}), "config.paper"))
    if d["paper"].layout and d["paper"].layout not in paper_tables.LAYOUTS:
        raise ValueError(f"unknown config.paper.layout {d['paper'].layout!r}; valid: "
                         f"{sorted(paper_tables.LAYOUTS)}")
    return ExperimentConfig(**d)


def _split(s: str) -> list[str]:
    return [x.strip() for x in str(s).split(",") if x.strip()]


def load_prompts(pc: PromptConfig) -> list[prompts_lib.Prompt]:
    out = []
    if pc.spec_bench_ids:
        out += prompts_lib.load_spec_bench_ids(pc.spec_bench_path or None,
                                               _split(pc.spec_bench_ids), pc.max_turns)
    elif pc.spec_bench_categories:
        out += prompts_lib.load_spec_bench(
            pc.spec_bench_path or None, _split(pc.spec_bench_categories), pc.per_category,
            pc.max_turns)
    if pc.humaneval:
        out += prompts_lib.load_humaneval([int(i) for i in _split(pc.humaneval)])
    if pc.json_schemas:
        out += prompts_lib.load_json_schema_tasks(
            None if pc.json_schemas == "all" else _split(pc.json_schemas))
    if not out:
        raise ValueError("the config selects no prompts (set prompts.spec_bench_categories "
                         "or prompts.spec_bench_ids, prompts.humaneval and/or "
                         "prompts.json_schemas)")
    return out


def check_peers(cfg: ExperimentConfig) -> list[str]:
    """The config's peer names; ValueError for an unknown one or a setting they lack."""
    peers = _split(cfg.peers)
    bad = [p for p in peers if p not in PEERS]
    if bad:
        raise ValueError(f"unknown peers {bad}; valid: {sorted(PEERS)}")
    if peers and not cfg.sampling.greedy:
        raise ValueError("HF peers are run greedy only; set sampling.temperature=0")
    if "hf_assisted" in peers and not cfg.draft_model:
        raise ValueError("hf_assisted needs config.draft_model")
    return peers


def build_generators(cfg: ExperimentConfig, tok, target, draft) -> list[Generator]:
    """The config's JAX methods (`config.methods`) as generators; peers: `build_peers`."""
    from specjax.models.tokenizer import stop_token_ids

    specs = _split(cfg.methods)
    methods = [registry.parse(m) for m in specs]  # validates names first
    eos = stop_token_ids(tok)
    transform = transforms.parse(cfg.transform)
    if transform is not None:
        transform.check(cfg.sampling)
    ctx = registry.BuildContext(
        target_cfg=target[0], target_params=target[1], max_new_tokens=cfg.max_new_tokens,
        sampling=cfg.sampling, eos_ids=eos, draft_cfg=draft[0] if draft else None,
        draft_params=draft[1] if draft else None, args=dict(cfg.draft), seed=cfg.seed,
        transform=transform, tokenizer=tok)
    gens = []
    for spec, (info, over) in zip(specs, methods):
        g = info.build(dataclasses.replace(
            ctx, args=registry.with_overrides(ctx.args, info.name, over)))
        if transform is not None and not g.with_prompt:
            raise ValueError(f"method {spec!r} does not decode under config.transform "
                             f"({cfg.transform!r}); the autoregressive baseline and the "
                             "drafter x verifier methods do")
        gens.append(dataclasses.replace(g, name=spec) if over else g)
    names = [g.name for g in gens]
    if len(set(names)) != len(names):
        raise ValueError(f"two methods have the same name in {names}")
    return gens


PEERS = ("hf_greedy", "hf_assisted", "hf_prompt_lookup")


def build_peers(cfg: ExperimentConfig, tok) -> list[Generator]:
    """The HF transformers peers of `config.peers` (`check_peers`; loads the model, and the
    draft for `hf_assisted`)."""
    from specjax.bench import peers as peers_lib
    from specjax.models.tokenizer import stop_token_ids

    names = check_peers(cfg)
    eos = stop_token_ids(tok)
    model = peers_lib.load_hf_model(cfg.model)
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
    kw = dict(max_new_tokens=cfg.max_new_tokens, eos_ids=eos, pad_id=pad)
    gens = []
    for name in names:
        if name == "hf_greedy":
            gens.append(peers_lib.hf_generator(name, model, **kw))
        elif name == "hf_assisted":
            assistant = peers_lib.load_hf_model(cfg.draft_model)
            gens.append(peers_lib.hf_generator(name, model, assistant=assistant, **kw))
        else:
            n = int(cfg.draft.get("prompt_lookup", 3))
            gens.append(peers_lib.hf_generator(name, model, prompt_lookup_num_tokens=n, **kw))
    return gens


def enable_compilation_cache(path: str | Path | None = None, min_compile_secs: float = 0.5,
                             subprocesses: bool = False) -> Path | None:
    """Turns on JAX's persistent compilation cache (benchmark commands, the test suite).

    Default directory `<specjax cache>/xla` (`$SPECJAX_XLA_CACHE` overrides; "" or
    "off" disables). A run with ~20 methods traces so many nested functions that
    JAX's in-memory caches evict earlier methods' programs, and each later prompt
    then recompiled every method (15-60 s each on SmolLM2); with the cache the
    retrace costs seconds and XLA's compile is read back from disk. Resumed runs
    and reruns of a config benefit too, and so does a process that dropped its
    in-memory executables (`jax.clear_caches()`) to free memory.

    Args:
      path: the directory (default as above).
      min_compile_secs: programs that compile faster than this are not written.
      subprocesses: also export the settings as JAX's environment variables, so
        that child processes (notebook kernels, multi-device test scripts) use the
        same cache.

    Returns:
      The directory, or None if off.
    """
    from specjax.models.assets import cache_dir

    if path is None:
        env = os.environ.get("SPECJAX_XLA_CACHE")
        path = cache_dir() / "xla" if env is None else env
    if str(path) in ("", "off"):
        return None
    path = Path(path).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    settings = {"jax_compilation_cache_dir": str(path),
                "jax_persistent_cache_min_compile_time_secs": min_compile_secs,
                "jax_persistent_cache_min_entry_size_bytes": 0}
    for name, value in settings.items():
        jax.config.update(name, value)
        if subprocesses:
            os.environ[name.upper()] = str(value)
    return path


def warn_low_map_count() -> None:
    """Prints `map_budget.check_map_count`'s note, if any (benchmark entry points)."""
    from specjax.bench.map_budget import check_map_count

    if (warning := check_map_count()) is not None:
        print(f"warning: {warning}", flush=True)


def parse_self_draft(spec: str, num_layers: int | None = None) -> int | None:
    """L of a "self:L" draft spec (the target's first L layers); None for any other spec.

    Args:
      spec: a draft model spec ("self:10", an asset name, a path, "").
      num_layers: the target's layer count, the largest valid L (None: not checked).

    Raises:
      ValueError: "self:" followed by anything but an integer in [1, num_layers].
    """
    if not spec.startswith("self:"):
        return None
    try:
        layers = int(spec[len("self:"):])
    except ValueError:
        layers = 0
    if not 1 <= layers <= (num_layers or layers):
        top = num_layers if num_layers is not None else "the target's layer count"
        raise ValueError(f"bad self-draft {spec!r}: expected self:L, the target's first L "
                         f"layers, with L an integer in [1, {top}]")
    return layers


def load_models(model: str, draft_model: str, dtype: str, layout: str, progress: bool = True,
                target=None, mesh=None):
    """((cfg, params) of the target, (cfg, params) of the draft or None), placed in `layout`.

    `draft_model`: "" (none), an asset name / path, or "self:L": the target's
    first L layers (`parse_self_draft`, `models.params.first_layers`, sharing
    its arrays). `target` = an already loaded (cfg, params) to use instead of
    loading `model`. `dtype`: "float32", "bfloat16" or "auto"
    (`sharding.resolve_dtype`). `mesh`: a `jax.sharding.Mesh` to load the
    loaded models' weights into, shard by shard (`models.params.place`); run
    them under `jax.set_mesh(mesh)`.
    Raises ValueError for a bad "self:L" (checked before the target loads) and
    when the draft's vocabulary differs from the target's.
    """
    from specjax.models import loading
    from specjax.models import params as params_lib

    parse_self_draft(draft_model)
    dtype = sharding.resolve_dtype(dtype)
    if target is None:
        tcfg, tparams = loading.load(model, dtype, progress=progress)
        target = params_lib.place(tcfg, tparams, layout, mesh=mesh)
    draft = None
    if (layers := parse_self_draft(draft_model, target[0].num_layers)) is not None:
        draft = params_lib.first_layers(*target, layers)
    elif draft_model:
        dcfg, dparams = loading.load(draft_model, dtype, progress=progress)
        if dcfg.vocab_size != target[0].vocab_size:
            raise ValueError(f"draft vocabulary ({dcfg.vocab_size}) differs from the target's "
                             f"({target[0].vocab_size})")
        draft = params_lib.place(dcfg, dparams, layout, mesh=mesh)
    return target, draft


def run_experiment(cfg: ExperimentConfig, workdir: str | Path, progress: bool = True) -> dict:
    """Runs the experiment and writes its outputs (see module docstring; only process 0
    writes when several processes run)."""
    from specjax.models import loading

    workdir = Path(workdir)
    for m in _split(cfg.methods):  # bad method names / overrides fail before the models load
        registry.parse(m)
    peers = check_peers(cfg)
    items = load_prompts(cfg.prompts)
    mesh = sharding.parse_mesh(cfg.mesh)
    writer = jax.process_index() == 0
    _check_not_resuming_many_processes(workdir / "records.jsonl")
    if writer:
        workdir.mkdir(parents=True, exist_ok=True)
    warn_low_map_count()
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    (tcfg, tparams), draft = load_models(cfg.model, cfg.draft_model, cfg.dtype, cfg.layout,
                                         progress=progress and writer, mesh=mesh)
    tok = loading.load_tokenizer(cfg.model, progress=progress and writer)
    load_s = time.perf_counter() - t0
    records_path = workdir / "records.jsonl" if writer else None
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
        gens = build_generators(cfg, tok, (tcfg, tparams), draft)
        records = run(gens, items, tok, chat=cfg.chat, records_path=records_path,
                      progress=progress and writer)
    if peers:
        # The peers run after the JAX methods, once those and their weights are freed, so
        # the process never holds both stacks' copies of the model (a Qwen 1.5B + 0.5B run
        # held 17.5 GB with both); same prompts, same baseline, one process.
        del gens, tparams, draft
        jax.clear_caches()
        gc.collect()
        records += run(build_peers(cfg, tok), items, tok, chat=cfg.chat,
                       records_path=records_path, progress=progress and writer)
    if cfg.quality:
        add_quality(records, items, tok, cfg, (tcfg, tparams))
    rows = metrics.summarize(records, baseline="autoregressive",
                             check_identity=cfg.sampling.greedy)
    table = metrics.markdown_table(rows)
    if any(r.metrics for r in records):
        table += "\n\nOutput quality (`specjax.bench.quality`), mean over prompts:\n\n" + \
            quality.quality_table(records)
    result = dict(
        config=jsonable(dataclasses.asdict(cfg)), load_seconds=load_s, table=table,
        platform=str(jax.devices()[0].platform), dtype=tcfg.dtype,
        mesh=dict(mesh.shape) if mesh is not None else {},
        devices=mesh.size if mesh is not None else 1, processes=jax.process_count(),
        load_average_before_after=[list(load_before), list(os.getloadavg())],
        peak_resident_bytes=peak_resident_bytes(),
        summary=[dataclasses.asdict(r) for r in rows],
        records=[dataclasses.asdict(r) for r in records],
    )
    if not writer:
        return result
    (workdir / "table.md").write_text(table + "\n")
    _write_answers(workdir / "answers", records, cfg)
    (workdir / "results.json").write_text(json.dumps(result, indent=1))
    report.write_report(workdir, rows, records, baseline="autoregressive")
    if cfg.paper.layout:
        result["paper_table"] = write_paper_table(workdir, cfg, records)
    return result


def add_quality(records, items, tok, cfg: ExperimentConfig, target) -> None:
    """`quality.add_quality` with the run's target as the scorer (bits/token under the
    untransformed target) and the JSON schema validator."""
    from specjax.bench.runner import encode_turns
    from specjax.decoders import grammar
    from specjax.decoders.superposed import draft_log_likelihood

    def score(prompts, outs):
        return draft_log_likelihood(target[1], target[0], prompts, [[o] for o in outs])[:, 0]

    quality.add_quality(
        records, items, lambda p: encode_turns(tok, p, [], cfg.chat), score,
        lambda text, schema: grammar.validate(text, json.loads(schema)), batch=1)


def _check_not_resuming_many_processes(records_path: Path) -> None:
    """ValueError on every process if several run and one would resume: the others
    would not skip the recorded prompts, and the processes' collectives would deadlock."""
    if jax.process_count() > 1 and on_any_process(records_path.exists()):
        raise ValueError(f"{records_path} exists: a run of several processes cannot resume; "
                         "use a new --workdir (or one process)")


def write_paper_table(workdir: Path, cfg: ExperimentConfig, records) -> str:
    """`paper_table.md`: the records in the layout of `cfg.paper` (returned too)."""
    p = cfg.paper
    text = paper_tables.render(
        p.layout, paper_tables.PaperNote(p.paper, p.table, p.paper_setting, p.here), records,
        paper_tables.RunInfo(cfg.model, cfg.draft_model, cfg.sampling.temperature))
    (Path(workdir) / "paper_table.md").write_text(text)
    return text


def _write_answers(folder: Path, records, cfg: ExperimentConfig):
    """One Spec-Bench `model_answer` jsonl per method (read by Spec-Bench's speed.py).

    Per question: `choices[0]` holds per-turn `turns` (texts), `new_tokens`,
    `wall_time` and the per-step `accept_lengths` (tokens per target forward,
    bonus included; reconstructed from the step histogram, so in sorted order).
    """
    folder.mkdir(exist_ok=True)
    for m in dict.fromkeys(r.method for r in records):
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in m)
        with open(folder / f"{safe}.jsonl", "w") as f:
            for r in (r for r in records if r.method == m):
                accept = [k + 1 for k, n in enumerate(r.accept_hist) for _ in range(n)] \
                    if r.steps else [1] * r.new_tokens
                f.write(json.dumps(dict(
                    question_id=r.question_id, category=r.category, model_id=f"{cfg.model}:{m}",
                    choices=[dict(index=0, turns=r.turn_texts, new_tokens=r.turn_tokens,
                                  wall_time=r.turn_seconds, accept_lengths=accept,
                                  decoding_steps=[r.target_calls])],
                    tstamp=time.time())) + "\n")


def jsonable(x):
    """`x` with numpy scalars turned into Python numbers (for json.dumps)."""
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    return x
