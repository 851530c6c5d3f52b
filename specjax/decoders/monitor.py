"""Monitor-guided decoding of code: static analysis constrains member names after a dot.

Agrawal et al., "Monitor-Guided Decoding of Code LMs with Static Analysis of Repository
Context" (NeurIPS 2023; arXiv:2306.10763, first titled "Guiding Language Models of Code
with Global Context using Monitors"). A code LM that completes `c.` does not know the
members of `c` when its class is defined in another file of the repository, and
hallucinates one. A *monitor* watches the generated code; at a *trigger point* (here: an
object dereference, right after a `.`) it asks a static analyser for the members the
object has, and reshapes the next-token law so that the identifier generated after the
dot is one of them. After the identifier is complete decoding is unconstrained again,
until the next trigger.

How it runs here:

- Decoding is jitted in *segments* (`monitor_segment`: a `lax.while_loop` of up to
  `segment_tokens` tokens that feeds every sampled token to the model). A segment stops
  early right after a token that may complete a trigger point, detected on device with
  per-token tables built once from the tokenizer (`MonitorVocab.marks`): the token's
  text ends with `.` and the character before that `.` (inside the token, or the last
  character of the text before it, carried as a flag) is an identifier character, a
  closing bracket or a quote. The host then confirms the trigger exactly with parso
  (jedi's parser): the text's last leaf is the `.` operator, so `1.`, `...`, comments
  and strings are not triggers.
- At a trigger the host asks jedi (`jedi_members`) for the completions at the end of the
  text, with the text as the code of `file_path` inside the project `repo_dir`, so
  imports of the repository's other files (and installed libraries) resolve.
- The members become a token-level automaton (`member_automaton`): the character trie
  of the member names, with an edge from trie node p to p + w for each token whose text
  is w (identifier characters only) and p + w is a member prefix, and an edge to the
  FREE state for each token whose text is an identifier run completing a member,
  followed by a non-identifier character (`area(`); from a node that is a whole member
  every token starting with a non-identifier character (and every special token, EOS
  included) leads to FREE. Nodes from which no member can be completed are pruned, so
  the automaton allows exactly the token sequences that spell a member followed by a
  non-identifier character (then anything). A special token or a token with empty text
  never extends a name.
- `MemberRule` applies the automaton as a `rules.LogitsRule` through `rules.RuleLM`.
  Its tables are fixed-size arrays in the params: the automaton as a padded edge list
  of `max_edges` (state, token, destination) triples (sparse: a real vocabulary of 150k
  tokens and a module of 400 members need a few thousand edges, where a dense
  [states, V] table would take hundreds of MB) and a bool[`max_states`] table of the
  states that are a whole member; so a new trigger changes array values only:
  every segment of every trigger runs the same compiled function. A segment either
  restarts the rule (a new trigger: its members, or the FREE state when the monitor had
  nothing to offer) or carries its state (a segment that ended inside an identifier).

What the monitor covers: attribute access `obj.` (instances, classes, modules,
call results `f().`, subscripts `x[0].`, string literals `'a'.`) whose members jedi can
infer, the dot written directly after the object. Not covered (decoded unconstrained):
a token that spans the dot and the start of the member completes no trigger point, so
that dereference goes unmonitored (SmolLM2's tokenizer emits `.` alone and is fully
covered; Qwen2.5-Coder's merges `.append`, `.path`, ..., so most of its dereferences are
missed: holding such a token back and re-deciding it under the members is future work);
`obj .name` with whitespace before the dot; names that are not attributes (bare
identifiers, keyword arguments, imports); whether a member is used consistently (an
attribute called as a method), argument counts and API protocols (the paper's other
monitors); code after the cursor (the prompt is the file up to the cursor). jedi's
answer is taken as the full member set: dynamic attributes it cannot see (`setattr`,
`__getattr__`) are forbidden; `__x__` members are left out unless `dunder=True`. When
jedi fails (an exception, or no members: an unknown object, a syntax error around it)
the monitor falls back to unconstrained decoding and reports the reason in the trigger.
When the automaton does not fit the tables, members are dropped from the end of jedi's
(alphabetical) list and reported. The constrained law is the model's law renormalised
over the allowed tokens (greedy: the best allowed token), as in the paper. The loop is
autoregressive: `MemberRule` works under `RuleLM` in any loop, but the triggers are
handled by `monitor_generate` only.

    result = monitor_generate(params, model, tok, open("app/main.py").read(),
                              repo_dir="app", file_path="main.py", max_new_tokens=64,
                              eos_ids=stop_token_ids(tok))
    result.text, [(t.object, t.chosen, t.members) for t in result.triggers]

Letters: B rows (1 in `monitor_generate`), R rule rows, V vocab, S automaton states,
E edges.
"""

