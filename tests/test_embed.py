"""The embedding layer: safe image decoding, open_clip (tiny, offline) and precomputed vectors."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import io
import json
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from curator.config import EmbedderConfig
from curator.embed import (
    MODEL_CONFIG_DIR,
    ClipEmbedder,
    Embedder,
    EmbedderError,
    Embeddings,
    ModelLoadError,
    PrecomputedEmbedder,
    build_embedder,
    tiny_model_config,
)
from curator.embed.images import decode_image, fetch_image_bytes, load_image_uri
from curator.records import SAMPLE_SCHEMA, Fault, InvalidRecord, Limits

# --- helpers ------------------------------------------------------------------------------


def _digits(n: int) -> tuple[list[bytes], list[int]]:
    """Real images offline: scikit-learn's 8x8 digits, upscaled and encoded as PNG."""
    from sklearn.datasets import load_digits

    d = load_digits()
    out = []
    for img in d.images[:n]:
        im = Image.fromarray((img * (255 / 16)).astype(np.uint8), "L").resize((32, 32), Image.NEAREST)
        buf = io.BytesIO()
        im.save(buf, "PNG")
        out.append(buf.getvalue())
    return out, [int(y) for y in d.target[:n]]


def _png_header(width: int, height: int) -> bytes:
    """A syntactically valid PNG that only *claims* a size: the classic decompression-bomb shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _table(images: list[bytes | None], texts: list[str | None] | None = None, **cols: list) -> pa.Table:
    n = len(images)
    texts = texts if texts is not None else [None] * n
    rows = [
        {"id": f"r{i}", "image": images[i], "text": texts[i], "source": "test", "partition": 0, "offset": i,
         **{k: v[i] for k, v in cols.items()}}
        for i in range(n)
    ]
    return pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA)


@pytest.fixture(scope="module")
def digits() -> tuple[list[bytes], list[int]]:
    return _digits(24)


@pytest.fixture(scope="module")
def tiny() -> ClipEmbedder:
    emb = ClipEmbedder(EmbedderConfig(kind="clip", model="curator-tiny", pretrained="", batch_size=8))
    emb.setup()
    return emb


# --- images -------------------------------------------------------------------------------


def test_decode_image_returns_rgb_for_common_modes(digits):
    assert decode_image(digits[0][0]).mode == "RGB"
    for mode in ("RGBA", "P", "L", "CMYK"):
        buf = io.BytesIO()
        fmt = "JPEG" if mode == "CMYK" else "PNG"
        im = Image.new(mode, (5, 4))
        if mode == "P":
            im.info["transparency"] = 0
        im.save(buf, fmt)
        out = decode_image(buf.getvalue())
        assert out.mode == "RGB" and out.size == (5, 4)


@pytest.mark.parametrize(
    ("data", "limits", "reason"),
    [
        (b"", Limits(), "empty"),
        (b"hello, not an image at all", Limits(), "not a supported image"),
        (b"\x00" * 100, Limits(max_image_bytes=10), "over the limit of 10"),
        (_png_header(100_000, 100_000), Limits(), "decompression bomb"),  # Pillow's own hard limit
        (_png_header(10_000, 6_000), Limits(), "over the limit of 50000000"),  # ours, below Pillow's
        (_png_header(9_500, 9_500), Limits(max_image_pixels=10**9), "decompression bomb"),  # Pillow's warning
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", Limits(), "not a supported image"),
    ],
)
def test_decode_image_rejects_bad_input_with_reason(data, limits, reason):
    t = time.perf_counter()
    with pytest.raises(InvalidRecord, match=reason):
        decode_image(data, limits)
    assert time.perf_counter() - t < 1.0  # the bomb's header is read, its pixels never are


def test_pillow_bomb_warning_is_an_error_in_every_thread_and_leaves_the_filters_alone(monkeypatch):
    """Between Pillow's MAX_IMAGE_PIXELS and twice that, Pillow only warns: decode_image makes it an
    error. Decoding threads read headers in turn, so the process's warning filters end as they began."""
    import sys
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    pngs = {}
    for side in (40, 20):  # 1,600 pixels: a warning; 400: fine
        buf = io.BytesIO()
        Image.new("RGB", (side, side), (side, 0, 0)).save(buf, "PNG")
        pngs[side] = buf.getvalue()

    def attempt(data: bytes) -> str:
        try:
            return decode_image(data).mode
        except InvalidRecord as exc:
            return exc.code

    before = list(warnings.filters)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch inside every header read: a race would show
    try:
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(attempt, [pngs[40], pngs[20]] * 100))
    finally:
        sys.setswitchinterval(interval)
    assert got == ["too-large", "RGB"] * 100
    assert warnings.filters == before


