"""Probes plain vs panel weights for a model's shapes on this machine: what
`layout="auto"` uses (`specjax.models.layout`).

    python -m experiments.layout_probe qwen2.5-coder-1.5b            # table + plan
    python -m experiments.layout_probe smollm2-135m --force          # measure again

MODEL is an asset name, a GGUF file or an HF checkpoint directory. The probe
is cached per machine (`<specjax cache>/layout/`); `--force` measures again.
Run it on an otherwise idle machine.
"""

from absl import app, flags

from specjax.models import layout, loading

_FORCE = flags.DEFINE_bool("force", False, "Measure again even if cached.")


def main(argv):
    if len(argv) != 2:
        raise app.UsageError("usage: python -m experiments.layout_probe MODEL [--force]")
    cfg = loading.load(argv[1], progress=False)[0]
    times = layout.probe_times(cfg, force=_FORCE.value)
    plan = layout.decide(times)
    print(layout.table(times))
    print(f"plan: layers {plan.body}, panelled LM head for rows {plan.head}")


if __name__ == "__main__":
    app.run(main)
