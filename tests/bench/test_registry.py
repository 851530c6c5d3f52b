"""Every registered method builds from a config and reproduces greedy decoding.

A tiny random transformer stands in for the target (the self-draft is its
first layer), so this checks the registry's builders and their settings
(`registry.MethodInfo.settings`: overrides, config.draft and the classes'
defaults), not speed.
"""

from pathlib import Path

import jax
import pytest

from specjax import decode, policies, verify
from tests.heads import head_sections, save_untrained_heads
from specjax.bench import decoder_methods, registry
from specjax.drafters import cascade
from specjax.drafters.aded import Aded
from specjax.drafters.bigram import Bigram
from specjax.drafters.datastore import build_datastore, save_datastore
from specjax.drafters.draft_model import DraftModel
from specjax.drafters.dyspec import DySpec
from specjax.drafters.kangaroo import Kangaroo
from specjax.drafters.max_gram import MaxGram
from specjax.drafters.prompt_lookup import PromptLookup
from specjax.drafters.rasd import RASD
from specjax.drafters.retrieval import Retrieval
from specjax.drafters.stochastic_beam import StochasticBeam
from specjax.drafters.swift import Swift
from specjax.drafters.token_recycling import TokenRecycling
from specjax.models.config import ModelConfig
from specjax.models.lm import DecoderLM
from specjax.models.params import init_params
from specjax.sampling import Sampling
from specjax.trees import sequoia, template_topology

CFG = ModelConfig(arch="llama", vocab_size=40, dim=32, num_layers=4, num_heads=4,
                  num_kv_heads=2, head_dim=8, ffn_dim=64)
V = CFG.vocab_size
PROMPT = [3, 7, 1, 9, 4, 3, 7, 1, 9, 4, 3, 7]
OVERRIDES = {  # small shapes: fast compiles
    "token_recycling": "template=2.1", "aded": "template=2.1/slots=256",
    "sd_tree": "tree=2.1", "swift": "skip_ratio=0.5/num_drafts=3",
    "retrieval": "num_nodes=8/depth=4",
    "rasd": "retrieval.num_nodes=8/retrieval.depth=4/num_nodes=12",
    "sd_schedule": "max_k=3", "sd_confidence": "max_k=3", "specdecpp": "max_k=3",
    "smartspec": "max_k=2/step_costs=1;1.1;1.3",  # given: tiny-model loop timings are noise
    "pearl": "gamma=2", "rsd_s": "beam_width=2/depth=2",
    "dyspec": "num_nodes=6/top_k=2/nodes_per_round=2",
    "mlp_speculator": "top_k=2.2/num_candidates=2", "medusa": "template=2.1/k=2",
    "eagle": "template=2.1/k=2", "eagle2": "depth=2/top_k=2/num_nodes=5",
    "hydra": "template=2.1/k=2",
    # the other decoders in their settings that reduce to greedy decoding
    "beam_search": "beams=1/groups=1", "momentum": "alpha=0", "superposed": "num_drafts=1",
    "rerank": "num_candidates=1/temperature=0.0001",
}
COSTS = "1;1.1;1.2;1.3;1.4;1.5;1.6;1.7;1.8"  # smartspec's step costs T(0..8), not measured


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    params = init_params(CFG, jax.random.key(0), scale=0.3)
    ref = decode.autoregressive_generate(params, CFG, [PROMPT], max_new_tokens=10).tokens[0]
    path = tmp_path_factory.mktemp("ds") / "ds.npz"
    save_datastore(build_datastore([PROMPT + ref, [5, 6, 7, 8, 9] * 4], CFG.vocab_size), path)
    save_untrained_heads(params, path.parent, CFG)
    tree = path.parent / "sequoia.json"
    sequoia.save_templates(tree, [sequoia.make_template([0.5, 0.2], 4, target="tiny",
                                                        draft="self:1", sampling=Sampling())])
    return params, ref, str(path), str(tree)


def _args(datastore, tree, **more):
    """config.draft of these tests: shared settings at the top, sections per method."""
    heads = Path(datastore).parent
    return {"self_layers": 1, "datastore": datastore, "sequoia_tree": tree,
            "sd_chain": {"k": 2}, "sd_tree": {"tree": "2.2"},
            **head_sections(heads), **more}


