"""`decoders.grammar` / `decoders.json_schema`: JSON Schema -> character DFA -> token
tables -> `GrammarRule` under `RuleLM`.

Checked: the DFA accepts exactly what the independent recursive-descent `validate`
accepts (a table of strings, hypothesis strings and random DFA walks), and its accepted
texts are valid JSON under `jsonschema`; the vectorised trie walk equals a brute-force
walk of every token from every state; greedy decoding of a tiny transformer under the
rule writes texts of the language (batch 1 and 4, EOS); greedy speculative decoding
under the rule is token-identical to constrained autoregressive decoding; speculative
sampling under the rule has the constrained law (exact enumeration), and a path-blind
mutant samples outside the grammar; errors for
unsupported keywords, unsatisfiable and too large grammars; in-memory and disk caches.
"""

import itertools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from specjax import decode, verify
from specjax.decoders import grammar, json_schema, rules
from specjax.decoders.schema_suite import SUITE
from specjax.drafters.draft_model import DraftModel
from specjax.drafters.prompt_lookup import PromptLookup
from specjax.models.lm import DecoderLM, MarkovLM
from specjax.sampling import Sampling
from tests.drafters.conftest import TINY
from tests.law import chi2_pooled

jsonschema = pytest.importorskip("jsonschema")

PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 4},
    "age": {"type": "integer", "minimum": 0, "maximum": 99},
    "ok": {"type": "boolean"}}, "required": ["name", "age"], "additionalProperties": False}
SCHEMAS = {
    "person": PERSON,
    "ints": {"type": "array", "items": {"type": "integer", "minimum": -12, "maximum": 120},
             "minItems": 1, "maxItems": 3},
    "any_of": {"anyOf": [{"type": "null"}, {"enum": ["ab", 12, True]},
                         {"type": "array", "items": {"type": "boolean"}, "maxItems": 2}]},
    "nested": {"type": "object", "properties": {
        "a": {"type": "object", "properties": {"b": {"type": ["string", "null"]}},
              "required": []},
        "n": {"type": "number"}}, "required": ["n"]},
    "pattern": {"type": "string", "pattern": "^a[b-d]*(x|yz)?$"},
    "search": {"type": "string", "pattern": "b{2}"},
}

# (schema, text, in the language)
TABLE = [
    ("person", '{"name":"Bo","age":7}', True),
    ("person", '{"name":"Bo","age":7,"ok":false}', True),
    ("person", '{"name":"","age":99}', True),
    ("person", '{"name":"a\\"\\n","age":0}', True),
    ("person", '{"name":"Bob!","age":100}', False),
    ("person", '{"name":"Bobby","age":1}', False),
    ("person", '{"name":"Bo"}', False),
    ("person", '{"age":7,"name":"Bo"}', False),
    ("person", '{"name": "Bo","age":7}', False),
    ("person", '{"name":"Bo","age":07}', False),
    ("person", '{"name":"Bo","age":-0}', False),
    ("person", '{"name":"B\\u0041","age":1}', False),
    ("person", '{"name":"B\\q","age":1}', False),
    ("person", '{"name":"B\x01","age":1}', False),
    ("person", '{"name":"Bo","age":7,"x":1}', False),
    ("person", '{"name":"Bo","age":7,}', False),
    ("ints", "[-12,0,120]", True),
    ("ints", "[5]", True),
    ("ints", "[]", False),
    ("ints", "[-13]", False),
    ("ints", "[121]", False),
    ("ints", "[1,2,3,4]", False),
    ("ints", "[1,,2]", False),
    ("any_of", "null", True),
    ("any_of", '"ab"', True),
    ("any_of", "12", True),
    ("any_of", "true", True),
    ("any_of", "[true,false]", True),
    ("any_of", "[]", True),
    ("any_of", "false", False),
    ("any_of", "[true,true,true]", False),
    ("any_of", "1", False),
    ("nested", '{"n":1.5e-3}', True),
    ("nested", '{"a":{},"n":-0}', True),
    ("nested", '{"a":{"b":null},"n":0.25}', True),
    ("nested", '{"a":{"b":"é😀"},"n":10}', True),
    ("nested", '{"a":{"b":1},"n":1}', False),
    ("nested", '{"n":01}', False),
    ("nested", '{"n":1.}', False),
    ("nested", '{"n":.5}', False),
    ("pattern", '"a"', True),
    ("pattern", '"abdcx"', True),
    ("pattern", '"acyz"', True),
    ("pattern", '"ax"', True),
    ("pattern", '"axx"', False),
    ("pattern", '"ba"', False),
    ("pattern", '"ay"', False),
    ("search", '"xxbbyy"', True),
    ("search", '"bb"', True),
    ("search", '"bab"', False),
    ("search", '"x\\nbb"', False),  # pattern strings are written without escapes
]


