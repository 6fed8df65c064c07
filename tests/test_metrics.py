"""grefel.metrics against scikit-learn, hand-computed cases and the PNG writers."""

from __future__ import annotations

import json
import math
import warnings

import cv2
import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from grefel import metrics as M
from grefel import plots
from grefel.errors import DataError

C = 8


def _random_case(seed: int, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Skewed labels and Dirichlet probabilities that lean towards the true class."""
    rng = np.random.default_rng(seed)
    y = rng.choice(C, size=n, p=[0.3, 0.25, 0.12, 0.12, 0.1, 0.05, 0.04, 0.02])
    alpha = np.ones((n, C))
    alpha[np.arange(n), y] += 3.0
    gamma = rng.gamma(alpha)  # normalised Gamma draws are Dirichlet(alpha) rows
    return gamma / gamma.sum(axis=1, keepdims=True), y


def _assert_matches_sklearn(probs: np.ndarray, y: np.ndarray) -> None:
    pred = probs.argmax(axis=1)
    cm = M.confusion_matrix(y, pred, C)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, skm.confusion_matrix(y, pred, labels=range(C)))
    assert M.accuracy(y, pred) == pytest.approx(skm.accuracy_score(y, pred))
    with warnings.catch_warnings():  # sklearn warns about predicted classes absent from y_true
        warnings.simplefilter("ignore", UserWarning)
        balanced = skm.balanced_accuracy_score(y, pred)
    assert M.mean_class_accuracy(cm) == pytest.approx(balanced)
    assert M.macro_f1(cm) == pytest.approx(
        skm.f1_score(y, pred, average="macro", labels=np.unique(y), zero_division=0.0))
    np.testing.assert_allclose(M.per_class_recall(cm), skm.recall_score(
        y, pred, labels=range(C), average=None, zero_division=np.nan), equal_nan=True)
    np.testing.assert_allclose(M.per_class_precision(cm), skm.precision_score(
        y, pred, labels=range(C), average=None, zero_division=np.nan), equal_nan=True)
    # scikit-learn clips p(true) at float64 eps; with the same clip a zero p(true) costs the same.
    assert M.nll(probs, y, eps=np.finfo(np.float64).eps) == pytest.approx(
        skm.log_loss(y, probs, labels=range(C)), rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_cases_match_sklearn(seed: int) -> None:
    _assert_matches_sklearn(*_random_case(seed))


def test_absent_and_never_predicted_classes_match_sklearn() -> None:
    probs, y = _random_case(3)
    y = np.where(y == 6, 0, y)  # class 6 has no samples ...
    probs[:20] = np.eye(C)[6] * 0.9 + 0.1 / C  # ... but is predicted
    probs[:, 7] = 0.0  # class 7 has samples but is never predicted
    probs /= probs.sum(axis=1, keepdims=True)
    assert (y == 7).any() and not (y == 6).any()
    _assert_matches_sklearn(probs, y)
    cm = M.confusion_matrix(y, probs.argmax(axis=1), C)
    assert np.isnan(M.per_class_recall(cm)[6]) and M.per_class_recall(cm)[7] == 0.0
    assert np.isnan(M.per_class_precision(cm)[7])


def test_hand_computed_example() -> None:
    y_true, y_pred = [0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 0, 2]
    cm = M.confusion_matrix(y_true, y_pred, 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [1, 2, 0], [0, 0, 1]])
    assert M.accuracy(y_true, y_pred) == pytest.approx(4 / 6)
    np.testing.assert_allclose(M.per_class_recall(cm), [1 / 2, 2 / 3, 1])
    np.testing.assert_allclose(M.per_class_precision(cm), [1 / 2, 2 / 3, 1])
    assert M.mean_class_accuracy(cm) == pytest.approx(13 / 18)
    assert M.macro_f1(cm) == pytest.approx(13 / 18)  # F1 = 1/2, 2/3, 1
    assert M.nll([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]], [0, 2]) == pytest.approx(
        -(np.log(0.5) + np.log(0.8)) / 2)


def test_torch_inputs_give_the_numpy_results() -> None:
    probs, y = _random_case(4)
    pred = probs.argmax(axis=1)
    tp, ty = torch.from_numpy(probs).float(), torch.from_numpy(y)
    assert M.accuracy(ty, tp.argmax(dim=1)) == M.accuracy(y, pred)
    np.testing.assert_array_equal(M.confusion_matrix(ty, tp.argmax(dim=1), C), M.confusion_matrix(y, pred, C))
    assert M.nll(tp, ty) == pytest.approx(M.nll(probs, y), rel=1e-5)
    assert M.expected_calibration_error(tp.bfloat16(), ty) == pytest.approx(
        M.expected_calibration_error(probs, y), abs=0.02)


def _top_label_probs(conf: list[float], correct: list[bool],
                     num_classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose top probability is `conf` on class 0; the label is 0 when correct, else 1."""
    rest = (1 - np.asarray(conf))[:, None] / (num_classes - 1)
    probs = np.repeat(rest, num_classes, axis=1)
    probs[:, 0] = conf
    return probs, np.where(correct, 0, 1)


def test_ece_hand_computed() -> None:
    probs, y = _top_label_probs([0.8] * 10, [True] * 6 + [False] * 4)
    assert M.expected_calibration_error(probs, y) == pytest.approx(0.2)
    # 30 samples at 0.9 with 70% right (gap 0.2), 10 at 0.6 with 20% right (gap 0.4): 0.75*0.2 + 0.25*0.4.
    probs, y = _top_label_probs([0.9] * 30 + [0.6] * 10, [True] * 21 + [False] * 9 + [True] * 2 + [False] * 8)
    assert M.expected_calibration_error(probs, y) == pytest.approx(0.25)


def test_ece_zero_when_each_bin_is_calibrated() -> None:
    conf = [0.5] * 4 + [0.75] * 4 + [1.0] * 2
    correct = [True, True, False, False] + [True, True, True, False] + [True, True]
    assert M.expected_calibration_error(*_top_label_probs(conf, correct)) == pytest.approx(0.0, abs=1e-12)


def test_reliability_bins_counts_and_edges() -> None:
    probs, y = _random_case(5)
    bins = M.reliability_bins(probs, y, n_bins=10)
    assert bins["count"].sum() == len(y) and bins["edges"].shape == (11,)
    filled = bins["count"] > 0
    assert np.isnan(bins["confidence"][~filled]).all()
    assert ((bins["confidence"][filled] > bins["edges"][:-1][filled])
            & (bins["confidence"][filled] <= bins["edges"][1:][filled])).all()
    # Bins are right-closed: 0.5 belongs to (0, 0.5], 1.0 to the last bin.
    edge = M.reliability_bins(*_top_label_probs([0.5, 1.0], [True, True]), n_bins=2)
    np.testing.assert_array_equal(edge["count"], [1, 1])


def test_png_writers(tmp_path) -> None:
    probs, y = _random_case(6)
    reliability = tmp_path / "plots" / "reliability.png"
    plots.plot_reliability_diagram(probs, y, reliability, title="valid")
    matrix = tmp_path / "cm.png"
    cm = M.confusion_matrix(y, probs.argmax(axis=1), C)
    plots.plot_confusion_matrix(cm, [f"class{i}" for i in range(C)], matrix)
    plots.plot_confusion_matrix(cm, [f"class{i}" for i in range(C)], tmp_path / "counts.png", normalize=False)
    for path in (reliability, matrix, tmp_path / "counts.png"):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = cv2.imread(str(path))
        assert image is not None and min(image.shape[:2]) > 100
    written = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["cm.png", "counts.png", "reliability.png"]  # no temp files left behind


def test_classification_report_is_json_ready() -> None:
    probs, y = _random_case(7)
    probs[:, 7] = 0.0  # never predicted: precision undefined
    probs /= probs.sum(axis=1, keepdims=True)
    names = [f"c{i}" for i in range(C)]
    report = M.classification_report(probs, y, names, prefix="val/")
    assert set(report) == {f"val/{k}" for k in (
        "accuracy", "mean_class_accuracy", "macro_f1", "nll", "ece", "per_class_recall",
        "per_class_precision", "confusion_matrix", "num_samples", "class_names")}
    cm = M.confusion_matrix(y, probs.argmax(axis=1), C)
    assert report["val/confusion_matrix"] == cm.tolist() and report["val/num_samples"] == len(y)
    assert report["val/macro_f1"] == pytest.approx(M.macro_f1(cm))
    assert report["val/ece"] == pytest.approx(M.expected_calibration_error(probs, y))
    assert report["val/per_class_precision"]["c7"] is None
    assert report["val/per_class_recall"]["c0"] == pytest.approx(M.per_class_recall(cm)[0])
    json.dumps(report, allow_nan=False)


def test_restrict_to_classes_renormalises_in_the_given_order() -> None:
    probs = np.array([[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]])
    out = M.restrict_to_classes(probs, [2, 0, 1])
    np.testing.assert_allclose(out, [[0.5, 1 / 6, 1 / 3], [1 / 3, 1 / 3, 1 / 3]])
    np.testing.assert_allclose(out.sum(axis=1), 1.0)
    with pytest.raises(DataError, match="row 0 has no probability"):
        M.restrict_to_classes([[0.0, 0.0, 1.0]], [0, 1])
    with pytest.raises(DataError, match="distinct"):
        M.restrict_to_classes(probs, [1, 1])
    with pytest.raises(DataError, match="outside 0..3"):
        M.restrict_to_classes(probs, [4])


def test_bad_inputs_raise_one_line_errors() -> None:
    probs, y = _random_case(8, n=10)
    with pytest.raises(DataError, match=r"class index 8 at position 2 is outside 0..7"):
        M.nll(probs, np.array([0, 1, 8, 0, 0, 0, 0, 0, 0, 0]))
    with pytest.raises(DataError, match="row 0 is not a probability distribution.*not logits"):
        M.expected_calibration_error(np.log(probs), y)
    with pytest.raises(DataError, match="10 labels but probs has 9 rows"):
        M.classification_report(probs[:9], y, [str(i) for i in range(C)])
    with pytest.raises(DataError, match="integer class indices"):
        M.accuracy([0.0, 1.5], [0, 1])
    with pytest.raises(DataError, match="3 names"):
        plots.plot_confusion_matrix(np.eye(2, dtype=int), ["a", "b", "c"], "unused.png")
    with pytest.raises(DataError, match="no class has samples"):
        M.mean_class_accuracy(np.zeros((3, 3), dtype=int))


def test_vote_agreement_by_hand():
    # Face 1: all ten agree. Face 2: split 5/5, so no annotator matches the plurality of the other nine.
    # Face 3: six neutral, two unknown, two not-a-face: only the six neutral votes match the others.
    votes = np.array([[10, 0, 0, 0, 0, 0, 0, 0, 0, 0], [5, 5, 0, 0, 0, 0, 0, 0, 0, 0], [6, 0, 0, 0, 0, 0, 0, 0, 2, 2]])
    probs = np.array([[0.9, 0.1] + [0] * 6, [0.1, 0.9] + [0] * 6, [0.2, 0.1, 0.7] + [0] * 5])
    got = M.vote_agreement(probs, votes)
    assert got["human_ceiling"] == pytest.approx((10 + 0 + 6) / 30)
    assert got["annotator_agreement"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)   # share choosing the model's class
    assert got["top2_accuracy"] == 1.0                                       # neutral is second on face 3
    kl = [math.log(1 / 0.9), 0.5 * math.log(0.5 / 0.1) + 0.5 * math.log(0.5 / 0.9), math.log(1 / 0.2)]
    assert got["kl_from_votes"] == pytest.approx(np.mean(kl), rel=1e-6)
    assert got["faces_with_votes"] == 3
    # Per class, each vote against the plurality of the others on its face. Neutral is the reference of
    # face 1's ten votes (all hits), face 2's five happiness votes, face 3's six neutral votes (hits) and
    # its four unknown / not-a-face votes; happiness is the reference of face 2's five neutral votes.
    assert got["human_recall"][:2] == [pytest.approx(16 / 25), 0.0]
    assert got["human_recall"][2:] == [None] * 6


def test_vote_agreement_ties_share_the_credit_and_shapes_are_checked():
    # Two votes each for neutral and happiness, one for surprise: leaving a surprise vote out gives a tie.
    got = M.vote_agreement(np.full((1, 8), 1 / 8), np.array([[2, 2, 1, 0, 0, 0, 0, 0, 0, 0]]))
    # neutral voter: others 1/2/1 -> happiness wins alone: 0; likewise happiness: 0; surprise: tie of 2 -> 0
    assert got["human_ceiling"] == 0.0
    got = M.vote_agreement(np.full((1, 8), 1 / 8), np.array([[3, 2, 0, 0, 0, 0, 0, 0, 0, 0]]))
    # neutral voters (3): others 2/2 tie between neutral and happiness -> 1/2 each; happiness voters (2): 0
    assert got["human_ceiling"] == pytest.approx(3 * 0.5 / 5)
    # the tie splits each neutral vote's reference: half neutral (a hit), half happiness (a miss)
    assert got["human_recall"][:2] == [pytest.approx(1.5 / (1.5 + 2)), 0.0]
    with pytest.raises(DataError, match="votes"):
        M.vote_agreement(np.full((2, 8), 1 / 8), np.zeros((3, 10)))
