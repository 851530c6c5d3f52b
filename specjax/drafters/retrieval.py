"""Retrieval drafts: a suffix-array datastore, built offline, queried on device.

He et al., "REST: Retrieval-Based Speculative Decoding" (arXiv 2311.08252):
draft tokens are copied from a datastore of text instead of being generated.
The last n tokens of the context (n from `max_ngram` down to `min_ngram`; the
first n that occurs in the datastore wins) are looked up in a suffix array,
the tokens that followed the occurrences are gathered, and a trie of those
continuations, pruned to its most frequent prefixes, is the draft tree. RASD
(`specjax.drafters.rasd`) reuses the same retrieval.

Datastore (offline, host, numpy only):

    python -m specjax.drafters.retrieval build --tokenizer=smollm2-135m \
        --corpus=spec_bench --out=/tmp/spec_bench.npz
    python -m specjax.drafters.retrieval info /tmp/spec_bench.npz

tokenizes a corpus (a text file, a .jsonl / .jsonl.gz file, or the name
"spec_bench" for the Spec-Bench question turns), concatenates the documents
with a separator -1 after each one (never matched, and a continuation stops
there) and sorts all suffixes by prefix doubling (O(L log^2 L) numpy sorts).
The .npz holds `tokens` int32[L], `suffix_array` int32[L] and a JSON header
(format, tokenizer, vocab_size, counts, SHA-256 of both arrays) that
`load_datastore` checks.

Retrieval on device (fixed shapes, inside the decode loop's jit):
  - `suffix_range`: lower/upper bound binary searches, ceil(log2(L + 1))
    steps of a `lax.fori_loop`, all n-gram sizes and batch rows at once.
  - `continuations`: R occurrences of the longest matching n-gram, taken
    evenly spaced over its suffix-array range (the range is sorted by what
    follows, so this is a frequency-proportional sample; REST uses every
    occurrence), and their next D tokens (cut at a separator).
  - `retrieval_tree`: the trie of those R continuations: every distinct
    prefix is a node whose frequency is the number of continuations sharing
    it; the `num_nodes - 1` most frequent prefixes (ties: shallower first,
    then first occurrence) form a prefix-closed tree, laid out by depth with
    siblings by decreasing frequency.

Losslessness. The tree is a deterministic function of the datastore and the
committed context, so the draft law is a point mass on the whole tree:
  - `verify.greedy` at temperature 0: lossless (token-identical to greedy).
  - `token_recycling.deterministic_tree()` at any temperature: lossless (it
    samples t ~ p at each node and follows the child t, so the output law is
    p whatever the candidates are) and optimal for a fixed candidate set.
  - `draft_probs` is one-hot at each node's first child (as Token
    Recycling's), so `verify.tree_rrs(replacement=False)` is lossless too but
    can only accept the first-child chain. Any q that pretends the candidates
    were sampled (e.g. uniform) is NOT lossless; tests/drafters/
    test_retrieval.py checks both by Monte Carlo.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from specjax import trees
from specjax.drafters.base import Proposal
from specjax.drafters.prompt_lookup import (
    TokenHistory,
    append_path,
    check_vocab,
    init_history,
    push_root,
)
from specjax.drafters.token_recycling import first_child_point_mass
from specjax.sampling import Sampling

FORMAT = "specjax-retrieval-datastore-v1"
SEPARATOR = -1  # after every document; never equal to a context token


# ----------------------------------------------------------------------------
# The datastore (host side: build, save, load).
# ----------------------------------------------------------------------------


@flax.struct.dataclass
class Datastore:
    """A tokenized corpus and its suffix array; the drafter's `params`.

    tokens: int32[L] token ids, SEPARATOR (-1) after every document.
    suffix_array: int32[L] start positions of all suffixes in sorted order
      (SEPARATOR sorts below every token, the end of the array below both).
    vocab_size: static; the vocabulary the ids belong to.
    """

    tokens: jax.Array
    suffix_array: jax.Array
    vocab_size: int = flax.struct.field(pytree_node=False)

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[0])


def suffix_array(tokens: np.ndarray) -> np.ndarray:
    """Suffix array by prefix doubling (Manber & Myers) with numpy sorts.

    Args:
      tokens: int[L] symbols >= -1.

    Returns:
      np.int32[L]: suffix start positions in lexicographic order of the
      suffixes (a shorter suffix that is a prefix of another sorts first).
    """
    n = int(tokens.shape[0])
    if n == 0:
        return np.zeros((0,), np.int32)
    rank = tokens.astype(np.int64) + 2  # >= 1; 0 is "past the end"
    k = 1
    while True:
        second = np.zeros(n, np.int64)
        if k < n:
            second[: n - k] = rank[k:]
        order = np.lexsort((second, rank))
        r1, r2 = rank[order], second[order]
        new = np.concatenate([[0], np.cumsum((r1[1:] != r1[:-1]) | (r2[1:] != r2[:-1]))])
        rank = np.empty(n, np.int64)
        rank[order] = new + 1
        if new[-1] == n - 1 or k >= n:
            return order.astype(np.int32)
        k *= 2


def corpus_tokens(docs: Iterable[Sequence[int]]) -> np.ndarray:
    """Concatenates token lists, each followed by SEPARATOR; empty ones are skipped."""
    parts = []
    for d in docs:
        d = np.asarray(d, np.int64).reshape(-1)
        if d.size:
            parts.append(np.append(d, SEPARATOR))
    return np.concatenate(parts) if parts else np.zeros((0,), np.int64)


def digest(tokens: np.ndarray, sa: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(tokens, np.int32).tobytes())
    h.update(np.ascontiguousarray(sa, np.int32).tobytes())
    return h.hexdigest()


def _check_tokens(tokens: np.ndarray, vocab_size: int, where: str) -> None:
    real = tokens[tokens != SEPARATOR]
    if real.size == 0:
        raise ValueError(f"{where}: the datastore is empty (no tokens); give a non-empty corpus")
    if real.min() < 0 or real.max() >= vocab_size:
        raise ValueError(f"{where}: token ids must lie in [0, {vocab_size}), got range "
                         f"[{int(real.min())}, {int(real.max())}]")


def build_datastore(docs: Iterable[Sequence[int]], vocab_size: int) -> Datastore:
    """A datastore (numpy arrays) from tokenized documents.

    Raises:
      ValueError: no tokens, ids outside [0, vocab_size), or more than 2^31 - 1 tokens.
    """
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    tokens = corpus_tokens(docs)
    _check_tokens(tokens, vocab_size, "build_datastore")
    if tokens.shape[0] >= 2**31 - 1:
        raise ValueError(f"datastore of {tokens.shape[0]} tokens exceeds the int32 index range")
    tokens = tokens.astype(np.int32)
    return Datastore(tokens=tokens, suffix_array=suffix_array(tokens), vocab_size=int(vocab_size))


def save_datastore(ds: Datastore, path: str | Path, tokenizer: str = "", **info) -> dict:
    """Writes `ds` to an .npz with a JSON metadata header; returns the header."""
    tokens, sa = np.asarray(ds.tokens, np.int32), np.asarray(ds.suffix_array, np.int32)
    meta = dict(format=FORMAT, tokenizer=str(tokenizer), vocab_size=int(ds.vocab_size),
                num_tokens=int(tokens.shape[0]),
                num_documents=int(np.sum(tokens == SEPARATOR)),
                sha256=digest(tokens, sa), **info)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, tokens=tokens, suffix_array=sa, meta=np.array(json.dumps(meta)))
    tmp.replace(path)
    return meta


def read_meta(path: str | Path) -> dict:
    """The JSON header of a datastore file (no validation of the arrays)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"datastore file not found: {path}; build one with `python -m "
            f"specjax.drafters.retrieval build --tokenizer=... --corpus=... --out={path}`")
    with np.load(path, allow_pickle=False) as z:
        if "meta" not in z.files:
            raise ValueError(f"{path} is not a specjax retrieval datastore (no metadata header)")
        return json.loads(str(z["meta"]))


