"""Loop overhead: the speculative loop vs its bare forwards (issue 17).

    python -m experiments.loop_overhead --config=configs/loop_overhead.py

Writes table.md and results.json into `--workdir` (default
workdir/loop_overhead); see specjax.bench.loop_overhead.
"""

import functools

from absl import app, flags
from ml_collections import config_flags

from specjax.bench import loop_overhead

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "workdir/loop_overhead", "Output directory.")


def main(argv):
    del argv
    if _CONFIG.value is None:
        raise app.UsageError("--config is required (e.g. --config=configs/loop_overhead.py)")
    cfg = loop_overhead.from_config_dict(_CONFIG.value)
    result = loop_overhead.run_experiment(cfg, _WORKDIR.value,
                                          log=functools.partial(print, flush=True))
    print(result["table"])
    print(f"results in {_WORKDIR.value}")


if __name__ == "__main__":
    app.run(main)
