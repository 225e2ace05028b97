"""The batched image preprocessing is the model's own transform, bit for bit, or the transform itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from open_clip.transform import image_transform
from PIL import Image
from torchvision import transforms as T

from curator.embed.hashes import THUMB, thumbnails
from curator.embed.preprocess import BatchPreprocess

SIZES = [(64, 64), (300, 200), (17, 500), (224, 224), (3, 2)]


def _images(seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in SIZES]


@pytest.mark.parametrize("mode", ["shortest", "longest", "squash"])
@pytest.mark.parametrize("size", [32, 224])
def test_batch_equals_the_models_transform(mode: str, size: int) -> None:
    pre = image_transform(size if mode == "shortest" else (size, size), is_train=False, resize_mode=mode)
    b = BatchPreprocess(pre)
    assert b.batched
    ims = _images(size)
    assert torch.equal(b.batch([b.prepare(im) for im in ims]), torch.stack([pre(im) for im in ims]))


def test_a_transform_it_cannot_split_runs_as_it_is() -> None:
    # tensor arithmetic after ToTensor but before Normalize: the split would skip it
    pre = T.Compose([T.Resize(16), T.CenterCrop(16), T.ToTensor(), T.Lambda(lambda x: x * 0.5),
                     T.Normalize((0.5, 0.5, 0.5), (0.2, 0.2, 0.2))])
    b = BatchPreprocess(pre)
    assert not b.batched
    ims = _images(1)
    assert torch.equal(b.batch([b.prepare(im) for im in ims]), torch.stack([pre(im) for im in ims]))
    # a geometry step that is not PIL to PIL is caught by the probe at construction
    pre2 = T.Compose([T.Resize(16), T.CenterCrop(16), T.Lambda(lambda im: im.convert("L")), T.ToTensor(),
                      T.Normalize((0.5,), (0.2,))])
    assert not BatchPreprocess(pre2).batched


def test_thumbnails_of_mixed_shapes_are_each_pictures_own() -> None:
    rng = np.random.default_rng(3)
    ims = [torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8)) for h, w in SIZES + SIZES[:2]]
    got = thumbnails(ims)
    for im, t in zip(ims, got, strict=True):
        x = im.float()
        grey = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None, None]
        one = torch.nn.functional.interpolate(grey, size=(THUMB, THUMB), mode="bilinear", antialias=True,
                                              align_corners=False)[0, 0]
        assert np.allclose(t, one.numpy(), rtol=0, atol=1e-4)
        # luma and the resize are linear: the same thumbnail as resizing the colour picture first
        rgb = torch.nn.functional.interpolate(x[None], size=(THUMB, THUMB), mode="bilinear", antialias=True,
                                              align_corners=False)[0]
        assert np.allclose(t, (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]).numpy(), rtol=0, atol=1e-3)


def test_steps_that_would_copy_the_image_are_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    pre = image_transform(32, is_train=False)  # Resize(32), CenterCrop(32), MaybeConvertMode, ToTensor, Normalize
    b = BatchPreprocess(pre)
    assert b.batched
    crops: list[tuple[int, int]] = []
    crop = T.CenterCrop.forward
    monkeypatch.setattr(T.CenterCrop, "forward", lambda self, im: crops.append(im.size) or crop(self, im))
    square, tall = _images(5)[0], _images(5)[1]  # 64x64: already 32x32 after the resize; 200x300: not
    assert torch.equal(b.batch([b.prepare(square), b.prepare(tall)]), torch.stack([pre(square), pre(tall)]))
    assert crops == [(32, 48), (32, 32), (32, 48)]  # ours crops only the tall one; the model's transform both
