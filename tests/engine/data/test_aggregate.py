"""Majority vote (tie rule, consensus, agreement), invariants under hypothesis, kappa against the reference libraries."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss

from engine.data import schema as S
from engine.data.aggregate import (
    MajorityVote,
    aggregate,
    confusion_vs_majority,
    expert_agreement,
    expert_agreement_arrays,
    fleiss_kappa,
    fleiss_kappa_votes,
    kappa_table,
    pairwise_kappa,
    vote_counts,
)
from engine.data.votes import read_votes

VOTES = np.array(
    [
        [0, 0, 0],  # consensus 0
        [0, 2, -1],  # tie 0/2 -> 2 (severe)
        [1, 1, 2],  # majority 1
        [2, -1, -1],  # single grader: not consensus
        [-1, -1, -1],  # nobody
    ]
)


def test_majority_vote_hand_computed():
    mv = MajorityVote().fit(VOTES, 3)
    assert mv.labels_.tolist() == [0, 2, 1, 2, -1]
    assert mv.tie_.tolist() == [False, True, False, False, False]
    assert mv.consensus_.tolist() == [True, False, False, False, False]
    assert mv.n_graders_.tolist() == [3, 2, 3, 1, 0]
    np.testing.assert_allclose(mv.agreement_[:4], [1, 0.5, 2 / 3, 1])
    assert np.isnan(mv.agreement_[4])
    np.testing.assert_allclose(mv.probas_[2], [0, 2 / 3, 1 / 3])
    np.testing.assert_allclose(mv.probas_[4], [1 / 3] * 3)  # no grader: uniform


def test_tie_break_mild_and_min_consensus_options():
    assert MajorityVote(tie_break="mild").fit(VOTES, 3).labels_[1] == 0
    assert MajorityVote(min_consensus=1).fit(VOTES, 3).consensus_[3]
    with pytest.raises(ValueError, match="tie_break"):
        MajorityVote(tie_break="random").fit(VOTES, 3)


def test_bad_votes_raise():
    with pytest.raises(ValueError, match="2-D"):
        vote_counts(np.zeros(3, dtype=int), 2)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        vote_counts(np.array([[0, 2]]), 2)


votes_st = st.integers(1, 5).flatmap(
    lambda k: st.tuples(
        st.just(k), arrays(np.int64, st.tuples(st.integers(1, 12), st.integers(1, 5)), elements=st.integers(-1, k - 1))
    )
)


@settings(max_examples=60, deadline=None)
@given(votes_st, st.randoms(use_true_random=False))
def test_majority_invariants(kv, rnd):
    k, votes = kv
    mv = MajorityVote().fit(votes, k)
    counts = vote_counts(votes, k)
    graded = mv.n_graders_ > 0
    # consensus => every vote equals the majority
    for i in np.flatnonzero(mv.consensus_):
        v = votes[i][votes[i] >= 0]
        assert len(v) >= 2 and (v == mv.labels_[i]).all()
    # agreement in (0, 1] for graded images; majority holds the top count
    assert ((mv.agreement_[graded] > 0) & (mv.agreement_[graded] <= 1)).all()
    assert (counts[graded, mv.labels_[graded]] == counts[graded].max(axis=1)).all()
    assert (mv.labels_[~graded] == -1).all()
    # tie only when the top count is shared; a tie resolves to the latest class with the top count
    shared = (counts == counts.max(axis=1, keepdims=True)).sum(axis=1) > 1
    assert (mv.tie_ == (shared & graded)).all()
    np.testing.assert_allclose(mv.probas_.sum(axis=1), 1.0)
    # permuting expert columns changes nothing
    perm = list(range(votes.shape[1]))
    rnd.shuffle(perm)
    mv2 = MajorityVote().fit(votes[:, perm], k)
    for attr in ("labels_", "tie_", "consensus_", "n_graders_"):
        assert (getattr(mv, attr) == getattr(mv2, attr)).all()
    np.testing.assert_allclose(mv.agreement_, mv2.agreement_, equal_nan=True)


def test_aggregate_frame(small_dataset):
    t = read_votes(small_dataset, classes="normal,pre-plus,plus")
    agg = aggregate(t)
    assert list(agg.columns) == [S.IMAGE, S.VOTES, S.MAJORITY, S.TIE, S.CONSENSUS, S.N_GRADERS, S.AGREEMENT]
    assert agg.loc[3, S.VOTES] == "dr_a=plus;dr_b=pre-plus;dr_c=plus"
    assert agg.loc[1, S.VOTES] == "dr_a=normal;dr_b=normal"
    assert agg.loc[4, S.MAJORITY] == "plus" and bool(agg.loc[4, S.TIE])  # tie toward the more severe class
    assert agg.loc[7, S.MAJORITY] == "" and agg.loc[7, S.N_GRADERS] == 0
    assert agg[S.CONSENSUS].tolist() == [True, True, True, False, False, True, False, False, True, True, True, False]


def test_pairwise_kappa_matches_sklearn():
    rng = np.random.default_rng(1)
    votes = rng.integers(-1, 3, size=(40, 3))
    kappa, common = pairwise_kappa(votes, 3)
    both = (votes[:, 0] >= 0) & (votes[:, 2] >= 0)
    assert common[0, 2] == both.sum()
    assert kappa[0, 2] == pytest.approx(cohen_kappa_score(votes[both, 0], votes[both, 2], labels=[0, 1, 2]))
    assert (kappa == kappa.T)[np.isfinite(kappa)].all() and np.diag(kappa).tolist() == [1.0, 1.0, 1.0]
    quad, _ = pairwise_kappa(votes, 3, weights="quadratic")
    assert quad[0, 2] == pytest.approx(
        cohen_kappa_score(votes[both, 0], votes[both, 2], labels=[0, 1, 2], weights="quadratic")
    )


def test_kappa_undefined_or_disjoint_is_nan():
    votes = np.array([[0, -1], [-1, 1]])  # no image graded by both
    kappa, common = pairwise_kappa(votes, 2)
    assert common[0, 1] == 0 and np.isnan(kappa[0, 1])
    assert np.isnan(fleiss_kappa_votes(votes, 2)[0])
    same = np.zeros((4, 2), dtype=int)  # everyone always says class 0
    assert np.isnan(pairwise_kappa(same, 2)[0][0, 1])


def test_fleiss_matches_statsmodels_on_fully_graded_rows():
    rng = np.random.default_rng(2)
    votes = rng.integers(0, 3, size=(30, 4))
    votes[:5, 1] = -1  # these 5 are excluded
    k, n = fleiss_kappa_votes(votes, 3)
    assert n == 25
    assert k == pytest.approx(sm_fleiss(vote_counts(votes[5:], 3)))


def test_expert_agreement_leave_one_out():
    votes = np.array(
        [
            [0, 0, 0],
            [1, 0, 0],  # expert 0 disagrees with the others' consensus
            [1, 1, -1],
            [2, -1, -1],  # single grader: excluded from agree_majority
        ]
    )
    s = expert_agreement_arrays(votes, 3)
    assert s["n_graded"].tolist() == [4, 3, 2]
    assert s["agree_majority"][0] == pytest.approx(2 / 3)
    assert s["n_consensus_others"][0] == 2 and s["agree_consensus"][0] == pytest.approx(0.5)
    assert s["n_consensus_others"][2] == 1 and s["agree_consensus"][2] == pytest.approx(1.0)  # row 0 only
    conf = confusion_vs_majority(votes, 3)
    assert conf.shape == (3, 3, 3) and conf[0].sum() == 4
    assert conf[0, 0, 1] == 1  # majority normal (row 1), expert 0 said class 1


def test_table_wrappers(small_dataset):
    t = read_votes(small_dataset, classes="normal,pre-plus,plus")
    kt = kappa_table(t)
    assert list(kt.index) == t.experts == list(kt.columns)
    assert np.isfinite(fleiss_kappa(t))
    ea = expert_agreement(t)
    assert list(ea["expert"]) == t.experts
    assert ea["n_graded"].tolist() == [11, 10, 8]


def test_parse_votes_is_the_inverse_of_format_votes():
    from engine.data.aggregate import format_votes, parse_votes

    experts, grades = ["dr_a", "Dr B", "c"], ["plus", "", "pre-plus"]
    assert parse_votes(format_votes(experts, grades)) == {"dr_a": "plus", "c": "pre-plus"}
    assert parse_votes("") == {} and parse_votes(None) == {}


def test_parse_bool_spellings():
    assert [S.parse_bool(v) for v in ("1", "1.0", " TRUE ", "yes", "on")] == [True] * 5
    assert [S.parse_bool(v) for v in ("0", "0.0", "False", "no", "off")] == [False] * 5
    assert S.parse_bool("") is None and S.parse_bool("maybe") is None
