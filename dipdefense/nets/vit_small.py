"""A small Vision Transformer for 32x32 inputs (paper 000's ViT victim, trained from scratch).

Dosovitskiy et al. 2021 at CIFAR scale, built by timm's ``VisionTransformer``: 4x4 patches
(64 tokens), a class token, learned position embeddings, pre-norm blocks, a linear head on the
class token. Paper 000 fine-tuned an ImageNet ViT at 224 px; no pretrained weights can be fetched
here, so this one starts from scratch (torchvision's ``vit_b_16`` stays for users who have them).
"""

from torch import nn


def small_vit(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    patch_size: int = 4,
    embed_dim: int = 192,
    depth: int = 6,
    num_heads: int = 3,
    mlp_ratio: float = 2.0,
    drop_path_rate: float = 0.1,
) -> nn.Module:
    """timm's VisionTransformer at CIFAR scale.

    Arguments:
        num_classes: output logits. Default: 10.
        in_channels: image channels. Default: 3.
        image_size: input height and width. Default: 32.
        patch_size: side of the square patches. Default: 4.
        embed_dim: token width. Default: 192.
        depth: transformer blocks. Default: 6.
        num_heads: attention heads. Default: 3.
        mlp_ratio: MLP hidden width over ``embed_dim``. Default: 2.
        drop_path_rate: stochastic depth of the last block (linear in depth). Default: 0.1.
    """
    from timm.models.vision_transformer import VisionTransformer

    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    return VisionTransformer(
        img_size=image_size,
        patch_size=patch_size,
        in_chans=in_channels,
        num_classes=num_classes,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        drop_path_rate=drop_path_rate,
    )
