"""The structural similarity both dip_stitch's rule (paper 002 Eq. 5) and the reports measure."""

import torch
from torchmetrics.functional.image import structural_similarity_index_measure


def per_image_ssim(images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """SSIM of each image to its reference (Wang et al. 2004: 11x11 Gaussian window,
    sigma 1.5, data range 1), shape [B]."""
    return structural_similarity_index_measure(images.float(), references.float(), data_range=1.0, reduction="none")
