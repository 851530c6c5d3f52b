"""Batched throughput benchmark (specjax.bench.throughput, experiments/batch_throughput.py).

A tiny random transformer (the command's `tiny-random` model, self-draft = its
first layer) stands in for the models: these tests check the counting, the
identity flags, the warm-up / compile bookkeeping, the outputs and the input
checks, never speed. The module fixture runs the same shapes as the command
test, so the command's run reuses its compiled loops.
"""

import dataclasses
import json

import pytest

from configs import batch_throughput as config_file
from experiments import batch_throughput as command
from specjax import decode
from specjax.bench import registry, step_costs, throughput
from specjax.sampling import Sampling

N_NEW = 8
BATCHES = (1, 3)  # 3 > the 2 prompts: the list is cycled
SMART = "smartspec/max_k=2/widths=2/step_costs=1;1.1;1.25"  # given costs: no timing
METHODS = ("autoregressive", "sd_chain/k=2", SMART)


def _ctx(eos=()):
    cfg, params = command.tiny_model(0, "auto")
    return registry.BuildContext(target_cfg=cfg, target_params=params, max_new_tokens=N_NEW,
                                 sampling=Sampling(), eos_ids=tuple(eos),
                                 args={"self_layers": 1})


@pytest.fixture(scope="module")
def run():
    ctx = _ctx()
    prompts = command.toy_prompts(2, ctx.target_cfg.vocab_size)
    res = throughput.run_throughput(ctx, prompts, BATCHES, METHODS, repeats=2)
    return ctx, prompts, res


def test_every_cell_is_there_with_exact_token_counts(run):
    _, _, res = run
    assert [(c.method, c.batch) for c in res.cells] == [(m, b) for b in BATCHES for m in METHODS]
    for c in res.cells:
        assert c.row_tokens == [N_NEW] * c.batch  # no EOS: every row runs to the limit
        assert c.new_tokens == N_NEW * c.batch
        assert [len(t) for t in c.tokens] == c.row_tokens
        assert c.tokens_per_second == pytest.approx(c.new_tokens / c.seconds)


def test_greedy_outputs_are_identical_to_autoregressive(run):
    _, _, res = run
    for c in res.cells:
        assert c.identical is True and c.identical_rows == [True] * c.batch, c.method
    # batch rows equal single-row runs: rows 0 and 2 of B=3 are prompt 0 again
    single = res.cell("autoregressive", 1).tokens[0]
    assert res.cell("autoregressive", 3).tokens[0] == single
    assert res.cell("autoregressive", 3).tokens[2] == single


def test_identity_flags_can_fail():
    assert throughput.identical_rows([[1, 2], [3]], [[1, 2], [3, 4]]) == [True, False]
    assert throughput.identical_rows([[1, 2]], [[1, 5]]) == [False]
    with pytest.raises(ValueError, match="rows"):
        throughput.identical_rows([[1]], [[1], [2]])


def test_tau_and_speculation_length(run):
    _, _, res = run
    for B in BATCHES:
        ar, chain, smart = (res.cell(m, B) for m in METHODS)
        assert ar.tau == 1.0 and ar.mean_k == 0.0 and ar.width_steps == {}
        assert ar.batch_forwards == N_NEW and ar.target_calls == N_NEW * B
        assert chain.mean_k == 2.0  # a fixed chain verifies its k drafts every step
        assert 1.0 <= chain.tau <= 3.0
        assert chain.tau == pytest.approx(chain.new_tokens / chain.target_calls)
        assert 0.0 <= smart.mean_k <= 2.0
        assert list(smart.width_steps) == [2, 3]  # widths=2 + the node count 3
        for c in (chain, smart):  # one entry per batch step (the prefill is not a step)
            assert sum(c.width_steps.values()) == c.batch_forwards - 1
        assert smart.step_costs == [1.0, 1.1, 1.25]


