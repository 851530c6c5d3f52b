"""Paper-table layouts on hand-made records, and the paper configs."""

import importlib

import pytest

from specjax.bench import experiment, paper_tables, registry
from specjax.bench.metrics import Record
from specjax.bench.paper_tables import RunInfo

PAPERS = ["leviathan_sd", "spectr", "rsd", "token_recycling", "cs_drafting", "specdecpp",
          "dyspec", "pearl", "mlp_speculator", "medusa_eagle"]
INFO = RunInfo(model="target", draft_model="draft", temperature=0.0)


def rec(method, qid, category, seconds, hist=(), tokens=6, calls=None):
    steps = int(sum(hist))
    return Record(method=method, question_id=qid, category=category, new_tokens=tokens,
                  seconds=seconds, target_calls=calls if calls is not None else tokens,
                  steps=steps, accept_hist=list(hist))


RECORDS = [
    rec("autoregressive", "a", "writing", 6.0), rec("autoregressive", "b", "roleplay", 6.0),
    rec("autoregressive", "c", "humaneval", 6.0),
    # tau = 2 on every prompt (hist [0, 3]: 3 steps of 2 tokens)
    rec("sd_chain(k=1)", "a", "writing", 3.0, hist=[0, 3], calls=4),
    rec("sd_chain(k=1)", "b", "roleplay", 2.0, hist=[0, 3], calls=4),
    rec("sd_chain(k=1)", "c", "humaneval", 1.5, hist=[0, 3], calls=4),
    # tau = 3 (2 steps of 3 tokens)
    rec("sd_chain(k=2)", "a", "writing", 2.0, hist=[0, 0, 2], calls=3),
    rec("sd_chain(k=2)", "b", "roleplay", 2.0, hist=[0, 0, 2], calls=3),
    rec("sd_chain(k=2)", "c", "humaneval", 1.0, hist=[0, 0, 2], calls=3),
]


def rows_of(lines):
    return {ln.split(" | ")[0].lstrip("| "): ln.strip("| ").split(" | ") for ln in lines[2:]}


def test_acceptance_from_tau_inverts_eq1():
    for gamma in (1, 3, 7):
        for alpha in (0.0, 0.3, 0.8, 0.99):
            tau = sum(alpha ** i for i in range(gamma + 1))
            assert paper_tables.acceptance_from_tau(tau, gamma) == pytest.approx(alpha, abs=1e-6)
    assert paper_tables.acceptance_from_tau(9.0, 3) == pytest.approx(1.0)  # clipped to gamma+1


def test_draft_length_from_method_names():
    assert paper_tables.draft_length("sd_chain(k=4)") == 4
    assert paper_tables.draft_length("sd_schedule(max_k=8)+Schedule") == 8
    assert paper_tables.draft_length("pearl(gamma=3)") == 3
    assert paper_tables.draft_length("sd_tree(2.2.1)") is None
    assert paper_tables.draft_length("aded(tr80,c=0.5)") is None


def test_speedup_by_task_pools_mt_bench():
    lines = paper_tables.speedup_by_task(RECORDS, INFO)
    assert lines[0] == "| Method | MT-bench | HumanEval | MAT (tau) | Overall |"
    rows = rows_of(lines)
    # sd_chain(k=1): MT-bench ratios 2, 3 -> median 2.5; HumanEval 4; overall median(2,3,4)=3
    assert rows["sd_chain(k=1)"][1:] == ["2.50x", "4.00x", "2.00", "3.00x"]
    assert rows["sd_chain(k=2)"][1:] == ["3.00x", "6.00x", "3.00", "3.00x"]
    assert rows["autoregressive"][1:] == ["1.00x", "1.00x", "1.00", "1.00x"]


def test_leviathan_rows_and_alpha():
    rows = paper_tables.leviathan(RECORDS, INFO)
    body = [r.strip("| ").split(" | ") for r in rows[2:]]
    assert [(r[0], r[3]) for r in body] == [("MT-bench", "sd_chain(k=1)"),
                                             ("MT-bench", "sd_chain(k=2)"),
                                             ("HumanEval", "sd_chain(k=1)"),
                                             ("HumanEval", "sd_chain(k=2)")]
    # k = 1, tau = 2 -> alpha = 1; k = 2, tau = 3 -> alpha = 1
    assert body[0][1:] == ["draft", "0", "sd_chain(k=1)", "1", "1.00", "2.00", "2.50x"]
    half = [rec("sd_chain(k=2)", "a", "qa", 1.0, hist=[2, 0, 2])]  # tau = (2 + 6) / 4 = 2
    (row,) = [r.strip("| ").split(" | ") for r in paper_tables.leviathan(half, INFO)[2:]]
    assert row[5] == "0.62" and row[6] == "2.00"  # 1 + a + a^2 = 2 -> a = 0.618


