"""The compiled fit step and the fast numerics (issue 41): what they compute against the eager
engine, that a compiled step is compiled once per shape, and how they are recorded and refused."""

import json

import pytest
import torch

from dipdefense.dip import DIPSettings, compiled_step, fit_dip
from dipdefense.dip.compiled_step import CompiledStep, adam_update
from dipdefense.dip.engine import DIPFit

TINY = {"channels_down": [4, 4], "channels_up": [4, 4], "channels_skip": [2, 2], "pad": "zero"}


def _images(b: int) -> torch.Tensor:
    return torch.rand(b, 3, 16, 16, generator=torch.Generator().manual_seed(3))


def test_adam_update_is_torch_adams_arithmetic():
    generator = torch.Generator().manual_seed(0)
    theta = torch.randn(50, generator=generator)
    grads = [torch.randn(50, generator=generator) * 10 ** (-i) for i in range(6)]
    reference = torch.nn.Parameter(theta.clone())
    optimizer = torch.optim.Adam([reference], lr=0.01, eps=1e-8)
    mine, m, v, step = theta.clone(), torch.zeros(50), torch.zeros(50), torch.zeros(())
    for g in grads:
        reference.grad = g.clone()
        optimizer.step()
        adam_update(mine, g, m, v, step, 0.01, 1e-8)
    assert step.item() == len(grads)
    torch.testing.assert_close(mine, reference.detach(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("with_bias", [True, False])
def test_the_compiled_fits_convolution_operator_has_the_convolutions_gradients(with_bias):
    from dipdefense.dip.skip_net import grouped_conv_op

    generator = torch.Generator().manual_seed(1)
    x = torch.randn(1, 6, 7, 7, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(8, 3, 3, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(8, generator=generator, dtype=torch.float64, requires_grad=True) if with_bias else None
    for stride in (1, 2):
        expected = torch.nn.functional.conv2d(x, weight, bias, stride, groups=2)
        torch.testing.assert_close(grouped_conv_op(x, weight, bias, 2, stride), expected)
        inputs = (x, weight, bias) if with_bias else (x, weight)
        assert torch.autograd.gradcheck(
            lambda *t, s=stride: grouped_conv_op(t[0], t[1], t[2] if with_bias else None, 2, s), inputs
        )


def test_a_compiled_fit_is_the_eager_fit_up_to_round_off_and_compiles_once_per_shape():
    images = _images(4)
    eager = DIPSettings(network=TINY, iterations=30, observe_every=10)
    compiled = DIPSettings(network=TINY, iterations=30, observe_every=10, compile=True)
    # The first step: the same x(0) and a theta_1 within round-off of the eager update.
    fit_e, fit_c = DIPFit(images, range(4), eager), DIPFit(images, range(4), compiled)
    step = CompiledStep(fit_c)
    (out_e, mse_e), (out_c, mse_c) = fit_e.step(), step()
    torch.testing.assert_close(out_c, out_e, rtol=0, atol=1e-5)
    torch.testing.assert_close(mse_c, mse_e, rtol=1e-5, atol=0)
    # theta_1: Adam moves a parameter whose true gradient is zero (a conv bias before BatchNorm)
    # by +-lr after the sign of its round-off gradient (DIPSettings, "Why exact_cpu"), so those
    # may land 2 lr apart; every other parameter agrees to round-off.
    apart = (fit_c.flat.detach() - fit_e.flat.detach()).abs()
    assert apart.max() <= 2 * eager.lr + 1e-6
    assert (apart <= 1e-5).float().mean() > 0.9
    # The whole fit: the chaotic fit drifts by round-off, but fits the image as well.
    x_e, x_c = fit_dip(images, range(4), eager), fit_dip(images, range(4), compiled)
    mse = [(x - images).pow(2).mean().item() for x in (x_e, x_c)]
    assert mse[1] == pytest.approx(mse[0], rel=0.05)
    assert mse[1] < images.var().item()
    # A second fit of the same shape reuses the compiled code: no new entry, no recompilation.
    entries = len(compiled_step.compiled_steps)
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    again = fit_dip(images, range(4), compiled)
    assert torch.equal(again, x_c)  # and a compiled fit is deterministic
    assert len(compiled_step.compiled_steps) == entries
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == frames


def test_compiled_fits_optimise_the_input_and_take_input_jitter():
    images = _images(2)
    settings = DIPSettings(network=TINY, iterations=6, optimize_input=True, input_jitter=1 / 30, compile=True)
    fit = DIPFit(images, [0, 1], settings)
    z0 = fit.noise.detach().clone()
    step = CompiledStep(fit)
    for _ in range(3):
        step()
    assert not torch.equal(fit.noise.detach(), z0)  # z is a slice of the optimised buffer


def test_the_fast_numerics_run_on_a_cpu_and_fit_as_well():
    images = _images(2)
    exact = fit_dip(images, [0, 1], DIPSettings(network=TINY, iterations=30))
    fast_fit = DIPFit(images, [0, 1], DIPSettings(network=TINY, iterations=30, fast=True))
    assert not fast_fit.exact and fast_fit.channels_last and not fast_fit.autocast  # no bfloat16 on a CPU
    fast = fit_dip(images, [0, 1], DIPSettings(network=TINY, iterations=30, fast=True))
    mse = [(x - images).pow(2).mean().item() for x in (exact, fast)]
    assert mse[1] == pytest.approx(mse[0], rel=0.1)


def test_compile_and_fast_are_recorded_when_on_and_refused_where_they_cannot_apply():
    from dipdefense.defenses.registry import build_defense

    for name in ("dip_stitch", "dipdefend", "deep_protection", "dip_inc"):
        off = build_defense(name).params()
        assert "compile" not in off and "fast" not in off  # old manifests resume
        on = build_defense(name, compile=True, fast=True)
        assert on.params()["compile"] is True and on.params()["fast"] is True
        assert any("compile=true" in n for n in on.device_notes("cpu"))
        assert any("oneDNN" in n for n in on.device_notes("cpu"))
        assert any("bfloat16" in n for n in on.device_notes("cuda"))
        graphed = build_defense(name, cuda_graph=True)
        assert graphed.device_notes("cpu") == [
            f"{graphed.name}: cuda_graph=true has no effect on a CPU; the fit steps run eagerly"
        ]
        assert graphed.device_notes("cuda") == []
    with pytest.raises(ValueError, match=r"cuda_graph records the eager step and compile compiles it; choose one"):
        DIPSettings(cuda_graph=True, compile=True)
    defense = build_defense("dip_stitch", network=TINY, iterations=4, compile=True)
    with pytest.raises(ValueError, match=r"dip_stitch: the exact gradient replays the eager fit .* compile=false"):
        defense.check_pathwise_memory(_images(2), torch.arange(2))


def test_a_run_says_what_an_option_does_on_its_device_and_keeps_it_in_run_json(
    tiny_victim, cifar_batches_dir, tmp_path, capsys
):
    import evaluate

    out = tmp_path / "run"
    defense = "dip_stitch(network=small,iterations=4,observe_every=2,t0=0,cuda_graph=true)"
    args = ["--victim", str(tiny_victim), "--data-dir", str(cifar_batches_dir), "--out", str(out), "--batch-size", "2",
            "--defense", defense, "--attacks", "clean", "--num-samples", "2", "--accelerator", "cpu"]  # fmt: skip
    evaluate.main(args)
    note = "dip_stitch: cuda_graph=true has no effect on a CPU; the fit steps run eagerly"
    assert f"note: {note}" in capsys.readouterr().err
    assert json.loads((out / "run.json").read_text())["notes"] == [note]
    evaluate.main(args)  # resumes: the notes are not part of what must match
