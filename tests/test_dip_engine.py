import pytest
import torch

from dipdefense.dip import DIPSettings, build_dip_batch, fit_dip, skip
from dipdefense.dip.engine import DIPFit

CIFAR = DIPSettings(iterations=50)
SMALL_EVEN = DIPSettings(
    network={
        "channels_down": [16, 16],
        "channels_up": [16, 16],
        "channels_skip": [4, 4],
        "kernel_down": 2,
        "kernel_up": 2,
    },
    iterations=20,
)


def test_skip_network_keeps_the_image_size_with_odd_and_even_kernels():
    z = torch.rand(1, 4, 32, 32)
    for kwargs in (
        {},
        SMALL_EVEN.network,
        {
            "channels_down": [48] * 4,
            "channels_up": [48] * 4,
            "channels_skip": [4] * 4,
            "kernel_down": 4,
            "kernel_up": 4,
        },
    ):
        out = skip(**kwargs)(z)
        assert out.shape == (1, 3, 32, 32) and out.min() >= 0 and out.max() <= 1
    assert skip(channels_skip=[0, 0, 0], activation="Swish", pad="zero", upsample_mode="nearest")(z).shape == (
        1,
        3,
        32,
        32,
    )
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        skip(activation="gelu")


@pytest.mark.parametrize("settings", [CIFAR, SMALL_EVEN], ids=["cifar", "small_even_kernels"])
def test_batched_fit_equals_separate_fits(settings):
    torch.manual_seed(0)
    images = torch.rand(3, 3, 32, 32)
    seeds = [11, 22, 33]
    batched = fit_dip(images, seeds, settings)
    looped = torch.cat([fit_dip(images[i : i + 1], [s], settings) for i, s in enumerate(seeds)])
    assert (batched - looped).abs().max() <= 1e-4
    # The result of an image does not depend on its batch companions or position.
    reordered = fit_dip(images[[2, 0]], [33, 11], settings)
    assert (reordered - batched[[2, 0]]).abs().max() <= 1e-4


def test_the_fit_runs_in_its_own_kernels_and_the_observer_in_the_callers():
    """Exact mode fits on the native convolutions; the observer (a rule's victim calls) runs in
    whatever the caller chose, oneDNN by default, like everything after the fit."""
    settings = DIPSettings(network=SMALL_EVEN.network, iterations=4, observe_every=1)
    images = torch.rand(2, 3, 16, 16)
    fit_kernels, observer_kernels = [], []
    net_forward = DIPFit.forward

    def forward(self):
        fit_kernels.append(torch.backends.mkldnn.enabled)
        return net_forward(self)

    for caller in (True, False):
        fit_kernels.clear()
        observer_kernels.clear()
        with pytest.MonkeyPatch.context() as patch, torch.backends.mkldnn.flags(enabled=caller):
            patch.setattr(DIPFit, "forward", forward)
            fit_dip(images, [1, 2], settings, lambda t, x, mse: observer_kernels.append(torch.backends.mkldnn.enabled))
            assert torch.backends.mkldnn.enabled == caller
        assert fit_kernels == [False] * 4 and observer_kernels == [caller] * 4


@pytest.mark.parametrize("optimize_input", [False, True], ids=["network", "network_and_input"])
def test_flat_buffer_adam_matches_adam_over_each_parameter_bit_for_bit(optimize_input):
    settings = DIPSettings(iterations=30, optimize_input=optimize_input)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    net, noise = build_dip_batch(settings, [3, 4], 3, (32, 32))
    noise = torch.nn.Parameter(noise) if optimize_input else noise
    reference = torch.optim.Adam([*net.parameters(), *([noise] if optimize_input else [])], lr=settings.lr)
    fit = DIPFit(images, [3, 4], settings)
    with fit.numerics():
        for _ in range(settings.iterations):
            reference.zero_grad()
            (net(noise) - images.reshape(1, 6, 32, 32)).pow(2).reshape(2, -1).mean(1).sum().backward()
            reference.step()
            _, loss = fit.forward()
            fit.update(loss)
        assert torch.equal(fit.net(fit.noise), net(noise))
    assert all(torch.equal(a, b) for a, b in zip(fit.net.parameters(), net.parameters(), strict=True))
    assert torch.equal(fit.noise, noise)
    # The module's parameters are views of the buffer Adam updates.
    assert all(p.untyped_storage().data_ptr() == fit.flat.untyped_storage().data_ptr() for p in fit.net.parameters())


