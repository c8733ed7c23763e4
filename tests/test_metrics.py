"""Scores against hand-computed confusion matrices."""

import numpy as np
import pytest
import torch

from petseg import metrics


def test_confusion_matrix_counts_rows_true_columns_pred():
    target = torch.tensor([0, 0, 1, 1, 2, 2])
    pred = torch.tensor([0, 1, 1, 1, 0, 2])
    cm = metrics.confusion_matrix(pred, target, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_ignore_index_and_out_of_range_targets_are_skipped():
    target = torch.tensor([0, 255, 1, 7])
    pred = torch.tensor([0, 1, 0, 1])
    cm = metrics.confusion_matrix(pred, target, 3, ignore_index=255)
    assert cm.tolist() == [[1, 0, 0], [1, 0, 0], [0, 0, 0]]


def test_scores_from_hand_computed_matrix():
    cm = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    assert metrics.pixel_accuracy(cm) == pytest.approx(4 / 6)
    # IoU: class0 1/(2+2-1)=1/3, class1 2/(3+2-2)=2/3, class2 1/(1+2-1)=1/2
    np.testing.assert_allclose(metrics.iou_per_class(cm), [1 / 3, 2 / 3, 1 / 2])
    assert metrics.mean_iou(cm) == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    np.testing.assert_allclose(metrics.dice_per_class(cm), [2 / 4, 4 / 5, 2 / 3])


def test_absent_class_is_nan_and_left_out_of_the_mean():
    cm = np.array([[3, 0, 0], [1, 4, 0], [0, 0, 0]])
    iou = metrics.iou_per_class(cm)
    assert np.isnan(iou[2])
    assert metrics.mean_iou(cm) == pytest.approx((3 / 4 + 4 / 5) / 2)


def test_all_correct_is_perfect():
    target = torch.randint(0, 3, (2, 8, 8))
    cm = metrics.confusion_matrix(target, target, 3)
    assert metrics.pixel_accuracy(cm) == 1.0
    assert metrics.mean_iou(cm) == 1.0
