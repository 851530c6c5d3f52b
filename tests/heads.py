"""Trained-head assets for registry tests: untrained heads saved for a tiny target
(drafting with them is lossless anyway)."""

import jax
import jax.numpy as jnp

from specjax.drafters import eagle, heads, hydra, medusa, mlp_speculator as ms
from specjax.training import assets


def save_untrained_heads(params, folder, cfg):
    """Head assets for the trained-head methods (untrained weights: lossless anyway), as
    folder/mlp_head, folder/medusa_head, folder/eagle_head and folder/hydra_head; returns the config.draft
    sections naming them for each trained-head method."""
    ident = assets.target_identity("tiny", cfg, params)
    scfg = ms.SpeculatorConfig(dim=cfg.dim, vocab_size=cfg.vocab_size, n_predict=2)
    assets.save_head(folder / "mlp_head", "mlp_speculator", scfg,
                     ms.init_params(scfg, jax.random.key(1)), ident)
    mcfg = medusa.MedusaConfig(dim=cfg.dim, vocab_size=cfg.vocab_size, num_heads=2)
    frozen = medusa.frozen_params(mcfg, heads.target_head(cfg, params))
    assets.save_head(folder / "medusa_head", "medusa", mcfg,
                     {**medusa.init_params(mcfg, jax.random.key(1)), **frozen}, ident)
    # a truncated draft vocabulary (every other token, FR-Spec style)
    ecfg = eagle.EagleConfig.for_target(cfg, draft_vocab=cfg.vocab_size // 2)
    ids = jnp.arange(0, cfg.vocab_size, 2, dtype=jnp.int32)
    assets.save_head(folder / "eagle_head", "eagle", ecfg,
                     {**eagle.init_params(ecfg, jax.random.key(1)), "vocab_ids": ids}, ident)
    hcfg = hydra.HydraConfig(dim=cfg.dim, vocab_size=cfg.vocab_size, num_heads=2)
    assets.save_head(folder / "hydra_head", "hydra", hcfg,
                     hydra.init_params(hcfg, jax.random.key(1)), ident)
    return head_sections(folder)


def head_sections(folder):
    """config.draft sections naming the heads `save_untrained_heads` wrote in `folder`."""
    return {"mlp_speculator": {"head": str(folder / "mlp_head")},
            "medusa": {"head": str(folder / "medusa_head")},
            "eagle": {"head": str(folder / "eagle_head")},
            "eagle2": {"head": str(folder / "eagle_head"), "num_nodes": 8, "depth": 3},
            "hydra": {"head": str(folder / "hydra_head")}}
