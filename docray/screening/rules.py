"""Attribute filters and the extension rule, as pure functions over the library's attribute arrays.

Each library tile has a release time (an integer: a day number, or any unit the caller keeps
consistently) and a cut type code (`templates.CUT_TYPES`). A query picture may carry either.

- primary match: candidates whose attributes EQUAL the query's (a missing attribute does not filter);
- extension rule (after no primary match): release times within [t - dt, t + dt], one-sided when
  `direction` is "-" (earlier tiles only) or "+" (later only), and/or cut types other than the
  query's; tiles already searched by the primary stage are left out of the second match.

An `AttrFilter` is a value (release-time interval, allowed cut codes) that the index turns into an
ID selector or a shard choice; `mask(filter, times, cuts)` evaluates it on arrays.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field

from docray.config import Config
from docray.screening.templates import CUT_TYPES, cut_code


@dataclass(frozen=True)
class AttrFilter:
    """Candidates with t_lo <= release_time <= t_hi and cut code in `cuts` (None: no limit)."""

    t_lo: int | None = None
    t_hi: int | None = None
    cuts: frozenset[int] | None = None
    exclude: "AttrFilter | None" = None  # candidates matching this are left out (already searched)

    @property
    def is_all(self) -> bool:
        return self.t_lo is None and self.t_hi is None and self.cuts is None and self.exclude is None


def mask(f: AttrFilter, times: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Boolean (n,) of the library rows that pass `f`."""
    m = np.ones(len(times), bool)
    if f.t_lo is not None:
        m &= times >= f.t_lo
    if f.t_hi is not None:
        m &= times <= f.t_hi
    if f.cuts is not None:
        m &= np.isin(cuts, np.fromiter(f.cuts, np.int64, len(f.cuts)))
    if f.exclude is not None:
        m &= ~mask(f.exclude, times, cuts)
    return m


class ExtensionRule(Config):
    """How far the second match reaches when the primary match finds nothing."""

    enabled: bool = Field(True, description="run a second match when the primary one finds nothing")
    delta_t: int = Field(30, ge=0, description="release times within +-delta_t of the query's (same unit)")
    direction: Literal["-", "+", "both"] = Field("both", description="'-' earlier tiles only, '+' later only")
    other_cut_types: bool = Field(True, description="also accept cut types other than the query's")


def _cuts(cut_type: str | int | None) -> frozenset[int] | None:
    if cut_type is None:
        return None
    return frozenset({cut_code(cut_type) if isinstance(cut_type, str) else int(cut_type)})


def primary_filter(release_time: int | None = None, cut_type: str | int | None = None) -> AttrFilter:
    """Candidates whose attributes equal the query's; missing ones do not filter."""
    t = None if release_time is None else int(release_time)
    return AttrFilter(t_lo=t, t_hi=t, cuts=_cuts(cut_type))


def extended_filter(rule: ExtensionRule, release_time: int | None = None,
                    cut_type: str | int | None = None) -> AttrFilter | None:
    """The second-match candidates under `rule`, minus the primary ones; None if nothing is new."""
    if not rule.enabled:
        return None
    primary = primary_filter(release_time, cut_type)
    lo = hi = None
    if release_time is not None:
        t = int(release_time)
        lo = t - rule.delta_t if rule.direction in ("-", "both") else t
        hi = t + rule.delta_t if rule.direction in ("+", "both") else t
    cuts = None if (rule.other_cut_types or cut_type is None) else _cuts(cut_type)
    wider = AttrFilter(t_lo=lo, t_hi=hi, cuts=cuts)
    if (lo, hi, cuts) == (primary.t_lo, primary.t_hi, primary.cuts):
        return None  # the rule adds no candidates (e.g. delta_t=0 and same cut type)
    return AttrFilter(t_lo=lo, t_hi=hi, cuts=cuts, exclude=primary)


def cut_names(codes) -> list[str]:
    return [CUT_TYPES[int(c)] for c in codes]
