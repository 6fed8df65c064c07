"""The frozen-map cache: exact when unwarped, and warped like the image it stands in for."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from grefel.data import AugmentConfig, DataSource, load_dataset
from grefel.data.transforms import TrainTransform, eval_transform
from grefel.engine.frozen_cache import FrozenMapCache
from grefel.models import create_model

SIZES = dict(input_size=48, branch_size=48, landmark_size=112, ir_stem=8, ir_widths=(8, 16, 32), ir_units=(1, 1, 1),
             cross_heads=(1, 2, 2), embed_dim=32, num_heads=2, num_anchors=3)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    images = load_dataset(DataSource(root=str(_ferplus()), use_cache=False), "valid").images[:48]
    model = create_model("grefel_small", **SIZES).eval()
    directory = tmp_path_factory.mktemp("lmcache")
    return model, images, FrozenMapCache.load_or_build(model, images, directory, batch_size=16, log=lambda *_: None), directory


def _ferplus():
    from conftest import FERPLUS_ROOT
    return FERPLUS_ROOT


def online(model, x):
    with torch.no_grad():
        return model.frozen_maps(x)


def test_unwarped_cache_equals_online_maps(setup):
    model, images, cache, _ = setup
    x = torch.stack([eval_transform(48, 3)(im) for im in images[:8]])
    idx = torch.arange(8)
    for cached, exact in zip(cache.lookup(idx), online(model, x)):
        torch.testing.assert_close(cached, exact, atol=2e-2, rtol=2e-3)  # float16 storage
    for cached, exact in zip(cache.lookup(idx, mirror=True), online(model, x.flip(-1))):
        torch.testing.assert_close(cached, exact, atol=2e-2, rtol=2e-3)


def test_pure_flip_warp_selects_the_mirror_maps_exactly(setup):
    model, images, cache, _ = setup
    transform = TrainTransform(48, 3, AugmentConfig(hflip=1.0, shift=0, scale=0, rotate=0, brightness=0,
                                                    contrast=0, erasing=0), with_geometry=True)
    pairs = [transform(im) for im in images[:8]]
    x = torch.stack([p[0] for p in pairs])
    theta = torch.from_numpy(np.stack([p[1] for p in pairs]))
    assert (torch.linalg.det(theta[:, :, :2]) < 0).all()
    for cached, exact in zip(cache.lookup(torch.arange(8), theta), online(model, x)):
        torch.testing.assert_close(cached, exact, atol=3e-2, rtol=3e-3)


def test_warped_maps_track_the_augmented_image(setup):
    model, images, cache, _ = setup
    np.random.seed(0)
    transform = TrainTransform(48, 3, AugmentConfig(brightness=0, contrast=0, erasing=0), with_geometry=True)
    pairs = [transform(im) for im in images]
    x = torch.stack([p[0] for p in pairs])
    theta = torch.from_numpy(np.stack([p[1] for p in pairs]))
    idx = torch.arange(len(images))
    cos = lambda a, b: F.cosine_similarity(a.flatten(2), b.flatten(2), dim=1).mean().item()  # noqa: E731
    for warped, naive, truth in zip(cache.lookup(idx, theta), cache.lookup(idx), online(model, x)):
        # Warping must bring the cached maps clearly closer to the augmented image's maps.
        # (measured: 0.74 / 0.71 / 0.93 warped against 0.33 / 0.47 / 0.86 unwarped, fine to coarse)
        assert cos(warped, truth) > cos(naive, truth) + 0.05
        assert cos(warped, truth) > 0.65


def test_second_load_reuses_the_files(setup):
    model, images, cache, directory = setup
    files = sorted(directory.glob("frozen-*.npy"))
    assert len(files) == 3
    stamps = [f.stat().st_mtime_ns for f in files]
    calls = []
    again = FrozenMapCache.load_or_build(model, images, directory, log=calls.append)
    assert calls == [] and [f.stat().st_mtime_ns for f in files] == stamps and len(again) == len(images)
    files[0].write_bytes(b"broken")
    rebuilt = FrozenMapCache.load_or_build(model, images, directory, log=calls.append)
    assert len(calls) == 1 and len(rebuilt) == len(images)
