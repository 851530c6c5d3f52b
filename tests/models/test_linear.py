"""`linear(x, prepare_weight(w))` equals `x @ w` up to float32 rounding (not timed)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax.models.linear import (
    PANEL,
    PANEL_WIDE,
    default_panel,
    linear,
    prepare_weight,
    prepare_weight_out_in,
    unprepare_weight,
)


def _reference(x, w):
    return np.matmul(np.asarray(x, np.float64), np.asarray(w, np.float64))


def _assert_close(got, x, w, rtol=1e-5):
    """rtol 1e-5 against float64, with atol at the scale of the terms summed
    (a sum can cancel to ~0, where no relative bound holds for any summation
    order, x @ w's included)."""
    ref = _reference(x, w)
    scale = np.matmul(np.abs(np.asarray(x, np.float64)), np.abs(np.asarray(w, np.float64)))
    atol = 1e-6 * scale.max()
    np.testing.assert_allclose(np.asarray(got, np.float64), ref, rtol=rtol, atol=atol)
    # and as close to XLA's own x @ w as that is to float64
    plain = np.asarray(jnp.asarray(x) @ jnp.asarray(w), np.float64)
    np.testing.assert_allclose(np.asarray(got, np.float64), plain, rtol=rtol, atol=2 * atol)


SHAPES = [  # (lead dims of x, Din, Dout)
    ((1,), 576, 192),  # T = 1: the matvec path
    ((2,), 64, 96),
    ((3,), 40, 32),
    ((5,), 576, 576),
    ((8,), 128, 1536),
    ((16,), 1536, 256),  # Din >= 1024: panels of 64
    ((3,), 2048, 192),  # panels of 64
    ((33,), 96, 64),  # odd T
    ((64,), 256, 128),
    ((300,), 64, 160),  # prefill-sized
    ((2, 7), 48, 64),  # batch x T
    ((4, 1), 32, 64),  # batch of single tokens
    ((2, 3, 5), 24, 40),  # two batch dims
    ((1, 1, 1), 16, 8),
    ((6,), 64, 50),  # Dout = 2 * 25: panels of 2
    ((6,), 64, 37),  # odd Dout: panels of 1
]


@pytest.mark.parametrize("lead,din,dout", SHAPES)
def test_equals_matmul(lead, din, dout):
    rng = np.random.default_rng(din * 1000 + dout + len(lead))
    x = rng.standard_normal((*lead, din)).astype(np.float32)
    w = (rng.standard_normal((din, dout)) / np.sqrt(din)).astype(np.float32)
    wp = prepare_weight(w)
    got = jax.jit(linear)(jnp.asarray(x), jnp.asarray(wp))
    assert got.shape == (*lead, dout) and got.dtype == jnp.float32
    _assert_close(got, x, w)
    # also eagerly (un-jitted)
    _assert_close(linear(jnp.asarray(x), jnp.asarray(wp)), x, w)


def test_prefill_fallback_to_plain_weight():
    rng = np.random.default_rng(6)
    w = (rng.standard_normal((64, 96)) / 8).astype(np.float32)
    wp, wj = jnp.asarray(prepare_weight(w)), jnp.asarray(w)
    for m in (3, 200):
        x = rng.standard_normal((m, 64)).astype(np.float32)
        got = jax.jit(lambda x, wp, w: linear(x, wp, w, prefill_rows=100))(x, wp, wj)
        _assert_close(got, x, w)
        hlo = jax.jit(lambda x, wp, w: linear(x, wp, w, prefill_rows=100)).lower(
            x, wp, wj).as_text()
        assert ("reduce" in hlo) == (m <= 100)
    with pytest.raises(ValueError, match="w_io"):
        linear(jnp.zeros((200, 64)), wp, wj.T)


def test_prepare_layouts_agree():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((48, 96)).astype(np.float32)
    wp = prepare_weight(w)
    assert isinstance(wp, np.ndarray) and wp.flags.c_contiguous
    assert wp.shape == (96 // PANEL, 48, PANEL)
    np.testing.assert_array_equal(prepare_weight_out_in(np.ascontiguousarray(w.T)), wp)
    np.testing.assert_array_equal(np.asarray(prepare_weight(jnp.asarray(w))), wp)
    np.testing.assert_array_equal(unprepare_weight(wp), w)
    np.testing.assert_array_equal(np.asarray(unprepare_weight(jnp.asarray(wp))), w)
    for p in (16, 64):
        np.testing.assert_array_equal(unprepare_weight(prepare_weight(w, panel=p)), w)
    assert default_panel(576) == PANEL and default_panel(1536) == PANEL_WIDE
    wide = rng.standard_normal((1024, 128)).astype(np.float32)
    assert prepare_weight(wide).shape == (128 // PANEL_WIDE, 1024, PANEL_WIDE)


def test_tied_head_from_embedding():
    """An embedding [V, D] is the [Dout, Din] layout of the tied LM head."""
    rng = np.random.default_rng(1)
    embed = rng.standard_normal((320, 64)).astype(np.float32)
    h = rng.standard_normal((1, 5, 64)).astype(np.float32)
    got = jax.jit(linear)(jnp.asarray(h), jnp.asarray(prepare_weight_out_in(embed)))
    _assert_close(got, h, embed.T)


@pytest.mark.parametrize("t", [1, 4])
def test_inside_while_loop_and_scan(t):
    rng = np.random.default_rng(2)
    d = 64
    ws = [(rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32) for _ in range(3)]
    wps = [jnp.asarray(prepare_weight(w)) for w in ws]
    x0 = jnp.asarray(rng.standard_normal((2, t, d)).astype(np.float32))

    def step(x, wps):
        for wp in wps:
            x = jnp.tanh(linear(x, wp))
        return x

    def step_ref(x, ws):
        for w in ws:
            x = jnp.tanh(x @ w)
        return x

    @jax.jit
    def loop(x, wps):
        return jax.lax.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, step(c[1], wps)),
                                  (0, x))[1]

    @jax.jit
    def scan(x, wps):
        return jax.lax.scan(lambda c, _: (step(c, wps), jnp.sum(c)), x, None, length=3)[0]

    ref = x0
    for _ in range(3):
        ref = step_ref(ref, [jnp.asarray(w) for w in ws])
    np.testing.assert_allclose(loop(x0, wps), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scan(x0, wps), ref, rtol=1e-5, atol=1e-5)


def test_scan_over_stacked_weights_and_vmap():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 32, 64)).astype(np.float32)  # 4 layers of [Din, Dout]
    wp = jnp.stack([jnp.asarray(prepare_weight(wi)) for wi in w])
    x = jnp.asarray(rng.standard_normal((3, 32)).astype(np.float32))
    ys = jax.jit(lambda x, wp: jax.lax.scan(lambda c, wl: (c, linear(c, wl)), x, wp)[1])(x, wp)
    for i in range(4):
        _assert_close(ys[i], np.asarray(x), w[i])
    xb = jnp.asarray(rng.standard_normal((5, 2, 32)).astype(np.float32))
    got = jax.jit(jax.vmap(linear, in_axes=(0, None)))(xb, wp[0])
    _assert_close(got, np.asarray(xb), w[0])


