"""Monte Carlo law test of the whole speculative loop on a toy Markov "LM".

The target and the draft are first-order Markov chains over a 3-token
vocabulary (`MarkovLM`), so the exact law of any generated window is a product
of transition probabilities. Many rows of one batch each generate a window of
1 + W tokens (W >= tree depth + 1, so a wrong bonus token is visible), and a
chi-square test compares the empirical law of the windows with the exact one.
Mutant verifiers with the two classic bugs (residual replaced by p; bonus token
drawn from q) must be rejected by the same test, which proves its power.
The harness is shared by every law test: `tests/law.py`.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax import trees, verify
from specjax.drafters.draft_model import DraftModel
from tests.law import MutantVerifier, FROM_START, LOG_Q, Q

LM = FROM_START.LM


def run_windows(drafter, verifier, length, key=0):
    """Generates `length` tokens per row; returns the p-value of the whole window and
    the generation."""
    toks, out = FROM_START.run(drafter, verifier, length, key=key, draft_params=LOG_Q)
    return FROM_START.pvalue(toks, 0, length), out


def topo(branching):
    return tuple(trees.template_topology(list(branching)).tolist())


CONFIGS = {
    # name: (drafter, verifier)
    "chain3": (DraftModel.chain(LM, 3), verify.chain_sampling),
    "iid-2x2": (DraftModel(LM, topo((2, 1)), "iid"), verify.tree_rrs(replacement=True)),
    "wor-3x1": (DraftModel(LM, topo((3, 1)), "without_replacement"),
                verify.tree_rrs(replacement=False)),
    "kseq-2x1": (DraftModel(LM, topo((2, 1)), "iid"), verify.tree_kseq()),
    "greedy-draft-3x1": (DraftModel(LM, topo((3, 1)), "greedy_draft"), verify.tree_greedy_draft()),
}


def _depth(drafter):
    return int(trees.topology_depth(np.asarray(drafter.parents)).max())


@pytest.mark.parametrize("name", list(CONFIGS))
def test_loop_output_law(name):
    drafter, verifier = CONFIGS[name]
    length = 1 + _depth(drafter) + 1  # first token + a window of depth + 1
    p, out = run_windows(drafter, verifier, length)
    assert p > 1e-3, f"{name}: output law differs from the target's (p={p:.2e})"
    assert out.tau > 1.3  # drafts do get accepted


@dataclasses.dataclass(frozen=True)
class BonusFromQ(MutantVerifier):
    """Mutant: the bonus token after a fully accepted chain is drawn from q."""

    def __call__(self, key, tree, target_probs, draft_probs):
        leaf_q = jnp.asarray(Q, jnp.float32)[tree.tokens[:, -1]]  # [B, V]
        return self.inner(key, tree, target_probs.at[:, -1].set(leaf_q), draft_probs)


@dataclasses.dataclass(frozen=True)
class ResidualIsP(MutantVerifier):
    """Mutant: after a rejection the correction token is drawn from p, not the residual."""

    def __call__(self, key, tree, target_probs, draft_probs):
        k1, k2 = jax.random.split(key)
        res = self.inner(k1, tree, target_probs, draft_probs)
        last = jnp.take_along_axis(res.path, res.num_accepted[:, None], axis=1)[:, 0]
        p_last = jnp.take_along_axis(target_probs, last[:, None, None], axis=1)[:, 0]
        fresh = jax.random.categorical(k2, jnp.log(p_last), axis=-1).astype(jnp.int32)
        full = res.num_accepted == tree.tokens.shape[1] - 1
        return res.replace(next_token=jnp.where(full, res.next_token, fresh))


@pytest.mark.parametrize("mutant", [BonusFromQ, ResidualIsP])
def test_mutants_are_detected(mutant):
    drafter = DraftModel.chain(LM, 2)
    length = 1 + 3
    p, _ = run_windows(drafter, mutant(verify.chain_sampling), length)
    assert p < 1e-6, f"{mutant.__name__} was not detected (p={p:.2e})"