from __future__ import annotations

import dataclasses
import functools
import keyword
import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from specjax.decode.host import prepare_prompts
from specjax.decode.state import append_tokens
from specjax.decoders.rules import RuleLM, rule_params
from specjax.models.lm import LanguageModel, as_lm
from specjax.sampling import GREEDY, Sampling, sample

FREE = 0  # automaton state: no constraint (no trigger, or the identifier is complete)
ROOT = 1  # automaton state: right after the dot, nothing of the member written yet

# characters after which a `.` may be an attribute access (identifier chars aside)
_TAIL = frozenset(")]}'\"")


def is_identifier_char(c: str) -> bool:
    """Whether `c` may continue a Python identifier (letters, digits, `_`, unicode)."""
    return ("a" + c).isidentifier()


def _ident_run(text: str) -> str:
    """The leading run of identifier characters of `text`."""
    i = 0
    while i < len(text) and is_identifier_char(text[i]):
        i += 1
    return text[:i]


# -- the tokenizer's token strings ------------------------------------------------------


def token_texts(tokenizer, vocab_size: int) -> tuple[list[str], np.ndarray]:
    """The text of every token id and which ids are special.

    Texts come from `tokenizer.decode([id])`; a SentencePiece piece starting with `▁`
    gets its leading space back (its decoder drops it for a lone token). Special ids
    (`tokenizer.all_special_ids`) and ids beyond the tokenizer (a model's padded
    vocabulary) get the empty text.

    Returns:
      (texts: V strings, special: bool[V]).
    """
    n = min(len(tokenizer), vocab_size)
    special = np.zeros(vocab_size, bool)
    special[[i for i in getattr(tokenizer, "all_special_ids", ()) if 0 <= i < vocab_size]] = True
    ids = [[i] for i in range(n)]
    if hasattr(tokenizer, "batch_decode"):
        texts = list(tokenizer.batch_decode(ids))
    else:
        texts = [tokenizer.decode(i) for i in ids]
    if hasattr(tokenizer, "convert_ids_to_tokens"):
        pieces = tokenizer.convert_ids_to_tokens(list(range(n)))
        texts = [(" " + t if isinstance(p, str) and p.startswith("▁") and not t.startswith(" ")
                  else t) for t, p in zip(texts, pieces)]
    texts = ["" if special[i] else t for i, t in enumerate(texts)] + [""] * (vocab_size - n)
    return texts, special


@dataclasses.dataclass(frozen=True, eq=False)
class MonitorVocab:
    """What the monitor needs to know about a tokenizer, built once (`monitor_vocab`).

    Attributes:
      texts: the text of each token id (V strings; "" for special and padding ids).
      pure: identifier string w -> ids whose text is exactly w.
      then_other: identifier string w (non-empty) -> ids whose text is w followed by a
        non-identifier character (`area(`, `x.`): they complete a member.
      nonident: bool[V] tokens that may follow a complete member: text starting with a
        non-identifier character, or a special token (EOS).
      marks: device tables of the trigger detector, bool[V] each: "dot_after_tail"
        (text ends with `.` preceded by an identifier char / closing bracket / quote),
        "lone_dot" (text is `.`), "tail" (text ends with such a char), "empty".
    """

    texts: tuple[str, ...]
    pure: dict
    then_other: dict
    nonident: np.ndarray
    marks: dict

    @property
    def vocab_size(self) -> int:
        return len(self.texts)