def test_warmup_is_untimed_and_compilation_reported_apart(run):
    _, _, res = run
    for c in res.cells:
        assert len(c.repeat_seconds) == res.repeats == 2
        assert c.seconds == pytest.approx(sorted(c.repeat_seconds)[0] / 2
                                          + sorted(c.repeat_seconds)[1] / 2)
        assert c.compile_seconds > 0, f"{c.method} at B={c.batch}: warm-up did not compile"
        assert c.timed_compile_seconds == 0, f"{c.method} at B={c.batch} recompiled when timed"
        assert c.warmup_seconds > 0


def test_eos_ends_rows_and_only_real_tokens_count(run):
    ctx, prompts, res = run
    ref = res.cell("autoregressive", 3).tokens  # greedy tokens without EOS
    # a token of row 0 that is new there: rows 0 and 2 (the same prompt) stop after it
    j = next(j for j in range(1, N_NEW - 1) if ref[0][j] not in ref[0][:j])
    eos = ref[0][j]
    expected = [ref[i].index(eos) + 1 if eos in ref[i] else N_NEW for i in range(3)]
    assert expected[0] == expected[2] == j + 1 < N_NEW
    out = throughput.run_throughput(dataclasses.replace(ctx, eos_ids=(eos,)), prompts, [3],
                                    ["autoregressive", "sd_chain/k=2"], repeats=1)
    for c in out.cells:
        assert c.row_tokens == expected, c.method
        assert c.tokens == [ref[i][:expected[i]] for i in range(3)]
        assert c.new_tokens == sum(expected)
        assert c.identical


def test_table_json_and_plot_from_the_command(run, tmp_path):
    c = config_file.get_config("tiny")
    c.methods = ",".join(METHODS)
    cfg = throughput.from_config_dict(c)
    out = command.run(cfg, tmp_path, log=lambda _: None)
    table = (tmp_path / "table.md").read_text()
    head = next(line for line in table.splitlines() if line.startswith("| method | B=1"))
    assert [h.strip() for h in head.strip("|").split("|")] == [
        "method", "B=1 tok/s", "B=1 speedup", "B=3 tok/s", "B=3 speedup"]
    rows = [line.split("|")[1].strip() for line in table.splitlines()
            if line.startswith("| ") and line.count("|") == 6]
    assert rows[1:] == list(METHODS)  # the header, then one row per method
    ar_row = next(line for line in table.splitlines() if line.startswith("| autoregressive |"))
    assert ar_row.count("| 1.00x |") == 2  # speedup over itself at B=1 and B=3
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["methods"] == list(METHODS) and data["batch_sizes"] == list(BATCHES)
    assert len(data["cells"]) == len(METHODS) * len(BATCHES)
    for cell in data["cells"]:
        assert {"method", "batch", "tokens_per_second", "speedup", "tau", "mean_k",
                "compile_seconds", "identical", "row_tokens"} <= set(cell)
        assert cell["identical"] is True
        assert "tokens" not in cell
    assert data["config"]["model"] == command.TINY_MODEL
    pytest.importorskip("matplotlib")
    assert (tmp_path / command.PLOT_NAME).stat().st_size > 1000
    assert out["result"].cell("autoregressive", 3).speedup == 1.0


