"""The model's image preprocessing, a batch at a time where the model's own transform allows it.

open_clip's eval transform is a torchvision ``Compose``: geometry on the PIL image (resize, crop),
then ``ToTensor`` and ``Normalize``. Run one image at a time, the last two cost more than decoding a
small image (a dozen tensor ops and their checks per image). `BatchPreprocess` runs the geometry per
image, exactly as the model's transform does, and the tensor conversion and normalisation once per
batch with the same element-wise operations in the same order, so its output is bit-for-bit the
transform's. A transform of any other shape is run as it is, image by image.

Geometry steps that would hand back a copy of their input are skipped (`_copies`): a centre crop to
the size the image already has, a conversion to the mode it is already in. After a resize to the
crop's size (square pictures, the usual case) that is ~15 us per image, a quarter of a small image's
preprocessing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    from PIL import Image


class BatchPreprocess:
    """`prepare(image)` per image (geometry only, or the whole transform), `batch(prepared)` per batch."""

    def __init__(self, transform: Callable[[Any], Any]) -> None:
        self.transform = transform
        self.geometry: list[Callable[[Any], Any]] | None = None
        self._skip: list[Callable[[Any], bool] | None] = []
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None
        split = _split(transform)
        if split is not None:
            import torch

            self.geometry, mean, std = split
            self._skip = [_copies(t) for t in self.geometry]
            self.mean = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
            self.std = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
            if not self._agrees():
                self.geometry = None  # a step that is not PIL to PIL, or arithmetic of its own

    def _agrees(self) -> bool:
        """The split reproduces the transform exactly on probe images (landscape, portrait, small, square)."""
        import torch
        from PIL import Image

        rng = np.random.default_rng(0)
        probes = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in
                  ((37, 61), (90, 23), (5, 7), (41, 41))]
        try:
            fast = self.batch([self.prepare(p) for p in probes])
        except (ValueError, TypeError, AttributeError, RuntimeError):
            return False
        return bool(torch.equal(fast, torch.stack([self.transform(p) for p in probes])))

    @property
    def batched(self) -> bool:
        return self.geometry is not None

    def prepare(self, image: Image.Image) -> Any:
        """An RGB image's (H, W, 3) uint8 pixels after the transform's geometry; or, when the transform
        cannot be split, its whole output (a float tensor)."""
        if self.geometry is None:
            return self.transform(image)
        for t, copies in zip(self.geometry, self._skip, strict=True):
            if copies is None or not copies(image):
                image = t(image)
        if image.mode != "RGB":
            raise ValueError(f"preprocessing left an image in mode {image.mode}, not RGB")
        return np.asarray(image)

    def batch(self, prepared: Sequence[Any]) -> torch.Tensor:
        """(n, 3, H, W) float32: what the transform makes of each image, stacked."""
        import torch

        if self.geometry is None:
            return torch.stack(list(prepared))
        assert self.mean is not None and self.std is not None
        x = torch.from_numpy(np.stack(prepared)).permute(0, 3, 1, 2).contiguous()
        # ToTensor's and Normalize's operations, in their order, on the whole batch at once
        return x.to(dtype=torch.float32).div(255).sub_(self.mean).div_(self.std)


def _copies(step: Any) -> Callable[[Image.Image], bool] | None:
    """When `step` returns a copy of some images, the test for them: a centre crop of an image of the
    crop's size (torchvision crops from (0, 0) to the image's own size), a conversion to the mode the
    image is in (Pillow's convert to the same mode is a copy)."""
    from torchvision.transforms import CenterCrop

    if type(step) is CenterCrop:
        h, w = step.size  # (h, w) whatever the size was given as
        return lambda im: im.size == (w, h)
    if type(step).__name__ == "MaybeConvertMode" and isinstance(getattr(step, "mode", None), str):
        mode = step.mode
        return lambda im: im.mode == mode
    return None


def _split(transform: Any) -> tuple[list[Callable[[Any], Any]], Sequence[float], Sequence[float]] | None:
    """(geometry, mean, std) when `transform` is Compose([PIL-to-PIL steps..., ToTensor, Normalize]) with a
    normalisation that is not in place; else None."""
    try:
        from torchvision.transforms import Compose, Normalize, ToTensor
    except ImportError:
        return None
    if not isinstance(transform, Compose) or len(transform.transforms) < 2:
        return None
    *geometry, to_tensor, norm = transform.transforms
    if type(to_tensor).__name__ not in ("ToTensor", "MaybeToTensor") or not isinstance(to_tensor, ToTensor):
        return None
    if type(norm) is not Normalize or norm.inplace:
        return None
    if any(isinstance(t, (ToTensor, Normalize)) or not callable(t) for t in geometry):
        return None
    return list(geometry), tuple(float(m) for m in norm.mean), tuple(float(s) for s in norm.std)