def monitor_vocab(tokenizer, vocab_size: int, eos_ids: Sequence[int] = ()) -> MonitorVocab:
    """Indexes a tokenizer's tokens for `member_automaton` and the trigger detector.

    Args:
      tokenizer: `decode(ids)` and `len()` (HF tokenizers and `CharTokenizer`-like toys).
      vocab_size: the model's vocabulary size (ids beyond the tokenizer are never allowed
        inside a member name).
      eos_ids: stop tokens, treated as special (they may end a complete member).
    """
    texts, special = token_texts(tokenizer, vocab_size)
    special[[e for e in eos_ids if 0 <= e < vocab_size]] = True
    pure, then_other = {}, {}
    nonident = special.copy()
    tail_char = lambda c: is_identifier_char(c) or c in _TAIL
    marks = {k: np.zeros(vocab_size, bool) for k in ("dot_after_tail", "lone_dot", "tail",
                                                     "empty")}
    for i, t in enumerate(texts):
        if not t:
            marks["empty"][i] = True
            continue
        run = _ident_run(t)
        if run == t:
            pure.setdefault(t, []).append(i)
        elif run:
            then_other.setdefault(run, []).append(i)
        else:
            nonident[i] = True
        marks["tail"][i] = tail_char(t[-1])
        marks["lone_dot"][i] = t == "."
        marks["dot_after_tail"][i] = len(t) >= 2 and t[-1] == "." and tail_char(t[-2])
    return MonitorVocab(texts=tuple(texts), pure=pure, then_other=then_other,
                        nonident=nonident, marks=marks)


# -- the member-name automaton ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MemberAutomaton:
    """A member-name constraint as fixed-size tables (the `MemberRule` params, numpy).

    Attributes:
      tables: {"start": int32[] (ROOT, or FREE = no constraint), "src", "tok", "dst":
        int32[E] the edges (state src --token tok--> state dst; padding src = -1),
        "terminal": bool[S] states that are a whole member, "nonident": bool[V]}.
      members: the members it allows (spellable with the tokenizer, in the given order).
      dropped: members left out because the tables were too small.
    """

    tables: dict
    members: tuple[str, ...]
    dropped: tuple[str, ...]


def _trie_edges(members: Sequence[str], vocab: MonitorVocab, has_nonident: bool):
    """The pruned token automaton of `members` (see the module docstring).

    Returns:
      (nodes: prefix -> state, edges: {(state, token): destination}, the members it
      allows: those it can spell and end).
    """
    nodes = {"": ROOT}
    for m in members:
        for i in range(1, len(m) + 1):
            nodes.setdefault(m[:i], len(nodes) + 1)
    edges, completes = {}, {}  # completes: (state, token) -> the member an edge to FREE ends
    for m in members:
        for i in range(len(m)):
            src = nodes[m[:i]]
            for j in range(i + 1, len(m) + 1):
                w = m[i:j]
                for v in vocab.pure.get(w, ()):
                    edges[(src, v)] = nodes[m[:j]]
                if j == len(m):
                    for v in vocab.then_other.get(w, ()):
                        edges[(src, v)] = FREE
                        completes[(src, v)] = m
    # live states: some member can still be completed; longer prefixes first
    terminal = {nodes[m] for m in members}
    out = {}
    for (s, _), d in edges.items():
        out.setdefault(s, []).append(d)
    live = {FREE}
    for p in sorted(nodes, key=len, reverse=True):
        s = nodes[p]
        if (s in terminal and has_nonident) or any(d in live for d in out.get(s, ())):
            live.add(s)
    # states reachable from the root through live states
    reach, frontier = set(), [ROOT] if ROOT in live else []
    while frontier:
        s = frontier.pop()
        if s not in reach:
            reach.add(s)
            frontier += [d for d in out.get(s, ()) if d != FREE and d in live]
    edges = {k: d for k, d in edges.items() if k[0] in reach and d in live}
    ended = {completes[k] for k, d in edges.items() if d == FREE and k in completes}
    kept = tuple(m for m in members
                 if (has_nonident and nodes[m] in reach and nodes[m] in terminal) or m in ended)
    return nodes, edges, kept


