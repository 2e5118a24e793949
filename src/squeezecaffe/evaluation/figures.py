"""The evaluation's pictures: a row-normalised confusion matrix and a grid of wrong predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from squeezecaffe.pictures import pyplot, save_png


def confusion_png(confusion: np.ndarray, names: list[str], out: Path, title: str) -> Path:
    """Rows are true classes normalised to 1; counts are written in the cells when there are few classes."""
    plt = pyplot()
    k = len(confusion)
    rows = confusion.sum(axis=1, keepdims=True)
    rates = np.divide(confusion, rows, out=np.zeros(confusion.shape, np.float64), where=rows > 0)
    size = min(22.0, 3.0 + 0.45 * k)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if k <= 40:
        ticks = np.arange(k)
        ax.set_xticks(ticks, [n[:18] for n in names], rotation=90, fontsize=7)
        ax.set_yticks(ticks, [n[:18] for n in names], fontsize=7)
    if k <= 20:
        for t in range(k):
            for p in range(k):
                if confusion[t, p]:
                    ax.text(p, t, str(confusion[t, p]), ha="center", va="center", fontsize=6,
                            color="white" if rates[t, p] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_png(fig, out)


def error_grid_png(examples: list[tuple[np.ndarray, str, str, float]], out: Path, title: str) -> Path:
    """Each example: (uint8 CHW BGR or 1-channel image, true name, predicted name, its probability)."""
    plt = pyplot()
    n = max(1, len(examples))
    cols = min(8, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.7, rows * 2.0 + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (img, true, pred, prob) in zip(axes.ravel(), examples, strict=False):
        shown = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)[:, :, ::-1]  # BGR -> RGB
        ax.imshow(shown, cmap="gray" if img.shape[0] == 1 else None, vmin=0, vmax=255)
        ax.set_title(f"true: {true[:16]}\npred: {pred[:16]} {prob:.0%}", fontsize=6, color="darkred")
    if not examples:
        axes[0, 0].text(0.5, 0.5, "no wrong predictions", ha="center", va="center")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_png(fig, out)
