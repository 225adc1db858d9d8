"""The shared argument checks of ``sd_inspire._validate``: what they accept and the messages they give."""

from __future__ import annotations

import numpy as np
import pytest

from sd_inspire._validate import check_choice, check_integer, is_integer


def test_is_integer_accepts_python_and_numpy_integers_not_bools():
    assert all(is_integer(v) for v in (3, np.int64(3), np.uint8(0)))
    assert not any(is_integer(v) for v in (True, np.bool_(True), 2.0, 2.5, "2", None))


def test_check_integer_returns_a_python_int():
    value = check_integer(np.int32(4), "x", minimum=1)
    assert value == 4
    assert type(value) is int


@pytest.mark.parametrize(
    ("kwargs", "value", "error", "match"),
    [
        ({}, 2.5, ValueError, r"`x` must be an integer, got 2.5\."),
        ({"type_error": True}, 2.5, TypeError, r"`x` must be an integer, got 2.5\."),
        ({"optional": True}, "a", ValueError, r"`x` must be an integer or None, got 'a'\."),
        ({"minimum": 1}, 0, ValueError, r"`x` must be at least 1, got 0\."),
        ({"maximum": 3}, 4, ValueError, r"`x` must be at most 3, got 4\."),
        ({"minimum": 1, "maximum": 3}, 4, ValueError, r"`x` must be between 1 and 3, got 4\."),
        # a bound out of range, not the type, is always a ValueError
        ({"minimum": 1, "type_error": True}, 0, ValueError, r"`x` must be at least 1, got 0\."),
        (
            {"minimum": 2, "maximum": 5, "minimum_label": "`k`", "maximum_label": "the number of spots"},
            1,
            ValueError,
            r"`x` must be between `k` \(2\) and the number of spots \(5\), got 1\.",
        ),
    ],
)
def test_check_integer_messages(kwargs, value, error, match):
    with pytest.raises(error, match=match):
        check_integer(value, "x", **kwargs)


def test_check_integer_optional_passes_none():
    assert check_integer(None, "x", optional=True, minimum=1) is None
    with pytest.raises(ValueError, match="must be an integer, got None"):
        check_integer(None, "x")


def test_check_choice_returns_the_value_or_lists_the_choices():
    assert check_choice("mean", "normalization", ("symmetric", "mean")) == "mean"
    with pytest.raises(ValueError, match=r"^`normalization` must be one of \['symmetric', 'mean'\], got 'sum'\.$"):
        check_choice("sum", "normalization", ("symmetric", "mean"))
    with pytest.raises(ValueError, match="got None"):
        check_choice(None, "method", ("gmm",))
