"""The plan-QA figures as PNG bytes: DVH overlays with the folds' band, and dose / difference slices."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from nndose.evaluation.plots import cumulative_dvh  # noqa: E402
from nndose.qa.compare import CaseQA  # noqa: E402


def png_bytes(fig) -> bytes:
    """The figure as PNG (no metadata, so nothing in it points anywhere); closes the figure."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def dvh_band_in_words(n_folds: int) -> str:
    """What the DVH figure's band shows."""
    return "range of the folds (band)" if n_folds > 1 else "one fold (no band)"


def dvh_png(case_qa: CaseQA, clinical_gy: np.ndarray, predicted_gy: np.ndarray, fold_predictions_gy: list[np.ndarray],
            structures: dict[str, np.ndarray]) -> bytes:
    """Per structure: clinical DVH solid, ensemble prediction dashed, band between the folds' lowest
    and highest curves; one colour per structure."""
    top = 1.05 * max(float(clinical_gy.max()), *(float(f.max()) for f in fold_predictions_gy), 1e-3)
    fig, ax = plt.subplots(figsize=(11, 5.5))
    for i, s in enumerate(case_qa.structures):
        mask = np.asarray(structures[s.name], bool)
        color = f"C{i % 10}"
        levels, clinical = cumulative_dvh(clinical_gy[mask], top)
        folds = np.array([cumulative_dvh(f[mask], top)[1] for f in fold_predictions_gy])
        ax.fill_between(levels, folds.min(0), folds.max(0), color=color, alpha=0.25, linewidth=0)
        ax.plot(levels, cumulative_dvh(predicted_gy[mask], top)[1], color=color, linestyle="--", linewidth=1.2)
        ax.plot(levels, clinical, color=color, linewidth=2.2 if s.flagged else 1.2,
                label=f"{s.name} (flagged)" if s.flagged else s.name)
    ax.set_xlim(0, top)
    ax.set_ylim(0, 101)
    ax.set_xlabel("dose (Gy)")
    ax.set_ylabel("volume (%)")
    ax.set_title(f"{case_qa.case}: clinical (solid), predicted (dashed), {dvh_band_in_words(len(fold_predictions_gy))}")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return png_bytes(fig)


def slice_png(name: str, mask: np.ndarray, clinical_gy: np.ndarray, predicted_gy: np.ndarray,
              ct_hu: np.ndarray | None) -> bytes:
    """The axial slice through the structure's centroid: clinical, predicted, clinical - predicted
    (diverging, centred at 0), the structure's contour on each, the CT underneath when given."""
    mask = np.asarray(mask, bool)
    z = int(round(float(np.argwhere(mask)[:, 0].mean())))
    clinical, predicted = clinical_gy[z], predicted_gy[z]
    difference = clinical - predicted
    top = max(float(clinical.max()), float(predicted.max()), 1e-3)
    span = max(float(np.abs(difference).max()), 1e-3)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    panels = ((f"clinical dose (Gy), slice {z}", clinical, "jet", 0.0, top),
              ("predicted dose (Gy)", predicted, "jet", 0.0, top),
              ("clinical - predicted (Gy)", difference, "bwr", -span, span))
    for ax, (title, img, cmap, vmin, vmax) in zip(axes, panels):
        if ct_hu is not None:
            ax.imshow(ct_hu[z], cmap="gray", vmin=-400, vmax=600)
            img = np.ma.masked_where((clinical == 0) & (predicted == 0), img)
        im = ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax, alpha=0.6 if ct_hu is not None else 1.0)
        if min(mask[z].shape) >= 2:
            ax.contour(mask[z], levels=[0.5], colors="magenta", linewidths=1.2)
        ax.set_title(title)
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"{name}: axial slice through its centroid (contour in magenta)")
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    return png_bytes(fig)
