"""The Monte Carlo law harness shared by every test of a decode loop's output law.

The target (and, for draft-model drafters, the draft) is a first-order Markov
chain over a 3-token vocabulary (`models.lm.MarkovLM`, params = log transition
matrix), so the exact law of any window of generated tokens is a product of
transition probabilities. Many rows of one batch generate from the same
prompt; a chi-square test compares the empirical law of a window of W tokens
(W >= tree depth + 1, so a wrong bonus token is visible) with the exact one.
Each law test has mutants (a wrong residual, a bonus drawn from q, a drafter
lying about q, a non-causal policy, ...) that the same test must reject. Every
p-value computed here is recorded with the test that computed it and printed
at the end of the run (`tests/conftest.py`): the mutants' p-values are the
evidence that the row counts give the tests their power.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from specjax import decode
from specjax.models.lm import MarkovLM
from specjax.sampling import Sampling

V = 3
# Transitions with no tiny entries (min 0.1), so windows have no vanishing
# cells; cells expected fewer than 5 times are pooled anyway.
P = np.array([[0.2, 0.5, 0.3], [0.15, 0.25, 0.6], [0.7, 0.2, 0.1]])  # target
Q = np.array([[0.5, 0.2, 0.3], [0.3, 0.3, 0.4], [0.25, 0.5, 0.25]])  # draft
LOG_P = np.log(P).astype(np.float32)
LOG_Q = np.log(Q).astype(np.float32)

# p-value of every chi-square test run in this process (conftest reports them per test)
PVALUES: list[float] = []


def chi2_pooled(counts, law, min_expected=5.0):
    """Chi-square p-value of counts vs law, cells expected < min_expected pooled.

    The p-value is also appended to `PVALUES`.
    """
    expected = law * counts.sum()
    small = expected < min_expected
    obs = np.append(counts[~small], counts[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    p = float(stats.chisquare(obs, exp).pvalue)
    PVALUES.append(p)
    return p


@dataclasses.dataclass(frozen=True)
class MutantVerifier:
    """Base of the mutant verifiers: wraps a lossless verifier and claims its
    draft laws (`lossless_for`), so `Method` accepts it and only the Monte
    Carlo law test can reject it."""

    inner: Any

    @property
    def lossless_for(self):
        return self.inner.lossless_for


@dataclasses.dataclass(frozen=True, eq=False)
class MarkovLaw:
    """A Markov target, a prompt and a row count: runs a loop and tests its output law.

    Attributes:
      prompt: the prompt every row starts from (its last token starts the chain).
      rows: batch rows, i.e. Monte Carlo samples per run.
      sampling: the sampling settings (temperature 1: the law is P itself).
    """

    prompt: tuple[int, ...]
    rows: int
    sampling: Sampling = Sampling(temperature=1.0)

    V = V
    P = P
    LM = MarkovLM(V)

    @property
    def PROMPT(self) -> tuple[int, ...]:  # the drafter tests' names
        return self.prompt

    @property
    def ROWS(self) -> int:
        return self.rows

    @property
    def SAMPLING(self) -> Sampling:
        return self.sampling

    def sample(self, generate: Callable[..., Any], num_new: int, key: int = 0):
        """Tokens int[rows, num_new] and the generation of `generate(target_params, lm,
        prompts, max_new_tokens=, sampling=, key=)` (any loop with that signature)."""
        out = generate(jnp.asarray(LOG_P), self.LM, [list(self.prompt)] * self.rows,
                       max_new_tokens=num_new, sampling=self.sampling,
                       key=jax.random.key(key))
        toks = np.array(out.tokens)
        assert toks.shape == (self.rows, num_new)
        return toks, out

    def run(self, drafter, verifier, num_new: int, key: int = 0, draft_params=None,
            policy=None):
        """Tokens int[rows, num_new] and the `SpecGeneration` of the speculative loop with
        drafter x policy x verifier (`draft_params`: e.g. `LOG_Q` for a Markov draft)."""
        method = decode.Method(drafter=drafter, verifier=verifier, policy=policy)

        def generate(params, lm, prompts, **kw):
            return decode.speculative_generate(params, lm, prompts, method=method,
                                               draft_params=draft_params, **kw)

        return self.sample(generate, num_new, key)

    def window_law(self, offset: int, length: int) -> np.ndarray:
        """Exact law of generated tokens [offset, offset + length), flattened [V**length]."""
        start = np.zeros(V)
        start[self.prompt[-1]] = 1.0
        marg = start @ np.linalg.matrix_power(P, offset + 1)  # law of token `offset`
        seqs = np.array(np.meshgrid(*[np.arange(V)] * length, indexing="ij"))
        seqs = seqs.reshape(length, -1).T
        probs = marg[seqs[:, 0]]
        for t in range(1, length):
            probs = probs * P[seqs[:, t - 1], seqs[:, t]]
        return probs

    def pvalue(self, toks: np.ndarray, offset: int, length: int) -> float:
        """Chi-square p-value of the window [offset, offset + length) of `toks`."""
        idx = np.ravel_multi_index(toks[:, offset: offset + length].T, (V,) * length)
        counts = np.bincount(idx, minlength=V ** length)
        return chi2_pooled(counts, self.window_law(offset, length))

    def pvalues(self, toks: np.ndarray, length: int) -> list[float]:
        """p-values of the first and the last window of `length` tokens (cold and warm
        drafter state)."""
        return [self.pvalue(toks, offset, length) for offset in (0, toks.shape[1] - length)]


# Prompt [0], windows from the first generated token: the loop tests.
FROM_START = MarkovLaw(prompt=(0,), rows=24000)
# A repetitive prompt (so lookup drafters match), first and last windows: the drafter tests.
REPEATING = MarkovLaw(prompt=(1, 2, 0, 1, 2, 0), rows=20000)
