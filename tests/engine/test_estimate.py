"""The label estimator's maths on small hand-made cases (engine/estimate.py)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.estimate import (
    apply_temperature,
    estimate_labels,
    fit_temperature,
    flag_scores,
    nll,
    probs_to_logits,
    review_priority,
)


def _panel(n: int, confusions: np.ndarray, seed: int = 0, k: int = 3):
    """Truth uniform over k classes; expert e votes from confusions[e][truth]."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, n)
    votes = np.stack([[rng.choice(k, p=c[t]) for t in truth] for c in confusions], 1)
    return truth, votes


def test_a_known_expert_confusion_is_recovered():
    reliable = np.array([[0.9, 0.1, 0.0], [0.05, 0.9, 0.05], [0.0, 0.1, 0.9]])
    biased = np.array([[0.5, 0.5, 0.0], [0.0, 0.6, 0.4], [0.0, 0.2, 0.8]])  # calls disease early
    careless = np.array([[0.6, 0.2, 0.2], [0.2, 0.6, 0.2], [0.2, 0.2, 0.6]])
    truth, votes = _panel(12000, [reliable, biased, careless])
    known = np.where(np.arange(len(truth)) < 90, truth, -1)  # a small meta set
    est = estimate_labels(None, votes, known=known)
    for got, want in zip(est.confusions, [reliable, biased, careless], strict=True):
        np.testing.assert_allclose(got, want, atol=0.03)
    # the posterior is better than the majority vote: the reliable expert's lone dissent counts
    from engine.data.aggregate import MajorityVote

    maj = MajorityVote().fit(votes, 3).labels_
    assert (est.posterior.argmax(1) == truth).mean() > (maj == truth).mean() + 0.02


def test_a_reliable_experts_lone_dissent_outweighs_two_careless_ones():
    conf = np.array([np.eye(3) * 0.97 + 0.01, np.full((3, 3), 0.4) - np.eye(3) * 0.1, np.full((3, 3), 0.4) -
                     np.eye(3) * 0.1])
    conf /= conf.sum(2, keepdims=True)
    truth, votes = _panel(3000, conf, seed=1)
    est = estimate_labels(None, votes, known=np.where(np.arange(len(truth)) < 60, truth, -1))
    split = (votes[:, 1] == votes[:, 2]) & (votes[:, 0] != votes[:, 1])
    assert split.sum() > 50
    assert (est.posterior[split].argmax(1) == votes[split, 0]).mean() > 0.9


def test_model_prior_decides_where_nobody_voted_and_known_rows_stay_fixed():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.4, 0.3]])
    votes = np.array([[-1], [-1], [1]])
    est = estimate_labels(probs, votes, known=np.array([-1, 0, -1]), temperature=1.0)
    np.testing.assert_allclose(est.posterior[0], probs[0], atol=1e-9)
    np.testing.assert_array_equal(est.posterior[1], [1.0, 0.0, 0.0])
    assert est.posterior[2, 1] > probs[2, 1]  # the vote moves the uncertain row toward its class


def test_calibration_lowers_the_nll_on_held_out_data():
    rng = np.random.default_rng(0)
    n, k = 3000, 3
    y = rng.integers(0, k, n)
    true_logits = rng.normal(0, 1, (n, k))
    true_logits[np.arange(n), y] += 1.5
    # an over-confident model: the right ranking, logits three times too large
    overconfident = np.exp(3 * true_logits) / np.exp(3 * true_logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(k, p=np.exp(t) / np.exp(t).sum()) for t in true_logits])
    fit_rows, held_out = np.arange(200), np.arange(200, n)
    t = fit_temperature(probs_to_logits(overconfident[fit_rows]), labels[fit_rows])
    assert 2.0 < t < 4.5
    before = nll(probs_to_logits(overconfident[held_out]), labels[held_out])
    after = nll(probs_to_logits(apply_temperature(overconfident[held_out], t)), labels[held_out])
    assert after < before - 0.1


def test_estimate_fits_the_temperature_on_the_known_rows_only():
    probs = np.array([[0.99, 0.01], [0.99, 0.01], [0.01, 0.99], [0.6, 0.4]])
    known = np.array([0, 1, 1, -1])  # the model is wrong on a known row: it must become less confident
    est = estimate_labels(probs, np.full((4, 1), -1), known=known)
    assert est.temperature > 1.0
    assert est.prior[3, 0] < 0.6


def test_flag_score_and_ordinal_priority():
    post = np.array([[0.1, 0.1, 0.8], [0.1, 0.8, 0.1], [0.2, 0.3, 0.5]])
    major = np.array([0, 0, -1])
    np.testing.assert_allclose(flag_scores(post, major), [0.9, 0.9, 0.0])
    pri = review_priority(post, major, ordinal=True)
    assert pri[0] > pri[1]  # a likely normal->plus error ranks above a likely normal->pre-plus one
    np.testing.assert_allclose(pri, [0.1 * 0.5 + 0.8 * 1.0, 0.8 * 0.5 + 0.1 * 1.0, 0.0])
    np.testing.assert_allclose(review_priority(post, major, ordinal=False), flag_scores(post, major))


def test_a_vote_outside_the_class_range_is_an_error():
    with pytest.raises(ValueError, match="class 3"):
        estimate_labels(np.full((2, 3), 1 / 3), np.array([[0], [3]]))


