"""Keeping a long benchmark run under Linux's per-process memory-map limit.

XLA:CPU maps the machine code of every compiled program in many small memory
mappings (measured: ~2,900 per compiled speculative loop of the Qwen2.5 0.5B ->
1.5B pair, 28 unrolled layers). A run that holds a dozen methods' programs for
a couple of prompt buckets passes Linux's default `vm.max_map_count` of 65530,
and the process aborts inside a compile with "LLVM ERROR: Unable to allocate
section memory" (session 6, after 9 methods). Users without root cannot raise
the limit, so the runner keeps a budget instead: between generations it counts
the process's mappings and, past a fraction of the limit, drops JAX's
compiled executables (`jax.clear_caches()`); the methods still to run are then
read back from the on-disk compilation cache (`experiment.enable_compilation_cache`)
at the cost of a retrace, which the runner's compile timer keeps out of the
measured times.

Dropping the programs frees mappings but not measurably memory: in the Qwen-pair
run of session 8 the process stayed at 15.4 GB resident across each drop (the
weights, ~10 GB with the panel copies of the LM heads, and the allocator's
high-water mark), so the budget acts on mappings only; `peak_resident_bytes`
reports the memory.
"""

from __future__ import annotations

import dataclasses
import gc
import os

import jax

MAP_COUNT_FILE = "/proc/sys/vm/max_map_count"
MAPS_FILE = "/proc/self/maps"
STATM_FILE = "/proc/self/statm"
MIN_MAP_COUNT = 262144


def map_limit(path: str = MAP_COUNT_FILE) -> int | None:
    """Linux's per-process memory-map limit, or None where unknown (not Linux)."""
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def map_count(path: str = MAPS_FILE) -> int:
    """The number of memory mappings this process holds (0 where unknown)."""
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


def resident_bytes(path: str = STATM_FILE) -> int:
    """This process's resident memory in bytes (0 where unknown)."""
    try:
        with open(path) as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def proc_kilobytes(path: str, key: str) -> int | None:
    """The `key:  N kB` entry of a /proc status file in bytes (None where unknown)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_resident_bytes(path: str = "/proc/self/status") -> int | None:
    """This process's peak resident memory in bytes (VmHWM; None where unknown)."""
    return proc_kilobytes(path, "VmHWM")


def check_map_count(path: str = MAP_COUNT_FILE, minimum: int = MIN_MAP_COUNT) -> str | None:
    """A note if the memory-map limit is below `minimum` (None when fine or unknown).

    Runs still finish (`MapBudget` frees compiled programs), but more often reload
    them from the on-disk cache.
    """
    limit = map_limit(path)
    if limit is None or limit >= minimum:
        return None
    return (f"vm.max_map_count is {limit}: compiled programs will be dropped and reloaded from "
            f"the on-disk cache whenever the run nears the limit; `sudo sysctl -w "
            f"vm.max_map_count={4 * minimum}` avoids the reloads")


@dataclasses.dataclass
class MapBudget:
    """Drops compiled executables when the process nears its memory-map limit.

    Attributes:
      fraction: act once the mappings exceed this fraction of the limit. One
        Qwen-1.5B loop program holds ~3,000 mappings and a compile needs room
        for the next one, so the default leaves ~25,000 of the default 65,530.
      limit: the limit (default: read from /proc/sys/vm/max_map_count; None
        and unreadable = never act).
      clears: how many times the budget dropped the executables (for reports).
    """

    fraction: float = 0.6
    limit: int | None = dataclasses.field(default_factory=map_limit)
    clears: int = 0

    def relieve(self) -> bool:
        """Clears JAX's caches if the process holds too many mappings; True if it did."""
        if self.limit is None or map_count() <= self.fraction * self.limit:
            return False
        jax.clear_caches()
        gc.collect()
        self.clears += 1
        return True
