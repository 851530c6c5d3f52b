"""No whole-cache copies inside the compiled generation loops (issue 17).

XLA updates a KV cache in place only when it can order the update after
every read of the cache; a `lax.switch`/`lax.cond` branch that returns the
cache, or a commit that does not depend on the forward's reads, makes it copy
the whole cache (k and v) on every step. These tests compile the loops of a
tiny transformer and count, in the while loop's body and everything it calls,
`copy` instructions whose shape is the whole target cache [L, B, S, K, H].
"""

from __future__ import annotations

import re
from collections import defaultdict

import jax
import pytest

from specjax import decode, policies, verify
from specjax.drafters.draft_model import DraftModel
from specjax.drafters.prompt_lookup import PromptLookup
from specjax.models.lm import DecoderLM
from specjax.models.params import first_layers, init_params
from specjax.sampling import GREEDY
from tests.drafters.conftest import TINY

MAX_LEN = 96  # a slot count no other array of these programs has
PROMPT = [3, 7, 1, 9, 4, 3, 7, 1, 9]


def loop_copies(hlo: str, shape: str) -> int:
    """`copy` instructions of exactly `shape` (e.g. "f32[2,1,96,2,8]") in the
    computations reachable from the body of any while loop of `hlo`."""
    body: dict[str, list[str]] = defaultdict(list)
    current = None
    for line in hlo.splitlines():
        head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if head and not line.startswith(" "):
            current = head.group(1)
        elif current:
            body[current].append(line)
    calls = {c: {name.strip().lstrip("%") for line in lines for group in re.findall(
        r"(?:to_apply|body|condition|calls|branch_computations|true_computation|"
        r"false_computation)=\{?([%\w.\-, ]+)\}?", line) for name in group.split(",")}
        for c, lines in body.items()}
    todo = [m.group(1) for lines in body.values() for line in lines
            if (m := re.search(r" while\(.*body=%?([\w.\-]+)", line))]
    seen: set[str] = set()
    while todo:
        c = todo.pop()
        if c not in seen:
            seen.add(c)
            todo.extend(calls.get(c, ()))
    pattern = re.compile(re.escape(shape) + r"\{[0-9,]+\} copy\(")
    return sum(bool(pattern.search(line)) for c in seen for line in body.get(c, ()))


@pytest.fixture(scope="module")
def setup():
    params = init_params(TINY, jax.random.key(0), scale=0.3)
    tokens, lengths, _ = decode.prepare_prompts(DecoderLM(TINY), [PROMPT], 16, MAX_LEN)
    return params, tokens, lengths


def target_shape(cfg) -> str:
    return f"f32[{cfg.num_layers},1,{MAX_LEN},{cfg.num_kv_heads},{cfg.head_dim}]"


def test_autoregressive_loop_updates_its_cache_in_place(setup):
    params, tokens, lengths = setup
    hlo = decode.autoregressive_loop.lower(
        params, tokens, lengths, jax.random.key(0), model=DecoderLM(TINY), max_new_tokens=16,
        sampling=GREEDY, eos_ids=(), max_len=MAX_LEN).compile().as_text()
    assert " while(" in hlo
    assert loop_copies(hlo, target_shape(TINY)) == 0


def _methods(draft):
    never = policies.FixedLength(0)
    return {
        "pld": decode.Method(PromptLookup(TINY.vocab_size, num_drafts=4), verify.greedy),
        "pld_widths": decode.Method(PromptLookup(TINY.vocab_size, num_drafts=4), verify.greedy,
                                    never),
        "chain": decode.Method(DraftModel.chain(draft, 3), verify.greedy),
        "chain_lazy_policy": decode.Method(DraftModel.chain(draft, 3, max_pending=4),
                                           verify.greedy, never),
    }


@pytest.mark.parametrize("name", ["pld", "pld_widths", "chain", "chain_lazy_policy"])
def test_speculative_loop_updates_the_target_cache_in_place(setup, name):
    """The verification width switch reads the cache and the commit happens once
    after it; the draft model's level conds and catch-up switch return keys and
    values, not its cache. (The draft cache still has <= 2 whole copies per step
    in the draft-model loops: XLA orders one level's write before the next
    level's read with a copy.)"""
    params, tokens, lengths = setup
    dcfg, dparams = first_layers(TINY, params, 1)
    method = _methods(DecoderLM(dcfg))[name]
    hlo = decode.speculative_loop.lower(
        params, dparams, tokens, lengths, jax.random.key(0), target=DecoderLM(TINY),
        method=method, max_new_tokens=16, sampling=GREEDY, eos_ids=(),
        max_len=MAX_LEN).compile().as_text()
    assert loop_copies(hlo, target_shape(TINY)) == 0
    assert loop_copies(hlo, target_shape(dcfg)) <= 2


def test_the_counter_sees_a_copy():
    """The mutant: a loop whose cache update does not depend on the step's read of
    the cache (the old autoregressive commit, before `cache.after`) is counted."""
    import jax.numpy as jnp

    def body(c):
        i, k, y = c
        y = y + jnp.einsum("lbskh,kh->b", k, jnp.ones((2, 8)))
        return i + 1, jax.lax.dynamic_update_slice(k, jnp.ones((2, 1, 1, 2, 8)), (0, 0, i, 0, 0)), y

    def loop(k, n):
        return jax.lax.while_loop(lambda c: c[0] < n, body, (0, k, jnp.zeros((1,))))

    hlo = jax.jit(loop).lower(jnp.zeros((2, 1, MAX_LEN, 2, 8)), 5).compile().as_text()
    assert loop_copies(hlo, f"f32[2,1,{MAX_LEN},2,8]") > 0
