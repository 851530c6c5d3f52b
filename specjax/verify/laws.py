"""Draft laws, and which verifier is lossless for which.

A sampling verifier is lossless (its output law is the processed target law)
only for drafts whose relation to the reported draft distributions q matches
what its rule assumes. Every drafter declares that relation as its
`draft_law`, one of the names below; every verifier declares the laws it is
lossless for under sampling as `lossless_for` (a frozenset), and
`check_composition` refuses a pair outside that table unless the caller
says `lossy=True` (typical acceptance, Judge decoding, entropy switching).

Draft laws (row i of q = the distribution the drafter reports at node i):

  IID                  the children of node i are i.i.d. samples of q_i;
                       a chain drafted by sampling (standard speculative
                       sampling, Leviathan et al. arXiv:2211.17192) is the
                       one-child case, whatever the per-position q (draft
                       model, self-draft, cascade).
  WITHOUT_REPLACEMENT  the children of node i are an ordered sample without
                       replacement from q_i (Gumbel-top-k; Recursive SD,
                       Jeon et al. arXiv:2402.14160), possibly stopped at a
                       count that does not look at the next child's token
                       (DySpec, RSD-S).
  GREEDY_DRAFT         the first n - 1 children of node i are the top n - 1
                       tokens of q_i and the last one a sample of q_i (Hu et
                       al. arXiv:2502.18779).
  POINT_MASS           a deterministic chain; q_i is one-hot at node i's
                       only child (prompt lookup, the n-gram drafters). A
                       draw from a one-hot q is that token, so this is also
                       IID with one child.
  DETERMINISTIC_TREE   a deterministic tree (Token Recycling arXiv:2408.08696,
                       ADED, REST retrieval, RASD; chains included) whose q_i
                       is one-hot at node i's FIRST child only
                       (`first_child_point_mass`): q is not the law of the
                       other siblings.
  TOPK                 deterministic top-k children of q_i, with q_i the full
                       draft distribution (a `DraftModel` with child rule
                       "topk" while sampling): q is not the law of any child.

The table (`verifier.lossless_for`; tests/verify/test_composition.py checks
every entry, and every gap, against the exact output law of one step):

  verify.greedy                 every law, at temperature 0 only (q unused;
                                `greedy_only`, see `check_sampling`).
  verify.chain_sampling         IID and POINT_MASS chains; DETERMINISTIC_TREE.
  tree_rrs(replacement=True)    IID, POINT_MASS, DETERMINISTIC_TREE
                                (SpecInfer arXiv:2305.09781).
  tree_rrs(replacement=False)   IID, WITHOUT_REPLACEMENT, POINT_MASS,
                                DETERMINISTIC_TREE (Recursive SD).
  tree_kseq()                   IID, POINT_MASS (SpecTr arXiv:2310.15141).
  tree_greedy_draft()           GREEDY_DRAFT, IID, POINT_MASS,
                                DETERMINISTIC_TREE (arXiv:2502.18779).
  deterministic_tree()          every law: it samples t ~ p at each node and
                                never reads q.
  typical()                     none: lossy (Medusa arXiv:2401.10774).

Rules that read q stay exact on DETERMINISTIC_TREE only through the
first-child convention: siblings with q = 0 are skipped, so only the
first-child chain can be accepted (`deterministic_tree()` accepts any child
with probability p(x)). K-SEQ is the exception: its rho counts every
sibling although q covers only the first, so it is biased there.
Known non-lossless pairs (each measured by the exact law in
tests/verify/test_composition.py): K-SEQ or RRS with replacement on children
drawn without replacement (the latter is also the mutant "with-replacement
rule on without-replacement tree" of tests/verify/test_verify_tree.py),
K-SEQ on a deterministic tree, the greedy-draft rule on children drawn
without replacement, chain sampling of a sampled tree, and every rule that
reads q on TOPK drafts. A drafter that lies about q (the `UniformQ` mutants
of tests/drafters/) is caught by the Monte Carlo law tests, not here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

IID = "iid"
WITHOUT_REPLACEMENT = "without_replacement"
GREEDY_DRAFT = "greedy_draft"
POINT_MASS = "point_mass"
DETERMINISTIC_TREE = "deterministic_tree"
TOPK = "topk"

ALL = frozenset({IID, WITHOUT_REPLACEMENT, GREEDY_DRAFT, POINT_MASS, DETERMINISTIC_TREE, TOPK})
"""Every draft law (what a verifier that never reads q is lossless for)."""

# Verifiers lossless for each law under sampling, named for error messages.
_LOSSLESS_VERIFIERS = {
    IID: "verify.chain_sampling (chains), verify.tree_rrs(), verify.tree_kseq()",
    WITHOUT_REPLACEMENT: "verify.tree_rrs(replacement=False)",
    GREEDY_DRAFT: "verify.tree_greedy_draft()",
    POINT_MASS: "verify.chain_sampling",
    DETERMINISTIC_TREE: "verify.deterministic_tree(drafter.max_children)",
    TOPK: "verify.deterministic_tree()",
}


def is_chain(parents) -> bool:
    """True if the static topology `parents` (parents[0] = -1) is a chain."""
    parents = np.asarray(parents)
    return bool(np.all(parents[1:] == np.arange(len(parents) - 1)))


def draft_law(drafter: Any) -> str:
    """The drafter's declared `draft_law`; ValueError if it declares none or an unknown one."""
    law = getattr(drafter, "draft_law", None)
    if law not in ALL:
        raise ValueError(
            f"{type(drafter).__name__} declares draft_law={law!r}; a drafter must declare one "
            f"of {sorted(ALL)} (specjax.verify.laws)")
    return law


