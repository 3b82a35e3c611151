import math

import numpy as np
import pytest

from edge_smsp.core.errors import DataError
from edge_smsp.transfer.leep_score import leep

# Four samples, two source classes, two target labels. By hand:
#   joint P(y, z) = 1/4 * column sums per label: y=0 -> (1.4, 0.6)/4, y=1 -> (0.4, 1.6)/4
#   P(z) = (0.45, 0.55);  P(y=0|z) = (7/9, 3/11),  P(y=1|z) = (2/9, 8/11)
#   per-sample sum_z P(y_i|z) * p_iz = 67/99, 57/99, 57/99, 67/99
HAND_PROBS = np.array([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7], [0.1, 0.9]])
HAND_LABELS = np.array([0, 0, 1, 1])
HAND_LEEP = (math.log(67 / 99) + math.log(57 / 99) + math.log(57 / 99) + math.log(67 / 99)) / 4


def test_hand_computed_example_matches() -> None:
    assert leep(HAND_PROBS, HAND_LABELS) == pytest.approx(HAND_LEEP, abs=1e-9)


def test_labels_need_not_be_contiguous_and_float32_is_accepted() -> None:
    score = leep(HAND_PROBS.astype(np.float32), np.array([7, 7, 3, 3]))
    assert score == pytest.approx(HAND_LEEP, abs=1e-6)


def test_source_class_without_mass_is_ignored() -> None:
    with_empty_column = np.concatenate([HAND_PROBS, np.zeros((4, 1))], axis=1)
    assert leep(with_empty_column, HAND_LABELS) == pytest.approx(HAND_LEEP, abs=1e-12)


def test_perfectly_informative_source_beats_uninformative() -> None:
    labels = np.repeat(np.arange(3), 5)
    informative = np.eye(3)[labels]
    uninformative = np.full((15, 3), 1 / 3)
    assert leep(informative, labels) == pytest.approx(0.0, abs=1e-12)
    # Uniform outputs carry no information: LEEP is the log-likelihood of the label prior, log(1/3).
    assert leep(uninformative, labels) == pytest.approx(math.log(1 / 3), abs=1e-12)
    assert leep(informative, labels) > leep(uninformative, labels)


def test_leep_is_at_most_zero_and_invariant_to_permuting_source_classes() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        n, z, k = rng.integers(2, 60), rng.integers(1, 12), rng.integers(1, 6)
        probs = rng.dirichlet(np.full(z, 0.5), size=n)
        labels = rng.integers(0, k, size=n)
        score = leep(probs, labels)
        assert score <= 1e-12
        permuted = probs[:, rng.permutation(z)]
        assert leep(permuted, labels) == pytest.approx(score, abs=1e-12)


@pytest.mark.parametrize(
    ("probs", "labels", "message"),
    [
        (np.ones(4), np.zeros(4, dtype=int), "shape"),
        (np.zeros((0, 3)), np.zeros(0, dtype=int), "shape"),
        (HAND_PROBS, np.array([0, 1, 0]), "one target label per sample"),
        (HAND_PROBS, np.array([0.0, 1.0, 0.0, 1.0]), "integers"),
        (HAND_PROBS, np.array([0, -1, 0, 1]), ">= 0"),
        (HAND_PROBS * 2, HAND_LABELS, "sum to 1"),
        (HAND_PROBS - 0.5, HAND_LABELS, "non-negative"),
        (np.full((4, 2), np.nan), HAND_LABELS, "finite"),
    ],
)
def test_bad_input_raises_data_error(probs: np.ndarray, labels: np.ndarray, message: str) -> None:
    with pytest.raises(DataError, match=message):
        leep(probs, labels)
