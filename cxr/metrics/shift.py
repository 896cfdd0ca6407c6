"""Dataset shift for a whole set: are these films' guard scores like the validation films'?

The out-of-distribution guard (:class:`cxr.models.ood.OODGuard`) scores each film by its feature-space distance to
the training films and flags single films far beyond the validation films (non-radiographs). A set from another
hospital can be shifted while every film passes: this compares the set's scores with the validation films' that
set the guard's threshold — the share beyond the validation 95th percentile against the 5% expected of films like
them (one-sided binomial test), and a two-sample Kolmogorov–Smirnov test with the direction of the difference.

What it cannot do is also measured (experiments/RESULTS.md, "Dataset shift"): on 130 Normal films from a teaching
hospital outside the database the default model's scores were no larger than its own test films', while its
accuracy there fell — a summary that detects nothing is no evidence that a set is like the training films.

Example:
    >>> rng = np.random.default_rng(0)
    >>> shift_summary(rng.normal(1, 0.1, 200), rng.normal(0, 0.1, 60))["shifted"]
    True
"""

from __future__ import annotations

from typing import Any, Dict, Sequence

import numpy as np

__all__ = ["shift_summary", "SHIFT_P"]

#: The p-value under which a set is called shifted.
SHIFT_P = 0.01
#: The validation percentile whose exceedances are counted.
PERCENTILE = 95


def shift_summary(scores: Sequence[float], validation_scores: Sequence[float]) -> Dict[str, Any]:
    """Compare a set's guard ``scores`` with ``validation_scores`` (``metrics.json``'s ``shift``).

    Returns:
        ``films``, ``validation_films``, ``median`` and ``validation_median``, ``beyond_validation_p95``
        (``threshold``, ``count``, ``share``, ``expected_share``, ``p_value``: one-sided binomial), ``ks``
        (``statistic``, ``p_value``), ``shifted`` (either test below :data:`SHIFT_P` with the set's scores the
        larger) and ``direction`` (``"farther"``/``"closer"``: the set's median against the validation one).
    """
    from scipy import stats  # SciPy loads only for these statistics

    scores = np.asarray(scores, dtype=np.float64)
    validation = np.asarray(validation_scores, dtype=np.float64)
    if len(scores) == 0 or len(validation) < 2:
        raise ValueError("a shift summary needs at least one film and two validation scores")
    cut = float(np.percentile(validation, PERCENTILE))
    beyond = int((scores > cut).sum())
    expected = 1 - PERCENTILE / 100
    binomial = float(stats.binomtest(beyond, len(scores), expected, alternative="greater").pvalue)
    ks = stats.ks_2samp(scores, validation)
    farther = float(np.median(scores)) > float(np.median(validation))
    return {
        "films": int(len(scores)),
        "validation_films": int(len(validation)),
        "median": float(np.median(scores)),
        "validation_median": float(np.median(validation)),
        "beyond_validation_p95": {
            "threshold": cut,
            "count": beyond,
            "share": beyond / len(scores),
            "expected_share": expected,
            "p_value": binomial,
        },
        "ks": {"statistic": float(ks.statistic), "p_value": float(ks.pvalue)},
        "direction": "farther" if farther else "closer",
        "shifted": bool(binomial < SHIFT_P or (ks.pvalue < SHIFT_P and farther)),
    }
