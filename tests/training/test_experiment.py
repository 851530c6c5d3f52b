"""The training pipeline (`specjax.training.experiment`) end to end on a tiny target:
corpus -> teacher -> training -> a head asset that drafts losslessly."""

from __future__ import annotations

import jax
import pytest

from configs.train import eagle as eagle_config
from configs.train import mlp_speculator as config_module
from specjax import decode, verify
from specjax.bench import registry
from specjax.drafters import mlp_speculator as ms
from specjax.models.params import init_params
from specjax.training import assets, experiment
from tests.drafters.conftest import TINY


class Tok:
    eos_token_id = 1

    def encode(self, text, add_special_tokens=False):
        return [ord(c) % 48 + 2 for c in text]


def _tiny_config(tmp_path, module):
    """A tiny run's config: 12 small text files, the tiny target, 12 steps."""
    (tmp_path / "src").mkdir()
    for i in range(12):
        (tmp_path / "src" / f"f{i}.txt").write_text(f"def f{i}(x):\n    return x + {i}\n" * 8)
    c = module.get_config("tiny").to_dict()
    c.update(target="tiny", head_name=str(tmp_path / "head"), batch_size=4)
    c["corpus"].update(sources=f"text:{tmp_path}/src/*.txt", seq_len=32, val_percent=20)
    c["head"].update(draft_vocab=16, n_predict=2)
    c["train"].update(steps=12, eval_every=6, save_every=6, log_every=3, warmup_steps=2)
    return experiment.from_config_dict(c)


def test_pipeline_trains_and_saves_a_head_for_its_target(tmp_path):
    params = init_params(TINY, jax.random.key(0), scale=0.3)
    cfg = _tiny_config(tmp_path, config_module)
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


def test_an_eagle_head_keeps_only_its_own_weights_and_drafts_from_the_registry(tmp_path):
    """The EAGLE asset holds the trained layer and the draft vocabulary; the shared
    embedding and LM head come from the target the registry loaded."""
    params = init_params(TINY, jax.random.key(0), scale=0.3)
    cfg = _tiny_config(tmp_path, eagle_config)
    out = experiment.run(cfg, tmp_path / "work", target=(TINY, params), tokenizer=Tok(),
                         cache=tmp_path / "cache", progress=False, log=lambda s: None)
    meta, head = assets.load_head(out["head"], assets.target_identity("tiny", TINY, params))
    assert meta["kind"] == "eagle" and set(head) == {"fc", "fc_bias", "layer", "vocab_ids"}
    ref = decode.autoregressive_generate(params, TINY, [[5, 6, 7]], max_new_tokens=8).tokens
    for name in ("eagle", "eagle2"):
        ctx = registry.BuildContext(target_cfg=TINY, target_params=params, max_new_tokens=8,
                                    sampling=registry.Sampling(), eos_ids=(),
                                    args={name: {"head": out["head"]}})
        built = registry.get(name).method(ctx)
        got = decode.speculative_generate(params, TINY, [[5, 6, 7]], method=built.method,
                                          draft_params=built.draft_params, max_new_tokens=8)
        assert got.tokens == ref, name


def test_config_variants_and_errors():
    for arg in ("", "smollm2", "qwen", "tiny"):
        experiment.from_config_dict(config_module.get_config(arg))
        assert experiment.from_config_dict(eagle_config.get_config(arg)).head.kind == "eagle"
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


def test_stage_two_trains_on_the_targets_generations(tmp_path):
    """stage2.steps > 0: the target's continuations of training prompts become a corpus
    (prompts from each split, greedy here, so they are the autoregressive tokens), the
    stage-1 head is kept apart and the final head records both stages."""
    from specjax.training import corpus, generations

    params = init_params(TINY, jax.random.key(0), scale=0.3)
    c = _tiny_config(tmp_path, config_module)
    c = experiment.dataclasses.replace(c, stage2=experiment.Stage2Config(
        steps=4, prompts=6, val_prompts=2, prompt_len=8, new_tokens=6, temperature=0.0,
        batch=4))
    out = experiment.run(c, tmp_path / "work", target=(TINY, params), tokenizer=Tok(),
                         cache=tmp_path / "cache", progress=False, log=lambda s: None)
    ident = assets.target_identity("tiny", TINY, params)
    meta1, _ = assets.load_head(out["stage1_head"], ident)
    meta2, _ = assets.load_head(out["head"], ident)
    assert out["stage1_head"].endswith("-stage1") and len(out["stage2_history"]) >= 1
    gen = meta2["training"]["corpus_provenance"]["generations"]
    assert gen["prompt_len"] == 8 and gen["sampling"]["temperature"] == 0.0
    assert meta2["training"]["stage1"]["corpus"] == meta1["training"]["corpus"]
    gdir = tmp_path / "cache" / "corpora" / meta2["training"]["corpus"]
    recs = corpus.PackedRecords(gdir, "train")
    src_dir = tmp_path / "cache" / "corpora" / meta1["training"]["corpus"]
    prompts = generations.prompts_of(corpus.PackedRecords(src_dir, "train"), 6, 8)
    assert len(recs) == len(prompts) == 6 and len(corpus.PackedRecords(gdir, "val")) == 2
    want = decode.autoregressive_generate(params, TINY, prompts[:1], max_new_tokens=6,
                                          eos_ids=(1,)).tokens[0]
    rec = recs[0]
    n = int(rec["segments"].sum())
    assert rec["tokens"][:n].tolist() == prompts[0] + want
    with pytest.raises(FileExistsError):
        generations.build(TINY, params, src_dir, gdir, target_name="tiny", prompts={"train": 1},
                          eos_id=1)