@pytest.mark.parametrize(
    "c_in,c_out,kernel,stride,pad,bias,groups,size",
    [
        (32, 32, 1, 1, "reflection", True, 8, 16),  # 1x1: one bmm
        (4, 3, 1, 1, "reflection", False, 5, 8),
        (35, 32, 3, 1, "reflection", True, 6, 32),  # im2col + bmm, in chunks of groups
        (4, 32, 3, 2, "reflection", True, 4, 32),
        (16, 16, 2, 1, "zero", False, 3, 16),  # App. B's even kernels
        (48, 48, 4, 2, "reflection", True, 2, 8),
        (32, 32, 3, 1, "reflection", True, 5, 4),  # replication fallback at a deep scale
        # Shapes whose batched GEMMs rounded differently from the native loop here (one input
        # channel per group: DIPDefend's first layer; under 4 output channels): the probe
        # keeps them on the native path.
        (1, 4, 3, 2, "reflection", True, 8, 32),
        (1, 16, 3, 1, "reflection", True, 8, 34),
        (3, 1, 5, 1, "reflection", True, 8, 33),
        (1, 3, 3, 2, "zero", True, 8, 36),
    ],
)
def test_batched_gemm_convolution_equals_native_grouped_convolution_bit_for_bit(
    c_in, c_out, kernel, stride, pad, bias, groups, size
):
    from dipdefense.dip.skip_net import GroupedIm2colConv, SamePadConv

    layer = SamePadConv(c_in, c_out, kernel, stride, pad, bias, groups)
    x = torch.randn(1, groups * c_in, size, size, requires_grad=True)
    inputs = (x, *layer.parameters())
    results = []
    with torch.backends.mkldnn.flags(enabled=False), pytest.MonkeyPatch.context() as patch:
        patch.setattr(GroupedIm2colConv, "CHUNK_BYTES", 100_000)  # several chunks in the 35-channel case
        for batched in (False, True):
            patch.setattr(SamePadConv, "batched_gemm", batched)
            out = layer(x)
            grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
            results.append((out, *torch.autograd.grad(out, inputs, grad_out)))
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))


def test_a_batched_convolution_that_rounds_differently_is_not_used(monkeypatch):
    import dipdefense.dip.skip_net as skip_net

    layer = skip_net.SamePadConv(8, 8, 3, 1, "reflection", True, 4)
    x = torch.randn(1, 32, 16, 16)
    with torch.backends.mkldnn.flags(enabled=False):
        native = layer.conv(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect"))
        monkeypatch.setattr(skip_net, "_probed", {})
        off_by_one_ulp = skip_net.GroupedIm2colConv.forward
        monkeypatch.setattr(
            skip_net.GroupedIm2colConv,
            "forward",
            staticmethod(lambda ctx, *args: torch.nextafter(off_by_one_ulp(ctx, *args), torch.tensor(1e9))),
        )
        assert torch.equal(layer(x), native)
    assert list(skip_net._probed.values()) == [False]


def test_fit_with_batched_gemm_convolutions_equals_the_native_fit_bit_for_bit(monkeypatch):
    from dipdefense.dip.skip_net import SamePadConv

    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    batched = fit_dip(images, [1, 2, 3], CIFAR)
    monkeypatch.setattr(SamePadConv, "batched_gemm", False)
    assert torch.equal(batched, fit_dip(images, [1, 2, 3], CIFAR))


def test_dipdefend_fit_with_batched_gemm_convolutions_equals_the_native_fit_bit_for_bit(monkeypatch):
    # DIPDefend optimises z, so its first layer's input gradient (one channel per group) counts.
    from dipdefense.defenses.dip_purifier import DIP_NETWORKS
    from dipdefense.dip.skip_net import SamePadConv

    settings = DIPSettings(network=DIP_NETWORKS["dipdefend_cifar"], iterations=30, optimize_input=True)
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    batched = fit_dip(images, list(range(8)), settings)
    monkeypatch.setattr(SamePadConv, "batched_gemm", False)
    assert torch.equal(batched, fit_dip(images, list(range(8)), settings))


def test_an_image_too_small_for_the_network_depth_is_refused_with_the_fix():
    from dipdefense.defenses.dip_purifier import DIP_NETWORKS

    deep = DIPSettings(network=DIP_NETWORKS["deep_protection"], iterations=2)
    with pytest.raises(ValueError, match=r"5 scales.*32x32 image is 1x1.*at least 33 pixels.*deep_protection_cifar"):
        fit_dip(torch.rand(1, 3, 32, 32), [0], deep)
    fit_dip(torch.rand(1, 3, 33, 33), [0], deep)  # 2x2 at the deepest scale
    cifar = DIPSettings(network=DIP_NETWORKS["deep_protection_cifar"], iterations=2)
    assert fit_dip(torch.rand(2, 3, 32, 32), [0, 1], cifar).shape == (2, 3, 32, 32)


def test_network_and_noise_come_from_the_seed():
    net_a, z_a = build_dip_batch(CIFAR, [5], 3, (32, 32))
    net_b, z_b = build_dip_batch(CIFAR, [5], 3, (32, 32))
    _, z_c = build_dip_batch(CIFAR, [6], 3, (32, 32))
    assert torch.equal(z_a, z_b) and not torch.equal(z_a, z_c)
    assert z_a.min() >= 0 and z_a.max() < 1 / 30
    assert all(torch.equal(p, q) for p, q in zip(net_a.parameters(), net_b.parameters(), strict=True))


def test_fitting_reduces_the_error_and_observer_sees_the_stream():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 32, 32)
    seen = []

    def observer(t, x, mse):
        seen.append((t, x.shape, mse.clone()))

    fit_dip(images, [0, 1], DIPSettings(iterations=101, observe_every=25), observer)
    assert [t for t, _, _ in seen] == [0, 25, 50, 75, 100]
    assert all(shape == (2, 3, 32, 32) for _, shape, _ in seen)
    assert (seen[-1][2] < seen[0][2]).all()


