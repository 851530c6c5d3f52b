"""Prompt lookup decoding (PLD): n-gram drafts copied from the context itself.

Saxena, "Prompt Lookup Decoding" (2023, github.com/apoorvumang/
prompt-lookup-decoding), the PLD baseline of Spec-Bench (Xia et al., arXiv
2401.07851) and transformers' `prompt_lookup_num_tokens`; the same idea as
LLMA (Yang et al., "Inference with Reference", arXiv 2304.04487).

At every step the last n tokens of the context (prompt + generated text, the
root included) are searched for in the earlier context, for n from
`max_ngram` down to `min_ngram`; the first n that matches anywhere wins, and
the `num_drafts` tokens that followed the MOST RECENT earlier occurrence
(`earliest=True`: the first occurrence, as in Saxena's and Spec-Bench's code)
are proposed as a chain. A continuation that runs into the end of the context
(the match overlaps the suffix, e.g. inside a run "a b a b a b") is, by
default, continued periodically like an LZ77 copy ("a b a b ..."), since
the text being drafted is itself the continuation; with `periodic=False` it
is truncated as in Saxena's code. Unmatched steps propose nothing. Drafts
that do not exist are padding (`valid=False`), so they are never accepted.

Everything runs on device with fixed shapes: the drafter state is each
row's committed text (`drafters.history.TokenHistory`: int32[B, H], H = the
cache size, which bounds prompt + generated tokens, and its length), and
matching is O(B * H * max_ngram^2) elementwise comparisons per step,
negligible next to a target forward.

Losslessness: the drafts are a deterministic function of the committed text,
so the draft law is a point mass. `draft_probs` is that point mass (row i is
one-hot at the token of node i + 1, zero after the last valid draft), which
makes:
  - `verify.greedy` lossless at temperature 0 (q unused);
  - `verify.chain_sampling` (or `verify.tree_rrs`) lossless at any
    temperature: a draft x is accepted with probability p(x) and a rejection
    samples from p with x removed, i.e. the output is exactly p and the
    acceptance probability p(x) is the best any verifier can do for a fixed
    draft. `verify.deterministic_tree()` gives the same law.
Passing any other q (e.g. a uniform "draft law") to a sampling verifier is NOT
lossless; tests/drafters/test_prompt_lookup.py checks both by Monte Carlo.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from specjax import trees
from specjax.drafters.base import DrafterBase, Prompt, Proposal, TargetOutputs, chain_point_mass, check_vocab
from specjax.drafters.history import TokenHistory, append_path, init_history, push_root
from specjax.sampling import Sampling
from specjax.verify import laws


def find_match(
    tokens: jax.Array, length: jax.Array, max_ngram: int, min_ngram: int = 1,
    earliest: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Where the continuation of the longest matching suffix n-gram starts.

    For n = max_ngram, ..., min_ngram (the first n with a match wins), the
    suffix s = tokens[L - n : L] is compared with every window
    tokens[j : j + n] with j + n < L (so the continuation tokens[j + n:] is
    non-empty and the suffix does not match itself).

    Args:
      tokens: int32[B, H] token sequences, zero-padded.
      length: int32[B] sequence lengths L (<= H).
      max_ngram, min_ngram: static n-gram sizes, 1 <= min_ngram <= max_ngram.
      earliest: take the first matching window instead of the most recent.

    Returns:
      (start int32[B]: index of the continuation's first token (j + n),
       ngram int32[B]: the matched n, found bool[B]). start and ngram are 0
       where nothing matched.
    """
    b, h = tokens.shape
    j = jnp.arange(h, dtype=jnp.int32)[None, :]
    length = length.astype(jnp.int32)
    start = jnp.zeros((b,), jnp.int32)
    ngram = jnp.zeros((b,), jnp.int32)
    found = jnp.zeros((b,), bool)
    for n in range(max_ngram, min_ngram - 1, -1):
        padded = jnp.pad(tokens, ((0, 0), (0, n)))
        suffix_at = jnp.clip(length[:, None] - n + jnp.arange(n)[None, :], 0, h - 1)
        suffix = jnp.take_along_axis(tokens, suffix_at, axis=1)  # [B, n]
        ok = j + n < length[:, None]  # [B, H]
        for t in range(n):
            ok &= padded[:, t: t + h] == suffix[:, t: t + 1]
        if earliest:
            pos = jnp.min(jnp.where(ok, j, h), axis=1)
        else:
            pos = jnp.max(jnp.where(ok, j, -1), axis=1)
        hit = jnp.any(ok, axis=1) & ~found
        start = jnp.where(hit, pos + n, start)
        ngram = jnp.where(hit, n, ngram)
        found |= hit
    return start, ngram, found


