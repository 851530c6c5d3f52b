"""Benchmarks: methods by name, prompts, timed runs, metrics and reports.

The layer above the library (it may import everything in `specjax`; nothing
in `specjax` outside `bench` imports it):

  ExperimentConfig, run_experiment   a config file's run: `python -m experiments.run`
  registry                           every method by name (`registry.parse("sd_chain/k=4")`)
  load_spec_bench, load_humaneval    the prompt sets (Spec-Bench ships with the package)
  run, Generator, GenResult          the timed runner over prompts (`bench.runner`)
  Record, Summary, summarize         per-generation records and their per-method summary
  report                             CSV / LaTeX / plots of summaries
  enable_compilation_cache           JAX's on-disk compilation cache for long runs
  MapBudget                          keeps a run under Linux's memory-map limit

    from specjax import bench
    bench.run_experiment(bench.from_config_dict(config), workdir="workdir/x")
"""

from specjax.bench import registry, report
from specjax.bench.experiment import (
    ExperimentConfig,
    enable_compilation_cache,
    from_config_dict,
    load_models,
    run_experiment,
)
from specjax.bench.map_budget import MapBudget
from specjax.bench.metrics import Record, Summary, summarize
from specjax.bench.prompts import Prompt, load_humaneval, load_spec_bench
from specjax.bench.runner import GenResult, Generator, run

__all__ = [
    "ExperimentConfig", "GenResult", "Generator", "MapBudget", "Prompt", "Record", "Summary",
    "enable_compilation_cache", "from_config_dict", "load_humaneval", "load_models",
    "load_spec_bench", "registry", "report", "run", "run_experiment", "summarize",
]
