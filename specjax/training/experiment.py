"""`python -m experiments.train --config=configs/train/<head>.py:<model>`: corpus ->
teacher pass -> training -> a head asset, each stage cached and resumable.

1. Corpus (`training.corpus`): the configured sources tokenised with the
   target's tokenizer into `<cache>/corpora/<name>/` (built once; evaluation
   sets guarded out; provenance.json records what went in).
2. Teacher (`training.teacher`): the target's hidden states over both splits
   into `<cache>/teacher/<corpus name>-<target fingerprint>/{train,val}/`
   (resumes after a kill).
3. Training (`training.trainer`) in `--workdir`: checkpoints, metrics.jsonl,
   curves.png; a rerun resumes from the latest checkpoint.
4. The head (best validation checkpoint's weights when one exists, else the
   last) saved with its target's identity to `<cache>/heads/<head_name>/`
   (`training.assets`), where configs and `load_head` find it by name.
5. Optionally (`stage2.steps > 0`) the MLP speculator paper's second stage: the
   target's own continuations of training prompts (`training.generations`,
   cached in `<cache>/corpora/`), their teacher pass, and training on them from
   the stage-1 weights in `<workdir>/stage2`; the stage-1 head is kept as
   `<head_name>-stage1`, the final one is `<head_name>`.

<cache> = `$SPECJAX_CACHE` or `~/.cache/specjax`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np

from specjax.drafters import eagle, heads, hydra, medusa, mlp_speculator as ms
from specjax.sampling import Sampling
from specjax.training import assets, corpus, data as data_lib, generations, teacher, trainer


@dataclasses.dataclass(frozen=True)
class CorpusConfig:
    """sources: `corpus.parse_sources` spec; seq_len: tokens per packed record;
    max_tokens: stop after this many tokens; name: cache directory ("" = derived)."""

    sources: str = "stdlib"
    seq_len: int = 256
    max_tokens: int = 1_000_000
    val_percent: float = 2.0
    name: str = ""


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """The head to train; `kind` names an entry of `HEADS`. draft_vocab > 0 truncates
    the heads' vocabulary to the corpus' most frequent tokens (FR-Spec)."""

    kind: str = "mlp_speculator"
    n_predict: int = 3  # stages (MLP speculator) / heads (Medusa, Hydra); unused by EAGLE
    inner_dim: int = 0  # MLP speculator
    draft_vocab: int = 0
    tie_weights: bool = False  # MLP speculator
    scale_input: bool = False  # MLP speculator
    own_head: bool = False  # Medusa: each head its own LM head (else the target's, frozen)
    num_layers: int = 1  # Hydra: residual blocks per head
    distill: bool = False  # Hydra: Hydra++ teacher distillation (soft CE to the target's law)
    noise: float = 0.2  # EAGLE: uniform feature-noise amplitude (x 512 / seq_len)
    feature_weight: float = 1.0  # EAGLE: SmoothL1 feature regression
    token_weight: float = 0.1  # EAGLE: soft cross-entropy to the target's next-token law


@dataclasses.dataclass(frozen=True)
class Stage2Config:
    """The MLP speculator paper's second stage (arXiv:2404.19124): after stage 1, train on
    the target's own continuations of `prompts` training prompts (`training.generations`:
    `prompt_len` prompt tokens, `new_tokens` generated with temperature / top_k; 0 = greedy)
    for `steps` more steps (0: no stage 2) at `learning_rate` (0 = stage 1's). The
    stage-1 head is kept as `<head_name>-stage1`."""

    steps: int = 0
    prompts: int = 1024
    val_prompts: int = 32
    prompt_len: int = 64
    new_tokens: int = 192
    temperature: float = 1.0
    top_k: int = 10
    learning_rate: float = 0.0
    batch: int = 16


@dataclasses.dataclass(frozen=True)
class TrainExperimentConfig:
    target: str
    head_name: str
    corpus: CorpusConfig = CorpusConfig()
    head: HeadConfig = HeadConfig()
    train: trainer.TrainConfig = trainer.TrainConfig()
    stage2: Stage2Config = Stage2Config()
    batch_size: int = 8
    teacher_batch: int = 4
    validation_records: int = 64  # validation examples per evaluation (evenly spread)
    dtype: str = "float32"


HEADS = ("mlp_speculator", "medusa", "eagle", "hydra")
# frozen inputs a saved head keeps; the others are the target's own tensors, taken from
# the loaded target at drafting time (registry)
SAVED_FROZEN = {"mlp_speculator": None, "medusa": None, "eagle": ("vocab_ids",),
                "hydra": ("vocab_ids",)}


def from_config_dict(c) -> TrainExperimentConfig:
    """The config from a ConfigDict / dict; unknown keys raise ValueError naming them."""
    from specjax.bench.experiment import checked_keys

    d = dict(checked_keys(TrainExperimentConfig, c.to_dict() if hasattr(c, "to_dict") else c,
                          "config"))
    d["corpus"] = CorpusConfig(**checked_keys(CorpusConfig, d.get("corpus", {}), "config.corpus"))
    d["head"] = HeadConfig(**checked_keys(HeadConfig, d.get("head", {}), "config.head"))
    d["train"] = trainer.TrainConfig(**checked_keys(trainer.TrainConfig, d.get("train", {}),
                                                    "config.train"))
    d["stage2"] = Stage2Config(**checked_keys(Stage2Config, d.get("stage2", {}),
                                              "config.stage2"))
    cfg = TrainExperimentConfig(**d)
    if cfg.head.kind not in HEADS:
        raise ValueError(f"unknown head kind {cfg.head.kind!r}; valid: {HEADS}")
    if not cfg.head_name:
        raise ValueError("config.head_name is required (the name the trained head is saved as)")
    return cfg


def corpus_name(cfg: TrainExperimentConfig) -> str:
    if cfg.corpus.name:
        return cfg.corpus.name
    key = json.dumps([dataclasses.asdict(cfg.corpus), cfg.target], sort_keys=True)
    return f"{cfg.target}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def head_setup(cfg: TrainExperimentConfig, target_cfg, target_params, vocab_ids):
    """(head config, training objective, frozen inputs) of `cfg.head.kind`."""
    h = cfg.head
    if h.kind == "mlp_speculator":
        hcfg = ms.SpeculatorConfig(dim=target_cfg.dim, vocab_size=target_cfg.vocab_size,
                                   n_predict=h.n_predict, inner_dim=h.inner_dim,
                                   draft_vocab=h.draft_vocab, tie_weights=h.tie_weights,
                                   scale_input=h.scale_input)
        return hcfg, ms.SpeculatorObjective(hcfg), heads.vocab_params(vocab_ids, hcfg)
    if h.kind == "eagle":
        hcfg = eagle.EagleConfig.for_target(target_cfg, h.draft_vocab)
        return (hcfg, eagle.EagleObjective(hcfg, noise=h.noise, feature_weight=h.feature_weight,
                                           token_weight=h.token_weight),
                eagle.frozen_params(hcfg, target_cfg, target_params, vocab_ids))
    if h.kind == "hydra":
        hcfg = hydra.HydraConfig(dim=target_cfg.dim, vocab_size=target_cfg.vocab_size,
                                 num_heads=h.n_predict, num_layers=h.num_layers,
                                 draft_vocab=h.draft_vocab, own_head=h.own_head)
        return (hcfg, hydra.HydraObjective(hcfg, distill=h.distill),
                hydra.frozen_params(hcfg, target_cfg, target_params, vocab_ids))
    hcfg = medusa.MedusaConfig(dim=target_cfg.dim, vocab_size=target_cfg.vocab_size,
                               num_heads=h.n_predict, own_head=h.own_head,
                               draft_vocab=h.draft_vocab)
    frozen = medusa.frozen_params(hcfg, heads.target_head(target_cfg, target_params), vocab_ids)
    return hcfg, medusa.MedusaObjective(hcfg), frozen


def run(cfg: TrainExperimentConfig, workdir, *, target=None, tokenizer=None, cache=None,
        log: Callable[[str], None] = print, progress: bool = True) -> dict:
    """Runs the four stages (see module docstring); returns a summary dict.

    `target` = an already loaded (cfg, params) and `tokenizer` an object with
    `encode(text, add_special_tokens=False)` and `eos_token_id` (tests pass
    tiny ones; default: `cfg.target` loaded); `cache` overrides the cache root.
    """
    from specjax.models import assets as model_assets

    root = Path(cache) if cache else Path(model_assets.cache_dir())
    if target is None:
        from specjax.models import loading

        target = loading.load(cfg.target, cfg.dtype, progress=progress)
        tokenizer = loading.load_tokenizer(cfg.target, progress=progress)
    tcfg, tparams = target
    identity = assets.target_identity(cfg.target, tcfg, tparams)
    eos = int(tokenizer.eos_token_id)

    cdir = root / "corpora" / corpus_name(cfg)
    if not cdir.is_dir():
        log(f"building corpus {cdir}")
        corpus.build(corpus.parse_sources(cfg.corpus.sources),
                     lambda t: tokenizer.encode(t, add_special_tokens=False),
                     cdir, seq_len=cfg.corpus.seq_len, eos_id=eos, tokenizer_name=cfg.target,
                     max_tokens=cfg.corpus.max_tokens, val_percent=cfg.corpus.val_percent,
                     progress=progress)
    vocab_ids = None
    if cfg.head.draft_vocab:
        vocab_ids = corpus.frequent_tokens(corpus.PackedRecords(cdir, "train"),
                                           cfg.head.draft_vocab, always=(eos,))
    hcfg, objective, frozen = head_setup(cfg, tcfg, tparams, vocab_ids)
    keep = SAVED_FROZEN[cfg.head.kind]
    saved = {k: v for k, v in frozen.items() if keep is None or k in keep}
    stage1 = _train_stage(cfg, objective, frozen, target, identity, cdir, root, cfg.train,
                          Path(workdir), None, log, progress)
    s2 = cfg.stage2
    name1 = f"{cfg.head_name}-stage1" if s2.steps else cfg.head_name
    out = assets.save_head(name1, cfg.head.kind, hcfg, {**stage1["params"], **saved}, identity,
                           training=stage1["record"])
    log(f"head saved to {out}")
    result = {"head": str(out), "history": stage1["history"],
              "best_val_loss": stage1["best_val_loss"], "corpus": str(cdir),
              "teacher": stage1["teacher"]}
    if not s2.steps:
        return result
    gdir = root / "corpora" / generations_name(cfg, cdir.name, identity)
    if not gdir.is_dir():
        log(f"generating the stage-2 corpus {gdir}")
        generations.build(tcfg, tparams, cdir, gdir, target_name=cfg.target,
                          prompts={"train": s2.prompts, "val": s2.val_prompts},
                          prompt_len=s2.prompt_len, new_tokens=s2.new_tokens,
                          sampling=Sampling(temperature=s2.temperature, top_k=s2.top_k),
                          eos_id=eos, batch=s2.batch, seed=cfg.train.seed, progress=progress)
    tc = dataclasses.replace(cfg.train, steps=s2.steps, warmup_steps=min(cfg.train.warmup_steps,
                                                                        s2.steps - 1),
                             learning_rate=s2.learning_rate or cfg.train.learning_rate)
    stage2 = _train_stage(cfg, objective, frozen, target, identity, gdir, root, tc,
                          Path(workdir) / "stage2", stage1["params"], log, progress)
    out = assets.save_head(cfg.head_name, cfg.head.kind, hcfg, {**stage2["params"], **saved},
                           identity, training={**stage2["record"], "stage1": stage1["record"]})
    log(f"stage-2 head saved to {out}")
    return {**result, "head": str(out), "stage1_head": result["head"],
            "stage2_history": stage2["history"], "stage2_best_val_loss": stage2["best_val_loss"]}


def generations_name(cfg: TrainExperimentConfig, corpus: str, identity: dict) -> str:
    """Cache directory name of the stage-2 generations of `corpus` by this target."""
    key = json.dumps([dataclasses.asdict(cfg.stage2), corpus, identity["fingerprint"],
                      cfg.train.seed], sort_keys=True)
    return f"{corpus}-gen-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def _train_stage(cfg: TrainExperimentConfig, objective, frozen, target, identity, cdir, root,
                 train_cfg, workdir: Path, initial_params, log, progress) -> dict:
    """Teacher pass over a corpus, then training on it in `workdir`: {"params" (the best
    validation checkpoint's), "history", "best_val_loss", "teacher", "record" (what the
    head asset records of its training)}."""
    tcfg, tparams = target
    prov = json.loads((cdir / "provenance.json").read_text())
    tdir = root / "teacher" / f"{cdir.name}-{identity['fingerprint']}"
    for split in ("train", "val"):
        teacher.run(tcfg, tparams, identity, cdir, tdir / split, split=split,
                    batch=cfg.teacher_batch, progress=progress)
    train_src = teacher.TeacherSource(cdir, tdir / "train", "train", identity)
    val_src = teacher.TeacherSource(cdir, tdir / "val", "val", identity)
    val_n = min(cfg.validation_records, len(val_src))
    # spread over the split (its records follow the documents' order: the first ones
    # would be a few files)
    val_items = [val_src[int(i)] for i in np.linspace(0, len(val_src) - 1, val_n)]
    seq_len = int(prov["seq_len"])
    res = trainer.train(
        objective, frozen,
        data_lib.batches(train_src, cfg.batch_size, seed=train_cfg.seed), train_cfg, workdir,
        validation=(lambda: data_lib.eval_batches(val_items, cfg.batch_size)) if val_n else None,
        tokens_per_batch=cfg.batch_size * seq_len, initial_params=initial_params, log=log,
        progress=progress)
    trainer.plot_curves(workdir)
    last = res.history[-1] if res.history else {}
    record = {"corpus": cdir.name, "corpus_provenance": {
                  k: prov.get(k) for k in ("sources", "tokens", "records", "eval_guard",
                                           "tokenizer", "seq_len", "generations")},
              "steps": train_cfg.steps, "batch_size": cfg.batch_size,
              "tokens_seen": train_cfg.steps * cfg.batch_size * seq_len,
              "best_val_loss": res.best_val_loss, "last": dict(last)}
    return {"params": _best_params(workdir, res), "history": res.history,
            "best_val_loss": res.best_val_loss, "teacher": str(tdir), "record": record}


def _best_params(workdir, res: trainer.TrainResult):
    """The best validation checkpoint's params (the last ones if none)."""
    import orbax.checkpoint as ocp

    best = ocp.CheckpointManager(Path(workdir).absolute() / "best")
    step = best.best_step()
    if step is None:
        return res.state.params
    restored = best.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(res.state), data=ocp.args.JsonRestore()))
    return restored.state.params
