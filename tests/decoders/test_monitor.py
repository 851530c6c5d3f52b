"""`decoders.monitor`: monitor-guided decoding (arXiv:2306.10763) with jedi.

Toy set-up: a character-level tokenizer and a `MarkovLM` whose greedy continuation after
`.` is the non-existent member `size`. Repositories of two or three files are written to
tmp dirs, the members living in files other than the one being completed. Checked: the
monitored member is a real one (and the unmonitored one is not); the member automaton
allows exactly the token sequences spelling a member then a non-identifier character
(brute force over a small vocabulary with multi-character tokens, a dead end and an
empty token); one compilation for every segment and trigger; analyser failures fall back
to the unmonitored output and are reported; the segments of a transformer (its cache
carried between segments) reproduce the autoregressive loop.
"""

import dataclasses
import functools
import itertools
import string

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax import decode
from specjax.decoders import monitor
from specjax.models.lm import DecoderLM, MarkovLM
from tests.drafters.conftest import TINY

EOS = 0


@dataclasses.dataclass(frozen=True, eq=False)
class CharTokenizer:
    """Token 0 is EOS (special); the others are strings (one char each, unless a test
    adds longer ones). `encode` takes one character per token."""

    pieces: tuple[str, ...]

    all_special_ids = (EOS,)

    def __len__(self):
        return len(self.pieces)

    def encode(self, text):
        index = {p: i for i, p in enumerate(self.pieces)}
        return [index[c] for c in text]

    def decode(self, ids, skip_special_tokens=False):
        return "".join("" if i == EOS and skip_special_tokens else self.pieces[i] for i in ids)


CHARS = CharTokenizer(("<eos>",) + tuple(string.ascii_letters + string.digits + " \n._()=:,"))
V = len(CHARS)


def markov_params():
    """Log transitions: `.` -> s (5) > p (4) > a (3); s i z e ( ) \\n c . cycles;
    r and a -> ( (so a member ending in r or a is followed by a call)."""
    logits = np.zeros((V, V), np.float32)
    idx = {c: CHARS.encode(c)[0] for c in CHARS.pieces[1:]}
    for a, b, w in [(".", "s", 5), (".", "p", 4), (".", "a", 3), ("s", "i", 5), ("i", "z", 5),
                    ("z", "e", 5), ("e", "(", 5), ("(", ")", 5), (")", "\n", 5),
                    ("\n", "c", 5), ("c", ".", 5), ("r", "(", 2), ("a", "(", 2)]:
        logits[idx[a], idx[b]] = w
    return jnp.asarray(logits)


MODEL = MarkovLM(V)


def write_repo(root, files):
    for name, text in files.items():
        (root / name).write_text(text)
    return root