def continuation(
    tokens: jax.Array, length: jax.Array, start: jax.Array, found: jax.Array, k: int,
    periodic: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """The k tokens that followed the match, starting at `start`.

    Args:
      tokens: int32[B, H]; length: int32[B] sequence lengths L.
      start, found: from `find_match`.
      k: static number of drafts.
      periodic: a continuation that reaches the end of the sequence is
        continued as in an LZ77 overlapping copy (token m is
        tokens[start + m mod (L - start)]), i.e. the repeated text keeps
        repeating; otherwise it is truncated at L.

    Returns:
      (drafts int32[B, k], zero after the last real one; count int32[B]).
    """
    h = tokens.shape[1]
    m = jnp.arange(k)[None, :]
    avail = jnp.maximum(length - start, 1)[:, None]
    idx = start[:, None] + (m % avail if periodic else m)
    count = jnp.where(found, k if periodic else jnp.clip(length - start, 0, k), 0)
    count = count.astype(jnp.int32)
    drafts = jnp.take_along_axis(tokens, jnp.clip(idx, 0, h - 1), axis=1)
    return jnp.where(m < count[:, None], drafts, 0), count


@dataclasses.dataclass(frozen=True)
class PromptLookup(DrafterBase):
    """Prompt lookup (n-gram) drafter: a chain of up to `num_drafts` copied tokens.

    Attributes:
      vocab_size: the target's vocabulary size V (for the point-mass q).
      num_drafts: K, the chain length (Spec-Bench / Saxena: 10).
      max_ngram, min_ngram: n-gram sizes tried, longest first (3 and 1).
      earliest: copy after the first occurrence (Saxena, Spec-Bench, HF)
        instead of the most recent one (default).
      periodic: continue a continuation that runs into the end of the text
        periodically (LZ77 copy; default) instead of truncating it.
        `earliest=True, periodic=False` is exactly Saxena's / Spec-Bench's PLD.
      max_nodes: optional node budget; K + 1 > max_nodes is an error.
    """

    vocab_size: int
    num_drafts: int = 10
    max_ngram: int = 3
    min_ngram: int = 1
    earliest: bool = False
    periodic: bool = True
    max_nodes: int | None = None

    draft_law = laws.POINT_MASS  # deterministic chain, q one-hot at each draft

    def __post_init__(self):
        if self.vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {self.vocab_size}")
        if self.num_drafts < 1:
            raise ValueError(f"num_drafts must be >= 1, got {self.num_drafts}")
        if not 1 <= self.min_ngram <= self.max_ngram:
            raise ValueError(
                f"need 1 <= min_ngram <= max_ngram, got min_ngram={self.min_ngram}, "
                f"max_ngram={self.max_ngram}")
        if self.max_nodes is not None and self.num_nodes > self.max_nodes:
            raise ValueError(
                f"prompt lookup with num_drafts={self.num_drafts} needs {self.num_nodes} tree "
                f"nodes (root included) but the node budget is max_nodes={self.max_nodes}")

    @property
    def num_nodes(self) -> int:
        return self.num_drafts + 1

    def init(self, params, prompt: Prompt, target: TargetOutputs):
        tokens, lengths, max_len = prompt.tokens, prompt.lengths, prompt.max_len
        del params
        return init_history(tokens, lengths, max(int(max_len), 2))

    def propose(self, params, state: TokenHistory, root, key, sampling: Sampling, expand=None) -> Proposal:
        del params, key, sampling
        seq = push_root(state, root)
        length = jnp.minimum(state.length + 1, seq.shape[1])
        start, _, found = find_match(seq, length, self.max_ngram, self.min_ngram, self.earliest)
        drafts, count = continuation(seq, length, start, found, self.num_drafts, self.periodic)
        tree = trees.chain(root, drafts, num_valid=count)
        q = chain_point_mass(drafts, count, self.vocab_size)
        return Proposal(tree=tree, draft_probs=q, state=state)

    def update(self, params, state: TokenHistory, tree, result, target: TargetOutputs):
        del params
        check_vocab(target, self.vocab_size, "PromptLookup")
        return append_path(state, tree, result)