def load_datastore(path: str | Path, vocab_size: int | None = None) -> Datastore:
    """Loads and validates a datastore file.

    Args:
      path: the .npz written by `save_datastore` / the build command.
      vocab_size: the target's vocabulary size; a datastore built for
        another vocabulary is refused.

    Returns:
      The Datastore (numpy arrays; they move to the device with the loop).

    Raises:
      FileNotFoundError: no such file.
      ValueError: not a datastore, wrong format, corrupt (hash), empty, or
        built for another vocabulary.
    """
    meta = read_meta(path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown datastore format {meta.get('format')!r}, "
                         f"expected {FORMAT!r}; rebuild it")
    with np.load(path, allow_pickle=False) as z:
        tokens, sa = z["tokens"].astype(np.int32), z["suffix_array"].astype(np.int32)
    if digest(tokens, sa) != meta["sha256"]:
        raise ValueError(f"{path}: SHA-256 mismatch, the datastore file is corrupt; rebuild it")
    stored = int(meta["vocab_size"])
    if vocab_size is not None and stored != int(vocab_size):
        raise ValueError(
            f"{path} was built for a vocabulary of {stored} tokens (tokenizer "
            f"{meta.get('tokenizer')!r}) but the target has {vocab_size}; rebuild it with the "
            f"target's tokenizer (and --vocab-size={vocab_size} if the model pads its vocabulary)")
    _check_tokens(tokens, stored, str(path))
    if sa.shape != tokens.shape:
        raise ValueError(f"{path}: suffix array and tokens differ in length")
    return Datastore(tokens=tokens, suffix_array=sa, vocab_size=stored)


