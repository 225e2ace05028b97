"""JPEG decoding and CLIP preprocessing as batched torch ops on the embedder's device.

At thousands of images a second, decoding JPEGs with Pillow and resizing them one by one on the CPU
costs more than the model does on a GPU. Here a batch of JPEG bytes is decoded by
``torchvision.io.decode_jpeg`` on the device (nvJPEG on CUDA), then resized, center-cropped and
normalised as open_clip's inference transform does -- its parameters read from the model's
preprocess config -- with images of one size resized together.

Only what `curator.embed.images.jpeg_size` accepts comes here (its header read and bomb-guarded
first); anything the device fails to decode is handed back as None, for the Pillow path to decode or
to reject with its usual reason.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from curator.embed.hashes import THUMB, thumbnails

#: decoded pixels held at once (uint8 RGB: 3 bytes each), however large the images of a batch are
MAX_DECODED_PIXELS = 1 << 26

RESIZE_MODES = ("shortest", "squash")


class JpegPreprocess:
    """Batches of JPEG bytes -> model-ready float32 tensors (B, 3, H, W) on `device`."""

    def __init__(self, preprocess_cfg: dict[str, Any], device: str | torch.device) -> None:
        size = preprocess_cfg["size"]
        self.size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        self.resize_mode = preprocess_cfg.get("resize_mode") or "shortest"
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"the model's preprocessing resizes with mode {self.resize_mode!r}; torch decoding "
                             f"supports {', '.join(RESIZE_MODES)}")
        interp = preprocess_cfg.get("interpolation") or "bicubic"
        self.interpolation = InterpolationMode.BILINEAR if interp == "bilinear" else InterpolationMode.BICUBIC
        self.device = torch.device(device)
        shape = (1, 3, 1, 1)
        self.mean = torch.tensor(preprocess_cfg["mean"], dtype=torch.float32, device=self.device).reshape(shape)
        self.std = torch.tensor(preprocess_cfg["std"], dtype=torch.float32, device=self.device).reshape(shape)

    def __call__(self, datas: Sequence[bytes], sizes: Sequence[tuple[int, int]]) -> tuple[torch.Tensor, list[int]]:
        """The preprocessed images and the indices (into `datas`) they are of: the ones decoded."""
        batch, done, _ = self.with_thumbnails(datas, sizes)
        return batch, done

    def with_thumbnails(self, datas: Sequence[bytes], sizes: Sequence[tuple[int, int]]
                        ) -> tuple[torch.Tensor, list[int], np.ndarray]:
        """As `__call__`, and the decoded images' grey thumbnails for their perceptual hashes
        (`curator.embed.hashes`), made on the device while the pixels are there."""
        done: list[int] = []
        out: list[torch.Tensor] = []
        thumbs: list[np.ndarray] = []
        start = 0
        while start < len(datas):  # groups of at most MAX_DECODED_PIXELS (one image at least)
            end, pixels = start, 0
            while end < len(datas) and (end == start or pixels + sizes[end][0] * sizes[end][1] <= MAX_DECODED_PIXELS):
                pixels += sizes[end][0] * sizes[end][1]
                end += 1
            images = self._decode(datas[start:end], sizes[start:end])
            ok = [j for j, im in enumerate(images) if im is not None]
            if ok:
                out.append(self.transform([images[j] for j in ok]))  # type: ignore[misc]
                thumbs.append(thumbnails([images[j] for j in ok]))  # type: ignore[misc]
                done += [start + j for j in ok]
            start = end
        if not out:
            return torch.empty((0, 3, *self.size), device=self.device), [], np.zeros((0, THUMB, THUMB), np.float32)
        return torch.cat(out), done, np.concatenate(thumbs)

    def _decode(self, datas: Sequence[bytes], sizes: Sequence[tuple[int, int]]) -> list[torch.Tensor | None]:
        raw = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torchvision >= 0.29 calls its image IO deprecated
            try:
                images: list[torch.Tensor | None] = list(decode_jpeg(raw, mode=ImageReadMode.RGB, device=self.device))
            except RuntimeError:  # one bad image fails the whole batch: find which, one by one
                images = []
                for t in raw:
                    try:
                        images.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=self.device))
                    except RuntimeError:
                        images.append(None)
        # a decoder that disagrees with the header about the size is not trusted with the image
        return [im if im is not None and tuple(im.shape[1:]) == (h, w) else None
                for im, (w, h) in zip(images, sizes, strict=True)]

    def transform(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """open_clip's inference transform on uint8 (3, H, W) tensors: resize (images of one size
        together), center crop, scale to [0, 1], normalise."""
        th, tw = self.size
        out = torch.empty((len(images), 3, th, tw), dtype=torch.float32, device=self.device)
        groups: dict[tuple[int, int], list[int]] = {}
        for j, im in enumerate(images):
            groups.setdefault((int(im.shape[1]), int(im.shape[2])), []).append(j)
        for (h, w), idx in groups.items():
            batch = torch.stack([images[j] for j in idx])
            if self.resize_mode == "squash":
                batch = F.resize(batch, [th, tw], interpolation=self.interpolation, antialias=True)
            else:
                if th == tw:  # torchvision's Resize(int): the short side to th, the long one truncated
                    batch = F.resize(batch, [th], interpolation=self.interpolation, antialias=True)
                else:  # open_clip's ResizeKeepRatio (bicubic whatever the config says): the smaller ratio, rounded
                    ratio = min(h / th, w / tw)
                    batch = F.resize(batch, [round(h / ratio), round(w / ratio)],
                                     interpolation=InterpolationMode.BICUBIC, antialias=True)
                batch = F.center_crop(batch, [th, tw])
            out[torch.tensor(idx, device=self.device)] = batch.float()
        out.div_(255.0).sub_(self.mean).div_(self.std)
        return out