def test_pattern_likelihood_is_a_distribution_over_patterns_for_each_class():
    import itertools

    from engine.estimate import pattern_likelihood

    rng = np.random.default_rng(0)
    conf = rng.dirichlet([3, 1, 1], size=(2, 3))  # 2 experts, (K, K) rows
    every = np.array(list(itertools.product(range(-1, 3), repeat=2)))  # -1 = not graded counts as a pattern
    every = every[(every >= 0).any(1)]
    post = rng.dirichlet([1, 1, 1], size=len(every))
    lik = pattern_likelihood(post, every, conf, strength=5.0)
    # the product term sums to 1 over graded patterns when "not graded" is folded in: check per class that the
    # likelihood is a proper mixture of the smoothed product and the empirical pattern frequencies
    counts = post.sum(0)
    product = np.ones((len(every), 3))
    for e in range(2):
        graded = every[:, e] >= 0
        product[graded] *= conf[e][:, every[graded, e]].T
    np.testing.assert_allclose(lik, (5.0 * product + post) / (5.0 + counts), rtol=1e-9)


def test_correlated_mode_does_not_count_experts_who_err_together_twice():
    """Three experts who err together on 'hard' images: the independent model is over-sure of the majority there;
    scoring the vote pattern as one observation estimates the number of wrong majority labels better."""
    from engine.estimate import label_estimate

    rng = np.random.default_rng(4)
    n, k = 3000, 3
    truth = rng.integers(0, k, n)
    hard = rng.random(n) < 0.3
    wrong_class = (truth + rng.integers(1, k, n)) % k
    votes = np.where(rng.random((n, 3)) < 0.9, truth[:, None], rng.integers(0, k, (n, 3)))
    together = hard & (rng.random(n) < 0.5)  # on half the hard images all three see the same wrong class
    votes[together] = wrong_class[together, None]
    prior = np.full((n, k), 0.05)
    prior[np.arange(n), truth] = 0.9  # a good image model
    known = np.where(np.arange(n) < 60, truth, -1)
    from engine.data.aggregate import MajorityVote

    maj = MajorityVote().fit(votes, k).labels_
    really_wrong = int(((maj != truth) & (known < 0)).sum())
    expected, recovery = {}, {}
    for mode in ("independent", "correlated"):
        post = label_estimate(prior, votes, known=known, calibrate=False, calibration_rows=known >= 0,
                              experts=mode).posterior
        expected[mode] = float((1 - post[np.arange(n), maj])[known < 0].sum())
        recovery[mode] = float((post.argmax(1) == truth).mean())
    # independent experts who agree look certain: it expects a few dozen errors where there are hundreds
    assert expected["independent"] < 0.1 * really_wrong
    assert expected["correlated"] > 0.4 * really_wrong
    assert recovery["correlated"] > recovery["independent"] + 0.03


def test_with_one_expert_the_modes_agree():
    from engine.estimate import label_estimate

    rng = np.random.default_rng(5)
    prior = rng.dirichlet([2, 2, 2], size=200)
    votes = rng.integers(0, 3, (200, 1))
    known = np.full(200, -1)
    a = label_estimate(prior, votes, known=known, calibrate=False, calibration_rows=known >= 0, experts="correlated")
    b = label_estimate(prior, votes, known=known, calibrate=False, calibration_rows=known >= 0, experts="independent")
    np.testing.assert_allclose(a.posterior, b.posterior)
    with pytest.raises(ValueError, match="experts must be one of"):
        label_estimate(prior, votes, known=known, calibrate=False, calibration_rows=known >= 0, experts="bogus")


def test_one_grader_with_a_prior_learnt_from_the_votes_em_trusts_every_vote_moments_do_not():
    """One vote per image: a network trained on those votes predicts P(vote | image), so EM explains each vote by an
    expert who is always right; fitting the expert once against the model (moments) keeps the model's evidence."""
    rng = np.random.default_rng(0)
    n, k = 3000, 3
    truth = rng.integers(0, k, n)
    pi = np.full((k, k), 0.2) + np.eye(k) * 0.4  # right 60 % of the time, otherwise uniform
    votes = np.array([[rng.choice(k, p=pi[t])] for t in truth])
    sharp = np.full((n, k), 0.05)
    sharp[np.arange(n), truth] = 0.9
    prior = sharp @ pi
    really_wrong = int((votes[:, 0] != truth).sum())
    em = estimate_labels(prior, votes, temperature=1.0, confusion_fit="em")
    mo = estimate_labels(prior, votes, temperature=1.0, confusion_fit="moments")
    assert np.diag(em.confusions[0]).min() > 0.9
    assert (em.posterior.argmax(1) == truth).mean() < 0.65
    assert flag_scores(em.posterior, votes[:, 0]).sum() < 0.1 * really_wrong
    assert (mo.posterior.argmax(1) == truth).mean() > 0.95
    assert 0.8 * really_wrong < flag_scores(mo.posterior, votes[:, 0]).sum() < 1.3 * really_wrong
    # the meta rows agree by selection: adding them changes nothing in the moments fit
    known = np.r_[np.full(n, -1), np.arange(30) % k]
    with_meta = estimate_labels(np.r_[prior, np.eye(k)[known[n:]]], np.r_[votes, known[n:, None]], known=known,
                                temperature=1.0, confusion_fit="moments")
    np.testing.assert_allclose(with_meta.confusions, mo.confusions)
    np.testing.assert_array_equal(with_meta.posterior[n:], np.eye(k)[known[n:]])
    with pytest.raises(ValueError, match="confusion_fit must be one of"):
        estimate_labels(prior, votes, temperature=1.0, confusion_fit="bogus")
