"""SmartSpec's step costs from the speculative loop's own measured step time.

SmartSpec (Liu et al., "Optimizing Speculative Decoding for Serving Large
Language Models Using Goodput", arXiv:2406.14066) chooses the speculation
length k from a batch-time model T(k). `policies.measure_step_costs` builds T
from bare forwards (k draft forwards + one target forward of the verification
width + the draft's catch-up). The loop runs more than its forwards (tree
bookkeeping, the width switch, commits) and its forwards may run at another
speed than alone, so the model here is calibrated on the loop itself:

    T_loop(k) = a + b * T_bare(k)      (seconds per step)

fitted by least squares to the loop's measured seconds per step at a few
fixed lengths (`policies.FixedLength(k)` on the same chain drafter, verifier
and verification widths SmartSpec runs; default k = 0 and k = K). `a` is the
loop's own per-step cost, `b` the ratio of in-loop to bare forward time. The
goodput policy only uses the ratios T(k) / T(0) (`LoopCalibration.costs`).

Timing the loop: each length's program is compiled once (untimed), then the
median of `repeats` runs over a synthetic prompt of `context` tokens counts,
minus the target's and the draft's prefills (timed alone, `timing.prefill_time`),
divided by the loop's steps.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from specjax import decode, policies, verify
from specjax.bench.loop_runs import bucket_and_cache, generation_of, loop_calls, padded
from specjax.drafters.draft_model import DraftModel
from specjax.models.lm import LanguageModel
from specjax.sampling import GREEDY
from specjax.timing import interleaved_seconds, median_seconds, prefill_time


@dataclasses.dataclass(frozen=True)
class LoopCalibration:
    """A loop-calibrated SmartSpec time model.

    Attributes:
      bare: T_bare(0..K) from bare forwards, normalised to T_bare(0) = 1
        (`policies.measure_step_costs`).
      measured: {k: measured seconds per loop step at FixedLength(k)}.
      a, b: the fit T_loop(k) = a + b * bare[k], in seconds.
    """

    bare: tuple[float, ...]
    measured: Mapping[int, float]
    a: float
    b: float

    def seconds(self, k: int) -> float:
        """Modelled seconds of a loop step drafting k tokens."""
        return self.a + self.b * self.bare[k]

    @property
    def costs(self) -> tuple[float, ...]:
        """`Goodput.step_costs`: T_loop(0..K) / T_loop(0)."""
        t0 = self.seconds(0)
        return tuple(self.seconds(k) / t0 for k in range(len(self.bare)))

    def modelled_seconds(self, steps_per_k: Sequence[int]) -> float:
        """Modelled decode time of a run that took steps_per_k[k] steps drafting k."""
        return float(sum(n * self.seconds(k) for k, n in enumerate(steps_per_k)))


def fit(bare: Sequence[float], measured: Mapping[int, float]) -> tuple[float, float]:
    """Least-squares (a, b) of measured[k] = a + b * bare[k].

    Raises:
      ValueError: fewer than two lengths with distinct bare costs, or a fit
        whose modelled step times are not all positive (b <= 0 or a step time
        <= 0: the measurements are noise; pass step_costs explicitly).
    """
    ks = sorted(measured)
    if any(k < 0 or k >= len(bare) for k in ks):
        raise ValueError(f"measured lengths {ks} must lie in 0..{len(bare) - 1}")
    x = np.asarray([bare[k] for k in ks], np.float64)
    y = np.asarray([measured[k] for k in ks], np.float64)
    if len(set(x.tolist())) < 2:
        raise ValueError(f"the calibration needs two lengths with distinct bare costs; "
                         f"got lengths {ks}")
    b, a = np.polyfit(x, y, 1)
    modelled = a + b * np.asarray(bare, np.float64)
    if b <= 0 or np.any(modelled <= 0):
        raise ValueError(f"loop calibration failed: measured seconds per step "
                         f"{dict(zip(ks, y.round(6).tolist()))} against bare costs "
                         f"{x.round(4).tolist()} give a = {a:.3g}, b = {b:.3g}; the timings are "
                         f"noise (machine busy?); pass step_costs explicitly")
    return float(a), float(b)


def method_at(draft: LanguageModel, k: int, max_k: int, max_pending: int,
              widths: tuple[int, ...] | None) -> decode.Method:
    """The chain SmartSpec runs (`DraftModel.chain` of `max_k`, greedy verification),
    held at k drafts per step."""
    return decode.Method(DraftModel.chain(draft, max_k, max_pending), verify.greedy,
                         policies.FixedLength(k), widths=widths)


def calibration_prompt(vocab_size: int, batch: int, context: int) -> tuple[jax.Array, jax.Array]:
    """A deterministic synthetic prompt (tokens int32[B, context], lengths int32[B])."""
    row = (np.arange(context, dtype=np.int64) * 7919 + 13) % vocab_size
    tokens = jnp.asarray(np.tile(row, (batch, 1)), jnp.int32)
    return tokens, jnp.full((batch,), context, jnp.int32)


def loop_step_seconds(target: LanguageModel, target_params, draft: LanguageModel, draft_params,
                      *, max_k: int, ks: Sequence[int], max_pending: int = 1,
                      widths: tuple[int, ...] | None = None, batch: int = 1, context: int = 256,
                      new_tokens: int = 32, repeats: int = 3) -> dict[int, float]:
    """{k: seconds per decode step of the speculative loop held at k drafts}."""
    tokens, lengths = calibration_prompt(target.vocab_size, batch, context)
    max_len = decode.cache_size(context, new_tokens, extra=max_k + 1)
    prefills = (prefill_time(target, target_params, tokens, lengths, max_len, repeats)
                + prefill_time(draft, draft_params, tokens, lengths, max_len, repeats))
    out = {}
    for k in ks:
        method = method_at(draft, k, max_k, max_pending, widths)

        def run(method=method):
            return decode.speculative_loop(
                target_params, draft_params, tokens, lengths, jax.random.key(0), target=target,
                method=method, max_new_tokens=new_tokens, sampling=GREEDY, eos_ids=(),
                max_len=max_len)

        _, stats = jax.block_until_ready(run())
        steps = int(np.max(np.asarray(stats.steps)))  # while-loop iterations
        out[int(k)] = max(median_seconds(run, repeats) - prefills, 1e-9) / steps
    return out


def calibrate(target: LanguageModel, target_params, draft: LanguageModel, draft_params, *,
              max_k: int, max_pending: int = 1, widths: tuple[int, ...] | None = None,
              batch: int = 1, context: int = 256, ks: Sequence[int] | None = None,
              new_tokens: int = 32, repeats: int = 3) -> LoopCalibration:
    """Bare-forward costs (`policies.measure_step_costs`) and the loop's measured step
    time at lengths `ks` (default 0 and `max_k`), fitted (`fit`)."""
    bare = policies.measure_step_costs(target, target_params, draft, draft_params, batch=batch,
                                       max_k=max_k, context=context, reps=repeats,
                                       max_pending=max_pending, widths=widths)
    ks = (0, max_k) if ks is None else tuple(ks)
    measured = loop_step_seconds(target, target_params, draft, draft_params, max_k=max_k, ks=ks,
                                 max_pending=max_pending, widths=widths, batch=batch,
                                 context=context, new_tokens=new_tokens, repeats=repeats)
    a, b = fit(bare, measured)
    return LoopCalibration(bare=bare, measured=measured, a=a, b=b)


# -- modelled vs measured -----------------------------------------------------


def measure_smartspec(target: LanguageModel, target_params, draft: LanguageModel, draft_params,
                      prompts: Sequence[Sequence[int]], *, max_new_tokens: int, max_k: int = 4,
                      max_pending: int = 4, repeats: int = 3,
                      log: Callable[[str], None] = print) -> dict:
    """SmartSpec with loop-calibrated and with bare-forward step costs against the
    autoregressive loop (batch 1, greedy, methods interleaved per prompt), and how
    close the calibrated model's speedup is to the measured one.

    The calibration runs once at the run's mean context; its fit is checked at a
    held-out length (k = max_k // 2, measured but not fitted). Per prompt and
    method: decode seconds (prefills subtracted), tokens, steps per drafted length
    (`SpecStats.width_steps` with one width per length); the modelled speedup is
    the autoregressive decode time over `LoopCalibration.modelled_seconds` of the
    steps the run took.
    """
    widths = tuple(range(1, max_k + 2))  # one width per drafted length
    bucket, max_len = bucket_and_cache(prompts, max_new_tokens, extra=max_k + 1)
    context = int(np.mean([len(p) for p in prompts])) + max_new_tokens // 2
    common = dict(max_k=max_k, max_pending=max_pending, widths=widths, context=context,
                  repeats=repeats)
    cal = calibrate(target, target_params, draft, draft_params, **common)
    mid = max_k // 2
    held_out = loop_step_seconds(target, target_params, draft, draft_params, ks=(mid,),
                                 **common)[mid]
    log(f"calibration: a = {1e3 * cal.a:.2f} ms, b = {1e3 * cal.b:.2f} ms per bare unit; held-out "
        f"k = {mid}: modelled {1e3 * cal.seconds(mid):.2f} ms, measured {1e3 * held_out:.2f} ms")
    chain = DraftModel.chain(draft, max_k, max_pending)
    ms = {"smartspec_loop": cal.costs, "smartspec_bare": cal.bare}
    methods = {"autoregressive": None, **{
        name: decode.Method(chain, verify.greedy, policies.Goodput(costs), widths=widths)
        for name, costs in ms.items()}}
    rows = []
    for i, ids in enumerate(prompts):
        tokens, lengths = padded(ids, bucket, target.vocab_size)
        times = interleaved_seconds(loop_calls(target, target_params, draft_params, tokens,
                                               lengths, methods, max_new_tokens=max_new_tokens,
                                               max_len=max_len), repeats)
        t_pre = prefill_time(target, target_params, tokens, lengths, max_len, repeats)
        d_pre = prefill_time(draft, draft_params, tokens, lengths, max_len, repeats)
        ref = None
        for name, (out, seconds) in times.items():
            _, stats, toks = generation_of(out, methods[name] is not None)
            n = len(toks)
            ref = toks if ref is None else ref
            per_k = [n - 1] if stats is None else np.asarray(stats.width_steps).tolist()
            rows.append(dict(method=name, prompt=i, tokens=n,
                             decode_seconds=seconds - t_pre - (0.0 if stats is None else d_pre),
                             steps_per_k=per_k, identical=bool(np.array_equal(toks, ref))))
            log(f"prompt {i} {name:16s} {1e3 * rows[-1]['decode_seconds'] / n:8.2f} ms/token")
    return {"calibration": dict(bare=cal.bare, measured=dict(cal.measured), a=cal.a, b=cal.b,
                                costs=cal.costs, held_out_k=mid, held_out_measured=held_out,
                                held_out_modelled=cal.seconds(mid)),
            "rows": rows, "summary": summarize_smartspec(rows, cal)}


def summarize_smartspec(rows: Sequence[dict], cal: LoopCalibration) -> dict:
    """Medians over prompts: measured speedup over the autoregressive loop (decode
    phase), the calibrated model's speedup, tokens per step, identity."""
    ar = {r["prompt"]: r["decode_seconds"] / r["tokens"] for r in rows
          if r["method"] == "autoregressive"}
    out = {}
    for name in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == name]
        entry = {"speedup": statistics.median(ar[r["prompt"]] * r["tokens"] / r["decode_seconds"]
                                              for r in rs),
                 "tokens_per_step": statistics.median(r["tokens"] / max(sum(r["steps_per_k"]), 1)
                                                      for r in rs),
                 "identical": all(r["identical"] for r in rs)}
        if name != "autoregressive":
            entry["modelled_speedup"] = statistics.median(
                ar[r["prompt"]] * r["tokens"] / cal.modelled_seconds(r["steps_per_k"])
                for r in rs)
            entry["mean_k"] = statistics.median(
                float(np.dot(np.arange(len(r["steps_per_k"])), r["steps_per_k"]))
                / max(sum(r["steps_per_k"]), 1) for r in rs)
        out[name] = entry
    return out