# ----------------------------------------------------------------------------
# Corpora and the build command.
# ----------------------------------------------------------------------------


def _paragraphs(text: str) -> list[str]:
    """Splits text at blank lines, keeping the separators (for batched tokenization)."""
    out, cur = [], []
    for line in text.splitlines(keepends=True):
        cur.append(line)
        if not line.strip():
            out.append("".join(cur))
            cur = []
    if cur:
        out.append("".join(cur))
    return out


def read_corpus(corpus: str, field: str | None = None) -> list[list[str]]:
    """Documents of a corpus, each a list of text pieces tokenized back to back.

    Args:
      corpus: "spec_bench" (every turn of the Spec-Bench questions is a
        document), a .jsonl / .jsonl.gz file (one document per line: the
        string or list of strings in `field`, default the first of "text",
        "turns", "content", "prompt" present), or any other text file (one
        document, tokenized paragraph by paragraph).
      field: the jsonl field to read.

    Returns:
      list of documents, each a list of strings.
    """
    if corpus == "spec_bench":
        from specjax.bench.prompts import DEFAULT_SPEC_BENCH

        path, field = DEFAULT_SPEC_BENCH, field or "turns"
    else:
        path = Path(corpus)
    if not path.is_file():
        raise FileNotFoundError(f"corpus not found: {path} (give a text/jsonl file or "
                                f"'spec_bench')")
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz")):
        opener = gzip.open if name.endswith(".gz") else open
        docs = []
        with opener(path, "rt", encoding="utf-8") as f:
            for i, line in enumerate(f):
                if not line.strip():
                    continue
                row = json.loads(line)
                key = field or next((k for k in ("text", "turns", "content", "prompt")
                                     if k in row), None)
                if key is None or key not in row:
                    raise ValueError(f"{path}:{i + 1} has no field {field or 'text/turns'}; "
                                     f"fields: {sorted(row)}")
                val = row[key]
                docs.extend([[v] for v in val] if isinstance(val, list) else [[str(val)]])
        return docs
    return [_paragraphs(path.read_text(encoding="utf-8", errors="replace"))]


def tokenize_corpus(docs: list[list[str]], tokenizer) -> list[list[int]]:
    """Token ids of every document (no special tokens added)."""
    flat = [piece for d in docs for piece in d]
    ids = tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
    out, i = [], 0
    for d in docs:
        out.append([t for piece in ids[i: i + len(d)] for t in piece])
        i += len(d)
    return out


