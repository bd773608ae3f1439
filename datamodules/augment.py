"""Batched augmentation on image tensors (cheaper than per-image PIL transforms)."""

import torch
import torch.nn.functional as F

PADDING_MODES = ("zeros", "reflect")


def random_crop_flip(
    images: torch.Tensor,
    padding: int = 4,
    flip: bool | torch.Tensor = True,
    generator: torch.Generator | None = None,
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Standard CIFAR augmentation for a batch [B, C, H, W]: pad by ``padding`` (zeros, or
    reflection as airbench does), crop a random HxW window per image, and mirror half of the
    images left-right; ``flip`` may instead be a boolean mask [B] of the images to mirror."""
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode={padding_mode!r}; accepted: {', '.join(PADDING_MODES)}")
    b, c, h, w = images.shape
    device = images.device
    out = images
    if padding > 0:
        padded = F.pad(images, (padding,) * 4, mode="constant" if padding_mode == "zeros" else "reflect")
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
    if isinstance(flip, torch.Tensor):
        mirror = flip.to(device=device, dtype=torch.bool)
    elif flip:
        mirror = (torch.rand(b, generator=generator) < 0.5).to(device)
    else:
        return out
    return torch.where(mirror[:, None, None, None], out.flip(-1), out)


def alternating_flip_mask(indices: torch.Tensor, epoch: int, size: int, seed: int = 0) -> torch.Tensor:
    """Jordan 2024's alternating flip (Sec. 3.6): a fixed random half of the images is mirrored in
    even epochs and the other half in odd ones, so each image is seen both ways in every two epochs
    (random flips repeat a view with probability 1/2). ``indices`` are positions in a training set of
    ``size`` images."""
    coins = torch.randint(0, 2, (size,), generator=torch.Generator().manual_seed(seed), dtype=torch.bool)
    return coins[indices.cpu()] ^ bool(epoch % 2)
