"""Batched multi-crop augmentation: shapes, determinism, value ranges and the primitive ops."""

from __future__ import annotations

import pytest
import torch

from sop_plugin.data import EvalTransform, MultiCropAugment, ops


def _batch(n: int = 6, c: int = 1, h: int = 28, w: int = 28, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, h, w), generator=generator, dtype=torch.uint8)


@pytest.mark.parametrize("channels", [1, 3])
def test_views_shapes_dtype_and_order(channels: int) -> None:
    aug = MultiCropAugment(24, 10, 3, mean=(0.5,) * channels, std=(0.25,) * channels)
    views = aug(_batch(c=channels), torch.Generator().manual_seed(0))
    assert aug.num_views == len(views) == 5
    assert [tuple(v.shape) for v in views] == [(6, channels, 24, 24)] * 2 + [(6, channels, 10, 10)] * 3
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in views)


def test_deterministic_given_generator() -> None:
    aug = MultiCropAugment(16, 8, 2, mean=(0.3,), std=(0.3,))
    images = _batch()
    first = aug(images, torch.Generator().manual_seed(7))
    again = aug(images, torch.Generator().manual_seed(7))
    other = aug(images, torch.Generator().manual_seed(8))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])


def test_values_stay_in_unit_range_before_normalisation() -> None:
    identity = {"mean": (0.0,), "std": (1.0,)}
    aug = MultiCropAugment(20, 12, 2, brightness=0.8, contrast=0.8, solarize_prob=(1, 1, 1), **identity)
    views = aug(_batch(n=32, c=3), torch.Generator().manual_seed(1))
    assert all(v.min() >= 0.0 and v.max() <= 1.0 for v in views)


def test_no_local_views_and_input_checks() -> None:
    aug = MultiCropAugment(8, 4, 0)
    assert len(aug(_batch(n=2), torch.Generator())) == 2
    with pytest.raises(ValueError, match="uint8"):
        aug(_batch().float(), torch.Generator())
    with pytest.raises(ValueError, match="blur_prob"):
        MultiCropAugment(8, 4, 1, blur_prob=(1.0, 0.5))
    with pytest.raises(ValueError, match="normalisation constants"):
        MultiCropAugment(8, 4, 0, mean=(0.1, 0.2))(_batch(c=3), torch.Generator())


def test_large_images_are_downscaled_without_error() -> None:
    views = MultiCropAugment(16, 8, 1)(_batch(n=2, c=3, h=96, w=64), torch.Generator().manual_seed(0))
    assert views[0].shape == (2, 3, 16, 16) and views[2].shape == (2, 3, 8, 8)


def test_full_crop_is_identity_and_flip_mirrors() -> None:
    x = torch.rand(3, 2, 9, 9)
    full = torch.tensor([[0.5, 0.5, 1.0, 1.0]]).repeat(3, 1)
    same = ops.crop_resize(x, full, torch.zeros(3, dtype=torch.bool), 9)
    mirrored = ops.crop_resize(x, full, torch.ones(3, dtype=torch.bool), 9)
    torch.testing.assert_close(same, x)
    torch.testing.assert_close(mirrored, x.flip(-1))


def test_crop_boxes_stay_inside_the_image() -> None:
    boxes = ops.sample_crop_boxes(
        500, (0.1, 1.0), (0.5, 2.0), 1.5, torch.Generator().manual_seed(0), torch.device("cpu")
    )
    cx, cy, w, h = boxes.unbind(1)
    assert (cx - w / 2 >= -1e-6).all() and (cx + w / 2 <= 1 + 1e-6).all()
    assert (cy - h / 2 >= -1e-6).all() and (cy + h / 2 <= 1 + 1e-6).all()


def test_blur_keeps_constants_and_smooths() -> None:
    flat = torch.full((2, 3, 10, 10), 0.3)
    torch.testing.assert_close(ops.gaussian_blur(flat, torch.tensor([0.5, 2.0])), flat)
    spike = torch.zeros(1, 1, 11, 11)
    spike[0, 0, 5, 5] = 1.0
    blurred = ops.gaussian_blur(spike, torch.tensor([1.0]))
    assert blurred[0, 0, 5, 5] < 0.5 and abs(float(blurred.sum()) - 1.0) < 1e-5


def test_eval_transform_resizes_and_normalises() -> None:
    images = _batch(n=4, h=28, w=28)
    same = EvalTransform(None, mean=(0.5,), std=(0.5,))(images)
    torch.testing.assert_close(same, images.float() / 255 * 2 - 1)
    out = EvalTransform(16, mean=(0.5,) * 3, std=(0.2,) * 3)(_batch(n=2, c=3, h=20, w=30))
    assert out.shape == (2, 3, 16, 16) and out.dtype == torch.float32


def test_augment_runs_under_bf16_autocast() -> None:
    """Lightning's bf16-mixed wraps training_step in autocast; blur's conv must not break index_put."""
    import torch

    from sop_plugin.data import MultiCropAugment

    aug = MultiCropAugment(28, 14, 2, blur_prob=(1.0, 1.0, 1.0))
    images = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        views = aug(images, torch.Generator().manual_seed(0))
    assert [v.dtype for v in views] == [torch.float32] * 4