@pytest.fixture(scope="module")
def dfas():
    return {name: json_schema.compile_dfa(s) for name, s in SCHEMAS.items()}


def _json_valid(text, schema):
    try:
        jsonschema.validate(json.loads(text), schema)
        return True
    except (ValueError, jsonschema.ValidationError):
        return False


@pytest.mark.parametrize("name,text,expected", TABLE)
def test_dfa_and_validate_agree_on_a_table(dfas, name, text, expected):
    schema = SCHEMAS[name]
    assert dfas[name].accepts(text) == expected
    assert grammar.validate(text, schema) == expected
    if expected:
        assert _json_valid(text, schema)
        assert grammar.validate(text, schema, compact=False)


def test_suite_schemas_compile_and_their_walks_validate():
    rng = np.random.default_rng(0)
    for name, task in SUITE.items():
        dfa = json_schema.compile_dfa(task.schema)
        for _ in range(20):
            text = _walk(dfa, rng)
            assert grammar.validate(text, task.schema), (name, text)
            assert _json_valid(text, task.schema), (name, text)
        assert task.description and task.prompt


def _walk(dfa, rng, stop=0.3, limit=200):
    """A random accepted text: random live transitions, stopping at accepting states."""
    inverse = {a: c for c, a in dfa.atoms.items()}
    inverse[dfa.other] = next(c for c in "☃éZ~" if c not in dfa.atoms)
    state, out = 0, []
    for _ in range(limit):
        if dfa.accept[state] and rng.random() < stop:
            break
        moves = np.flatnonzero(dfa.trans[state] >= 0)
        if not len(moves):
            break
        a = rng.choice(moves)
        out.append(inverse[a])
        state = dfa.trans[state, a]
    while not dfa.accept[state]:  # finish along the shortest way to acceptance
        a = _closest(dfa, state)
        out.append(inverse[a])
        state = dfa.trans[state, a]
    return "".join(out)


def _closest(dfa, state):
    dist = np.where(dfa.accept, 0, 10 ** 9)
    for _ in range(dfa.num_states):
        via = np.where(dfa.trans >= 0, dist[dfa.trans], 10 ** 9).min(axis=1) + 1
        dist = np.minimum(dist, via)
    moves = np.where(dfa.trans[state] >= 0, dist[dfa.trans[state]], 10 ** 9)
    return int(np.argmin(moves))


ALPHABET = '{}[]",:-.0123456789abexyzn\\ ulrstf'


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(SCHEMAS)), seed=st.integers(0, 2 ** 31 - 1),
       noise=st.text(ALPHABET, max_size=4), where=st.integers(0, 40),
       cut=st.integers(0, 3))
def test_dfa_and_validate_agree_on_mutated_walks(dfas, name, seed, noise, where, cut):
    """Random accepted texts, and the same with characters inserted/deleted."""
    dfa, schema = dfas[name], SCHEMAS[name]
    text = _walk(dfa, np.random.default_rng(seed))
    assert dfa.accepts(text) and grammar.validate(text, schema) and _json_valid(text, schema)
    i = min(where, len(text))
    mutated = text[:i] + noise + text[i + cut:]
    assert dfa.accepts(mutated) == grammar.validate(mutated, schema)
    if dfa.accepts(mutated):
        assert _json_valid(mutated, schema)


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(SCHEMAS)), text=st.text(ALPHABET, max_size=14))
def test_dfa_and_validate_agree_on_random_strings(dfas, name, text):
    assert dfas[name].accepts(text) == grammar.validate(text, SCHEMAS[name])


