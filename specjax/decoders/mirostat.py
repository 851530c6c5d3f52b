"""Mirostat: decoding that holds the observed surprise of the text at a target.

Basu et al., "Mirostat: A Neural Text Decoding Algorithm that Directly Controls
Perplexity" (ICLR 2021, arXiv:2007.14966). The surprise of a token x drawn at a
step whose model law is p is S(x) = -log2 p(x) bits; the cross-entropy of a text is
the mean surprise of its tokens (log2 of its perplexity under the model). Mirostat is
a feedback controller: a per-row threshold mu (initialised to 2 tau) truncates the
law, a token is sampled from the truncated, renormalised law, and

    e = S(x) - tau,        mu <- mu - eta * e.

Summed over n tokens, mean_i S(x_i) - tau = (mu_0 - mu_n) / (eta n): while mu stays
bounded, the observed cross-entropy converges to tau.

Observed surprise. S(x) is computed under the model's RAW law (the softmax of the
logits before any truncation), as in the paper (S(X) = log2 1/P(X), P the LM's
distribution) and in the authors' reference implementation (github.com/basusourya/
mirostat, `prob_original`); so tau is the cross-entropy of the generated text under
the model. llama.cpp's samplers compute it under the truncated, renormalised law
instead (never larger than the raw one): we do not follow them.

MirostatV1 (the paper's Algorithm 1, adaptive top-k). With p_(1) >= p_(2) >= ... the
sorted raw probabilities, N = V the vocabulary size and m' = min(m, V):

    t_i = ln((i + 1) / i),  b_i = ln(p_(i) / p_(i+1)),  i = 1..m'-1
    s_hat = sum_i t_i b_i / sum_i t_i^2             (least-squares Zipf exponent)
    eps = s_hat - 1
    k_hat = (eps 2^mu / (1 - N^-eps))^(1 / s_hat)   (top-k's k for cross-entropy mu)
    k = clip(round(k_hat) + 1, 1, V)                 (the reference's integer rule)

and the k most likely tokens are kept (every token whose logit is >= the k-th largest:
ties with the k-th are kept). Numerics (float32): k_hat is computed in log space, its
log clipped to [-10, ln V + 1] and s_hat floored at 1e-6 in the exponent 1 / s_hat;
eps -> 0 takes the limit eps / (1 - N^-eps) -> 1 / ln N; log-probabilities are floored
at -1e4 so a zero probability in the top m' gives a large finite b_i.

MirostatV2 (llama.cpp's "Mirostat 2.0"; no Zipf estimate): keep the tokens of raw
surprise -log2 p(x) <= mu, and the most likely token(s) if none is (llama.cpp keeps one
token then; we keep every token tied at the maximum).

Both are `rules.LogitsRule`s (state: mu float32[B]; no params): decode with
`rules.RuleLM(base, MirostatV2(tau))` in any loop and `Sampling(temperature=1.0)`
(`mirostat_generate` does it for the autoregressive loop and also returns the
per-token surprise). Under speculative decoding every verifier then preserves the
mirostat law exactly: each tree node is truncated with the mu of its own path.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from specjax.decode.autoregressive import autoregressive_generate
from specjax.decode.host import Generation, prepare_prompts
from specjax.decoders.rules import RuleLM, rule_params
from specjax.models.config import ModelConfig
from specjax.models.lm import LanguageModel, as_lm
from specjax.sampling import Sampling

LN2 = math.log(2.0)
LOGP_FLOOR = -1e4  # natural-log floor of the probabilities in the Zipf fit
SAMPLING = Sampling(temperature=1.0)


def surprise_bits(logits: jax.Array, token: jax.Array) -> jax.Array:
    """-log2 softmax(logits)[token]: logits float[R, V], token int32[R] -> float32[R]."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, token[:, None], axis=-1)[:, 0] / LN2


def zipf_exponent(logits: jax.Array, m: int) -> jax.Array:
    """The paper's least-squares Zipf exponent s_hat (Eq. 30) of the top min(m, V)
    probabilities: logits float[R, V] -> float32[R] (>= 0)."""
    m = min(m, logits.shape[-1])
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    top = jnp.maximum(jax.lax.top_k(logp, m)[0], LOGP_FLOOR)  # [R, m] descending
    i = np.arange(1, m, dtype=np.float64)
    t = np.log((i + 1) / i)  # [m - 1]
    b = top[:, :-1] - top[:, 1:]  # [R, m - 1]
    return (b @ jnp.asarray(t, jnp.float32)) / np.float32(np.sum(t * t))


