"""Draw the model diagram of the docs page "Concepts" (written to docs/_generated/model.png by docs/conf.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

BOXES = {  # name: (x, y, width, height, label, colour)
    "slices": (0.0, 2.2, 2.0, 1.6, "slices $s = 1..S$\ncounts $x_i$, graph $A$\n(any technology)", "#e8eef7"),
    "features": (
        2.6,
        2.2,
        2.3,
        1.6,
        "input features\n$h_i = [y_i;\\ \\hat A y_i;\\ \\dots;\\ \\hat A^3 y_i]$\n$y$: PCA of Pearson\nresiduals",
        "#e8eef7",
    ),
    "encoder": (5.5, 2.4, 1.6, 1.2, "encoder\n$z_i = f(h_i)$", "#fde9d9"),
    "latent": (7.8, 2.4, 1.6, 1.2, "shared latent\nspace $z_i$", "#fff4cc"),
    "disc": (7.5, 0.2, 2.2, 1.2, "slice classifier $D(z_i)$\n(adversarial, all slices)", "#f3e0f7"),
    "decoder": (7.5, 4.5, 2.2, 1.2, "decoder\n$\\hat h_i = g(z_i, s)$", "#fde9d9"),
    "factors": (10.2, 2.4, 2.0, 1.2, "spatial factors\n$\\beta_i = \\mathrm{softmax}(W z_i)$", "#e2f3e4"),
    "counts": (
        12.9,
        2.2,
        2.5,
        1.6,
        "$x_{ig} \\sim \\mathrm{Poisson}(l_i\\, q_{ig})$\n$q_{i} \\propto (\\beta_i B) \\odot e^{\\gamma_s}$",
        "#e2f3e4",
    ),
    "programs": (12.9, 4.5, 2.5, 1.2, "gene programs $B$ (shared)\nslice effects $\\gamma_s$", "#e2f3e4"),
}
ARROWS = [
    ("slices", "features", ""),
    ("features", "encoder", ""),
    ("encoder", "latent", ""),
    ("latent", "disc", "hide the slice"),
    ("latent", "decoder", "reconstruct $h$,\nkeep cosine geometry"),
    ("latent", "factors", ""),
    ("factors", "counts", ""),
    ("programs", "counts", ""),
]


def _anchor(box: tuple, side: str) -> tuple[float, float]:
    x, y, w, h = box[:4]
    return {"r": (x + w, y + h / 2), "l": (x, y + h / 2), "t": (x + w / 2, y + h), "b": (x + w / 2, y)}[side]


def draw(path: Path) -> None:
    """Write the diagram to ``path``."""
    fig, ax = plt.subplots(figsize=(11.5, 4.3))
    for x, y, w, h, label, colour in BOXES.values():
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.05", fc=colour, ec="0.3", lw=1))
        ax.text(x + w / 2, y + h / 2, label, ha="center", va="center", fontsize=9)
    for a, b, label in ARROWS:
        ba, bb = BOXES[a], BOXES[b]
        if bb[1] > ba[1] + ba[3]:
            start, end = _anchor(ba, "t"), _anchor(bb, "b")
        elif bb[1] + bb[3] < ba[1]:
            start, end = _anchor(ba, "b"), _anchor(bb, "t")
        elif bb[0] >= ba[0] + ba[2] - 0.01:
            start, end = _anchor(ba, "r"), _anchor(bb, "l")
        else:
            start, end = _anchor(ba, "b"), _anchor(bb, "t")
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12, lw=1.2, color="0.25"))
        if label:
            ax.text(start[0] + 0.15, (start[1] + end[1]) / 2, label, fontsize=8, va="center", color="0.25")
    ax.text(
        13.0,
        0.8,
        "loss = Poisson NLL + reconstruction + geometry\n+ factor-usage prior + adversarial",
        ha="center",
        fontsize=9,
        style="italic",
    )
    ax.set(xlim=(-0.2, 15.6), ylim=(0, 5.9))
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    draw(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "_generated" / "model.png")
