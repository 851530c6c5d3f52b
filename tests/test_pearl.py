"""Tests of PEARL (specjax.decode.pearl, arXiv:2408.11850).

- Greedy identity: PEARL output == greedy autoregressive output of the tiny
  transformer for a self-draft (every window accepted: long verify-mode runs),
  a noisy copy of the target (rejections at varied depths) and a one-layer
  self-draft (mostly pre-verify rejections); batch 4 == batch 1 row by row
  (tokens and per-step counts); EOS ends rows at different times; no
  recompilation for an equal call.
- Monte Carlo law on Markov LMs (as tests/test_speculative_law.py): the
  first and the last window of W >= gamma + 2 tokens follow the target law;
  two mutants (no pre-verify of the new draft, correction drawn from p) are
  rejected by the same test.
- Unit tests of the chain / law builders against plain Python, the gamma
  helper, and bad input.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax import decode, trees, verify
from specjax.decode import pearl
from specjax.models.params import first_layers, init_params
from specjax.sampling import Sampling
from tests.drafters.conftest import N_NEW, PROMPTS, TINY
from tests.law import MutantVerifier, LOG_Q, REPEATING
from tests.test_speculative_law import ResidualIsP


@pytest.fixture(scope="module")
def tiny_pair():
    """(target params, {draft name: (cfg, params)}, greedy reference tokens)."""
    params = init_params(TINY, jax.random.key(0), scale=0.3)
    noise = jax.tree.map(lambda x: 0.03 * jax.random.normal(jax.random.key(7), x.shape, x.dtype)
                         * jnp.std(x), params)
    drafts = {
        "self": (TINY, params),
        "noisy": (TINY, jax.tree.map(jnp.add, params, noise)),
        "one_layer": first_layers(TINY, params, 1),
    }
    ref = decode.autoregressive_generate(params, TINY, PROMPTS, max_new_tokens=N_NEW).tokens
    return params, drafts, ref


def _run(params, draft, prompts, gamma, **kw):
    dcfg, dparams = draft
    kw.setdefault("max_new_tokens", N_NEW)
    return pearl.pearl_generate(params, TINY, prompts, draft=dcfg, draft_params=dparams,
                                gamma=gamma, **kw)


# --------------------------------------------------------------------------
# greedy identity
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name,gamma", [("self", 3), ("noisy", 4), ("one_layer", 2)])
def test_greedy_identity(tiny_pair, name, gamma):
    params, drafts, ref = tiny_pair
    out = _run(params, drafts[name], PROMPTS, gamma)
    assert isinstance(out, decode.SpecGeneration)
    assert out.tokens == ref
    # counters: one target forward per step, the histogram counts every step
    np.testing.assert_array_equal(out.target_calls, out.steps + 1)
    np.testing.assert_array_equal(out.accept_hist.sum(axis=1), out.steps)
    committed = (out.accept_hist * (np.arange(gamma + 1) + 1)).sum(axis=1)
    over = committed + 1 - out.num_tokens  # + the prefill's token; the last step may overshoot
    assert np.all((over >= 0) & (over < gamma)), over
    assert out.accept_hist[:, gamma:].sum() == 0  # at most gamma tokens per step
    assert np.all(out.verify_steps <= out.steps)
    np.testing.assert_array_equal(out.draft_forwards, gamma * out.steps)
    if name == "self":  # every window accepted: one pre-verify step, then verify mode
        np.testing.assert_array_equal(out.verify_steps, out.steps - 1)
        assert out.tau > gamma - 0.5
    if name == "noisy":
        assert 1.2 < out.tau < gamma - 0.2, out.tau  # accepts and rejects
    # batch 1 == the batch's rows, step by step
    for i in (1, 2):
        single = _run(params, drafts[name], [PROMPTS[i]], gamma)
        assert single.tokens[0] == ref[i]
        np.testing.assert_array_equal(single.accept_hist[0], out.accept_hist[i])
        assert single.verify_steps[0] == out.verify_steps[i]


def test_eos_rows_finish_at_different_times(tiny_pair):
    params, drafts, ref = tiny_pair
    eos = ref[0][6]  # row 0 stops early; other rows stop where they meet it, or at the end
    want = decode.autoregressive_generate(params, TINY, PROMPTS, max_new_tokens=N_NEW,
                                          eos_ids=[eos]).tokens
    assert len({len(t) for t in want}) > 1, "the test needs rows of different lengths"
    for name in ("self", "noisy"):
        got = _run(params, drafts[name], PROMPTS, 3, eos_ids=[eos])
        assert got.tokens == want, name


def test_no_recompilation(tiny_pair):
    params, drafts, _ = tiny_pair
    _run(params, drafts["noisy"], [PROMPTS[0]], 2, max_new_tokens=8)
    size = pearl.pearl_loop._cache_size()
    _run(params, drafts["noisy"], [PROMPTS[2]], 2, max_new_tokens=8)  # same bucket
    assert pearl.pearl_loop._cache_size() == size


# --------------------------------------------------------------------------
# Monte Carlo law on Markov LMs
# --------------------------------------------------------------------------

def _law_run(gamma, num_new, verifier=None, key=0):
    def generate(params, lm, prompts, **kw):
        return pearl.pearl_generate(params, lm, prompts, draft=REPEATING.LM,
                                    draft_params=LOG_Q, gamma=gamma, verifier=verifier, **kw)

    return REPEATING.sample(generate, num_new, key)


@pytest.mark.parametrize("gamma", [2, 3])
def test_output_law(gamma):
    window = gamma + 2  # sees the token after a whole verified window
    toks, out = _law_run(gamma, num_new=3 * window, key=gamma)
    first, last = REPEATING.pvalues(toks, window)
    assert first > 1e-3 and last > 1e-3, f"gamma={gamma}: law differs (p={first:.1e}, {last:.1e})"
    assert out.tau > 1.3
    assert out.verify_steps.sum() > 0.3 * out.steps.sum()  # both modes are exercised


@dataclasses.dataclass(frozen=True)
class NoPreVerify(MutantVerifier):
    """Mutant: the step's new draft is accepted without checking (p := q at its parent)."""

    def __call__(self, key, tree, target_probs, draft_probs):
        parent = jnp.sum(tree.valid, axis=1) - 2  # the last valid node's parent
        rows = jnp.arange(tree.batch_size)
        return self.inner(key, tree, target_probs.at[rows, parent].set(draft_probs[rows, parent]),
                          draft_probs)


