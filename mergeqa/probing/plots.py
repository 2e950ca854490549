"""One PNG per phenomenon: probe test accuracy by layer for the merges, the parents and the base,
each with its control-task curve (dotted) and the chance level. Drawing only, no probing.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .datasets import ProbeDataset
from .probes import ProbeResult

ROLE_STYLE = {"base": {"color": "black", "lw": 2.4, "marker": "s"},
              "parent": {"lw": 2.4, "marker": "o"},
              "merged": {"lw": 1.3, "marker": "^"}}
PARENT_COLORS = ("tab:blue", "tab:orange", "tab:cyan", "tab:olive")
MERGE_COLORS = ("tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray", "gold",
                "teal", "navy", "lime")


def plot_phenomenon(dataset: ProbeDataset, curves: Sequence[tuple[str, str, ProbeResult]],
                    path: Path) -> Path:
    """Write `path` (PNG). `curves`: (model name, role, result); role is base, parent or merged."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 4.8), dpi=110)
    colors = {"parent": iter(PARENT_COLORS), "merged": iter(MERGE_COLORS)}
    chance = None
    for name, role, result in curves:
        style = dict(ROLE_STYLE[role])
        color = style.pop("color", None) or next(colors[role], None)
        layers = range(result.n_layers)
        acc, ctrl = result.accuracy(), result.accuracy(control=True)
        ax.plot(layers, acc.mean(1), color=color, label=f"{name} ({role})", zorder=3, ms=5, **style)
        if result.seeds > 1:
            ax.fill_between(layers, acc.mean(1) - acc.std(1), acc.mean(1) + acc.std(1), color=color,
                            alpha=0.12, lw=0)
        ax.plot(layers, ctrl.mean(1), color=color, ls=":", lw=1.2, alpha=0.8)
        best = result.best_layer
        ax.plot([best], [acc.mean(1)[best]], marker="*", ms=13, color=color, mec="black", mew=0.6,
                ls="none", zorder=4)
        chance = result.chance
    if chance is not None:
        ax.axhline(chance, color="gray", ls="--", lw=1, label="chance (majority class)")
    ax.plot([], [], color="gray", ls=":", lw=1.2, label="control task (same colour)")
    ax.plot([], [], color="gray", marker="*", ms=11, ls="none", mec="black", label="best layer (val)")
    n_layers = max(r.n_layers for _, _, r in curves)
    ax.set_xticks(range(n_layers), ["emb"] + [str(i) for i in range(1, n_layers)])
    ax.set_xlabel("layer (emb = embeddings; i = output of block i)")
    ax.set_ylabel("probe accuracy on test (mean over seeds)")
    ax.set_ylim(max(0.0, min(0.9, (chance or 0.5) - 0.15)), 1.02)
    ax.set_title(f"{dataset.name} ({dataset.category}, {dataset.pooling} pooling): "
                 f"{dataset.description}", fontsize=8.5, wrap=True)
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)  # two xdist workers writing the same plot never leave half a file
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
