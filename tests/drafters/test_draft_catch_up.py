"""Lazy catch-up of the draft model's cache (`DraftModel.max_pending`).

A step that drafts nothing (a policy's K = 0, e.g. SmartSpec) skips the draft
forward and queues the committed token; the queue is forwarded in one causal
forward when drafting resumes or the queue is full. The draft cache must end
up exactly as if every token had been fed one at a time, so a run with a
queue makes the same drafts as one without (same accept histogram, same
tokens), and greedy decoding stays token-identical to autoregressive decoding.
"""

import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax import decode, policies, verify
from specjax.drafters import draft_model
from specjax.drafters.draft_model import DraftModel
from specjax.models.lm import DecoderLM
from specjax.drafters.base import Prompt, TargetOutputs
from specjax.sampling import GREEDY
from tests.drafters.conftest import tiny  # noqa: F401 (fixture)
from tests.law import FROM_START, LOG_Q


@flax.struct.dataclass
class _Count:
    step: jax.Array  # int32[B]


class Periodic(policies.Policy):
    """Drafts `k` tokens every `period`-th step and nothing (K = 0) otherwise:
    a deterministic stand-in for SmartSpec's switching."""

    def __init__(self, k: int, period: int):
        self.k, self.period = k, period

    def init(self, batch):
        return _Count(step=jnp.zeros((batch,), jnp.int32))

    def max_depth(self, state):
        return jnp.where(state.step % self.period == 0, self.k, 0)

    def update(self, state, tree, result, active):
        return _Count(step=state.step + 1)

    def __hash__(self):
        return hash((Periodic, self.k, self.period))

    def __eq__(self, other):
        return isinstance(other, Periodic) and (self.k, self.period) == (other.k, other.period)


def _next_logits(lm, params, cache, token):
    return lm.decode_step(params, token, cache)[0]


def test_feed_block_equals_one_token_at_a_time(tiny):
    cfg, params, _, _ = tiny
    lm = DecoderLM(cfg)
    prompts = jnp.array([[3, 7, 1, 9, 4], [11, 2, 0, 0, 0], [5, 5, 2, 8, 13]], jnp.int32)
    lengths = jnp.array([5, 2, 4], jnp.int32)
    cache = draft_model.prefilled_cache(lm, params, prompts, lengths, 32)
    block = jnp.array([[6, 8, 10, 12], [1, 2, 3, 4], [9, 9, 9, 9]], jnp.int32)
    count = jnp.array([3, 0, 1], jnp.int32)
    ref = cache
    for j in range(4):
        ref = lm.decode_step(params, block[:, j], ref, active=j < count)[1]
    probe = jnp.array([17, 18, 19], jnp.int32)
    for widths in [(4,), (1, 4), (2, 4)]:
        got = draft_model.feed_block(lm, params, cache, block, count, widths=widths)
        np.testing.assert_array_equal(lm.cache_length(got), lm.cache_length(ref))
        np.testing.assert_allclose(_next_logits(lm, params, got, probe),
                                   _next_logits(lm, params, ref, probe), atol=1e-5)
    # nothing to feed: the cache is returned as it was
    same = draft_model.feed_block(lm, params, cache, block, jnp.zeros((3,), jnp.int32))
    np.testing.assert_array_equal(lm.cache_length(same), lm.cache_length(cache))
    with pytest.raises(ValueError, match="feed widths"):
        draft_model.feed_block(lm, params, cache, block, count, widths=(1, 2))


def test_catch_up_widths_pad_a_queue_at_most_4x():
    assert draft_model.feed_widths(1) == (1,)
    assert draft_model.feed_widths(16) == (1, 4, 16)
    assert draft_model.feed_widths(129) == (1, 4, 16, 64, 129)
    for P in range(1, 300):
        w = draft_model.feed_widths(P)
        assert w[-1] == P and w[0] == 1 and list(w) == sorted(set(w))
        for n in range(1, P + 1):
            assert min(x for x in w if x >= n) <= max(4 * n - 3, 1)


