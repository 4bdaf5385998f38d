"""bnprops.base.float_warnings: ignoring sets the state np.errstate sets, and puts the previous one back."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest

from bnprops.base.float_warnings import ignoring

CATEGORIES = ("divide", "over", "under", "invalid")
MODES = ("ignore", "warn", "raise", "call", "print", "log")


@pytest.mark.parametrize("outer", MODES)
def test_ignoring_sets_the_state_errstate_sets_for_every_set_of_categories(outer: str) -> None:
    with np.errstate(all=outer, under="warn"):
        before = np.geterr()
        for n in range(len(CATEGORIES) + 1):
            for chosen in itertools.combinations(CATEGORIES, n):
                with np.errstate(**{c: "ignore" for c in chosen} if chosen else {"all": "ignore"}):
                    expected = np.geterr()
                with ignoring(*chosen):
                    got = np.geterr()
                assert got == expected, f"ignoring{chosen} under {outer!r}: expected {expected}, got {got}"
                assert np.geterr() == before, f"ignoring{chosen} left {np.geterr()}, expected {before}"


def test_ignoring_silences_only_its_categories_and_restores_after_an_exception() -> None:
    with np.errstate(all="raise"):
        with ignoring("over"):
            assert np.float32(3e38) * np.float32(10) == np.inf
            with pytest.raises(FloatingPointError):
                np.array([0.0]) / np.array([0.0])  # invalid still raises
        with pytest.raises(ZeroDivisionError), ignoring("divide"):
            raise ZeroDivisionError
        assert np.geterr()["divide"] == "raise", f"expected the state before the block back, got {np.geterr()}"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with ignoring():
            assert np.isnan(np.array([0.0]) / np.array([0.0]))[0]


def test_ignoring_refuses_a_category_numpy_does_not_have() -> None:
    with pytest.raises(ValueError, match="not \\['overflow'\\]"):
        ignoring("overflow")
