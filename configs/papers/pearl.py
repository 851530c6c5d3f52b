"""PEARL (parallel drafting and verification), speedup per task layout.

    python -m experiments.run --config=configs/papers/pearl.py --workdir=workdir/papers/pearl

Liu et al., "PEARL: Parallel Speculative Decoding with Adaptive Draft Length"
(arXiv:2408.11850). Autoregressive, vanilla speculative decoding (fixed
gamma = 4) and PEARL (gamma = the measured target/draft forward-time ratio).
HumanEval, Spec-Bench math_reasoning (GSM8K) and MT-bench.
"""

from configs.papers._base import HUMANEVAL_20, paper_config


def get_config(arg: str | None = None):
    return paper_config(
        arg, layout="speedup_by_task",
        paper="Liu et al., PEARL: Parallel Speculative Decoding with Adaptive Draft Length "
              "(arXiv:2408.11850)",
        table="the main table (rows: methods; columns: HumanEval, GSM8K, MT-bench, MGSM "
              "speedups; mean accepted tokens)",
        paper_setting="CodeLlama 7B->34B, DeepSeek-Coder 1.3B->33B, Llama 2 7B->70B on A100s",
        here="Spec-Bench math_reasoning stands in for GSM8K; MGSM is not in Spec-Bench; one "
             "device, so PEARL's draft and target share the CPU (see README, PEARL)",
        methods="autoregressive,sd_chain/k=4,pearl",
        categories="mt_bench,math_reasoning",
        humaneval=HUMANEVAL_20)