@pytest.mark.parametrize("pattern", ["mean_after", "same_weight_twice", "norm_before"])
def test_product_is_never_materialized(pattern):
    """XLA must keep the [Dout/P, M, Din, P] product inside the YNNPACK fusion.

    Without the barriers in `linear`, "same_weight_twice" makes XLA CSE the
    broadcast of the weight and write it to memory (M x the weight's size).
    """
    rng = np.random.default_rng(4)
    w = rng.standard_normal((256, 512)).astype(np.float32)
    wp = jnp.asarray(prepare_weight(w))
    x = jnp.asarray(rng.standard_normal((8, 256)).astype(np.float32))
    f = {
        "mean_after": lambda x, wp: jnp.mean(linear(x, wp), axis=-1),
        "same_weight_twice": lambda x, wp: linear(
            x + jnp.mean(linear(x, wp)[:, :256], -1, keepdims=True), wp),
        "norm_before": lambda x, wp: linear(x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True)),
                                            wp),
    }[pattern]
    entry = jax.jit(f).lower(x, wp).compile().as_text().split("ENTRY")[1]
    assert "f32[16,8,256,32]" not in entry and "f32[8,512,256]" not in entry


def test_other_dtypes_take_the_generic_path():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((64, 96)).astype(np.float32)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    wp = jnp.asarray(prepare_weight(w), jnp.bfloat16)
    got = jax.jit(linear)(jnp.asarray(x, jnp.bfloat16), wp)
    assert got.dtype == jnp.bfloat16 and got.shape == (3, 96)
    np.testing.assert_allclose(np.asarray(got, np.float32), x @ w, rtol=5e-2, atol=0.2)
    assert linear(jnp.zeros((0, 64)), jnp.asarray(prepare_weight(w))).shape == (0, 96)


def test_rejects_unprepared_weight():
    with pytest.raises(ValueError, match="prepare_weight"):
        linear(jnp.zeros((2, 8)), jnp.zeros((8, 16)))
    with pytest.raises(ValueError, match="Din"):
        linear(jnp.zeros((2, 9)), jnp.zeros((1, 8, 16)))
