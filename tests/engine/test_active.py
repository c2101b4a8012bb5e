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
    post = np.array([[0.5, 0.5, 0.0],    # unsure between two adjacent classes
                     [0.05, 0.05, 0.9],  # the majority (normal) corrected with confidence
                     [0.95, 0.05, 0.0],  # experts and estimate agree, sure
                     [0.45, 0.0, 0.55],  # unsure between normal and plus: the severe kind of error
                     [0.3, 0.3, 0.4]])
    majority = np.array([0, 0, 0, 0, -1])
    v = review_value(post, majority, ordinal=True)
    # E[d(y, suggested)], d = |k - j| / 2 on the ordinal scale normal < pre-plus < plus
    assert v[0] == pytest.approx(0.5 * 0.5)  # suggested normal (first of the tie); pre-plus is one step away
    assert v[1] == pytest.approx(0.05 * 1 + 0.05 * 0.5)
    assert v[2] == pytest.approx(0.05 * 0.5)
    assert v[3] == pytest.approx(0.45 * 1)
    assert v[4] == 0.0  # nobody graded it: not in the review queue
    assert v[3] > v[0] > v[1] > v[2]  # a likely normal<->plus error first, a confident correction late
    nominal = review_value(post, majority, ordinal=False)
    assert nominal[:4] == pytest.approx(1 - post[:4].max(1))  # nominal: P(the suggested label is wrong)
    assert nominal[0] > nominal[3]  # without a severity scale the 50/50 image is the least certain
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
