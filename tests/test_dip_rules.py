"""DIPDefend, DIP-INC and Deep Protection stopping rules on traces with known answers."""

import pytest
import torch
from torch import nn

from dipdefense.common.errors import UserError
from dipdefense.defenses import build_defense
from dipdefense.dip.dipdefend import DIPDefendRule, DIPDefendSettings, psnr_curve_value
from dipdefense.dip.early_stopping import MSEEarlyStop, OracleTop5Stop, StaticErrorSplit
from dipdefense.evaluation.metrics import termination_figures


def _holt_reference(curve: list[float], lam: float) -> int:
    """Scalar Holt smoothing as DIPDefend writes it: the last t where the level peaked."""
    level, trend, best, best_t = curve[0], curve[1] - curve[0], curve[0], 1
    for t in range(2, len(curve)):
        previous = level
        level = lam * curve[t] + (1 - lam) * (level + trend)
        trend = lam * (level - previous) + (1 - lam) * trend
        if level > best:
            best, best_t = level, t
    return best_t


@pytest.mark.parametrize("lam", [0.002, 0.05])
def test_dipdefend_picks_the_peak_of_the_smoothed_psnr_curve(lam):
    x0 = torch.full((1, 3, 8, 8), 0.5)
    # PSNR rises from 10 dB to 30 dB at t = 300, then falls: the fit starts to copy the noise.
    curve = [10 + 20 * min(t, 300) / 300 - 15 * max(t - 300, 0) / 300 for t in range(900)]
    rule = DIPDefendRule(x0, DIPDefendSettings(lam=lam))
    for t, psnr in enumerate(curve):
        delta = 10 ** (-psnr / 20)  # MSE = delta^2 -> PSNR = psnr
        x = x0 + delta
        assert abs(psnr_curve_value(x, x0).item() - psnr) < 1e-3
        rule(t, x, torch.zeros(1))
    expected = _holt_reference(curve, lam)
    assert int(rule.best_t) == expected
    assert 1 < expected < 899
    assert torch.allclose(rule.result(), x0 + 10 ** (-curve[expected] / 20))


def test_dipdefend_selects_per_image_without_a_host_sync(no_host_sync):
    """Three images with their own curves, each peaking elsewhere; observing every iterate
    never calls .item(), .tolist(), .cpu(), bool() or nonzero() (a GPU fit would wait on it)."""
    x0 = torch.full((3, 3, 8, 8), 0.5)
    peaks = (100, 250, 400)
    curves = [[10 + 20 * min(t, p) / p - 15 * max(t - p, 0) / p for t in range(600)] for p in peaks]
    rule = DIPDefendRule(x0, DIPDefendSettings(lam=0.05))
    with no_host_sync():
        for t in range(600):
            delta = torch.tensor([10 ** (-c[t] / 20) for c in curves]).view(3, 1, 1, 1)
            rule(t, x0 + delta, torch.zeros(3))
    assert rule.best_t.tolist() == [_holt_reference(c, 0.05) for c in curves]


def test_psnr_curve_takes_the_worst_tile_on_large_images():
    x0 = torch.zeros(1, 3, 64, 64)
    x = x0.clone()
    x[..., :32, :32] = 0.1  # one bad tile: MSE 0.01 there, 0.0025 over the image
    assert abs(psnr_curve_value(x, x0).item() - 20.0) < 1e-4
    assert abs(psnr_curve_value(x, x0, patch=64).item() - 26.0206) < 1e-3


def test_mse_early_stop_freezes_each_image_at_its_first_iterate_under_threshold(no_host_sync):
    x0 = torch.zeros(2, 1, 4, 4)
    rule = MSEEarlyStop(x0, threshold=0.002)
    streams = [[0.01, 0.005, 0.001, 0.0005], [0.01, 0.009, 0.008, 0.0001]]
    with no_host_sync():
        for t in range(4):
            done = rule(t, torch.full((2, 1, 4, 4), float(t)), torch.tensor([streams[0][t], streams[1][t]]))
    assert done.all() and rule.iterations.tolist() == [3, 4]
    assert rule.result()[0].unique().item() == 2.0 and rule.result()[1].unique().item() == 3.0


