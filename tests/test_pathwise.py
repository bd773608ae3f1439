"""The pathwise (exact) gradient through the unrolled DIP fit.

Known answers: the functional fit retraces ``fit_dip`` bit for bit (so the backward differentiates
the trajectory the defense took); each rule's linear selection reproduces its output; in float64
on a short fit the pathwise derivative equals a central finite difference at a small step.
Error paths: a backward a defense cannot give, a fit that would not fit in memory, options the
unrolled fit does not model.
"""

import pytest
import torch

from dipdefense.common.errors import UserError
from dipdefense.defenses import build_defense
from dipdefense.defenses.defended import DefendedClassifier
from dipdefense.defenses.dip_purifier import DIP_NETWORKS
from dipdefense.dip.dipdefend import DIPDefendRule, DIPDefendSettings
from dipdefense.dip.early_stopping import MSEEarlyStop
from dipdefense.dip.engine import DIPFit, DIPSettings, fit_dip
from dipdefense.dip.pathwise import FitState, StateRecorder, UnrolledFit, pathwise_vjp, unrolled_forward
from dipdefense.dip.rule_aware import DIP_STITCH_TRANSFER, rule_aware_coefficients, transfer_at
from dipdefense.dip.selection import LinearSelection, rule_selection
from dipdefense.dip.stitching import StitchRule, StitchSettings
from tests.test_adaptive import tiny_victim_module

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def images(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 0.8 + 0.1


@pytest.mark.parametrize(("optimize_input", "adam_eps"), [(False, 1e-8), (True, 1e-8), (False, 1e-4)])
def test_the_functional_fit_retraces_fit_dip_bit_for_bit(optimize_input, adam_eps):
    x = images()
    settings = DIPSettings(
        network=DIP_NETWORKS["cifar"], iterations=16, optimize_input=optimize_input, adam_eps=adam_eps
    )
    seen, recorder = {}, StateRecorder(segment=5)
    fit_dip(x, [3, 4], settings, observer=lambda t, xt, mse: seen.__setitem__(t, xt.clone()), recorder=recorder)
    assert sorted(recorder.states) == [0, 5, 10, 15]
    unrolled = UnrolledFit(recorder.fit, settings)
    state = recorder.states[5]
    theta, m, v = state.theta, state.exp_avg, state.exp_avg_sq
    with unrolled.numerics():
        for t in range(5, 15):
            out, (theta, m, v) = unrolled.step(theta, m, v, x, t, create_graph=t % 2 == 0)
            if t in seen:
                assert torch.equal(out.detach().reshape(x.shape), seen[t]), t
        assert torch.equal(theta.detach(), recorder.states[15].theta)
        assert torch.equal(v.detach(), recorder.states[15].exp_avg_sq)


def record_all(rule):
    """Wrap an observer so every iterate it sees is kept."""
    seen = {}

    def observer(t, x, mse):
        seen[t] = x.clone()
        return rule(t, x, mse)

    return observer, seen


def assert_selection_reproduces(rule, seen, x0, result, iterations):
    selection = rule_selection(rule, len(x0), iterations - 1)
    total = torch.zeros_like(x0)
    for t in selection.times():
        total += selection.weight_at(t).view(-1, 1, 1, 1) * seen[t]
    total += torch.tensor(selection.x0_weight).view(-1, 1, 1, 1) * x0
    assert torch.allclose(total.clamp(0, 1), result.clamp(0, 1), atol=1e-5)
    return selection


class Flicker(torch.nn.Module):
    """A classifier whose label turns with the image's mean brightness: crossings along any fit."""

    def forward(self, x):
        m = 60 * x.mean((1, 2, 3))
        return 5 * torch.stack([torch.sin(m), torch.cos(m), -torch.sin(m)], 1)


def test_stitch_selection_reproduces_the_rules_output_with_and_without_crossings():
    x0 = images(4, seed=1)
    victim = Flicker()
    settings = DIPSettings(network=DIP_NETWORKS["small"], iterations=60, observe_every=2)
    rule = StitchRule(x0, victim, StitchSettings(t0=0, tau=0.0, k=3))
    observer, seen = record_all(rule)
    fit_dip(x0, [0, 1, 2, 3], settings, observer, observe_tail=3)
    selection = assert_selection_reproduces(rule, seen, x0, rule.result(), 60)
    crossed = rule.crossings > 0
    assert crossed.any(), "the test needs an image with crossings"
    assert [c for c, k in zip(selection.x0_weight, crossed.tolist(), strict=True) if k] == [-0.5] * int(crossed.sum())
    # with crossings the weights sum to 1 + beta (so y moves with x0 with total weight 1); without, to 1
    assert selection.total_weight() == pytest.approx([1.0] * 4)
    if not crossed.all():
        assert any(set(w) == {57, 58, 59} for w in selection.weights)  # the last K iterates


def test_dipdefend_and_mse_stop_selections_are_their_chosen_iterates():
    x0 = images(2, seed=2)
    settings = DIPSettings(network=DIP_NETWORKS["small"], iterations=40, observe_every=1)
    for rule in (DIPDefendRule(x0, DIPDefendSettings(lam=0.2)), MSEEarlyStop(x0, threshold=0.02)):
        observer, seen = record_all(rule)
        fit_dip(x0, [5, 6], settings, observer)
        assert_selection_reproduces(rule, seen, x0, rule.result(), 40)


@pytest.mark.parametrize("optimize_input", [False, True])
def test_the_pathwise_derivative_is_a_finite_difference_in_float64(optimize_input):
    x0 = images(2, seed=3).double()
    settings = DIPSettings(network=DIP_NETWORKS["small"], iterations=8, optimize_input=optimize_input)
    fit = DIPFit(x0.float(), [1, 2], settings)
    fit.net.double()
    fit.noise = fit.noise.double()
    unrolled = UnrolledFit(fit, settings)
    theta = fit.flat.detach().double()
    start = FitState(theta, torch.zeros_like(theta), torch.zeros_like(theta))
    selection = LinearSelection([{7: 0.7, 4: 0.8}, {6: 1.5}], [-0.5, -0.5])
    y, states = unrolled_forward(unrolled, start, x0, selection, segment=3)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(0), dtype=y.dtype)
    vjp = pathwise_vjp(unrolled, states, 3, selection, x0, y, g)
    direction = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=x0.dtype)
    h = 1e-7
    plus, _ = unrolled_forward(unrolled, start, x0 + h * direction, selection, 3)
    minus, _ = unrolled_forward(unrolled, start, x0 - h * direction, selection, 3)
    finite_difference = ((g * plus).sum() - (g * minus).sum()) / (2 * h)
    assert (vjp * direction).sum().item() == pytest.approx(finite_difference.item(), rel=1e-3)
    # segment length is bookkeeping only
    _, every_step = unrolled_forward(unrolled, start, x0, selection, segment=1)
    assert torch.allclose(pathwise_vjp(unrolled, every_step, 1, selection, x0, y, g), vjp, rtol=1e-9)