def member_automaton(members: Sequence[str], vocab: MonitorVocab, max_states: int = 4096,
                     max_edges: int = 16384) -> MemberAutomaton:
    """The token-level automaton allowing exactly the member names (see the module doc).

    Args:
      members: member names (duplicates and non-identifiers are ignored, order kept).
      vocab: the tokenizer's `MonitorVocab`.
      max_states: S, the padded number of states (FREE and ROOT included).
      max_edges: E, the padded number of edges.

    Returns:
      A `MemberAutomaton` for the longest prefix of `members` that fits; when no member
      fits or is spellable its start state is FREE.
    """
    if max_states < 2 or max_edges < 1:
        raise ValueError(f"member tables need max_states >= 2 and max_edges >= 1, got "
                         f"{max_states} and {max_edges}")
    names = tuple(dict.fromkeys(m for m in members if m.isidentifier()))
    has_nonident = bool(vocab.nonident.any())

    def build(n):
        nodes, edges, kept = _trie_edges(names[:n], vocab, has_nonident)
        return nodes, edges, kept, len(nodes) + 1 <= max_states and len(edges) <= max_edges

    # the longest prefix of the member list whose tables fit (sizes grow with it)
    lo, hi = 0, len(names)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if build(mid)[3]:
            lo = mid
        else:
            hi = mid - 1
    nodes, edges, kept, _ = build(lo)
    triples = np.full((3, max_edges), -1, np.int32)  # src, tok, dst
    if edges:
        triples[:, : len(edges)] = np.array([(s, v, d) for (s, v), d in edges.items()]).T
    terminal = np.zeros(max_states, bool)
    terminal[[nodes[m] for m in kept]] = True
    tables = {"start": np.int32(ROOT if kept else FREE), "src": triples[0], "tok": triples[1],
              "dst": triples[2], "terminal": terminal, "nonident": vocab.nonident}
    return MemberAutomaton(tables=tables, members=kept, dropped=names[lo:])


@dataclasses.dataclass(frozen=True)
class MemberRule:
    """The `LogitsRule` of a `MemberAutomaton`: state int32[B], FREE = unconstrained.

    apply: in a trie state, only tokens with an edge (or, at a whole member, tokens
    starting with a non-identifier character) keep their logits; a row with no allowed
    token (never, for a pruned automaton) is left unconstrained. step: follows the
    edge; FREE stays FREE, and an off-automaton token leads to FREE.
    """

    def init(self, params, batch):
        return jnp.full((batch,), params["start"], jnp.int32)

    def _allowed(self, params, state):  # bool[R, V]
        R, V = state.shape[0], params["nonident"].shape[0]
        out = (params["src"][None] == state[:, None]) & (params["src"] >= 0)[None]  # [R, E]
        slots = jnp.where(out, params["tok"][None], V)  # [R, E]; V: dropped
        ok = jnp.zeros((R, V), bool).at[jnp.arange(R)[:, None], slots].set(True, mode="drop")
        ok = ok | (params["terminal"][state][:, None] & params["nonident"][None])
        return (state == FREE)[:, None] | ok | ~ok.any(axis=-1, keepdims=True)

    def apply(self, params, state, logits):
        return jnp.where(self._allowed(params, state), logits, -jnp.inf)

    def step(self, params, state, token, logits):
        edge = (params["src"][None] == state[:, None]) & (params["tok"][None] == token[:, None])
        dest = jnp.max(jnp.where(edge & (params["src"] >= 0)[None], params["dst"][None], -1),
                       axis=-1)  # [R]: at most one edge matches
        dest = jnp.where(params["terminal"][state] & params["nonident"][token], FREE, dest)
        return jnp.where((state == FREE) | (dest < 0), FREE, dest).astype(jnp.int32)