def test_smartspec_measures_step_costs_at_the_batch_size(monkeypatch):
    # bare forwards: timed for real (a tiny model's loop timings are too noisy to fit)
    m = throughput.build_method("smartspec/max_k=1/step_cost_source=bare", _ctx(), batch=2,
                                cost_context=16)
    assert m.step_costs is not None and len(m.step_costs) == 2 and m.step_costs[0] == 1.0
    assert m.setup_seconds > 0
    assert m.method.policy.step_costs == pytest.approx(m.step_costs, abs=1e-4)
    # the default source is the loop's own step time, calibrated at this batch size
    seen = {}

    def calibrate(*args, **kw):
        seen.update(kw)
        return step_costs.LoopCalibration(bare=(1.0, 1.5), measured={0: 0.2, 1: 0.3},
                                          a=0.0, b=0.2)

    monkeypatch.setattr(step_costs, "calibrate", calibrate)
    m = throughput.build_method("smartspec/max_k=1/widths=2", _ctx(), batch=3, cost_context=16)
    assert m.method.policy.step_costs == (1.0, 1.5)
    assert seen["batch"] == 3 and seen["widths"] == (2,) and seen["max_k"] == 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(batch_sizes=[0]), "positive"),
    (dict(batch_sizes=[1, -2]), "positive"),
    (dict(batch_sizes=[]), "no batch sizes"),
    (dict(batch_sizes="1,x"), "integers"),
    (dict(batch_sizes=[2, 2]), "repeat"),
    (dict(methods=["autoregresive"]), "unknown method"),
    (dict(methods=["pld"]), "not batched"),
    (dict(methods=[]), "no methods"),
    (dict(methods=["sd_chain/k=2", "sd_chain/k=2"]), "repeat"),
    (dict(methods=["sd_chain/k"]), "key=value"),
    (dict(repeats=0), "repeats"),
    (dict(prompts=[]), "no prompts"),
    (dict(prompts=[[1, 2], []]), "empty"),
])
def test_bad_input_gives_clear_errors(kwargs, match):
    args = dict(prompts=[[1, 2, 3]], batch_sizes=[1], methods=["autoregressive"], repeats=1)
    args.update(kwargs)
    prompts = args.pop("prompts")
    with pytest.raises(ValueError, match=match):
        throughput.run_throughput(_ctx(), prompts, **args)


def test_bad_method_arguments_fail_before_running():
    with pytest.raises(ValueError, match=">= 1"):
        throughput.build_method("sd_chain/k=0", _ctx(), batch=1)
    with pytest.raises(ValueError, match="widths"):
        throughput.build_method("smartspec/max_k=2/step_costs=1;1;1/widths=0.2", _ctx(), 1)
    with pytest.raises(ValueError, match="step_costs"):
        throughput.build_method("smartspec/max_k=2/step_costs=1;0;1", _ctx(), 1)


def test_config_variants_and_unknown_keys():
    for arg in ("", "small", "smollm2", "tiny"):
        cfg = throughput.from_config_dict(config_file.get_config(arg))
        throughput.parse_methods(cfg.methods)
        throughput.parse_batch_sizes(cfg.batch_sizes)
    assert throughput.parse_batch_sizes(
        throughput.from_config_dict(config_file.get_config()).batch_sizes) == (1, 4, 16, 32)
    with pytest.raises(ValueError, match="unknown variant"):
        config_file.get_config("huge")
    c = config_file.get_config("tiny").to_dict()
    c["batch_size"] = 4
    with pytest.raises(ValueError, match="batch_size"):
        throughput.from_config_dict(c)


def test_batch_of_cycles_the_prompts():
    assert throughput.batch_of([[1], [2, 3]], 5) == [[1], [2, 3], [1], [2, 3], [1]]
    assert throughput.batch_of([[1], [2, 3]], 1) == [[1]]
    with pytest.raises(ValueError, match=">= 1"):
        throughput.batch_of([[1]], 0)


def test_generation_counters_by_hand():
    """`cell_of` on a hand-made SpecGeneration: two rows, one stopped early by EOS."""
    gen = decode.SpecGeneration(tokens=[[5, 6, 7, 8], [9, 2]], target_calls=[3, 2],
                                steps=[2, 1], accept_hist=[[0, 1, 1], [0, 1, 0]],
                                verified=[4, 2], width_steps=[0, 2])
    c = throughput.cell_of("x", 2, gen, [0.5, 0.1, 0.3], 2.0, 3.0, 0.0, widths=(2, 3))
    assert c.row_tokens == [4, 2] and c.new_tokens == 6
    assert c.seconds == 0.3 and c.tokens_per_second == pytest.approx(20.0)
    assert c.tau == pytest.approx(6 / 5) and c.mean_k == pytest.approx(6 / 3)
    assert c.batch_forwards == 3 and c.width_steps == {2: 0, 3: 2}
