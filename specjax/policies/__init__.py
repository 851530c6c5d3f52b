"""Policies: how many and which drafted nodes each step verifies (see `base`).

  FixedLength, Schedule, Confidence, SpecDecPP   draft length rules (`length`)
  Goodput                                        SmartSpec batch goodput (`goodput`)

`parse("confidence:threshold=0.5")` builds one from a config string.
"""

from specjax import settings
from specjax.policies.base import NO_LIMIT, Policy, parent_confidence, token_probs
from specjax.policies.goodput import Goodput, measure_step_costs, step_costs
from specjax.policies.length import Confidence, FixedLength, Schedule, SpecDecPP

POLICIES = {
    "fixed": FixedLength,
    "schedule": Schedule,
    "confidence": Confidence,
    "specdecpp": SpecDecPP,
    "goodput": Goodput,
}


def parse(spec: str) -> Policy | None:
    """A policy from `name` or `name:key=value,key=value` ("none" -> None).

    Values are converted by the field's annotation (`specjax.settings`); tuples
    of floats are separated by ";" (`goodput:step_costs=1;1.2;1.5`).

    Raises:
      ValueError: unknown policy name or argument, listing the valid ones.
    """
    return settings.parse_named(spec, POLICIES, "policy")


__all__ = [
    "NO_LIMIT", "POLICIES", "Confidence", "FixedLength", "Goodput", "Policy", "Schedule",
    "SpecDecPP", "measure_step_costs", "parent_confidence", "parse", "step_costs", "token_probs",
]
