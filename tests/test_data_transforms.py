"""Transforms, samples and collation, probability-mode sampling, class weights, DataLoader workers."""

from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from grefel.data import (
    AugmentConfig,
    DataSource,
    FERDataset,
    class_balanced_weights,
    class_weights,
    collate_samples,
    eval_transform,
    load_dataset,
    train_transform,
)
from grefel.errors import ConfigError
from grefel.labels import CANONICAL_CLASSES

NO_AUG = AugmentConfig(hflip=0, shift=0, scale=0, rotate=0, brightness=0, contrast=0, erasing=0)


@pytest.fixture(scope="module")
def faces(ferplus_root, tmp_path_factory) -> FERDataset:
    cache = tmp_path_factory.mktemp("grefel-transforms-cache")
    return load_dataset(DataSource(root=str(ferplus_root), cache_dir=str(cache)), "valid", "crossentropy")


@pytest.mark.parametrize("size, in_chans", [(64, 3), (112, 1), (40, 3)])
def test_transforms_shape_range_and_pickle(faces, size, in_chans):
    for transform in (train_transform(size, in_chans, AugmentConfig()), eval_transform(size, in_chans)):
        out = pickle.loads(pickle.dumps(transform))(faces.images[0])
        assert out.shape == (in_chans, size, size) and out.dtype == torch.float32
        assert 0.0 <= out.min() and out.max() <= 1.0
        rgb = transform(cv2.cvtColor(faces.images[0], cv2.COLOR_GRAY2RGB))
        assert rgb.shape == (in_chans, size, size)


def test_eval_transform_is_resize_and_scale(faces):
    out = eval_transform(96, 3)(faces.images[1])
    expected = cv2.resize(faces.images[1], (96, 96), interpolation=cv2.INTER_LINEAR) / 255.0
    assert torch.allclose(out, torch.from_numpy(expected).float().expand(3, -1, -1), atol=1e-6)
    shrunk = eval_transform(32, 1)(faces.images[1])
    assert torch.allclose(shrunk[0], torch.from_numpy(
        cv2.resize(faces.images[1], (32, 32), interpolation=cv2.INTER_AREA) / 255.0).float(), atol=1e-6)


@pytest.mark.parametrize("size", [64, 112, 32])
def test_train_transform_geometry_matches_eval(faces, size):
    """With augmentation off, the fused warp is the eval resize; with flip forced, its mirror image.

    Only the outermost pixel ring may differ (reflected vs clamped border), never by a black frame."""
    image = faces.images[2]
    reference = eval_transform(size, 1)(image)
    plain = train_transform(size, 1, NO_AUG)(image)
    flipped = train_transform(size, 1, AugmentConfig(**{**NO_AUG.__dict__, "hflip": 1.0}))(image)
    for out, ref in ((plain, reference), (flipped, reference.flip(-1))):
        assert (out - ref)[:, 1:-1, 1:-1].abs().max() <= 2 / 255
        assert (out - ref).abs().mean() < 1 / 255


def test_train_transform_randomness(faces):
    np.random.seed(0)
    transform = train_transform(64, 3, AugmentConfig(erasing=1.0))
    outs = torch.stack([transform(faces.images[0]) for _ in range(8)])
    assert len({tuple(o.flatten()[:500].tolist()) for o in outs}) == 8
    assert (outs == 0).flatten(1).sum(1).min() > 0.02 * 64 * 64 * 3  # an erased block in each
    crop = train_transform(64, 1, AugmentConfig(random_resized_crop=0.5, rotate=0, hflip=0, erasing=0,
                                                brightness=0, contrast=0))
    assert crop(faces.images[0]).shape == (1, 64, 64)
    with pytest.raises(ConfigError, match="augment.hflip"):
        AugmentConfig(hflip=1.5)
    with pytest.raises(ConfigError, match="in_chans"):
        train_transform(64, 2, AugmentConfig())


def test_albumentations_backend(faces):
    aug = AugmentConfig(backend="albumentations", erasing=1.0)
    transform = pickle.loads(pickle.dumps(train_transform(48, 3, aug)))
    np.random.seed(3)
    first = torch.stack([transform(faces.images[i]) for i in range(6)])
    assert first.shape == (6, 3, 48, 48) and 0.0 <= first.min() and first.max() <= 1.0
    assert (first == 0).flatten(1).sum(1).min() > 0  # erased pixels in each
    again = train_transform(48, 3, aug)
    np.random.seed(3)  # seeded from NumPy's generator, as DataLoader seeds it per worker
    assert torch.equal(first, torch.stack([again(faces.images[i]) for i in range(6)]))
    plain = train_transform(48, 1, AugmentConfig(**{**NO_AUG.__dict__, "backend": "albumentations"}))
    assert (plain(faces.images[2]) - eval_transform(48, 1)(faces.images[2])).abs().max() <= 2 / 255
    with pytest.raises(ConfigError, match="frozen_cache"):
        train_transform(48, 3, aug, with_geometry=True)
    with pytest.raises(ConfigError, match="augment.backend"):
        AugmentConfig(backend="kornia")


