"""Kangaroo (shallow early exit, arXiv 2404.18911): the drafter cache stays
equal to the target's, greedy identity, a full-depth exit accepts every
draft, a vocabulary mismatch is caught. The chain engine, the exact output
law and bad input are tested in tests/drafters/test_self_spec.py."""

import pytest

from specjax import decode, verify
from specjax.drafters.kangaroo import Kangaroo
from tests.drafters.conftest import N_NEW, check_greedy_identity
from tests.drafters.test_self_spec import run_steps, tiny4  # noqa: F401 (fixture)


def test_kangaroo_cache_stays_equal_to_the_target_cache(tiny4):
    run_steps(Kangaroo(tiny4[0], exit_layer=3, num_drafts=3, threshold=0.0), tiny4, 4)


def make_kangaroo(cfg, **kw):
    return lambda: decode.Method(drafter=Kangaroo(cfg, **kw), verifier=verify.greedy)


def test_kangaroo_greedy_identity(tiny4):
    cfg, params = tiny4[:2]
    check_greedy_identity(tiny4, make_kangaroo(cfg, exit_layer=2, num_drafts=4, threshold=0.15),
                          draft_params=params)


def test_full_depth_exit_accepts_every_draft(tiny4):
    """exit_layer = L drafts with the target itself: with a consistent cache
    every draft is accepted (a stale or shifted cache would break this)."""
    cfg, params, prompts, ref = tiny4
    out = decode.speculative_generate(
        params, cfg, prompts, method=make_kangaroo(cfg, exit_layer=4, num_drafts=4,
                                                   threshold=0.0)(),
        draft_params=params, max_new_tokens=N_NEW)
    assert out.tokens == ref
    assert out.accept_hist[:, :-1].sum() == 0  # every step accepted all 4 drafts


def test_vocab_mismatch_in_the_loop(tiny4):
    cfg, params, prompts, _ = tiny4
    other = cfg.replace(vocab_size=cfg.vocab_size + 1)
    method = decode.Method(drafter=Kangaroo(other, exit_layer=1), verifier=verify.greedy)
    with pytest.raises(ValueError, match="vocabulary"):
        decode.speculative_generate(params, cfg, prompts[:1], method=method, draft_params=params,
                                    max_new_tokens=4)
