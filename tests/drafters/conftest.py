"""Shared helpers of the drafter tests: a tiny random transformer and a Monte
Carlo law check of the whole speculative loop on a toy Markov "LM".

The law check follows tests/test_speculative_law.py: many rows of one batch
generate M tokens from the same prompt with a model-free drafter and a
sampling verifier; chi-square tests compare the empirical law of a window of
W >= tree depth + 1 tokens with the exact Markov law, both at the start
(cold drafter state) and at the end (state updated many times).
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
from specjax.models.lm import MarkovLM
from specjax.models.params import init_params
from specjax.sampling import Sampling
from tests.markov_law import chi2_pooled

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
class UniformQ:
    """Mutant drafter: same drafts, but claims they were sampled from uniform q."""

    inner: Any

    @property
    def num_nodes(self):
        return self.inner.num_nodes

    def init(self, *a):
        return self.inner.init(*a)

    def update(self, *a):
        return self.inner.update(*a)

    def propose(self, *a):
        prop = self.inner.propose(*a)
        q = prop.draft_probs
        return prop.replace(draft_probs=jnp.full(q.shape, 1.0 / q.shape[-1], q.dtype))


class MarkovLaw:
    """Monte Carlo law check on a 3-token Markov target."""

    V = 3
    ROWS = 20000
    # Transition matrix with no tiny entries (min 0.1), so that windows of 5
    # tokens have no vanishing cells; cells expected < 5 times are pooled.
    P = np.array([[0.2, 0.5, 0.3], [0.15, 0.25, 0.6], [0.7, 0.2, 0.1]])
    PROMPT = (1, 2, 0, 1, 2, 0)
    LM = MarkovLM(3)
    SAMPLING = Sampling(temperature=1.0)

    @classmethod
    def run(cls, drafter, verifier, num_new, key=0, draft_params=None):
        """Generated tokens int[ROWS, num_new] and the SpecGeneration."""
        method = decode.Method(drafter=drafter, verifier=verifier)
        out = decode.speculative_generate(
            jnp.log(jnp.asarray(cls.P, jnp.float32)), cls.LM, [cls.PROMPT] * cls.ROWS,
            method=method, draft_params=draft_params, max_new_tokens=num_new,
            sampling=cls.SAMPLING, key=jax.random.key(key))
        toks = np.array(out.tokens)
        assert toks.shape == (cls.ROWS, num_new)
        return toks, out

    @classmethod
    def window_law(cls, offset, length):
        """Exact law of generated tokens [offset, offset + length), flattened."""
        start = np.zeros(cls.V)
        start[cls.PROMPT[-1]] = 1.0
        marg = start @ np.linalg.matrix_power(cls.P, offset + 1)  # law of token `offset`
        seqs = np.array(np.meshgrid(*[np.arange(cls.V)] * length, indexing="ij"))
        seqs = seqs.reshape(length, -1).T
        probs = marg[seqs[:, 0]]
        for t in range(1, length):
            probs = probs * cls.P[seqs[:, t - 1], seqs[:, t]]
        return probs

    @classmethod
    def pvalues(cls, toks, length):
        """Chi-square p-values of the first and the last window of `length` tokens."""
        out = []
        for offset in (0, toks.shape[1] - length):
            idx = np.ravel_multi_index(toks[:, offset: offset + length].T, (cls.V,) * length)
            counts = np.bincount(idx, minlength=cls.V ** length)
            out.append(chi2_pooled(counts, cls.window_law(offset, length)))
        return out


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
    return MarkovLaw


@pytest.fixture(scope="session")
def uniform_q():
    return UniformQ


@pytest.fixture(scope="session")
def smol():
    """SmolLM2-135M (cfg, params, tokenizer), two prompts (a code prompt first)
    and its greedy reference of 32 tokens."""
    from specjax.models import loading
    from specjax.models.tokenizer import stop_token_ids

    cfg, params = loading.load("smollm2-135m", progress=False)
    tok = loading.load_tokenizer("smollm2-135m", progress=False)
    params = jax.device_put(params)
    code = ("class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n\n"
            "    def __add__(self, other):\n        return Point(self.x + other.x, self.y + other.y)"
            "\n\n    def __sub__(self, other):\n")
    prompts = [tok.encode(code), tok.encode("The capital of France is")]
    eos = stop_token_ids(tok)
    ref = decode.autoregressive_generate(params, cfg, prompts, max_new_tokens=32, eos_ids=eos)
    return cfg, params, prompts, eos, ref.tokens