def lossless_for(verifier: Any) -> frozenset:
    """The draft laws `verifier` is lossless for under sampling (empty if it declares none)."""
    return frozenset(getattr(verifier, "lossless_for", frozenset()))


SAMPLED = frozenset({IID, WITHOUT_REPLACEMENT, GREEDY_DRAFT})
"""Laws whose children are samples of q (several per node make a sampled tree)."""


def _topology_error(drafter: Any, law: str, verifier: Any) -> str | None:
    """Why a chains-only verifier cannot verify this drafter's sampled tree, or None."""
    parents = getattr(drafter, "parents", None)
    if (getattr(verifier, "chains_only", False) and law in SAMPLED and parents is not None
            and not is_chain(parents)):
        return (f"{type(drafter).__name__} (draft law {law!r}) drafts a sampled tree but "
                f"{verifier!r} verifies chains only (one sampled child per node)")
    return None


def check_composition(drafter: Any, verifier: Any, lossy: bool = False) -> None:
    """Raises ValueError if drafter x verifier is not lossless under sampling.

    Lossless means: for the drafter's `draft_law`, the verifier's output law is
    the processed target law at every temperature the verifier accepts (a
    greedy-only verifier, `greedy_only`, is checked against the sampling
    settings by `check_sampling`). `lossy=True` accepts any pair, unchecked
    (typical acceptance; a mutant in a test).

    Args:
      drafter: a drafter declaring `draft_law`.
      verifier: a verifier declaring `lossless_for`.
      lossy: accept a pair that is not lossless.

    Raises:
      ValueError: naming both sides, the drafter's law and the laws the verifier
        is lossless for, and the verifiers that are lossless for that law.
    """
    if lossy:
        return
    law = draft_law(drafter)
    exact_for = lossless_for(verifier)
    if law not in exact_for:
        shown = ", ".join(sorted(exact_for)) or "none (lossy)"
        raise ValueError(
            f"{type(drafter).__name__} (draft law {law!r}) with {verifier!r} (lossless for: "
            f"{shown}) is not lossless under sampling; use {_LOSSLESS_VERIFIERS[law]}, or "
            f"pass lossy=True to accept a different output law")
    problem = _topology_error(drafter, law, verifier)
    if problem is not None:
        raise ValueError(f"{problem}; use verify.tree_rrs() or pass lossy=True")


def check_sampling(verifier: Any, sampling: Any, lossy: bool = False) -> None:
    """Raises ValueError if a greedy-only verifier is used with non-greedy sampling.

    `verify.greedy` is lossless for every draft law at temperature 0 only: with
    sampling it would return the argmax path, not the sampled target law.

    Args:
      verifier: the method's verifier (`greedy_only` True for `verify.greedy`).
      sampling: the `specjax.sampling.Sampling` of the run.
      lossy: accept it anyway.
    """
    if getattr(verifier, "greedy_only", False) and not sampling.greedy and not lossy:
        raise ValueError(
            f"{verifier!r} is lossless at temperature 0 only, but sampling is {sampling!r}; "
            f"use a sampling verifier (specjax.verify.laws) or pass lossy=True")
