"""A classifier test (CaloChallenge high-level classifier): can a network tell candidate from reference?

As in the CaloChallenge evaluation: a fully connected network (two hidden layers of 512 with leaky
ReLU and dropout) on standardised high-level features, trained with Adam (lr 2e-4, batches of
1000) on 60% of the events, the epoch with the best validation loss (20%) kept, and the ROC AUC
measured on the remaining 20%. AUC 0.5 means indistinguishable, 1.0 perfectly separable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class ClassifierSettings:
    hidden: int = 512
    epochs: int = 50
    lr: float = 2e-4
    batch_size: int = 1000
    dropout: float = 0.2
    seed: int = 0


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (the Mann-Whitney U statistic, ties counted half)."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("the AUC needs events of both classes")
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(average, counts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classifier_scores(
    reference: np.ndarray, candidate: np.ndarray, settings: ClassifierSettings = ClassifierSettings()
) -> tuple[np.ndarray, np.ndarray]:
    """Train the classifier; return the test split's labels (1 = candidate) and predicted scores."""
    generator = torch.Generator().manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    x = np.concatenate([reference, candidate]).astype(np.float64)
    y = np.concatenate([np.zeros(len(reference)), np.ones(len(candidate))])
    order = rng.permutation(len(x))
    x, y = x[order], y[order]
    n_train, n_val = int(0.6 * len(x)), int(0.2 * len(x))
    mean, std = x[:n_train].mean(0), x[:n_train].std(0)
    std[std == 0] = 1.0
    data = torch.as_tensor((x - mean) / std, dtype=torch.float32)
    target = torch.as_tensor(y, dtype=torch.float32)
    train, val, test = slice(0, n_train), slice(n_train, n_train + n_val), slice(n_train + n_val, None)
    with torch.random.fork_rng(devices=[]):  # weights and dropout from the seed, the caller's RNG untouched
        torch.manual_seed(settings.seed)
        net = nn.Sequential(
            nn.Linear(x.shape[1], settings.hidden),
            nn.LeakyReLU(0.2),
            nn.Dropout(settings.dropout),
            nn.Linear(settings.hidden, settings.hidden),
            nn.LeakyReLU(0.2),
            nn.Dropout(settings.dropout),
            nn.Linear(settings.hidden, 1),
        )
        scores = _train_and_score(net, data, target, (train, val, test), settings, generator)
    return y[test], scores


def _train_and_score(
    net: nn.Module,
    data: torch.Tensor,
    target: torch.Tensor,
    splits: tuple[slice, slice, slice],
    settings: ClassifierSettings,
    generator: torch.Generator,
) -> np.ndarray:
    """Adam on the training split, keep the epoch with the lowest validation loss, score the test split."""
    train, val, test = splits
    n_train = train.stop
    optimiser = torch.optim.Adam(net.parameters(), lr=settings.lr)
    loss_fn = nn.BCEWithLogitsLoss()
    best_loss, best_state = np.inf, None
    for _ in range(settings.epochs):
        net.train()
        for batch in torch.randperm(n_train, generator=generator).split(settings.batch_size):
            optimiser.zero_grad()
            loss_fn(net(data[train][batch]).squeeze(1), target[train][batch]).backward()
            optimiser.step()
        net.eval()
        with torch.no_grad():
            val_loss = float(loss_fn(net(data[val]).squeeze(1), target[val]))
        if val_loss < best_loss:
            best_loss, best_state = val_loss, {k: v.clone() for k, v in net.state_dict().items()}
    if best_state is None:  # every validation loss NaN
        raise ValueError(f"the classifier's validation loss was never finite ({best_loss})")
    net.load_state_dict(best_state)
    net.eval()
    with torch.no_grad():
        return torch.sigmoid(net(data[test]).squeeze(1)).numpy()
