"""Kangaroo: self-speculation by a shallow early exit of the target.

Liu et al., "Kangaroo: Lossless Self-Speculative Decoding via Double Early
Exiting" (arXiv 2404.18911). The draft is the shallow sub-network = the
first `exit_layer` layers + the final norm + the LM head (first early exit),
and drafting stops as soon as the draft's top-1 probability falls below
`threshold` (second early exit; the chain engine is `drafters.self_spec`).
The paper puts a small trained adapter (one attention layer + norm) between
layer l and the head; training is a separate issue, so this is the
adapter-free early exit (`models.params.first_layers`) until then.

KV cache: the drafter keeps a cache of the first l layers, equal to the
target's at every committed slot (`drafters.self_spec`). The first l layers
of the target see the same inputs as the draft, so these ARE the draft's own
keys/values; the draft never recomputes the context (the paper shares them
with the big model the other way round: its verification reuses the draft's
shallow hidden states and runs only layers l..L-1, which a loop that always
runs the full target cannot do). Memory: l / L times the target's cache.
"""

from __future__ import annotations

import dataclasses

from specjax.drafters.base import Prompt, Proposal, TargetOutputs
from specjax.drafters.self_spec import (
    SelfChain,
    SelfDraftState,
    check_chain_settings,
    check_target_kv,
    commit_target_kv,
    draft_chain,
    require_plain_kv,
)
from specjax.models import decoder
from specjax.models.cache import KVCache
from specjax.models.config import ModelConfig
from specjax.models.lm import DecoderLM
from specjax.models.params import first_layers
from specjax.sampling import Sampling


def _cache_from_target(target_cache: KVCache, num_layers: int) -> KVCache:
    return target_cache.replace(k=target_cache.k[:num_layers], v=target_cache.v[:num_layers])


@dataclasses.dataclass(frozen=True)
class Kangaroo(SelfChain):
    """Kangaroo self-draft: first `exit_layer` layers + final norm + LM head.

    `draft_params` must be the target's parameters (the same pytree).

    Attributes:
      cfg: the TARGET's ModelConfig.
      exit_layer: l, the number of layers the draft runs (1 <= l <= L; l = L
        drafts with the full model, which every draft then matches).
      num_drafts: K, the maximum chain length (the paper: 6).
      threshold: stop drafting after a token whose top-1 draft probability
        is below it (the paper: 0.6); 0 disables early exit.
    """


    cfg: ModelConfig
    exit_layer: int
    num_drafts: int = 6
    threshold: float = 0.6

    def __post_init__(self):
        if not 1 <= self.exit_layer <= self.cfg.num_layers:
            raise ValueError(
                f"exit_layer must be in [1, {self.cfg.num_layers}] (the target's layers), "
                f"got {self.exit_layer}")
        check_chain_settings(self.num_drafts, self.threshold)

    def _shallow(self, params):
        return first_layers(self.cfg, params, self.exit_layer)

    def init(self, params, prompt: Prompt, target: TargetOutputs):
        """State from the target's prefilled cache (or, without it, a prefill of
        the first l layers, which gives the same keys/values)."""
        tokens, lengths, max_len = prompt.tokens, prompt.lengths, prompt.max_len
        if target.cache is not None:
            return SelfDraftState(cache=_cache_from_target(
                require_plain_kv("Kangaroo", target.cache), self.exit_layer))
        cfg_l, params_l = self._shallow(params)
        lm = DecoderLM(cfg_l)
        _, cache = lm.prefill(params_l, tokens, lengths, lm.init_cache(tokens.shape[0], max_len))
        return SelfDraftState(cache=cache)

    def propose(self, params, state: SelfDraftState, root, key, sampling: Sampling, expand=None) -> Proposal:
        cfg_l, params_l = self._shallow(params)

        def forward(tokens, positions, cache, mask):
            out = decoder.forward(params_l, cfg_l, tokens, positions, cache, mask)
            return out.logits, out.kv

        tree, q, cache = draft_chain(forward, state.cache, root, key, sampling, self.num_drafts,
                                     self.threshold, self.vocab_size)
        return Proposal(tree=tree, draft_probs=q, state=SelfDraftState(cache=cache))

    def update(self, params, state: SelfDraftState, tree, result, target: TargetOutputs):
        kv = check_target_kv("Kangaroo", self.cfg, self.exit_layer, target.kv)
        return SelfDraftState(cache=commit_target_kv(state.cache, kv, result))
