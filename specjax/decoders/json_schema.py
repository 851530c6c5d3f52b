"""A JSON Schema subset compiled to a character-level DFA: the JSON texts a
grammar-constrained decoder may write (`decoders.grammar` turns it into token tables).

Pipeline: schema -> Thompson NFA (Thompson, "Regular expression search algorithm",
CACM 1968), built directly from the schema with fragments for literals, character
classes, sequence, alternation and repetition -> subset construction -> Moore
minimisation, trimmed to the states that are reachable and can still accept (Hopcroft,
Motwani & Ullman, "Introduction to Automata Theory", ch. 2 and 4.4). Characters are
grouped into atoms: every character some edge names explicitly, plus OTHER, standing
for all the characters no edge names (they all behave alike).

The language (`validate(text, schema)` in `decoders.grammar` checks the same one):
- compact JSON: no whitespace anywhere;
- object: the declared `properties` in schema order, every `required` one present,
  optional ones omitted or not; no other property is generated (`additionalProperties`
  may be absent, true or false);
- string: every character except '"', '\\' and U+0000-U+001F literally, and the
  escapes \\" \\\\ \\/ \\b \\f \\n \\r \\t (no \\uXXXX escapes); `minLength`/`maxLength`
  count characters (an escape counts one); `pattern` (see `_Pattern`: Python/ECMA
  syntax subset, ASCII \\d \\w \\s, search semantics) matches the raw characters, which
  then have no escapes; `format: date` is the pattern YYYY-MM-DD;
- integer: -?(0|[1-9][0-9]*) but not -0; `minimum`, `maximum`, `exclusiveMinimum`,
  `exclusiveMaximum` (numbers);
- number: the JSON number grammar (bounds are refused);
- boolean, null; `enum` and `const`: the compact serialisations
  json.dumps(value, separators=(",", ":"), ensure_ascii=False);
- array: `items` (one schema), `minItems`, `maxItems`; unbounded counts stay regular;
- `anyOf` and type lists (["string", "null"]): the union;
- nesting at most `MAX_DEPTH` objects/arrays deep ($ref, recursion, is refused).
Any other keyword raises ValueError naming it (annotations such as `title` are ignored).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Callable, NamedTuple

import numpy as np

MAX_DEPTH = 6
ANNOTATIONS = frozenset({"title", "description", "$schema", "$id", "$comment", "default",
                         "examples", "readOnly", "writeOnly", "deprecated"})
KEYWORDS = {
    "object": {"properties", "required", "additionalProperties"},
    "array": {"items", "minItems", "maxItems"},
    "string": {"minLength", "maxLength", "pattern", "format"},
    "integer": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
    "number": set(), "boolean": set(), "null": set(),
}


class CharSet(NamedTuple):
    """A set of characters: `chars`, or all characters but `chars` if `negated`."""

    chars: frozenset
    negated: bool = False

    def __contains__(self, c) -> bool:
        return (c in self.chars) != self.negated

    def __or__(self, o: CharSet) -> CharSet:
        if not self.negated and not o.negated:
            return CharSet(self.chars | o.chars)
        if self.negated and o.negated:
            return CharSet(self.chars & o.chars, True)
        pos, neg = (self, o) if o.negated else (o, self)
        return CharSet(neg.chars - pos.chars, True)

    def __and__(self, o: CharSet) -> CharSet:
        return ~(~self | ~o)

    def __invert__(self) -> CharSet:
        return CharSet(self.chars, not self.negated)


def chars(s) -> CharSet:
    return CharSet(frozenset(s))


CONTROL = chars(chr(i) for i in range(0x20))
PLAIN = ~(CONTROL | chars('"\\'))  # characters a JSON string holds unescaped
DIGIT = chars("0123456789")
ESCAPED = chars('"\\/bfnrt')


# -- Thompson NFA fragments: a fragment adds its states after start state s and returns
# its end state (fresh, no out-edges); calling it again builds a fresh copy. ---------


class NFA:
    def __init__(self):
        self.eps: list[list[int]] = []
        self.edges: list[list[tuple[CharSet, int]]] = []

    def new(self) -> int:
        self.eps.append([])
        self.edges.append([])
        return len(self.eps) - 1


Fragment = Callable[[NFA, int], int]


def empty(n: NFA, s: int) -> int:
    return s


def cls(cs: CharSet) -> Fragment:
    def f(n, s):
        t = n.new()
        n.edges[s].append((cs, t))
        return t
    return f


def lit(text: str) -> Fragment:
    return seq(*[cls(chars(c)) for c in text])


def seq(*fs: Fragment) -> Fragment:
    def f(n, s):
        for g in fs:
            s = g(n, s)
        return s
    return f


def alt(*fs: Fragment) -> Fragment:
    if len(fs) == 1:
        return fs[0]

    def f(n, s):
        t = n.new()
        for g in fs:
            s2 = n.new()
            n.eps[s].append(s2)
            n.eps[g(n, s2)].append(t)
        return t
    return f


def repeat(g: Fragment, lo: int, hi: int | None) -> Fragment:
    """g repeated lo..hi times (hi None: unbounded)."""
    def f(n, s):
        for _ in range(lo):
            s = g(n, s)
        t = n.new()
        if hi is None:
            loop = n.new()
            n.eps[s].append(loop)
            n.eps[g(n, loop)].append(loop)
            n.eps[loop].append(t)
            return t
        for _ in range(hi - lo):
            n.eps[s].append(t)
            s = g(n, s)
        n.eps[s].append(t)
        return t
    return f


def separated(item: Fragment, sep: Fragment, lo: int, hi: int | None) -> Fragment:
    """lo..hi items separated by sep."""
    if hi == 0:
        return empty
    more = repeat(seq(sep, item), max(lo - 1, 0), None if hi is None else hi - 1)
    some = seq(item, more)
    return some if lo > 0 else alt(empty, some)


# -- integers in a range -----------------------------------------------------------


def _span(lo: str, hi: str) -> Fragment:
    """Digit strings of equal length between lo and hi (inclusive)."""
    k = len(lo) - 1
    if k == 0:
        return cls(chars(str(d) for d in range(int(lo), int(hi) + 1)))
    if lo[0] == hi[0]:
        return seq(lit(lo[0]), _span(lo[1:], hi[1:]))
    parts = [seq(lit(lo[0]), _span(lo[1:], "9" * k))]
    if int(hi[0]) - int(lo[0]) > 1:
        mid = chars(str(d) for d in range(int(lo[0]) + 1, int(hi[0])))
        parts.append(seq(cls(mid), repeat(cls(DIGIT), k, k)))
    parts.append(seq(lit(hi[0]), _span("0" * k, hi[1:])))
    return alt(*parts)


def _naturals(lo: int, hi: int | None) -> Fragment:
    """Decimal naturals in [lo, hi] (hi None: unbounded), no leading zeros."""
    top = len(str(lo)) if hi is None else len(str(hi))
    parts = []
    for d in range(len(str(lo)), top + 1):
        a = max(lo, 10 ** (d - 1) if d > 1 else 0)
        b = 10 ** d - 1 if hi is None else min(hi, 10 ** d - 1)
        if a <= b:
            parts.append(_span(str(a), str(b)))
    if hi is None:
        parts.append(seq(cls(chars("123456789")), repeat(cls(DIGIT), top, None)))
    return alt(*parts)


def int_bounds(schema: dict) -> tuple[int | None, int | None]:
    """Inclusive integer bounds of an integer schema (None: unbounded)."""
    lo = hi = None
    for key, up, excl in (("minimum", False, False), ("exclusiveMinimum", False, True),
                          ("maximum", True, False), ("exclusiveMaximum", True, True)):
        if key not in schema:
            continue
        x = schema[key]
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise ValueError(f"{key} must be a number (draft-4 boolean forms are not supported)")
        if up:
            b = math.ceil(x) - 1 if excl else math.floor(x)
            hi = b if hi is None else min(hi, b)
        else:
            b = math.floor(x) + 1 if excl else math.ceil(x)
            lo = b if lo is None else max(lo, b)
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"integer bounds admit no value ({lo} > {hi})")
    return lo, hi


def integer(lo: int | None, hi: int | None) -> Fragment:
    parts = []
    if hi is None or hi >= 0:
        parts.append(_naturals(max(lo, 0) if lo is not None else 0, hi))
    if lo is None or lo < 0:
        parts.append(seq(lit("-"), _naturals(1 if hi is None else max(1, -hi),
                                             None if lo is None else -lo)))
    return alt(*parts)


NUMBER = seq(alt(empty, lit("-")), alt(lit("0"), seq(cls(chars("123456789")),
                                                    repeat(cls(DIGIT), 0, None))),
             alt(empty, seq(lit("."), repeat(cls(DIGIT), 1, None))),
             alt(empty, seq(cls(chars("eE")), alt(empty, cls(chars("+-"))),
                            repeat(cls(DIGIT), 1, None))))
STRING_CHAR = alt(cls(PLAIN), seq(lit("\\"), cls(ESCAPED)))
DATE = r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$"
FORMATS = {"date": DATE}


# -- patterns --------------------------------------------------------------------------


class _Pattern:
    """A regex subset -> fragment over PLAIN characters: literals, escapes of
    punctuation, . [...] [^...] ranges, \\d \\w \\s \\D \\W \\S (ASCII), groups (...) and
    (?:...), |, * + ? {n} {n,} {n,m} (lazy forms alike), ^ at the start and $ at the end
    of a top-level branch. Unanchored branches match anywhere (JSON Schema's search)."""

    SHORT = {"d": DIGIT, "w": chars("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                    "0123456789_"), "s": chars(" \t\n\r\f\v")}
    MAX_CLASS = 512

    def __init__(self, pattern: str):
        self.p, self.i = pattern, 0

    def error(self, what):
        return ValueError(f"pattern {self.p!r}: {what} (position {self.i}) is not supported")

    def peek(self):
        return self.p[self.i] if self.i < len(self.p) else None

    def take(self):
        c = self.peek()
        if c is None:
            raise self.error("unexpected end")
        self.i += 1
        return c

    def parse(self) -> Fragment:
        anywhere = repeat(cls(PLAIN), 0, None)
        branches = []
        while True:
            start = self.peek() == "^"
            self.i += start
            body = self.concat(top=True)
            end = self.peek() == "$"
            self.i += end
            branches.append(seq(empty if start else anywhere, body, empty if end else anywhere))
            if self.peek() is None:
                return alt(*branches)
            if self.take() != "|":
                raise self.error("this character")

    def alternation(self) -> Fragment:
        parts = [self.concat()]
        while self.peek() == "|":
            self.i += 1
            parts.append(self.concat())
        return alt(*parts)

    def concat(self, top=False) -> Fragment:
        items = []
        while self.peek() not in (None, "|", ")") and not (top and self.peek() == "$"):
            items.append(self.quantified(self.atom()))
        return seq(*items)

    def atom(self) -> Fragment:
        c = self.take()
        if c == "(":
            if self.p.startswith("?:", self.i):
                self.i += 2
            elif self.peek() == "?":
                raise self.error("group syntax (?")
            inner = self.alternation()
            if self.take() != ")":
                raise self.error("unbalanced parenthesis")
            return inner
        if c == "[":
            return cls(self.char_class() & PLAIN)
        if c == ".":
            return cls(~chars("\n") & PLAIN)
        if c == "\\":
            return cls(self.escape() & PLAIN)
        if c in "*+?{})^$|]":
            raise self.error(f"{c!r} here")
        return cls(chars(c) & PLAIN)

    def escape(self) -> CharSet:
        c = self.take()
        if c.lower() in self.SHORT:
            cs = self.SHORT[c.lower()]
            return ~cs if c.isupper() else cs
        if c in "tnrfv":
            return chars({"t": "\t", "n": "\n", "r": "\r", "f": "\f", "v": "\v"}[c])
        if c == "u":
            code, self.i = self.p[self.i:self.i + 4], self.i + 4
            try:
                return chars(chr(int(code, 16)))
            except ValueError:
                raise self.error("\\u escape") from None
        if c.isalnum():
            raise self.error(f"escape \\{c}")
        return chars(c)

    def char_class(self) -> CharSet:
        negate = self.peek() == "^"
        self.i += negate
        out, first = CharSet(frozenset()), True
        while first or self.peek() != "]":
            first = False
            c = self.take()
            if c == "\\":
                lo = self.escape()
            elif c == "[":
                raise self.error("'[' inside a class")
            else:
                lo = chars(c)
            if self.peek() == "-" and self.p[self.i + 1:self.i + 2] not in ("]", ""):
                self.i += 1
                hi = self.take()
                if hi == "\\":
                    hi = self.escape()
                    if hi.negated or len(hi.chars) != 1:
                        raise self.error("class range bound")
                    (hi,) = hi.chars
                if lo.negated or len(lo.chars) != 1 or ord(hi) < ord(next(iter(lo.chars))):
                    raise self.error("class range")
                a = ord(next(iter(lo.chars)))
                if ord(hi) - a >= self.MAX_CLASS:
                    raise self.error(f"a range of over {self.MAX_CLASS} characters")
                lo = chars(chr(x) for x in range(a, ord(hi) + 1))
            out = out | lo
        self.i += 1
        return ~out if negate else out

    def quantified(self, frag: Fragment) -> Fragment:
        c = self.peek()
        if c in ("*", "+", "?"):
            self.i += 1
            lo, hi = {"*": (0, None), "+": (1, None), "?": (0, 1)}[c]
        elif c == "{":
            end = self.p.find("}", self.i)
            body = self.p[self.i + 1:end].split(",") if end > 0 else []
            try:
                lo = int(body[0])
                hi = lo if len(body) == 1 else (None if body[1] == "" else int(body[1]))
            except (ValueError, IndexError):
                raise self.error("quantifier") from None
            if len(body) > 2 or (hi is not None and hi < lo):
                raise self.error("quantifier")
            self.i = end + 1
        else:
            return frag
        self.i += self.peek() == "?"  # lazy: same language
        return repeat(frag, lo, hi)


# -- schemas ---------------------------------------------------------------------------


def schema_types(schema: dict, where: str) -> tuple[str, ...]:
    """The types a (non-enum, non-anyOf) schema allows; inferred from keywords if absent."""
    t = schema.get("type")
    if t is None:
        t = [name for name, kws in KEYWORDS.items() if kws & schema.keys()][:1]
        if not t:
            raise ValueError(f"schema at {where} has no type, enum, const or anyOf (any JSON "
                             "value is not supported)")
    types = (t,) if isinstance(t, str) else tuple(t)
    for name in types:
        if name not in KEYWORDS:
            raise ValueError(f"unsupported type {name!r} at {where}")
    return types


def check_keywords(schema, where: str) -> None:
    """Raises ValueError naming the first keyword outside the subset."""
    if not isinstance(schema, dict):
        raise ValueError(f"schema at {where} must be an object, got {schema!r}")
    known = ANNOTATIONS | {"type", "enum", "const", "anyOf"} | set().union(*KEYWORDS.values())
    for key in schema:
        if key not in known:
            raise ValueError(f"unsupported JSON Schema keyword {key!r} at {where}")
    if "anyOf" in schema and set(schema) - ANNOTATIONS - {"anyOf"}:
        extra = sorted(set(schema) - ANNOTATIONS - {"anyOf"})
        raise ValueError(f"keywords {extra} beside 'anyOf' at {where} are not supported")
    if ("enum" in schema or "const" in schema) and set(schema) - ANNOTATIONS - {
            "type", "enum", "const"}:
        extra = sorted(set(schema) - ANNOTATIONS - {"type", "enum", "const"})
        raise ValueError(f"keywords {extra} beside 'enum'/'const' at {where} are not supported")
    if isinstance(schema.get("additionalProperties"), dict):
        raise ValueError(f"'additionalProperties' as a schema at {where} is not supported")
    if "format" in schema and schema["format"] not in FORMATS:
        raise ValueError(f"unsupported 'format' {schema['format']!r} at {where} "
                         f"(supported: {sorted(FORMATS)})")
    shaped = sorted({"pattern", "format"} & schema.keys())
    if shaped and (len(shaped) > 1 or {"minLength", "maxLength"} & schema.keys()):
        raise ValueError(f"{shaped} with 'minLength'/'maxLength' or each other at {where} is "
                         "not supported")


def literals(schema: dict) -> list:
    """The values an enum/const schema allows (those of the listed `type`, if any)."""
    values = [schema["const"]] if "const" in schema else list(schema["enum"])
    if "type" in schema:
        types = schema_types(schema, "enum")
        values = [v for v in values if any(is_type(v, t) for t in types)]
    return values


def is_type(value, t: str) -> bool:
    return {"object": isinstance(value, dict), "array": isinstance(value, list),
            "string": isinstance(value, str), "null": value is None,
            "boolean": isinstance(value, bool),
            "integer": isinstance(value, int) and not isinstance(value, bool),
            "number": isinstance(value, (int, float)) and not isinstance(value, bool)}[t]


def dump(value) -> str:
    """The compact serialisation enum/const values are generated in."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def fragment(schema: dict, where: str = "#", depth: int = 0) -> Fragment:
    """The fragment of the JSON texts `schema` allows (see the module docstring)."""
    check_keywords(schema, where)
    if "anyOf" in schema:
        return alt(*[fragment(s, f"{where}/anyOf/{i}", depth)
                     for i, s in enumerate(schema["anyOf"])])
    if "enum" in schema or "const" in schema:
        values = literals(schema)
        if not values:
            raise ValueError(f"enum at {where} admits no value")
        return alt(*[lit(text) for text in dict.fromkeys(dump(v) for v in values)])
    return alt(*[_typed(schema, t, where, depth) for t in schema_types(schema, where)])


def _typed(schema: dict, t: str, where: str, depth: int) -> Fragment:
    if t in ("object", "array") and depth >= MAX_DEPTH:
        raise ValueError(f"schema nests deeper than MAX_DEPTH={MAX_DEPTH} at {where}")
    if t == "null":
        return lit("null")
    if t == "boolean":
        return alt(lit("true"), lit("false"))
    if t == "number":
        bounds = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"} & schema.keys()
        if bounds:
            raise ValueError(f"unsupported JSON Schema keyword {sorted(bounds)[0]!r} for type "
                             f"number at {where} (bounds are supported for integers)")
        return NUMBER
    if t == "integer":
        return integer(*int_bounds(schema))
    if t == "string":
        pattern = schema.get("pattern", FORMATS.get(schema.get("format")))
        if pattern is not None:
            return seq(lit('"'), _Pattern(pattern).parse(), lit('"'))
        body = repeat(STRING_CHAR, schema.get("minLength", 0), schema.get("maxLength"))
        return seq(lit('"'), body, lit('"'))
    if t == "array":
        if "items" not in schema or not isinstance(schema["items"], dict):
            raise ValueError(f"array at {where} needs 'items' as one schema")
        item = fragment(schema["items"], f"{where}/items", depth + 1)
        body = separated(item, lit(","), schema.get("minItems", 0), schema.get("maxItems"))
        return seq(lit("["), body, lit("]"))
    return _object(schema, where, depth)


def _object(schema: dict, where: str, depth: int) -> Fragment:
    props = schema.get("properties", {})
    required = set(schema.get("required", ()))
    if required - props.keys():
        raise ValueError(f"required properties {sorted(required - props.keys())} at {where} "
                         "are not declared in 'properties'")
    members = [(name, fragment(sub, f"{where}/properties/{name}", depth + 1), name in required)
               for name, sub in props.items()]

    def f(n, s):
        # cur[first]: the state after the properties so far, first = none written yet
        cur = {True: lit("{")(n, s), False: None}
        for name, value, req in members:
            nxt = {True: None, False: n.new()}
            for first, st in list(cur.items()):
                if st is None:
                    continue
                entry = n.new()
                n.eps[st].append(entry)
                end = seq(lit(("" if first else ",") + dump(name) + ":"), value)(n, entry)
                n.eps[end].append(nxt[False])
                if not req:
                    nxt[first] = nxt[first] if nxt[first] is not None else n.new()
                    n.eps[st].append(nxt[first])
            cur = nxt
        close = n.new()
        for st in cur.values():
            if st is not None:
                n.eps[st].append(close)
        return lit("}")(n, close)
    return f


# -- DFA -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class CharDFA:
    """A trimmed minimal DFA over character atoms; state 0 starts.

    Attributes:
      atoms: character -> atom index; every other character is atom `other`.
      other: the atom index of the characters no edge names.
      trans: int32[S, A] next state (-1: dead).
      accept: bool[S].
    """

    atoms: dict
    other: int
    trans: np.ndarray
    accept: np.ndarray

    @property
    def num_states(self) -> int:
        return self.trans.shape[0]

    def atom(self, c: str) -> int:
        return self.atoms.get(c, self.other)

    def run(self, text: str, state: int = 0) -> int:
        """The state after `text` from `state` (-1: dead)."""
        for c in text:
            if state < 0:
                break
            state = int(self.trans[state, self.atom(c)])
        return state

    def accepts(self, text: str) -> bool:
        s = self.run(text)
        return s >= 0 and bool(self.accept[s])


def determinise(n: NFA, start: int, final: int, max_states: int) -> CharDFA:
    """Subset construction, Moore minimisation and trimming of an NFA."""
    named = sorted({c for edges in n.edges for cs, _ in edges for c in cs.chars})
    atoms = {c: i for i, c in enumerate(named)}
    other = len(named)
    edge_atoms = {}  # CharSet -> atom indices it contains
    for edges in n.edges:
        for cs, _ in edges:
            if cs not in edge_atoms:
                edge_atoms[cs] = ([atoms[c] for c in cs.chars] if not cs.negated else
                                  [i for c, i in atoms.items() if c not in cs.chars] + [other])
    closures: dict[int, frozenset] = {}

    def closure(states) -> frozenset:
        out, stack = set(states), list(states)
        while stack:
            for t in n.eps[stack.pop()]:
                if t not in out:
                    out.add(t)
                    stack.append(t)
        return frozenset(out)

    first = closure([start])
    index, sets, rows = {first: 0}, [first], []
    while len(rows) < len(sets):
        targets: dict[int, set] = {}
        for q in sets[len(rows)]:
            for cs, t in n.edges[q]:
                for a in edge_atoms[cs]:
                    targets.setdefault(a, set()).add(t)
        row = np.full(other + 1, -1, np.int64)
        for a, ts in targets.items():
            key = frozenset(ts)
            if key not in closures:
                closures[key] = closure(ts)
            c = closures[key]
            if c not in index:
                if len(sets) >= 8 * max_states:
                    raise ValueError(f"the schema's automaton is too large (over {8 * max_states}"
                                     " states before minimisation); simplify the schema or "
                                     "raise max_states")
                index[c] = len(sets)
                sets.append(c)
            row[a] = index[c]
        rows.append(row)
    accept = np.array([final in s for s in sets])
    return minimise(np.stack(rows), accept, atoms, other)


def minimise(trans: np.ndarray, accept: np.ndarray, atoms: dict, other: int) -> CharDFA:
    """Moore's partition refinement, then drop the dead class; renumbered in BFS order."""
    S = trans.shape[0]
    full = np.where(trans < 0, S, trans)  # S: the explicit dead state
    full = np.vstack([full, np.full((1, full.shape[1]), S)])
    cls_ = np.append(accept, False).astype(np.int64)
    count = len(np.unique(cls_))
    while True:
        sig = np.ascontiguousarray(np.concatenate([cls_[:, None], cls_[full]], axis=1))
        rows = sig.view(np.dtype((np.void, sig.itemsize * sig.shape[1]))).ravel()
        _, new = np.unique(rows, return_inverse=True)
        new = new.ravel()
        if len(np.unique(new)) == count:
            break
        cls_, count = new, len(np.unique(new))
    # live classes: can reach an accepting class
    k = cls_.max() + 1
    ctrans = np.zeros((k, full.shape[1]), np.int64)
    ctrans[cls_] = cls_[full]
    cacc = np.zeros(k, bool)
    cacc[cls_[accept.nonzero()[0]]] = True
    live = cacc.copy()
    while True:
        grown = live | live[ctrans].any(axis=1)
        if (grown == live).all():
            break
        live = grown
    order, seen = [], {}
    if live[cls_[0]]:
        order, seen = [cls_[0]], {cls_[0]: 0}
        for c in order:
            for d in ctrans[c]:
                if live[d] and d not in seen:
                    seen[d] = len(order)
                    order.append(d)
    remap = np.full(k, -1, np.int64)
    remap[order] = np.arange(len(order))
    out = remap[ctrans[order]] if order else np.zeros((0, full.shape[1]), np.int64)
    return CharDFA(atoms=atoms, other=other, trans=out.astype(np.int32),
                   accept=cacc[order] if order else np.zeros(0, bool))


def compile_dfa(schema: dict, max_states: int = 4096) -> CharDFA:
    """The minimal character DFA of `schema` (see the module docstring).

    Raises:
      ValueError: an unsupported keyword (named), a malformed schema, no text
        satisfies it, or the automaton exceeds max_states.
    """
    n = NFA()
    start = n.new()
    final = fragment(schema)(n, start)
    dfa = determinise(n, start, final, max_states)
    if dfa.num_states == 0:
        raise ValueError("no JSON text satisfies the schema")
    if dfa.num_states > max_states:
        raise ValueError(f"the schema's automaton has {dfa.num_states} states, over the limit "
                         f"max_states={max_states}; simplify the schema or raise the limit")
    return dfa
