"""Shared helpers of the drafter tests: a tiny random transformer and a Monte
Carlo law check of the whole speculative loop on a toy Markov "LM".

The law check (`markov_law`, the shared harness of tests/law.py with a
repetitive prompt): many rows of one batch generate M tokens from the same
prompt with a drafter and a sampling verifier; chi-square tests compare the
empirical law of a window of W >= tree depth + 1 tokens with the exact Markov
law, both at the start (cold drafter state) and at the end (state updated many
times).
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax import decode
from specjax.models.config import ModelConfig
from specjax.models.params import init_params
from specjax.drafters.base import DrafterBase
from specjax.verify import laws
from tests.law import REPEATING

TINY = ModelConfig(arch="llama", vocab_size=50, dim=32, num_layers=2, num_heads=4,
                   num_kv_heads=2, head_dim=8, ffn_dim=64)
# Prompts with repetitions (so prompt lookup matches) and different lengths.
PROMPTS = [[3, 7, 1, 9, 4, 3, 7, 1, 9, 4, 3, 7], [11], [5, 5, 2, 8, 13, 21, 5, 5, 2, 8],
           [42, 17, 42, 17, 42]]
N_NEW = 24


@pytest.fixture(scope="session")
def tiny():
    """(cfg, params, prompts, greedy autoregressive reference tokens)."""
    params = init_params(TINY, jax.random.key(0), scale=0.3)
    ref = decode.autoregressive_generate(params, TINY, PROMPTS, max_new_tokens=N_NEW).tokens
    return TINY, params, PROMPTS, ref


@dataclasses.dataclass(frozen=True)
class UniformQ(DrafterBase):
    """Mutant drafter: same drafts, but claims they were sampled from uniform q
    (i.i.d., so it composes with every sampling verifier and only the Monte
    Carlo law tests can catch the lie)."""

    inner: Any
    draft_law = laws.IID

    @property
    def num_nodes(self):
        return self.inner.num_nodes

    @property
    def vocab_size(self):
        return self.inner.vocab_size

    def init(self, *a):
        return self.inner.init(*a)

    def update(self, *a):
        return self.inner.update(*a)

    def propose(self, *a, **kw):
        prop = self.inner.propose(*a, **kw)
        q = prop.draft_probs
        return prop.replace(draft_probs=jnp.full(q.shape, 1.0 / q.shape[-1], q.dtype))


def check_greedy_identity(tiny, make_method, rows=(0, 2), min_tau=1.2, draft_params=None):
    """Greedy speculative output == greedy autoregressive output on the tiny
    transformer: batch 4 (prompts of different lengths), then rows `rows` one at
    a time (same tokens, same per-step acceptance), then a fresh but equal
    `make_method()` with another prompt of the same bucket: no recompilation.

    make_method: () -> decode.Method, called twice (equal static arguments).
    Returns the batch-4 `SpecGeneration`.
    """
    cfg, params, prompts, ref = tiny
    n_new = len(ref[0])
    run = functools.partial(decode.speculative_generate, params, cfg, max_new_tokens=n_new,
                            draft_params=draft_params)
    batch = run(prompts, method=make_method())
    assert batch.tokens == ref
    assert batch.tau > min_tau, f"tau {batch.tau:.2f}: the drafts must get accepted"
    size = None
    for i in rows:  # batch 1, two prompt lengths in one bucket: compiled once
        single = run([prompts[i]], method=make_method())
        assert single.tokens[0] == ref[i]
        np.testing.assert_array_equal(single.accept_hist[0], batch.accept_hist[i])
        if size is None:
            size = decode.speculative_loop._cache_size()
    other = next(i for i in range(len(prompts)) if i not in rows)
    run([prompts[other]], method=make_method())
    assert decode.speculative_loop._cache_size() == size, "recompiled for an equal method"
    return batch


def node_paths(tree, b, nodes):
    """Root-to-node token lists of `nodes` in row b of a (host) tree, root first."""
    paths = []
    for i in nodes:
        path, j = [], int(i)
        while j >= 0:
            path.append(int(tree.tokens[b, j]))
            j = int(tree.parent[b, j])
        paths.append(path[::-1])
    return paths


def final_nodes(tree, rng, step):
    """A final accepted node per row: the last valid node on even steps, a random
    valid one on odd steps (for propose/update consistency tests)."""
    final = []
    for b in range(tree.valid.shape[0]):
        ok = np.flatnonzero(tree.valid[b])
        final.append(int(ok[-1]) if step % 2 == 0 else int(rng.choice(ok)))
    return jnp.asarray(final, jnp.int32)


@pytest.fixture(scope="session")
def markov_law():
    return REPEATING


@pytest.fixture(scope="session")
def uniform_q():
    return UniformQ


@pytest.fixture(scope="session")
def smol(smol_model):
    """SmolLM2-135M (cfg, params; the suite's `smol_model`), two prompts (a code prompt
    first), the stop ids and its greedy reference of 32 tokens."""
    from specjax.models.tokenizer import stop_token_ids

    cfg, params, tok = smol_model
    code = ("class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n\n"
            "    def __add__(self, other):\n        return Point(self.x + other.x, self.y + other.y)"
            "\n\n    def __sub__(self, other):\n")
    prompts = [tok.encode(code), tok.encode("The capital of France is")]
    eos = stop_token_ids(tok)
    ref = decode.autoregressive_generate(params, cfg, prompts, max_new_tokens=32, eos_ids=eos)
    return cfg, params, prompts, eos, ref.tokens