MEMORY_SCRIPT = """
import sys, torch
sys.path.insert(0, {repo!r})
torch.set_num_threads(1)
from dipdefense.dip import DIPSettings, fit_dip
from dipdefense.dip.stitching import StitchRule, StitchSettings

def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

torch.manual_seed(0)
classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
x = torch.rand(4, 3, 32, 32)
settings = DIPSettings(network={{"channels_down": [8, 8], "channels_up": [8, 8], "channels_skip": [2, 2]}},
                       iterations={iterations}, observe_every=1)
rule = StitchRule(x, classifier, StitchSettings(t0=0, tau=0.0))
peak = 0.0

def observer(t, images, mse):
    global peak
    rule(t, images, mse)
    peak = max(peak, rss_mb())

fit_dip(x, [0, 1, 2, 3], settings, observer, observe_tail=15)
rule.result()
print(peak)
"""


def test_memory_does_not_grow_with_the_number_of_iterations():
    """The process's resident memory, sampled at every iterate the rule sees, peaks at the
    same level for T=500 and T=2000: keeping the whole trace of these 4 images would add
    4 * 3 * 32 * 32 * 4 B = 48 KB an iterate, about 70 MB over the extra 1,500 iterations.
    (Not T=200: the allocator's caches grow by ~30 MB over the first ~400 iterations of any
    fit and are flat after that, measured up to T=4000 with 5,000 crossings.)"""
    import subprocess
    import sys

    from tests.conftest import REPO

    def peak_mb(iterations: int) -> float:
        script = MEMORY_SCRIPT.format(repo=str(REPO), iterations=iterations)
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, check=True)
        return float(result.stdout.strip().splitlines()[-1])

    short, long = peak_mb(500), peak_mb(2000)
    # Half the 70 MB a kept trace would add: on this Xeon the allocator's caches alone have
    # measured +27 MB between the two runs in some runs and +0 in others.
    assert long - short < 35, f"peak resident memory {short:.0f} MB at T=500 but {long:.0f} MB at T=2000"


def test_replaying_a_recorded_trace_gives_the_live_rule_result():
    from dipdefense.dip.engine import replay_trace
    from dipdefense.dip.stitching import StitchRule, StitchSettings

    torch.manual_seed(0)
    images = torch.rand(2, 3, 32, 32)
    settings = DIPSettings(iterations=40, observe_every=1)
    recorded = torch.empty(40, *images.shape)

    def keep(t, x, mse):
        recorded[t] = x

    fit_dip(images, [1, 2], settings, keep)
    classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 4))
    rule_settings = StitchSettings(tau=0.0, t0=0, k=3)
    live = StitchRule(images, classifier, rule_settings)
    fit_dip(images, [1, 2], DIPSettings(iterations=40, observe_every=4), live, observe_tail=3)
    replayed = StitchRule(images, classifier, rule_settings)
    replay_trace(recorded, replayed, images, observe_every=4, observe_tail=3)
    assert torch.equal(live.result(), replayed.result())
    assert torch.equal(live.crossings, replayed.crossings) and live.crossings.sum() > 0


