"""The committed-token history of drafters that read the text itself.

Drafters whose drafts depend on the committed text (prompt lookup, Max-Gram,
REST retrieval, RASD) and SWIFT's matchness window keep each row's committed
tokens on device: `TokenHistory` holds the prompt followed by every
committed token, in fixed-shape buffers of H slots (H = the cache size, which
bounds prompt + generated tokens). A step's root (the last committed token,
not yet in any cache) is written provisionally with `push_root` for the
lookup, and `append_path` commits the root and the accepted drafts after
verification; the bonus token becomes the next step's root.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from specjax import trees


@flax.struct.dataclass
class TokenHistory:
    """Each row's committed tokens (prompt first), zero-padded after `length`.

    tokens: int32[B, H]; length: int32[B] (<= H).
    """

    tokens: jax.Array
    length: jax.Array


def init_history(tokens: jax.Array, lengths: jax.Array, capacity: int) -> TokenHistory:
    """A history of `capacity` slots holding the right-padded prompts.

    Args:
      tokens: int32[B, P] right-padded prompts.
      lengths: int32[B] prompt lengths.
      capacity: H, static number of slots (prompt + every committed token).

    Returns:
      The TokenHistory.
    """
    b, p = tokens.shape
    keep = min(p, capacity)
    hist = jnp.zeros((b, capacity), jnp.int32).at[:, :keep].set(tokens[:, :keep].astype(jnp.int32))
    lengths = jnp.minimum(lengths.astype(jnp.int32), capacity)
    hist = jnp.where(jnp.arange(capacity)[None, :] < lengths[:, None], hist, 0)
    return TokenHistory(tokens=hist, length=lengths)


def push_root(history: TokenHistory, root: jax.Array) -> jax.Array:
    """History tokens with `root` written at slot `length` (not yet committed).

    Returns:
      int32[B, H]; slots beyond the capacity are dropped.
    """
    b, _ = history.tokens.shape
    return history.tokens.at[jnp.arange(b), history.length].set(root.astype(jnp.int32), mode="drop")


def append_path(history: TokenHistory, tree: trees.Tree, result) -> TokenHistory:
    """Appends the root and the accepted drafts of each row (not the next token).

    The next token becomes the root of the next step and is appended then.

    Args:
      history: the histories.
      tree: the verified trees.
      result: the `VerifyResult` (path, num_accepted).

    Returns:
      The new TokenHistory (lengths clipped to the capacity).
    """
    b, h = history.tokens.shape
    n = tree.num_nodes
    path_tokens = jnp.take_along_axis(tree.tokens, result.path, axis=1)  # [B, N], root first
    i = jnp.arange(n)[None, :]
    slots = jnp.where(i <= result.num_accepted[:, None], history.length[:, None] + i, h)
    tokens = history.tokens.at[jnp.arange(b)[:, None], slots].set(path_tokens, mode="drop")
    length = jnp.minimum(history.length + result.num_accepted + 1, h)
    return TokenHistory(tokens=tokens, length=length)
