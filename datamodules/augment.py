"""Batched augmentation on image tensors (cheaper than per-image PIL transforms)."""

import torch
import torch.nn.functional as F


def random_crop_flip(
    images: torch.Tensor, padding: int = 4, flip: bool = True, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Standard CIFAR augmentation for a batch [B, C, H, W]: zero-pad by ``padding``,
    crop a random HxW window per image, and mirror half of the images left-right."""
    b, c, h, w = images.shape
    device = images.device
    out = images
    if padding > 0:
        padded = F.pad(images, (padding,) * 4)
        dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(device)
        dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(device)
        rows = (dy[:, None] + torch.arange(h, device=device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=device))[:, None, None, :]
        out = padded[
            torch.arange(b, device=device)[:, None, None, None],
            torch.arange(c, device=device)[None, :, None, None],
            rows,
            cols,
        ]
    if flip:
        mirror = (torch.rand(b, generator=generator) < 0.5).to(device)
        out = torch.where(mirror[:, None, None, None], out.flip(-1), out)
    return out
