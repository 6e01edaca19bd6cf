"""The training log: log.csv and curves.png of a run's validation history."""

from __future__ import annotations

import csv
from pathlib import Path


def write_log(run_dir: Path, history: list[dict], metric: str) -> None:
    """log.csv, one row per epoch, and curves.png (losses and the validation metric)."""
    if not history:
        return
    with (run_dir / "log.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    plot_curves(history, metric, run_dir / "curves.png")


def plot_curves(history: list[dict], metric: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(epochs, [h["train_loss"] for h in history], label="train loss (smoothed CE)")
    ax.plot(epochs, [h["valid_loss"] for h in history], label="valid loss (CE)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss per token" if metric == "bleu" else "loss per example")
    ax2 = ax.twinx()
    ax2.plot(epochs, [h["valid_" + metric] for h in history], color="tab:green", marker="o", label=f"valid {metric}")
    ax2.set_ylabel(f"valid {metric}")
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], loc="center right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