class NearestClass(nn.Module):
    """Ten classes; a constant image of value v scores class c by -|c - 10 v|."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x.flatten(1).mean(1, keepdim=True)
        return -(torch.arange(10.0) - 10 * v).abs()


def test_oracle_top5_stop_and_the_overfit_underfit_split(no_host_sync):
    x0 = torch.zeros(2, 1, 4, 4)
    rule = OracleTop5Stop(x0, NearestClass(), labels=torch.tensor([2, 2]), adversarial_labels=torch.tensor([8, 8]))
    # Image 0 passes through v = 0.2 (true label top-1 and top-5, adversarial label out): stops.
    # Image 1 stays near 0.8 (adversarial label in the top 5) and never stops.
    with no_host_sync():
        for t, (a, b) in enumerate([(0.8, 0.8), (0.5, 0.75), (0.2, 0.8), (0.8, 0.8)]):
            x = torch.stack([torch.full((1, 4, 4), a), torch.full((1, 4, 4), b)])
            rule(50 * t, x, torch.zeros(2))
    assert rule.stopped.tolist() == [True, False] and rule.iterations.tolist() == [101, 151]
    assert rule.error_types(torch.tensor([False, False])) == ["overfit", "underfit"]
    assert rule.error_types(torch.tensor([True, False])) == ["correct", "underfit"]


def test_oracle_top1_is_stricter_than_top5():
    x0 = torch.zeros(1, 1, 4, 4)
    top1 = OracleTop5Stop(x0, NearestClass(), labels=torch.tensor([2]), adversarial_labels=torch.tensor([8]), k=1)
    top5 = OracleTop5Stop(x0, NearestClass(), labels=torch.tensor([2]), adversarial_labels=torch.tensor([8]), k=5)
    # v = 0.4: class 4 is top-1, class 2 is in the top 5 (|2 - 4| = 2), class 8 is not (4 away).
    for rule in (top1, top5):
        rule(0, torch.full((1, 1, 4, 4), 0.4), torch.zeros(1))
    assert top5.stopped.tolist() == [True] and top1.stopped.tolist() == [False]


def test_static_error_split_watches_without_stopping(no_host_sync):
    x0 = torch.zeros(3, 1, 4, 4)
    rule = StaticErrorSplit(x0, NearestClass(), labels=torch.tensor([2, 2, 2]))
    # Image 0 is right at t = 50 and wrong at the end (overfit); image 1 is never right
    # (underfit); image 2 is right at the end.
    trace = [(0.8, 0.8, 0.8), (0.2, 0.7, 0.5), (0.8, 0.6, 0.2)]
    with no_host_sync():
        for t, values in enumerate(trace):
            x = torch.stack([torch.full((1, 4, 4), v) for v in values])
            assert rule(50 * t, x, torch.zeros(3)) is None
    assert torch.equal(rule.result(), x)
    final = NearestClass()(rule.result()).argmax(1) == 2
    kinds = rule.error_types(final)
    assert kinds == ["overfit", "underfit", "correct"]
    records = [{"error_type": k, "iterations": i} for k, i in zip(kinds, (1750, 1750, 100), strict=True)]
    assert termination_figures(records) == {
        "overfit_share": 1 / 3,
        "underfit_share": 1 / 3,
        "median_iterations": 1750.0,
    }
    assert termination_figures([{"iterations": 5}])["overfit_share"] is None


def test_the_untrained_output_before_the_first_check_neither_stops_nor_counts():
    x0 = torch.zeros(1, 1, 4, 4)
    right, wrong = torch.full((1, 1, 4, 4), 0.2), torch.full((1, 1, 4, 4), 0.8)
    oracle = OracleTop5Stop(x0, NearestClass(), torch.tensor([2]), torch.tensor([8]), k=1, first_check=50)
    static = StaticErrorSplit(x0, NearestClass(), torch.tensor([2]), first_check=50)
    for rule in (oracle, static):
        rule(0, right, torch.zeros(1))  # t = 0: the network's first output, right by chance
        rule(50, wrong, torch.zeros(1))
    assert oracle.stopped.tolist() == [False] and oracle.error_types(torch.tensor([False])) == ["underfit"]
    assert static.error_types(torch.tensor([False])) == ["underfit"]


def test_deep_protection_error_split_leaves_the_static_output_unchanged():
    images, indices, labels = torch.rand(2, 3, 16, 16), torch.tensor([4, 9]), torch.tensor([1, 2])
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10)).eval()
    static = build_defense("deep_protection", network="deep_protection_small", iterations=60, check_every=20)
    watched = build_defense(
        "deep_protection", network="deep_protection_small", iterations=60, check_every=20, error_split=True
    )
    assert watched.uses_labels and not static.uses_labels
    assert "error_split" not in static.params() and watched.params()["error_split"] is True
    plain = static.purify_detailed(images, classifier, indices)
    split = watched.purify_detailed(images, classifier, indices, labels=labels)
    assert torch.equal(plain.images, split.images)
    assert all(d["iterations"] == 60 and d["error_type"] in {"correct", "overfit", "underfit"} for d in split.details)
    with pytest.raises(ValueError, match="error_split=True needs the true labels"):
        watched.purify(images, classifier, indices)
    with pytest.raises(UserError, match="top_k=0 is not accepted"):
        build_defense("deep_protection", top_k=0)


def test_dip_defenses_build_and_run_with_their_details():
    images, indices = torch.rand(2, 3, 16, 16), torch.tensor([4, 9])
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10)).eval()
    inc = build_defense("dip_inc", iterations=30, threshold=0.05)
    out, details, _ = inc.purify_detailed(images, classifier, indices)
    assert out.shape == images.shape and all(1 <= d["iterations"] <= 30 for d in details)
    dipdefend = build_defense("dipdefend", iterations=20)
    assert dipdefend.purify(images, classifier, indices).shape == images.shape
    oracle = build_defense("deep_protection", network="small", iterations=100, oracle=True)
    assert oracle.uses_labels
    with pytest.raises(ValueError, match="needs the true labels"):
        oracle.purify(images, classifier, indices)
    details = oracle.purify_detailed(images, classifier, indices, labels=torch.tensor([1, 2])).details
    assert {d["error_type"] for d in details} <= {"correct", "overfit", "underfit"}
    with pytest.raises(ValueError, match="unknown DIP network 'huge'"):
        build_defense("dip_stitch", network="huge")


def test_dip_stitch_details_carry_the_victims_label_on_the_early_iterates():
    """Issue 12's steadiness figure from any run: the victim's label on x(50), x(100), x(200),
    the same as the label the rule read at those t (its recorded trace)."""
    images, indices = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)), torch.tensor([4, 9])
    torch.manual_seed(0)
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10)).eval()
    defense = build_defense("dip_stitch", iterations=120, t0=10)
    details = defense.purify_detailed(images, classifier, indices).details
    assert [sorted(d) for d in details] == [["crossings", "label_t100", "label_t50"]] * 2  # T = 120: no x(200)
    _, rule = defense._fit_chunk(images, None, classifier, indices, trace=True)  # the same fit, traced
    trace = dict(rule.trace)
    for i, d in enumerate(details):
        assert d["label_t50"] == int(trace[50][i].argmax()) and d["label_t100"] == int(trace[100][i].argmax())
