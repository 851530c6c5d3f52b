"""Drafters: what proposes the tokens a target model verifies.

Every drafter subclasses `drafters.base.DrafterBase` (`init`, `propose`,
`update`; `num_nodes`, `vocab_size`, `draft_law`, `target_features`) and composes with any length/tree policy and verifier in a
`specjax.Method`. One file per method, each citing its paper:

  PromptLookup      prompt lookup decoding (n-grams of the context)
  TokenRecycling    Token Recycling (adjacency matrix of past top-k)
  Aded              ADED (online tri-grams, PUCT ranking)
  Retrieval         REST (suffix-array datastore); `load_datastore`
  RASD              RASD (draft-model tree fused with a retrieval tree)
  DraftModel        an independent draft model: chains, multi-drafts, trees
  DySpec            DySpec dynamic trees
  StochasticBeam    RSD-S stochastic beam trees (recursive SD)
  Bigram, MaxGram   CS Drafting's statistical drafters
  Cascade           CS Drafting's vertical/horizontal cascades; `cs_drafting`
  Kangaroo          self-speculation by a shallow early exit
  Swift             SWIFT layer-skipping self-speculation

    from specjax.drafters import PromptLookup
    drafter = PromptLookup(vocab_size=cfg.vocab_size, num_drafts=4)
"""

from specjax.drafters.aded import Aded
from specjax.drafters.base import (
    Drafter,
    DrafterBase,
    Prompt,
    Proposal,
    TargetFeatures,
    TargetOutputs,
)
from specjax.drafters.bigram import Bigram
from specjax.drafters.cascade import Cascade, cs_drafting
from specjax.drafters.datastore import Datastore, build_datastore, load_datastore
from specjax.drafters.draft_model import DraftModel
from specjax.drafters.dyspec import DySpec
from specjax.drafters.kangaroo import Kangaroo
from specjax.drafters.max_gram import MaxGram
from specjax.drafters.prompt_lookup import PromptLookup
from specjax.drafters.rasd import RASD
from specjax.drafters.retrieval import Retrieval
from specjax.drafters.stochastic_beam import StochasticBeam
from specjax.drafters.swift import Swift
from specjax.drafters.token_recycling import TokenRecycling

__all__ = [
    "RASD", "Aded", "Bigram", "Cascade", "Datastore", "DraftModel", "Drafter", "DrafterBase",
    "DySpec", "Kangaroo", "MaxGram", "Prompt", "PromptLookup", "Proposal", "Retrieval",
    "StochasticBeam", "Swift", "TargetFeatures", "TargetOutputs", "TokenRecycling",
    "build_datastore", "cs_drafting", "load_datastore",
]
