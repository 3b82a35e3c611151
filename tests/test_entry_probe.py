"""The probe's nearest-class-mean score and its tie rule, on features whose answer is known."""

import pytest
import torch

from edge_smsp.core.errors import DataError
from edge_smsp.transfer.entry_probe import ProbedEntry, best_probed, nearest_mean_accuracy


def clusters(centres: torch.Tensor, per_class: int, spread: float, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(centres)).repeat_interleave(per_class)
    noise = spread * torch.randn(len(labels), centres.shape[1], generator=generator)
    return centres[labels] + noise, labels


def test_separated_classes_score_one_and_merged_classes_score_near_chance_between_them():
    centres = torch.eye(3) * 10 + 1
    features, labels = clusters(centres, 40, 0.1)
    assert nearest_mean_accuracy(features, labels, 3) == 1.0
    # Classes 1 and 2 drawn from the same place: class 0 is still recognised, 1 and 2 are a coin toss.
    merged = torch.stack([centres[0], centres[1], centres[1]])
    features, labels = clusters(merged, 200, 0.5, seed=1)
    accuracy = nearest_mean_accuracy(features, labels, 3)
    assert 1 / 3 + 0.2 < accuracy < 1 / 3 + 1 / 3 + 0.1  # ~2/3: class 0 right, half of 1 and 2
    # Means never see the image they classify: one point per class in each fold, shuffled labels give no edge.
    features, labels = clusters(centres, 40, 0.1)
    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(2))]
    assert nearest_mean_accuracy(features, shuffled, 3) < 0.6


def test_too_few_samples_or_mismatched_labels_are_refused():
    features = torch.randn(5, 4)
    with pytest.raises(DataError, match="two training images of every class"):
        nearest_mean_accuracy(features, torch.tensor([0, 0, 1, 1, 2]), 3)
    with pytest.raises(DataError, match="two training images"):
        nearest_mean_accuracy(features, torch.tensor([0, 0, 1, 1]), 2)


def test_the_best_accuracy_wins_and_a_tie_goes_to_the_more_similar_candidate():
    first, second, third = (
        ProbedEntry(entry=name, similarity=s, accuracy=a)
        for name, s, a in (("a", 3.0, 0.90), ("b", 2.0, 0.95), ("c", 1.0, 0.95))
    )
    assert best_probed([first, second, third]).entry == "b"
    assert best_probed([first, ProbedEntry("d", 2.5, 0.90)]).entry == "a"
    with pytest.raises(DataError, match="no pool entries"):
        best_probed([])