def small_stitch(**kwargs):
    return build_defense("dip_stitch", network="small", iterations=30, t0=0, tau=0.0, k=3, observe_every=2, **kwargs)


def test_defended_classifier_with_the_exact_gradient():
    victim, x = tiny_victim_module(), images(2, seed=4)
    defense = small_stitch()
    exact = DefendedClassifier(victim, defense, gradient="exact")
    assert exact.gradient == "exact"
    identity = DefendedClassifier(victim, defense)
    indices = torch.tensor([10, 11])
    with torch.no_grad():
        reference = identity(x, indices)
    xg = x.clone().requires_grad_(True)
    logits = exact(xg, indices)
    assert torch.equal(logits.detach(), reference)  # the forward is the defense's own
    logits.sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0
    # an attack may ask for it per call on a defended model built for BPDA
    xi = x.clone().requires_grad_(True)
    identity.purified(xi, indices, gradient="exact").sum().backward()
    assert torch.isfinite(xi.grad).all()
    assert identity.gradient_for("exact") == "exact" and identity.gradient == "bpda-identity"


def test_a_backward_a_defense_cannot_give_is_refused_in_one_line():
    victim = tiny_victim_module()
    with pytest.raises(UserError, match="accepted: identity, exact, rule"):
        DefendedClassifier(victim, small_stitch(), gradient="pathwise")
    with pytest.raises(UserError, match="'autoencoder'.*has a gradient of its own"):
        DefendedClassifier(victim, build_defense("autoencoder"), gradient="exact")
    with pytest.raises(UserError, match="'none'.*has a gradient of its own"):
        DefendedClassifier(victim, build_defense("none"), gradient="rule")


