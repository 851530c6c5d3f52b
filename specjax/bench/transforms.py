"""Target transforms of a benchmark run: every method decodes the transformed target.

`config.transform = "grammar"` makes each method (the autoregressive baseline and every
speculative method) decode under the JSON schema of its prompt (`decoders.grammar`), so
one run compares constrained autoregressive decoding with constrained speculative
decoding, outputs identical when greedy; "mirostat:tau=3" samples under Mirostat's
perplexity control (`decoders.mirostat`); "cfg:scale=1.5" under classifier-free
guidance (`decoders.guidance`). A transform is a `LanguageModel` transform, so the
decode loops run it unchanged (`decoders.rules`).

Spec: `name` or `name:key=value,key=value` (values converted by the dataclass field's
type, `specjax.settings`).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from specjax import settings
from specjax.bench.prompts import Prompt
from specjax.models.config import ModelConfig
from specjax.models.lm import DecoderLM
from specjax.sampling import Sampling


@dataclasses.dataclass(frozen=True)
class Grammar:
    """Constrained decoding under each prompt's JSON schema (`Prompt.schema`;
    `decoders.grammar`, tables cached per schema and tokenizer)."""

    def check(self, sampling: Sampling) -> None:
        pass

    def wrap(self, cfg: ModelConfig, params, prompt: Prompt, tokenizer) -> tuple[Any, Any]:
        from specjax.decoders import grammar, rules

        if not prompt.schema:
            raise ValueError(f"transform 'grammar' needs prompts with a JSON schema; "
                             f"{prompt.question_id!r} has none (prompts.json_schemas)")
        rule, gparams = grammar.compile_schema(json.loads(prompt.schema), tokenizer,
                                               vocab_size=cfg.vocab_size)
        return rules.RuleLM(DecoderLM(cfg), rule), rules.rule_params(params, gparams)


@dataclasses.dataclass(frozen=True)
class Mirostat:
    """Mirostat's perplexity control (`decoders.mirostat`): version 1 or 2, target
    surprise tau (bits/token), learning rate eta; needs sampling at temperature 1."""

    version: int = 2
    tau: float = 3.0
    eta: float = 0.1

    def rule(self):
        from specjax.decoders import mirostat

        if self.version not in (1, 2):
            raise ValueError(f"mirostat's version must be 1 or 2, got {self.version}")
        cls = mirostat.MirostatV1 if self.version == 1 else mirostat.MirostatV2
        return cls(tau=self.tau, eta=self.eta)

    def check(self, sampling: Sampling) -> None:
        self.rule()
        if sampling.greedy or sampling.temperature != 1.0 or sampling.top_k or sampling.top_p < 1:
            raise ValueError("transform 'mirostat' samples from its truncated law itself: set "
                             "sampling.temperature=1 (no top_k / top_p)")

    def wrap(self, cfg: ModelConfig, params, prompt: Prompt, tokenizer) -> tuple[Any, Any]:
        from specjax.decoders import rules

        return rules.RuleLM(DecoderLM(cfg), self.rule()), rules.rule_params(params)


@dataclasses.dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance (`decoders.guidance`) at `scale` (1 = the plain model);
    the unconditional context is each prompt's last token (the paper's practice)."""

    scale: float = 1.5

    def check(self, sampling: Sampling) -> None:
        from specjax.decoders.guidance import GuidedLM
        from specjax.models.lm import MarkovLM

        GuidedLM(MarkovLM(2), self.scale)  # validates the scale

    def wrap(self, cfg: ModelConfig, params, prompt: Prompt, tokenizer) -> tuple[Any, Any]:
        from specjax.decoders.guidance import GuidedLM, guided_params

        return GuidedLM(DecoderLM(cfg), self.scale), guided_params(params, [[]])


TRANSFORMS = {"grammar": Grammar, "mirostat": Mirostat, "cfg": Guidance}


def parse(spec: str):
    """A transform from its spec ("" / "none" -> None).

    Raises:
      ValueError: an unknown name or key, or a bad value (naming the valid ones).
    """
    return settings.parse_named(spec, TRANSFORMS, "transform")
