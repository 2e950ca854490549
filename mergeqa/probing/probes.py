"""Linear probes on pooled representations: multinomial logistic regression at every layer, several
seeds, a control task after Hewitt & Liang (2019), accuracy, macro-F1 and selectivity.

All probes of one (model, dataset) -- layers x seeds x {task, control} -- are fitted as one batched
problem with torch's L-BFGS on the model's device; scikit-learn is the reference backend (see
`bench/probe_table.py --backends` for the timing that chose torch). Per-item test correctness is
kept, so the gate's paired statistics run over items. Not a general classifier library.

Seeds: seed 0 fits on the whole train split, seed s >= 1 on a bootstrap resample of it; seed s also
draws the control task's labels. The best layer is chosen on the val split, scored on test.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from mergeqa.core.errors import MergeQAUsageError

from .datasets import ProbeDataset

BACKENDS = ("torch", "sklearn")


@dataclass(frozen=True)
class ProbeSettings:
    """How probes are fitted. `l2` multiplies the squared weights of standardised features; the
    data term is the mean cross-entropy, so l2 does not depend on the number of items."""

    seeds: int = 3
    l2: float = 0.01
    max_iter: int = 150
    backend: str = "torch"

    def __post_init__(self):
        if not (isinstance(self.seeds, int) and self.seeds >= 1):
            raise MergeQAUsageError(f"[probing] seeds = {self.seeds!r}: expected an integer >= 1, e.g. 3")
        if not self.l2 > 0:
            raise MergeQAUsageError(f"[probing] l2 = {self.l2!r}: expected a positive number, e.g. 0.01")
        if self.backend not in BACKENDS:
            raise MergeQAUsageError(f"probe backend {self.backend!r}: expected one of {', '.join(BACKENDS)}")

    def key(self) -> dict:
        return {"seeds": self.seeds, "l2": self.l2, "max_iter": self.max_iter, "backend": self.backend,
                "version": 1}


def control_labels(dataset: ProbeDataset, seed: int) -> list[str]:
    """Hewitt & Liang's control task: each word type gets one label, drawn at random from the
    train split's label distribution; every item of that type carries it."""
    counts = dataset.label_counts("train")
    labels = sorted(counts)
    rng = random.Random(f"control:{dataset.content_hash}:{seed}")
    per_type = {t: rng.choices(labels, weights=[counts[l] for l in labels])[0]
                for t in sorted({it.type for it in dataset.items})}
    return [per_type[it.type] for it in dataset.items]


def bootstrap_weights(n: int, seed: int) -> np.ndarray:
    """How often each train item is used by seed `seed`: all once for seed 0, else a bootstrap."""
    if seed == 0:
        return np.ones(n)
    return np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n)).astype(float)


@dataclass
class ProbeResult:
    """Predictions of every probe of one (model, dataset), and the figures derived from them.

    `preds[l, q, i]`: label index predicted for item i at layer l by probe q, where q < seeds are
    the task probes and q >= seeds the control probes of the same seeds.
    """

    dataset: str
    labels: tuple[str, ...]
    y: np.ndarray  # [items] task label index
    control: np.ndarray  # [seeds, items] control label index
    split: np.ndarray  # [items] "train" / "val" / "test"
    preds: np.ndarray  # [layers, 2 * seeds, items]

    @property
    def seeds(self) -> int:
        return self.control.shape[0]

    @property
    def n_layers(self) -> int:
        """Number of representations probed: the embeddings (layer 0) and each block's output."""
        return self.preds.shape[0]

    def _correct(self, split: str, control: bool) -> np.ndarray:
        """[layers, seeds, items of split] 0/1 correctness."""
        mask = self.split == split
        s = self.seeds
        if control:
            return (self.preds[:, s:, mask] == self.control[None, :, mask]).astype(float)
        return (self.preds[:, :s, mask] == self.y[None, None, mask]).astype(float)

    def accuracy(self, split: str = "test", control: bool = False) -> np.ndarray:
        """[layers, seeds] accuracy."""
        return self._correct(split, control).mean(-1)

    def macro_f1(self, split: str = "test") -> np.ndarray:
        """[layers, seeds] macro-F1 of the task probes over the labels present in `split`."""
        mask = self.split == split
        y, pred = self.y[mask], self.preds[:, :self.seeds, mask]
        scores = []
        for c in np.unique(y):
            tp = ((pred == c) & (y == c)).sum(-1)
            fp = ((pred == c) & (y != c)).sum(-1)
            fn = ((pred != c) & (y == c)).sum(-1)
            scores.append(2 * tp / np.maximum(2 * tp + fp + fn, 1))
        return np.mean(scores, axis=0)

    @cached_property
    def best_layer(self) -> int:
        """The layer whose task probes have the highest mean val accuracy (the lowest on ties)."""
        return int(np.argmax(self.accuracy("val").mean(1)))

    @property
    def last_layer(self) -> int:
        return self.n_layers - 1

    def item_scores(self, layer: int) -> np.ndarray:
        """[test items] correctness at `layer`, averaged over seeds: what the gate pairs."""
        return self._correct("test", False)[layer].mean(0)

    def selectivity(self) -> np.ndarray:
        """[layers] test accuracy of the task minus that of the control task, mean over seeds."""
        return (self.accuracy() - self.accuracy(control=True)).mean(1)

    def summary(self, layer: int) -> dict[str, float]:
        acc, ctrl = self.accuracy()[layer], self.accuracy(control=True)[layer]
        return {"layer": layer, "accuracy": float(acc.mean()), "accuracy_sd": float(acc.std()),
                "macro_f1": float(self.macro_f1()[layer].mean()), "control": float(ctrl.mean()),
                "selectivity": float((acc - ctrl).mean())}

    @property
    def chance(self) -> float:
        """Majority-class accuracy on test: the floor a probe must clear."""
        y = self.y[self.split == "test"]
        return float(np.bincount(y).max() / len(y))

    def save(self, path: Path) -> None:
        np.savez(path, dataset=self.dataset, labels=np.array(self.labels), y=self.y,
                 control=self.control, split=self.split, preds=self.preds)

    @classmethod
    def load(cls, path: Path) -> "ProbeResult":
        with np.load(path) as f:
            return cls(str(f["dataset"]), tuple(str(x) for x in f["labels"]), f["y"], f["control"],
                       f["split"], f["preds"])


