"""JPEGs decoded and preprocessed as torch ops on the embedder's device (`embedder.decode = "torch"`, what
`auto` picks on CUDA), checked on the CPU: the same pixels as open_clip's Pillow transform within
rounding, embeddings within a small tolerance of the Pillow path, and exactly its rejections."""

from __future__ import annotations

import io
import struct
import time

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from curator.config import EmbedderConfig
from curator.embed import ClipEmbedder, ModelLoadError
from curator.embed.images import decode_image, jpeg_size
from curator.embed.jpeg import JpegPreprocess
from curator.records import SAMPLE_SCHEMA, InvalidRecord, Limits


def _photos() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    return list(load_sample_images().images)  # two 427x640 photographs, bundled offline


def _jpeg(px: np.ndarray, mode: str = "RGB", quality: int = 90, **kw: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(px).convert(mode).save(buf, "JPEG", quality=quality, **kw)
    return buf.getvalue()


def _claims(data: bytes, width: int, height: int) -> bytes:
    """The same JPEG with its frame header claiming another size (a bomb: a small file, huge claims)."""
    at = data.index(b"\xff\xc0")
    return data[:at + 5] + struct.pack(">HH", height, width) + data[at + 9:]


@pytest.fixture(scope="module")
def jpegs() -> list[bytes]:
    return make_jpegs()


def make_jpegs() -> list[bytes]:
    a, b = _photos()
    rng = np.random.default_rng(0)
    out = []
    for h, w in ((375, 500), (500, 375), (240, 320), (375, 500), (97, 61), (224, 224)):
        src = a if len(out) % 2 else b
        y, x = int(rng.integers(0, 427 - min(h, 427) + 1)), int(rng.integers(0, 640 - min(w, 640) + 1))
        crop = Image.fromarray(src[y:y + h, x:x + w]).resize((w, h))
        out.append(_jpeg(np.asarray(crop), quality=int(rng.integers(75, 96))))
    out.append(_jpeg(a[:300, :400], mode="L"))  # grayscale
    out.append(_jpeg(b[:300, :400], progressive=True))
    return out


def _table(images: list[bytes | None]) -> pa.Table:
    rows = [{"id": f"r{i}", "image": im, "source": "t", "partition": 0, "offset": i} for i, im in enumerate(images)]
    return pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA)


OPENAI = {"mean": (0.48145466, 0.4578275, 0.40821073), "std": (0.26862954, 0.26130258, 0.27577711)}


@pytest.mark.parametrize("cfg", [
    {"size": (64, 64), "interpolation": "bicubic", "resize_mode": "shortest"},
    {"size": (48, 80), "interpolation": "bicubic", "resize_mode": "shortest"},
    {"size": (56, 56), "interpolation": "bilinear", "resize_mode": "squash"},
])
def test_tensor_preprocess_matches_open_clips_pillow_transform(jpegs, cfg):
    import open_clip
    import torch

    pil_tf = open_clip.image_transform(cfg["size"], is_train=False, mean=OPENAI["mean"], std=OPENAI["std"],
                                       resize_mode=cfg["resize_mode"], interpolation=cfg["interpolation"])
    tp = JpegPreprocess({**cfg, **OPENAI}, "cpu")
    sizes = [jpeg_size(d) for d in jpegs]
    got, done = tp(jpegs, sizes)
    assert done == list(range(len(jpegs))) and got.shape == (len(jpegs), 3, *cfg["size"]) and got.dtype == torch.float32
    want = torch.stack([pil_tf(decode_image(d)) for d in jpegs])
    diff = (got - want).abs() * torch.tensor(OPENAI["std"]).reshape(1, 3, 1, 1) * 255  # in 8-bit levels
    per_image = diff.mean(dim=(1, 2, 3))
    assert per_image.max() < 0.25 and diff.max() <= 3, (per_image, diff.max())  # rounding, never a shift
    with pytest.raises(ValueError, match="resize_mode|mode 'longest'"):
        JpegPreprocess({**cfg, **OPENAI, "resize_mode": "longest"}, "cpu")


def test_torch_decode_embeds_like_pillow_and_rejects_the_same(jpegs):
    photo = np.asarray(Image.fromarray(_photos()[0]).resize((500, 375)))
    good = _jpeg(photo)
    png = io.BytesIO()
    Image.fromarray(photo).save(png, "PNG")
    bad = [
        _claims(good, 60_000, 60_000),  # over Pillow's own bomb limit
        _claims(good, 8_000, 7_000),  # 56M pixels: over Limits.max_image_pixels only
        good[: len(good) // 2],  # truncated
        good[:-2] + b"\x00\x00",  # truncated at the very end (no end marker)
        b"\xff\xd8\xff not a jpeg at all \xff\xd9",
        b"hello, not an image at all",
        _jpeg(photo, mode="CMYK"),  # decodes, through Pillow
        png.getvalue(),  # decodes, through Pillow
        good + b"trailing bytes",  # decodes, through Pillow
    ]
    images = jpegs + bad + [None]
    tab = _table(images)
    emb = {}
    for decode in ("pil", "torch"):
        e = ClipEmbedder(EmbedderConfig(model="curator-tiny", pretrained="", device="cpu", decode=decode, batch_size=5))
        e.setup()
        assert e.decode == decode and (e._jpeg is not None) == (decode == "torch")
        t0 = time.perf_counter()
        emb[decode] = e.embed(tab)
        assert time.perf_counter() - t0 < 20  # no bomb's pixels were decoded
    p, t = emb["pil"], emb["torch"]
    assert t.errors == p.errors and sorted(p.errors) == list(range(len(jpegs), len(jpegs) + 6)) + [len(images) - 1]
    reasons = [p.errors[len(jpegs) + j].reason for j in range(6)]
    assert "decompression bomb" in reasons[0] and "over the limit of 50000000" in reasons[1]
    assert "truncated" in reasons[2] and "truncated" in reasons[3] and "not a supported image" in reasons[5]
    np.testing.assert_array_equal(t.has_image, p.has_image)
    cos = (t.image * p.image).sum(1)[p.has_image]
    assert cos.min() > 0.9995, cos
    ok = np.flatnonzero(p.has_image)
    np.testing.assert_allclose(t.image[ok], p.image[ok], atol=5e-3)
    with pytest.raises(InvalidRecord, match="over the limit of 50000000"):
        jpeg_size(_claims(good, 8_000, 7_000), Limits())  # refused from the header, before any decoder
    assert jpeg_size(good) == (500, 375) and jpeg_size(png.getvalue()) is None


def test_decode_setting_resolution():
    auto = ClipEmbedder(EmbedderConfig(model="curator-tiny", pretrained="", device="cpu"))
    auto.setup()
    assert auto.decode == "pil"  # auto decodes on the device only where that is CUDA
    with pytest.raises(ModelLoadError, match="embedder.decode 'nvjpeg'"):
        ClipEmbedder(EmbedderConfig(model="curator-tiny", pretrained="", device="cpu", decode="nvjpeg")).setup()
