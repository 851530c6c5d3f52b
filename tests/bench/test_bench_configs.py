"""The benchmark configs of issues 5-7 parse, name registered methods and select prompts;
the held-out retrieval corpus never contains a selected prompt."""

import pytest

from specjax.bench import decoder_methods, experiment, prompts, registry


@pytest.mark.parametrize("variant,n", [("", 80), ("qwen", 80), ("small", 8), ("tiny", 1),
                                       ("qwen+small", 8), ("b16", 16), ("qwen+he4", 4)])
def test_train_free_config(variant, n):
    from configs import train_free

    cfg = experiment.from_config_dict(train_free.get_config(variant))
    for m in cfg.methods.split(","):
        registry.parse(m)
    items = experiment.load_prompts(cfg.prompts)
    assert len(items) == n
    assert (cfg.draft_model != "") == ("qwen" in variant)
    if "he4" in variant:
        assert cfg.max_new_tokens == 64 and all(p.category == "humaneval" for p in items)
    with pytest.raises(ValueError, match="unknown variant 'big'"):
        train_free.get_config("big")


def test_heldout_corpus_excludes_selected_prompts():
    heldout_documents = prompts.heldout_documents
    chosen = prompts.load_spec_bench(categories=["qa", "mt_bench"], per_category=2)
    chosen += prompts.load_humaneval([0, 5])
    docs = heldout_documents({p.question_id for p in chosen})
    texts = set(docs)
    for p in chosen:
        assert not any(p.turns[0] in d for d in texts), p.question_id
    others = prompts.load_spec_bench(categories=["qa"], per_category=3)[2:]
    assert others[0].turns[0] in texts  # unselected questions stay
    assert sum("def " in d for d in docs) >= 160 - 2  # HumanEval prompts + solutions
    assert len(heldout_documents(set(), stdlib_files=3)) == len(heldout_documents(set())) + 3


@pytest.mark.parametrize("variant", ["", "qwen", "small+qwen"])
def test_full_table_config_has_every_method(variant):
    from configs import full_table

    cfg = experiment.from_config_dict(full_table.get_config(variant))
    names = {registry.parse(m)[0].name for m in cfg.methods.split(",")}
    # a template / datastore path / trained head to be given
    needs_file = {"sequoia", "retrieval", "rasd", "mlp_speculator", "medusa", "eagle", "eagle2",
                  "hydra"}
    decoders = decoder_methods.NAMES  # configs/decoders.py
    assert names == set(registry.REGISTRY) - needs_file - decoders
    assert ("hf_assisted" in cfg.peers) == ("qwen" in variant)


@pytest.mark.parametrize("variant", ["", "tiny", "best"])
def test_sd_pair_config_variants_parse_and_name_registered_methods(variant):
    from configs import sd_pair
    from specjax.bench import registry

    cfg = experiment.from_config_dict(sd_pair.get_config(variant))
    for m in cfg.methods.split(","):
        registry.parse(m)
    assert cfg.peers == "hf_greedy,hf_assisted" and cfg.draft_model
    if variant == "best":
        assert len(cfg.prompts.humaneval.split(",")) >= 10 and cfg.max_new_tokens == 128
        assert all(int(i) < 100 for i in cfg.prompts.humaneval.split(","))  # tuning split
    with pytest.raises(ValueError, match="unknown variant"):
        sd_pair.get_config("huge")


@pytest.mark.parametrize("variant", ["", "code", "qwen", "small", "qwen+code", "directions"])
def test_trained_heads_config_names_heads_of_its_target(variant):
    from configs import trained_heads
    from specjax.bench import registry

    cfg = experiment.from_config_dict(trained_heads.get_config(variant))
    names = [registry.parse(m)[0].name for m in cfg.methods.split(",")]
    assert {"autoregressive", "pld", "token_recycling", "mlp_speculator", "eagle2"} <= set(names)
    target = "qwen2.5-coder-1.5b" if "qwen" in variant else "smollm2-135m"
    assert cfg.model == target and cfg.draft["eagle2"]["head"].endswith(target)
    assert all(int(i) < 100 for i in cfg.prompts.humaneval.split(","))  # HumanEval 0-99
    assert (cfg.prompts.spec_bench_ids == "") == ("code" in variant or "directions" in variant)
    if "directions" in variant:  # the same node budget for Medusa, Hydra, EAGLE-1, EAGLE-2
        assert {"medusa", "hydra", "eagle"} <= set(names)
        assert sum("4.2.1" in m or "num_nodes=21" in m for m in cfg.methods.split(",")) == 4
    with pytest.raises(ValueError, match="unknown variant"):
        trained_heads.get_config("huge")


@pytest.mark.parametrize("variant,n,transform", [
    ("", 8, ""), ("json", 12, "grammar"), ("json+free", 12, ""), ("mirostat", 8, "mirostat"),
    ("sampling", 8, ""), ("cfg", 8, "cfg"), ("qwen", 4, ""), ("qwen+json", 12, "grammar"),
    ("small", 2, ""), ("json+small", 2, "grammar")])
def test_decoders_config(variant, n, transform):
    from configs import decoders
    from specjax.bench import transforms

    cfg = experiment.from_config_dict(decoders.get_config(variant))
    for m in cfg.methods.split(","):
        registry.parse(m)
    items = experiment.load_prompts(cfg.prompts)
    assert len(items) == n and cfg.quality
    assert cfg.transform.split(":")[0] == transform
    t = transforms.parse(cfg.transform)
    if t is not None:
        t.check(cfg.sampling)
    if "json" in variant:
        assert all(p.schema and p.source == "json_schema" for p in items)
    with pytest.raises(ValueError, match="unknown variant"):
        decoders.get_config("big")