@pytest.mark.parametrize("mutant", [NoPreVerify, ResidualIsP])
def test_mutants_are_detected(mutant):
    toks, _ = _law_run(2, num_new=4, verifier=mutant(verify.chain_sampling))
    p = min(REPEATING.pvalues(toks, 4))
    assert p < 1e-6, f"{mutant.__name__} was not detected (p={p:.2e})"


# --------------------------------------------------------------------------
# building blocks, gamma helper, bad input
# --------------------------------------------------------------------------


def test_verify_chain_and_laws_match_python():
    G, V = 3, 4
    last = jnp.array([5, 6])
    pend = jnp.array([[7, 8], [9, 10]])
    vmode = jnp.array([False, True])
    tree, new_idx = pearl.verify_chain(last, pend, jnp.array([11, 12]), vmode)
    trees.check_tree(jax.tree.map(np.asarray, tree))
    np.testing.assert_array_equal(new_idx, [1, G])
    # row 0 (draft mode): [root, new draft]; row 1 (verify mode): [root, pending..., new draft]
    np.testing.assert_array_equal(tree.tokens[0, :2], [5, 11])
    np.testing.assert_array_equal(tree.valid[0], [True, True, False, False])
    np.testing.assert_array_equal(tree.tokens[1], [6, 9, 10, 12])
    np.testing.assert_array_equal(tree.valid[1], [True] * 4)
    pend_q = jax.random.uniform(jax.random.key(0), (2, G - 1, V))
    q_new = jax.random.uniform(jax.random.key(1), (2, V))
    q = np.asarray(pearl.chain_laws(pend_q, q_new, new_idx))
    np.testing.assert_array_equal(q[0, 0], q_new[0])
    np.testing.assert_array_equal(q[1, :G - 1], pend_q[1])
    np.testing.assert_array_equal(q[1, G - 1], q_new[1])


def test_choose_gamma():
    assert pearl.choose_gamma(10.0, 2.5) == 4
    assert pearl.choose_gamma(1.0, 1.0) == 2  # clipped below
    assert pearl.choose_gamma(100.0, 1.0, max_gamma=8) == 8
    for bad in [dict(target_time=0.0, draft_time=1.0), dict(target_time=1.0, draft_time=-1.0),
                dict(target_time=1.0, draft_time=1.0, max_gamma=1)]:
        with pytest.raises(ValueError):
            pearl.choose_gamma(**bad)


