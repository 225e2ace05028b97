"""Model-free content hashes of an item's payload, computed where the payload is decoded.

The selector's duplicate rule on embeddings depends on the model and on a calibrated threshold; a
byte-identical copy must not. So the embedder also hashes what it decodes (`ContentHashes`):

- ``image``: a 64-bit key of the image's bytes as given (decoder-independent, so the same on any
  machine and any decode path);
- ``pixels``: a 64-bit key of the decoded RGB pixels and their shape, where Pillow decoded them on
  the CPU (a PNG and a BMP of the same picture collide; images decoded on the GPU have none);
- ``phash``: the 64-bit DCT perceptual hash (imagehash's ``phash``: a 32x32 grey thumbnail, its 2-D
  DCT, the 8x8 lowest frequencies thresholded at their median), computed on the decoded pixels on
  whichever device holds them; JPEG re-encodes and resizes land within a few bits of the original;
- ``text``: a 64-bit key of the caption after NFKC normalisation, case folding and collapsing white
  space.

0 means "none" in every key (a true 0 is remapped to 1). Pictures too flat for their perceptual
hash to mean anything (`MIN_SPREAD`) get none: on a plain or gradient image the 64 bits are noise.

The exact keys are XXH3-64 (`KEYS`): a 480 px photograph's decoded pixels are ~0.3 MB, which blake2b
hashes at ~1 GB/s (~0.35 ms, a tenth of what an embedder spends on it outside the model) and XXH3 at
~60. A run keeps the scheme it started with (its manifest's ``content_keys``; runs from before it
was recorded are blake2b-64, `LEGACY_KEYS`), because resumed runs compare new keys with the ones
their decisions hold. Neither is a defence against crafted collisions: at 64 bits anyone can make
two inputs share a key, so an exact key says "a copy", not "the same file, verified".
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import xxhash

if TYPE_CHECKING:
    import torch

#: side of the grey thumbnail the perceptual hash is computed on, and of its low-frequency block
THUMB, LOW = 32, 8
#: a perceptual hash needs its 64 low-frequency DCT coefficients to spread around their median by at
#: least this much (median absolute deviation, in grey levels of the orthonormal DCT): below it the
#: bits follow noise (a plain or gradient picture), and unrelated flat pictures would match each other
MIN_SPREAD = 1.0


def _dct_matrix(n: int) -> np.ndarray:
    k, x = np.arange(n)[:, None], np.arange(n)[None, :]
    m = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * x + 1) * k / (2 * n))
    m[0] /= np.sqrt(2.0)
    return m


_DCT = _dct_matrix(THUMB)


#: the content keys' hash for new runs, and the one runs from before the scheme was recorded used
KEYS, LEGACY_KEYS = "xxh3-64", "blake2b-64"
KEY_SCHEMES = (KEYS, LEGACY_KEYS)
_BIT63, _BIT64 = 1 << 63, 1 << 64


def _seed(person: bytes) -> int:
    """XXH3's seed per kind of payload, so an image's bytes and a caption's never share a key."""
    return int.from_bytes(hashlib.blake2b(person, digest_size=8).digest(), "little")


_SEEDS = {p: _seed(p) for p in (b"curator-bytes", b"curator-pixels", b"curator-vector", b"curator-caption")}


def check_scheme(scheme: str) -> str:
    if scheme not in KEY_SCHEMES:
        raise ValueError(f"content keys {scheme!r} are not one of {', '.join(KEY_SCHEMES)}")
    return scheme


def keys_of(setting: str) -> str:
    """The scheme an `embedder.content_keys` setting names; 'auto' with no run directory to ask: the newest."""
    return KEYS if setting == "auto" else check_scheme(setting)


def held_keys(manifest: dict | None) -> str:
    """The scheme a run directory's decisions hold: its manifest's, blake2b-64 for a run from before the
    scheme was recorded, the newest for a run with no commit yet."""
    return KEYS if manifest is None else str(manifest.get("content_keys", LEGACY_KEYS))


def _signed(v: int) -> int:
    return (v - _BIT64 if v >= _BIT63 else v) or 1


def _key(data: bytes | memoryview, person: bytes, scheme: str) -> int:
    if scheme == KEYS:
        return _signed(xxhash.xxh3_64_intdigest(data, _SEEDS[person]))
    check_scheme(scheme)
    v = int.from_bytes(hashlib.blake2b(data, digest_size=8, person=person).digest(), "little", signed=True)
    return v or 1


def bytes_key(data: bytes, scheme: str = KEYS) -> int:
    """The key of a payload's bytes as given (an image file, a message's image field)."""
    return _key(data, b"curator-bytes", scheme)


def pixels_key(rgb: np.ndarray, scheme: str = KEYS) -> int:
    """The key of decoded pixels: (H, W, 3) uint8, shape included (a reshaped array is another picture)."""
    a = np.ascontiguousarray(rgb, dtype=np.uint8)
    shape = np.asarray(a.shape, np.int64).tobytes()
    if scheme == KEYS:
        x = xxhash.xxh3_64(shape, seed=_SEEDS[b"curator-pixels"])
        x.update(memoryview(a).cast("B"))
        return _signed(x.intdigest())
    check_scheme(scheme)
    h = hashlib.blake2b(shape, digest_size=8, person=b"curator-pixels")
    h.update(memoryview(a).cast("B"))
    return int.from_bytes(h.digest(), "little", signed=True) or 1