SHAPES = {
    "base.py": "class Shape:\n    def area(self):\n        return 0.0\n",
    "shapes.py": ("from base import Shape\n\n\nclass Circle(Shape):\n    def __init__(self):\n"
                  "        self.radius = 1.0\n\n    def perimeter(self):\n"
                  "        return 6.28 * self.radius\n"),
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return write_repo(tmp_path_factory.mktemp("shapes_repo"), SHAPES)


def unmonitored(prompt, n):
    toks = decode.autoregressive_generate(markov_params(), MODEL, [CHARS.encode(prompt)],
                                          max_new_tokens=n, eos_ids=(EOS,)).tokens[0]
    return CHARS.decode(toks, skip_special_tokens=True)


def run(prompt, repo_dir, n=30, **kw):
    return monitor.monitor_generate(markov_params(), MODEL, CHARS, prompt, repo_dir=repo_dir,
                                    file_path="main.py", max_new_tokens=n, eos_ids=(EOS,), **kw)


# -- the monitor picks real members defined in other files -------------------------------


@pytest.mark.parametrize("prompt, members, want", [
    # Circle (shapes.py) inherits area from Shape (base.py)
    ("from shapes import Circle\nc = Circle()\nc.", {"area", "perimeter", "radius"},
     "perimeter"),
    ("from base import Shape\nc = Shape()\nc.", {"area"}, "area"),
    ("import shapes\nc = shapes.Circle()\nc.", {"area", "perimeter", "radius"}, "perimeter"),
])
def test_monitor_chooses_a_real_member_from_another_file(repo, prompt, members, want):
    plain = unmonitored(prompt, 30)
    assert plain.startswith("size()\nc.size()"), plain  # the toy model hallucinates

    got = run(prompt, repo)
    assert got.text.startswith(f"{want}()\nc.{want}()"), got.text
    assert len(got.triggers) >= 3  # the prompt's dot, then one per generated line
    first = got.triggers[0]
    assert (first.position, first.token, first.object) == (0, 0, "c")
    for t in got.triggers:
        assert t.error is None and set(t.members) == members, t
        assert t.chosen in members or got.text.endswith(t.chosen)  # last one may be cut
    assert got.triggers[1].chosen == want and got.triggers[1].position == len(want) + 5
    assert got.tokens == CHARS.encode(got.text)


def test_module_members(repo):
    got = run("import shapes\nshapes.", repo, n=12)
    t = got.triggers[0]
    assert {"Circle", "Shape"} <= set(t.members) and t.chosen in t.members, t


def test_dunder_members_are_offered_on_request(repo):
    t = run("from base import Shape\nc = Shape()\nc.", repo, n=6, dunder=True).triggers[0]
    assert "area" in t.members and "__init__" in t.members


# -- failures fall back to unconstrained decoding, reported --------------------------------


@pytest.mark.parametrize("prompt, reason", [
    ("from shapes import Circle\nc = Circle(\nc.", "no members"),  # syntax error
    ("from shapes import Circle\nc = Triangle()\nc.", "no members"),  # unknown object
])
def test_analyser_failure_falls_back(repo, prompt, reason):
    got = run(prompt, repo)
    assert got.text == unmonitored(prompt, 30)
    assert got.triggers and all(reason in t.error and t.members == () for t in got.triggers)
    assert got.triggers[0].chosen == "size"


def test_analyser_exception_falls_back(repo):
    def broken(code, repo_dir, file_path):
        raise RuntimeError("analyser crashed")

    prompt = "from shapes import Circle\nc = Circle()\nc."
    got = run(prompt, repo, members_fn=broken)
    assert got.text == unmonitored(prompt, 30)
    assert all(t.error == "analyser failed: RuntimeError: analyser crashed"
               for t in got.triggers)


def test_no_trigger_in_comments_numbers_or_ellipsis():
    for code in ["x = 1.", "# see c.", "a...", "c. ", "c.\n", "'abc'"]:
        assert not monitor.at_trigger(code), code
    for code in ["c.", "x.y.", "f().", "x[0].", "'abc'.", "def f(:\n    c."]:
        assert monitor.at_trigger(code), code
    assert monitor.object_text("y = f(a, b).g[0].") == "f(a, b).g[0]"


# -- no recompilation between segments and triggers ----------------------------------------


def test_one_compilation_for_all_segments_and_triggers(repo):
    before = monitor.monitor_segment._cache_size()
    prompt = "from shapes import Circle\nc = Circle()\nc."
    got = run(prompt, repo, n=40, segment_tokens=5)  # a segment size no other test uses
    assert len(got.triggers) >= 3 and got.segments >= len(got.triggers) + 3
    assert monitor.monitor_segment._cache_size() == before + 1
    other = run("from base import Shape\nc = Shape()\nc.", repo, n=40, segment_tokens=5)
    assert {t.members for t in other.triggers} == {("area",)}
    assert monitor.monitor_segment._cache_size() == before + 1


# -- the member automaton, brute force --------------------------------------------------------

# multi-character tokens, a token ending a member with "(", an empty token (id 16), and no
# "z": the member "ez" is unspellable, so "e" must not start a name
SMALL = CharTokenizer(("<eos>", "a", "r", "e", "ar", "are", "rea", "area", "area(", "a(", "p",
                       "pe", "x", "(", ".", " ", ""))
SMALL_MEMBERS = ("area", "ar", "pe", "pex", "ez")


def spec_allowed(texts, members):
    """Whether a token sequence may be emitted right after a dot (string-level rule)."""
    prefixes = {m[:i] for m in members for i in range(1, len(m) + 1)}

    @functools.cache
    def ends(p, v):  # token v may follow ident prefix p
        if v == EOS:
            return p in members
        if not texts[v]:
            return False
        c = p + texts[v]
        run = monitor._ident_run(c)
        if run != c:
            return run in members
        # c grows strictly and stays a member prefix: the recursion ends
        return c in prefixes and any(ends(c, w) for w in range(len(texts)))

    def allowed(seq):
        p = ""  # the identifier so far; None once it is complete
        for v in seq:
            if p is None:
                continue
            if not ends(p, v):
                return False
            c = p + ("" if v == EOS else texts[v])
            p = c if v != EOS and monitor._ident_run(c) == c else None
        return True

    return allowed


def test_member_automaton_allows_exactly_the_member_spellings():
    vocab = monitor.monitor_vocab(SMALL, len(SMALL), eos_ids=(EOS,))
    auto = monitor.member_automaton(SMALL_MEMBERS, vocab, max_states=16, max_edges=32)
    assert set(auto.members) == {"area", "ar", "pe", "pex"} and auto.dropped == ()
    params = {k: jnp.asarray(v) for k, v in auto.tables.items()}
    L, Vs = 4, len(SMALL)
    seqs = np.array(list(itertools.product(range(Vs), repeat=L)), np.int32)  # [N, L]

    @jax.jit
    def emitted_so_far(params, seqs):  # bool[N, L]: tokens 0..t all allowed by the rule
        rule = monitor.MemberRule()
        state, ok, out = rule.init(params, seqs.shape[0]), True, []
        zeros = jnp.zeros((seqs.shape[0], Vs), jnp.float32)
        for t in range(L):
            allowed = jnp.isfinite(rule.apply(params, state, zeros))
            ok = ok & allowed[jnp.arange(seqs.shape[0]), seqs[:, t]]
            out.append(ok)
            state = rule.step(params, state, seqs[:, t], zeros)
        return jnp.stack(out, axis=1)

    got = np.asarray(emitted_so_far(params, jnp.asarray(seqs)))
    spec = spec_allowed(SMALL.pieces, SMALL_MEMBERS)
    for t in range(L):
        # every sequence of t + 1 tokens is the prefix of some row
        want = np.array([spec(s[: t + 1].tolist()) for s in seqs])
        bad = np.flatnonzero(got[:, t] != want)
        assert bad.size == 0, [([SMALL.pieces[v] for v in seqs[i, : t + 1]], got[i, t])
                               for i in bad[:5]]
        assert 0 < want.sum() < want.size


def test_member_tables_too_small_drop_members_and_report():
    vocab = monitor.monitor_vocab(CHARS, V, eos_ids=(EOS,))
    names = ["alpha", "beta", "gamma", "delta"]
    for states, edges in [(13, 64), (64, 9)]:  # alpha + beta: 11 states, 9 edges
        auto = monitor.member_automaton(names, vocab, max_states=states, max_edges=edges)
        assert auto.members == ("alpha", "beta") and auto.dropped == ("gamma", "delta")
        assert auto.tables["src"].shape == (edges,) and auto.tables["terminal"].shape == (states,)
    none = monitor.member_automaton(names, vocab, max_states=3, max_edges=64)
    assert none.members == () and int(none.tables["start"]) == monitor.FREE
    with pytest.raises(ValueError, match="max_states"):
        monitor.member_automaton(names, vocab, max_states=1)


# -- a transformer: the cache carried across segments -------------------------------------------

TINY_CHARS = CharTokenizer(("<eos>",) + tuple(string.ascii_lowercase + string.digits
                                               + " \n._()=:,[]'#"))


def test_transformer_segments_match_the_autoregressive_loop():
    from specjax.models.params import init_params

    assert len(TINY_CHARS) == TINY.vocab_size
    params = init_params(TINY, jax.random.key(0), scale=0.3)
    prompt = "obj = make()\nobj."
    ids = TINY_CHARS.encode(prompt)
    ref = decode.autoregressive_generate(params, DecoderLM(TINY), [ids],
                                         max_new_tokens=20).tokens[0]
    got = monitor.monitor_generate(params, TINY, TINY_CHARS, prompt, repo_dir=".",
                                   file_path="main.py", max_new_tokens=20, segment_tokens=3,
                                   members_fn=lambda *a: [])
    assert got.tokens == ref and got.segments >= 7
    members = ["zeta", "omega", "q"]
    guided = monitor.monitor_generate(params, TINY, TINY_CHARS, prompt, repo_dir=".",
                                      file_path="main.py", max_new_tokens=20, segment_tokens=3,
                                      members_fn=lambda *a: members)
    first = guided.triggers[0]
    assert first.error is None and first.chosen in members, guided.text
    assert not guided.text[len(first.chosen):][:1].isidentifier()