def _ctx(params, args, sampling=Sampling()):
    return registry.BuildContext(target_cfg=CFG, target_params=params, max_new_tokens=10,
                                 sampling=sampling, eos_ids=(), args=args)


@pytest.mark.parametrize("name", sorted(registry.REGISTRY))
def test_method_builds_and_is_greedy_identical(setup, name):
    params, ref, datastore, tree = setup
    spec = name + ("/" + OVERRIDES[name] if name in OVERRIDES else "")
    info, over = registry.parse(spec)
    gen = info.build(_ctx(params, registry.with_overrides(_args(datastore, tree), info.name, over)))
    out = gen.fn(list(PROMPT))
    assert out.tokens == ref, f"{gen.name} differs from greedy decoding"
    assert 1 <= out.target_calls <= 11


def _old_builds(params, tree):
    """What each method built with default settings before its settings came from the
    classes (the hand-written builders of git HEAD's registry, their defaults restated):
    name -> (Generator name, drafter, policy)."""
    dm = DecoderLM(CFG.replace(num_layers=1))
    chain8 = DraftModel.chain(dm, 8, 1)
    parents = sequoia.template_parents(f"sequoia:{tree}")
    mag = MaxGram(V, max_n=16, k=4, earliest=True)
    ret = Retrieval(V, num_nodes=32, depth=8, num_continuations=32, max_ngram=8, min_ngram=2)
    return {
        "sd_chain": ("sd_chain(k=2)", DraftModel.chain(dm, 2), None),
        "sd_tree": ("sd_tree(2.2)",
                    DraftModel(dm, tuple(template_topology([2, 2]).tolist()), "topk"), None),
        "sequoia": (f"sd_tree(sequoia:sequoia@{len(parents) - 1})",
                    DraftModel(dm, parents, "topk"), None),
        "dyspec": ("dyspec(N=16,R=4)", DySpec(dm, num_nodes=16, top_k=8, nodes_per_round=4),
                   None),
        "rsd_s": ("rsd_s(W=3,D=4)", StochasticBeam(dm, 3, 4, None), None),
        "sd_schedule": ("sd_schedule(max_k=8)+Schedule", chain8,
                        policies.parse("schedule:max_k=8,initial=5")),
        "sd_confidence": ("sd_confidence(max_k=8)+Confidence", chain8,
                          policies.parse("confidence:threshold=0.5")),
        "specdecpp": ("specdecpp(max_k=8)+SpecDecPP", chain8,
                      policies.parse("specdecpp:threshold=0.3")),
        "smartspec": ("smartspec(max_k=8)+Goodput", DraftModel.chain(dm, 8, 4),
                      policies.parse(f"goodput:step_costs={COSTS}")),
        "pld": ("pld(k=10)", PromptLookup(V, num_drafts=10, max_ngram=3, min_ngram=1,
                                          earliest=False, periodic=True), None),
        "token_recycling": ("token_recycling(tr80)", TokenRecycling(V, k=8, template="tr80"),
                            None),
        "aded": ("aded(tr80,c=0.5)", Aded(V, k=8, slots=1 << 16, template="tr80", c_puct=0.5),
                 None),
        "bigram": ("bigram(k=4)", Bigram(V, num_drafts=4, k=4), None),
        "max_gram": ("max_gram(k=10)", MaxGram(V, max_n=16, k=4, earliest=True, num_drafts=10),
                     None),
        "cs_drafting": ("cs_drafting(3+2,maxgram)",
                        cascade.cs_drafting(dm, model_positions=3, bigram_positions=2,
                                            lookahead=2, k=4, vertical=True, bottom=mag), None),
        "kangaroo": ("kangaroo(l=1)", Kangaroo(CFG, exit_layer=1, num_drafts=6, threshold=0.6),
                     None),
        "swift": ("swift(r=0.45,sublayer)",
                  Swift(CFG, num_drafts=6, threshold=0.8, skip_ratio=0.45, window=16,
                        opt_steps=32, granularity="sublayer", bo_every=2, seed=0), None),
        "retrieval": ("retrieval(N=32)", ret, None),
        "rasd": ("rasd(N=48)", RASD(DraftModel(dm, tuple(template_topology([2, 1]).tolist()),
                                               "topk"), ret, num_nodes=48, prune_topk=8), None),
    }