def build(tokenizer: str, corpus: str, out: str | Path, field: str | None = None,
          vocab_size: int | None = None, max_tokens: int | None = None) -> dict:
    """The offline build: tokenize `corpus` with `tokenizer`, write the datastore.

    Args:
      tokenizer: asset name, GGUF path or HF directory (`models.load_tokenizer`).
      corpus, field: see `read_corpus`.
      out: the .npz to write.
      vocab_size: recorded vocabulary size (default: the tokenizer's length;
        pass the model's if it pads its vocabulary, e.g. Qwen2.5).
      max_tokens: keep only the first documents up to this many tokens.

    Returns:
      The metadata header written.
    """
    from specjax.models import loading

    tok = loading.load_tokenizer(tokenizer, progress=False)
    docs = tokenize_corpus(read_corpus(corpus, field), tok)
    if max_tokens is not None:
        kept, total = [], 0
        for d in docs:
            if total >= max_tokens:
                break
            kept.append(d[: max_tokens - total])
            total += len(kept[-1])
        docs = kept
    ds = build_datastore(docs, int(vocab_size or len(tok)))
    return save_datastore(ds, out, tokenizer=tokenizer, corpus=str(corpus))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m specjax.drafters.retrieval",
                                     description="Build / inspect retrieval datastores.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="tokenize a corpus and write a suffix-array datastore")
    b.add_argument("--tokenizer", required=True, help="asset name, GGUF path or HF dir")
    b.add_argument("--corpus", default="spec_bench",
                   help="'spec_bench', a .jsonl/.jsonl.gz file or a text file")
    b.add_argument("--out", required=True, help="output .npz")
    b.add_argument("--field", default=None, help="jsonl field holding the text")
    b.add_argument("--vocab-size", type=int, default=None,
                   help="the model's vocabulary size if it differs from the tokenizer's")
    b.add_argument("--max-tokens", type=int, default=None)
    i = sub.add_parser("info", help="print a datastore's metadata header")
    i.add_argument("path")
    args = parser.parse_args(argv)
    if args.cmd == "build":
        meta = build(args.tokenizer, args.corpus, args.out, args.field, args.vocab_size,
                     args.max_tokens)
    else:
        meta = read_meta(args.path)
    json.dump(meta, sys.stdout, indent=1)
    print()
    return 0


# ----------------------------------------------------------------------------
# Retrieval on device (jittable, fixed shapes).
# ----------------------------------------------------------------------------


