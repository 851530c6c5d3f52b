"""The runner stays under Linux's memory-map limit by dropping compiled programs
(`bench.map_budget`), and the results do not change when it does."""

import jax
import jax.numpy as jnp

from specjax.bench import map_budget
from specjax.bench.map_budget import MapBudget, map_count
from specjax.bench.prompts import Prompt
from specjax.bench.runner import GenResult, Generator, run


def _programs(n, offset=0):
    """n distinct compiled programs (each holds a few memory mappings)."""
    fs = [jax.jit(lambda x, i=i + offset: jnp.sin(x @ x.T + i).sum()) for i in range(n)]
    for f in fs:
        f(jnp.ones((32, 32))).block_until_ready()
    return fs


def test_map_limit_and_count(tmp_path):
    f = tmp_path / "max_map_count"
    f.write_text("65530\n")
    assert map_budget.map_limit(str(f)) == 65530
    assert map_budget.map_limit(str(tmp_path / "missing")) is None
    assert "vm.max_map_count is 65530" in map_budget.check_map_count(str(f))
    f.write_text("1048576\n")
    assert map_budget.check_map_count(str(f)) is None
    assert map_budget.check_map_count(str(tmp_path / "missing")) is None
    assert map_count() > 0  # Linux


def test_budget_drops_compiled_programs_only_past_the_limit():
    fs = _programs(12)
    held = map_count()
    assert not MapBudget(limit=10 * held).relieve()  # far under: nothing dropped
    assert not MapBudget(limit=None).relieve()  # unknown limits: never acts
    assert fs[0]._cache_size() == 1
    budget = MapBudget(fraction=0.5, limit=held)  # past half of today's count
    assert budget.relieve() and budget.clears == 1
    assert fs[0]._cache_size() == 0 and map_count() < held


def test_runner_relieves_between_generations_with_same_results():
    def make(name, k):
        f = jax.jit(lambda x: (jnp.cumsum(x) * k) % 97)

        def fn(ids):
            return GenResult(tokens=[int(t) for t in f(jnp.asarray(ids))], target_calls=1)

        return Generator(name, fn)

    gens = [make(f"m{k}", k) for k in range(1, 5)]
    prompts = [Prompt("humaneval", str(i), "humaneval", ("x",) * 1, raw=True) for i in range(3)]

    class Tok:
        def encode(self, text, add_special_tokens=False):
            return [1, 2, 3, len(text)]

        def decode(self, ids, skip_special_tokens=True):
            return " ".join(map(str, ids))

    free = run(gens, prompts, Tok(), progress=False,
               map_budget=MapBudget(limit=None))
    budget = MapBudget(fraction=0.0, limit=1)  # always over: drop every time
    tight = run(gens, prompts, Tok(), progress=False, map_budget=budget)
    assert budget.clears == len(gens) * len(prompts)
    assert [r.tokens for r in tight] == [r.tokens for r in free]
    # the first generation reused the free run's program; every later one was dropped before
    assert all(r.compile_seconds > 0 for r in tight[1:]), [r.compile_seconds for r in tight]


def test_proc_readings(tmp_path):
    f = tmp_path / "status"
    f.write_text("Name:\tpython\nVmHWM:\t  2048 kB\nVmRSS:\t 1024 kB\n")
    assert map_budget.proc_kilobytes(str(f), "VmHWM") == 2048 * 1024
    assert map_budget.proc_kilobytes(str(f), "VmSwap") is None
    assert map_budget.peak_resident_bytes(str(tmp_path / "missing")) is None
    assert map_budget.peak_resident_bytes() >= map_budget.resident_bytes() > 0