def test_default_settings_build_what_the_old_registry_built(setup):
    """Every method with default settings builds the drafter, policy and name of the
    registry's hand-written builders before settings came from the classes."""
    params, _, datastore, tree = setup
    old = _old_builds(params, tree)
    trained = {"mlp_speculator", "medusa", "eagle", "eagle2", "hydra"}  # trained heads came after the old registry
    decoders = decoder_methods.NAMES  # and the other decoders
    assert set(old) == set(registry.REGISTRY) - {"autoregressive", "pearl"} - trained - decoders
    args = _args(datastore, tree, smartspec={"step_costs": COSTS})
    for name, (label, drafter, policy) in old.items():
        built = registry.get(name).method(_ctx(params, args))
        assert built.name == label
        assert built.method.drafter == drafter, name
        assert built.method.policy == policy, name
        assert built.method.widths is None and built.method.verifier is verify.greedy, name
    assert registry.get("pearl").settings(args)["gamma"] == "auto"  # measured (old: k if set)
    assert registry.get("pearl").build(_ctx(params, {**args, "gamma": "3"})).name == "pearl(gamma=3)"


def test_sampled_trees_keep_their_default_rule(setup):
    params, _, datastore, tree = setup
    built = registry.get("sd_tree").method(_ctx(params, _args(datastore, tree),
                                                Sampling(temperature=1.0)))
    assert built.method.drafter.child_rule == "without_replacement"  # rrs_wor = RSD-C
    assert built.name == "sd_tree(2.2)"


def test_override_config_section_and_python_call_name_the_same_field(setup):
    params, _, datastore, tree = setup
    direct = PromptLookup(V, num_drafts=4)
    info, over = registry.parse("pld/num_drafts=4")
    by_override = info.method(_ctx(params, registry.with_overrides(_args(datastore, tree), info.name, over)))
    by_section = info.method(_ctx(params, _args(datastore, tree, pld={"num_drafts": 4})))
    assert by_override.method.drafter == by_section.method.drafter == direct
    info, over = registry.parse("sd_chain/k=4")
    assert info.method(_ctx(params, registry.with_overrides(_args(datastore, tree), info.name, over))).method.drafter.num_nodes == 5
    # a nested drafter's fields: "retrieval.num_nodes" or a nested section
    rasd = registry.get("rasd")
    assert rasd.settings({"rasd": {"retrieval": {"num_nodes": 8}}})["retrieval.num_nodes"] == 8
    assert rasd.settings(dict(registry.parse("rasd/retrieval.num_nodes=8")[1]))[
        "retrieval.num_nodes"] == 8


def test_overrides_win_over_sections():
    info = registry.get("pld")
    s = info.settings(registry.with_overrides({"pld": {"num_drafts": 4, "max_ngram": 5}},
                                              "pld", {"num_drafts": "6"}))
    assert (s["num_drafts"], s["max_ngram"], s["min_ngram"]) == (6, 5, 1)


@pytest.mark.parametrize("spec,match", [
    ("pld/pld_drafts=4", r"unknown setting 'pld_drafts' \(renamed: pld/num_drafts\) of method "
                         r"'pld' in 'pld/pld_drafts=4'; valid: \['earliest', 'max_ngram'"),
    ("sd_chain/kk=4", r"unknown setting 'kk' of method 'sd_chain'.*valid: \['k', 'max_pending'"),
    ("pld/self_layers=3", r"unknown setting 'self_layers' of method 'pld'"),
    ("sd_chain/k=four", r"bad value 'four' for sd_chain's k in 'sd_chain/k=four': expected int"),
    ("pld/earliest=maybe", r"expected bool"),
    ("rasd/retrieval.nodes=8", r"unknown setting 'retrieval.nodes'.*'retrieval.num_nodes'"),
])
def test_bad_overrides_are_clear_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        registry.parse(spec)