def test_a_later_stop_check_changes_the_cost_not_the_result():
    from dipdefense.dip.early_stopping import MSEEarlyStop

    ramp = torch.linspace(0.2, 0.8, 32).view(1, 1, 1, 32).expand(2, 3, 32, 32).contiguous()
    images = torch.stack([ramp[0], 1 - ramp[1]])
    settings = DIPSettings(network=SMALL_EVEN.network, iterations=300, observe_every=1)
    runs = {}
    for every in (1, 7):
        rule, calls = MSEEarlyStop(images, threshold=0.001), []

        def counted(t, x, mse, rule=rule, calls=calls):
            calls.append(t)
            return rule(t, x, mse)

        fit_dip(images, [1, 2], settings, counted, stop_check_every=every)
        runs[every] = (rule.result(), rule.iterations, len(calls))
    assert runs[1][2] < 300 and runs[1][1][0] != runs[1][1][1]  # both stopped early, at different iterations
    assert torch.equal(runs[1][0], runs[7][0]) and torch.equal(runs[1][1], runs[7][1])
    assert runs[1][2] <= runs[7][2] < runs[1][2] + 7 and runs[7][2] % 7 == 0


def test_input_jitter_draws_a_fresh_input_per_iteration_from_each_images_own_stream():
    """The official DIP code's reg_noise_std: f(z + sigma * n_t). An image's draws come from its
    seed, not its batch, so batched and one-by-one fits agree as they do without jitter."""
    settings = DIPSettings(network=SMALL_EVEN.network, iterations=12, input_jitter=1 / 30)
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    seeds = [4, 5, 6]
    batched = fit_dip(images, seeds, settings)
    looped = torch.cat([fit_dip(images[i : i + 1], [s], settings) for i, s in enumerate(seeds)])
    assert (batched - looped).abs().max() <= 1e-4
    assert torch.equal(batched, fit_dip(images, seeds, settings))  # reproducible from the seeds
    plain = fit_dip(images, seeds, DIPSettings(network=SMALL_EVEN.network, iterations=12))
    assert (batched - plain).abs().max() > 1e-3
    fit = DIPFit(images, seeds, settings)
    first, second = fit.network_input(), fit.network_input()
    jitter = (first - fit.noise) * 30
    assert not torch.equal(first, second) and 0.8 < float(jitter.std()) < 1.2  # N(0, 1) scaled by sigma


def test_output_ema_shows_the_moving_average_of_the_same_fit():
    """exp_weight: xbar(t) = w xbar(t-1) + (1 - w) x(t), xbar(0) = x(0); the fit itself is unchanged,
    the observer gets xbar(t) and its MSE, and the average is what is returned."""
    network, w = SMALL_EVEN.network, 0.9
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    raw, smoothed = [], []
    last_raw = fit_dip(
        images,
        [1, 2],
        DIPSettings(network=network, iterations=8, observe_every=1),
        lambda t, x, mse: raw.append(x.clone()),
    )
    last = fit_dip(
        images,
        [1, 2],
        DIPSettings(network=network, iterations=8, observe_every=1, output_ema=w),
        lambda t, x, mse: smoothed.append((x.clone(), mse.clone())),
    )
    expected = raw[0]
    for t, x in enumerate(raw):
        expected = x if t == 0 else expected * w + x * (1 - w)
        assert torch.allclose(smoothed[t][0], expected, atol=1e-6)
        assert torch.allclose(smoothed[t][1], (expected - images).pow(2).flatten(1).mean(1), atol=1e-7)
    assert torch.allclose(last, expected, atol=1e-6) and torch.equal(last_raw, raw[-1])


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"input_jitter": -0.1}, r"input_jitter must be >= 0 \(a noise sigma; 0 is off\), got -0.1"),
        ({"output_ema": 1.0}, r"output_ema must be in \[0, 1\) \(an EMA weight; 0 is off\), got 1.0"),
        ({"init": "kaiming"}, r"unknown init 'kaiming'; accepted: xavier, default"),
        (
            {"cuda_graph": True, "input_jitter": 0.03},
            r"cuda_graph cannot replay input_jitter's per-image random draws; turn one of them off",
        ),
    ],
)
def test_bad_engine_options_are_refused_with_what_is_accepted(option, message):
    with pytest.raises(ValueError, match=message):
        DIPSettings(**option)