def _compare(tokens: jax.Array, sa: jax.Array, mid: jax.Array, query: jax.Array,
             qlen: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(suffix < query, suffix > query) on the first qlen tokens; [...] bools.

    mid: int32[...] suffix-array positions; query int32[..., Q]; qlen int32[...].
    """
    L = sa.shape[0]
    k = jnp.arange(query.shape[-1])
    start = sa[jnp.clip(mid, 0, L - 1)]
    s = jnp.take(tokens, start[..., None] + k, mode="fill", fill_value=SEPARATOR)  # [..., Q]
    neq = (s != query) & (k < qlen[..., None])
    first = jnp.argmax(neq, axis=-1)[..., None]
    sv = jnp.take_along_axis(s, first, axis=-1)[..., 0]
    qv = jnp.take_along_axis(query, first, axis=-1)[..., 0]
    differs = jnp.any(neq, axis=-1)
    return differs & (sv < qv), differs & (sv > qv)


def suffix_range(tokens: jax.Array, sa: jax.Array, query: jax.Array,
                 qlen: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Suffix-array range [lo, hi) of the suffixes starting with query[..., :qlen].

    Two binary searches (first suffix >= query, first suffix > query on the
    first qlen tokens) of ceil(log2(L + 1)) steps each, in one `fori_loop`.

    Args:
      tokens: int32[L] datastore tokens; sa: int32[L] its suffix array.
      query: int32[..., Q] tokens >= 0; qlen: int32[...] 1 <= qlen <= Q.

    Returns:
      (lo, hi) int32[...]; hi - lo occurrences.
    """
    tokens, sa = jnp.asarray(tokens), jnp.asarray(sa)
    L = sa.shape[0]
    shape = qlen.shape
    zero, full = jnp.zeros(shape, jnp.int32), jnp.full(shape, L, jnp.int32)

    def body(_, c):
        lo1, hi1, lo2, hi2 = c
        m1, m2 = (lo1 + hi1) // 2, (lo2 + hi2) // 2
        less, _ = _compare(tokens, sa, m1, query, qlen)
        _, greater = _compare(tokens, sa, m2, query, qlen)
        a1, a2 = lo1 < hi1, lo2 < hi2
        lo1, hi1 = jnp.where(a1 & less, m1 + 1, lo1), jnp.where(a1 & ~less, m1, hi1)
        lo2, hi2 = jnp.where(a2 & ~greater, m2 + 1, lo2), jnp.where(a2 & greater, m2, hi2)
        return lo1, hi1, lo2, hi2

    lo, _, hi, _ = jax.lax.fori_loop(0, max(1, int(L).bit_length()), body,
                                     (zero, full, zero, full))
    return lo, hi


def context_queries(seq: jax.Array, length: jax.Array, max_ngram: int,
                    min_ngram: int) -> tuple[jax.Array, jax.Array]:
    """The context suffixes to look up, longest first.

    Args:
      seq: int32[B, H] token histories; length: int32[B].

    Returns:
      (query int32[B, G, max_ngram]: row g holds the last n = max_ngram - g
       tokens, left-aligned; qlen int32[B, G]: n, or 0 if the context is
       shorter than n), G = max_ngram - min_ngram + 1.
    """
    h = seq.shape[1]
    sizes = np.arange(max_ngram, min_ngram - 1, -1)  # [G]
    k = np.arange(max_ngram)
    idx = length[:, None, None] - sizes[None, :, None] + k[None, None, :]  # [B, G, Q]
    query = jnp.take_along_axis(seq[:, None, :], jnp.clip(idx, 0, h - 1), axis=2)
    query = jnp.where(k[None, None, :] < sizes[None, :, None], query, 0)
    qlen = jnp.where(length[:, None] >= sizes[None, :], sizes[None, :], 0).astype(jnp.int32)
    return query.astype(jnp.int32), qlen


def continuations(
    ds: Datastore, seq: jax.Array, length: jax.Array, *, max_ngram: int, min_ngram: int,
    num: int, depth: int,
) -> tuple[jax.Array, jax.Array]:
    """Continuations of the longest context suffix found in the datastore.

    For n = max_ngram, ..., min_ngram the last n tokens of each row are
    searched; the longest n with an occurrence wins. Of its `count`
    occurrences (suffix-array range [lo, lo + count)), `num` are taken at
    positions lo + floor(j * count / num) (all of them if count <= num), and
    the `depth` tokens after each, cut at the first separator.

    Args:
      ds: the datastore (device arrays).
      seq: int32[B, H] histories (root included); length: int32[B].
      max_ngram, min_ngram, num (R), depth (D): static.

    Returns:
      (tokens int32[B, R, D], lens int32[B, R]); tokens after lens are junk.
    """
    ds_tokens, sa = jnp.asarray(ds.tokens), jnp.asarray(ds.suffix_array)
    query, qlen = context_queries(seq, length, max_ngram, min_ngram)
    lo, hi = suffix_range(ds_tokens, sa, query, jnp.maximum(qlen, 1))
    count = jnp.where(qlen > 0, hi - lo, 0)  # [B, G]
    best = jnp.argmax(count > 0, axis=1)[:, None]  # longest n with a match
    lo = jnp.take_along_axis(lo, best, axis=1)[:, 0]
    cnt = jnp.take_along_axis(count, best, axis=1)[:, 0]
    n = jnp.take_along_axis(qlen, best, axis=1)[:, 0]
    j = jnp.arange(num, dtype=jnp.int32)[None, :]
    # floor(j * cnt / R) without int32 overflow
    step = j * (cnt[:, None] // num) + (j * (cnt[:, None] % num)) // num
    pos = lo[:, None] + jnp.where(cnt[:, None] >= num, step, j)  # [B, R]
    start = sa[jnp.clip(pos, 0, sa.shape[0] - 1)] + n[:, None]
    toks = jnp.take(ds_tokens, start[..., None] + jnp.arange(depth), mode="fill",
                    fill_value=SEPARATOR)  # [B, R, D]
    lens = jnp.sum(jnp.cumprod(toks >= 0, axis=-1), axis=-1, dtype=jnp.int32)
    lens = jnp.where(j < cnt[:, None], lens, 0)
    return jnp.maximum(toks, 0).astype(jnp.int32), lens


def retrieval_tree(root: jax.Array, conts: jax.Array, lens: jax.Array, num_nodes: int) -> trees.Tree:
    """The frequency-pruned trie of R continuations, as a padded tree.

    Every distinct prefix conts[r, :d + 1] (d < lens[r]) is a trie node;
    its frequency is the number of continuations that start with it. The
    `num_nodes - 1` nodes first in the order (higher frequency, then smaller
    depth, then smaller first continuation index r) are kept; a parent always
    precedes its children in that order, so the kept set is a tree. Nodes are
    laid out by (depth, decreasing frequency, first r), so siblings are ranked
    by frequency and parent[i] < i.

    Args:
      root: int32[B]; conts: int32[B, R, D]; lens: int32[B, R].
      num_nodes: static N (root included), N - 1 <= R * D.

    Returns:
      The Tree [B, N]; missing nodes are padding.
    """
    b, r, d = conts.shape
    m = num_nodes - 1
    if m > r * d:
        raise ValueError(f"a trie of {r} continuations of depth {d} has at most {r * d} nodes, "
                         f"but num_nodes={num_nodes} asks for {m}")
    dd = jnp.arange(d)
    ok = dd[None, None, :] < lens[:, :, None]  # [B, R, D]
    same = jnp.cumprod(conts[:, :, None, :] == conts[:, None, :, :], axis=-1).astype(bool)
    eq = same & ok[:, :, None, :] & ok[:, None, :, :]  # [B, R, R', D]: same prefix, both real
    freq = jnp.sum(eq, axis=2, dtype=jnp.int32)  # [B, R, D]
    earlier = jnp.tril(jnp.ones((r, r), bool), -1)[None, :, :, None]  # r' < r
    canon = ok & ~jnp.any(eq & earlier, axis=2)  # first continuation with this prefix
    canon_r = jnp.argmax(eq, axis=2).astype(jnp.int32)  # [B, R, D] its index
    ri = jnp.arange(r, dtype=jnp.int32)[None, :, None]
    di = dd[None, None, :].astype(jnp.int32)
    big = jnp.int32(2**30)
    key_sel = jnp.where(canon, ((r - freq) * d + di) * r + ri, big).reshape(b, r * d)
    key_out = jnp.where(canon, (di * (r + 1) + (r - freq)) * r + ri, big).reshape(b, r * d)
    _, sel = jax.lax.top_k(-key_sel, m)  # [B, M] flat indices (r * D + d)
    sel_key = jnp.take_along_axis(key_out, sel, axis=1)
    order = jnp.argsort(sel_key, axis=1)
    flat = jnp.take_along_axis(sel, order, axis=1)  # [B, M] in output order
    valid = jnp.take_along_axis(sel_key, order, axis=1) < big
    rows = jnp.arange(b)[:, None]
    node_of = jnp.full((b, r * d), -1, jnp.int32).at[rows, jnp.where(valid, flat, r * d)].set(
        jnp.arange(1, m + 1, dtype=jnp.int32)[None, :], mode="drop")  # [B, R * D]
    fr, fd = flat // d, flat % d
    par_r = jnp.take_along_axis(canon_r.reshape(b, r * d), fr * d + jnp.maximum(fd - 1, 0), axis=1)
    par = jnp.where(fd > 0, jnp.take_along_axis(node_of, par_r * d + fd - 1, axis=1), 0)
    tok = jnp.take_along_axis(conts.reshape(b, r * d), flat, axis=1)
    return trees.Tree(
        tokens=jnp.concatenate([root[:, None].astype(jnp.int32), jnp.where(valid, tok, 0)], 1),
        parent=jnp.concatenate([jnp.full((b, 1), -1, jnp.int32),
                                jnp.where(valid, jnp.maximum(par, 0), 0)], 1),
        valid=jnp.concatenate([jnp.ones((b, 1), bool), valid], 1),
    )


# ----------------------------------------------------------------------------
# The drafter.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Retrieval:
    """REST-style retrieval drafter; `params` is the `Datastore`.

    Attributes:
      vocab_size: the target's vocabulary size V (the datastore's must match).
      num_nodes: N, tree nodes (root included): the N - 1 most frequent
        prefixes of the retrieved continuations.
      depth: D, tokens per continuation (the tree's maximum depth).
      num_continuations: R, occurrences sampled from the matching range.
      max_ngram, min_ngram: context suffix lengths tried, longest first.
      max_nodes: optional node budget; num_nodes > max_nodes is an error.
    """

    vocab_size: int
    num_nodes: int = 32
    depth: int = 8
    num_continuations: int = 32
    max_ngram: int = 8
    min_ngram: int = 2
    max_nodes: int | None = None

    def __post_init__(self):
        if self.vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {self.vocab_size}")
        if self.depth < 1 or self.num_continuations < 1:
            raise ValueError(f"depth and num_continuations must be >= 1, got depth={self.depth}, "
                             f"num_continuations={self.num_continuations}")
        if not 1 <= self.min_ngram <= self.max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got min_ngram={self.min_ngram}, "
                             f"max_ngram={self.max_ngram}")
        if self.num_nodes < 2:
            raise ValueError(f"num_nodes must be >= 2 (root + one draft), got {self.num_nodes}")
        most = 1 + self.depth * self.num_continuations
        if self.num_nodes > most:
            raise ValueError(
                f"num_nodes={self.num_nodes} is more than a trie of num_continuations="
                f"{self.num_continuations} continuations of depth={self.depth} can fill "
                f"({most} nodes, root included)")
        if self.max_nodes is not None and self.num_nodes > self.max_nodes:
            raise ValueError(f"retrieval tree of num_nodes={self.num_nodes} (root included) "
                             f"exceeds the node budget max_nodes={self.max_nodes}")

    @property
    def max_children(self) -> int:
        """Static bound on children per node (for the verifiers)."""
        return min(self.num_nodes - 1, self.num_continuations)

    def check_datastore(self, ds: Datastore) -> None:
        """Raises (at trace time) TypeError if `ds` is not a Datastore, ValueError if it
        has another vocabulary."""
        if not isinstance(ds, Datastore):
            raise TypeError(f"the retrieval drafter's params must be a Datastore "
                             f"(load_datastore(path)), got {type(ds).__name__}")
        if ds.vocab_size != self.vocab_size:
            raise ValueError(f"the datastore was built for a vocabulary of {ds.vocab_size} "
                             f"tokens but the drafter (target) has {self.vocab_size}")

    def retrieve(self, ds: Datastore, history: TokenHistory, root: jax.Array):
        """Continuations (int32[B, R, D], lens int32[B, R]) for context + root."""
        self.check_datastore(ds)
        seq = push_root(history, root)
        length = jnp.minimum(history.length + 1, seq.shape[1])
        return continuations(ds, seq, length, max_ngram=self.max_ngram,
                             min_ngram=self.min_ngram, num=self.num_continuations,
                             depth=self.depth)

    def init(self, params, tokens, lengths, max_len):
        del params
        return init_history(tokens, lengths, max(int(max_len), 2))

    def propose(self, params: Datastore, state: TokenHistory, root, key,
                sampling: Sampling) -> Proposal:
        del key, sampling
        conts, lens = self.retrieve(params, state, root)
        tree = retrieval_tree(root, conts, lens, self.num_nodes)
        return Proposal(tree=tree, draft_probs=first_child_point_mass(tree, self.vocab_size),
                        state=state)

    def update(self, params, state: TokenHistory, tree, result, target_logits):
        del params
        check_vocab(target_logits, self.vocab_size, "Retrieval")
        return append_path(state, tree, result)


if __name__ == "__main__":
    sys.exit(main())
