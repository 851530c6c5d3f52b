"""Runs an experiment config: `python -m experiments.run --config=configs/quickstart.py`.

Overrides: `--config.max_new_tokens=128 --config.draft.sd_chain.k=6`. `--list` prints the
registered methods. Outputs go to `--workdir` (see specjax.bench.experiment).
Compiled programs are cached on disk (`experiment.enable_compilation_cache`;
`SPECJAX_XLA_CACHE=off` disables).

Sharded runs: `--config.mesh=data:2,model:4` (on CPU with fake devices:
`XLA_FLAGS=--xla_force_host_platform_device_count=8`). On several hosts (a TPU
VM slice, a SLURM job) start the same command on every host with
`--distributed`, which calls `jax.distributed.initialize()` (coordinator and
process ids auto-detected there) before anything touches the devices; process
0 writes the outputs.
"""

import jax
from absl import app, flags
from ml_collections import config_flags

from specjax.bench import experiment, registry

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "workdir/run", "Output directory.")
_LIST = flags.DEFINE_bool("list", False, "List the registered methods and exit.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() first (one process per host of "
    "a TPU VM slice / SLURM job; auto-detected there).")


def main(argv):
    del argv
    if _DISTRIBUTED.value:  # before anything touches the devices
        jax.distributed.initialize()
    if _LIST.value:
        print(registry.table())
        return
    if _CONFIG.value is None:
        raise app.UsageError("--config is required (e.g. --config=configs/quickstart.py)")
    cfg = experiment.from_config_dict(_CONFIG.value)
    experiment.enable_compilation_cache()
    result = experiment.run_experiment(cfg, _WORKDIR.value)
    if jax.process_index() != 0:
        return
    print(result["table"])
    if "paper_table" in result:
        print(result["paper_table"])
    print(f"results written to {_WORKDIR.value}/results.json")


if __name__ == "__main__":
    app.run(main)
