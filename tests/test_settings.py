"""specjax.settings: the typed fields of a dataclass or function and string values for them."""

import dataclasses

import pytest

from specjax import settings
from specjax.settings import REQUIRED, convert, fields, show, type_name


@dataclasses.dataclass(frozen=True)
class Example:
    model: object  # not a value type: the builder passes it
    size: int
    rate: float = 0.5
    on: bool = True
    name: str = "tr80"
    widths: tuple[int, ...] | None = None
    costs: tuple[float, ...] = (0.1, 0.25)
    template: str | tuple = "tr80"
    extra: list = dataclasses.field(default_factory=list)  # not a value type
    counts: tuple[int, ...] = dataclasses.field(default_factory=lambda: (1, 2))
    hidden: int = dataclasses.field(default=3, init=False)


def build(model, k: int, pending: int = 1, *, rule: str = "iid", other=None):
    return model, k, pending, rule, other


def test_fields_of_a_dataclass_in_order_with_defaults():
    f = fields(Example)
    assert list(f) == ["size", "rate", "on", "name", "widths", "costs", "template", "counts"]
    assert f["size"].default is REQUIRED and f["rate"].default == 0.5
    assert f["counts"].default == (1, 2)  # default_factory evaluated
    assert f["widths"].type == tuple[int, ...] | None
    assert list(fields(Example, exclude=("size", "rate"))) == [
        "on", "name", "widths", "costs", "template", "counts"]


def test_fields_of_a_function_and_a_bound_classmethod():
    f = fields(build)
    assert list(f) == ["k", "pending", "rule"]  # unannotated parameters are no settings
    assert f["k"].default is REQUIRED and f["pending"].default == 1 and f["rule"].type is str

    class Maker:
        @classmethod
        def chain(cls, model: object, k: int, max_pending: int = 1):
            return cls

    assert list(fields(Maker.chain)) == ["k", "max_pending"]
    with pytest.raises(TypeError, match="expected a dataclass type or a function"):
        fields(3)


@pytest.mark.parametrize("value,tp,expected", [
    ("4", int, 4), (4, int, 4), (" 4 ", int, 4),
    ("0.5", float, 0.5), (1, float, 1.0), (0.5, float, 0.5),
    ("true", bool, True), ("0", bool, False), ("Off", bool, False), (1, bool, True),
    (False, bool, False), ("yes", bool, True),
    ("tr80", str, "tr80"), ("", str, ""),
    ("4.2.1", tuple[int, ...], (4, 2, 1)), ("4;2;1", tuple[int, ...], (4, 2, 1)),
    ([4, 2], tuple[int, ...], (4, 2)), (3, tuple[int, ...], (3,)), ("", tuple[int, ...], ()),
    ("0.1;0.25", tuple[float, ...], (0.1, 0.25)), ("1.5", tuple[float, ...], (1.5,)),
    ("none", int | None, None), ("", int | None, None), (None, int | None, None),
    ("7", int | None, 7), ("None", tuple[int, ...] | None, None),
    ("4.2.1", str | tuple, (4, 2, 1)), ("tr80", str | tuple, "tr80"),
    ("auto", int | str, "auto"), ("4", int | str, 4), (4, int | str, 4),
])
def test_convert(value, tp, expected):
    out = convert(value, tp, "x")
    assert out == expected and type(out) is type(expected)


@pytest.mark.parametrize("value,tp,match", [
    ("four", int, r"bad value 'four' for k: expected int$"),
    (True, int, "expected int"),  # a bool is no int setting
    (2.5, int, "expected int"),
    ("maybe", bool, r"expected bool \(1/0/true/false\)"),
    (2, bool, "expected bool"),
    (3, str, "expected str"),
    ("a.b", tuple[int, ...], r"expected a tuple of int \(e.g. 4.2.1\)"),
    ("x", int | None, "expected int or none"),
    ("1;x", tuple[float, ...], r"expected a tuple of float \(e.g. 0.1;0.5\)"),
])
def test_convert_errors_name_the_setting_and_the_type(value, tp, match):
    with pytest.raises(ValueError, match=match):
        convert(value, tp, "k")


@pytest.mark.parametrize("value", [4, 0.5, True, False, "tr80", (4, 2, 1), (0.1, 0.25), None])
def test_show_reads_back(value):
    tp = {int: int, float: float, bool: bool, str: str, type(None): int | None}.get(
        type(value), tuple[int, ...] if value == (4, 2, 1) else tuple[float, ...])
    assert convert(show(value), tp) == value
    assert show(REQUIRED) == "<required>" and show((4, 2, 1)) == "4.2.1"
    assert show((0.1, 0.25)) == "0.1;0.25" and show(None) == "none" and show(True) == "true"


def test_value_types_and_their_names():
    assert all(settings.is_value_type(t) for t in (
        int, float, bool, str, tuple, tuple[int, ...], int | None, str | tuple))
    assert not any(settings.is_value_type(t) for t in (list, object, dict[str, int], None,
                                                       int | list))
    assert type_name(int | None) == "int or none"
    assert type_name(str | tuple) == "str or a tuple of int (e.g. 4.2.1)"