# -- the jitted segments ----------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("model", "max_len"))
def monitor_prefill(params, tokens, lengths, *, model: RuleLM, max_len: int):
    """The prompt's cache (every prompt token fed; the rule state from params)."""
    _, cache = model.prefill(params, tokens, lengths, model.init_cache(tokens.shape[0], max_len))
    return cache


@functools.partial(
    jax.jit, static_argnames=("model", "segment_tokens", "max_new_tokens", "sampling", "eos_ids"),
    donate_argnames=("cache", "out"))
def monitor_segment(params, cache, reset, tail, out, num, key, marks, *, model: RuleLM,
                    segment_tokens: int, max_new_tokens: int, sampling: Sampling,
                    eos_ids: tuple[int, ...]):
    """One jitted segment: up to `segment_tokens` tokens, stopping after a trigger token.

    Args:
      params: `rule_params(model params, MemberAutomaton tables)`.
      cache: the `RuleCache` with every token so far fed (its `pending` logits are the
        law of the next token).
      reset: bool[] restart the rule from params["rule"]["start"] (a new trigger) or
        carry the cache's rule state.
      tail: bool[B] the text so far ends with an identifier char / closing bracket / quote.
      out: int32[B, M] generated tokens; num: int32[B] how many.
      key: the PRNG key. marks: `MonitorVocab.marks` as device arrays.

    Returns:
      (cache, out, num, tail, key, done bool[B] EOS written or M tokens).
    """
    B = out.shape[0]
    rp = params["rule"]
    state = jnp.where(reset, model.rule.init(rp, B), cache.state)
    logits = model.rule.apply(rp, state, cache.pending)
    cache = cache.replace(state=state)
    zero = jnp.zeros((B,), bool)

    def body(c):
        cache, logits, key, out, num, tail, count, _, _ = c
        key, sub = jax.random.split(key)
        tok = sample(sub, logits, sampling)  # [B]
        out, num, done = append_tokens(out, num, tok[:, None], jnp.ones((B,), jnp.int32),
                                       eos_ids, max_new_tokens)
        logits, cache = model.decode_step(params, tok, cache)
        trigger = marks["dot_after_tail"][tok] | (marks["lone_dot"][tok] & tail)
        tail = jnp.where(marks["empty"][tok], tail, marks["tail"][tok])
        count = count + 1
        stop = done | trigger | (count >= segment_tokens)
        return cache, logits, key, out, num, tail, count, stop, done

    init = (cache, logits, key, out, num, tail, jnp.int32(0), zero, zero)
    cache, _, key, out, num, tail, _, _, done = jax.lax.while_loop(
        lambda c: ~jnp.all(c[7]), body, init)
    return cache, out, num, tail, key, done


# -- the static analysis ----------------------------------------------------------------


def at_trigger(code: str) -> bool:
    """Whether `code` ends right after an attribute-access `.` (parso: its last leaf is
    the `.` operator, nothing after it; not a number `1.`, an ellipsis, a comment)."""
    import parso

    end = parso.parse(code).get_last_leaf()  # the end marker; its prefix: trailing text
    prev = end.get_previous_leaf()
    return end.prefix == "" and prev is not None and prev.type == "operator" and \
        prev.value == "."


def object_text(code: str) -> str:
    """The expression before the final `.` of `code` (for reports): identifiers, dots and
    balanced brackets scanned backwards, e.g. "self.shape", "Circle()", "x[0]"."""
    s = code[:-1] if code.endswith(".") else code
    i, depth = len(s), 0
    while i > 0:
        c = s[i - 1]
        if c in ")]}":
            depth += 1
        elif c in "([{":
            if depth == 0:
                break
            depth -= 1
        elif depth == 0 and not (is_identifier_char(c) or c in ".'\""):
            break
        i -= 1
    return s[i:]


