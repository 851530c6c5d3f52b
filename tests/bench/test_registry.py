"""Every registered method builds from a config and reproduces greedy decoding.

A tiny random transformer stands in for the target (the self-draft is its
first layer), so this checks the registry's builders and their override
parsing, not speed.
"""

import jax
import pytest

from specjax import decode, sequoia
from specjax.bench import registry
from specjax.drafters.retrieval import build_datastore, save_datastore
from specjax.models.config import ModelConfig
from specjax.models.params import init_params
from specjax.sampling import Sampling

CFG = ModelConfig(arch="llama", vocab_size=40, dim=32, num_layers=4, num_heads=4,
                  num_kv_heads=2, head_dim=8, ffn_dim=64)
PROMPT = [3, 7, 1, 9, 4, 3, 7, 1, 9, 4, 3, 7]
OVERRIDES = {  # small shapes: fast compiles
    "token_recycling": "tr_template=2.1", "aded": "aded_template=2.1/aded_slots=256",
    "sd_tree": "tree=2.1", "swift": "swift_ratio=0.5/swift_k=3",
    "retrieval": "ret_nodes=8/ret_depth=4", "rasd": "ret_nodes=8/ret_depth=4/rasd_nodes=12",
    "sd_schedule": "max_k=3", "sd_confidence": "max_k=3", "specdecpp": "max_k=3",
    "smartspec": "max_k=2", "pearl": "pearl_gamma=2", "rsd_s": "beam=2/depth=2",
    "dyspec": "dyspec_nodes=6/dyspec_k=2/dyspec_per_round=2",
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    params = init_params(CFG, jax.random.key(0), scale=0.3)
    ref = decode.autoregressive_generate(params, CFG, [PROMPT], max_new_tokens=10).tokens[0]
    path = tmp_path_factory.mktemp("ds") / "ds.npz"
    save_datastore(build_datastore([PROMPT + ref, [5, 6, 7, 8, 9] * 4], CFG.vocab_size), path)
    tree = path.parent / "sequoia.json"
    sequoia.save_templates(tree, [sequoia.make_template([0.5, 0.2], 4, target="tiny",
                                                        draft="self:1", sampling=Sampling())])
    return params, ref, str(path), str(tree)


@pytest.mark.parametrize("name", sorted(registry.REGISTRY))
def test_method_builds_and_is_greedy_identical(setup, name):
    params, ref, datastore, tree = setup
    spec = name + ("/" + OVERRIDES[name] if name in OVERRIDES else "")
    info, over = registry.parse(spec)
    args = {"self_layers": 1, "k": 2, "tree": "2.2", "datastore": datastore,
            "sequoia_tree": tree, **over}
    ctx = registry.BuildContext(target_cfg=CFG, target_params=params, max_new_tokens=10,
                                sampling=Sampling(), eos_ids=(), args=args)
    gen = info.build(ctx)
    out = gen.fn(list(PROMPT))
    assert out.tokens == ref, f"{gen.name} differs from greedy decoding"
    assert 1 <= out.target_calls <= 11


def test_policy_override_reaches_the_method(setup):
    params, ref, _, _ = setup
    info, over = registry.parse("sd_chain/k=3/policy=confidence:threshold=0.4")
    ctx = registry.BuildContext(target_cfg=CFG, target_params=params, max_new_tokens=10,
                                sampling=Sampling(), eos_ids=(), args={"self_layers": 1, **over})
    gen = info.build(ctx)
    assert "Confidence" in gen.name
    assert gen.fn(list(PROMPT)).tokens == ref
    with pytest.raises(ValueError, match="unknown policy"):
        info.build(registry.BuildContext(
            target_cfg=CFG, target_params=params, max_new_tokens=10, sampling=Sampling(),
            eos_ids=(), args={"self_layers": 1, "k": 2, "policy": "sometimes"}))
