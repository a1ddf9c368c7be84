"""Held-out metrics per task type: accuracy (cls), MAE (reg), mIoU (seg), mAP@0.5 (det).

All take numpy arrays. Boxes are [cx, cy, w, h] normalised (the det unit's format).
"""
from __future__ import annotations

import numpy as np

HIGHER_IS_BETTER = {"cls": True, "reg": False, "seg": True, "det": True}
METRIC_NAME = {"cls": "accuracy", "reg": "mae", "seg": "miou", "det": "map50"}


def accuracy(pred: np.ndarray, target: np.ndarray) -> float:
    return float(np.mean(np.asarray(pred) == np.asarray(target)))


def mae(pred: np.ndarray, target: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(pred, np.float64) - np.asarray(target, np.float64))))


def iou_sums(pred: np.ndarray, target: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of intersection and of union per class, (n_classes,) each: they add up over shards."""
    pred, target = np.asarray(pred).ravel(), np.asarray(target).ravel()
    inter = np.array([np.sum((pred == c) & (target == c)) for c in range(n_classes)], np.float64)
    union = np.array([np.sum((pred == c) | (target == c)) for c in range(n_classes)], np.float64)
    return inter, union


def miou_from_sums(inter: np.ndarray, union: np.ndarray) -> float:
    """Mean over classes of intersection / union (classes absent everywhere are skipped)."""
    seen = np.asarray(union) > 0
    return float(np.mean(np.asarray(inter)[seen] / np.asarray(union)[seen])) if seen.any() else 0.0


def miou(pred: np.ndarray, target: np.ndarray, n_classes: int) -> float:
    """Mean over classes of IoU accumulated over the whole set (classes absent everywhere are skipped)."""
    return miou_from_sums(*iou_sums(pred, target, n_classes))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of [cx, cy, w, h] boxes, elementwise over the leading shape."""
    a0, a1 = a[..., :2] - a[..., 2:] / 2, a[..., :2] + a[..., 2:] / 2
    b0, b1 = b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2
    wh = np.clip(np.minimum(a1, b1) - np.maximum(a0, b0), 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter
    return inter / np.maximum(union, 1e-9)


def average_precision(scores: np.ndarray, correct: np.ndarray, n_positive: int) -> float:
    """VOC all-point AP of detections (score, is a true positive) against n_positive ground truths."""
    if n_positive == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(correct[order])
    fp = np.cumsum(~correct[order])
    recall = tp / n_positive
    precision = tp / np.maximum(tp + fp, 1e-9)
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[1.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    return float(np.sum((r[1:] - r[:-1]) * p[1:]))


def map50(pred: np.ndarray, target: np.ndarray) -> float:
    """mAP@0.5: pred (n, k, 5) [score, cx, cy, w, h]; target (n, k, 5) [present, cx, cy, w, h].

    At most one box per class per image (the catalogue's det tasks); mean AP over classes with a
    ground truth somewhere.
    """
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    aps = []
    for c in range(pred.shape[1]):
        present = target[:, c, 0] > 0.5
        correct = present & (box_iou(pred[:, c, 1:], target[:, c, 1:]) >= 0.5)
        ap = average_precision(pred[:, c, 0], correct, int(present.sum()))
        if not np.isnan(ap):
            aps.append(ap)
    return float(np.mean(aps)) if aps else 0.0


def task_metric(task_type: str, pred: np.ndarray, target: np.ndarray, n_classes: int = 0) -> float:
    if task_type == "cls":
        return accuracy(pred, target)
    if task_type == "reg":
        return mae(pred, target)
    if task_type == "seg":
        return miou(pred, target, n_classes)
    if task_type == "det":
        return map50(pred, target)
    raise ValueError(f"unknown task type {task_type!r}")


def chance(task_type: str, train_target: np.ndarray, test_target: np.ndarray, n_classes: int = 0) -> float:
    """A no-image baseline on the test set: the majority class, the training mean, all-background,
    or the mean training box with score 1."""
    train_target, test_target = np.asarray(train_target), np.asarray(test_target)
    if task_type == "cls":
        return accuracy(np.full(len(test_target), np.bincount(train_target.astype(int)).argmax()), test_target)
    if task_type == "reg":
        return mae(np.full(len(test_target), train_target.mean()), test_target)
    if task_type == "seg":
        return miou(np.zeros_like(test_target), test_target, n_classes)
    present = train_target[..., 0:1] > 0.5
    mean_box = (train_target[..., 1:] * present).sum(0) / np.maximum(present.sum(0), 1)  # (k, 4)
    pred = np.concatenate([np.ones((*test_target.shape[:2], 1)), np.broadcast_to(mean_box, test_target[..., 1:].shape)], -1)
    return map50(pred, test_target)