def jedi_members(code: str, repo_dir: str | os.PathLike, file_path: str | os.PathLike
                 ) -> list[str]:
    """jedi's completions at the end of `code` (right after a `.`: the object's members).

    `code` is analysed as the content of `file_path` (relative to `repo_dir`, or
    absolute) inside the jedi project `repo_dir`, with the running interpreter's
    environment: the repository's modules and the installed libraries resolve.
    """
    import jedi

    path = os.path.join(os.fspath(repo_dir), os.fspath(file_path))
    script = jedi.Script(code=code, path=path, project=jedi.Project(path=os.fspath(repo_dir)),
                         environment=jedi.InterpreterEnvironment())
    lines = code.split("\n")
    return [c.name for c in script.complete(len(lines), len(lines[-1]))]


# -- the host loop ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Trigger:
    """One trigger point.

    Attributes:
      position: character offset in the generated text where the member starts (0: the
        prompt itself ended with the dot).
      token: generated tokens before it.
      object: the expression before the dot (`object_text`).
      members: the members offered (empty when the monitor fell back).
      chosen: the identifier generated after the dot (may be cut by max_new_tokens).
      error: None when decoding was constrained, else why not (the analyser's exception,
        no members found, none spellable); decoding was then unconstrained.
      dropped: members left out because the tables were too small.
    """

    position: int
    token: int
    object: str
    members: tuple[str, ...]
    chosen: str
    error: str | None = None
    dropped: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class MonitorResult:
    """text: the generated text (after the prompt); tokens: the generated ids;
    triggers: every trigger point, in order; segments: jitted segments run."""

    text: str
    tokens: list[int]
    triggers: list[Trigger]
    segments: int


def _continuation(tokenizer, prompt_ids: list[int], gen: list[int]) -> str:
    """The text `gen` adds after the prompt (decoded in context, so spacing is right)."""
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)
    return decode(prompt_ids + gen)[len(decode(prompt_ids)):]


def _filter_members(names: Sequence[str], dunder: bool) -> list[str]:
    return [n for n in names if n.isidentifier() and not keyword.iskeyword(n)
            and (dunder or not (n.startswith("__") and n.endswith("__")))]


