"""The base class every attack wrapper derives from.

It owns what the libraries leave to the caller: input checks (torchattacks does not
range-check), the model's mode (eval during the attack, each module's own mode restored
after), gradients (enabled even under ``torch.no_grad()``), the model's parameter ``.grad``
(restored: some libraries call ``backward()``), and a last clean-up so the output is
finite, in [0, 1] and inside the budget whatever the library returned.
"""

import inspect
import math
from importlib.metadata import PackageNotFoundError, version
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from dipdefense.common.errors import UserError

Norm = Literal["linf", "l2", "none"]


class AttackError(UserError, ValueError):
    """A bad attack name, parameter, budget or input (a ValueError the entry points print on one line)."""


def check_eps(name: str, eps: Any, norm: str) -> float:
    """``eps`` as a float, or AttackError naming the attack and the accepted range."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps):
        raise AttackError(f"{name}: eps must be a number in [0, 1] pixel units (e.g. 8/255 = 0.0314); got {eps!r}")
    if norm == "linf" and not 0 < eps <= 1:
        raise AttackError(
            f"{name}: eps={eps} is out of range; it is an L-inf budget in [0, 1] pixel units, "
            "0 < eps <= 1 (e.g. 8/255 = 0.0314, not 8)"
        )
    if eps <= 0:
        raise AttackError(f"{name}: eps={eps} must be > 0 (an L2 norm in [0, 1] pixel units)")
    return float(eps)


class Attack:
    """Base class: ``attack(model, images, labels) -> adversarial images``.

    Subclasses set ``name``, ``library``, ``norm`` and ``eps_mode``, store every ``__init__``
    argument under its own name (``params()`` reads them back), and implement ``_run``.
    ``images`` are floats in [0, 1], shape [B, C, H, W]; ``model`` takes such images (its
    normalisation is inside it) and returns logits; ``labels`` are the true classes, shape [B].

    Attributes:
        name (str): registry name.
        norm (str): "linf", "l2", or "none" for noise/query attacks without a fixed norm budget.
        eps (float | None): budget in [0, 1] pixel units; None for minimum-norm attacks.
    """

    name: ClassVar[str] = ""
    library: ClassVar[str] = ""  # the PyPI distribution wrapped, recorded in params()
    eps_mode: ClassVar[Literal["required", "optional", "none"]] = "none"
    # ``needs_gradient``: it backpropagates through the model (through a defense only where the
    # defense is differentiable, unless ``uses_bpda``: it runs on a DefendedClassifier, whose
    # BPDA stands in). ``adaptive_only``: it is built to attack a defended model
    # (``defenses.defended.DefendedClassifier``) and has no oblivious form. ``needs_projection``:
    # it searches the latent space of a defense that projects onto a generator (``project``).
    needs_gradient: ClassVar[bool] = False
    needs_projection: ClassVar[bool] = False
    uses_bpda: ClassVar[bool] = False
    adaptive_only: ClassVar[bool] = False
    norm: str = "none"
    eps: float | None = None

    def params(self) -> dict[str, Any]:
        """Every setting that changes the result (JSON-serialisable; a cache key)."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p not in ("self", "eps")]
        return {
            "name": self.name,
            "library": _library_version(self.library),
            "norm": self.norm,
            "eps": self.eps,
            **{p: getattr(self, p) for p in names},
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items() if k not in ("name", "library", "norm"))
        return f"{type(self).__name__}({args})"

    def _run(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _check_inputs(self.name, images, labels)
        if torch.is_inference_mode_enabled():
            raise AttackError(
                f"{self.name}: attacks need gradients but torch.inference_mode() is on; "
                "run them outside it (Lightning: Trainer(inference_mode=False))"
            )
        x = images.detach().clone()  # the clone also turns an inference tensor into a normal one
        if len(x) == 0:
            return x
        y = labels.detach().to(device=x.device, dtype=torch.long)
        modes = [(m, m.training) for m in model.modules()]
        grads = [(p, p.grad) for p in model.parameters()]
        model.eval()
        try:
            with torch.enable_grad():
                adv = self._run(model, x, y)
        finally:
            for module, training in modes:  # per module: a model may mix train and eval parts
                module.training = training
            for p, grad in grads:
                p.grad = grad
        return self.finish(adv, images)

    def finish(self, adv: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """The last clean-up of a result of ``_run`` (or of a snapshot of one): on the images'
        device and dtype, finite, in [0, 1] and inside the budget."""
        adv = adv.detach().to(device=images.device, dtype=images.dtype)
        # a library can return NaN (foolbox's NewtonFool divides by a gradient norm that is
        # exactly 0 on saturated softmax outputs): such an image counts as not attacked
        broken = ~torch.isfinite(adv).flatten(1).all(dim=1)
        if broken.any():
            adv[broken] = images.detach()[broken]
        return self._project(adv, images.detach())

    def _project(self, adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Clamp to [0, 1] and, for a budgeted attack, into the eps ball (a safety net)."""
        adv = adv.clamp(0, 1)
        if self.eps is None or self.norm not in ("linf", "l2"):
            return adv
        delta = adv - x
        if self.norm == "linf":
            delta = delta.clamp(-self.eps, self.eps)
        else:
            norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
            delta = delta * (self.eps / norms).clamp(max=1).view(-1, *[1] * (delta.dim() - 1))
        return (x + delta).clamp(0, 1)


def _check_inputs(name: str, images: Any, labels: Any) -> None:
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        kind = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
        raise AttackError(f"{name}: images must be a float tensor in [0, 1]; got {kind} (divide uint8 images by 255)")
    if images.dim() != 4:
        raise AttackError(f"{name}: images must have shape [B, C, H, W]; got {list(images.shape)}")
    if images.numel():
        lo, hi = images.detach().aminmax()
        if not (torch.isfinite(lo) and torch.isfinite(hi)) or lo < 0 or hi > 1:
            raise AttackError(
                f"{name}: images must be in [0, 1] (normalisation belongs inside the model); "
                f"found values in [{lo.item():.4g}, {hi.item():.4g}]"
            )
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.is_complex():
        raise AttackError(f"{name}: labels must be an integer tensor of class indices")
    if labels.shape != images.shape[:1]:
        raise AttackError(f"{name}: labels must have shape [{len(images)}] (one per image); got {list(labels.shape)}")


def _library_version(distribution: str) -> str:
    try:
        return f"{distribution}=={version(distribution)}"
    except PackageNotFoundError:
        return distribution