def mirostat_v1_k(logits: jax.Array, mu: jax.Array, m: int) -> jax.Array:
    """Algorithm 1's k for each row: logits float[R, V], mu float[R] -> int32[R] in [1, V]
    (formulas in the module docstring)."""
    V = logits.shape[-1]
    s_hat = zipf_exponent(logits, m)
    eps = s_hat - 1.0
    log_n = math.log(V)
    small = jnp.abs(eps) < 1e-6
    safe = jnp.where(small, 1.0, eps)
    ratio = jnp.where(small, 1.0 / log_n, safe / -jnp.expm1(-safe * log_n))  # > 0
    log_k = (jnp.log(ratio) + mu * LN2) / jnp.maximum(s_hat, 1e-6)
    k_hat = jnp.exp(jnp.clip(log_k, -10.0, math.log(V) + 1.0))
    return jnp.clip(jnp.round(k_hat) + 1, 1, V).astype(jnp.int32)


def top_k_mask(logits: jax.Array, k: jax.Array) -> jax.Array:
    """bool[R, V]: the tokens whose logit is >= the k-th largest of their row (k int32[R])."""
    desc = -jnp.sort(-logits, axis=-1)  # [R, V]
    kth = jnp.take_along_axis(desc, (k - 1)[:, None], axis=-1)  # [R, 1]
    return logits >= kth


def mirostat_v2_mask(logits: jax.Array, mu: jax.Array) -> jax.Array:
    """bool[R, V]: tokens of raw surprise <= mu, or tied at the row's maximum."""
    logits = logits.astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    top = logits >= jnp.max(logits, axis=-1, keepdims=True)
    return (-logp / LN2 <= mu[:, None]) | top


def _check(tau: float, eta: float):
    if not tau > 0:
        raise ValueError(f"mirostat's target surprise tau must be > 0 bits, got {tau}")
    if not eta > 0:
        raise ValueError(f"mirostat's learning rate eta must be > 0, got {eta}")


@dataclasses.dataclass(frozen=True)
class _Mirostat:
    """The shared controller: state mu float32[B] (2 tau at the start), updated from the
    raw surprise of each emitted token."""

    tau: float
    eta: float = 0.1

    def __post_init__(self):
        _check(self.tau, self.eta)

    def init(self, params, batch: int) -> jax.Array:
        return jnp.full((batch,), 2.0 * self.tau, jnp.float32)

    def step(self, params, mu: jax.Array, token: jax.Array, logits: jax.Array) -> jax.Array:
        return mu - self.eta * (surprise_bits(logits, token) - self.tau)

    def keep(self, logits: jax.Array, mu: jax.Array) -> jax.Array:
        raise NotImplementedError

    def apply(self, params, mu: jax.Array, logits: jax.Array) -> jax.Array:
        logits = logits.astype(jnp.float32)
        return jnp.where(self.keep(logits, mu), logits, -jnp.inf)


@dataclasses.dataclass(frozen=True)
class MirostatV1(_Mirostat):
    """Mirostat (Algorithm 1): adaptive top-k with k from the Zipf estimate of the top m
    probabilities.

    Attributes:
      tau: target surprise, bits per token (> 0).
      eta: learning rate of mu (> 0).
      m: probabilities in the Zipf fit (>= 2; min(m, V) are used).
    """

    m: int = 100

    def __post_init__(self):
        super().__post_init__()
        if self.m < 2:
            raise ValueError(f"mirostat v1 fits the Zipf exponent to the top m >= 2 "
                             f"probabilities, got m={self.m}")

    def keep(self, logits, mu):
        return top_k_mask(logits, mirostat_v1_k(logits, mu, self.m))


@dataclasses.dataclass(frozen=True)
class MirostatV2(_Mirostat):
    """Mirostat 2.0: keep the tokens of raw surprise <= mu.

    Attributes:
      tau: target surprise, bits per token (> 0).
      eta: learning rate of mu (> 0).
    """

    def keep(self, logits, mu):
        return mirostat_v2_mask(logits, mu)


