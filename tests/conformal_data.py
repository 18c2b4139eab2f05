"""A realistic, miscalibrated 10-class problem for the conformal tests (no model needed).

Each class has its own difficulty and one class it is confused with (cat/dog-like pairs); the
logits of the "model" are the true evidence times 2, so its probabilities are overconfident
(temperature scaling brings T back near 2). Accuracy is about 80 %, the hardest class about
60 %, the top-1 ECE about 0.1.
"""

from __future__ import annotations

import numpy as np
import torch

K = 10
#: How far each class stands out (small = hard) and the class it is mistaken for.
SEPARATION = np.array([3.2, 3.0, 2.0, 1.6, 2.6, 2.2, 3.4, 2.8, 3.0, 2.4])
CONFUSED_WITH = np.array([8, 9, 5, 5, 7, 3, 4, 4, 0, 1])
OVERCONFIDENCE = 5.0


def miscalibrated_logits(per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (K * per_class, K) float64, labels int64), grouped by class: rows
    c * per_class .. (c + 1) * per_class - 1 have label c."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(K), per_class)
    evidence = rng.normal(size=(len(labels), K))
    evidence[np.arange(len(labels)), labels] += SEPARATION[labels]
    evidence[np.arange(len(labels)), CONFUSED_WITH[labels]] += (
        0.6 * SEPARATION[labels] * rng.uniform(size=len(labels))
    )
    return torch.tensor(OVERCONFIDENCE * evidence), torch.tensor(labels)


def miscalibrated_probs(
    per_class: int, seed: int, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    logits, labels = miscalibrated_logits(per_class, seed)
    return torch.softmax(logits / temperature, dim=1), labels