def test_engine_options_reach_every_dip_defense_and_stay_out_of_old_manifests_while_off():
    from dipdefense.defenses.registry import build_defense

    for name in ("dip_stitch", "dipdefend", "deep_protection", "dip_inc"):
        off = build_defense(name).params()
        assert "input_jitter" not in off and "output_ema" not in off and off["init"] == "xavier"
        on = build_defense(name, init="default", input_jitter=1 / 30, output_ema=0.99)
        assert on.dip.init == "default" and on.dip.input_jitter == 1 / 30 and on.dip.output_ema == 0.99
        assert on.params()["input_jitter"] == 1 / 30 and on.params()["output_ema"] == 0.99
        reflection = build_defense(name, pad="reflection").params()["network"]
        assert "pad" not in reflection  # as every network was recorded before the option
        assert build_defense(name, pad="zero").dip.network == {**reflection, "pad": "zero"}
        default = "zero" if name == "dip_stitch" else "reflection"  # dip_stitch's since issue 12
        assert build_defense(name).dip.network.get("pad", "reflection") == default
        with pytest.raises(ValueError, match=r"unknown padding 'circular'; accepted: reflection, zero"):
            build_defense(name, pad="circular")


def test_dip_stitch_paper_literal_preset_is_the_reflection_default_runs_were_recorded_under():
    from dipdefense.common.errors import UserError
    from dipdefense.defenses.registry import build_defense

    literal = build_defense("dip_stitch", preset="paper_literal")
    assert literal.params() == build_defense("dip_stitch", pad="reflection").params()
    assert "pad" not in literal.params()["network"]  # so runs recorded before issue 12 resume under it
    assert build_defense("dip_stitch").params()["network"]["pad"] == "zero"
    # Parameters given beside a preset win over it; a gated pair passes the preset to its part.
    assert build_defense("dip_stitch", preset="paper_literal", pad="zero").dip.network["pad"] == "zero"
    gated = build_defense("glow_gate+dip_stitch", dip_stitch={"preset": "paper_literal"})
    assert gated.params() == build_defense("glow_gate+dip_stitch", dip_stitch={"pad": "reflection"}).params()
    with pytest.raises(UserError, match=r"defense 'dip_stitch' has no preset 'fast'; accepted: paper_literal"):
        build_defense("dip_stitch", preset="fast")
    with pytest.raises(UserError, match=r"defense 'dipdefend' has no preset 'paper_literal'; accepted: none"):
        build_defense("dipdefend", preset="paper_literal")


def test_dip_batch_defaults_to_the_devices_and_an_explicit_one_wins(monkeypatch):
    from dipdefense.common.errors import UserError
    from dipdefense.defenses import dip_purifier, dip_stitch
    from dipdefense.defenses.registry import build_defense

    cpu, gpu = torch.device("cpu"), torch.device("cuda")  # only the device's type is read
    for name, on_cpu in (("dip_stitch", 32), ("dipdefend", 32), ("deep_protection", 8), ("dip_inc", 32)):
        defense = build_defense(name)
        assert (defense.dip_batch_on(cpu), defense.dip_batch_on(gpu)) == (on_cpu, 128)
        assert build_defense(name, dip_batch=5).dip_batch_on(gpu) == 5
        assert "dip_batch" not in defense.params()  # speed only: runs resume under another
    assert build_defense("dip_stitch", dip_batch=None).dip_batch is None
    with pytest.raises(UserError, match=r"dip_stitch: dip_batch=0 is not accepted; dip_batch must be an integer >= 1"):
        build_defense("dip_stitch", dip_batch=0)
    # The purifier fits its images in chunks of the device's default.
    sizes, real_fit = [], dip_purifier.fit_dip
    monkeypatch.setattr(dip_purifier, "fit_dip", lambda x, *a, **k: sizes.append(len(x)) or real_fit(x, *a, **k))
    monkeypatch.setattr(dip_stitch.DIPStitch, "cpu_dip_batch", 2)
    victim = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)).eval()
    defense = build_defense("dip_stitch", network="small", iterations=6, observe_every=2, t0=0)
    defense.purify(torch.rand(5, 3, 32, 32), victim, torch.arange(5))
    assert sizes == [2, 2, 1]


