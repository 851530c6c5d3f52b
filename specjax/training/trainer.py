"""The training loop of draft heads: one jitted step, data parallel, exact resume.

A head is trained through an `Objective`: a static object with

    params = objective.init(key, frozen)
    loss, metrics = objective.loss(params, frozen, batch, key)

where `frozen` is whatever the head reads of the frozen target (e.g. its LM
head for EAGLE; may be None) and `batch` a dict of arrays with the batch on
axis 0 (token ids, the target's stored hidden states, loss weights; see
`specjax.training.data`). `metrics` are scalars or small vectors (per-stage
accuracies) averaged over the batch.

`train` runs `TrainConfig.steps` steps of AdamW with linear warm-up and cosine
decay and global-norm clipping (optax). With a mesh, the batch is split over
its "data" axis and the parameters are replicated, so the same jitted step
is data parallel (the loss is a mean over the global batch: 1 and 8 devices
give the same loss). Checkpoints (orbax `CheckpointManager`) hold the train
state (params, optimizer state, step, rng key) and the data iterator's state
(`get_state()` of a grain iterator), saved every `save_every` steps and at the
end; a restarted run resumes from the latest one and reproduces the run that
was not interrupted. The best checkpoint by validation loss is kept apart.
Metrics go to `metrics.jsonl` (one line per logged step) and, with
matplotlib, `curves.png` (loss and per-stage top-1 accuracy vs tokens seen).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec


class Objective(Protocol):
    """What a head's training provides: `init` its trainable params (given the frozen
    inputs it reads of the target) and `loss` -> (scalar, {"loss_i": [n], "top1_i": [n],
    ...}) on a batch; `key` is None at evaluation (no training noise)."""

    def init(self, key: jax.Array, frozen=None) -> Any: ...

    def loss(self, params, frozen, batch: dict, key: jax.Array | None) -> tuple[jax.Array, dict]:
        ...


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping of a training run.

    Attributes:
      steps: optimizer steps in total (a resumed run stops at the same step).
      learning_rate, warmup_steps, min_lr_ratio: AdamW's peak rate, its linear
        warm-up and the final fraction of the cosine decay.
      weight_decay, b1, b2, clip_norm: AdamW's decay and moments; global-norm
        gradient clipping.
      log_every, eval_every, save_every: steps between metric lines,
        validation passes and checkpoints (the last step always saves).
      keep: checkpoints kept for resuming (the best one is kept apart).
      seed: the rng of initialisation and of the objective's noise.
    """

    steps: int = 1000
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.95
    clip_norm: float = 1.0
    log_every: int = 10
    eval_every: int = 100
    save_every: int = 100
    keep: int = 2
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.learning_rate <= 0 or self.warmup_steps < 0:
            raise ValueError(f"steps >= 1, learning_rate > 0 and warmup_steps >= 0 required; "
                             f"got {self.steps}, {self.learning_rate}, {self.warmup_steps}")
        for name in ("log_every", "eval_every", "save_every", "keep"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")


def optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping then AdamW under warm-up + cosine decay."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, cfg.learning_rate, max(cfg.warmup_steps, 1), max(cfg.steps, cfg.warmup_steps + 1),
        end_value=cfg.learning_rate * cfg.min_lr_ratio)
    return optax.chain(optax.clip_by_global_norm(cfg.clip_norm),
                       optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2,
                                   weight_decay=cfg.weight_decay))


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32[]
    params: Any
    opt_state: Any
    key: jax.Array  # rng key data uint32[2] (plain array: checkpointable)


def init_state(objective: Objective, cfg: TrainConfig, frozen=None,
               initial_params=None) -> TrainState:
    """Step 0: the objective's initial params (or `initial_params`, e.g. a previous
    stage's), a fresh optimizer state and the run's rng."""
    key = jax.random.key(cfg.seed)
    k_init, k_run = jax.random.split(key)
    params = objective.init(k_init, frozen) if initial_params is None else initial_params
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer(cfg).init(params), key=jax.random.key_data(k_run))


def make_step(objective: Objective, cfg: TrainConfig) -> Callable:
    """jitted (state, frozen, batch) -> (state, metrics): one AdamW step on the
    objective's loss (metrics include "loss" and "grad_norm")."""
    tx = optimizer(cfg)

    def step(state: TrainState, frozen, batch):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
        (loss, metrics), grads = jax.value_and_grad(objective.loss, has_aux=True)(
            state.params, frozen, batch, key)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads))
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return jax.jit(step, donate_argnums=0)


def make_eval(objective: Objective) -> Callable:
    """jitted (params, frozen, batch) -> (loss, metrics) without training noise (key
    None: objectives add noise, e.g. EAGLE's feature noise, only when given a key)."""
    return jax.jit(lambda p, f, b: objective.loss(p, f, b, None))


def shard_batch(batch: dict, mesh) -> dict:
    """The batch on the mesh, axis 0 split over "data" (None mesh: default device)."""
    if mesh is None:
        return jax.tree.map(jnp.asarray, batch)
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    return jax.tree.map(lambda a: jax.device_put(np.asarray(a), sharding), batch)


def replicate(tree, mesh):
    if mesh is None:
        return tree
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


@dataclasses.dataclass
class TrainResult:
    state: TrainState
    history: list[dict]  # the logged metric lines of this process's run
    best_val_loss: float
    resumed_from: int  # 0 = fresh start


def _host(metrics: dict) -> dict:
    return {k: (float(v) if np.ndim(v) == 0 else np.asarray(v, np.float64).tolist())
            for k, v in jax.device_get(metrics).items()}


