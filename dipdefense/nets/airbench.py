"""The airbench94 network (Jordan 2024, "94% on CIFAR-10 in 3.29 Seconds on a Single GPU",
arXiv 2404.00498, Sec. 3), with its test-time augmentation as an option of the forward pass.

A frozen 2x2 whitening convolution (its filters are the eigenvectors of the training patches'
covariance, scaled to unit variance, and their negatives: Sec. 3.2), a GELU, then three blocks of
conv -> 2x2 max-pool -> BatchNorm -> GELU -> conv -> BatchNorm -> GELU at widths 64 / 256 / 256,
a 3x3 max-pool to 1x1, and a bias-free linear layer scaled by 1/9. Convolutions have no bias and
start as identities on their first input channels (dirac init); BatchNorm scales are frozen at 1
(only the shifts learn), with momentum 0.6 in the paper's convention (PyTorch's 0.4) and eps 1e-12.

Test-time augmentation (Sec. 3.7) is part of the module, so an attack differentiates the function
the evaluation scores: level 1 averages the logits of the image and its mirror; level 2 averages
that with the mean of the same over two one-pixel translations (up-left and down-right, reflect
padded), i.e. six views weighted 1/4, 1/4, 1/8 x 4.
"""

import torch
import torch.nn.functional as F
from torch import nn

TTA_LEVELS = (0, 1, 2)


class _Conv(nn.Conv2d):
    """3x3 'same' convolution without bias, initialised as the identity on its first input channels."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 3, padding="same", bias=False)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        # Dirac init makes each conv an implicit residual at the start (paper Sec. 3.3).
        nn.init.dirac_(self.weight.data[: min(self.in_channels, self.out_channels)])


class _BatchNorm(nn.BatchNorm2d):
    """BatchNorm with the scale frozen at one; ``momentum`` in the paper's convention (weight of the old
    running statistic)."""

    def __init__(self, channels: int, momentum: float) -> None:
        super().__init__(channels, eps=1e-12, momentum=1 - momentum)
        self.weight.requires_grad_(False)


class _ConvGroup(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, batchnorm_momentum: float) -> None:
        super().__init__()
        self.conv1 = _Conv(in_channels, out_channels)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = _BatchNorm(out_channels, batchnorm_momentum)
        self.conv2 = _Conv(out_channels, out_channels)
        self.norm2 = _BatchNorm(out_channels, batchnorm_momentum)
        self.activation = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activation(self.norm1(self.pool(self.conv1(x))))
        return self.activation(self.norm2(self.conv2(x)))


def patch_whitening_filters(images: torch.Tensor, kernel_size: int, eps: float = 5e-4) -> torch.Tensor:
    """The whitening filters of paper Sec. 3.2: the eigenvectors of the covariance (about zero) of all
    ``kernel_size`` x ``kernel_size`` patches of ``images``, largest eigenvalue first, each divided by
    sqrt(eigenvalue + eps), then the same filters negated: [2 C k^2, C, k, k]."""
    channels = images.shape[1]
    patches = images.unfold(2, kernel_size, 1).unfold(3, kernel_size, 1)  # N, C, H', W', k, k
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, channels * kernel_size**2).double()
    covariance = patches.T @ patches / len(patches)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
    filters = (eigenvectors / torch.sqrt(eigenvalues.clamp_min(0) + eps)).T
    filters = filters.reshape(-1, channels, kernel_size, kernel_size).float()
    return torch.cat([filters, -filters])


class AirbenchNet(nn.Module):
    """airbench94's network for 32x32 images (Jordan 2024, Sec. 3), about 2 M parameters.

    Arguments:
        num_classes: output logits. Default: 10.
        in_channels: image channels. Default: 3.
        widths: the three blocks' widths. Default: (64, 256, 256) (airbench94).
        whitening_kernel: side of the whitening convolution. Default: 2.
        batchnorm_momentum: weight of the old running statistic. Default: 0.6.
        logit_scale: multiplies the logits. Default: 1/9.
        tta_level: test-time augmentation in eval mode, 0 (none), 1 (mirror) or 2 (mirror and
            translate). Default: 0.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        widths: tuple[int, int, int] | list[int] = (64, 256, 256),
        whitening_kernel: int = 2,
        batchnorm_momentum: float = 0.6,
        logit_scale: float = 1 / 9,
        tta_level: int = 0,
    ) -> None:
        super().__init__()
        if tta_level not in TTA_LEVELS:
            raise ValueError(f"tta_level={tta_level!r}; accepted: 0 (none), 1 (mirror), 2 (mirror and translate)")
        if len(widths) != 3:
            raise ValueError(f"widths={list(widths)}: give the three blocks' widths")
        self.tta_level = tta_level
        self.logit_scale = logit_scale
        whitened = 2 * in_channels * whitening_kernel**2
        self.whiten = nn.Conv2d(in_channels, whitened, whitening_kernel, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        nn.init.zeros_(self.whiten.bias)
        self.blocks = nn.Sequential(
            _ConvGroup(whitened, widths[0], batchnorm_momentum),
            _ConvGroup(widths[0], widths[1], batchnorm_momentum),
            _ConvGroup(widths[1], widths[2], batchnorm_momentum),
        )
        self.head = nn.Linear(widths[2], num_classes, bias=False)

    @torch.no_grad()
    def init_whitening(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the whitening filters from (normalised) training images [N, C, H, W] (paper: 5,000)."""
        kernel = self.whiten.kernel_size[0]
        self.whiten.weight.copy_(patch_whitening_filters(images.float(), kernel, eps))

    def features_to_logits(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.gelu(self.whiten(x)))
        x = F.adaptive_max_pool2d(x, 1).flatten(1)  # the paper's 3x3 max-pool at 32x32 input
        return self.head(x) * self.logit_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or self.tta_level == 0:
            return self.features_to_logits(x)
        return tta_logits(self.features_to_logits, x, self.tta_level)


def tta_logits(network, x: torch.Tensor, level: int) -> torch.Tensor:
    """airbench's test-time augmentation (Sec. 3.7): level 1 is the mean of the image's and its
    mirror's logits; level 2 averages that with the level-1 logits of the image translated by one
    pixel up-left and down-right (reflect padding). All views run as one batch."""
    views = [x, x.flip(-1)]
    if level == 2:
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        height, width = x.shape[-2:]
        up_left, down_right = padded[..., :height, :width], padded[..., 2 : height + 2, 2 : width + 2]
        views += [up_left, up_left.flip(-1), down_right, down_right.flip(-1)]
    logits = network(torch.cat(views)).unflatten(0, (len(views), len(x)))
    if level == 1:
        return logits.mean(0)
    return 0.5 * logits[:2].mean(0) + 0.5 * logits[2:].mean(0)
