"""``--loss-args`` values are read by their field's type in the loss's config."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from prefkit.cli.align import loss_args_from_text
from prefkit.config import parse_typed_mapping
from prefkit.losses.preference import IPOConfig


@dataclass
class _Example:
    flag: bool = False
    count: int = 1
    scale: float = 1.0
    name: str = "x"
    sizes: tuple[int, ...] = ()
    limit: float | None = None


def test_values_follow_the_field_types() -> None:
    values = parse_typed_mapping(
        _Example, "flag=true,count=3,scale=0.5,name=abc,sizes=4+8,limit=none", "--opt"
    )
    assert values == {
        "flag": True,
        "count": 3,
        "scale": 0.5,
        "name": "abc",
        "sizes": (4, 8),
        "limit": None,
    }
    assert parse_typed_mapping(_Example, "flag=0", "--opt") == {"flag": False}
    assert parse_typed_mapping(_Example, "", "--opt") == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("flag=maybe", r"--opt flag: expected a bool \(true/false"),
        ("count=2.5", "--opt count: expected an integer, found '2.5'"),
        ("scale=big", "--opt scale: expected a number, found 'big'"),
        ("colour=red", "_Example does not take 'colour'"),
        ("count", "expected key=value pairs"),
    ],
)
def test_errors_name_the_field_and_the_type(text: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        parse_typed_mapping(_Example, text, "--opt")


def test_length_normalised_ipo_is_reachable_from_the_command_line() -> None:
    """``--loss ipo --loss-args length_normalized=true`` failed with "expected a number"."""
    values = loss_args_from_text("ipo", "length_normalized=true,beta=0.2")
    assert values == {"length_normalized": True, "beta": 0.2}
    assert IPOConfig(**values).length_normalized is True
    assert loss_args_from_text("ipo", "length_normalized=1") == {"length_normalized": True}
