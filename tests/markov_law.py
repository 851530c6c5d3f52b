"""Chi-square helper shared by the Monte Carlo law tests of the decode loop."""

import numpy as np
from scipy import stats


def chi2_pooled(counts, law, min_expected=5.0):
    """Chi-square p-value of counts vs law, cells expected < min_expected pooled."""
    expected = law * counts.sum()
    small = expected < min_expected
    obs = np.append(counts[~small], counts[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    return stats.chisquare(obs, exp).pvalue
