import pytest
import torch

from dip import DIPSettings, build_dip_batch, fit_dip, skip

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