@pytest.mark.parametrize("args,match", [
    ({"pld_drafts": 4}, r"unknown setting 'pld_drafts' \(renamed: pld/num_drafts\) of method "
                        r"'pld' in config.draft / the overrides; valid:"),
    ({"pld": {"k": 4}}, r"unknown setting 'k' of method 'pld' in config.draft.pld; valid: "),
    ({"pdl": {"num_drafts": 4}}, r"config.draft.pdl is a section, but 'pdl' is no method"),
    ({"pld": 4}, r"config.draft.pld must be a section"),
    ({"pld": {"num_drafts": "many"}}, r"bad value 'many' for pld's num_drafts: expected int"),
])
def test_bad_config_entries_are_clear_errors(args, match):
    with pytest.raises(ValueError, match=match):
        registry.get("pld").settings(args)


def test_settings_of_other_methods_are_left_to_them():
    """A top-level key applies to every method with that field; others ignore it."""
    s = registry.get("pld").settings({"k": 4, "self_layers": 2, "prompt_lookup": 3,
                                      "sd_chain": {"k": 6}})
    assert s["num_drafts"] == 10 and "k" not in s
    assert registry.get("bigram").settings({"k": 2})["k"] == 2


def test_missing_required_setting_names_it():
    with pytest.raises(ValueError, match=r"method 'sd_chain' needs k \(int\): sd_chain/k=VALUE "
                                         r"or config.draft.sd_chain.k"):
        registry.get("sd_chain").settings({})
    with pytest.raises(ValueError, match="needs a draft model"):
        registry.get("sd_chain").build(_ctx(None, {"k": 2}))


def test_every_method_has_distinct_settings_and_defaults_of_its_types():
    from specjax import settings

    for info in registry.REGISTRY.values():
        for name, f in info.fields().items():  # no two parts share a name
            if f.default is not settings.REQUIRED:
                assert settings.convert(settings.show(f.default) if f.default != "" else "",
                                        f.type, name) == f.default, (info.name, name)
    table = registry.table()
    assert "| pld |" in table and "num_drafts=10" in table and "exit_layer=<self_layers>" in table


def test_policy_override_reaches_the_method(setup):
    params, ref, _, _ = setup
    info, over = registry.parse("sd_chain/k=3/policy=confidence:threshold=0.4")
    gen = info.build(_ctx(params, registry.with_overrides({"self_layers": 1}, info.name, over)))
    assert "Confidence" in gen.name
    assert gen.fn(list(PROMPT)).tokens == ref
    with pytest.raises(ValueError, match="unknown policy"):
        info.build(_ctx(params, {"self_layers": 1, "k": 2, "policy": "sometimes"}))


def test_override_beats_section_beats_top_level():
    info = registry.get("sd_chain")
    args = {"policy": "none", "sd_chain": {"k": 4, "policy": "confidence:threshold=0.5"}}
    assert info.settings(args)["policy"] == "confidence:threshold=0.5"
    assert info.settings({"policy": "schedule", "sd_chain": {"k": 4}})["policy"] == "schedule"
    over = registry.with_overrides(args, "sd_chain", {"policy": "schedule", "k": 6})
    s = info.settings(over)
    assert (s["policy"], s["k"]) == ("schedule", 6)


def test_eagle_full_vocab_drafts_over_the_whole_vocabulary(setup):
    """FR-Spec's comparison: the same head, its frozen LM head over every token."""
    params, ref, datastore, tree = setup
    for spec, vocab in (("eagle2/depth=2/top_k=2/num_nodes=5", None),
                        ("eagle2/depth=2/top_k=2/num_nodes=5/full_vocab=1", V)):
        info, over = registry.parse(spec)
        ctx = _ctx(params, registry.with_overrides(_args(datastore, tree), info.name, over))
        built = info.method(ctx)
        assert info.build(ctx).fn(list(PROMPT)).tokens == ref
        if vocab is not None:
            assert built.method.drafter.config.head_vocab == vocab
            assert "vocab_ids" not in built.draft_params and "full vocab" in built.name
        else:
            assert built.method.drafter.config.head_vocab < V
