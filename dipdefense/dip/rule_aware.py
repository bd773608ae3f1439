"""Rule-aware BPDA: the backward that a selection rule's algebra gives, with each iterate's
Jacobian dx(t)/dx0 replaced by a measured stand-in s(t) I (issue 39, item 3).

A rule's output is y = clamp(sum_t w_t x(t) + c x0, 0, 1) once its choices are made
(``dip.selection``). BPDA with the identity takes every dx(t)/dx0 = I, so dy/dx0 = (sum_t w_t + c) I
= I. But an early iterate holds little of a perturbation (it has fitted the image's coarse
content), and dip_stitch's Eq. 6 subtracts beta x0: for an output stitched from crossings at
t ~ 50-150, dy/dx0 ~ ((1 + beta) s(t) - beta) I, about -0.3 I with s ~ 0.1-0.2. The identity then
points the attack the wrong way. Here dy/dx0 = k I with k = sum_t w_t s(t) + c per image, at the
cost of one fit per step like the identity.

s(t) is the fraction of a random-sign perturbation at 8/255 that iterate t reproduces along the
perturbation, averaged over 8 held-out CIFAR-10 test images (a secant at the perturbation's scale,
so it is smooth where the fit is shattered): ``python studies/perturbation_transfer.py
--defense dip_stitch --num-images 8`` (studies/perturbation_transfer.json; spread over images
0.02-0.08). It was measured on dip_stitch's network (paper 002's CIFAR net, zero padding) and is
used for every DIP defense; for the rules without an x0 term (dipdefend, dip_inc,
deep_protection) k > 0, so a sign step is the identity's whatever the curve.
"""

import bisect

import torch

from dipdefense.dip.selection import LinearSelection

# (t, s(t)) from studies/perturbation_transfer.json, dip_stitch's default network, eps 8/255.
DIP_STITCH_TRANSFER: tuple[tuple[int, float], ...] = (
    (0, 0.0),
    (10, 0.040),
    (20, 0.045),
    (30, 0.067),
    (40, 0.087),
    (50, 0.105),
    (100, 0.212),
    (150, 0.296),
    (200, 0.365),
    (250, 0.427),
    (300, 0.485),
    (350, 0.539),
    (400, 0.584),
    (450, 0.623),
    (500, 0.669),
    (550, 0.707),
    (600, 0.736),
    (650, 0.765),
    (700, 0.787),
    (750, 0.803),
    (800, 0.832),
    (850, 0.849),
    (900, 0.864),
    (950, 0.876),
    (999, 0.881),
)


def transfer_at(t: int, curve: tuple[tuple[int, float], ...] = DIP_STITCH_TRANSFER) -> float:
    """s(t), linearly interpolated; past the curve's last t, its last value."""
    times = [p[0] for p in curve]
    i = bisect.bisect_right(times, t)
    if i == 0:
        return curve[0][1]
    if i == len(curve):
        return curve[-1][1]
    (t_a, s_a), (t_b, s_b) = curve[i - 1], curve[i]
    return s_a + (s_b - s_a) * (t - t_a) / (t_b - t_a)


def rule_aware_coefficients(
    selection: LinearSelection, curve: tuple[tuple[int, float], ...] = DIP_STITCH_TRANSFER
) -> list[float]:
    """k per image: dy/dx0 ~ k I, k = sum_t w_t s(t) + c."""
    return [
        sum(w_t * transfer_at(t, curve) for t, w_t in w.items()) + c
        for w, c in zip(selection.weights, selection.x0_weight, strict=True)
    ]


class RuleAwareBackward(torch.autograd.Function):
    """Forward: the defense's output (computed by the caller). Backward: k * clamp mask * g."""

    @staticmethod
    def forward(ctx, images: torch.Tensor, output: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(output, k)
        return output.to(images.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        output, k = ctx.saved_tensors
        passed = ((output > 0) & (output < 1)).to(grad_output.dtype)
        return k.view(-1, *[1] * (grad_output.dim() - 1)).to(grad_output.dtype) * passed * grad_output, None, None
