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
    spec = spec.strip()
    if spec in ("", "none"):
        return None
    name, _, rest = spec.partition(":")
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; valid: {sorted(POLICIES)} or 'none'")
    fields = settings.fields(POLICIES[name])
    kwargs = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or key not in fields:
            raise ValueError(f"bad argument {item!r} of policy {name!r}; valid keys: {sorted(fields)}")
        kwargs[key] = settings.convert(value, fields[key].type, f"policy {name!r}'s {key}")
    return POLICIES[name](**kwargs)


__all__ = [
    "NO_LIMIT", "POLICIES", "Confidence", "FixedLength", "Goodput", "Policy", "Schedule",
    "SpecDecPP", "measure_step_costs", "parent_confidence", "parse", "step_costs", "token_probs",
]
