"""Trained-head assets for registry tests: untrained heads saved for a tiny target
(drafting with them is lossless anyway)."""

import jax

from specjax.drafters import medusa, mlp_speculator as ms
from specjax.training import assets


def save_untrained_heads(params, folder, cfg):
    """Head assets for the trained-head methods (untrained weights: lossless anyway), as
    folder/mlp_head and folder/medusa_head."""
    ident = assets.target_identity("tiny", cfg, params)
    scfg = ms.SpeculatorConfig(dim=cfg.dim, vocab_size=cfg.vocab_size, n_predict=2)
    assets.save_head(folder / "mlp_head", "mlp_speculator", scfg,
                     ms.init_params(scfg, jax.random.key(1)), ident)
    mcfg = medusa.MedusaConfig(dim=cfg.dim, vocab_size=cfg.vocab_size, num_heads=2)
    frozen = medusa.frozen_params(mcfg, medusa.target_head(cfg, params))
    assets.save_head(folder / "medusa_head", "medusa", mcfg,
                     {**medusa.init_params(mcfg, jax.random.key(1)), **frozen}, ident)