def test_integer_ranges_are_exact():
    for lo, hi in [(0, 0), (-37, 1234), (7, None), (None, -15), (-5, 5), (99, 1000)]:
        schema = {"type": "integer"} | ({} if lo is None else {"minimum": lo}) | (
            {} if hi is None else {"maximum": hi})
        dfa = json_schema.compile_dfa(schema)
        for x in range(-3000, 3000):
            inside = (lo is None or x >= lo) and (hi is None or x <= hi)
            assert dfa.accepts(str(x)) == inside, (schema, x)
    dfa = json_schema.compile_dfa({"type": "integer", "exclusiveMinimum": 2.5,
                                   "exclusiveMaximum": 6})
    assert [x for x in range(10) if dfa.accepts(str(x))] == [3, 4, 5]


# -- token tables ------------------------------------------------------------------------

# A fake tokenizer: multi-character tokens ('{"', '":', 'ok":'), tokens whose prefixes
# are not tokens ('12' without '1', '"}' beside '"'), a token with empty text and one
# that is no text on its own (None, e.g. part of a UTF-8 character); EOS = 0.
TEXTS = (None, "{", "}", '{"', '"', '":', ",", ',"', "[", "]", "a", "b", "ab", "name",
         "age", "ok", "12", "0", "7", "9", "-", "true", "false", "null", '"}', "\\",
         "\\n", "é", "x\"", "", None, ":", "bb", "ok\":")
VOCAB = grammar.Vocabulary(texts=TEXTS, eos=(0,))


def test_trie_walk_equals_brute_force(dfas):
    for name, dfa in dfas.items():
        got = grammar.char_tables(dfa, TEXTS, 40, budget=64)  # tiny budget: chunked states
        assert got.shape == (dfa.num_states, 40)
        for s in range(dfa.num_states):
            for t, text in enumerate(TEXTS):
                assert got[s, t] == (dfa.run(text, s) if text else -1), (name, s, t)
        assert (got[:, len(TEXTS):] == -1).all()


