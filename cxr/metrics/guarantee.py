"""A finite-sample guarantee for a screening threshold: how many of a site's critical films may be called negative.

The operating point calls a film negative (``Normal``) only when its calibrated P(negative) reaches a threshold
``t``; raising ``t`` calls fewer critical films (COVID, Viral Pneumonia) negative and keeps fewer negative films.
On ``n`` held-out critical films, ``k(t)`` of them reach ``t``. Two guarantees choose ``t`` from them, each for a new
critical film exchangeable with those ``n`` (from the same site and population):

- ``expected`` — conformal risk control (Angelopoulos et al., *Conformal risk control*, ICLR 2024): the lowest ``t``
  with ``(k(t) + 1) / (n + 1) ≤ α``. The *expected* share called negative, over calibration sets, is at most ``α``;
  the bound recorded is ``(k + 1) / (n + 1)`` at the chosen ``t``.
- ``confidence`` — a binomial upper confidence bound, learn-then-test (Angelopoulos et al., *Learn then test*,
  2021): the lowest ``t`` whose one-sided Clopper–Pearson bound on the miss rate at level ``1 - δ`` is at most
  ``α``; ``k(t)`` only falls as ``t`` rises, so testing from the top down is a valid fixed sequence. With
  probability at least ``1 - δ`` over the calibration films the rate is at most ``α``.

Too few critical films cannot support a small ``α``: with no miss at all, the bound is ``1 / (n + 1)`` (expected) or
``1 - δ^(1/n)`` (confidence: about 300 films for 1% at 95%). Then the threshold is the lowest one that calls none
of them negative, :attr:`Guarantee.met` is false, and the bound recorded is that smallest attainable one — said, not
pretended.

Example (worked by hand in the tests): 10 critical films, none reaching t, 95% confidence:
    >>> round(miss_bound("confidence", missed=0, films=10, confidence=0.95), 4)   # 1 - 0.05 ** (1 / 10)
    0.2589
    >>> miss_bound("expected", missed=1, films=9)                               # (1 + 1) / (9 + 1)
    0.2
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Optional, Tuple

import numpy as np

__all__ = ["GUARANTEES", "DEFAULT_GUARANTEE", "DEFAULT_CONFIDENCE", "Guarantee", "miss_bound", "guaranteed_threshold"]

#: ``--guarantee`` choices: on the expected rate (conformal risk control) or with a confidence level (binomial
#: bound, learn-then-test).
GUARANTEES = ("expected", "confidence")
DEFAULT_GUARANTEE = "expected"
#: ``--confidence`` for the ``confidence`` guarantee.
DEFAULT_CONFIDENCE = 0.95
#: Thresholds lie on this grid, so the rule reads as a plain number ("0.912").
GRID = 1000


def miss_bound(kind: str, missed: int, films: int, confidence: float = DEFAULT_CONFIDENCE) -> float:
    """The guaranteed share of critical films called negative when ``missed`` of ``films`` held-out critical films
    were: ``(missed + 1) / (films + 1)`` (expected) or the one-sided Clopper–Pearson upper bound at ``confidence``."""
    if films <= 0:
        return 1.0
    if kind == "expected":
        return (missed + 1) / (films + 1)
    if kind != "confidence":
        raise ValueError(f"unknown guarantee {kind!r}; one of {GUARANTEES}")
    if missed >= films:
        return 1.0
    if missed == 0:
        return 1.0 - (1.0 - confidence) ** (1.0 / films)
    from scipy.stats import beta  # the binomial bound's only use of scipy

    return float(beta.ppf(confidence, missed + 1, films - missed))


@dataclasses.dataclass(frozen=True)
class Guarantee:
    """What a threshold guarantees on the critical films it was chosen on.

    Attributes:
        kind: ``expected`` or ``confidence`` (see the module docstring).
        target: the share asked for (``--max-missed-rate``).
        confidence: the confidence level (``confidence`` only).
        critical_films: held-out critical films it was chosen on.
        missed: of them, those called negative at the threshold.
        bound: the guaranteed share at the threshold (at most ``target`` when ``met``).
        attainable: the smallest bound these films can give (no miss at all).
        met: whether ``bound ≤ target``.
    """

    kind: str
    target: float
    confidence: Optional[float]
    critical_films: int
    missed: int
    bound: float
    attainable: float
    met: bool

    def sentence(self, negative: str, critical: str) -> str:
        """The guarantee in one sentence, as reports, cards and the app give it."""
        share = f"{self.bound:.1%}"
        on = f"{self.critical_films} held-out {critical} films, {self.missed} called {negative}"
        if self.kind == "expected":
            what = f"expected share of {critical} films called {negative} ≤ {share} (conformal risk control; {on})"
        else:
            what = (
                f"share of {critical} films called {negative} ≤ {share} with {self.confidence:.0%} confidence "
                f"(binomial bound, learn-then-test; {on})"
            )
        if self.met:
            return f"Guaranteed: {what}."
        return (
            f"The {self.target:.1%} target cannot be guaranteed on {self.critical_films} critical films; the smallest "
            f"attainable bound holds instead. Guaranteed: {what}."
        )

    def to_config(self) -> Dict[str, Any]:
        """The ``guarantee`` entry of an operating point."""
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, entry: Optional[Dict[str, Any]]) -> Optional["Guarantee"]:
        """The saved guarantee, or ``None`` for an operating point saved without one."""
        if not entry:
            return None
        return cls(**{f.name: entry[f.name] for f in dataclasses.fields(cls)})


def guaranteed_threshold(
    critical_scores: np.ndarray,
    target: float,
    kind: str = DEFAULT_GUARANTEE,
    confidence: float = DEFAULT_CONFIDENCE,
) -> Tuple[float, Guarantee]:
    """The lowest grid threshold whose guaranteed share of critical films called negative is at most ``target``,
    from the held-out critical films' P(negative) ``critical_scores``; when none is, the lowest calling none of them
    negative (the smallest attainable bound).

    Raises:
        ValueError: no critical film, a target outside (0, 1), an unknown kind or a confidence outside (0, 1).
    """
    if not (isinstance(target, (int, float)) and math.isfinite(target) and 0 < target < 1):
        raise ValueError(f"the target share must be above 0 and below 1 (e.g. 0.01 for 1%), got {target!r}")
    if kind not in GUARANTEES:
        raise ValueError(f"unknown guarantee {kind!r}; one of {', '.join(GUARANTEES)}")
    if not 0 < confidence < 1:
        raise ValueError(f"the confidence must be above 0 and below 1 (e.g. 0.95), got {confidence!r}")
    scores = np.sort(np.asarray(critical_scores, dtype=np.float64))[::-1]  # highest P(negative) first
    n = int(scores.size)
    if n == 0:
        raise ValueError("no critical film to choose a threshold on")
    # the most misses the target allows: bound(k) rises with k
    allowed = -1
    while allowed + 1 < n and miss_bound(kind, allowed + 1, n, confidence) <= target:
        allowed += 1
    met = allowed >= 0
    k = max(allowed, 0)
    if k >= n:
        threshold = 0.0
    else:
        first_refused = float(scores[k])  # the (k+1)-th highest must fall below the threshold
        threshold = round(math.ceil(first_refused * GRID) / GRID, 3)
        if threshold <= first_refused:  # the next grid value strictly above it
            threshold = round(threshold + 1 / GRID, 3)
        threshold = min(threshold, 1.0)
    missed = int((scores >= threshold).sum())  # ties and P(negative) = 1 can leave more or fewer than k
    bound = miss_bound(kind, missed, n, confidence)
    return threshold, Guarantee(
        kind=kind,
        target=float(target),
        confidence=float(confidence) if kind == "confidence" else None,
        critical_films=n,
        missed=missed,
        bound=float(bound),
        attainable=float(miss_bound(kind, 0, n, confidence)),
        met=bool(met and bound <= target + 1e-12),
    )
