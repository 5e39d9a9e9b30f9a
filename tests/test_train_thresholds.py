from __future__ import annotations

import numpy as np
import pytest

from coder.errors import NotFittedError
from coder.train.thresholds import ThresholdTuner

SYSTEMS = ["ICD-10-CM", "ICD-10-CM", "ICD-10-PCS"]


def test_system_threshold_maximises_micro_f1():
    scores = np.array([[0.9, 0.1, 0.7], [0.6, 0.2, 0.1], [0.3, 0.8, 0.6]])
    labels = np.array([[1, 0, 1], [1, 0, 0], [0, 1, 1]])
    tuner = ThresholdTuner(grid=[0.25, 0.5, 0.75], per_code=False).fit(scores, labels, systems=SYSTEMS)
    assert tuner.system_thresholds_ == {"ICD-10-CM": 0.5, "ICD-10-PCS": 0.25}  # PCS ties at 0.25 and 0.5: lowest wins
    assert tuner.dev_f1_ == {"ICD-10-CM": 1.0, "ICD-10-PCS": 1.0}
    np.testing.assert_array_equal(tuner.predict(scores), labels.astype(bool))


def test_per_code_threshold_only_where_it_helps():
    # label 0: positives 0.9/0.8, negatives 0.3; label 1: positives 0.3. The system threshold
    # 0.25 serves label 1 (F1 8/11 vs 4/6 at 0.5); label 0 then gains its own 0.5 (F1 1.0).
    scores = np.array([[0.9, 0.3, 0], [0.8, 0.3, 0], [0.3, 0.1, 0], [0.3, 0.1, 0], [0.3, 0.1, 0]])
    labels = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]])
    tuner = ThresholdTuner(grid=[0.25, 0.5, 0.75]).fit(scores, labels, systems=SYSTEMS)
    assert tuner.system_thresholds_["ICD-10-CM"] == 0.25
    np.testing.assert_array_equal(tuner.thresholds_[:2], [0.5, 0.25])
    assert tuner.dev_f1_["ICD-10-CM"] == 1.0
    without = ThresholdTuner(grid=[0.25, 0.5, 0.75], per_code=False).fit(scores, labels, systems=SYSTEMS)
    assert without.dev_f1_["ICD-10-CM"] == pytest.approx(8 / 11)


def test_unfitted_tuner_refuses_to_predict():
    with pytest.raises(NotFittedError, match="not fitted"):
        ThresholdTuner().predict(np.zeros((1, 1)))


def test_micro_f1_counts_gold_codes_outside_the_labels():
    from coder.train.thresholds import micro_f1

    systems = ["ICD-10-CM", "ICD-10-PCS"]
    predicted = np.array([[True, False]])
    targets = np.array([[1, 0]])
    gold = {"ICD-10-CM": {"n1": {"I10", "Z99.9"}}, "ICD-10-PCS": {}}
    # tp 1, fp 0, gold 2 (one unknown to the model): F1 = 2 / (1 + 0 + 2)
    assert micro_f1(predicted, targets, systems=systems, gold=gold) == {"ICD-10-CM": pytest.approx(2 / 3), "ICD-10-PCS": 0.0}