# -- generation and the observed cross-entropy ------------------------------------------


@dataclasses.dataclass
class MirostatGeneration(Generation):
    """`Generation` plus, per row, the raw surprise (bits) of each generated token and
    the mu its law was truncated with (float arrays of the row's length)."""

    surprises: list[np.ndarray]
    mus: list[np.ndarray]

    @property
    def cross_entropy(self) -> float:
        return observed_cross_entropy(self.surprises)


@functools.partial(jax.jit, static_argnames=("model", "max_len"))
def teacher_forced(params, prompts, lengths, tokens, num, *, model: RuleLM, max_len: int):
    """Replays generated tokens through a `RuleLM` (prefill, then one decode step each).

    Args:
      prompts: int32[B, P] right-padded prompts, lengths int32[B].
      tokens: int32[B, M] generated tokens (padding after num int32[B]).

    Returns:
      (surprise float32[B, M]: -log2 of each token under the raw law it was drawn from,
       state: the rule state before each token, leaves [M, B, ...]).
    """
    _, cache = model.prefill(params, prompts, lengths, model.init_cache(prompts.shape[0], max_len))

    def body(cache, i):
        tok = tokens[:, i]
        out = (surprise_bits(cache.pending, tok), cache.state)
        _, cache = model.decode_step(params, tok, cache, i < num)
        return cache, out

    _, (surprise, states) = jax.lax.scan(body, cache, jnp.arange(tokens.shape[1]))
    return surprise.T, states


def observed_cross_entropy(surprises: Sequence[np.ndarray]) -> float:
    """Bits per token of generated text: the surprises of all rows pooled (total
    surprise / total tokens); 2 ** it is the perplexity under the model."""
    flat = np.concatenate([np.asarray(s, np.float64).ravel() for s in surprises])
    if flat.size == 0:
        raise ValueError("no generated tokens: the cross-entropy is undefined")
    return float(flat.mean())


def mirostat_generate(
    params,
    model: ModelConfig | LanguageModel,
    prompts: Sequence[Sequence[int]],
    *,
    rule: MirostatV1 | MirostatV2,
    max_new_tokens: int,
    key: jax.Array,
    eos_ids: Sequence[int] = (),
    max_len: int | None = None,
) -> MirostatGeneration:
    """Autoregressive sampling under mirostat, with each token's surprise and mu.

    Args:
      params: the model's parameters.
      model: its `ModelConfig` or any `LanguageModel`.
      prompts: token id lists.
      rule: `MirostatV1(...)` or `MirostatV2(...)`.
      max_new_tokens, key, eos_ids, max_len: as `decode.autoregressive_generate`.

    Returns:
      `MirostatGeneration`; its surprises and mus come from replaying the tokens through
      the same `RuleLM` (one extra jitted pass), so they are the loop's own values.
    """
    if not isinstance(rule, (MirostatV1, MirostatV2)):
        raise ValueError(f"rule must be MirostatV1 or MirostatV2, got {type(rule).__name__}")
    lm = RuleLM(as_lm(model), rule)
    full = rule_params(params)
    gen = autoregressive_generate(full, lm, prompts, max_new_tokens=max_new_tokens,
                                  sampling=SAMPLING, key=key, eos_ids=eos_ids, max_len=max_len)
    ptoks, lengths, cache_len = prepare_prompts(lm, prompts, max_new_tokens, max_len)
    num = gen.num_tokens
    toks = np.zeros((len(prompts), max_new_tokens), np.int32)
    for b, row in enumerate(gen.tokens):
        toks[b, :len(row)] = row
    surprise, mus = teacher_forced(full, ptoks, lengths, jnp.asarray(toks),
                                   jnp.asarray(num, jnp.int32), model=lm, max_len=cache_len)
    surprise, mus = np.asarray(surprise), np.asarray(mus).T  # [B, M]
    return MirostatGeneration(
        tokens=gen.tokens, target_calls=gen.target_calls,
        surprises=[surprise[b, :n] for b, n in enumerate(num)],
        mus=[mus[b, :n] for b, n in enumerate(num)])
