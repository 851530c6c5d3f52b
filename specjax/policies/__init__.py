"""Policies: how many and which drafted nodes each step verifies (see `base`).

  FixedLength, Schedule, Confidence, SpecDecPP   draft length rules (`length`)
  Goodput                                        SmartSpec batch goodput (`goodput`)

`parse("confidence:threshold=0.5")` builds one from a config string.
"""

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

    Raises:
      ValueError: unknown policy name or argument, listing the valid ones.
    """
    import dataclasses

    spec = spec.strip()
    if spec in ("", "none"):
        return None
    name, _, rest = spec.partition(":")
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; valid: {sorted(POLICIES)} or 'none'")
    cls = POLICIES[name]
    fields = {f.name: f.type for f in dataclasses.fields(cls)}
    kwargs = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or key not in fields:
            raise ValueError(f"bad argument {item!r} of policy {name!r}; valid keys: {sorted(fields)}")
        if key == "step_costs":
            kwargs[key] = tuple(float(x) for x in value.split(";"))
        else:
            kwargs[key] = float(value) if "." in value or "e" in value else int(value)
    return cls(**kwargs)


__all__ = [
    "NO_LIMIT", "POLICIES", "Confidence", "FixedLength", "Goodput", "Policy", "Schedule",
    "SpecDecPP", "measure_step_costs", "parent_confidence", "parse", "step_costs", "token_probs",
]