def test_decode_image_rejects_truncated(digits):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buf, "JPEG")
    for data in (digits[0][0][: len(digits[0][0]) // 2], buf.getvalue()[: len(buf.getvalue()) // 2]):
        with pytest.raises(InvalidRecord, match="truncated|corrupt"):
            decode_image(data)


def test_load_image_uri_paths_and_schemes(tmp_path, digits):
    p = tmp_path / "d0.png"
    p.write_bytes(digits[0][0])
    assert load_image_uri(str(p)).size == (32, 32)
    assert load_image_uri(p.as_uri()).size == (32, 32)
    with pytest.raises(InvalidRecord, match="does not exist"):
        load_image_uri(str(tmp_path / "missing.png"))
    with pytest.raises(InvalidRecord, match="not a regular file"):
        load_image_uri(str(tmp_path))
    os.mkfifo(tmp_path / "fifo")  # would block forever if opened
    with pytest.raises(InvalidRecord, match="not a regular file"):
        fetch_image_bytes(str(tmp_path / "fifo"))
    with pytest.raises(InvalidRecord, match="over the limit of 10"):
        fetch_image_bytes(str(p), Limits(max_image_bytes=10))
    with pytest.raises(InvalidRecord, match=r"unsupported image_uri scheme 's3'.*https://"):
        load_image_uri("s3://bucket/key.png")
    with pytest.raises(InvalidRecord, match="remote host"):
        load_image_uri("file://otherhost/x.png")


# --- open_clip, tiny model, random init ------------------------------------------------------


def test_tiny_clip_embeds_images_and_texts(tiny, digits):
    images, labels = digits
    texts = [f"a photo of the digit {y}" for y in labels]
    tab = _table(images, texts)
    a = tiny.embed(tab)
    assert isinstance(tiny, Embedder)
    assert tiny.model_id == "open_clip:curator-tiny/random-init"
    assert (tiny.image_dim, tiny.text_dim) == (32, 32)
    assert a.errors == {} and a.has_image.all() and a.has_text.all()
    assert a.image.dtype == np.float32 and a.image.shape == (24, 32) and a.text.shape == (24, 32)
    np.testing.assert_allclose(np.linalg.norm(a.image, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(a.text, axis=1), 1.0, atol=1e-5)
    # distinct inputs give distinct vectors (the model is not degenerate)
    assert len({tuple(np.round(r, 4)) for r in a.image}) > 5
    b = tiny.embed(tab)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.text, b.text)
    np.testing.assert_allclose(tiny.embed_texts(texts), a.text, atol=1e-6)


def test_batched_equals_unbatched(digits):
    cfg = EmbedderConfig(kind="clip", model="curator-tiny", pretrained="", batch_size=64)
    emb = build_embedder(cfg)
    tab = _table(digits[0][:10], [f"digit {y}" for y in digits[1][:10]])
    whole = emb.embed(tab)
    cfg.batch_size = 1
    one = emb.embed(tab)
    cfg.batch_size = 3
    three = emb.embed(tab)
    for other in (one, three):
        np.testing.assert_allclose(whole.image, other.image, atol=1e-5)
        np.testing.assert_allclose(whole.text, other.text, atol=1e-5)


def test_random_init_is_reproducible_and_leaves_global_rng_alone(tiny, digits):
    import torch

    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    other = ClipEmbedder(EmbedderConfig(model="curator-tiny", pretrained=""))
    other.setup()
    assert torch.equal(torch.rand(3), before)  # setup did not consume or reseed the global RNG
    tab = _table(digits[0][:4])
    np.testing.assert_array_equal(other.embed(tab).image, tiny.embed(tab).image)


def test_mixed_batch_modalities_uris_and_errors(tiny, digits, tmp_path):
    images = digits[0]
    p = tmp_path / "from-uri.png"
    p.write_bytes(images[3])
    tab = _table(
        [images[0], None, None, b"garbage", images[1][:60], _png_header(100_000, 100_000), None, None],
        ["a caption", "text only", None, "bad image with caption", None, None, None, None],
        image_uri=[None, None, str(p), None, None, None, str(tmp_path / "nope.png"), None],
    )
    e = tiny.embed(tab)
    assert list(e.has_image) == [True, False, True, False, False, False, False, False]
    assert list(e.has_text) == [True, True, False, False, False, False, False, False]
    assert sorted(e.errors) == [3, 4, 5, 6, 7]
    assert "not a supported image" in e.errors[3].reason
    assert "truncated" in e.errors[4].reason or "corrupt" in e.errors[4].reason
    assert "decompression bomb" in e.errors[5].reason
    assert "does not exist" in e.errors[6].reason
    assert "nothing for the CLIP embedder to embed" in e.errors[7].reason
    assert [e.errors[i].code for i in range(3, 8)] == ["image-undecodable", "image-undecodable", "too-large",
                                                       "image-unreadable", "nothing-to-embed"]
    assert not e.image[3:].any() and not e.text[3:].any()  # error rows are zero
    assert list(e.ok) == [True, True, True, False, False, False, False, False]
    # the image from a URI embeds like the same bytes inline
    np.testing.assert_allclose(e.image[2], tiny.embed(_table([images[3]])).image[0], atol=1e-6)


def test_decoding_threads_change_nothing_but_the_time(digits, tmp_path, monkeypatch):
    """Pillow decodes on `decode_threads` threads: every row's embedding, content keys and error (with
    its reason) are the serial run's, in row order, whatever finishes first."""
    import curator.embed.clip as clip_module
    from tests.photos import photo

    monkeypatch.setattr(clip_module, "POOL_MIN_BYTES", 0)  # these small pictures would stay on one thread

    p = tmp_path / "from-uri.png"
    p.write_bytes(digits[0][5])
    pictures = []
    for seed, size in enumerate([(80, 64), (64, 64), (120, 40), (33, 97)]):
        buf = io.BytesIO()
        photo(seed, size=size).save(buf, "JPEG" if seed % 2 else "PNG")
        pictures.append(buf.getvalue())
    images = [*pictures, b"garbage", digits[0][1][:60], None, *digits[0][:9], _png_header(100_000, 100_000)]
    uris = [None] * len(images)
    uris[6] = str(p)
    tab = _table(images, [f"caption {i % 3}" for i in range(len(images))], image_uri=uris)
    runs = []
    for threads in (1, 3):
        emb = ClipEmbedder(EmbedderConfig(model="curator-tiny", pretrained="", batch_size=8, decode_threads=threads))
        emb.setup()
        runs.append(emb.embed(tab))
    one, three = runs
    assert sorted(one.errors) == [4, 5, 16]
    assert {i: (f.code, f.reason) for i, f in one.errors.items()} == {i: (f.code, f.reason) for i, f in three.errors.items()}
    assert list(one.errors) == list(three.errors)
    np.testing.assert_array_equal(one.image, three.image)
    np.testing.assert_array_equal(one.text, three.text)
    for field in ("image", "pixels", "phash", "phash_ok", "text"):
        np.testing.assert_array_equal(getattr(one.hashes, field), getattr(three.hashes, field))


def test_a_repeated_caption_is_embedded_once(tiny, digits, monkeypatch):
    """Copies of a caption in a batch share one forward pass: the tokenizer sees each distinct caption
    once, in first-seen order, and every copy gets what the distinct captions embedded alone get."""
    seen: list[list[str]] = []
    tokenizer = tiny._tokenizer
    monkeypatch.setattr(tiny, "_tokenizer", lambda texts: seen.append(list(texts)) or tokenizer(texts))
    texts = ["a cat", "a dog", "a cat", "A cat", None, "a dog", "a cat", "   "]
    e = tiny.embed(_table([digits[0][i] for i in range(8)], texts))
    assert seen == [["a cat", "a dog", "A cat"]]
    assert list(e.has_text) == [True, True, True, True, False, True, True, False]
    want = tiny.embed_texts(["a cat", "a dog", "A cat"])
    np.testing.assert_array_equal(e.text[[0, 2, 6]], np.repeat(want[:1], 3, axis=0))
    np.testing.assert_array_equal(e.text[[1, 5]], np.repeat(want[1:2], 2, axis=0))
    np.testing.assert_array_equal(e.text[3], want[2])
    assert not e.text[[4, 7]].any()
    assert e.hashes.text[0] == e.hashes.text[2] == e.hashes.text[3] == e.hashes.text[6] != e.hashes.text[1]
    assert e.hashes.text[4] == e.hashes.text[7] == 0


def test_text_only_batch_has_no_image_matrix(tiny):
    e = tiny.embed(_table([None, None], ["one", "two"]))
    assert e.image is None and e.text.shape == (2, 32) and not e.has_image.any()


def test_checkpoint_roundtrip_via_local_path(tmp_path, digits):
    import torch

    cfg_path = tiny_model_config(tmp_path / "tiny-roundtrip.json", embed_dim=16, width=32)
    src = build_embedder(EmbedderConfig(model=str(cfg_path), pretrained=""))
    src.setup()
    assert src.model_id == "open_clip:tiny-roundtrip/random-init" and src.image_dim == 16
    with torch.no_grad():  # make the weights differ from the seeded random init
        for prm in src.model.parameters():
            prm.add_(0.01 * torch.randn_like(prm))
    ckpt = tmp_path / "tiny.pt"
    torch.save(src.model.state_dict(), ckpt)
    dst = build_embedder(EmbedderConfig(model=str(cfg_path), pretrained=str(ckpt)))
    tab = _table(digits[0][:6], ["zero", "one", "two", "three", "four", "five"])
    a, b = src.embed(tab), dst.embed(tab)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.text, b.text)
    assert str(ckpt) in dst.model_id
    # the same weights as an open_clip local-dir: folder (config + weights, the offline deployment shape)
    folder = tmp_path / "local-model"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": json.loads(cfg_path.read_text())}))
    torch.save(src.model.state_dict(), folder / "open_clip_pytorch_model.bin")
    local = build_embedder(EmbedderConfig(model=f"local-dir:{folder}"))
    c = local.embed(tab)
    assert local.model_id == f"open_clip:local-dir:{folder}"
    np.testing.assert_array_equal(a.image, c.image)
    np.testing.assert_array_equal(a.text, c.text)
    # a checkpoint of another architecture is refused with a pointer at the model setting
    with pytest.raises(ModelLoadError, match="does not match this model architecture"):
        build_embedder(EmbedderConfig(model="curator-tiny", pretrained=str(ckpt))).setup()


def test_unreachable_pretrained_tag_fails_fast_with_advice(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cfg = EmbedderConfig(model="ViT-B-32", pretrained="laion2b_s34b_b79k", cache_dir=str(tmp_path / "empty"))
    t = time.perf_counter()
    with pytest.raises(ModelLoadError) as err:
        build_embedder(cfg).setup()
    assert time.perf_counter() - t < 15
    msg = str(err.value)
    for part in ("ViT-B-32", "laion2b_s34b_b79k", "could not be downloaded or found", "--embedder.pretrained",
                 "--embedder.cache-dir", "precomputed"):
        assert part in msg, (part, msg)
    hub = EmbedderConfig(model="hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", cache_dir=str(tmp_path / "empty"))
    with pytest.raises(ModelLoadError, match="could not be downloaded or found"):
        build_embedder(hub).setup()


@pytest.mark.parametrize(
    ("model", "pretrained", "reason"),
    [
        ("ViT-B-32", "no_such_tag", "Known tags for ViT-B-32: .*laion2b_s34b_b79k"),
        ("ViT-B-32", "/nonexistent/weights.pt", "is not a file"),
        ("NoSuchNet-7", "", "unknown model name"),
        ("/nonexistent/model.json", "", "does not exist"),
        ("local-dir:/nonexistent", "", "has no open_clip_config.json"),
    ],
)
def test_bad_model_specs_are_explained(model, pretrained, reason):
    with pytest.raises(ModelLoadError, match=reason):
        ClipEmbedder(EmbedderConfig(model=model, pretrained=pretrained)).setup()


def test_config_json_errors(tmp_path):
    bad = tmp_path / "half.json"
    bad.write_text('{"embed_dim": 8}')
    with pytest.raises(ModelLoadError, match="lacks vision_cfg, text_cfg"):
        ClipEmbedder(EmbedderConfig(model=str(bad), pretrained="")).setup()
    clash = tiny_model_config(tmp_path / "ViT-B-32.json")
    with pytest.raises(ModelLoadError, match="Rename the file"):
        ClipEmbedder(EmbedderConfig(model=str(clash), pretrained="")).setup()


def test_shipped_tiny_config_matches_helper(tmp_path):
    written = json.loads(tiny_model_config(tmp_path / "t.json").read_text())
    assert written == json.loads((MODEL_CONFIG_DIR / "curator-tiny.json").read_text())


def test_device_and_precision_resolution(tiny):
    import torch

    assert tiny.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert tiny.precision == ("fp16" if torch.cuda.is_available() else "fp32")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="no CUDA device"):
            ClipEmbedder(EmbedderConfig(model="curator-tiny", pretrained="", device="cuda")).setup()
    with pytest.raises(ModelLoadError, match="precision 'fp8'"):
        ClipEmbedder(EmbedderConfig(model="curator-tiny", pretrained="", device="cpu", precision="fp8")).setup()


# --- precomputed ------------------------------------------------------------------------------


def test_precomputed_normalises_and_rejects_bad_vectors():
    emb = build_embedder(EmbedderConfig(kind="precomputed"))
    assert isinstance(emb, PrecomputedEmbedder) and emb.model_id == "precomputed"
    vecs = [[3.0, 4.0, 0.0], [float("nan"), 1.0, 0.0], [1.0, 2.0], [0.0, 0.0, 0.0], None, [0.0, 0.0, 2.0]]
    e = emb.embed(_table([None] * len(vecs), embedding=vecs))
    assert emb.model_id == "precomputed:3" and emb.image_dim == 3 and emb.text_dim is None
    assert e.text is None and not e.has_text.any()
    assert list(e.has_image) == [True, False, False, False, False, True]
    np.testing.assert_allclose(e.image[0], [0.6, 0.8, 0.0], atol=1e-7)
    np.testing.assert_allclose(e.image[5], [0.0, 0.0, 1.0])
    assert "NaN" in e.errors[1].reason
    assert "has 2 values, expected 3" in e.errors[2].reason
    assert "all zeros" in e.errors[3].reason
    assert "no precomputed embedding" in e.errors[4].reason
    assert {f.code for f in e.errors.values()} == {"bad-embedding"}
    assert not e.image[1:5].any()
    with pytest.raises(EmbedderError, match="no text model"):
        emb.embed_texts(["a new caption"])


def test_precomputed_dimension_from_setup():
    emb = PrecomputedEmbedder()
    emb.setup(dim=2)
    e = emb.embed(_table([None, None], embedding=[[1.0, 1.0, 1.0], [0.0, 5.0]]))
    assert sorted(e.errors) == [0] and "expected 2 (fixed by setup" in e.errors[0].reason
    with pytest.raises(EmbedderError, match="already fixed at 2"):
        emb.setup(dim=3)


# --- the container ----------------------------------------------------------------------------


def test_embeddings_take_and_concat():
    img = np.eye(4, dtype=np.float32)
    bad, worse = Fault("bad-field", "bad"), Fault("bad-field", "worse")
    e = Embeddings(img, None, np.ones(4, bool), np.zeros(4, bool), {1: bad, 3: worse})
    sub = e.take([3, 0])
    assert sub.errors == {0: worse} and np.array_equal(sub.image, img[[3, 0]])
    assert e.take(e.ok).errors == {}
    both = Embeddings.concat([e, sub])
    assert len(both) == 6 and both.errors == {1: bad, 3: worse, 4: worse}
    t = Embeddings(None, np.eye(2, dtype=np.float32), np.zeros(2, bool), np.ones(2, bool))
    mixed = Embeddings.concat([sub, t])
    assert mixed.image.shape == (4, 4) and not mixed.image[2:].any() and mixed.text.shape == (4, 2)
    with pytest.raises(ValueError, match="must be"):
        Embeddings(np.zeros((3, 2), np.float32), None, np.ones(2, bool), np.ones(2, bool))


def test_build_embedder_rejects_unknown_kind():
    with pytest.raises(EmbedderError, match="unknown embedder kind 'sift'"):
        build_embedder(EmbedderConfig(kind="sift"))


def test_embedder_modules_do_not_import_ray_or_kafka():
    import subprocess
    import sys

    code = "import curator.embed, curator.embed.images, sys; print(any(m.split('.')[0] in ('ray', 'kafka') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parent.parent)
    assert out.stdout.strip() == "False"
