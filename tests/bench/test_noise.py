"""Fast tests of the benchmark's noise generators and simulated expert panel (bench/common.py)."""

import numpy as np
import pytest

from bench.common import (
    NUM_CLASSES,
    boundary_margin,
    expert_panel,
    feature_noise,
    majority,
    make_noisy_labels,
    pair_flip_noise,
    reference_probas,
    split_digits,
    uniform_noise,
)

RATES = (0.0, 0.2, 0.4, 0.6, 0.8)


@pytest.fixture(scope="module")
def digits():
    s = split_digits(0)
    return s, reference_probas(s.train_x, s.train_y, seed=0)


def test_split_sizes_and_meta_balance():
    s = split_digits(0)
    assert s.meta_x.shape == (100, 1, 8, 8) and len(s.test_y) == 500 and len(s.train_y) == 1797 - 600
    assert np.bincount(s.meta_y, minlength=NUM_CLASSES).tolist() == [10] * NUM_CLASSES
    assert s.train_x.dtype == np.uint8 and s.train_x.max() == 255


@pytest.mark.parametrize("rate", RATES)
def test_uniform_exact_rate_never_true_class(rate):
    y = np.arange(1000) % NUM_CLASSES
    noisy = uniform_noise(y, rate, np.random.default_rng(0))
    assert (noisy != y).mean() == pytest.approx(rate, abs=1e-9)
    assert noisy.min() >= 0 and noisy.max() < NUM_CLASSES
    wrong = noisy != y
    if wrong.sum() > 100:  # other classes drawn roughly uniformly
        shift = (noisy[wrong] - y[wrong]) % NUM_CLASSES
        assert set(np.unique(shift)) == set(range(1, NUM_CLASSES))


@pytest.mark.parametrize("rate", RATES)
def test_pair_flip_goes_to_next_class(rate):
    y = np.arange(1000) % NUM_CLASSES
    noisy = pair_flip_noise(y, rate, np.random.default_rng(1))
    wrong = noisy != y
    assert wrong.mean() == pytest.approx(rate, abs=1e-9)
    assert np.all(noisy[wrong] == (y[wrong] + 1) % NUM_CLASSES)


def test_generators_are_deterministic(digits):
    s, proba = digits
    for kind in ("uniform", "class-flip", "feature", "panel"):
        a = make_noisy_labels(kind, s.train_y, 0.4, 3, s.train_x)["labels"]
        b = make_noisy_labels(kind, s.train_y, 0.4, 3, s.train_x)["labels"]
        c = make_noisy_labels(kind, s.train_y, 0.4, 4, s.train_x)["labels"]
        assert np.array_equal(a, b), kind
        if kind != "feature":  # feature noise depends on the split only, not on a random draw
            assert not np.array_equal(a, c), kind


@pytest.mark.parametrize("rate", RATES)
def test_feature_noise_flips_smallest_margins_to_second_choice(digits, rate):
    s, proba = digits
    noisy = feature_noise(s.train_y, rate, proba)
    wrong = noisy != s.train_y
    assert wrong.mean() == pytest.approx(rate, abs=1 / len(s.train_y))
    margin, second = boundary_margin(proba, s.train_y)
    assert np.all(noisy[wrong] == second[wrong])
    if 0 < rate < 1:  # every flipped row is at least as near the boundary as every kept one
        assert margin[wrong].max() <= margin[~wrong].min()


def test_feature_noise_hits_hard_images_more_than_uniform(digits):
    s, proba = digits
    margin, _ = boundary_margin(proba, s.train_y)
    near = np.argsort(margin, kind="stable")[:200]  # the 200 hardest rows (within the 239 = 20% flipped)
    feat = feature_noise(s.train_y, 0.2, proba) != s.train_y
    unif = uniform_noise(s.train_y, 0.2, np.random.default_rng(0)) != s.train_y
    assert feat[near].mean() == 1.0 and unif[near].mean() < 0.5


def test_majority_tie_goes_to_later_class():
    votes = np.array([[1, 1, 2], [0, 3, 5], [4, 4, 4]])
    labels, tie = majority(votes)
    assert labels.tolist() == [1, 5, 4] and tie.tolist() == [False, True, False]


@pytest.mark.parametrize("rate", (0.2, 0.4, 0.6, 0.8))
def test_panel_reaches_requested_majority_rate(digits, rate):
    s, proba = digits
    out = expert_panel(s.train_y, rate, proba, seed=0)
    assert out["votes"].shape == (len(s.train_y), 3)
    assert (out["labels"] != s.train_y).mean() == pytest.approx(out["rate"])
    assert out["rate"] == pytest.approx(rate, abs=0.01)
    # the majority is the vote of the experts (engine tie rule), and each expert has its own error rate
    labels, _ = majority(out["votes"])
    assert np.array_equal(labels, out["labels"])
    assert len({round(r, 3) for r in out["expert_rates"]}) == 3
    again = expert_panel(s.train_y, rate, proba, seed=0)
    assert np.array_equal(again["votes"], out["votes"])


def test_a_damaged_image_cache_file_is_rendered_again(tmp_path, monkeypatch):
    """A cache file emptied by a crash (seen after a machine restart) must not break every later run."""
    from bench import fundus

    monkeypatch.setattr(fundus, "CACHE", tmp_path)
    fresh_images, fresh_severity = fundus.render_set(6, 0, 16)
    path = tmp_path / "fundus_n6_s0_px16.npz"
    assert path.is_file() and not list(tmp_path.glob("*.tmp.npz"))
    path.write_bytes(b"")
    images, severity = fundus.render_set(6, 0, 16)
    np.testing.assert_array_equal(images, fresh_images)
    np.testing.assert_array_equal(severity, fresh_severity)
    assert path.stat().st_size > 0  # written again
