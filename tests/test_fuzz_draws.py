"""Draw only what runs: a fuzz example draws a side family behind a coin that comes up with the family's chance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis.internal.conjecture.data import ConjectureData

from bnprops.fuzzing import plan
from bnprops.fuzzing.explorer import examples
from bnprops.fuzzing.families import side_families
from bnprops.mx.runners import BACKENDS, RUNNERS
from bnprops.search.chance import LIKELY, UNLIKELY, Coin, one_in, sometimes

#: Hypothesis's first examples in each search extend its simplest choices (coins down) and its mutations keep
#: the coins of the examples they mutate: measured, a family is drawn on 0.44 to 1.13 of the examples its chance
#: gives (600 examples in chunks of 100, two sets of seeds; the member call varies most). A coin ignored (a draw
#: on every example) is 2 to 8 times its chance, a coin never up 0.
AT_LEAST, AT_MOST = 0.35, 1.5


def drawn_per_family(config: plan.CampaignConfig, *, chunks: int, chunk_size: int = 100) -> dict[str, list[float]]:
    """Per side family: [examples drawing it, examples its chance expects, examples drawing it with no chance],
    over ``chunks`` seeded searches of ``chunk_size`` examples, as a fuzz worker runs them."""
    targets = [(e, b) for e in RUNNERS for b in BACKENDS]
    families = side_families(config, {})
    counts = {kind: [0.0, 0.0, 0.0] for kind in families}

    def body(value: plan.Example) -> None:
        target, group, *drawn = value
        for (kind, family), draw in zip(families.items(), drawn, strict=False):
            p = family.chance(target, group[0])
            counts[kind][0] += draw is not None
            counts[kind][1] += p
            counts[kind][2] += draw is not None and p == 0

    strategy = examples(config, targets, families)
    quiet = settings(  # seeded as a fuzz worker's chunks are: the same examples under every profile (ci derandomises)
        max_examples=chunk_size,
        derandomize=False,
        database=None,
        phases=(Phase.generate,),
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    for index in range(chunks):
        seed(index)(quiet(given(strategy)(body)))()
    return counts


def test_an_example_draws_each_side_family_about_as_often_as_its_chance(tmp_path: Path) -> None:
    counts = drawn_per_family(plan.CampaignConfig(out=tmp_path, max_examples=1), chunks=6)
    assert set(counts) == {"relation", "network", "sequence", "member", "lifecycle"}
    for kind, (drawn, expected, _) in counts.items():
        assert expected > 20, f"{kind}: expected some draws, its chance gives {expected}"
        assert AT_LEAST * expected <= drawn <= AT_MOST * expected, f"{kind}: drawn {drawn}, chance gives {expected}"


def test_a_family_switched_off_is_all_but_never_drawn(tmp_path: Path) -> None:
    # Hypothesis takes a coin's untried side now and then to find a new example (2 to 7 of 300 examples, as the
    # suite's other tests leave its state): such a draw is not run (Explorer.explore asks the family's chance
    # again). A coin ignored comes up on every example.
    off = {"relation_every": 0, "network_every": 0, "sequence_every": 0, "member_every": 0, "lifecycle_every": 0}
    counts = drawn_per_family(plan.CampaignConfig(out=tmp_path, max_examples=1, **off), chunks=3)  # type: ignore[arg-type]
    assert all(drawn <= 0.03 * 300 and drawn == no_chance for drawn, _, no_chance in counts.values()), counts


def replayed(choices: tuple[Any, ...], p: float) -> tuple[bool, int | None]:
    """The stored ``choices`` decoded by a coin of weight ``p`` guarding an integer."""
    data = ConjectureData.for_choices(choices)

    @st.composite
    def guarded(draw: st.DrawFn) -> int | None:
        return sometimes(draw, st.integers(0, 100), chance=p, name="test")

    value = data.draw(guarded())
    assert data.misaligned_at is None, f"the stored choices {choices} did not decode under weight {p}"
    return value is not None, value


@pytest.mark.parametrize("p", [0.0, UNLIKELY, 1 / 8, 0.5, LIKELY, 1.0])
def test_a_stored_coin_decodes_the_same_whatever_its_weight(p: float) -> None:
    assert replayed((True, 7), p) == (True, 7)
    assert replayed((False,), p) == (False, None)


def test_a_coin_is_never_forced_and_its_chance_follows_every() -> None:
    assert Coin(0.0, "x").p == UNLIKELY and Coin(1.0, "x").p == LIKELY and Coin(0.25, "x").p == 0.25
    assert Coin(0.5, "a").label != Coin(0.5, "b").label, "two families' coins share a label: mutations mix them"
    assert one_in(8) == 1 / 8 and one_in(1) == 1.0 and one_in(0) == 0.0