def test_cuda_graph_is_speed_only_on_a_cpu_it_changes_nothing():
    from dipdefense.defenses.registry import build_defense

    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    settings = DIPSettings(network=SMALL_EVEN.network, iterations=8)
    graphed = DIPSettings(network=SMALL_EVEN.network, iterations=8, cuda_graph=True)
    assert not DIPFit(images, [1, 2], graphed).graphed
    assert torch.equal(fit_dip(images, [1, 2], settings), fit_dip(images, [1, 2], graphed))
    for name in ("dip_stitch", "dipdefend", "deep_protection", "dip_inc"):
        defense = build_defense(name, cuda_graph=True)
        assert defense.dip.cuda_graph and "cuda_graph" not in defense.params()  # speed only, like dip_batch


def test_each_step_returns_the_iterate_before_its_update():
    """``DIPFit.step`` is lines 4-7 of Algorithm 1: x(t) from theta_t, then theta_{t+1}."""
    images = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    fit = DIPFit(images, [3], DIPSettings(network=SMALL_EVEN.network))
    with fit.numerics():
        before = fit.forward()[0].detach()
    out, mse = fit.step()
    with fit.numerics():
        after = fit.forward()[0].detach()
    assert torch.equal(out, before) and not torch.equal(out, after) and not out.requires_grad
    assert torch.equal(mse, fit.mse(out))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_graph_fit_replays_the_eager_fit_without_host_syncs():
    from dipdefense.dip.engine import CUDAGraphStep

    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(7)).cuda()
    eager = fit_dip(images, [1, 2, 3, 4], DIPSettings(iterations=12))
    graphed_settings = DIPSettings(iterations=12, cuda_graph=True)
    graphed = fit_dip(images, [1, 2, 3, 4], graphed_settings)
    # Capturable Adam rounds differently; a chaotic fit magnifies that, but not in 12 steps.
    assert (graphed - eager).abs().max() <= 1e-3
    step = CUDAGraphStep(DIPFit(images, [1, 2, 3, 4], graphed_settings))
    outputs = [step() for _ in range(CUDAGraphStep.warmup + 1)]  # the last one records and replays
    assert step.graph is not None
    torch.cuda.set_sync_debug_mode("error")
    try:
        outputs += [step() for _ in range(5)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    mses = torch.stack([mse for _, mse in outputs])
    assert (mses[-1] < mses[0]).all() and not torch.equal(outputs[-1][0], outputs[-2][0])


def test_the_graph_step_warms_up_records_once_then_only_replays(monkeypatch):
    """CUDAGraphStep's bookkeeping on a CPU, with torch.cuda's graph API replaced by recorders:
    ``warmup`` eager steps, one recorded step (which launches nothing, so it is replayed at once),
    then replays only; every call hands back copies, since a replay overwrites the graph's outputs."""
    import contextlib
    import types

    from dipdefense.dip.engine import CUDAGraphStep

    replays, steps = [], []
    stream = types.SimpleNamespace(wait_stream=lambda other: None)

    class RecordingGraph:
        def replay(self) -> None:
            replays.append(len(steps))

    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", RecordingGraph)
    monkeypatch.setattr(torch.cuda, "graph", lambda graph, stream=None: contextlib.nullcontext())

    def step():
        steps.append(len(steps))
        return torch.full((1, 3, 2, 2), float(len(steps))), torch.full((1,), float(len(steps)))

    fit = types.SimpleNamespace(graphed=True, flat=torch.zeros(1), step=step)
    graphed = CUDAGraphStep(fit)
    calls = [graphed() for _ in range(CUDAGraphStep.warmup + 3)]
    assert len(steps) == CUDAGraphStep.warmup + 1  # the eager steps and the recorded one, nothing after
    assert replays == [CUDAGraphStep.warmup + 1] * 3  # the recording call replays, then each later one
    for out, mse in calls[CUDAGraphStep.warmup :]:
        assert out is not graphed.out and mse is not graphed.per_image and torch.equal(out, graphed.out)
    with pytest.raises(ValueError, match="needs a DIPFit on a CUDA device with cuda_graph=True"):
        CUDAGraphStep(DIPFit(torch.rand(1, 3, 16, 16), [0], DIPSettings(network=SMALL_EVEN.network, cuda_graph=True)))
