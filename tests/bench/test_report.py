"""Run outputs (CSV, LaTeX, plots) from hand-made records."""

import csv
import math
import sys

import pytest

from specjax.bench import metrics, report
from specjax.bench.metrics import Record

PNG = b"\x89PNG\r\n\x1a\n"


def rec(method, qid, category, seconds, calls, tokens, hist=()):
    return Record(method=method, question_id=qid, category=category, new_tokens=tokens,
                  seconds=seconds, target_calls=calls, steps=int(sum(hist)),
                  accept_hist=list(hist), tokens=list(range(tokens)))


def records():
    out = []
    for qid, cat, base_s in [("w1", "writing", 1.0), ("w2", "writing", 2.0), ("c1", "coding", 1.0)]:
        out.append(rec("autoregressive", qid, cat, base_s, 8, 8))
        out.append(rec("sd_chain(k=2)", qid, cat, base_s / 2, 4, 8, hist=[1, 0, 2]))
        out.append(rec("sd_chain(k=4)", qid, cat, base_s / (3 if cat == "coding" else 1.5), 3, 8,
                       hist=[0, 1, 0, 0, 1]))
        out.append(rec("a&b_%x", qid, cat, base_s, 10, 8))  # a peer: no histogram
    return out


def rows():
    return metrics.summarize(records(), "autoregressive", check_identity=True)


def test_csv_parses_back_to_the_same_numbers(tmp_path):
    summary = rows()
    path = tmp_path / "table.csv"
    path.write_text(report.csv_text(summary))
    back = report.read_csv(path)
    assert [b["method"] for b in back] == [s.method for s in summary]
    for s, b in zip(summary, back):
        for name, value in vars(s).items():
            if isinstance(value, float) and math.isnan(value):
                assert math.isnan(b[name]), name
            else:
                assert b[name] == value, (s.method, name)  # exact: floats written with repr
    raw = list(csv.reader(path.read_text().splitlines()))  # plain CSV: header + one line per method
    assert len(raw) == 1 + len(summary) and raw[0][-1] == "accept_ge_4"
    assert float(raw[2][raw[0].index("tau")]) == pytest.approx(summary[1].tau)


def test_latex_rows_and_escaping():
    summary = rows()
    tex = report.latex_table(summary)
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    body = tex.split("\\midrule\n")[1].split("\\bottomrule")[0].strip().splitlines()
    assert len(body) == len(summary)
    cells = [line.removesuffix(r" \\").split(" & ") for line in body]
    assert all(len(c) == 10 for c in cells)
    assert [c[0] for c in cells] == ["autoregressive", r"sd\_chain(k=2)", r"sd\_chain(k=4)",
                                     r"a\&b\_\%x"]
    sd2 = summary[1]
    assert cells[1][2] == f"{sd2.tau:.2f}" and cells[1][9] == "yes" and cells[0][9] == "-"
    assert cells[1][7] == f"{sd2.modelled_speedup:.2f}$\\times$"
    assert cells[3][7] == "--"  # no modelled speedup without a histogram
    assert report.tex_escape("a_b{c}~^\\") == (r"a\_b\{c\}\textasciitilde{}"
                                               r"\textasciicircum{}\textbackslash{}")


def test_plot_data():
    by_cat = report.speedup_by_category(records())
    assert by_cat["sd_chain(k=2)"] == {"writing": 2.0, "coding": 2.0}
    assert by_cat["sd_chain(k=4)"] == {"writing": 1.5, "coding": 3.0}
    assert "autoregressive" not in by_cat
    assert report.draft_length("sd_chain(k=3)") == ("sd_chain", 3)
    assert report.draft_length("sd_chain/k=6/self_layers=8") == ("sd_chain/self_layers=8", 6)
    assert report.draft_length("pld(k=10, x=1)") == ("pld(x=1)", 10)
    assert report.draft_length("sd_tree(3.2.1)") is None
    assert report.draft_length("block=2") is None
    taus = report.tau_by_draft_length(rows())
    assert taus == {"sd_chain": [(2, pytest.approx(7 / 3)), (4, pytest.approx(3.5))]}
    assert report.conditional_acceptance([0.8, 0.4, 0.0, 0.0])[:3] == pytest.approx([0.8, 0.5, 0])
    assert math.isnan(report.conditional_acceptance([0.8, 0.4, 0.0, 0.0])[3])
    assert report._trim_zeros([0.5, 0.2, 0.0, 0.0, 0.0]) == [0.5, 0.2, 0.0]


def test_write_report_writes_tables_and_non_empty_pngs(tmp_path):
    out = report.write_report(tmp_path, rows(), records())
    assert out["skipped"] == {}
    assert sorted(p.name for p in out["plots"]) == sorted(report.PLOT_NAMES)
    for p in out["plots"]:
        data = p.read_bytes()
        assert data.startswith(PNG) and len(data) > 5000
    assert (tmp_path / "table.csv").exists() and (tmp_path / "table.tex").exists()


def test_nothing_to_plot_is_skipped(tmp_path):
    recs = [r for r in records() if r.method in ("autoregressive", "a&b_%x")]
    summary = metrics.summarize(recs, "autoregressive", True)
    out = report.write_report(tmp_path, summary, recs)
    assert [p.name for p in out["plots"]] == ["speedup_by_category.png"]
    assert set(out["skipped"]) == {"tau_vs_draft_length.png", "accept_per_depth.png"}


def test_without_matplotlib_plots_raise_and_tables_are_written(tmp_path, monkeypatch):
    for mod in ("matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, mod, None)  # makes the import fail
    with pytest.raises(ImportError, match=r"specjax\[plots\]"):
        report.plot_acceptance_per_depth(rows(), tmp_path / "x.png")
    with pytest.warns(UserWarning, match="not written: plots need matplotlib"):
        out = report.write_report(tmp_path, rows(), records())
    assert out["plots"] == [] and len(out["skipped"]) == 3
    assert all("plots" in why for why in out["skipped"].values())
    assert report.read_csv(tmp_path / "table.csv")[0]["method"] == "autoregressive"
    assert not list(tmp_path.glob("*.png"))
