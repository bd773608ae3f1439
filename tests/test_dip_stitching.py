"""Algorithm 1 of paper 002 on hand-made traces with known answers."""

import pytest
import torch
from torch import nn

from dipdefense.dip.stitching import StitchRule, StitchSettings


class MeanThreshold(nn.Module):
    """Class 1 iff the image mean exceeds 0.5 (a known decision boundary)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1).mean(1, keepdim=True) - 0.5
        return torch.cat([-50 * m, 50 * m], dim=1)


def _run(values: list[float], x0_value: float, **settings) -> StitchRule:
    x0 = torch.full((1, 3, 16, 16), x0_value)
    rule = StitchRule(x0, MeanThreshold(), StitchSettings(**settings))
    for step, v in enumerate(values):
        rule(5 * step, torch.full((1, 3, 16, 16), v), torch.zeros(1))
    return rule


def test_crossings_are_interpolated_onto_the_boundary_and_pushed_off_x0():
    # Two crossings (0.45 -> 0.55 at t=10, 0.6 -> 0.4 at t=20); both on-boundary images are 0.5,
    # x_man = 0.5 + 0.5 * (0.5 - 0.2) = 0.65 (Eq. 6), their mean too (Eq. 7).
    rule = _run([0.3, 0.4, 0.45, 0.55, 0.6, 0.4, 0.35], x0_value=0.2, tau=0.0, t0=0)
    assert rule.crossings.tolist() == [2]
    assert torch.allclose(rule.result(), torch.full((1, 3, 16, 16), 0.65), atol=1e-6)


def test_grid_search_lands_within_half_a_section():
    # Boundary at alpha = 0.02 / 0.11 (off the grid): |x_db - 0.5| <= |x(t) - x(t+1)| / (2N).
    rule = _run([0.41, 0.52], x0_value=0.5, tau=0.0, t0=0, beta=0.0)
    assert abs(rule.result().mean().item() - 0.5) <= 0.11 / 200 + 1e-7


def test_warmup_ssim_threshold_and_k_select_the_crossings():
    values = [0.3, 0.45, 0.55, 0.6, 0.4]  # crossings at t=5 and t=15
    assert _run(values, 0.2, tau=0.0, t0=6).crossings.tolist() == [1]  # t=5 < t0
    assert _run(values, 0.2, tau=0.99, t0=0).crossings.tolist() == [0]  # SSIM(x(t), x0) < tau
    rule = _run(values, 0.2, tau=0.0, t0=0, k=1)
    assert rule.kept.tolist() == [1]


def test_no_crossing_falls_back_to_the_mean_of_the_last_k_iterates_without_beta():
    rule = _run([0.1, 0.2, 0.3, 0.4], x0_value=0.0, tau=0.0, t0=0, k=2)
    assert rule.crossings.tolist() == [0]
    assert torch.allclose(rule.result(), torch.full((1, 3, 16, 16), 0.35))


@pytest.mark.parametrize("k", [3, 15])
def test_memory_is_bounded_by_k(k):
    rule = _run([0.3, 0.7] * 50, x0_value=0.5, tau=0.0, t0=0, k=k)
    assert rule.crossings.item() == 99
    assert rule.kept.item() == k and rule.pairs.shape[1] == k and len(rule.tail) == k


def test_bisection_lands_within_one_grid_section_of_the_grid_search():
    torch.manual_seed(0)
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    x_a, x_b = torch.rand(6, 3, 8, 8), torch.rand(6, 3, 8, 8)
    with torch.no_grad():
        y_a, y_b = classifier(x_a).argmax(1), classifier(x_b).argmax(1)
    keep = y_a != y_b
    x_a, x_b, y_a, y_b = x_a[keep], x_b[keep], y_a[keep], y_b[keep]
    assert len(x_a) >= 3
    grid, grid_alpha = StitchRule(x_a, classifier, StitchSettings(grid=100))._on_boundary(x_a, x_b, y_a, y_b)
    bisect, bisect_alpha = StitchRule(x_a, classifier, StitchSettings(grid=100, search="bisection"))._on_boundary(
        x_a, x_b, y_a, y_b
    )
    # Same segment, so alpha differences show as |x_db diff| / |x_a - x_b| (per pixel, taken at the max).
    alpha_diff = ((grid - bisect).flatten(1).abs().amax(1)) / (x_a - x_b).flatten(1).abs().amax(1)
    assert (alpha_diff <= 1 / 100 + 1e-6).all()
    assert ((grid_alpha - bisect_alpha).abs() <= 1 / 100 + 1e-6).all()  # the alphas each search reports
    expected = grid_alpha.view(-1, 1, 1, 1) * x_a + (1 - grid_alpha.view(-1, 1, 1, 1)) * x_b
    assert torch.allclose(grid, expected, atol=1e-6)
    with pytest.raises(ValueError, match="unknown search"):
        StitchSettings(search="golden")


@pytest.mark.parametrize("search", ["grid", "bisection"])
def test_deferred_search_equals_searching_at_each_crossing(search):
    """The rule keeps crossing pairs and searches them in result(); Algorithm 1 as written
    searches at each crossing and keeps the last K on-boundary images. Same numbers."""
    torch.manual_seed(0)
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    settings = StitchSettings(tau=0.0, t0=10, k=3, search=search)
    x0 = torch.rand(5, 3, 8, 8)
    trace = [(x0 + 0.3 * torch.randn(5, 3, 8, 8)).clamp(0, 1) for _ in range(30)]
    rule = StitchRule(x0, classifier, settings)
    for step, x in enumerate(trace):
        rule(5 * step, x, torch.zeros(5))
    reference = StitchRule(x0, classifier, settings)  # only its _on_boundary
    kept: list[list[torch.Tensor]] = [[] for _ in range(5)]
    with torch.no_grad():
        labels = [classifier(x).argmax(1) for x in trace]
        for step in range(1, len(trace)):
            for i in range(5):
                if labels[step][i] != labels[step - 1][i] and 5 * (step - 1) >= settings.t0:
                    pair = (trace[step - 1][i : i + 1], trace[step][i : i + 1])
                    x_db = reference._on_boundary(*pair, labels[step - 1][i : i + 1], labels[step][i : i + 1])[0]
                    kept[i] = [*kept[i][-(settings.k - 1) :], x_db[0]]
    assert rule.kept.tolist() == [len(k) for k in kept] and sum(map(len, kept)) >= 5
    fallback = torch.stack(trace[-settings.k :]).mean(0)
    expected = torch.stack(
        [
            (torch.stack(k) + settings.beta * (torch.stack(k) - x0[i])).mean(0) if k else fallback[i]
            for i, k in enumerate(kept)
        ]
    ).clamp(0, 1)
    assert torch.equal(rule.result(), expected)


def test_observing_issues_no_host_sync(no_host_sync):
    """A GPU fit loop never waits on the rule: no .item(), .tolist(), .cpu(), bool() or
    nonzero() on a tensor while observing (diagnostics off)."""
    torch.manual_seed(0)
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    x0 = torch.rand(3, 3, 8, 8)
    rule = StitchRule(x0, classifier, StitchSettings(tau=0.0, t0=0, k=2))
    trace = [torch.rand(3, 3, 8, 8) for _ in range(12)]
    with no_host_sync():
        for step, x in enumerate(trace):
            rule(step, x, torch.zeros(3))
    assert rule.crossings.sum().item() > 0
    assert rule.result().shape == x0.shape
