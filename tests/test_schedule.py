"""Triggers of the tempering loop: next_after and events agree with the firing rule, checked
sweep by sweep, and the rules are the ones the loop documents."""

import numpy as np
import pytest

from ising_dist.schedule import (NEVER, After, Before, Doubling, On, Periodic, event_table)

HORIZON = 400

TRIGGERS = [
    Periodic(1), Periodic(7), Periodic(5, phase=3), Periodic(10, phase=100),
    On(0), On(37), Before(50), After(60), Doubling(3), Doubling(1),
    Periodic(4, phase=90) & After(90),            # samples: production, every 4 after 90
    Periodic(2) & Before(101),
    Doubling(6) & Before(200),                    # adaptive-ladder rounds
    Periodic(25) | On(333),                       # checkpoints
    (Periodic(9) & After(40)) | Periodic(13, 5),
]


def fires(trigger):
    """Sweeps 0 … HORIZON at which the trigger fires, one call per sweep."""
    return [s for s in range(HORIZON + 1) if trigger(s)]


@pytest.mark.parametrize("trigger", TRIGGERS, ids=repr)
def test_next_after_and_events_follow_the_firing_rule(trigger):
    at = fires(trigger)
    for s in range(HORIZON):
        later = [x for x in at if x > s]
        got = trigger.next_after(s)
        if later:
            assert got == later[0], (s, got, later[0])
        else:
            assert got > HORIZON or got == NEVER
    for lo, hi in ((0, HORIZON), (0, 0), (17, 18), (33, 250), (99, 101), (200, 199)):
        want = [x for x in at if lo < x <= hi]
        assert trigger.events(lo, hi).tolist() == want, (lo, hi)
        assert trigger.events(lo, hi).dtype == np.int64
    # the vectorised rule is the scalar one
    s = np.arange(HORIZON + 1)
    assert np.flatnonzero(trigger(s)).tolist() == at


def test_the_rules_the_loop_documents():
    # phase: the first firing is the phase itself, also seen from before it (the edge a copy
    # of this rule once lacked: from s < phase it returned a sweep below the phase)
    assert Periodic(30, phase=100).next_after(0) == 100
    assert Periodic(30, phase=100).next_after(99) == 100
    assert Periodic(30, phase=100).next_after(100) == 130
    sample = Periodic(30, phase=100) & After(100)  # production samples: never at thermalize
    assert sample.next_after(0) == 130 and sample.next_after(100) == 130
    assert not sample(100) and sample(160)
    assert [x for x in range(1, 200) if Doubling(5)(x)] == [5, 15, 35, 75, 155]
    assert On(0).next_after(0) == NEVER and Before(1).next_after(0) == NEVER
    assert (Periodic(2) & Periodic(3)).next_after(7) == 12


def test_event_table_merges_flags_strictly_inside_the_range():
    sweeps, flags = event_table([(1, Periodic(3)), (2, Periodic(4, 10) & After(10))], 9, 25)
    assert sweeps.tolist() == [12, 14, 15, 18, 21, 22, 24]
    assert flags.tolist() == [1, 2, 1, 3, 1, 2, 1]
    sweeps, flags = event_table([(1, Periodic(3))], 9, 12)
    assert sweeps.tolist() == [] and flags.dtype == np.int64  # 12 is the segment's end


def test_bad_triggers_are_refused_naming_the_value():
    with pytest.raises(ValueError, match="period=0"):
        Periodic(0)
    with pytest.raises(ValueError, match="phase=-1"):
        Periodic(3, phase=-1)
    with pytest.raises(ValueError, match="period=0"):
        Doubling(0)
    with pytest.raises(ValueError, match="fire together"):
        (Periodic(2) & Periodic(2, phase=1)).next_after(0)
