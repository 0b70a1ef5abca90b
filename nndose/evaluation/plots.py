"""Figures: per case a DVH overlay (reference solid, prediction dashed) and dose / difference slices
through the target; one summary figure of per-case errors and isodose Dice."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from nndose.io.atomic import atomic_write  # noqa: E402
from nndose.io.raw_dataset import DatasetInfo, RawCase  # noqa: E402


def _save(fig, path: Path) -> None:
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=80))
    plt.close(fig)


def cumulative_dvh(dose: np.ndarray, max_gy: float, bins: int = 200):
    levels = np.linspace(0, max_gy, bins)
    return levels, np.array([(dose >= lv).mean() * 100 for lv in levels])


def case_figure(case: RawCase, prediction: np.ndarray, info: DatasetInfo, path: Path) -> None:
    fig = plt.figure(figsize=(15, 5))
    ax = fig.add_subplot(1, 3, 1)
    top = max(float(case.dose.max()), float(prediction.max())) * 1.05
    for i, (name, mask) in enumerate(sorted(case.structures.items())):
        if name == info.body:
            continue
        color = f"C{i % 10}"
        ax.plot(*cumulative_dvh(case.dose[mask], top), color=color, label=name)
        ax.plot(*cumulative_dvh(prediction[mask], top), color=color, linestyle="--")
    ax.set_xlabel("dose (Gy)")
    ax.set_ylabel("volume (%)")
    ax.set_title(f"{case.name}: DVH (solid reference, dashed prediction)")
    ax.legend(fontsize=7)
    targets = np.zeros(case.ct.shape, bool)
    for t in info.targets:
        if t in case.structures:
            targets |= case.structures[t]
    z = int(np.argwhere(targets).mean(0)[0]) if targets.any() else case.ct.shape[0] // 2
    for k, (title, img, cmap, lim) in enumerate(((f"predicted dose (Gy), slice {z}", prediction[z], "jet", (0, top)),
                                                  ("prediction - reference (Gy)", prediction[z] - case.dose[z], "bwr", None))):
        ax = fig.add_subplot(1, 3, k + 2)
        ax.imshow(case.ct[z], cmap="gray", vmin=-400, vmax=600)
        vmax = lim[1] if lim else max(1e-3, float(np.abs(prediction[z] - case.dose[z]).max()))
        im = ax.imshow(np.ma.masked_where(img == 0, img), cmap=cmap, alpha=0.6,
                       vmin=lim[0] if lim else -vmax, vmax=vmax)
        ax.contour(targets[z], colors="white", linewidths=0.8)
        ax.set_title(title)
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    _save(fig, path)


def summary_figure(summary: dict, path: Path) -> None:
    cases = summary["cases"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    names = [c["case"] for c in cases]
    axes[0].bar(names, [c["dose_error_openkbp"] for c in cases], label="dose error")
    axes[0].bar(names, [c["dvh_error_openkbp"] for c in cases], alpha=0.6, label="DVH error")
    axes[0].set_ylabel("Gy")
    agg = summary["aggregate"]
    axes[0].set_title(f"dose score {agg['dose_score']:.3f} Gy, DVH score {agg['dvh_score']:.3f} Gy")
    axes[0].tick_params(axis="x", rotation=70, labelsize=7)
    axes[0].legend()
    levels = list(cases[0]["isodose_dice"])
    for c in cases:
        axes[1].plot(levels, [c["isodose_dice"][lv] for lv in levels], color="gray", alpha=0.4)
    axes[1].plot(levels, [agg["isodose_dice"][lv]["mean"] for lv in levels], color="k", linewidth=2, label="mean")
    axes[1].set_ylim(0, 1)
    axes[1].set_title("isodose Dice (% of reference dose)")
    axes[1].legend()
    fig.tight_layout()
    _save(fig, path)
