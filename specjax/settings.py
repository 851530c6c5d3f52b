"""Typed settings: the configurable fields of a dataclass or function, and values for them.

A method is configured by the fields of the dataclasses it is built from
(`specjax.bench.registry`, `specjax.policies.parse`), so a benchmark override
`pld/num_drafts=4`, a config entry `config.draft.pld.num_drafts = 4` and a direct
call `PromptLookup(V, num_drafts=4)` name the same field with the same default.

Values given as strings (overrides, command lines) are converted by the
field's type annotation; values already typed (config files) are checked:

  int, float          "4", "0.5"
  bool                1/0, true/false (also yes/no, on/off; any case)
  str                 as is
  tuple[int, ...]     "4.2.1" (or "4;2;1")
  tuple[float, ...]   "0.1;0.25"
  X | None            "none" or "" -> None
  A | B               the first member that accepts the value, str last
                      ("4.2.1" -> (4, 2, 1) but "tr80" -> "tr80" for `str | tuple`)

Fields of other types (a model, a config, a nested drafter) are not settings:
the code building the object passes them.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import types
import typing
from typing import Any

REQUIRED = inspect.Parameter.empty  # default of a field that has none

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_SCALARS = (int, float, bool, str)


@dataclasses.dataclass(frozen=True)
class Field:
    """One setting: its name, type annotation and default (`REQUIRED` if none)."""

    name: str
    type: Any
    default: Any = REQUIRED


def fields(obj, exclude: typing.Iterable[str] = ()) -> dict[str, Field]:
    """The settings of a dataclass type or a function, in declaration order.

    A dataclass contributes its init fields, a function its annotated keyword
    parameters; only those of value types (see the module docstring) count.

    Args:
      obj: a dataclass type or a function.
      exclude: names to leave out (fields the caller always sets itself).
    """
    exclude = set(exclude)
    if dataclasses.is_dataclass(obj):
        hints = _hints(obj, {f.name: f.type for f in dataclasses.fields(obj)})
        items = [(f.name, hints[f.name], _dataclass_default(f))
                 for f in dataclasses.fields(obj) if f.init]
    elif callable(obj):
        params = inspect.signature(obj).parameters.values()
        hints = _hints(obj, {p.name: p.annotation for p in params})
        items = [(p.name, hints[p.name], p.default) for p in params
                 if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    else:
        raise TypeError(f"expected a dataclass type or a function, got {obj!r}")
    return {name: Field(name, tp, default) for name, tp, default in items
            if name not in exclude and is_value_type(tp)}


def _dataclass_default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return REQUIRED


def _hints(obj, raw: dict[str, Any]) -> dict[str, Any]:
    """Annotations resolved to types; one that cannot be resolved becomes None."""
    try:
        return {**{k: None for k in raw}, **typing.get_type_hints(obj)}
    except Exception:  # noqa: BLE001 - a forward reference the module cannot resolve
        pass
    namespace = vars(sys.modules[obj.__module__]) if obj.__module__ in sys.modules else {}
    out = {}
    for name, tp in raw.items():
        try:
            out[name] = eval(tp, dict(namespace)) if isinstance(tp, str) else tp  # noqa: S307
        except Exception:  # noqa: BLE001
            out[name] = None
    return out


def is_value_type(tp) -> bool:
    """Whether a setting of type `tp` can come from a config value or a string."""
    if tp in _SCALARS or tp is tuple:
        return True
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple:
        return all(a is Ellipsis or is_value_type(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        return bool(members) and all(is_value_type(a) for a in members)
    return False


def convert(value, tp, name: str = "value"):
    """`value` (a string or an already typed value) as type `tp`.

    Raises:
      ValueError: naming `name`, the value and the expected type.
    """
    try:
        return _convert(value, tp)
    except (ValueError, TypeError):
        raise ValueError(f"bad value {value!r} for {name}: expected {type_name(tp)}") from None


def _convert(v, tp):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (v is None or (isinstance(v, str)
                                                 and v.strip().lower() in ("", "none"))):
            return None
        for member in sorted((a for a in args if a is not type(None)), key=lambda a: a is str):
            try:
                return _convert(v, member)
            except (ValueError, TypeError):
                pass
        raise ValueError
    if tp is bool:
        if isinstance(v, bool):
            return v
        if isinstance(v, int) and v in (0, 1):
            return bool(v)
        if isinstance(v, str) and v.strip().lower() in _TRUE + _FALSE:
            return v.strip().lower() in _TRUE
        raise ValueError
    if tp is int:
        if isinstance(v, int) and not isinstance(v, bool):
            return v
        if isinstance(v, str):
            return int(v.strip())
        raise ValueError
    if tp is float:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
        if isinstance(v, str):
            return float(v.strip())
        raise ValueError
    if tp is str:
        if isinstance(v, str):
            return v
        raise ValueError
    if tp is tuple or origin is tuple:
        elem = args[0] if args else int
        if isinstance(v, str):
            s = v.strip()
            items = s.split(";") if ";" in s or elem is not int else s.split(".")
            return tuple(_convert(x, elem) for x in items) if s else ()
        if isinstance(v, (list, tuple)):
            return tuple(_convert(x, elem) for x in v)
        return (_convert(v, elem),)
    raise TypeError(f"unsupported setting type {tp!r}")


def type_name(tp) -> str:
    """A reader's name of a setting type, with the string syntax it accepts."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        names = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(names + (["none"] if type(None) in args else []))
    if tp is bool:
        return "bool (1/0/true/false)"
    if tp is tuple or origin is tuple:
        elem = args[0] if args else int
        return f"a tuple of {type_name(elem)} (e.g. {'4.2.1' if elem is int else '0.1;0.5'})"
    return getattr(tp, "__name__", str(tp))


def show(value) -> str:
    """`value` in the string syntax `convert` reads back ("4.2.1", "true", "none")."""
    if value is REQUIRED:
        return "<required>"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        sep = "." if all(isinstance(x, int) and not isinstance(x, bool) for x in value) else ";"
        return sep.join(show(x) for x in value)
    return str(value)


def parse_named(spec: str, table: typing.Mapping[str, Any], what: str):
    """An instance from `name` or `name:key=value,key=value` (values converted by the
    fields' types); "" or "none" -> None. `table`: name -> dataclass; `what` names the
    kind in errors ("policy", "transform").

    Raises:
      ValueError: an unknown name or key (listing the valid ones), or a bad value.
    """
    spec = spec.strip()
    if spec in ("", "none"):
        return None
    name, _, rest = spec.partition(":")
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; valid: {sorted(table)} or 'none'")
    valid = fields(table[name])
    kwargs = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or key not in valid:
            raise ValueError(f"bad argument {item!r} of {what} {name!r}; valid keys: "
                             f"{sorted(valid)}")
        kwargs[key] = convert(value, valid[key].type, f"{what} {name!r}'s {key}")
    return table[name](**kwargs)
