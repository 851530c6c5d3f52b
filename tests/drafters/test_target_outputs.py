"""The drafter contract hands drafters the target's hidden states (issue 17).

A probe drafter (prompt lookup underneath) asks for the last hidden state and
layer 0's residual stream (`TargetFeatures`). At `init` it predicts the first
token from the prompt's hidden states through the frozen LM head; at every
`update` it recomputes the target's logits at the tree nodes from the hidden
states it was given (as Medusa / EAGLE heads read them) and reports, through
`jax.debug.callback`, the largest difference to the logits it was given: the
hidden states, the logits and the node order must agree, with and without a
policy's compacted verification widths, inside the real jitted loop.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax import decode, policies, verify
from specjax.drafters.base import DrafterBase, TargetFeatures, TargetOutputs
from specjax.drafters.prompt_lookup import PromptLookup
from specjax.models import decoder
from specjax.models.config import ModelConfig
from specjax.models.lm import MarkovLM
from specjax.verify import laws
from tests.drafters.conftest import N_NEW


RECORDS: list[dict] = []


def _record(kind, value, ok):
    RECORDS.append({"kind": kind, "value": np.asarray(value), "ok": bool(ok)})


@dataclasses.dataclass(frozen=True)
class Probe(DrafterBase):
    """Prompt lookup that checks the hidden states it is handed."""

    cfg: ModelConfig
    num_drafts: int = 3
    draft_law = laws.POINT_MASS
    target_features = TargetFeatures(hidden=True, layers=(0,))

    @property
    def inner(self) -> PromptLookup:
        return PromptLookup(self.cfg.vocab_size, num_drafts=self.num_drafts)

    @property
    def num_nodes(self) -> int:
        return self.inner.num_nodes

    @property
    def vocab_size(self) -> int:
        return self.cfg.vocab_size

    def init(self, params, prompt, target: TargetOutputs):
        B, P = prompt.tokens.shape
        D = self.cfg.dim
        ok = target.hidden.shape == (B, P, D) and target.layers.shape == (1, B, P, D)
        last = jnp.take_along_axis(target.hidden, (prompt.lengths - 1)[:, None, None], axis=1)
        first = jnp.argmax(decoder.logits_from_hidden(params, self.cfg, last[:, 0]), axis=-1)
        jax.debug.callback(functools.partial(_record, "first"), first, ok)
        return self.inner.init(None, prompt, target)

    def propose(self, params, state, root, key, sampling, expand=None):
        return self.inner.propose(None, state, root, key, sampling, expand)

    def update(self, params, state, tree, result, target: TargetOutputs):
        B, N = tree.tokens.shape
        D = self.cfg.dim
        ok = target.hidden.shape == (B, N, D) and target.layers.shape == (1, B, N, D)
        logits = decoder.logits_from_hidden(params, self.cfg, target.hidden)  # [B, N, V]
        jax.debug.callback(functools.partial(_record, "err"),
                           jnp.max(jnp.abs(logits - target.logits)), ok)
        return self.inner.update(None, state, tree, result, target)


@pytest.mark.parametrize("policy", [None, policies.FixedLength(2)])
def test_drafters_get_hidden_states_matching_the_logits(tiny, policy):
    cfg, params, prompts, ref = tiny
    RECORDS.clear()
    out = decode.speculative_generate(params, cfg, prompts, method=decode.Method(
        Probe(cfg), verify.greedy, policy), draft_params=params, max_new_tokens=N_NEW)
    assert out.tokens == ref
    firsts = [r for r in RECORDS if r["kind"] == "first"]
    errs = [r for r in RECORDS if r["kind"] == "err"]
    assert len(firsts) == 1 and firsts[0]["ok"]
    assert firsts[0]["value"].tolist() == [r[0] for r in ref]
    assert len(errs) >= int(out.steps.max()) and all(r["ok"] for r in errs)
    assert max(float(r["value"]) for r in errs) < 1e-4


def test_hidden_states_are_not_computed_unless_asked(tiny, monkeypatch):
    """Without a request the loop never calls `forward_features` / `prefill_features`."""
    from specjax.models.lm import DecoderLM

    def refuse(*a, **k):
        raise AssertionError("hidden states computed although no drafter asked for them")

    monkeypatch.setattr(DecoderLM, "forward_features", refuse)
    monkeypatch.setattr(DecoderLM, "prefill_features", refuse)
    jax.clear_caches()  # trace the loop afresh, not from an earlier test's program
    cfg, params, prompts, ref = tiny
    out = decode.speculative_generate(params, cfg, prompts, method=decode.Method(
        PromptLookup(cfg.vocab_size, num_drafts=3), verify.greedy), max_new_tokens=N_NEW)
    assert out.tokens == ref


def test_a_model_without_hidden_states_is_refused():
    lm = MarkovLM(3)
    with pytest.raises(ValueError, match="no hidden states"):
        lm.forward_features(jnp.zeros((3, 3)), jnp.zeros((1, 1), jnp.int32), None, None, None)