def test_measure_gamma_runs(tiny_pair):
    params, drafts, _ = tiny_pair
    dcfg, dparams = drafts["one_layer"]
    g = pearl.measure_gamma(TINY, params, dcfg, dparams, context=16, repeats=2)
    assert 2 <= g <= 16


def test_bad_input(tiny_pair):
    params, drafts, _ = tiny_pair
    with pytest.raises(ValueError, match="gamma"):
        _run(params, drafts["self"], PROMPTS, 1)
    with pytest.raises(ValueError, match="gamma"):
        _run(params, drafts["self"], PROMPTS, 2.5)
    with pytest.raises(ValueError, match="vocabulary"):
        pearl.pearl_generate(params, TINY, PROMPTS, draft=TINY.replace(vocab_size=60),
                             draft_params=params, gamma=2, max_new_tokens=4)
    with pytest.raises(ValueError, match="tree verifier"):
        _run(params, drafts["self"], PROMPTS, 2, verifier=verify.tree_rrs(replacement=True),
             sampling=Sampling(temperature=1.0))
    with pytest.raises(ValueError, match="empty"):
        _run(params, drafts["self"], [[]], 2)
    with pytest.raises(ValueError, match="max_len"):
        _run(params, drafts["self"], PROMPTS, 2, max_len=30)
    with pytest.raises(ValueError, match="token ids"):
        _run(params, drafts["self"], [[TINY.vocab_size]], 2)


# --------------------------------------------------------------------------
# two devices: target on device 0, draft on device 1 (subprocess, 2 fake CPUs)
# --------------------------------------------------------------------------

_MESH_SCRIPT = r"""
import jax, jax.numpy as jnp, numpy as np
from specjax import decode
from specjax.decode import pearl
from specjax.models.lm import MarkovLM
from specjax.models.params import init_params
from specjax.sampling import Sampling
from tests.drafters.conftest import N_NEW, PROMPTS, TINY
from tests.law import LOG_P, LOG_Q, REPEATING

assert len(jax.devices()) == 2
mesh = jax.make_mesh((2,), ("pearl",))
params = init_params(TINY, jax.random.key(0), scale=0.3)
noise = jax.tree.map(lambda x: 0.03 * jax.random.normal(jax.random.key(7), x.shape, x.dtype)
                     * jnp.std(x), params)
dparams = jax.tree.map(jnp.add, params, noise)
ref = decode.autoregressive_generate(params, TINY, PROMPTS, max_new_tokens=N_NEW).tokens
out = pearl.pearl_generate(params, TINY, PROMPTS, draft=TINY, draft_params=dparams, gamma=3,
                           max_new_tokens=N_NEW, mesh=mesh)
print("greedy_identical", out.tokens == ref, out.tau > 1.2)
# sampling: the mesh loop draws exactly what the one-device loop draws
run = lambda **kw: pearl.pearl_generate(
    LOG_P, MarkovLM(3), [REPEATING.PROMPT] * 64, draft=MarkovLM(3), draft_params=LOG_Q, gamma=2,
    max_new_tokens=12, sampling=Sampling(temperature=1.0), key=jax.random.key(5), **kw)
a, b = run(mesh=mesh), run()
print("sampling_equal", a.tokens == b.tokens, bool((a.accept_hist == b.accept_hist).all()))
# what jit does not allow: one computation over arrays committed to different devices
t = jax.device_put(params["embed"], jax.devices()[0])
d = jax.device_put(dparams["embed"], jax.devices()[1])
try:
    jax.jit(lambda x, y: x + y)(t, d)
    print("mixed_devices no error")
except ValueError as e:
    print("mixed_devices", "incompatible devices" in str(e))
"""


def test_mesh_target_and_draft_on_two_devices():
    import os
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               PYTHONPATH=str(root), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _MESH_SCRIPT], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.strip().splitlines())
    assert lines["greedy_identical"] == "True True"
    assert lines["sampling_equal"] == "True True"
    assert lines["mixed_devices"] == "True"


def test_bad_mesh(tiny_pair):
    params, drafts, _ = tiny_pair
    mesh = jax.make_mesh((1,), ("pearl",))
    with pytest.raises(ValueError, match="mesh"):
        _run(params, drafts["self"], PROMPTS, 2, mesh=mesh)
