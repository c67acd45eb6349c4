"""Temperature scaling: the fit lowers ECE on over-confident logits, keeps every argmax, and the export stores it."""
from __future__ import annotations

import json

import numpy as np
import pytest

from toolchain.export.calibration import (calibrate_logits, calibration_report, expected_calibration_error,
                                          fit_temperature, nll, softmax)


def overconfident(n: int = 2000, seed: int = 0, scale: float = 4.0):
    """Logits whose true temperature is ``scale``: labels drawn from softmax(z), the model says softmax(scale z)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, size=(n, 3))
    labels = np.array([rng.choice(3, p=p) for p in softmax(z)])
    return scale * z, labels


def test_fit_recovers_the_temperature_and_lowers_ece():
    dev_logits, dev_labels = overconfident(seed=1)
    test_logits, test_labels = overconfident(seed=2)
    t = fit_temperature(dev_logits, dev_labels)
    assert t == pytest.approx(4.0, rel=0.15)
    report = calibration_report(dev_logits, dev_labels, test_logits, test_labels)
    assert report["test_ece_before"] > 0.1 and report["test_ece_after"] < 0.03
    assert report["test_nll_after"] < report["test_nll_before"]
    # accuracy is untouched: dividing by one positive number keeps every argmax
    assert (softmax(test_logits, t).argmax(-1) == test_logits.argmax(-1)).all()


def test_calibrated_logits_keep_a_temperature_near_one():
    logits, labels = overconfident(seed=3, scale=1.0)
    assert fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.15)


def test_fitted_temperature_minimises_dev_nll():
    logits, labels = overconfident(seed=4)
    t = fit_temperature(logits, labels)
    assert nll(logits, labels, t) <= min(nll(logits, labels, t * f) for f in (0.9, 1.1)) + 1e-9


def test_ece_objective_reaches_a_lower_dev_ece_than_the_nll_fit():
    """Logits whose errors are a few very confident ones: the NLL fit softens everything to pay for them, the
    ECE fit keeps the confident correct majority calibrated. Each objective is the best at its own measure."""
    rng = np.random.default_rng(7)
    logits, labels = overconfident(600, seed=6, scale=1.5)
    wrong = rng.choice(len(labels), 12, replace=False)
    logits[wrong] = 0.0
    logits[wrong, (labels[wrong] + 1) % 3] = 12.0   # confidently wrong
    t_nll, t_ece = fit_temperature(logits, labels, "nll"), fit_temperature(logits, labels, "ece")
    ece_at = lambda t: expected_calibration_error(softmax(logits, t), labels)  # noqa: E731
    assert ece_at(t_ece) < ece_at(t_nll) - 0.005, (t_ece, ece_at(t_ece), t_nll, ece_at(t_nll))
    assert nll(logits, labels, t_nll) <= nll(logits, labels, t_ece)
    report = calibration_report(logits, labels, logits, labels, "ece")
    assert report["objective"] == "ece" and report["temperature"] == pytest.approx(t_ece, rel=1e-5)
    with pytest.raises(ValueError, match="calibration objective 'mse'"):
        fit_temperature(logits, labels, "mse")


def test_ece_of_a_crafted_case():
    # 10 items at confidence 0.9 of which 6 are right: one bin, |0.6 - 0.9| = 0.3
    probs = np.tile([0.9, 0.05, 0.05], (10, 1))
    labels = np.array([0] * 6 + [1] * 4)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.3)


def test_each_head_of_a_joint_model_gets_its_own_temperature():
    labels = ["negative", "positive", "topic:A", "topic:B"]
    main_logits, main_gold = overconfident(600, seed=5, scale=3.0)
    logits = np.concatenate([np.pad(main_logits[:, :2], ((0, 0), (0, 2))),
                             np.pad(main_logits[:, :2] / 3.0, ((0, 0), (2, 0)))])
    gold = np.concatenate([np.where(main_gold == 2, 0, main_gold).clip(0, 1),
                           2 + np.where(main_gold == 2, 0, main_gold).clip(0, 1)])
    out = calibrate_logits(labels, (logits, gold), (logits, gold))
    assert set(out) == {"main", "topic"}
    assert out["main"]["temperature"] > 1.5 * out["topic"]["temperature"]
