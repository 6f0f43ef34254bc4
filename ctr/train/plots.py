"""Learning-curve plot (PNG) from the CSV log."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ctr.atomic import atomic_path


def plot_curves(log_csv: Path, out: Path) -> None:
    """Plots train loss per step and validation AUC / logloss per validation into ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = pd.read_csv(log_csv)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = [("train/loss", "train loss"), ("valid/auc", "valid AUC"), ("valid/logloss", "valid logloss")]
    for ax, (column, title) in zip(axes, panels):
        if column in frame:
            rows = frame[["step", column]].dropna()
            ax.plot(rows["step"], rows[column], marker="o" if column.startswith("valid") else None)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    save_png(fig, out)


def save_png(fig, out: Path) -> None:  # noqa: ANN001  (a matplotlib Figure)
    """Saves ``fig`` as a PNG at ``out`` atomically and closes it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