def test_block_efficiency_and_best_fixed_k():
    rows = rows_of(paper_tables.block_efficiency(RECORDS, INFO))
    # step cost: (6.5 s / 12 calls) / (18 s / 18 calls); MBSU = tau / cost
    cost = (6.5 / 12) / (18 / 18)
    assert rows["sd_chain(k=1)"][2] == f"{cost:.2f}x"
    assert rows["sd_chain(k=1)"][3] == f"{2 / cost:.2f}"
    assert rows["sd_chain(k=1)"][5] == "3.00"  # median tokens/s: 6/3, 6/2, 6/1.5
    best = rows_of(paper_tables.best_fixed_k(RECORDS, INFO))
    assert best["sd_chain(k=1)"][4] == "(best fixed K)"  # 3.00x, first of the tie
    adaptive = RECORDS + [rec("specdecpp(max_k=8)+SpecDecPP", q, c, s, hist=[0, 0, 0, 1])
                          for q, c, s in (("a", "writing", 1.5), ("b", "roleplay", 1.5),
                                          ("c", "humaneval", 1.5))]
    best = rows_of(paper_tables.best_fixed_k(adaptive, INFO))
    assert best["specdecpp(max_k=8)+SpecDecPP"][3:] == ["4.00x", "+33.3%"]


def test_render_header_and_errors():
    note = paper_tables.PaperNote("P (arXiv:1)", "Table 9", "big GPUs", "stand-ins")
    text = paper_tables.render("speedup_by_task", note, RECORDS, INFO)
    assert text.startswith("**P (arXiv:1)**, Table 9.")
    assert "draft -> target, temperature 0, 3 prompts" in text and "stand-ins" in text
    with pytest.raises(ValueError, match="unknown paper table layout 'x'; valid"):
        paper_tables.render("x", note, RECORDS, INFO)
    with pytest.raises(ValueError, match="no records"):
        paper_tables.render("leviathan", note, [], INFO)
    with pytest.raises(ValueError, match="unknown config.paper.layout 'nope'"):
        experiment.from_config_dict(dict(model="m", methods="autoregressive",
                                         paper=dict(layout="nope")))
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['title'\] in config.paper"):
        experiment.from_config_dict(dict(model="m", methods="autoregressive",
                                         paper=dict(title="x")))


@pytest.mark.parametrize("name", PAPERS)
def test_paper_configs_are_valid(name):
    mod = importlib.import_module(f"configs.papers.{name}")
    for variant in ("", "small", "tiny", "smollm2+t0.6"):
        cfg = experiment.from_config_dict(mod.get_config(variant))
        assert cfg.paper.layout in paper_tables.LAYOUTS and cfg.paper.paper and cfg.paper.table
        assert "arXiv:" in cfg.paper.paper
        for m in cfg.methods.split(","):
            registry.parse(m)
        assert experiment.load_prompts(cfg.prompts)
        assert cfg.methods.startswith("autoregressive")
    assert experiment.from_config_dict(mod.get_config("smollm2+t0.6")).sampling.temperature == 0.6
    assert len(experiment.load_prompts(experiment.from_config_dict(
        mod.get_config("tiny")).prompts)) == 1
    with pytest.raises(ValueError, match="unknown variant 'huge'"):
        mod.get_config("huge")


def test_optimal_multidraft_is_the_theory_config():
    from configs import theory_optimal
    from configs.papers import optimal_multidraft

    assert optimal_multidraft.get_config().to_dict() == theory_optimal.get_config().to_dict()


@pytest.mark.slow
def test_paper_config_end_to_end(tmp_path):
    """A paper config's tiny variant on SmolLM2-135M writes paper_table.md."""
    from configs.papers import cs_drafting

    cfg = experiment.from_config_dict(cs_drafting.get_config("tiny+smollm2"))
    result = experiment.run_experiment(cfg, tmp_path, progress=False)
    text = (tmp_path / "paper_table.md").read_text()
    assert text == result["paper_table"] and "Cascade Speculative Drafting" in text
    assert "| Method | Math | MAT (tau) | Overall |" in text
    for row in result["summary"]:
        assert row["identical"] in ("-", "yes"), row
