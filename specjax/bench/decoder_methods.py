"""The decoders of `specjax.decoders` that run their own loop, as benchmark methods.

Each builder returns a `Generator` whose `GenResult.tokens` is the decoder's main output
(its best beam or draft) and, for a decoder of several outputs, `GenResult.outputs`
all of them (best first), which `bench.quality` scores (the outputs' distinct-2 and
bits/token under the target):

  beam_search  (diverse) beam search, arXiv:1610.02424: G groups x K beams
  momentum     momentum decoding, arXiv:2212.02175 (its figures: rep-4, distinct-2)
  superposed   superposed decoding, arXiv:2405.18400: k drafts for one forward a step;
               the paper's coherence is the drafts' bits/token, its speed ratio per
               draft k x the speedup over the autoregressive baseline
  rerank       RankGen-style reranking, arXiv:2205.09726: N candidates sampled at
               `temperature`, the best by the target's per-token likelihood (the
               scorer; `decoders.rerank` takes any other)

Logits rules (grammar, mirostat) and guidance are not methods: they transform the
target for every method of a run (`config.transform`, `bench.transforms`).
"""

from __future__ import annotations

import dataclasses

from specjax.bench.runner import GenResult, Generator

# the registry names of these methods: not drafter x verifier compositions
NAMES = frozenset({"beam_search", "momentum", "superposed", "rerank"})


@dataclasses.dataclass(frozen=True)
class BeamSettings:
    """beams per group K, groups G (1: plain beam search), diversity lambda (Hamming
    penalty between groups), GNMT length penalty alpha."""

    beams: int = 2
    groups: int = 2
    diversity: float = 0.5
    length_penalty: float = 0.0


@dataclasses.dataclass(frozen=True)
class MomentumSettings:
    """top_k candidates, resistance weight alpha, resistance table R_1..R_n."""

    top_k: int = 5
    alpha: float = 0.2
    resistance: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 5.0)


@dataclasses.dataclass(frozen=True)
class SuperposedSettings:
    """num_drafts k, n-gram weight alpha (the n-gram tables are built from the prompt),
    temperature tau of the superposed law."""

    num_drafts: int = 3
    ngram_weight: float = 0.0
    temperature: float = 1.0


@dataclasses.dataclass(frozen=True)
class RerankSettings:
    """num_candidates N sampled at temperature (top_p) and reranked by the target's mean
    log-likelihood per token."""

    num_candidates: int = 4
    temperature: float = 0.8
    top_p: float = 1.0


def beam_search(ctx, s) -> Generator:
    from specjax.decoders.beam_search import beam_search_generate

    kw = s.of(BeamSettings)

    def fn(ids):
        g = beam_search_generate(ctx.target_params, ctx.target_cfg, [ids],
                                 max_new_tokens=ctx.max_new_tokens, eos_ids=ctx.eos_ids, **kw)
        order = sorted(range(len(g.tokens[0])), key=lambda i: -g.scores[0][i])
        beams = [g.tokens[0][i] for i in order]
        return GenResult(tokens=beams[0], target_calls=int(g.target_calls[0]), outputs=beams)

    return Generator(f"beam_search(K={kw['beams']},G={kw['groups']},lambda={kw['diversity']})",
                     fn)


def momentum(ctx, s) -> Generator:
    from specjax.decoders.momentum import momentum_generate

    kw = s.of(MomentumSettings)

    def fn(ids):
        g = momentum_generate(ctx.target_params, ctx.target_cfg, [ids],
                              max_new_tokens=ctx.max_new_tokens, eos_ids=ctx.eos_ids, **kw)
        return GenResult(tokens=g.tokens[0], target_calls=int(g.target_calls[0]))

    return Generator(f"momentum(k={kw['top_k']},alpha={kw['alpha']})", fn)


def superposed(ctx, s) -> Generator:
    from specjax.decoders.superposed import superposed_generate

    kw = s.of(SuperposedSettings)

    def fn(ids):
        g = superposed_generate(ctx.target_params, ctx.target_cfg, [ids],
                                max_new_tokens=ctx.max_new_tokens, eos_ids=ctx.eos_ids,
                                corpus=[ids] if kw["ngram_weight"] > 0 else None, **kw)
        return GenResult(tokens=g.tokens[0][0], target_calls=int(g.target_calls[0]),
                         outputs=g.tokens[0])

    return Generator(f"superposed(k={kw['num_drafts']},alpha={kw['ngram_weight']})", fn)


def rerank(ctx, s) -> Generator:
    import jax

    from specjax.decoders.rerank import sample_and_rerank
    from specjax.sampling import Sampling

    kw = s.of(RerankSettings)
    sampling = Sampling(temperature=kw["temperature"], top_p=kw["top_p"])

    def fn(ids):
        r = sample_and_rerank(ctx.target_params, ctx.target_cfg, [ids],
                              num_candidates=kw["num_candidates"],
                              max_new_tokens=ctx.max_new_tokens, sampling=sampling,
                              key=jax.random.key(ctx.seed), eos_ids=ctx.eos_ids)
        cands = r.candidates[0]
        # batched forwards: one per generated token (the prefill makes the first) + scoring
        return GenResult(tokens=cands[0], target_calls=max(map(len, cands)) + 1,
                         outputs=cands)

    return Generator(f"rerank(N={kw['num_candidates']},T={kw['temperature']})", fn)
