"""Plain logit and the Swissmetro loader (mixed logit: test_mixed.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import runner
from runner.choice.baselines import fit_plain_logit
from runner.choice.data import load_swissmetro, synthetic_panel

SWISSMETRO = Path(runner.PROJECT_ROOT).parent / "shared" / "data" / "swissmetro.dat"


def test_plain_logit_matches_sklearn():
    from sklearn.linear_model import LogisticRegression

    data, _ = synthetic_panel(40, 10, 5, n_alternatives=1, seed=2)
    beta = fit_plain_logit(data)
    ref = LogisticRegression(C=np.inf, fit_intercept=False, tol=1e-12, max_iter=10_000)
    ref.fit(data.X[:, 0, :], data.y)
    np.testing.assert_allclose(beta, ref.coef_[0], atol=1e-5)


@pytest.mark.skipif(not SWISSMETRO.exists(), reason="../shared/data/swissmetro.dat not present")
def test_swissmetro_loader():
    data = load_swissmetro(SWISSMETRO)
    assert data.n_obs == 10_728 - 9 and data.n_ind == 1191  # one respondent has only CHOICE = 0 rows
    assert data.X.shape == (data.n_obs, 3, 5) and data.alternatives == ["train", "swissmetro", "car"]
    assert np.all(data.avail[np.arange(data.n_obs), data.y])
    assert data.X[:, :, 2].max() < 20 and data.X[:, :, 3].max() < 60  # times, costs scaled by 1/100
