"""A small Vision Transformer for 32x32 inputs (paper 000's ViT victim, trained from scratch).

Dosovitskiy et al. 2021 at CIFAR scale: 4x4 patches (64 tokens), a class token,
learned position embeddings, pre-norm transformer blocks, and a linear head on the
class token.
"""

import torch
from torch import nn


class SmallViT(nn.Module):
    """ViT for small images.

    Arguments:
        image_size: input height and width. Default: 32.
        patch_size: side of the square patches. Default: 4.
        num_classes: output logits. Default: 10.
        in_channels: image channels. Default: 3.
        dim: token width. Default: 192.
        depth: transformer blocks. Default: 6.
        heads: attention heads. Default: 3.
        mlp_ratio: MLP hidden width over ``dim``. Default: 2.
        dropout: dropout in the blocks. Default: 0.1.
    """

    def __init__(
        self,
        image_size: int = 32,
        patch_size: int = 4,
        num_classes: int = 10,
        in_channels: int = 3,
        dim: int = 192,
        depth: int = 6,
        heads: int = 3,
        mlp_ratio: int = 2,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        num_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, num_patches + 1, dim) * 0.02)
        block = nn.TransformerEncoderLayer(
            dim, heads, dim * mlp_ratio, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(block, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(tokens))[:, 0])
