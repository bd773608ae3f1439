"""The skip/U-Net generator of the official deep-image-prior code (``models/skip.py``;
Ulyanov et al. 2018), as used by papers 002 (App. B, Fig. 8), 001 and 004 (Sec. 4.1).

Per scale i: a *down* branch (conv k_d stride 2 + BN + act, conv k_d + BN + act, the
deeper scales, upsampling), a *skip* branch (conv k_s + BN + act, n_s[i] channels; absent
when n_s[i] = 0), their concatenation, then BN, conv k_u + BN + act and (``need1x1_up``) a
1x1 conv + BN + act. A final 1x1 conv maps to the image channels, then a sigmoid.

``groups=B`` builds B independent networks in one module: every conv is grouped, every
BatchNorm covers B*C channels, and the concatenation interleaves per network, so on an
input of shape [1, B*C_in, H, W] network b sees only its own channels. BatchNorm over a
[1, B*C, H, W] tensor normalises each network's channels over its own image, exactly as
B separate networks fed batches of one. Convolutions keep the size ("same" padding, also
for the even kernels of App. B's small and large networks).
"""

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class Swish(nn.Module):
    """x * sigmoid(x) (Ramachandran et al. 2017; paper 001's DIP activation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


def _activation(name: str) -> nn.Module:
    if name == "LeakyReLU":
        return nn.LeakyReLU(0.2, inplace=True)
    if name == "Swish":
        return Swish()
    if name == "ReLU":
        return nn.ReLU(inplace=True)
    raise ValueError(f"unknown activation {name!r}; accepted: LeakyReLU, Swish, ReLU")


class SamePadConv(nn.Module):
    """Conv2d whose output is ceil(H / stride): padding (k-1)//2 before, the rest after,
    reflected or zero. Grouped over ``groups`` independent networks."""

    # On the native CPU path (exact_cpu), run grouped convolutions as batched matrix products
    # (grouped_pointwise_conv, GroupedIm2colConv): fewer small calls, and used for a layer shape
    # only where batched_matches_native shows the same numbers. False restores PyTorch's own
    # per-group loop everywhere (benchmarks compare the two).
    batched_gemm = True

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int,
        stride: int = 1,
        pad: str = "reflection",
        bias: bool = True,
        groups: int = 1,
    ) -> None:
        super().__init__()
        if pad not in ("reflection", "zero"):
            raise ValueError(f"unknown padding {pad!r}; accepted: reflection, zero")
        self.kernel, self.stride, self.mode = kernel, stride, "reflect" if pad == "reflection" else "constant"
        self.conv = nn.Conv2d(c_in * groups, c_out * groups, kernel, stride, bias=bias, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Under torch.compile on a CPU (DIPSettings.compile) a grouped convolution is one opaque
        # operator (grouped_conv_op) and a 1x1 one a plain batched GEMM; the probe is eager-only.
        traced = torch.compiler.is_compiling() and x.device.type == "cpu" and self.conv.groups > 1
        batched = (
            self.batched_gemm and self.conv.groups > 1 and x.device.type == "cpu" and not torch.backends.mkldnn.enabled
        )
        if traced and self.kernel == 1 and self.stride == 1:
            return grouped_pointwise_conv(x, self.conv.weight, self.conv.bias, self.conv.groups)
        if batched and self.kernel == 1 and self.stride == 1:
            if batched_matches_native(self.conv, tuple(x.shape)):
                return grouped_pointwise_conv(x, self.conv.weight, self.conv.bias, self.conv.groups)
            return self.conv(x)
        total_h = max((-(-x.shape[-2] // self.stride) - 1) * self.stride + self.kernel - x.shape[-2], 0)
        total_w = max((-(-x.shape[-1] // self.stride) - 1) * self.stride + self.kernel - x.shape[-1], 0)
        if total_h or total_w:
            pads = (total_w // 2, total_w - total_w // 2, total_h // 2, total_h - total_h // 2)
            # Reflection needs pad < size; deep scales of a small image fall back to replication.
            mode = "replicate" if self.mode == "reflect" and max(pads) >= min(x.shape[-2:]) else self.mode
            x = F.pad(x, pads, mode=mode)
        if traced:
            return grouped_conv_op(x, self.conv.weight, self.conv.bias, self.conv.groups, self.stride)
        if batched and batched_matches_native(self.conv, tuple(x.shape)):
            return GroupedIm2colConv.apply(x, self.conv.weight, self.conv.bias, self.conv.groups, self.stride)
        return self.conv(x)


_probed: dict[tuple, bool] = {}


def batched_matches_native(conv: nn.Conv2d, input_shape: tuple[int, ...]) -> bool:
    """Whether the batched-GEMM convolution computes what ``conv`` (PyTorch's native CPU path)
    computes for inputs of ``input_shape``, bit for bit: output and the gradients of input,
    weight and bias.

    Which BLAS kernel a GEMM takes, and so how it rounds, depends on its shape and on the
    machine: on the machine of benchmarks/RESULTS.md, layers with one input channel per group
    (DIPDefend's first layer, whose input gradient moves z) or with fewer than 4 output
    channels rounded differently from the native loop, by about 1e-6, which a chaotic DIP fit
    turns into a different reconstruction. So each shape is tried once per process on seeded
    random data (rounding follows the kernel's order of operations, not the values), and
    the native convolution runs wherever the two differ."""
    weight = conv.weight
    key = (tuple(input_shape), tuple(weight.shape), conv.groups, conv.stride, conv.bias is not None)
    key += (weight.dtype, torch.get_num_threads())
    if key not in _probed:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(input_shape, generator=generator, dtype=weight.dtype)
        params = [
            torch.randn(p.shape, generator=generator, dtype=weight.dtype) for p in (weight, conv.bias) if p is not None
        ]
        stride, groups = conv.stride[0], conv.groups
        results = []
        with torch.enable_grad(), torch.backends.mkldnn.flags(enabled=False):
            for batched in (False, True):
                inputs = [t.clone().requires_grad_(True) for t in (x, *params)]
                w, b = inputs[1], inputs[2] if len(inputs) == 3 else None
                if not batched:
                    out = F.conv2d(inputs[0], w, b, stride, groups=groups)
                elif w.shape[-1] == 1 and stride == 1:
                    out = grouped_pointwise_conv(inputs[0], w, b, groups)
                else:
                    out = GroupedIm2colConv.apply(inputs[0], w, b, groups, stride)
                grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
                results.append((out, *torch.autograd.grad(out, inputs, grad_out)))
        _probed[key] = all(torch.equal(a, b) for a, b in zip(*results, strict=True))
    return _probed[key]


def grouped_pointwise_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int
) -> torch.Tensor:
    """A grouped 1x1 convolution as one batched matrix product, group by group W_g @ x_g + b_g.

    PyTorch's native CPU convolution (the ``exact_cpu`` path) runs a grouped convolution as a
    loop over groups, one small GEMM each; for 1x1 kernels that loop costs more than the
    arithmetic. ``bmm`` runs the same GEMMs with the same shapes, so the output and all three
    gradients equal the native convolution's bit for bit (tests/test_dip_engine.py), 2.6-4x
    faster at B = 8-32 (benchmarks/RESULTS.md)."""
    _, _, h, w = x.shape
    c_out = weight.shape[0] // groups
    weights, columns = weight.reshape(groups, c_out, -1), x.reshape(groups, -1, h * w)
    out = torch.bmm(weights, columns) if bias is None else torch.baddbmm(bias.view(groups, c_out, 1), weights, columns)
    return out.reshape(1, groups * c_out, h, w)


class GroupedIm2colConv(torch.autograd.Function):
    """A grouped, unpadded k x k convolution as PyTorch's native CPU convolution computes it,
    with the per-group loop replaced by batched matrix products over chunks of groups.

    The native path copies each group's input windows into columns (im2col) and multiplies
    by the group's weights, one GEMM per group; the backward computes the weight gradient
    as grad_out @ columns^T, the column gradient as W^T @ grad_out and scatters it back
    (col2im) kernel offset by kernel offset. This does the same with the same GEMM shapes
    and the same order of additions, so outputs and gradients are equal bit for bit
    (tests/test_dip_engine.py), in a few calls per chunk rather than several per group.
    Columns are built per chunk of groups (about ``CHUNK_BYTES``) and rebuilt in the
    backward, so they stay in cache and are never stored for the backward."""

    CHUNK_BYTES = 4 << 20

    @staticmethod
    def _columns(x: torch.Tensor, k: int, stride: int, out_hw: tuple[int, int]) -> torch.Tensor:
        g, c = x.shape[:2]
        windows = x.unfold(2, k, stride).unfold(3, k, stride)  # [G, C, H', W', k, k]
        return windows.permute(0, 1, 4, 5, 2, 3).reshape(g, c * k * k, out_hw[0] * out_hw[1])

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int, stride: int
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.geometry = (groups, stride, bias is not None)
        return im2col_conv_forward(x, weight, bias, groups, stride)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        groups, stride, has_bias = ctx.geometry
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], has_bias and ctx.needs_input_grad[2])
        return (*im2col_conv_backward(grad_out, x, weight, groups, stride, need), None, None)


def _chunk(
    x: torch.Tensor, weight: torch.Tensor, groups: int, stride: int
) -> tuple[int, int, int, tuple[int, int], int]:
    """(c_in, c_out, k, output size, groups per chunk) of GroupedIm2colConv's batched GEMMs."""
    _, channels, h_in, w_in = x.shape
    c_in, c_out, k = channels // groups, weight.shape[0] // groups, weight.shape[-1]
    out_hw = ((h_in - k) // stride + 1, (w_in - k) // stride + 1)
    per_group = c_in * k * k * out_hw[0] * out_hw[1] * x.element_size()
    return c_in, c_out, k, out_hw, max(1, min(groups, GroupedIm2colConv.CHUNK_BYTES // per_group))


def im2col_conv_forward(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int, stride: int
) -> torch.Tensor:
    """GroupedIm2colConv's output: per chunk of groups, im2col then one batched GEMM."""
    c_in, c_out, k, out_hw, chunk = _chunk(x, weight, groups, stride)
    _, _, h_in, w_in = x.shape
    xs, ws = x.reshape(groups, c_in, h_in, w_in), weight.reshape(groups, c_out, -1)
    out = x.new_empty(groups, c_out, out_hw[0] * out_hw[1])
    for g in range(0, groups, chunk):
        part = slice(g, g + chunk)
        columns = GroupedIm2colConv._columns(xs[part], k, stride, out_hw)
        if bias is None:
            torch.bmm(ws[part], columns, out=out[part])
        else:
            torch.baddbmm(bias.view(groups, c_out, 1)[part], ws[part], columns, out=out[part])
    return out.reshape(1, groups * c_out, *out_hw)


def im2col_conv_backward(
    grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, groups: int, stride: int, need: tuple[bool, ...]
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """GroupedIm2colConv's gradients of input, weight and bias (each where ``need`` says)."""
    c_in, c_out, k, (h, w), chunk = _chunk(x, weight, groups, stride)
    _, _, h_in, w_in = x.shape
    xs, ws = x.reshape(groups, c_in, h_in, w_in), weight.reshape(groups, c_out, -1)
    go = grad_out.reshape(groups, c_out, h * w)
    need_x, need_w, need_b = need
    grad_x = torch.zeros_like(xs) if need_x else None
    grad_w = torch.empty_like(ws) if need_w else None
    for g in range(0, groups, chunk):
        part = slice(g, g + chunk)
        if need_w:
            torch.bmm(
                go[part], GroupedIm2colConv._columns(xs[part], k, stride, (h, w)).transpose(1, 2), out=grad_w[part]
            )
        if need_x:
            grad_columns = torch.bmm(ws[part].transpose(1, 2), go[part]).view(-1, c_in, k, k, h, w)
            target = grad_x[part]
            for i in range(k):  # col2im's order: kernel row, then kernel column
                for j in range(k):
                    target[:, :, i : i + stride * (h - 1) + 1 : stride, j : j + stride * (w - 1) + 1 : stride] += (
                        grad_columns[:, :, i, j]
                    )
    grad_b = go.sum(2).reshape(-1) if need_b else None
    return (
        None if grad_x is None else grad_x.reshape(x.shape),
        None if grad_w is None else grad_w.reshape(weight.shape),
        grad_b,
    )


# The same convolution as an operator torch.compile keeps whole (DIPSettings.compile): the
# compiler fuses the element-wise work around it (BatchNorm, activations, padding, upsampling,
# concatenation, Adam) and calls these chunked, cache-sized GEMMs for the convolution itself.
@torch.library.custom_op("dipdefense::grouped_im2col_conv", mutates_args=())
def grouped_conv_op(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int, stride: int
) -> torch.Tensor:
    return im2col_conv_forward(x, weight, bias, groups, stride)


@grouped_conv_op.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int, stride: int) -> torch.Tensor:
    _, _, _, out_hw, _ = _chunk(x, weight, groups, stride)
    return x.new_empty(1, weight.shape[0], *out_hw)


@torch.library.custom_op("dipdefense::grouped_im2col_conv_backward", mutates_args=())
def grouped_conv_backward_op(
    grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, groups: int, stride: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    grad_x, grad_w, grad_b = im2col_conv_backward(grad_out.contiguous(), x, weight, groups, stride, (True, True, True))
    return grad_x, grad_w, grad_b


@grouped_conv_backward_op.register_fake
def _(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, groups: int, stride: int):
    return torch.empty_like(x), torch.empty_like(weight), weight.new_empty(weight.shape[0])


def _setup(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
    x, weight, bias, groups, stride = inputs
    ctx.save_for_backward(x, weight)
    ctx.groups, ctx.stride, ctx.has_bias = groups, stride, bias is not None


def _backward(ctx: Any, grad_out: torch.Tensor) -> tuple:
    x, weight = ctx.saved_tensors
    grad_x, grad_w, grad_b = grouped_conv_backward_op(grad_out, x, weight, ctx.groups, ctx.stride)
    return grad_x, grad_w, grad_b if ctx.has_bias else None, None, None


grouped_conv_op.register_autograd(_backward, setup_context=_setup)


class GroupedConcat(nn.Module):
    """Concatenate branch outputs channel-wise *per network*: for B networks, network b's
    channels of every branch end up contiguous, as a grouped conv that follows expects.
    Branches are cropped to their smallest spatial size (as the official Concat does)."""

    def __init__(self, groups: int, *branches: nn.Module) -> None:
        super().__init__()
        self.groups = groups
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [branch(x) for branch in self.branches]
        h, w = min(o.shape[-2] for o in outs), min(o.shape[-1] for o in outs)
        cropped = []
        for o in outs:
            dy, dx = (o.shape[-2] - h) // 2, (o.shape[-1] - w) // 2
            o = o[..., dy : dy + h, dx : dx + w]
            cropped.append(o.reshape(o.shape[0], self.groups, -1, h, w))
        out = torch.cat(cropped, dim=2)
        return out.reshape(out.shape[0], -1, h, w)


def _per_scale(value: int | Sequence[int] | str | Sequence[str], n: int, what: str) -> list:
    values = [value] * n if isinstance(value, int | str) else list(value)
    if len(values) != n:
        raise ValueError(f"{what} has {len(values)} entries for {n} scales")
    return values


def skip(
    input_channels: int = 4,
    output_channels: int = 3,
    channels_down: Sequence[int] = (32, 32, 32),
    channels_up: Sequence[int] = (32, 32, 32),
    channels_skip: Sequence[int] = (3, 3, 3),
    kernel_down: int | Sequence[int] = 3,
    kernel_up: int | Sequence[int] = 3,
    kernel_skip: int | Sequence[int] = 1,
    upsample_mode: str = "bilinear",
    activation: str = "LeakyReLU",
    pad: str = "reflection",
    need_sigmoid: bool = True,
    need_bias: bool = True,
    need1x1_up: bool = True,
    groups: int = 1,
) -> nn.Sequential:
    """Build the skip network (defaults: paper 002's CIFAR-10 network, App. B).

    Arguments:
        input_channels: channels of the noise input z. Default: 4.
        output_channels: image channels. Default: 3.
        channels_down: n_d per scale. Default: (32, 32, 32).
        channels_up: n_u per scale. Default: (32, 32, 32).
        channels_skip: n_s per scale (0: no skip at that scale). Default: (3, 3, 3).
        kernel_down, kernel_up, kernel_skip: k_d, k_u, k_s (one value or one per scale). Default: 3, 3, 1.
        upsample_mode: "bilinear" or "nearest". Default: "bilinear".
        activation: "LeakyReLU" (0.2), "Swish" or "ReLU". Default: "LeakyReLU".
        pad: "reflection" or "zero". Default: "reflection".
        need_sigmoid: sigmoid on the output. Default: True.
        need_bias: conv biases. Default: True.
        need1x1_up: the 1x1 conv after each up conv. Default: True.
        groups: independent networks stacked in one module. Default: 1.
    """
    n = len(channels_down)
    if len(channels_up) != n or len(channels_skip) != n:
        raise ValueError(
            f"channels_down/up/skip need one entry per scale: got {n}, {len(channels_up)}, {len(channels_skip)}"
        )
    if upsample_mode not in ("bilinear", "nearest"):
        raise ValueError(f"unknown upsample_mode {upsample_mode!r}; accepted: bilinear, nearest")
    k_down, k_up, k_skip = (
        _per_scale(k, n, name)
        for k, name in ((kernel_down, "kernel_down"), (kernel_up, "kernel_up"), (kernel_skip, "kernel_skip"))
    )
    g = groups

    def conv(c_in: int, c_out: int, k: int, stride: int = 1) -> nn.Module:
        return SamePadConv(c_in, c_out, k, stride, pad, need_bias, g)

    def bn_act(c: int) -> list[nn.Module]:
        return [nn.BatchNorm2d(c * g), _activation(activation)]

    def upsample() -> nn.Module:
        return nn.Upsample(
            scale_factor=2, mode=upsample_mode, **({"align_corners": False} if upsample_mode == "bilinear" else {})
        )

    def scale(i: int, c_in: int) -> list[nn.Module]:
        deeper: list[nn.Module] = [conv(c_in, channels_down[i], k_down[i], 2), *bn_act(channels_down[i])]
        deeper += [conv(channels_down[i], channels_down[i], k_down[i]), *bn_act(channels_down[i])]
        if i < n - 1:
            deeper += scale(i + 1, channels_down[i])
            c_deeper = channels_up[i + 1]
        else:
            c_deeper = channels_down[i]
        deeper.append(upsample())
        c_cat = c_deeper + channels_skip[i]
        if channels_skip[i]:
            skip_branch = nn.Sequential(conv(c_in, channels_skip[i], k_skip[i]), *bn_act(channels_skip[i]))
            layers: list[nn.Module] = [GroupedConcat(g, skip_branch, nn.Sequential(*deeper))]
        else:
            layers = [nn.Sequential(*deeper)]
        layers += [nn.BatchNorm2d(c_cat * g), conv(c_cat, channels_up[i], k_up[i]), *bn_act(channels_up[i])]
        if need1x1_up:
            layers += [conv(channels_up[i], channels_up[i], 1), *bn_act(channels_up[i])]
        return layers

    layers = [*scale(0, input_channels), conv(channels_up[0], output_channels, 1)]
    if need_sigmoid:
        layers.append(nn.Sigmoid())
    return nn.Sequential(*layers)


def stack_networks(networks: Sequence[nn.Module], grouped: nn.Module) -> nn.Module:
    """Copy B single networks (``groups=1``) into the slices of ``grouped`` (same builder
    arguments, ``groups=B``), so that network b of the stack starts exactly as ``networks[b]``."""
    layer_types = (nn.Conv2d, nn.BatchNorm2d)
    target = [m for m in grouped.modules() if isinstance(m, layer_types)]
    sources = [[m for m in net.modules() if isinstance(m, layer_types)] for net in networks]
    if any(len(s) != len(target) for s in sources):
        raise ValueError("networks and grouped were not built with the same arguments")
    with torch.no_grad():
        for j, layer in enumerate(target):
            for name, tensor in [*layer.named_parameters(recurse=False), *layer.named_buffers(recurse=False)]:
                if name == "num_batches_tracked":
                    continue
                parts = [
                    dict([*s[j].named_parameters(recurse=False), *s[j].named_buffers(recurse=False)])[name]
                    for s in sources
                ]
                tensor.copy_(torch.cat(parts, dim=0))
    return grouped
