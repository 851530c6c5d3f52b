"""The training pipeline (`specjax.training.experiment`) end to end on a tiny target:
corpus -> teacher -> training -> a head asset that drafts losslessly."""

from __future__ import annotations

import jax
import pytest

from configs.train import mlp_speculator as config_module
from specjax import decode, verify
from specjax.drafters import mlp_speculator as ms
from specjax.models.params import init_params
from specjax.training import assets, experiment
from tests.drafters.conftest import TINY


class Tok:
    eos_token_id = 1

    def encode(self, text, add_special_tokens=False):
        return [ord(c) % 48 + 2 for c in text]


def test_pipeline_trains_and_saves_a_head_for_its_target(tmp_path):
    (tmp_path / "src").mkdir()
    for i in range(12):
        (tmp_path / "src" / f"f{i}.txt").write_text(f"def f{i}(x):\n    return x + {i}\n" * 8)
    params = init_params(TINY, jax.random.key(0), scale=0.3)
    c = config_module.get_config("tiny").to_dict()
    c.update(target="tiny", head_name=str(tmp_path / "head"), batch_size=4)
    c["corpus"].update(sources=f"text:{tmp_path}/src/*.txt", seq_len=32, val_percent=20)
    c["head"].update(draft_vocab=16, n_predict=2)
    c["train"].update(steps=12, eval_every=6, save_every=6, log_every=3, warmup_steps=2)
    cfg = experiment.from_config_dict(c)
    out = experiment.run(cfg, tmp_path / "work", target=(TINY, params), tokenizer=Tok(),
                         cache=tmp_path / "cache", progress=False, log=lambda s: None)
    ident = assets.target_identity("tiny", TINY, params)
    meta, head = assets.load_head(out["head"], ident)
    assert meta["training"]["corpus_provenance"]["eval_guard"]["dropped"] == []
    assert head["vocab_ids"].shape == (16,) and 1 in head["vocab_ids"]  # EOS always kept
    scfg = ms.SpeculatorConfig(**meta["config"])
    method = decode.Method(ms.MLPSpeculator(scfg, top_k=(3, 2), num_candidates=3), verify.greedy)
    got = decode.speculative_generate(params, TINY, [[5, 6, 7]], method=method, draft_params=head,
                                      max_new_tokens=8).tokens
    assert got == decode.autoregressive_generate(params, TINY, [[5, 6, 7]],
                                                 max_new_tokens=8).tokens
    # a rerun finds everything cached and the run finished
    again = experiment.run(cfg, tmp_path / "work", target=(TINY, params), tokenizer=Tok(),
                           cache=tmp_path / "cache", progress=False, log=lambda s: None)
    assert again["history"] == []
    other = init_params(TINY, jax.random.key(1), scale=0.3)
    with pytest.raises(ValueError, match="is for target"):
        assets.load_head(out["head"], assets.target_identity("tiny", TINY, other))


def test_config_variants_and_errors():
    for arg in ("", "smollm2", "qwen", "tiny"):
        experiment.from_config_dict(config_module.get_config(arg))
    c = config_module.get_config("tiny").to_dict()
    c["train"]["lr"] = 1.0
    with pytest.raises(ValueError, match="unknown config key"):
        experiment.from_config_dict(c)
    c = config_module.get_config("tiny").to_dict()
    c["head"]["kind"] = "medusa9"
    with pytest.raises(ValueError, match="unknown head kind"):
        experiment.from_config_dict(c)
    with pytest.raises(ValueError, match="unknown variant"):
        config_module.get_config("big")