def vector_key(x: np.ndarray, scheme: str = KEYS) -> int:
    """The key of a vector (a precomputed embedding: the only payload such an item has)."""
    return _key(np.ascontiguousarray(x, dtype=np.float32).tobytes(), b"curator-vector", scheme)


def normalise_caption(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def text_key(text: str, scheme: str = KEYS) -> int:
    """The key of a caption: equal for captions that differ only in Unicode form, case or white space."""
    return _key(normalise_caption(text).encode(), b"curator-caption", scheme)


def phash(thumbs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int64 hashes, bool ok) of (n, 32, 32) grey thumbnails; ok is false for pictures too flat to hash.

    Bit 8*r + c is set where DCT coefficient (r, c) of the 8x8 lowest frequencies exceeds their median
    (imagehash's ``phash``, DC term included)."""
    t = np.asarray(thumbs, np.float64).reshape(-1, THUMB, THUMB)
    low = (_DCT[:LOW] @ t @ _DCT[:LOW].T).reshape(len(t), LOW * LOW)  # (matmul: ~50x an einsum's speed)
    med = np.median(low, axis=1, keepdims=True)
    ok = np.median(np.abs(low - med), axis=1) >= MIN_SPREAD
    bits = (low > med).astype(np.uint64)
    codes = (bits << np.arange(LOW * LOW, dtype=np.uint64)).sum(axis=1, dtype=np.uint64)
    return np.where(ok, codes.view(np.int64), 0), ok


#: ITU-R 601 luma weights of R, G, B
LUMA = (0.299, 0.587, 0.114)
_LUMA32 = np.asarray(LUMA, np.float32)


def thumbnails(images: Sequence[torch.Tensor]) -> np.ndarray:
    """(n, 32, 32) float32 grey thumbnails of uint8 (3, H, W) tensors, on the device they are on:
    ITU-R 601 luma of the whole picture, then an antialiased bilinear resize.

    Both steps are linear, so this is the resize-then-luma thumbnail to float rounding; taking the
    luma first resizes one plane instead of three (half the CPU time, on photos and on 64 px images)."""
    import torch

    if not images:
        return np.zeros((0, THUMB, THUMB), np.float32)
    by_shape: dict[tuple[object, ...], list[int]] = {}
    for k, im in enumerate(images):
        by_shape.setdefault((*im.shape, str(im.device)), []).append(k)
    out = np.empty((len(images), THUMB, THUMB), np.float32)
    for rows in by_shape.values():  # one resize per shape (torchvision's resize is this call, after checks)
        if images[rows[0]].device.type == "cpu":
            # numpy's (n, 3) @ (3,) is a third of torch's on the CPU (~110 against ~350 us for a
            # 480 x 360 photo, the conversion to float included); the sums agree to float rounding
            x = np.stack([images[k].permute(1, 2, 0).numpy() for k in rows], dtype=np.float32)
            grey = torch.from_numpy(x @ _LUMA32)[:, None]
        else:
            xd = torch.stack([images[k].permute(1, 2, 0) for k in rows]).float()  # (n, H, W, 3): as decoded
            grey = (xd @ torch.tensor(LUMA, device=xd.device))[:, None]
        small = torch.nn.functional.interpolate(grey, size=(THUMB, THUMB), mode="bilinear", antialias=True,
                                                align_corners=False)
        out[rows] = small[:, 0].cpu().numpy().astype(np.float32)
    return out


@dataclass
class ContentHashes:
    """Per row of a batch, the model-free keys of its payload (0: none; see the module docstring)."""

    image: np.ndarray  # int64
    pixels: np.ndarray  # int64
    phash: np.ndarray  # int64, where phash_ok
    phash_ok: np.ndarray  # bool
    text: np.ndarray  # int64

    @classmethod
    def empty(cls, n: int) -> ContentHashes:
        z = np.zeros(n, np.int64)
        return cls(z, z.copy(), z.copy(), np.zeros(n, bool), z.copy())

    def __len__(self) -> int:
        return len(self.image)

    def take(self, idx: np.ndarray) -> ContentHashes:
        return ContentHashes(self.image[idx], self.pixels[idx], self.phash[idx], self.phash_ok[idx], self.text[idx])

    @classmethod
    def concat(cls, parts: Sequence[ContentHashes]) -> ContentHashes:
        return cls(*(np.concatenate([getattr(p, f) for p in parts])
                     for f in ("image", "pixels", "phash", "phash_ok", "text")))

    def set_picture(self, i: int, data: bytes | None, rgb: np.ndarray | None, scheme: str = KEYS) -> None:
        """Row i's image keys from its bytes and, where decoded on the CPU, its pixels."""
        if data is not None:
            self.image[i] = bytes_key(data, scheme)
        if rgb is not None:
            self.pixels[i] = pixels_key(rgb, scheme)

    def set_phash(self, rows: Sequence[int], thumbs: np.ndarray) -> None:
        if len(rows):
            codes, ok = phash(thumbs)
            self.phash[list(rows)], self.phash_ok[list(rows)] = codes, ok