def test_train_transform_reports_its_warp(faces):
    """theta maps output to source in normalised coordinates: resampling the eval image with it
    reproduces the augmented image."""
    np.random.seed(1)
    transform = train_transform(48, 1, AugmentConfig(brightness=0, contrast=0, erasing=0), with_geometry=True)
    image = faces.images[3]
    out, theta = transform(image)
    grid = torch.nn.functional.affine_grid(torch.from_numpy(theta)[None], [1, 1, 48, 48], align_corners=False)
    again = torch.nn.functional.grid_sample(eval_transform(48, 1)(image)[None], grid, padding_mode="reflection",
                                            align_corners=False)[0]
    inside = (grid[0].abs() < 1 - 2 / 48).all(-1)  # compare where the source pixel lies inside the image
    assert inside.float().mean() > 0.6
    assert (again - out)[:, inside].abs().mean() < 1 / 255


def test_samples_and_collate(faces):
    faces = faces.subset(range(10))
    sample = faces[3]
    assert pickle.loads(pickle.dumps(sample)).id == sample.id
    assert sample.index == 3 and sample.label == faces.labels[3] and sample.image.shape == (48, 48)
    batch = collate_samples([faces[i] for i in range(4)])  # raw uint8 images are scaled, too
    assert batch["image"].shape == (4, 1, 48, 48) and batch["image"].max() <= 1.0
    assert batch["target"].shape == (4, 8) and batch["target"].dtype == torch.float32
    assert batch["label"].tolist() == faces.labels[:4].tolist() and batch["index"].tolist() == [0, 1, 2, 3]
    assert batch["id"] == faces.ids[:4]
    with pytest.raises(IndexError):
        faces[10]
    masked = faces.subset(faces.labels == faces.labels[0])
    assert masked.ids == [faces.ids[i] for i in np.flatnonzero(faces.labels == faces.labels[0])]


def test_label_mode_targets(faces):
    soft = int(np.flatnonzero((faces.targets > 0).sum(1) == 2)[0])  # a sample with two voted emotions
    distribution = faces.targets[soft]
    assert np.allclose(faces[soft].target, distribution)

    probability = FERDataset(faces.images, faces.targets, faces.ids, faces.class_names, "probability")
    draws = []
    for epoch in range(400):
        probability.set_epoch(epoch)
        target = probability[soft].target
        assert target.sum() == 1 and set(np.unique(target)) == {0.0, 1.0}
        draws.append(int(target.argmax()))
    frequency = np.bincount(draws, minlength=8) / len(draws)
    assert np.abs(frequency - distribution).max() < 0.08
    probability.set_epoch(7)
    assert np.array_equal(probability[soft].target, probability[soft].target)

    multi = FERDataset(faces.images, faces.targets, faces.ids, faces.class_names, "multi_target")
    expected = np.where(distribution > 0, 1.0, 0.0) * 0.999 + 0.001
    assert np.allclose(multi[soft].target, expected)


def test_dataloader_workers_agree_with_the_main_process(faces):
    dataset = FERDataset(faces.images[:96], faces.targets[:96], faces.ids[:96], faces.class_names, "probability",
                         transform=eval_transform(64, 3))
    dataset.set_epoch(3)
    loader = DataLoader(dataset, batch_size=32, num_workers=2, collate_fn=collate_samples)
    batches = list(loader)
    assert torch.cat([b["index"] for b in batches]).tolist() == list(range(96))
    expected = np.stack([dataset[i].target for i in range(96)])
    assert np.array_equal(torch.cat([b["target"] for b in batches]).numpy(), expected)
    assert batches[0]["image"].shape == (32, 3, 64, 64)


def test_class_weights():
    labels = np.array([0, 0, 0, 1, 2, 2])
    assert torch.allclose(class_weights(labels, 4), torch.tensor([2 / 3, 2.0, 1.0, 0.0]))  # C = 3 present
    soft = np.eye(4, dtype=np.float32)[labels]
    assert torch.allclose(class_weights(soft, 4), class_weights(labels, 4))
    per_sample = class_balanced_weights(labels, 4)
    assert torch.allclose(per_sample, torch.tensor([1 / 3] * 3 + [1.0, 0.5, 0.5], dtype=torch.float64))
    assert class_weights(torch.tensor([1, 1, 7])).shape == (8,)


def test_a_dataset_with_a_class_the_model_lacks_is_refused_in_one_line():
    from grefel.errors import DataError

    targets = np.eye(8, dtype=np.float32)[[0, 3, 7]]                       # neutral, sadness, contempt
    dataset = FERDataset(np.zeros((3, 48, 48), np.uint8), targets, ["a", "b", "c"], CANONICAL_CLASSES)
    dataset.require_classes(8)
    with pytest.raises(DataError, match=r"^the dataset has class contempt that the model \(7 classes\) cannot predict$"):
        dataset.require_classes(7)