def probe(dataset: ProbeDataset, features: np.ndarray, settings: ProbeSettings = ProbeSettings(),
          *, device: str = "cpu") -> ProbeResult:
    """Fit task and control probes at every layer of `features` [items, layers, hidden]."""
    if features.shape[0] != len(dataset.items):
        raise ValueError(f"{dataset.name}: {features.shape[0]} representations for {len(dataset.items)} items")
    index = {label: i for i, label in enumerate(dataset.labels)}
    y = np.array([index[it.label] for it in dataset.items])
    control = np.array([[index[label] for label in control_labels(dataset, s)]
                        for s in range(settings.seeds)])
    split = np.array([it.split for it in dataset.items])
    train = np.flatnonzero(split == "train")
    targets = np.concatenate([np.tile(y, (settings.seeds, 1)), control])  # [2 * seeds, items]
    weights = np.stack([bootstrap_weights(len(train), s) for s in range(settings.seeds)] * 2)
    fit = fit_torch if settings.backend == "torch" else fit_sklearn
    preds = fit(np.ascontiguousarray(features.transpose(1, 0, 2)), train, targets, weights,
                len(dataset.labels), l2=settings.l2, max_iter=settings.max_iter, device=device)
    return ProbeResult(dataset.name, dataset.labels, y, control, split, preds)


def _standardise(x, train):
    """Per layer and feature, z-score with the train split's statistics."""
    mean = x[:, train].mean(1, keepdims=True)
    std = x[:, train].std(1, keepdims=True)
    return (x - mean) / (std + 1e-6)


def fit_torch(x: np.ndarray, train: np.ndarray, targets: np.ndarray, weights: np.ndarray,
              n_classes: int, *, l2: float, max_iter: int, device: str = "cpu") -> np.ndarray:
    """All probes at once: x [layers, items, hidden], targets [probes, items], weights [probes,
    train items] -> predicted label index [layers, probes, items].

    Minimises, for each (layer, probe), the weighted mean cross-entropy + l2 * |W|^2 (bias free).
    The problems are independent, so minimising their sum with L-BFGS solves each of them.
    """
    import torch

    xs = _standardise(torch.as_tensor(x, dtype=torch.float32, device=device), torch.as_tensor(train, device=device))
    xt = xs[:, torch.as_tensor(train, device=device)]
    n_layers, n, dim = xt.shape
    y = torch.as_tensor(targets[:, train], dtype=torch.long, device=device)
    w = torch.as_tensor(weights, dtype=torch.float32, device=device)
    w = w / w.sum(1, keepdim=True)
    coef = torch.zeros(n_layers, len(y), dim, n_classes, device=device, requires_grad=True)
    bias = torch.zeros(n_layers, len(y), 1, n_classes, device=device, requires_grad=True)
    index = y[None, :, :, None].expand(n_layers, -1, -1, 1)
    opt = torch.optim.LBFGS([coef, bias], lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-6, tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = torch.einsum("lnd,lqdk->lqnk", xt, coef) + bias
        nll = -logits.log_softmax(-1).gather(-1, index).squeeze(-1)  # [layers, probes, n]
        loss = (nll * w).sum() + l2 * coef.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        logits = torch.einsum("lnd,lqdk->lqnk", xs, coef) + bias
        return logits.argmax(-1).cpu().numpy().astype(np.int16)


def fit_sklearn(x: np.ndarray, train: np.ndarray, targets: np.ndarray, weights: np.ndarray,
                n_classes: int, *, l2: float, max_iter: int, device: str = "cpu") -> np.ndarray:
    """The same probes one at a time with scikit-learn's lbfgs (the reference; CPU only).

    C = 1 / (2 l2 sum(w)) gives sklearn's objective the same minimiser as `fit_torch`'s, except
    that sklearn fits binary tasks with one weight vector rather than two (a different penalty).
    """
    from sklearn.linear_model import LogisticRegression

    xs = _standardise(x.astype(np.float64), train)
    out = np.zeros((x.shape[0], len(targets), x.shape[1]), dtype=np.int16)
    for layer in range(x.shape[0]):
        for q, (target, w) in enumerate(zip(targets, weights)):
            clf = LogisticRegression(C=1.0 / (2 * l2 * w.sum()), max_iter=max_iter, tol=1e-6)
            clf.fit(xs[layer, train], target[train], sample_weight=w)
            out[layer, q] = clf.classes_[clf.predict_proba(xs[layer]).argmax(1)]
    return out