def monitor_generate(
    params,
    model: LanguageModel,
    tokenizer,
    prompt_text: str,
    *,
    repo_dir: str | os.PathLike,
    file_path: str | os.PathLike,
    max_new_tokens: int,
    segment_tokens: int = 32,
    sampling: Sampling = GREEDY,
    key: jax.Array | None = None,
    eos_ids: Sequence[int] = (),
    max_states: int = 4096,
    max_edges: int = 16384,
    dunder: bool = False,
    members_fn: Callable[[str, str, str], Sequence[str]] = jedi_members,
    vocab: MonitorVocab | None = None,
    max_len: int | None = None,
) -> MonitorResult:
    """Generates a continuation of `prompt_text` under the member monitor (one row).

    Args:
      params: the model's parameters.
      model: a `ModelConfig` or any `LanguageModel`.
      tokenizer: `encode(text) -> ids` and `decode(ids, skip_special_tokens=...)`.
      prompt_text: the code of `file_path` up to the cursor.
      repo_dir: the repository the static analysis sees.
      file_path: the file being completed (relative to repo_dir, or absolute); it need
        not exist: the prompt text is its content.
      max_new_tokens: tokens to generate at most.
      segment_tokens: tokens per jitted segment at most (a segment also ends at a
        trigger, so this only bounds the host round trips of trigger-free text).
      sampling, key, eos_ids: as in `autoregressive_generate`.
      max_states, max_edges: the automaton's table sizes (see `member_automaton`).
      dunder: offer `__x__` members too (default: not).
      members_fn: (code, repo_dir, file_path) -> member names; default `jedi_members`.
      vocab: a prebuilt `monitor_vocab(tokenizer, ...)` to reuse across calls.
      max_len: KV cache slots; default fits the prompt + max_new_tokens.

    Returns:
      `MonitorResult` (text, tokens, triggers, segments).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if segment_tokens < 1:
        raise ValueError(f"segment_tokens must be >= 1, got {segment_tokens}")
    lm = RuleLM(as_lm(model), MemberRule())
    eos_ids = tuple(int(e) for e in eos_ids)
    vocab = vocab or monitor_vocab(tokenizer, lm.vocab_size, eos_ids)
    if vocab.vocab_size != lm.vocab_size:
        raise ValueError(f"the monitor vocabulary has {vocab.vocab_size} tokens but the model "
                         f"{lm.vocab_size}: build it with monitor_vocab(tokenizer, "
                         f"{lm.vocab_size})")
    prompt_ids = list(tokenizer.encode(prompt_text))
    tokens, lengths, max_len = prepare_prompts(lm, [prompt_ids], max_new_tokens, max_len)
    free = member_automaton((), vocab, max_states, max_edges).tables
    marks = {k: jnp.asarray(v) for k, v in vocab.marks.items()}
    rule_tables = free = {k: jnp.asarray(v) for k, v in free.items()}
    cache = monitor_prefill(rule_params(params, rule_tables), tokens, lengths, model=lm,
                            max_len=max_len)
    out = jnp.zeros((1, max_new_tokens), jnp.int32)
    num = jnp.zeros((1,), jnp.int32)
    last = prompt_text[-1:]
    tail = jnp.asarray([bool(last) and (is_identifier_char(last) or last in _TAIL)])
    key = jax.random.key(0) if key is None else key
    text, gen, found, segments, done = "", [], [], 0, False
    while not done:
        reset = False
        code = prompt_text + text
        if at_trigger(code):
            rule_tables, trig = _consult(code, repo_dir, file_path, members_fn, vocab,
                                         max_states, max_edges, dunder, free)
            found.append(dataclasses.replace(trig, position=len(text), token=len(gen)))
            reset = True
        cache, out, num, tail, key, fin = monitor_segment(
            rule_params(params, rule_tables), cache, jnp.asarray(reset), tail, out, num, key,
            marks, model=lm, segment_tokens=segment_tokens, max_new_tokens=max_new_tokens,
            sampling=sampling, eos_ids=eos_ids)
        segments += 1
        gen = np.asarray(out)[0, : int(num[0])].tolist()
        text = _continuation(tokenizer, prompt_ids, gen)
        done = bool(fin[0])
    triggers = [dataclasses.replace(t, chosen=_ident_run(text[t.position:])) for t in found]
    return MonitorResult(text=text, tokens=gen, triggers=triggers, segments=segments)


def _consult(code, repo_dir, file_path, members_fn, vocab, max_states, max_edges, dunder,
             free) -> tuple[dict, Trigger]:
    """Asks the analyser at a trigger: (rule tables for the next segment, its `Trigger`)."""
    blank = Trigger(position=0, token=0, object=object_text(code), members=(), chosen="")
    try:
        names = _filter_members(members_fn(code, os.fspath(repo_dir), os.fspath(file_path)),
                                dunder)
    except Exception as e:  # the analyser's failure must not stop generation
        return free, dataclasses.replace(blank, error=f"analyser failed: {type(e).__name__}: "
                                                      f"{e}")
    if not names:
        return free, dataclasses.replace(
            blank, error="the analyser found no members (unknown object, or a syntax error "
                         "around it)")
    auto = member_automaton(names, vocab, max_states, max_edges)
    if not auto.members:
        return free, dataclasses.replace(
            blank, dropped=auto.dropped,
            error="no member can be spelled with the tokenizer within the table sizes")
    tables = {k: jnp.asarray(v) for k, v in auto.tables.items()}  # on device once per trigger
    return tables, dataclasses.replace(blank, members=auto.members, dropped=auto.dropped)
