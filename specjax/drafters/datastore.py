"""The retrieval datastore: a tokenized corpus and its suffix array, built offline.

The `params` of the REST drafter (He et al., "REST: Retrieval-Based
Speculative Decoding", arXiv 2311.08252; `specjax.drafters.retrieval`) and of
RASD (`specjax.drafters.rasd`). This module owns everything on the host side
(numpy only): building a datastore from tokenized documents, reading and
tokenizing corpus files, and the .npz file with its format, vocabulary and
hash checks. The command

    python -m experiments.build_datastore --tokenizer=smollm2-135m \
        --corpus=spec_bench --out=/tmp/spec_bench.npz

builds one (`experiments/build_datastore.py`; `--info=PATH` prints a file's
header).

A datastore concatenates the documents with a separator -1 after each one
(never matched, and a continuation stops there) and sorts all suffixes by
prefix doubling (O(L log^2 L) numpy sorts). The .npz holds `tokens` int32[L],
`suffix_array` int32[L] and a JSON header (format, tokenizer, vocab_size,
counts, SHA-256 of both arrays) that `load_datastore` checks.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import flax.struct
import jax
import numpy as np

FORMAT = "specjax-retrieval-datastore-v1"
SEPARATOR = -1  # after every document; never equal to a context token


# ----------------------------------------------------------------------------
# The datastore: build, save, load.
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
            f"experiments.build_datastore --tokenizer=... --corpus=... --out={path}`")
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
            f"target's tokenizer (and --vocab_size={vocab_size} if the model pads its vocabulary)")
    _check_tokens(tokens, stored, str(path))
    if sa.shape != tokens.shape:
        raise ValueError(f"{path}: suffix array and tokens differ in length")
    return Datastore(tokens=tokens, suffix_array=sa, vocab_size=stored)


# ----------------------------------------------------------------------------
# Corpus files and the offline build.
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


def read_corpus(corpus: str | Path, field: str | None = None) -> list[list[str]]:
    """Documents of a corpus file, each a list of text pieces tokenized back to back.

    Args:
      corpus: a .jsonl / .jsonl.gz file (one document per line: the string,
        or each string of the list, in `field`, default the first of "text",
        "turns", "content", "prompt" present), or any other text file (one
        document, tokenized paragraph by paragraph).
      field: the jsonl field to read.

    Returns:
      list of documents, each a list of strings.
    """
    path = Path(corpus)
    if not path.is_file():
        raise FileNotFoundError(f"corpus not found: {path} (give a text or .jsonl / "
                                f".jsonl.gz file)")
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


def build(tokenizer: str, docs: list[list[str]], out: str | Path, *, corpus: str = "",
          vocab_size: int | None = None, max_tokens: int | None = None) -> dict:
    """The offline build: tokenize text documents with `tokenizer`, write the datastore.

    Args:
      tokenizer: asset name, GGUF path or HF directory (`models.load_tokenizer`).
      docs: documents, each a list of text pieces (as `read_corpus` returns).
      out: the .npz to write.
      corpus: where the documents came from, recorded in the header.
      vocab_size: recorded vocabulary size (default: the tokenizer's length;
        pass the model's if it pads its vocabulary, e.g. Qwen2.5).
      max_tokens: keep only the first documents up to this many tokens.

    Returns:
      The metadata header written.
    """
    from specjax.models import loading

    tok = loading.load_tokenizer(tokenizer, progress=False)
    ids = tokenize_corpus(docs, tok)
    if max_tokens is not None:
        kept, total = [], 0
        for d in ids:
            if total >= max_tokens:
                break
            kept.append(d[: max_tokens - total])
            total += len(kept[-1])
        ids = kept
    ds = build_datastore(ids, int(vocab_size or len(tok)))
    return save_datastore(ds, out, tokenizer=tokenizer, corpus=str(corpus))