def evaluate(eval_fn, params, frozen, batches: Iterable[dict], mesh=None) -> dict:
    """Mean of the objective's loss and metrics over validation batches."""
    rows = [_host(dict(m, loss=l)) for l, m in
            (eval_fn(params, frozen, shard_batch(b, mesh)) for b in batches)]
    if not rows:
        return {}
    return {k: np.mean([r[k] for r in rows], axis=0).tolist() for k in rows[0]}


def train(objective: Objective, frozen, data: Iterator[dict], cfg: TrainConfig, workdir,
          *, validation: Callable[[], Iterable[dict]] | None = None, mesh=None,
          tokens_per_batch: int = 0, stop_after: int | None = None, initial_params=None,
          log: Callable[[str], None] = print, progress: bool = True) -> TrainResult:
    """Trains `objective` from the batches of `data` until `cfg.steps` (see module doc).

    Args:
      data: an iterator of batches with `get_state()` / `set_state(state)` (a
        grain `DatasetIterator`); its state is checkpointed with the model.
      validation: a callable returning fresh validation batches (or None).
      tokens_per_batch: tokens a batch trains on, for the "tokens" column.
      stop_after: stop (as if killed) after this many steps of this call,
        without a final save (tests of resume).
      initial_params: start from these params instead of `objective.init`
        (a second training stage); a resumed run restores its own.
    """
    import orbax.checkpoint as ocp
    from tqdm.auto import tqdm

    workdir = Path(workdir).absolute()
    latest = ocp.CheckpointManager(
        workdir / "checkpoints",
        options=ocp.CheckpointManagerOptions(max_to_keep=cfg.keep, create=True))
    best = ocp.CheckpointManager(
        workdir / "best", options=ocp.CheckpointManagerOptions(
            max_to_keep=1, best_fn=lambda m: m["val_loss"], best_mode="min", create=True))
    state = init_state(objective, cfg, frozen, initial_params)
    resumed = latest.latest_step() or 0
    if resumed:
        restored = latest.restore(resumed, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(state), data=ocp.args.JsonRestore()))
        state = restored.state
        data.set_state(restored.data)
        log(f"resumed from step {resumed} ({workdir / 'checkpoints'})")
    state, frozen = replicate(state, mesh), replicate(frozen, mesh)
    step_fn, eval_fn = make_step(objective, cfg), make_eval(objective)
    best_val = _best_so_far(best)
    history = []
    metrics_file = workdir / "metrics.jsonl"
    start = int(state.step)
    bar = tqdm(total=cfg.steps, initial=start, disable=not progress, desc="train")
    try:
        for step in range(start + 1, cfg.steps + 1):
            state, metrics = step_fn(state, frozen, shard_batch(next(data), mesh))
            bar.update(1)
            last = step == cfg.steps
            logged = step % cfg.log_every == 0 or last
            validated = validation is not None and (step % cfg.eval_every == 0 or last)
            row = ({"step": step, "tokens": step * tokens_per_batch, **_host(metrics)}
                   if logged or validated else None)
            if validated:
                val = evaluate(eval_fn, state.params, frozen, validation(), mesh)
                row.update({f"val_{k}": v for k, v in val.items()})
                if val and val["loss"] < best_val:
                    best_val = val["loss"]
                    best.save(step, args=ocp.args.Composite(
                        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(
                            data.get_state())), metrics={"val_loss": best_val})
            if row is not None:
                history.append(row)
                with open(metrics_file, "a") as f:
                    f.write(json.dumps(row) + "\n")
                bar.set_postfix(loss=f"{row['loss']:.3f}")
            if step % cfg.save_every == 0 or last:
                latest.save(step, args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    data=ocp.args.JsonSave(data.get_state())))
            if stop_after is not None and step - start >= stop_after and not last:
                break
    finally:
        bar.close()
        latest.wait_until_finished()
        best.wait_until_finished()
    return TrainResult(state, history, best_val, resumed)


def _best_so_far(best) -> float:
    """The best validation loss recorded by the `best` manager (inf if none)."""
    step = best.best_step()
    if step is None:
        return math.inf
    metrics = best.metrics(step)
    return float(metrics["val_loss"]) if metrics else math.inf


def read_metrics(workdir) -> list[dict]:
    """The lines of a run's metrics.jsonl."""
    path = Path(workdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(workdir, keys: tuple[str, ...] = ("loss", "val_loss")) -> Path | None:
    """curves.png: loss (train, validation) and per-stage top-1 accuracy vs tokens seen
    (None without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = read_metrics(workdir)
    x = [r["tokens"] or r["step"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for k in keys:
        pts = [(xi, r[k]) for xi, r in zip(x, rows) if k in r]
        if pts:
            a.plot(*zip(*pts), label=k)
    a.set_xlabel("tokens seen" if rows and rows[-1]["tokens"] else "step")
    a.set_ylabel("loss")
    a.legend()
    for prefix in ("top1_i", "val_top1_i"):
        pts = [(xi, r[prefix]) for xi, r in zip(x, rows) if prefix in r]
        for i in range(len(pts[0][1]) if pts else 0):
            b.plot([p[0] for p in pts], [p[1][i] for p in pts],
                   label=f"{'val ' if prefix.startswith('val') else ''}head {i + 1}")
    b.set_xlabel(a.get_xlabel())
    b.set_ylabel("top-1 accuracy")
    b.legend()
    fig.tight_layout()
    out = Path(workdir) / "curves.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