def test_an_exact_gradient_that_would_not_fit_says_which_segment_would():
    victim, x = tiny_victim_module(), images(2, seed=5)
    defense = small_stitch()
    defense.exact_memory_bytes = 1 << 20  # 1 MB
    xg = x.clone().requires_grad_(True)
    with pytest.raises(MemoryError, match=r"needs about .* GB with exact_segment=25 .*(exact_segment=\d+|dip_batch)"):
        DefendedClassifier(victim, defense, gradient="exact")(xg, torch.tensor([0, 1]))


def test_options_the_unrolled_fit_does_not_model_are_refused():
    settings = DIPSettings(network=DIP_NETWORKS["small"], iterations=4, input_jitter=0.01)
    fit = DIPFit(images(1), [0], settings)
    with pytest.raises(ValueError, match="input_jitter and output_ema are not supported"):
        UnrolledFit(fit, settings)


def test_rule_aware_coefficients_follow_the_rules_algebra():
    assert transfer_at(0) == 0.0 and transfer_at(75) == pytest.approx((0.105 + 0.212) / 2)
    assert transfer_at(5000) == DIP_STITCH_TRANSFER[-1][1]
    # dip_stitch with one crossing pair at t = 100, 105 (alpha 0.5): (1 + beta) s - beta < 0
    crossing = LinearSelection([{100: 0.75, 105: 0.75}], [-0.5])
    (k,) = rule_aware_coefficients(crossing)
    assert k == pytest.approx(0.75 * transfer_at(100) + 0.75 * transfer_at(105) - 0.5) and k < 0
    # with s = 1 everywhere the rule's algebra is the identity
    assert rule_aware_coefficients(crossing, curve=((0, 1.0), (1000, 1.0))) == pytest.approx([1.0])


def test_defended_classifier_with_the_rule_aware_backward():
    victim, x = Flicker(), images(3, seed=6)
    defended = DefendedClassifier(victim, small_stitch(), gradient="rule")
    assert defended.gradient == "bpda-rule"
    xg = x.clone().requires_grad_(True)
    purified = defended.purified(xg, torch.tensor([0, 1, 2]))
    g = torch.randn(purified.shape, generator=torch.Generator().manual_seed(0))
    (purified * g).sum().backward()
    k = torch.tensor([d["rule_coefficient"] for d in defended.last_details])
    inside = (purified > 0) & (purified < 1)
    expected = k.view(-1, 1, 1, 1) * g * inside
    assert torch.allclose(xg.grad, expected)


def test_adam_eps_is_an_engine_option_recorded_only_when_changed():
    assert "adam_eps" not in build_defense("dip_stitch").params()
    assert build_defense("dip_stitch", adam_eps=1e-4).params()["adam_eps"] == 1e-4
    fit = DIPFit(images(1), [0], DIPSettings(network=DIP_NETWORKS["small"], adam_eps=1e-4))
    assert fit.optimizer.param_groups[0]["eps"] == 1e-4
    with pytest.raises(ValueError, match="adam_eps must be > 0"):
        DIPSettings(adam_eps=0.0)
    assert "need_bias" in DIP_NETWORKS["cifar_nobias"] and not DIP_NETWORKS["cifar_nobias"]["need_bias"]


def test_iterate_figures_give_the_accuracy_before_resubmission():
    from dipdefense.evaluation.metrics import iterate_figures

    records = [
        {"history": "111", "resubmit": "1101"},  # survived PGD, broken by a resubmitted copy
        {"history": "110", "resubmit": "0000"},  # broken by PGD (not resubmitted)
        {"history": "111", "resubmit": "1111"},
    ]
    figures = iterate_figures(records)
    assert figures["accuracy_before_resubmission"] == pytest.approx(2 / 3) and figures["resubmit_copies"] == 4
    assert "resubmit_copies" not in iterate_figures([{"history": "11"}])


def test_evaluate_refuses_an_exact_backward_through_a_defense_without_a_fit_before_it_starts():
    from dipdefense.evaluation.attack_specs import check_against_defense, expand_attacks

    runs = expand_attacks("clean,bpda_pgd(backward=exact)", [8 / 255])
    with pytest.raises(UserError, match=r"bpda_pgd\(backward=exact\)@8/255: gradient='exact' vs defense 'autoencoder'"):
        check_against_defense(runs, build_defense("autoencoder"))
    check_against_defense(runs, small_stitch())  # a DIP defense takes it
    check_against_defense(expand_attacks("bpda_pgd(backward=rule)", [8 / 255]), build_defense("dip_inc"))
