"""Model-free theory of speculative decoding: plain distributions in, numbers out.

- `performance`: closed-form models (expected tokens, speedup with a measured
  verification-cost curve, optimal draft length, per-position acceptance,
  Sequoia tree length and optimal tree, CS Drafting cascades).
- `acceptance`: exact one-step acceptance of the lossless verifiers (single
  draft, RRS with / without replacement, K-SEQ, greedy drafts).
- `optimal`: the optimal multi-draft acceptance rate (primal LP, exhaustive
  dual / min-cut, fast exact search over nested p/q sets).
- `drafts`: draft laws, input validation, P(all drafts in B) (exponential race).
- `comparison`: batched verifier-vs-optimum table for experiments.
"""

from specjax.theory.acceptance import greedy_acceptance
from specjax.theory.acceptance import kseq_acceptance
from specjax.theory.acceptance import rrs_acceptance
from specjax.theory.acceptance import rrs_acceptance_bounds
from specjax.theory.acceptance import single_draft_acceptance
from specjax.theory.comparison import compare_verifiers
from specjax.theory.comparison import gap_to_optimum
from specjax.theory.drafts import DRAFT_LAWS
from specjax.theory.drafts import check_distributions
from specjax.theory.drafts import draft_set_law
from specjax.theory.drafts import prob_all_drafts_in
from specjax.theory.optimal import OptimalSet
from specjax.theory.optimal import optimal_acceptance
from specjax.theory.optimal import optimal_acceptance_dual
from specjax.theory.optimal import optimal_acceptance_lp
from specjax.theory.optimal import optimal_acceptance_search
from specjax.theory.performance import best_horizontal_cascade
from specjax.theory.performance import cascade_speedup
from specjax.theory.performance import expected_tokens
from specjax.theory.performance import expected_tokens_per_position
from specjax.theory.performance import optimal_gamma
from specjax.theory.performance import optimal_tree
from specjax.theory.performance import speedup
from specjax.theory.performance import tree_expected_tokens
from specjax.theory.performance import vertical_cascade_cost

__all__ = [
    "DRAFT_LAWS",
    "OptimalSet",
    "best_horizontal_cascade",
    "cascade_speedup",
    "check_distributions",
    "compare_verifiers",
    "draft_set_law",
    "expected_tokens",
    "expected_tokens_per_position",
    "gap_to_optimum",
    "greedy_acceptance",
    "kseq_acceptance",
    "optimal_acceptance",
    "optimal_acceptance_dual",
    "optimal_acceptance_lp",
    "optimal_acceptance_search",
    "optimal_gamma",
    "optimal_tree",
    "prob_all_drafts_in",
    "rrs_acceptance",
    "rrs_acceptance_bounds",
    "single_draft_acceptance",
    "speedup",
    "tree_expected_tokens",
    "vertical_cascade_cost",
]
