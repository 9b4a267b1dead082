"""The probe's statistics: accuracy and macro-F1 per run, their mean and spread per model, and the paired
difference from the first model with its Student-t interval (closed forms: no scipy)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

METRICS = ("accuracy", "macro_f1")


def t_cdf(t: float, df: int) -> float:
    """Student's t distribution function for an integer ``df`` (the closed forms of Abramowitz & Stegun 26.7.3-4)."""
    theta = math.atan(t / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2:  # odd: A = 2/pi (theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...))
        total, term = 0.0, 1.0
        for k in range(1, (df - 1) // 2 + 1):
            total += term
            term *= 2 * k / (2 * k + 1) * c2
        a = 2 / math.pi * (theta + (s * math.cos(theta) * total if df > 1 else 0.0))
    else:  # even: A = sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
        total, term = 0.0, 1.0
        for k in range(1, df // 2 + 1):
            total += term
            term *= (2 * k - 1) / (2 * k) * c2
        a = s * total
    return 0.5 + a / 2


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection of :func:`t_cdf`)."""
    lo, hi = -1e6, 1e6
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; 0 for one value)."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def paired_interval(reference: list[float], other: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean of the paired differences ``other - reference`` and its Student-t interval (NaN bounds for one pair)."""
    d = np.asarray(other, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    mean = float(d.mean())
    if len(d) < 2:
        return mean, math.nan, math.nan
    half = t_quantile(0.5 + level / 2, len(d) - 1) * float(d.std(ddof=1)) / math.sqrt(len(d))
    return mean, mean - half, mean + half


def scores(predictions: Any, labels: Any, num_classes: int) -> dict[str, float]:
    """Accuracy and macro-F1 (torchmetrics) of class predictions."""
    import torch
    from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score

    preds, target = torch.as_tensor(np.asarray(predictions)), torch.as_tensor(np.asarray(labels))
    return {
        "accuracy": float(multiclass_accuracy(preds, target, num_classes=num_classes, average="micro")),
        "macro_f1": float(multiclass_f1_score(preds, target, num_classes=num_classes, average="macro")),
    }


def summarize(names: list[str], runs: list[list[dict[str, float]]], mode: str) -> list[dict[str, Any]]:
    """The table's rows: per model, mean and std of each metric, and the paired difference from the first model."""
    rows = []
    for name, model_runs in zip(names, runs):
        row: dict[str, Any] = {"model": name, "mode": mode, "runs": len(model_runs)}
        for metric in METRICS:
            values = [r[metric] for r in model_runs]
            row[metric], row[f"{metric}_std"] = mean_std(values)
            reference = [r[metric] for r in runs[0]]
            diff = paired_interval(reference, values) if model_runs is not runs[0] else (math.nan,) * 3
            row[f"{metric}_diff"], row[f"{metric}_diff_low"], row[f"{metric}_diff_high"] = diff
        rows.append(row)
    return rows
