"""Measures the target's verification cost curve c(T) = time(T tokens) / time(1 token).

    python -m experiments.cost_curve --model=smollm2-135m --tokens=1,2,4,8,16
    python -m experiments.cost_curve --layouts=plain,panels   # both weight layouts

One jitted forward over T new tokens against a cache holding `--context`
tokens (the shape of a verification step), timed as the median of `--reps`
runs after a warm-up. Also reports the LM head and one layer separately so
that the dominating part is visible. Writes JSON to `--out` if given.
"""

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from specjax.models import cache as kvcache
from specjax.models import decoder, loading
from specjax.models import params as params_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "smollm2-135m", "asset name, GGUF path or HF dir")
flags.DEFINE_string("tokens", "1,2,3,4,6,8,12,16", "values of T")
flags.DEFINE_integer("context", 256, "committed tokens in the cache")
flags.DEFINE_integer("max_len", 512, "cache slots")
flags.DEFINE_integer("reps", 15, "timed repetitions per T")
flags.DEFINE_string("out", "", "write results as JSON here")
flags.DEFINE_string("layouts", "plain,panels",
                    "weight layouts to compare: plain [Din, Dout] and/or panels "
                    "(models.params.panelize)")


def median_seconds(fn, *args, reps):
    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def main(argv):
    del argv
    cfg, plain = loading.load(FLAGS.model)
    layouts = {"plain": lambda: plain, "panels": lambda: params_lib.panelize(cfg, plain)}
    names = FLAGS.layouts.split(",")
    for n in names:
        if n not in layouts:
            raise ValueError(f"unknown layout {n!r}; valid: {sorted(layouts)}")
    weights = {n: jax.device_put(layouts[n]()) for n in names}
    cache = kvcache.init_cache(cfg, 1, FLAGS.max_len).replace(length=jnp.array([FLAGS.context]))

    @jax.jit
    def step(params, tokens, cache):
        T = tokens.shape[1]
        mask = decoder.attention_mask(cache.length, cache.max_len, decoder.causal_mask(1, T))
        pos = cache.length[:, None] + jnp.arange(T)[None]
        return decoder.forward(params, cfg, tokens, pos, cache, mask).logits

    @jax.jit
    def head(params, h):
        return decoder.logits_from_hidden(params, cfg, h)

    rows = []
    for T in [int(t) for t in FLAGS.tokens.split(",")]:
        toks = jnp.ones((1, T), jnp.int32)
        for n in names:  # layouts interleaved per T: same machine state
            s = median_seconds(step, weights[n], toks, cache, reps=FLAGS.reps)
            h = median_seconds(head, weights[n], jnp.ones((1, T, cfg.dim)), reps=FLAGS.reps)
            rows.append(dict(layout=n, T=T, seconds=s, head_seconds=h))
    base = rows[0]["seconds"]
    print(f"model {FLAGS.model}: {cfg.num_layers} layers, D={cfg.dim}, V={cfg.vocab_size}, "
          f"context {FLAGS.context}, device {jax.devices()[0].platform}; "
          f"c(T) relative to the {names[0]} layout at T={rows[0]['T']}")
    print("| layout | T | ms / forward | c(T) | LM head ms |\n|---|---|---|---|---|")
    for r in rows:
        r["c"] = r["seconds"] / base
        print(f"| {r['layout']} | {r['T']} | {1e3 * r['seconds']:.1f} | {r['c']:.2f} "
              f"| {1e3 * r['head_seconds']:.1f} |")
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            json.dump(dict(model=FLAGS.model, context=FLAGS.context, rows=rows), f, indent=1)


if __name__ == "__main__":
    app.run(main)
