"""Active ordering: the expected value of a review, the three orderings, and the refresh without retraining."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engine.active import distance_matrix, expected_cost, order, review_value, votes_matrix


def test_distance_matrix_ordinal_and_nominal():
    assert distance_matrix(3, ordinal=True).tolist() == [[0, 0.5, 1], [0.5, 0, 0.5], [1, 0.5, 0]]
    assert distance_matrix(3, ordinal=False).tolist() == [[0, 1, 1], [1, 0, 1], [1, 1, 0]]
    assert distance_matrix(2, ordinal=True).tolist() == [[0, 1], [1, 0]]  # two classes: no scale to weigh


def test_review_value_by_hand():
    post = np.array([[0.5, 0.5, 0.0],    # unsure, majority may be wrong
                     [0.05, 0.05, 0.9],  # majority (normal) corrected with confidence
                     [0.95, 0.05, 0.0],  # experts and estimate agree, sure
                     [0.2, 0.0, 0.8],    # as row 2 on a nominal scale, but the likely error is normal<->plus
                     [0.3, 0.3, 0.4]])
    majority = np.array([0, 0, 0, 0, -1])
    v = review_value(post, majority, ordinal=True)
    # ½·E[d(y, suggested)] + ½·E[d(y, majority)], d = |k - j| / 2
    assert v[0] == pytest.approx(0.5 * 0.25 + 0.5 * 0.25)
    assert v[1] == pytest.approx(0.5 * (0.05 * 1 + 0.05 * 0.5) + 0.5 * (0.05 * 0.5 + 0.9 * 1))
    assert v[2] == pytest.approx(0.5 * 0.025 + 0.5 * 0.025)
    assert v[3] == pytest.approx(0.5 * 0.2 + 0.5 * 0.8)
    assert v[4] == 0.0  # nobody graded it: nothing to review
    nominal = review_value(post, majority, ordinal=False)
    assert nominal[1] == pytest.approx(0.5 * 0.1 + 0.5 * 0.95)  # ½(1 − confidence) + ½ flag_score
    assert v[2] < v[0] and v[2] < v[1]
    known = review_value(post, majority, ordinal=True, known=np.array([True, False, False, False, False]))
    assert known[0] == 0.0 and known[1] == v[1]


def test_expected_cost_is_flag_score_on_a_nominal_scale():
    rng = np.random.default_rng(0)
    post = rng.dirichlet(np.ones(4), size=20)
    majority = rng.integers(0, 4, 20)
    assert np.allclose(expected_cost(post, majority, ordinal=False), 1 - post[np.arange(20), majority])


def test_orders():
    scores = {"value": np.array([0.1, 0.7, 0.3, 0.7]), "flag_score": np.array([0.9, 0.2, 0.5, 0.1])}
    assert order(scores, "value").tolist() == [1, 3, 2, 0]  # ties keep the given order
    assert order(scores, "flag_score").tolist() == [0, 2, 1, 3]
    r = order(scores, "random", seed=3)
    assert sorted(r.tolist()) == [0, 1, 2, 3] and r.tolist() == order(scores, "random", seed=3).tolist()
    assert any(order(scores, "random", seed=s).tolist() != r.tolist() for s in range(4, 10))
    with pytest.raises(ValueError, match="unknown ordering 'best'"):
        order(scores, "best")


def test_votes_matrix_from_labels_csv_strings():
    votes = pd.Series(["dr_a=plus;dr_b=normal", "", "dr_b=pre-plus;dr_c=plus"])
    m = votes_matrix(votes, ["normal", "pre-plus", "plus"])
    assert m.tolist() == [[2, 0, -1], [-1, -1, -1], [-1, 1, 2]]
