"""Per-image diagnostics of a DIP defense, in the manner of paper 002's Fig. 10: the
victim's class confidences along the DIP trace with the cross-boundary points marked,
beside an image strip (adversarial input, on-boundary image, reconstruction, clean)."""

from pathlib import Path
from typing import Any

import torch

from dipdefense.common.atomic_files import atomic_write


def plot_trace(
    path: Path,
    trace: dict[str, Any],
    images: dict[str, torch.Tensor | None],
    label: int,
    adversarial_label: int,
    class_names: list[str] | None = None,
) -> Path:
    """``trace``: {"t", "probs" [n, C], "crossings"}; ``images``: name -> [C, H, W] or None."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def name(k: int) -> str:
        return class_names[k] if class_names and k < len(class_names) else str(k)

    shown = [(k, v) for k, v in images.items() if v is not None]
    fig = plt.figure(figsize=(5 + 1.7 * len(shown), 3.4))
    grid = fig.add_gridspec(1, 2, width_ratios=[3, 1.1 * len(shown)])
    ax = fig.add_subplot(grid[0])
    t, probs = trace["t"], trace["probs"]
    final = probs[-1].argmax().item()
    for cls in dict.fromkeys(
        [label, adversarial_label, final, *probs.amax(0).topk(min(4, probs.shape[1])).indices.tolist()]
    ):
        style = {label: ("tab:red", 2.0), adversarial_label: ("tab:blue", 2.0)}.get(cls, (None, 1.0))
        ax.plot(
            t,
            probs[:, cls].numpy(),
            color=style[0],
            lw=style[1],
            label=name(cls) + (" (true)" if cls == label else " (adv.)" if cls == adversarial_label else ""),
        )
    for tc in trace["crossings"]:
        ax.axvline(tc, color="gray", lw=0.6, ls="--")
    ax.set_xlabel("DIP iteration")
    ax.set_ylabel("victim confidence")
    ax.set_ylim(0, 1)
    ax.set_title(f"decision trace ({len(trace['crossings'])} cross-boundary points)", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    strip = grid[1].subgridspec(1, len(shown))
    for j, (title, image) in enumerate(shown):
        a = fig.add_subplot(strip[j])
        a.imshow(
            image.float().clamp(0, 1).permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray" if image.shape[0] == 1 else None
        )
        a.set_title(title, fontsize=8)
        a.axis("off")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path
