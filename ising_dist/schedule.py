"""Triggers: when an operation of the tempering loop happens, in sweeps (HOOMD-blue's
``hoomd.trigger``: Periodic, Before, After, On, And, Or).

A trigger answers three questions about the sweep counter s (an int, s >= 0):
  ``trigger(s)``            does it fire at s? (also for an int64 array of sweeps: a bool array)
  ``trigger.next_after(s)`` the smallest x > s at which it fires, or NEVER
  ``trigger.events(lo, hi)`` int64 array of the sweeps lo < x <= hi at which it fires, ascending

The tempering loop (ising_dist.tempering) stops at the sweeps its Python-side operations need
(next_after), and hands the compiled loops the exchanges and samples in between as one event
table (events): the rules below exist once, here.

Combine triggers with ``&`` and ``|``. And evaluates the events of its first operand and keeps
those at which the others fire too: put the sparse one first (``Periodic(10, 500) &
After(500)``, not ``After(500) & Periodic(10, 500)``, which lists every sweep after 500).
"""

import numpy as np

NEVER = np.iinfo(np.int64).max  # next_after of a trigger that does not fire again


def _sweeps(lo, hi):
    """int64 array lo, lo+1, …, hi (empty when hi < lo)."""
    return np.arange(lo, hi + 1, dtype=np.int64)


class Trigger:
    """Base class; subclasses define __call__, next_after and events."""

    def __and__(self, other):
        return And(self, other)

    def __or__(self, other):
        return Or(self, other)


class Periodic(Trigger):
    """Fires at s = phase, phase + period, phase + 2·period, … (s >= phase and
    (s - phase) % period == 0). period >= 1 and phase >= 0 (ValueError otherwise)."""

    def __init__(self, period, phase=0):
        if int(period) < 1 or int(phase) < 0:
            raise ValueError(f"Periodic(period={period}, phase={phase}): need period >= 1 "
                             f"and phase >= 0")
        self.period, self.phase = int(period), int(phase)

    def __call__(self, s):
        return (s >= self.phase) & ((s - self.phase) % self.period == 0)

    def next_after(self, s):
        if s < self.phase:
            return self.phase
        return self.phase + ((s - self.phase) // self.period + 1) * self.period

    def events(self, lo, hi):
        return np.arange(self.next_after(lo), hi + 1, self.period, dtype=np.int64)

    def __repr__(self):
        return f"Periodic({self.period}, phase={self.phase})"


class On(Trigger):
    """Fires at s = sweep only."""

    def __init__(self, sweep):
        self.sweep = int(sweep)

    def __call__(self, s):
        return s == self.sweep

    def next_after(self, s):
        return self.sweep if s < self.sweep else NEVER

    def events(self, lo, hi):
        return np.array([self.sweep] if lo < self.sweep <= hi else [], np.int64)

    def __repr__(self):
        return f"On({self.sweep})"


class Before(Trigger):
    """Fires at every s < sweep."""

    def __init__(self, sweep):
        self.sweep = int(sweep)

    def __call__(self, s):
        return s < self.sweep

    def next_after(self, s):
        return s + 1 if s + 1 < self.sweep else NEVER

    def events(self, lo, hi):
        return _sweeps(lo + 1, min(hi, self.sweep - 1))

    def __repr__(self):
        return f"Before({self.sweep})"


class After(Trigger):
    """Fires at every s > sweep."""

    def __init__(self, sweep):
        self.sweep = int(sweep)

    def __call__(self, s):
        return s > self.sweep

    def next_after(self, s):
        return max(s, self.sweep) + 1

    def events(self, lo, hi):
        return _sweeps(max(lo, self.sweep) + 1, hi)

    def __repr__(self):
        return f"After({self.sweep})"


class Doubling(Trigger):
    """Fires at s = period·(2^k − 1), k = 1, 2, …: after windows of period, 2·period,
    4·period, … sweeps (the adaptive ladder's rounds: later adjustments rest on more
    exchange attempts, so the ladder settles instead of jittering). period >= 1."""

    def __init__(self, period):
        if int(period) < 1:
            raise ValueError(f"Doubling(period={period}): need period >= 1")
        self.period = int(period)

    def __call__(self, s):
        q, r = np.divmod(s, self.period)
        return (s > 0) & (r == 0) & ((q + 1) & q == 0)

    def next_after(self, s):
        x = self.period
        while x <= s:
            x = 2 * x + self.period  # period·(2^(k+1) − 1) from period·(2^k − 1)
        return x

    def events(self, lo, hi):
        out, x = [], self.next_after(lo)
        while x <= hi:
            out.append(x)
            x = 2 * x + self.period
        return np.array(out, np.int64)

    def __repr__(self):
        return f"Doubling({self.period})"


class And(Trigger):
    """Fires where every operand fires (events: the first operand's, filtered)."""

    def __init__(self, *triggers):
        self.triggers = triggers

    def __call__(self, s):
        fired = self.triggers[0](s)
        for t in self.triggers[1:]:
            fired = fired & t(s)
        return fired

    def next_after(self, s):
        # no sweep before the latest of the operands' next firings can have them all
        for _ in range(100000):
            x = max(t.next_after(s) for t in self.triggers)
            if x == NEVER or all(t(x) for t in self.triggers):
                return x
            s = x
        raise ValueError(f"{self!r}: the operands did not fire together in 100000 tries "
                         f"after sweep {s}; do they ever?")

    def events(self, lo, hi):
        x = self.triggers[0].events(lo, hi)
        for t in self.triggers[1:]:
            x = x[t(x)]
        return x

    def __repr__(self):
        return " & ".join(map(repr, self.triggers))


class Or(Trigger):
    """Fires where any operand fires."""

    def __init__(self, *triggers):
        self.triggers = triggers

    def __call__(self, s):
        fired = self.triggers[0](s)
        for t in self.triggers[1:]:
            fired = fired | t(s)
        return fired

    def next_after(self, s):
        return min(t.next_after(s) for t in self.triggers)

    def events(self, lo, hi):
        x = self.triggers[0].events(lo, hi)
        for t in self.triggers[1:]:
            x = np.union1d(x, t.events(lo, hi))
        return x

    def __repr__(self):
        return "(" + " | ".join(map(repr, self.triggers)) + ")"


def event_table(flagged, lo, hi):
    """The sweeps lo < s < hi at which any of the triggers fires, with the OR of their flags:
    (sweeps int64 [n], flags int64 [n]), ascending. flagged: pairs (flag, trigger), each flag
    a distinct bit. Costs a few ns per sweep of the range (a dense flag array)."""
    flags = np.zeros(max(hi - lo - 1, 0), np.int64)
    for flag, trigger in flagged:
        flags[trigger.events(lo, hi - 1) - (lo + 1)] |= flag
    at = np.flatnonzero(flags)
    return at + (lo + 1), flags[at]