def test_steps_that_draft_nothing_queue_the_token(tiny):
    """With expand all-False the draft model does not run: the root is queued and
    the draft cache does not grow until the queue is full (then it is fed)."""
    cfg, params, _, _ = tiny
    lm = DecoderLM(cfg)
    drafter = DraftModel.chain(lm, 3, max_pending=3)
    state = drafter.init(params, Prompt(jnp.array([[3, 7, 1]], jnp.int32), jnp.array([3]), 32), TargetOutputs())
    never = lambda tree, q: jnp.zeros(tree.tokens.shape, bool)  # noqa: E731
    length0 = int(lm.cache_length(state.cache)[0])
    seen = []
    for step, root in enumerate([4, 5, 6, 7]):
        prop = drafter.propose(params, state, jnp.array([root]), jax.random.key(0),
                               GREEDY, expand=never)
        assert int(prop.state.levels_run) == 0
        tree = prop.tree.replace(valid=jnp.zeros_like(prop.tree.valid).at[:, 0].set(True))
        res = verify.greedy(jax.random.key(0), tree, jnp.ones((1, 4, cfg.vocab_size)) / 50,
                            prop.draft_probs)
        state = drafter.update(params, prop.state, tree, res, TargetOutputs())
        seen.append((int(lm.cache_length(state.cache)[0]) - length0, int(state.num_pending[0])))
    # queue 1, 2, 3; the 4th step finds it full and feeds 3 tokens, then queues its root
    assert seen == [(0, 1), (0, 2), (0, 3), (3, 1)]
    np.testing.assert_array_equal(state.pending[0, :1], [7])


@pytest.mark.parametrize("period", [2, 3])
def test_queue_changes_cost_not_drafts(tiny, period):
    """Greedy, tiny transformer with a noisy copy as draft: max_pending = 1 and 4
    make the same drafts (same accept histogram) and the same tokens as
    autoregressive decoding."""
    cfg, params, prompts, ref = tiny
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(7), len(leaves))
    noisy = jax.tree.unflatten(treedef, [x + 0.02 * jax.random.normal(k, x.shape)
                                         for x, k in zip(leaves, keys)])
    outs = {}
    for pend in (1, 4):
        method = decode.Method(DraftModel.chain(DecoderLM(cfg), 3, max_pending=pend),
                               verify.greedy, Periodic(3, period))
        outs[pend] = decode.speculative_generate(params, cfg, prompts, method=method,
                                                 draft_params=noisy,
                                                 max_new_tokens=len(ref[0]))
        assert outs[pend].tokens == ref
    np.testing.assert_array_equal(outs[1].accept_hist, outs[4].accept_hist)
    assert outs[4].accept_hist[:, 1:].sum() > 0  # drafts were accepted at all


def test_output_law_with_queued_catch_up():
    """Markov target and draft, sampling: the law is kept with the queue in use."""
    length = 6
    toks, out = FROM_START.run(DraftModel.chain(FROM_START.LM, 3, max_pending=3),
                               verify.chain_sampling, length, key=3, draft_params=LOG_Q,
                               policy=Periodic(3, 3))
    p = FROM_START.pvalue(toks, 0, length)
    assert p > 1e-3, f"law broken, p = {p:.2e}"
    assert out.accept_hist[:, 1:].sum() > 0


def test_goodput_costs_charge_the_draft_catch_up():
    """T(0) includes the draft's catch-up: a full forward per step (max_pending = 1)
    or a share of a queued one."""
    costs = policies.goodput.step_costs(0.3, [1.0, 1.1, 1.2])
    np.testing.assert_allclose(costs, [1.0, (0.3 + 1.1) / 1.3, (0.6 + 1.2) / 1.3])
    lazy = policies.goodput.step_costs(0.3, [1.0, 1.1, 1.2], sync_seconds=0.1)
    np.testing.assert_allclose(lazy, [1.0, (0.3 + 1.1) / 1.1, (0.6 + 1.2) / 1.1])
    with pytest.raises(ValueError, match="max_pending"):
        DraftModel.chain(FROM_START.LM, 2, max_pending=0)


def test_max_pending_does_not_recompile_per_step(tiny):
    """One compiled loop handles queued, fed and drafting steps."""
    cfg, params, prompts, ref = tiny
    method = decode.Method(DraftModel.chain(DecoderLM(cfg), 3, max_pending=2),
                           verify.greedy, Periodic(3, 3))
    run = functools.partial(decode.speculative_generate, params, cfg, method=method,
                            draft_params=params, max_new_tokens=len(ref[0]))
    run(prompts)
    size = decode.speculative_loop._cache_size()
    assert run(prompts[::-1]).tokens == ref[::-1]
    assert decode.speculative_loop._cache_size() == size
