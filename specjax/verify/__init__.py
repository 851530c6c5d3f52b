"""Verifiers: decide which drafted tokens the target accepts.

Every verifier is a pure, jittable callable
`verify(key, tree, target_probs, draft_probs) -> VerifyResult` over processed
(temperature / top-k / top-p already applied) probabilities, plus
`law(tree, target_probs, draft_probs) -> VerifyLaw`, its exact output law.

Lossless (output law = processed target law):
  greedy               argmax matching on chains and trees (temperature 0).
  chain_sampling       speculative sampling of one chain (arXiv 2211.17192,
                       2302.01318).
  tree_rrs(True)       SpecInfer recursive rejection sampling, i.i.d. children
                       (arXiv 2305.09781).
  tree_rrs(False)      Recursive SD, children without replacement (arXiv
                       2402.14160).
  tree_kseq()          SpecTr K-SEQ, i.i.d. children (arXiv 2310.15141).
  tree_greedy_draft()  optimal rule for top-(n-1) + one sampled child (arXiv
                       2502.18779).
  deterministic_tree() deterministic drafts (Token Recycling, ADED,
                       retrieval): samples t ~ p, follows the child t; q
                       unused (lossless for every draft law).
Lossy:
  typical(...)         Medusa typical acceptance (arXiv 2401.10774).

Which verifier is lossless for which drafter: each drafter declares its
`draft_law`, each verifier the laws it is `lossless_for`;
`laws.check_composition(drafter, verifier)` refuses a pair outside that
table (see `specjax.verify.laws`).
"""

from specjax.verify import laws
from specjax.verify.deterministic import DeterministicDrafts, DeterministicTreeVerifier, deterministic_tree
from specjax.verify.greedy import Greedy, argmax_last, greedy
from specjax.verify.laws import check_composition
from specjax.verify.multidraft import (
    RRS,
    GreedyDraft,
    KSeq,
    draw_greedy,
    draw_iid,
    draw_without_replacement,
    kseq_rho,
)
from specjax.verify.result import Verifier, VerifyLaw, VerifyResult, sample_from
from specjax.verify.sampling import ChainSampling, accept_prob, chain_sampling, residual
from specjax.verify.tree import TreeVerifier, tree_greedy_draft, tree_kseq, tree_rrs
from specjax.verify.typical import Typical, typical

__all__ = [
    "ChainSampling",
    "DeterministicDrafts",
    "DeterministicTreeVerifier",
    "Greedy",
    "GreedyDraft",
    "KSeq",
    "RRS",
    "TreeVerifier",
    "Typical",
    "Verifier",
    "VerifyLaw",
    "VerifyResult",
    "accept_prob",
    "argmax_last",
    "chain_sampling",
    "check_composition",
    "deterministic_tree",
    "draw_greedy",
    "draw_iid",
    "draw_without_replacement",
    "greedy",
    "kseq_rho",
    "laws",
    "residual",
    "sample_from",
    "tree_greedy_draft",
    "tree_kseq",
    "tree_rrs",
    "typical",
]