def _brute_tables(dfa, vocab, V):
    """Reference: char-level next, EOS rows, then the kept states by graph search."""
    S = dfa.num_states
    step = {}
    for s in range(S):
        for t, text in enumerate(vocab.texts):
            d = dfa.run(text, s) if text else -1
            if d >= 0:
                step[s, t] = d
        if dfa.accept[s]:
            for e in vocab.eos:
                step[s, e] = S
    for e in vocab.eos:
        step[S, e] = S
    accept = set(np.flatnonzero(dfa.accept)) | {S}
    good = set(accept)
    while True:
        more = {s for (s, t), d in step.items() if d in good} - good
        if not more:
            break
        good |= more
    return step, good


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_token_tables_equal_brute_force(dfas, name):
    dfa = dfas[name]
    try:
        tab = grammar.build_tables(SCHEMAS[name], VOCAB, 40)
    except ValueError as e:
        assert "no token sequence" in str(e)
        _, good = _brute_tables(dfa, VOCAB, 40)
        assert 0 not in good
        return
    step, good = _brute_tables(dfa, VOCAB, 40)
    n, cs = tab.num_states, tab.char_state
    assert tab.next.shape == (-(-n // grammar.STATE_BUCKET) * grammar.STATE_BUCKET, 40)
    assert cs[0] == 0 and (tab.next[n:] == -1).all() and not tab.accept[n:].any()
    for s in range(n):
        for t in range(40):
            want = step.get((cs[s], t), -1)
            got = tab.next[s, t]
            if want >= 0 and want in good:
                assert got >= 0 and cs[got] == want, (s, t)
            else:
                assert got == -1, (s, t)
        assert (tab.next[s] >= 0).any(), "a kept state must allow some token"
        assert tab.accept[s] == (cs[s] == dfa.num_states or bool(dfa.accept[cs[s]]))


def test_unsatisfiable_and_unsupported_schemas_raise():
    with pytest.raises(ValueError, match="no token sequence"):
        grammar.build_tables({"type": "string", "pattern": "^z$"}, VOCAB)
    with pytest.raises(ValueError, match="no JSON text"):
        json_schema.compile_dfa({"type": "string", "pattern": '^"$'})
    with pytest.raises(ValueError, match="admit no value"):
        json_schema.compile_dfa({"type": "integer", "minimum": 5, "maximum": 3})
    for keyword, schema in [
            ("oneOf", {"oneOf": [{"type": "null"}]}),
            ("allOf", {"allOf": [{"type": "null"}]}),
            ("$ref", {"$ref": "#/x"}),
            ("uniqueItems", {"type": "array", "items": {"type": "null"}, "uniqueItems": True}),
            ("minimum", {"type": "number", "minimum": 0}),
            ("format", {"type": "string", "format": "email"}),
            ("multipleOf", {"type": "integer", "multipleOf": 2}),
            ("patternProperties", {"type": "object", "patternProperties": {}}),
            ("(?", {"type": "string", "pattern": "(?=a)b"}),
            ("escape", {"type": "string", "pattern": "\\bx"}),
            ("MAX_DEPTH", {"type": "array", "items": {"type": "array", "items": {
                "type": "array", "items": {"type": "array", "items": {"type": "array", "items": {
                    "type": "array", "items": {"type": "array", "items": {"type": "null"}}}}}}}}),
            ("any JSON value", {}),
            ("additionalProperties", {"type": "object", "additionalProperties": {}})]:
        with pytest.raises(ValueError, match=keyword.replace("$", "\\$").replace("(", "\\(")):
            json_schema.compile_dfa(schema)
    with pytest.raises(ValueError, match="max_states"):
        json_schema.compile_dfa({"type": "string", "maxLength": 200}, max_states=50)
    with pytest.raises(ValueError, match="max_states"):
        grammar.build_tables({"type": "string", "maxLength": 200}, VOCAB, max_states=50)


# -- decoding under the rule ------------------------------------------------------------

DECODE_SCHEMAS = {
    "person": PERSON,
    "ints": SCHEMAS["ints"],
    "any_of": SCHEMAS["any_of"],
}
N_NEW = 24
PROMPTS = [[3, 7, 1, 9, 4, 3, 7, 1, 9, 4, 3, 7], [11], [5, 5, 2, 8, 13, 21, 5, 5, 2, 8],
           [42, 17, 42, 17, 42]]


@pytest.fixture(scope="module")
def tiny_params():
    from specjax.models.params import init_params

    return init_params(TINY, jax.random.key(3), scale=0.3)


def _constrained_ar(params, schema, prompts, n_new=N_NEW):
    rule, gparams = grammar.compile_schema(schema, VOCAB, vocab_size=TINY.vocab_size)
    return decode.autoregressive_generate(
        rules.rule_params(params, gparams), rules.RuleLM(DecoderLM(TINY), rule), prompts,
        max_new_tokens=n_new, eos_ids=VOCAB.eos).tokens


def _check_in_language(rows, schema):
    dfa = json_schema.compile_dfa(schema)
    finished = 0
    for row in rows:
        text = VOCAB.decode(row)
        if VOCAB.eos[0] in row:
            finished += 1
            assert grammar.validate(text, schema), text
            assert _json_valid(text, schema), text
        else:
            assert dfa.run(text) >= 0, f"not a prefix of the language: {text!r}"
        assert all(t < len(TEXTS) and TEXTS[t] or t in VOCAB.eos for t in row)
    return finished


@pytest.mark.parametrize("name", sorted(DECODE_SCHEMAS))
def test_greedy_decoding_under_the_grammar_stays_in_the_language(tiny_params, name):
    schema = DECODE_SCHEMAS[name]
    rows = _constrained_ar(tiny_params, schema, PROMPTS)
    assert _check_in_language(rows, schema) >= 1, "some row should finish with EOS"
    for i in (0, 3):  # batch 1 equals the row of batch 4
        assert _constrained_ar(tiny_params, schema, [PROMPTS[i]]) == [rows[i]]


def test_sampling_under_the_grammar_stays_in_the_language(tiny_params):
    rule, gparams = grammar.compile_schema(PERSON, VOCAB, vocab_size=TINY.vocab_size)
    rows = decode.autoregressive_generate(
        rules.rule_params(tiny_params, gparams), rules.RuleLM(DecoderLM(TINY), rule),
        PROMPTS * 16, max_new_tokens=40, eos_ids=VOCAB.eos,
        sampling=Sampling(temperature=1.0), key=jax.random.key(5)).tokens
    assert _check_in_language(rows, PERSON) >= 8


@pytest.mark.parametrize("drafter", ["pld", "chain"])
@pytest.mark.parametrize("name", ["person", "any_of"])
def test_greedy_speculative_under_the_grammar_equals_autoregressive(tiny_params, name,
                                                                     drafter):
    schema = DECODE_SCHEMAS[name]
    ref = _constrained_ar(tiny_params, schema, PROMPTS)
    rule, gparams = grammar.compile_schema(schema, VOCAB, vocab_size=TINY.vocab_size)
    method = (decode.Method(drafter=PromptLookup(TINY.vocab_size, 4), verifier=verify.greedy)
              if drafter == "pld" else
              decode.Method(drafter=DraftModel.chain(DecoderLM(TINY), 3),
                            verifier=verify.greedy))
    out = decode.speculative_generate(
        rules.rule_params(tiny_params, gparams), rules.RuleLM(DecoderLM(TINY), rule), PROMPTS,
        method=method, draft_params=tiny_params if drafter == "chain" else None,
        max_new_tokens=N_NEW, eos_ids=VOCAB.eos)
    assert out.tokens == ref


def test_no_recompilation_for_a_second_schema_or_call(tiny_params):
    a = grammar.tables(PERSON, VOCAB, vocab_size=TINY.vocab_size)
    assert grammar.tables(PERSON, VOCAB, vocab_size=TINY.vocab_size) is a  # memoised
    other = SCHEMAS["ints"]
    assert grammar.tables(other, VOCAB, vocab_size=TINY.vocab_size).next.shape == a.next.shape
    method = decode.Method(drafter=PromptLookup(TINY.vocab_size, 4), verifier=verify.greedy)
    sizes = []
    for schema in (PERSON, PERSON, other):
        rule, gparams = grammar.compile_schema(schema, VOCAB, vocab_size=TINY.vocab_size)
        decode.speculative_generate(
            rules.rule_params(tiny_params, gparams), rules.RuleLM(DecoderLM(TINY), rule),
            [PROMPTS[1]], method=method, max_new_tokens=8, eos_ids=VOCAB.eos)
        sizes.append(decode.speculative_loop._cache_size())
    assert sizes[0] == sizes[1] == sizes[2], "recompiled for an equal rule / equal shapes"


def test_disk_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECJAX_CACHE", str(tmp_path))
    schema = {"type": "string", "maxLength": 3}
    built = grammar.tables(schema, VOCAB, cache_min_seconds=-1.0)
    assert list((tmp_path / "grammar").glob("*/tables.npz"))
    grammar._MEMO.clear()
    loaded = grammar.tables(schema, VOCAB)
    assert loaded.seconds == 0.0  # read back, not built
    np.testing.assert_array_equal(loaded.next, built.next)
    np.testing.assert_array_equal(loaded.char_state, built.char_state)


# -- the law of speculative sampling under the grammar ------------------------------------

# Vocabulary of 4: '"', 'a', 'b', EOS; the schema: a string of at most 2 characters.
LAW_VOCAB = grammar.Vocabulary(texts=('"', "a", "b", None), eos=(3,))
LAW_SCHEMA = {"type": "string", "maxLength": 2}
LV, WINDOW, ROWS, PROMPT = 4, 5, 24000, (1,)
LP = np.array([[0.3, 0.3, 0.3, 0.1], [0.2, 0.5, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4],
               [0.25, 0.25, 0.25, 0.25]])
LQ = np.array([[0.1, 0.4, 0.4, 0.1], [0.4, 0.2, 0.3, 0.1], [0.3, 0.3, 0.2, 0.2],
               [0.1, 0.2, 0.3, 0.4]])


def _exact_constrained_law():
    tab = grammar.build_tables(LAW_SCHEMA, LAW_VOCAB)
    law = np.zeros(LV ** WINDOW)
    for idx, seq in enumerate(itertools.product(range(LV), repeat=WINDOW)):
        prob, prev, state = 1.0, PROMPT[-1], 0
        for tok in seq:
            p = np.where(tab.next[state] >= 0, LP[prev], 0.0)
            prob *= p[tok] / p.sum()
            if prob == 0:
                break
            prev, state = tok, tab.next[state, tok]
        law[idx] = prob
    return law


def _law_counts(lm_cls, method):
    """Counts [LV ** WINDOW] of the first WINDOW tokens of ROWS rows under the grammar."""
    rule, gparams = grammar.compile_schema(LAW_SCHEMA, LAW_VOCAB)
    lm = lm_cls(MarkovLM(LV), rule)
    params = rules.rule_params(jnp.log(jnp.asarray(LP, jnp.float32)), gparams)
    common = dict(max_new_tokens=WINDOW, sampling=Sampling(temperature=1.0),
                  key=jax.random.key(0))
    if method == "ar":
        out = decode.autoregressive_generate(params, lm, [list(PROMPT)] * ROWS, **common)
    else:
        out = decode.speculative_generate(
            params, lm, [list(PROMPT)] * ROWS,
            method=decode.Method(drafter=DraftModel.chain(MarkovLM(LV), 3),
                                 verifier=verify.chain_sampling),
            draft_params=jnp.log(jnp.asarray(LQ, jnp.float32)), **common)
        assert out.tau > 1.2
    toks = np.asarray(out.tokens)
    return np.bincount(np.ravel_multi_index(toks.T, (LV,) * WINDOW), minlength=LV ** WINDOW)


@pytest.mark.parametrize("method", ["chain3", "ar"])
def test_speculative_sampling_under_the_grammar_has_the_constrained_law(method):
    counts, law = _law_counts(rules.RuleLM, method), _exact_constrained_law()
    assert counts[law == 0].sum() == 0, "a sequence outside the grammar was sampled"
    p = chi2_pooled(counts, law)
    assert p > 1e-3, f"law under the grammar differs from enumeration (p={p:.2e})"


def test_path_blind_mutant_leaves_the_grammar():
    """Draft nodes masked with the root's grammar state (not their own path's) let the
    chain verifier accept tokens the grammar forbids."""
    from tests.decoders.test_rules import PathBlindRuleLM

    counts, law = _law_counts(PathBlindRuleLM, "chain3"), _exact_constrained_law()
    assert counts[law == 0].sum() > ROWS // 10


# -- the real tokenizer ------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_tables_build_quickly():
    from specjax.models import loading

    tok = loading.load_tokenizer("smollm2-135m", progress=False)
    vocab = grammar.Vocabulary.from_tokenizer(tok)
    assert vocab.texts[tok.convert_tokens_to_ids("Ġproperly")] == " properly"
    assert vocab.texts[tok.eos_token_id] is None and tok.eos_token_id in vocab.eos
    schema = SUITE["person"].schema
    start = time.perf_counter()
    tab = grammar.build_tables(schema, vocab, 49152)
    seconds = time.perf_counter() - start
    print(f"\nSmolLM2 tables for 'person': {tab.num_states} states, {seconds:.2f} s")
    assert seconds < 30
    text = '{"name":"Ada Lovelace","age":36,"email":"ada@math.org"}'
    state = 0
    for t in tok.encode(text, add_special_tokens=False):
        state = tab.next[state, t]
        assert state >= 0
    assert tab.accept[state] and tab.next[state, tok.eos_token_id] >= 0
    assert tab.next[0, tok.encode(" {", add_special_tokens=False)[0]] == -1
