"""Label estimation: turn the evidence about each image into the soft label a clinician reviews.

Evidence, per image i (N images, K classes, E experts):
  - out-of-sample model probabilities `pred_probs` (N, K): from a model that never trained on image i's label
    (cross-fitting, see `engine.crossfit`), so the model cannot simply echo a label it memorised;
  - the experts' votes `votes` (N, E) (-1 = not graded);
  - known labels `known` (N,) (-1 = unknown): the clean meta set.

Model (Dawid & Skene 1979 with an image-dependent prior, as in Raykar et al. 2010):
    P(y_i = k | x_i, votes_i) ∝ q_ik · Π_e π_e[k, v_ie]
where q_i is the calibrated model probability (the prior from the image; for an image without one, the class
frequencies, estimated too) and π_e (K, K) is expert e's confusion
matrix (row = true class, column = vote). π_e is estimated by EM over every graded image, with the meta set's
known labels held fixed (they anchor what each class looks like to each expert) and a Dirichlet prior that keeps a
rarely seen row near "mostly right". Images nobody graded get the calibrated model probability.

Calibration: temperature scaling (Guo et al. 2017) fitted on the meta set's out-of-sample logits, so `confidence`
means what it says. Scores (direction: higher = more likely mislabelled):
  - `flag_score` = P(majority label is wrong) = 1 − P(y = majority);
  - `priority` = expected severity distance Σ_k P(y=k)·|k − majority| / (K − 1) on an ordinal scale (a normal↔plus
    error outranks an adjacent one), = `flag_score` on a nominal scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EPS = 1e-12


# ---------------------------------------------------------------------------------------------------------------
# calibration


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def nll(logits: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of labels y (N,) under softmax(logits) (N, K)."""
    return float(-log_softmax(logits)[np.arange(len(y)), y].mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray, *, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature T minimising the NLL of softmax(logits / T) on labels y; 1.0 without data.

    The NLL is convex in 1/T, so a bounded scalar search finds the optimum."""
    from scipy.optimize import minimize_scalar

    logits, y = np.asarray(logits, float), np.asarray(y, int)
    if len(y) == 0:
        return 1.0
    res = minimize_scalar(lambda log_t: nll(logits / np.exp(log_t), y), bounds=np.log(bounds), method="bounded")
    return float(np.exp(res.x))


def probs_to_logits(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probs, float), EPS, 1.0))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log probs / T) (N, K)."""
    return np.exp(log_softmax(probs_to_logits(probs) / temperature))


# ---------------------------------------------------------------------------------------------------------------
# Dawid–Skene with a model prior


@dataclass
class Estimate:
    """Result of `estimate_labels` (N images, K classes, E experts)."""

    posterior: np.ndarray  # (N, K) P(true class | image, votes)
    prior: np.ndarray  # (N, K) calibrated model probabilities (uniform where there was none)
    confusions: np.ndarray  # (E, K, K) expert confusion matrices, row = true class, column = vote
    temperature: float
    iterations: int


def _vote_onehot(votes: np.ndarray, k: int) -> np.ndarray:
    """(N, E) votes (-1 = none) -> (N, E, K) one-hot (all zeros where not graded)."""
    votes = np.asarray(votes, int)
    out = np.zeros((*votes.shape, k))
    n_idx, e_idx = np.nonzero(votes >= 0)
    out[n_idx, e_idx, votes[n_idx, e_idx]] = 1.0
    return out


def expert_confusions(posterior: np.ndarray, onehot: np.ndarray, *, diag_prior: float, off_prior: float) -> np.ndarray:
    """M-step: π_e[k, v] ∝ prior[k, v] + Σ_i P(y_i=k) [v_ie = v].  (N, K), (N, E, K) -> (E, K, K)."""
    k = posterior.shape[1]
    counts = np.einsum("nk,nev->ekv", posterior, onehot)
    prior = np.full((k, k), off_prior) + np.eye(k) * (diag_prior - off_prior)
    counts = counts + prior[None]
    return counts / counts.sum(2, keepdims=True)


def pattern_likelihood(posterior: np.ndarray, votes: np.ndarray, confusions: np.ndarray, *, strength: float
                       ) -> np.ndarray:
    """P(image i's whole vote pattern | y=k) (N, K): a categorical over the observed patterns per class, smoothed
    toward the independent-experts product Π_e π_e[k, v_e] with `strength` pseudo-images per class:
        L_k(p) = (s · Π_e π_e[k, p_e] + Σ_{i: pattern_i = p} P(y_i = k)) / (s + Σ_i P(y_i = k)).
    Sums to 1 over all patterns for each k. With one expert it is the confusion matrix again; with several it learns
    how often the experts err together (three graders who all see a borderline image the same wrong way)."""
    patterns, inverse = np.unique(votes, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    k = posterior.shape[1]
    product = np.ones((len(patterns), k))
    for e in range(votes.shape[1]):
        graded = patterns[:, e] >= 0
        product[graded] *= confusions[e][:, patterns[graded, e]].T
    counts = np.zeros((len(patterns), k))
    np.add.at(counts, inverse, posterior)
    lik = (strength * product + counts) / (strength + posterior.sum(0))[None, :]
    return np.clip(lik[inverse], EPS, None)


def _posterior(log_prior: np.ndarray, onehot: np.ndarray, confusions: np.ndarray, known: np.ndarray) -> np.ndarray:
    """E-step: log P(y_i=k) = log q_ik + Σ_e log π_e[k, v_ie]; rows with a known label are one-hot."""
    log_lik = np.einsum("nev,ekv->nk", onehot, np.log(confusions))
    post = np.exp(log_softmax(log_prior + log_lik))
    has = known >= 0
    post[has] = np.eye(post.shape[1])[known[has]]
    return post


def estimate_labels(pred_probs: np.ndarray | None, votes: np.ndarray, *, known: np.ndarray | None = None,
                    has_probs: np.ndarray | None = None, temperature: float | None = None,
                    calibration_rows: np.ndarray | None = None, diag_prior: float = 2.0, off_prior: float = 1.0,
                    pattern_strength: float | None = None, confusion_fit: str = "em",
                    max_iter: int = 100, tol: float = 1e-6) -> Estimate:
    """Posterior over the true class of every image from model probabilities, expert votes and known labels.

    pred_probs (N, K) out-of-sample probabilities or None (votes only: classic Dawid–Skene with a uniform prior);
    votes (N, E) int, -1 = not graded; known (N,) int, -1 = unknown (the meta set's labels, held fixed);
    has_probs (N,) bool: rows whose model probability is real (default: all); temperature: fixed T, or None to fit
    it on `calibration_rows` (default: the rows with a known label and a model probability).
    Dirichlet prior of each confusion row: `diag_prior` on the vote = true class, `off_prior` elsewhere.
    `pattern_strength` s: when given, the experts' votes on an image are scored as one pattern (see
    `pattern_likelihood`), so errors the experts make together on hard images are not counted as independent
    evidence; None = the classic product of independent confusions.
    `confusion_fit`: `em` (Dawid–Skene) or `moments`: π_e[k, v] ∝ Σ_i q_ik [v_ie = v] over the rows without a known
    label (the experts measured once against the calibrated model), then one E-step with independent experts.
    With one vote per image π is not identifiable from the votes: a model trained on those votes already predicts
    them, so EM tends to explain each vote by an expert who is always right (π ≈ I) and the vote wins every
    disagreement; `moments` is unbiased when the model is calibrated for the truth and underrates the expert when
    it is not (bench/RESULTS.md, issue 9: neither wins every single-expert scenario, so `em` stays the default).
    """
    votes = np.asarray(votes, int)
    n = votes.shape[0]
    if pred_probs is None:
        k = int(votes.max()) + 1 if known is None else int(max(votes.max(), np.max(known))) + 1
        pred_probs = np.full((n, k), 1.0 / k)
        has_probs = np.zeros(n, bool)
    pred_probs = np.asarray(pred_probs, float)
    k = pred_probs.shape[1]
    known = np.full(n, -1) if known is None else np.asarray(known, int)
    has_probs = np.ones(n, bool) if has_probs is None else np.asarray(has_probs, bool)
    if votes.size and votes.max() >= k:
        raise ValueError(f"a vote names class {votes.max()} but pred_probs has {k} classes")
    if temperature is None:
        rows = (known >= 0) & has_probs if calibration_rows is None else np.asarray(calibration_rows, bool)
        temperature = fit_temperature(probs_to_logits(pred_probs[rows]), known[rows]) if rows.any() else 1.0
    model_prior = apply_temperature(pred_probs, temperature)
    class_prior = np.full(k, 1.0 / k)  # for rows without a model probability: learned class frequencies (M-step)

    def prior_now() -> np.ndarray:
        return np.where(has_probs[:, None], model_prior, class_prior[None, :])

    prior = prior_now()
    log_prior = np.log(np.clip(prior, EPS, 1.0))
    onehot = _vote_onehot(votes, k)
    if confusion_fit not in CONFUSION_FITS:
        raise ValueError(f"confusion_fit must be one of {CONFUSION_FITS}, got {confusion_fit!r}")
    if confusion_fit == "moments":
        measured = has_probs & (known < 0)  # the meta rows were chosen because their votes agree: not a measurement
        conf = expert_confusions(np.where(measured[:, None], prior, 0.0), onehot, diag_prior=diag_prior,
                                 off_prior=off_prior)
        return Estimate(_posterior(log_prior, onehot, conf, known), prior, conf, float(temperature), 1)
    # EM starts from the vote shares times the prior (a soft majority vote that the image can tip)
    post = np.exp(log_softmax(log_prior + np.log(onehot.sum(1) + 1e-3)))
    post[known >= 0] = np.eye(k)[known[known >= 0]]
    iterations = 0
    while iterations < max_iter:
        iterations += 1
        conf = expert_confusions(post, onehot, diag_prior=diag_prior, off_prior=off_prior)
        if not has_probs.all():
            class_prior = (post.sum(0) + 1.0) / (len(post) + k)
            prior = prior_now()
            log_prior = np.log(np.clip(prior, EPS, 1.0))
        if pattern_strength is None:
            new = _posterior(log_prior, onehot, conf, known)
        else:
            lik = pattern_likelihood(post, votes, conf, strength=pattern_strength)
            new = np.exp(log_softmax(log_prior + np.log(lik)))
            new[known >= 0] = np.eye(k)[known[known >= 0]]
        delta = float(np.abs(new - post).max()) if n else 0.0
        post = new
        if delta < tol:
            break
    conf = expert_confusions(post, onehot, diag_prior=diag_prior, off_prior=off_prior)
    return Estimate(post, prior, conf, float(temperature), iterations)


EXPERT_MODES = ("correlated", "independent", "none")
CONFUSION_FITS = ("em", "moments")
PATTERN_STRENGTH = 30.0  # pseudo-images per class pulling the vote-pattern likelihood toward independent experts


def label_estimate(prior: np.ndarray, votes: np.ndarray, *, known: np.ndarray, calibrate: bool,
                   calibration_rows: np.ndarray, experts: str = "correlated", confusions: str = "em",
                   has_probs: np.ndarray | None = None) -> Estimate:
    """The product's estimate (what `engine run` and the benchmark both call).

    prior (N, K) out-of-sample model probabilities; votes (N, E); known (N,) meta labels (-1 = unknown);
    calibrate: fit the temperature on `calibration_rows` (else T = 1); experts: `correlated` scores each image's
    vote pattern as one observation (`pattern_likelihood`; with a single expert it is the confusion matrix),
    `independent` multiplies the experts' confusion matrices (classic Dawid–Skene), `none` ignores the votes;
    confusions: how the experts' confusion matrices are fitted (`em` or `moments`, see `estimate_labels`);
    has_probs (N,) bool: the rows whose prior is a real model probability (default: all; see `estimate_labels`).
    EM starts from the vote shares times the prior (classic Dawid–Skene): starting from the model's view alone would
    leave EM at "nothing is known" whenever the model is uninformative (its temperature then flattens it).
    """
    if experts not in EXPERT_MODES:
        raise ValueError(f"experts must be one of {EXPERT_MODES}, got {experts!r}")
    votes = np.asarray(votes, int)
    if experts == "none" or votes.size == 0:
        votes = np.full((len(prior), 1), -1)
    strength = PATTERN_STRENGTH if experts == "correlated" and votes.shape[1] > 1 else None
    return estimate_labels(prior, votes, known=known, has_probs=has_probs, temperature=None if calibrate else 1.0,
                           calibration_rows=calibration_rows, pattern_strength=strength, confusion_fit=confusions)


# ---------------------------------------------------------------------------------------------------------------
# scores


def flag_scores(posterior: np.ndarray, majority: np.ndarray) -> np.ndarray:
    """P(majority label is wrong) (N,) — higher = more likely mislabelled; 0 where there is no majority (-1)."""
    has = majority >= 0
    p = posterior[np.arange(len(posterior)), np.clip(majority, 0, None)]
    return np.where(has, 1.0 - p, 0.0)


def review_priority(posterior: np.ndarray, majority: np.ndarray, *, ordinal: bool) -> np.ndarray:
    """Expected cost of keeping the majority label (N,), higher = review first.

    Ordinal scale: Σ_k P(y=k) |k − majority| / (K − 1), so a likely normal↔plus error outranks an adjacent one with
    the same probability of being wrong; nominal: P(majority is wrong). 0 where there is no majority."""
    k = posterior.shape[1]
    if not ordinal or k < 3:
        return flag_scores(posterior, majority)
    dist = np.abs(np.arange(k)[None, :] - np.clip(majority, 0, None)[:, None]) / (k - 1)
    return np.where(majority >= 0, (posterior * dist).sum(1), 0.0)
