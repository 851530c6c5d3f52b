"""Numpy enumeration of draft outcomes and window laws for the exact-law tests.

Independent of the code under test: draft laws are written from their
definitions, and the target window law is a product of conditionals.
"""

import itertools

import numpy as np


def draft_outcomes(law, q, n):
    """[(tokens tuple, probability)] of every n-draft outcome of one node.

    Args:
      law: "iid" (n i.i.d. draws), "wor" (ordered draws without replacement;
        once the support is exhausted the sampler returns zero-probability
        tokens, here the first unused ones) or "greedy" (top n - 1 of q by
        decreasing probability, lower id first on ties, then one draw).
      q: np[V] draft distribution.
      n: number of drafts.
    """
    v = len(q)
    out = []
    if law == "iid":
        for xs in itertools.product(range(v), repeat=n):
            w = float(np.prod(q[list(xs)]))
            if w > 0:
                out.append((xs, w))
    elif law == "wor":
        for xs in itertools.permutations(range(v), n):
            w, used = 1.0, 0.0
            for k, x in enumerate(xs):
                left = 1.0 - used
                if left > 1e-15:
                    w *= q[x] / left
                else:
                    unused = [t for t in range(v) if t not in xs[:k] and q[t] == 0]
                    w *= float(x == unused[0])
                used += q[x]
            if w > 0:
                out.append((xs, w))
    elif law == "greedy":
        top = tuple(int(t) for t in np.argsort(-q, kind="stable")[: n - 1])
        out = [(top + (x,), float(q[x])) for x in range(v) if q[x] > 0]
    else:
        raise ValueError(law)
    return out


def prefix(tokens, parent, node):
    """Draft tokens on the path root -> node (root excluded), as a tuple."""
    seq = []
    while node > 0:
        seq.append(int(tokens[node]))
        node = parent[node]
    return tuple(seq[::-1])


def tree_outcomes(parent, valid, law, cond_q):
    """Every draft outcome of a padded static topology with its probability.

    Args:
      parent: np[N] parent array (padding nodes included).
      valid: np[N] bool; children of a node are its valid children.
      law: draft law of every node's children (see draft_outcomes).
      cond_q: dict prefix -> np[V] draft conditional.

    Returns:
      [(tokens np[N], probability)]; padding tokens are 0, the root is 0.
    """
    n = len(parent)
    kids = {j: [i for i in range(1, n) if parent[i] == j and valid[i]] for j in range(n)}
    partial = [(np.zeros(n, np.int32), 1.0)]
    for j in range(n):
        if not kids[j] or not valid[j]:
            continue
        grown = []
        for toks, w in partial:
            q = cond_q[prefix(toks, parent, j)]
            for xs, wx in draft_outcomes(law, q, len(kids[j])):
                t = toks.copy()
                t[kids[j]] = xs
                grown.append((t, w * wx))
        partial = grown
    return partial


def random_conditionals(rng, v, depth, zero_prob=0.2, min_support=1, concentration=0.8):
    """dict prefix -> distribution for every prefix of length 0..depth."""
    table = {}
    for length in range(depth + 1):
        for pre in itertools.product(range(v), repeat=length):
            while True:
                d = rng.dirichlet(np.ones(v) * concentration)
                d[rng.random(v) < zero_prob] = 0
                if (d > 0).sum() >= min_support:
                    break
            table[pre] = d / d.sum()
    return table


def target_window(cond_p, v, length):
    """Exact law of the first `length` tokens under the target: np[V] * length."""
    out = np.zeros((v,) * length)
    for seq in itertools.product(range(v), repeat=length):
        w = 1.0
        for t in range(length):
            w *= cond_p[seq[:t]][seq[t]]
        out[seq] = w
    return out


def output_window(joint, weights, tokens, parent, valid, cond_p, v, length):
    """Law of the first `length` tokens produced by one verification step.

    The step emits the accepted drafts and next_token; the rest of the window
    is continued with the target's own conditionals.

    Args:
      joint: np[B, N, V], P(path ends at node j, next_token = t) per outcome.
      weights: np[B], probability of each draft outcome.
      tokens, parent, valid: np[B, N] trees.
      cond_p: dict prefix -> target conditional.
    """
    out = np.zeros((v,) * length)

    def extend(seq, mass):
        if len(seq) == length:
            out[seq] += mass
            return
        for t in range(v):
            if cond_p[seq][t] > 0:
                extend(seq + (t,), mass * cond_p[seq][t])

    for b in range(len(weights)):
        if weights[b] == 0:
            continue
        for j in np.flatnonzero(valid[b]):
            pre = prefix(tokens[b], parent[b], j)
            for t in np.flatnonzero(joint[b, j] > 0):
                extend(pre + (int(t),), weights[b] * joint[b, j, t])
    return out
