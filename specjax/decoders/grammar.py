"""Grammar-constrained decoding from JSON Schemas: a `LogitsRule` masking every token
that would leave the schema's language.

The schema compiles to a character DFA (`decoders.json_schema`, which documents the
subset and the exact language: compact JSON, declared properties in schema order, ...),
and the DFA to token tables over a vocabulary: next[s, t] is the state after token t's
text from state s (-1: not allowed), as in Willard & Louf, "Efficient Guided
Generation for Large Language Models" (arXiv:2307.09702, Sec. 3: an index from
automaton states to allowed tokens). `GrammarRule` applies them through
`rules.RuleLM`, so the autoregressive loop and every speculative method decode under
the grammar unchanged (each tree node masked with the state along its own path), and
speculative sampling stays lossless for the constrained law.

    rule, params = compile_schema(schema, tokenizer)      # tokenizer: HF or Vocabulary
    vocab = as_vocabulary(tokenizer)                       # token texts, stop tokens
    lm = rules.RuleLM(DecoderLM(cfg), rule)
    out = decode.speculative_generate(rules.rule_params(model_params, params), lm,
                                      prompts, method=..., eos_ids=vocab.eos, ...)
    text = vocab.decode(out.tokens[0])
    validate(text, schema)            # in the grammar's language (always, under the rule)
    validate(text, schema, compact=False)   # any JSON text whose value fits the schema

Tokens. Each token's text is its decoded string: byte-level BPE tokens are mapped back
to bytes (the GPT-2 byte alphabet) and decoded as UTF-8, SentencePiece tokens have
U+2581 read as a space and <0xNN> read as that byte. A token whose bytes are not valid
UTF-8 on their own (a piece of a multi-byte character), a token with empty text and a
special token are never allowed, except the stop tokens (`Vocabulary.eos`), which are
allowed exactly in accepting states; after one, only stop tokens are. Decoding under
the rule therefore writes every character through whole-character tokens.

Tables. For each state the DFA is walked over a trie of the token texts, vectorised
over all states at once and one trie level at a time (subtrees dead from every state
are pruned), so the cost is (trie nodes) x (states) gathers in numpy: about a second
for SmolLM2's 49152 tokens. States from which no token sequence reaches an accepting
state are removed (their tokens masked), so a row decoding under the rule always has an
allowed token; a schema no token sequence satisfies raises ValueError. The tables are
cached in memory, and on disk under `<specjax cache>/grammar/` when building took over
`cache_min_seconds`. The state count is padded to a multiple of `STATE_BUCKET` so that
schemas of similar size share compiled loops.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import time
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from specjax.decoders import json_schema as js

VERSION = 1  # of the tables' construction (part of the cache key)
MAX_STATES = 1024  # of the character DFA; next[] costs 4 * states * vocab bytes
STATE_BUCKET = 64
MEMO_SIZE = 8  # tables kept in memory


# -- vocabulary ------------------------------------------------------------------------


@functools.cache
def _byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's bytes -> printable characters map (byte-level BPE)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(
        range(0xAE, 0x100))
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(keep, chars)}


def _utf8(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """Token texts and stop tokens.

    Attributes:
      texts: per token id its text, None if it is never allowed (special tokens,
        partial UTF-8).
      eos: the stop token ids (allowed exactly in accepting states).
    """

    texts: tuple
    eos: tuple

    @classmethod
    def from_tokenizer(cls, tok, eos_ids: Sequence[int] | None = None) -> Vocabulary:
        """The texts of a HF fast tokenizer's tokens (see the module docstring); eos:
        `models.tokenizer.stop_token_ids(tok)` unless given."""
        from specjax.models.tokenizer import stop_token_ids

        decoder = json.dumps(json.loads(tok.backend_tokenizer.to_str()).get("decoder"))
        byte_level = "ByteLevel" in decoder
        added = {i: t for i, t in tok.added_tokens_decoder.items()}
        special = set(tok.all_special_ids) | {i for i, t in added.items() if t.special}
        inverse = _byte_decoder()
        texts = []
        for i, piece in enumerate(tok.convert_ids_to_tokens(list(range(len(tok))))):
            if i in special or piece is None:
                texts.append(None)
            elif i in added:
                texts.append(added[i].content)
            elif byte_level:
                texts.append(_utf8(bytes(inverse[c] for c in piece))
                             if all(c in inverse for c in piece) else None)
            elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", piece):
                texts.append(_utf8(bytes([int(piece[3:5], 16)])))
            else:
                texts.append(piece.replace("\u2581", " "))
        eos = tuple(stop_token_ids(tok)) if eos_ids is None else tuple(eos_ids)
        return cls(texts=tuple(texts), eos=tuple(int(e) for e in eos))

    @functools.cached_property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps([self.texts, self.eos]).encode()).hexdigest()

    def decode(self, ids: Sequence[int]) -> str:
        """The text of generated ids, up to the first stop token."""
        out = []
        for i in ids:
            if int(i) in self.eos:
                break
            out.append(self.texts[int(i)] or "")
        return "".join(out)


_VOCABS: dict[int, tuple] = {}  # id(tokenizer) -> (tokenizer, its Vocabulary)


def as_vocabulary(tokenizer) -> Vocabulary:
    """`tokenizer` itself if a Vocabulary, else its Vocabulary (built once per object)."""
    if isinstance(tokenizer, Vocabulary):
        return tokenizer
    held = _VOCABS.get(id(tokenizer))
    if held is None or held[0] is not tokenizer:
        held = _VOCABS[id(tokenizer)] = (tokenizer, Vocabulary.from_tokenizer(tokenizer))
    return held[1]


# -- token tables ----------------------------------------------------------------------


class _Trie:
    """Token texts as a trie numbered level by level (children of a node contiguous).

    node_char int32[N] (code point; node 0 = root), first_child, num_children, depth
    int[N]; tokens int[K] with token_node int[K] (the node where each token ends)."""

    def __init__(self, texts: Sequence[str | None]):
        children: list[dict] = [{}]
        ends: list[tuple[int, int]] = []
        for tok, text in enumerate(texts):
            if not text:
                continue
            node = 0
            for c in text:
                nxt = children[node].get(c)
                if nxt is None:
                    nxt = children[node][c] = len(children)
                    children.append({})
                node = nxt
            ends.append((tok, node))
        # renumber breadth-first so that every node's children are contiguous
        order, char, depth, new = [0], [0], [0], {0: 0}
        first, count = [], []
        for u in order:
            first.append(len(order))
            count.append(len(children[u]))
            for c, v in children[u].items():
                new[v] = len(order)
                order.append(v)
                char.append(ord(c))
                depth.append(depth[new[u]] + 1)
        self.node_char = np.asarray(char, np.int32)
        self.first_child = np.asarray(first, np.int64)
        self.num_children = np.asarray(count, np.int64)
        self.depth = np.asarray(depth, np.int64)
        self.tokens = np.asarray([t for t, _ in ends], np.int64)
        self.token_node = np.asarray([new[n] for _, n in ends], np.int64)
        self.width = int(np.bincount(self.depth).max())

    def atoms(self, dfa: js.CharDFA) -> np.ndarray:
        """int32[N]: the DFA atom of each node's character."""
        codes, inverse = np.unique(self.node_char, return_inverse=True)
        return np.asarray([dfa.atom(chr(c)) for c in codes], np.int32)[inverse.ravel()]

    def children(self, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(child node ids, index of each child's parent in `nodes`)."""
        counts = self.num_children[nodes]
        parent = np.repeat(np.arange(len(nodes)), counts)
        offset = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        return self.first_child[nodes][parent] + offset, parent


@functools.lru_cache(maxsize=4)
def _trie(texts: tuple) -> _Trie:
    return _Trie(texts)


def char_tables(dfa: js.CharDFA, texts: Sequence[str | None], vocab_size: int,
                budget: int = 1 << 23) -> np.ndarray:
    """next int32[S, vocab_size]: the DFA state after each token's text from each state
    (-1: dead; tokens with no text: -1). The DFA walks the trie from all states at once,
    level by level, pruning nodes dead from every state; `budget` bounds the elements of
    one level's state matrix (states are chunked)."""
    S, A = dfa.trans.shape
    trie = _trie(tuple(texts[:vocab_size]))
    atom = trie.atoms(dfa)
    full = np.where(dfa.trans < 0, S, dfa.trans).astype(np.int32)
    full = np.vstack([full, np.full((1, A), S, np.int32)]).ravel()  # row S: dead
    out = np.full((S, vocab_size), -1, np.int32)
    token_depth = trie.depth[trie.token_node]
    by_depth = {int(d): np.flatnonzero(token_depth == d) for d in np.unique(token_depth)}
    pos = np.full(len(trie.depth), -1, np.int64)
    chunk = max(1, budget // trie.width)
    for lo in range(0, S, chunk):
        rows = np.arange(lo, min(S, lo + chunk))
        nodes, cur = np.zeros(1, np.int64), rows[:, None].astype(np.int32)  # the root
        depth = 0
        while len(nodes):
            depth += 1
            kids, parent = trie.children(nodes)
            cur = np.take(full, cur[:, parent] * A + atom[kids][None, :])  # [C, kids]
            pick = by_depth.get(depth)
            if pick is not None:
                pos[kids] = np.arange(len(kids))
                col = pos[trie.token_node[pick]]
                live = col >= 0
                out[rows[:, None], trie.tokens[pick][live][None, :]] = cur[:, col[live]]
                pos[kids] = -1
            keep = (cur != S).any(axis=0)
            nodes, cur = kids[keep], cur[:, keep]
    out[out == S] = -1
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class GrammarTables:
    """next int32[S, V] (-1: not allowed; state 0 starts), accept bool[S] (stop tokens
    allowed); rows past `num_states` are padding. char_state int32[num_states]: the
    character DFA state of each (the DFA's size: after a stop token); seconds: the build
    time."""

    next: np.ndarray
    accept: np.ndarray
    num_states: int
    char_state: np.ndarray
    seconds: float


def _fixpoint(grow, seed: np.ndarray) -> np.ndarray:
    """The least set containing seed (bool[n]) and closed under grow."""
    while True:
        new = seed | grow(seed)
        if (new == seed).all():
            return new
        seed = new


def build_tables(schema: dict, vocab: Vocabulary, vocab_size: int | None = None,
                 max_states: int = MAX_STATES) -> GrammarTables:
    """The token tables of `schema` over `vocab` (padded with disallowed ids to
    vocab_size). Raises ValueError for unsupported schemas, a schema no token sequence
    satisfies, and an automaton over max_states."""
    t0 = time.perf_counter()
    V = len(vocab.texts) if vocab_size is None else vocab_size
    if V < len(vocab.texts) and any(t is not None for t in vocab.texts[V:]):
        raise ValueError(f"vocab_size={V} is smaller than the tokenizer's {len(vocab.texts)}")
    if not vocab.eos:
        raise ValueError("the vocabulary has no stop token: a constrained row could not end")
    dfa = js.compile_dfa(schema, max_states)
    S = dfa.num_states
    nxt = np.full((S + 1, V), -1, np.int32)  # row S: after a stop token
    nxt[:S] = char_tables(dfa, vocab.texts, V)
    eos = np.asarray(vocab.eos)
    nxt[np.flatnonzero(dfa.accept)[:, None], eos[None, :]] = S
    nxt[S, eos] = S
    accept = np.append(dfa.accept, True)
    # keep the states reachable from the start that can reach acceptance through tokens
    adj = np.zeros((S + 1) * (S + 1), bool)  # adj[s, t]: some token leads from s to t
    flat = nxt + (np.arange(S + 1) * (S + 1))[:, None]
    adj[flat[nxt >= 0]] = True
    adj = adj.reshape(S + 1, S + 1)
    good = _fixpoint(lambda g: adj[:, g].any(axis=1), accept)
    if not good[0]:
        raise ValueError("no token sequence of this vocabulary satisfies the schema (the start "
                         "state cannot reach an accepting state through tokens)")
    adj &= good[None, :]
    reach = _fixpoint(lambda r: adj[r].any(axis=0), np.arange(S + 1) == 0)
    keep = np.flatnonzero(reach)
    remap = np.full(S + 2, -1, np.int32)  # index -1 (dead) -> -1
    remap[keep] = np.arange(len(keep))
    n = len(keep)
    padded = -(-n // STATE_BUCKET) * STATE_BUCKET
    table = np.full((padded, V), -1, np.int32)
    table[:n] = remap[nxt[keep]]
    acc = np.zeros(padded, bool)
    acc[:n] = accept[keep]
    return GrammarTables(next=table, accept=acc, num_states=n,
                         char_state=keep.astype(np.int32), seconds=time.perf_counter() - t0)


# -- the rule --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GrammarRule:
    """`LogitsRule` of a grammar: params {"next": int32[S, V], "accept": bool[S]}; state
    int32[B], the DFA state (-1: dead, which a row decoding under the rule never reaches;
    a dead tree node (a draft token the grammar forbids) is left unmasked: its logits
    are never used by a lossless verifier)."""

    def init(self, params, batch: int) -> jax.Array:
        return jnp.zeros((batch,), jnp.int32)

    def apply(self, params, state, logits):
        allowed = (params["next"][jnp.maximum(state, 0)] >= 0) | (state < 0)[:, None]
        return jnp.where(allowed, logits, -jnp.inf)

    def step(self, params, state, token, logits):
        nxt = params["next"][jnp.maximum(state, 0), token]
        return jnp.where(state >= 0, nxt, -1)


_MEMO: dict[str, GrammarTables] = {}


def _cache_key(schema, vocab: Vocabulary, vocab_size, max_states) -> str:
    # property order is part of the language: no sort_keys
    blob = json.dumps([VERSION, schema, vocab.fingerprint, vocab_size, max_states])
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _cache_path(key: str) -> Path:
    from specjax.models.assets import cache_dir

    return cache_dir() / "grammar" / key


def tables(schema: dict, tokenizer, *, vocab_size: int | None = None,
           max_states: int = MAX_STATES, cache: bool = True,
           cache_min_seconds: float = 1.0) -> GrammarTables:
    """`build_tables`, memoised in memory and (when building took over
    cache_min_seconds) on disk under `<specjax cache>/grammar/<key>/`."""
    vocab = as_vocabulary(tokenizer)
    key = _cache_key(schema, vocab, vocab_size, max_states)
    if cache and key in _MEMO:
        return _MEMO[key]
    path = _cache_path(key) / "tables.npz"
    if cache and path.is_file():
        with np.load(path) as z:
            out = GrammarTables(next=z["next"], accept=z["accept"],
                                num_states=int(z["num_states"]), char_state=z["char_state"],
                                seconds=0.0)
    else:
        out = build_tables(schema, vocab, vocab_size, max_states)
        if cache and out.seconds > cache_min_seconds:
            from specjax.models.assets import atomic_directory

            try:
                with atomic_directory(path.parent) as tmp:
                    np.savez(tmp / "tables.npz", next=out.next, accept=out.accept,
                             num_states=out.num_states, char_state=out.char_state)
            except FileExistsError:  # written meanwhile by another process
                pass
    if cache:
        _MEMO[key] = out
        while len(_MEMO) > MEMO_SIZE:  # oldest first
            _MEMO.pop(next(iter(_MEMO)))
    return out


def compile_schema(schema: dict, tokenizer, *, vocab_size: int | None = None,
                   max_states: int = MAX_STATES, cache: bool = True):
    """(GrammarRule(), params) decoding under `schema` with `tokenizer` (a HF tokenizer or
    a `Vocabulary`); vocab_size: the model's (>= the tokenizer's) if it differs."""
    t = tables(schema, tokenizer, vocab_size=vocab_size, max_states=max_states, cache=cache)
    return GrammarRule(), {"next": jnp.asarray(t.next), "accept": jnp.asarray(t.accept)}


# -- validation ------------------------------------------------------------------------

_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")
_NUM = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_ESCAPES = '"\\/bfnrt'


def validate(text: str, schema: dict, *, compact: bool = True) -> bool:
    """Whether `text` satisfies `schema`.

    compact=True: `text` is in the grammar's language (the exact form a decoder under
    the rule writes; see `decoders.json_schema`), checked by a recursive-descent matcher
    independent of the automaton. compact=False: `text` is any JSON text whose value
    satisfies the schema (JSON Schema semantics over the subset; `additionalProperties`
    absent allows other properties), e.g. to score unconstrained outputs.
    """
    if compact:
        return len(text) in _ends(schema, text, 0, "#")
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return conforms(value, schema)


def _ends(schema, text: str, i: int, where: str) -> set[int]:
    """The ends j of every match of text[i:j] in the language of `schema`."""
    js.check_keywords(schema, where)
    if "anyOf" in schema:
        return set().union(*[_ends(s, text, i, f"{where}/anyOf/{k}")
                             for k, s in enumerate(schema["anyOf"])])
    if "enum" in schema or "const" in schema:
        return {i + len(t) for t in map(js.dump, js.literals(schema)) if text.startswith(t, i)}
    out: set[int] = set()
    for t in js.schema_types(schema, where):
        out |= _typed_ends(schema, t, text, i, where)
    return out


def _typed_ends(schema, t: str, text: str, i: int, where: str) -> set[int]:
    if t in ("null", "boolean"):
        words = ("null",) if t == "null" else ("true", "false")
        return {i + len(w) for w in words if text.startswith(w, i)}
    if t in ("integer", "number"):
        m = (_INT if t == "integer" else _NUM).match(text, i)
        if m is None:
            return set()
        if t == "integer":
            lo, hi = js.int_bounds(schema)
            v = int(m.group())
            if m.group() == "-0" or (lo is not None and v < lo) or (hi is not None and v > hi):
                return set()
        return {m.end()}
    if t == "string":
        return _string_ends(schema, text, i)
    if t == "array":
        if not text.startswith("[", i):
            return set()
        lo, hi, item = schema.get("minItems", 0), schema.get("maxItems"), schema["items"]
        done = {i + 2} if lo == 0 and text.startswith("]", i + 1) else set()
        if hi == 0:
            return done
        cur, count = _ends(item, text, i + 1, where), 1
        while cur:
            if count >= lo:
                done |= {p + 1 for p in cur if text.startswith("]", p)}
            if hi is not None and count >= hi:
                break
            cur = set().union(*[_ends(item, text, p + 1, where)
                                for p in cur if text.startswith(",", p)])
            count += 1
        return done
    # object
    if not text.startswith("{", i):
        return set()
    required = set(schema.get("required", ()))
    states = {(i + 1, True)}
    for name, sub in schema.get("properties", {}).items():
        nxt = set() if name in required else set(states)
        for p, first in states:
            key = ("" if first else ",") + js.dump(name) + ":"
            if text.startswith(key, p):
                nxt |= {(e, False) for e in _ends(sub, text, p + len(key), where)}
        states = nxt
    return {p + 1 for p, _ in states if text.startswith("}", p)}


def _string_ends(schema, text: str, i: int) -> set[int]:
    if not text.startswith('"', i):
        return set()
    j, count, escaped = i + 1, 0, False
    while j < len(text) and text[j] != '"':
        if text[j] == "\\":
            if text[j + 1:j + 2] not in tuple(_ESCAPES):
                return set()
            j, escaped = j + 2, True
        elif ord(text[j]) < 0x20:
            return set()
        else:
            j += 1
        count += 1
    if j >= len(text):
        return set()
    pattern = schema.get("pattern", js.FORMATS.get(schema.get("format")))
    if pattern is not None:
        ok = not escaped and re.search(pattern, text[i + 1:j], re.ASCII) is not None
    else:
        ok = schema.get("minLength", 0) <= count <= schema.get("maxLength", count)
    return {j + 1} if ok else set()


def conforms(value, schema: dict, where: str = "#") -> bool:
    """Whether a JSON value satisfies `schema` (JSON Schema semantics over the subset)."""
    js.check_keywords(schema, where)
    if "anyOf" in schema:
        return any(conforms(value, s, where) for s in schema["anyOf"])
    if "enum" in schema or "const" in schema:
        return any(_same(value, v) for v in js.literals(schema))
    return any(_conforms_typed(value, schema, t, where)
               for t in js.schema_types(schema, where))


def _same(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b or (
        isinstance(a, (int, float)) and isinstance(b, (int, float)) and a == b)


def _conforms_typed(value, schema, t: str, where: str) -> bool:
    if t == "integer":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not js.is_type(value, "integer"):
            return False
        lo, hi = js.int_bounds(schema)
        return (lo is None or value >= lo) and (hi is None or value <= hi)
    if not js.is_type(value, t):
        return False
    if t == "string":
        pattern = schema.get("pattern", js.FORMATS.get(schema.get("format")))
        return (schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value))
                and (pattern is None or re.search(pattern, value, re.ASCII) is not None))
    if t == "array":
        return (schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value))
                and all(conforms(v, schema["items"], where) for v in value))
    if t == "object":
        props = schema.get("properties", {})
        if schema.get("additionalProperties", True) is False and value.keys() - props.keys():
            return False
        return set(schema.get("required", ())) <= value.keys() and all(
            conforms(value[k], props[k], where) for k in value.keys() & props.keys())
    return True
