"""Parity of the pure metric functions with the reference libraries on identical inputs and weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pigeon_bench.metrics import functional as Fn
from pigeon_bench.metrics.backbones import LpipsBackbone, tiny_inception, tiny_lpips_vgg


def _features(n: int, d: int, shift: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=(n, d)) @ mix + shift


def test_fid_matches_torchmetrics_and_torch_fidelity_on_features():
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torchmetrics.image.fid import _compute_fid

    a, b = _features(300, 48, 0.0, 1), _features(260, 48, 0.4, 2)
    ours = Fn.frechet_distance(a, b)
    at, bt = torch.from_numpy(a), torch.from_numpy(b)
    tm = _compute_fid(at.mean(0), torch.cov(at.T), bt.mean(0), torch.cov(bt.T)).item()
    tf = fid_statistics_to_metric(fid_features_to_statistics(at), fid_features_to_statistics(bt), False)
    tf = tf["frechet_inception_distance"]
    assert ours > 1.0
    assert abs(ours - tm) <= 1e-4 * abs(tm)
    assert abs(ours - tf) <= 1e-4 * abs(tf)
    # fewer rows than dimensions (singular covariances) takes the nuclear-norm path
    a2, b2 = a[:30], b[:30]
    a2t, b2t = torch.from_numpy(a2), torch.from_numpy(b2)
    tm2 = _compute_fid(a2t.mean(0), torch.cov(a2t.T), b2t.mean(0), torch.cov(b2t.T)).item()
    assert abs(Fn.frechet_distance(a2, b2) - tm2) <= 1e-4 * abs(tm2)


def test_fid_pipeline_matches_torchmetrics_with_the_same_extractor():
    from torchmetrics.image.fid import FrechetInceptionDistance

    extractor = tiny_inception(0)

    class Pool3(torch.nn.Module):  # 64 of the 2048 pool3 dims keeps torchmetrics' 2048x2048 eigvals out
        def forward(self, x):
            return extractor(x)[0][:, :64]

    rng = np.random.default_rng(0)
    real = torch.from_numpy(rng.integers(0, 256, (12, 3, 64, 64), dtype=np.uint8))
    fake = (real.float() * 0.6 + 40).clamp(0, 255).to(torch.uint8)
    with torch.inference_mode():
        fr, ff = Pool3()(real).double().numpy(), Pool3()(fake).double().numpy()
    assert fr.std() > 1e-3  # the tiny extractor does not collapse
    ours = Fn.frechet_distance(ff, fr)
    metric = FrechetInceptionDistance(feature=Pool3(), reset_real_features=True)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    tm = metric.compute().item()
    assert ours > 1e-3
    assert abs(ours - tm) <= 1e-4 * abs(tm)


def test_lpips_from_cached_maps_matches_lpips_forward():
    import lpips
    from torchvision.models.vgg import cfgs

    net = tiny_lpips_vgg(seed=1, cfg=cfgs["D"])  # full VGG16 layout, seeded random weights
    ref = lpips.LPIPS(net="vgg", version="0.1", pretrained=True, pnet_rand=True, verbose=False).eval()
    # the same weights in lpips' model: its slices name modules by torchvision index, in the same order
    ref_slices = (ref.net.slice1, ref.net.slice2, ref.net.slice3, ref.net.slice4, ref.net.slice5)
    for i, (block, ref_slice) in enumerate(zip(net.slices, ref_slices, strict=True)):
        ref_slice.load_state_dict(dict(zip(ref_slice.state_dict(), block.state_dict().values(), strict=True)))
        getattr(ref, f"lin{i}").model[1].weight.data = getattr(net, f"sqrt_w{i}").square().clone()
    backbone = LpipsBackbone("lpips-vgg", "test", "test", lambda: net)
    rng = np.random.default_rng(0)
    ims = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(4)]
    maps = backbone.encode(ims)
    names = backbone.outputs
    ours = Fn.lpips_from_maps([maps[k][:2] for k in names], [maps[k][2:] for k in names])
    x = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1) for im in ims])
    x = x / 127.5 - 1
    with torch.inference_mode():
        expected = ref(x[:2], x[2:]).flatten()
    assert expected.min() > 0.01
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_msssim_from_per_image_terms_matches_pytorch_msssim():
    from pytorch_msssim import ms_ssim

    rng = np.random.default_rng(0)
    gen = torch.from_numpy(rng.integers(0, 256, (1, 3, 176, 190))).float()  # odd pooling paddings too
    hist = (gen * 0.6 + torch.from_numpy(rng.integers(0, 100, (3, 3, 176, 190)))).round()
    expected = ms_ssim(gen.expand_as(hist), hist, data_range=255, size_average=False)
    got = Fn.ms_ssim_from_stats(Fn.msssim_stats(gen), Fn.msssim_stats(hist))  # broadcasts 1 against 3
    assert expected.min() > 0.05
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_a_pairs_msssim_does_not_depend_on_the_pairs_computed_beside_it():
    """Pairs are computed in blocks whose size depends on the job and on the rank's share under torchrun: the
    same pair must give the same bits in any block (float32 pow of the level combination did not: 1 of 40)."""
    torch.manual_seed(0)
    x = torch.rand(40, 3, 176, 176) * 255
    y = (x + torch.randn_like(x) * 20).clamp(0, 255)
    a, b = Fn.msssim_stats(x), Fn.msssim_stats(y)

    def rows(stats, i, j):
        return [tuple(t[i:j] for t in level) for level in stats]

    whole = Fn.ms_ssim_from_stats(a, b)
    for size in (1, 5, 7):
        starts = range(0, 40, size)
        parts = [Fn.ms_ssim_from_stats(rows(a, i, i + size), rows(b, i, i + size)) for i in starts]
        assert torch.equal(torch.cat(parts), whole)


def test_batched_msssim_pairs_match_pytorch_msssim_per_pair():
    from pytorch_msssim import ms_ssim

    rng = np.random.default_rng(1)
    ims = torch.from_numpy(rng.integers(0, 256, (5, 3, 170, 180))).float()
    ims[3:] = (ims[:2] * 0.7 + 40).round()  # some similar pairs
    terms = [Fn.msssim_stats(ims[i:i + 1]) for i in range(5)]  # one image at a time, as the LRU keeps them
    pairs = [(0, 3), (0, 4), (1, 3), (2, 4), (1, 1)]
    got = Fn.ms_ssim_from_stats(Fn.cat_msssim_stats([terms[i] for i, _ in pairs]),
                                Fn.cat_msssim_stats([terms[j] for _, j in pairs]))
    expected = torch.cat([ms_ssim(ims[i:i + 1], ims[j:j + 1], data_range=255, size_average=False)
                          for i, j in pairs])
    assert expected.min() > 0.01 and expected.max() == pytest.approx(1.0)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_cosine_100_is_not_clamped():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [2.0, 2.0]])
    b = torch.tensor([[-1.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    torch.testing.assert_close(Fn.cosine_100(a, b), torch.tensor([-100.0, 0.0, 100.0], dtype=torch.float64))


@pytest.mark.parametrize("scratch", [1 << 10, 1 << 22])
def test_lpips_from_maps_row_bands_match_the_direct_expression_and_not_the_batch(monkeypatch, scratch):
    """Bands of a few rows (uneven last band) or the whole map: float32 rounding of the direct expression,
    and each pair's bits are those it has alone, whatever is batched beside it."""
    monkeypatch.setattr(Fn, "_LPIPS_SCRATCH_BYTES", scratch)
    torch.manual_seed(0)
    shapes = [(24, 11, 9), (6, 5, 31)]  # 1 KiB holds 1 row of 24x9 floats and 1 row of 6x31
    gen = [torch.randn(2, 1, *s).half() for s in shapes]
    hist = [torch.randn(2, 5, *s).half() for s in shapes]
    direct = sum(((a.float() - b.float()) ** 2).sum(-3).mean((-2, -1))
                 for a, b in zip(gen, hist, strict=True))
    got = Fn.lpips_from_maps(gen, hist)
    assert got.shape == (2, 5)
    torch.testing.assert_close(got, direct, rtol=1e-6, atol=0)
    alone = Fn.lpips_from_maps([g[1:] for g in gen], [h[1:, 3:4] for h in hist])
    assert torch.equal(alone[0, 0], got[1, 3])
