"""The per-epoch log and progress.png."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from nndose.io.atomic import atomic_write  # noqa: E402


def plot_progress(log: dict, path: Path) -> None:
    epochs = list(range(len(log["train_loss"])))
    if not epochs:
        return
    fig, axes = plt.subplots(3, 1, figsize=(9, 10), sharex=True)
    axes[0].plot(epochs, log["train_loss"], label="train loss")
    axes[0].set_ylabel("loss (dose / reference)")
    axes[0].legend()
    axes[1].plot(epochs, log["val_mae_gy"], label="validation MAE (Gy)", color="tab:red")
    axes[1].plot(epochs, log["val_mae_ema_gy"], label="smoothed", color="tab:orange")
    axes[1].set_ylabel("Gy")
    axes[1].legend()
    axes[2].plot(epochs, log["lr"], label="learning rate", color="tab:green")
    ax2 = axes[2].twinx()
    ax2.plot(epochs, log["epoch_time_s"], color="tab:gray", label="epoch time (s)")
    axes[2].set_xlabel("epoch")
    axes[2].legend(loc="upper left")
    ax2.legend(loc="upper right")
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=80))
    plt.close(fig)
