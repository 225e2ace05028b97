"""open_clip embeddings of images and captions.

`cfg.model` is a built-in name, ``hf-hub:ORG/REPO``, ``local-dir:PATH``, or a model config JSON
file; weights come from a pretrained tag, a local checkpoint, or random init for tests. torch and
open_clip are imported inside the methods, so importing this module stays cheap.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from curator.config import EmbedderConfig
from curator.embed.base import EmbedderError, Embeddings, ModelLoadError, column, normalise_rows
from curator.embed.hashes import ContentHashes, keys_of, text_key, thumbnails
from curator.embed.images import decode_image, fetch_image_bytes, jpeg_size
from curator.embed.preprocess import BatchPreprocess
from curator.embed.tokens import caption_tokens
from curator.records import Fault, InvalidRecord, Limits

if TYPE_CHECKING:
    import torch

    from curator.embed.jpeg import JpegPreprocess

log = logging.getLogger("curator.embed")

#: Model config JSON files shipped with curator (``curator-tiny``), registered with open_clip on first use.
MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"

#: Below this many encoded bytes per image on average, a batch is decoded on the calling thread. Two
#: threads against one on 2 cores (`benchmarks/decode_threads.py`, decoding alone, three runs): 64 px
#: PNGs (2 KB) 0.76-0.95x, 128 px JPEGs (5 KB) 0.84-1.07x, 224 px JPEGs (11 KB) 1.20-1.71x, 384-640 px
#: JPEGs (28-44 KB) 1.35-1.56x.
POOL_MIN_BYTES = 8192

_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")


_registered_config_paths: set[Path] = set()


def register_model_configs(path: Path) -> None:
    """Make open_clip's registry know the model configs at ``path`` (a file or folder), once."""
    import open_clip

    path = path.resolve()
    if path not in _registered_config_paths:
        open_clip.add_model_config(path)
        _registered_config_paths.add(path)


def tiny_model_config(
    path: str | Path,
    embed_dim: int = 32,
    image_size: int = 32,
    patch_size: int = 8,
    width: int = 64,
    layers: int = 2,
    heads: int = 2,
    context_length: int = 32,
) -> Path:
    """Write a very small open_clip model config (a ViT and a text transformer) to ``path``.

    For tests and benchmarks: with ``pretrained=""`` it runs offline in milliseconds on a CPU.
    Pass the returned path as ``EmbedderConfig.model``; the model's name is the file's stem.
    The defaults are the shipped ``curator-tiny`` config.
    """
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} must be a multiple of patch_size {patch_size}")
    if width % heads:
        raise ValueError(f"width {width} must be a multiple of heads {heads}")
    cfg = {
        "embed_dim": embed_dim,
        "vision_cfg": {
            "image_size": image_size,
            "layers": layers,
            "width": width,
            "head_width": width // heads,
            "patch_size": patch_size,
        },
        "text_cfg": {
            "context_length": context_length,
            "vocab_size": 49408,  # fixed by open_clip's BPE tokenizer
            "width": width,
            "heads": heads,
            "layers": layers,
        },
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg, indent=4) + "\n")
    return path


def _offline_advice() -> str:
    offline = os.environ.get("HF_HUB_OFFLINE", "")
    where = f" (HF_HUB_OFFLINE={offline})" if offline else ""
    return (
        f"The weights could not be downloaded or found in the local cache{where}. Either pass a local "
        "checkpoint file with --embedder.pretrained /path/to/open_clip_pytorch_model.bin, or point "
        "--embedder.model at local-dir:/path (a folder with open_clip_config.json and weights), or "
        "pre-populate the cache (--embedder.cache-dir DIR, filled by running once where the network is "
        "reachable), or use --embedder.kind precomputed with embeddings in the input."
    )


def _resolve_device(spec: str) -> str:
    import torch

    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError):
        raise ModelLoadError(f"embedder.device {spec!r} is not a device; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(
                f"embedder.device is {spec!r} but torch sees no CUDA device; use --embedder.device cpu (or auto)"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ModelLoadError(f"embedder.device {spec!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return spec


DECODERS = ("auto", "pil", "torch")


def _resolve_precision(spec: str, device: str) -> str:
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return "fp16" if device.startswith("cuda") else "fp32"
    if spec not in ("fp32", "fp16", "bf16"):
        raise ModelLoadError(f"embedder.precision {spec!r} is not supported; use 'auto', 'fp32', 'fp16' or 'bf16'")
    return spec


class ClipEmbedder:
    """Image and text embeddings from an open_clip model.

    ``cfg.model`` is an open_clip model name (``ViT-B-32``), ``hf-hub:ORG/REPO``,
    ``local-dir:PATH`` or the path of a model config JSON (registered under its stem);
    ``cfg.pretrained`` is a pretrained tag, a local checkpoint file, or ``""`` for random
    init (tests only). Images are decoded with `curator.embed.images` (bytes, else URI); with
    ``cfg.decode`` 'torch' (or 'auto' on CUDA) JPEGs are decoded and preprocessed on the device
    (`curator.embed.jpeg`), after the same header checks.
    """

    def __init__(self, cfg: EmbedderConfig, limits: Limits | None = None) -> None:
        self.cfg = cfg
        self.limits = limits or Limits()
        self.keys = keys_of(cfg.content_keys)  # the run's, which `build_stages` resolved
        self.image_dim: int | None = None
        self.text_dim: int | None = None
        self.device: str | None = None
        self.precision: str | None = None
        self.decode: str | None = None  # 'pil' or 'torch', after setup
        self._jpeg: JpegPreprocess | None = None
        self._batcher: BatchPreprocess | None = None
        self._model: Any = None
        self._preprocess: Any = None
        self._tokenizer: Any = None
        self._dtype: torch.dtype | None = None
        self._pool: ThreadPoolExecutor | None = None  # decoding threads, made on first use
        self._threads = 0  # their number, once known
        self._name, self._pretrained, self._schema = self._parse_spec()

    # --- spec -----------------------------------------------------------------------------
    def _parse_spec(self) -> tuple[str, str | None, str | None]:
        model = (self.cfg.model or "").strip()
        if not model:
            raise ModelLoadError("embedder.model is empty; give an open_clip model name such as ViT-B-32")
        pretrained = (self.cfg.pretrained or "").strip() or None
        if model.startswith(("hf-hub:", "local-dir:")):
            return model, None, model.split(":", 1)[0]  # these carry their own weights
        return model, pretrained, None

    @property
    def model_id(self) -> str:
        if self._schema:
            return f"open_clip:{self._name}"
        name = Path(self._name).stem if self._name.endswith(".json") else self._name
        return f"open_clip:{name}/{self._pretrained or 'random-init'}"

    def _fail(self, reason: str, advice: str = "") -> ModelLoadError:
        what = f"open_clip model {self.cfg.model!r}"
        if not self._schema:
            what += f" with pretrained {self.cfg.pretrained!r}"
        return ModelLoadError(f"could not load {what}: {reason}" + (f". {advice}" if advice else ""))

    def _model_name(self) -> str:
        """The name open_clip should look up, registering config files as needed."""
        import open_clip

        register_model_configs(MODEL_CONFIG_DIR)
        if self._schema == "local-dir":
            # open_clip warns and falls back to random weights when the folder has none.
            folder = Path(self._name.split(":", 1)[1])
            if not (folder / "open_clip_config.json").is_file():
                raise self._fail(f"{str(folder)!r} has no open_clip_config.json",
                                 "A local-dir: model is a folder with open_clip_config.json and its weights")
            if not any(folder.glob(f"*{ext}") for ext in (".safetensors", ".bin", ".pth")):
                raise self._fail(f"{str(folder)!r} has no weights (*.safetensors, *.bin or *.pth)")
        if self._schema:
            return self._name
        if not self._name.endswith(".json"):
            name = self._name.replace("/", "-")  # as open_clip does: ViT-B/32 -> ViT-B-32
            if name not in open_clip.list_models():
                raise self._fail(
                    "unknown model name",
                    "Use an open_clip name (`python -c 'import open_clip; print(open_clip.list_models())'`), "
                    "'hf-hub:ORG/REPO', 'local-dir:PATH', or the path of a model config JSON file",
                )
            return name
        path = Path(self._name)
        if not path.is_file():
            raise self._fail(f"model config file {str(path)!r} does not exist")
        try:
            mcfg = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self._fail(f"model config file {str(path)!r} is not readable JSON ({exc})") from None
        missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if not isinstance(mcfg, dict) or k not in mcfg]
        if missing:
            raise self._fail(f"model config file {str(path)!r} lacks {', '.join(missing)} "
                             "(an open_clip model config has embed_dim, vision_cfg and text_cfg)")
        name = path.stem
        known = open_clip.get_model_config(name)
        if known is None or known == mcfg:
            register_model_configs(path)
        elif path.resolve() in _registered_config_paths:
            open_clip.add_model_config(path.resolve())  # the file changed since it was registered: rescan
        else:
            raise self._fail(
                f"model config file {str(path)!r} would replace the different {name!r} config already known "
                "to open_clip",
                "Rename the file: a model config is registered under its file name (stem)",
            )
        return name

    def _checkpoint_or_tag(self, name: str) -> str | None:
        """Check ``pretrained`` before open_clip does, to fail with a useful message."""
        import open_clip

        pre = self._pretrained
        if self._schema or pre is None:
            return pre
        if open_clip.get_pretrained_cfg(name, pre):
            return pre
        if os.path.isfile(pre):
            return pre
        if os.sep in pre or pre.endswith(_CHECKPOINT_SUFFIXES) or os.path.exists(pre):
            raise self._fail(f"checkpoint {pre!r} is not a file", "Pass the path of a saved state_dict "
                             "(.pt/.bin/.safetensors) or an open_clip pretrained tag")
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise self._fail(
            "not a known pretrained tag for this model nor an existing file",
            f"Known tags for {name}: {', '.join(tags) if tags else 'none (pass a checkpoint path)'}",
        )

    @property
    def model(self) -> torch.nn.Module:
        """The loaded open_clip model (after `setup`), e.g. to save a checkpoint."""
        if self._model is None:
            raise EmbedderError("the model is not loaded yet; call setup() first")
        return self._model

    # --- lifecycle ------------------------------------------------------------------------
    def setup(self) -> None:
        """Load model, preprocessing and tokenizer on the configured device (once)."""
        if self._model is not None:
            return
        import open_clip
        import torch

        self.device = _resolve_device(self.cfg.device)
        self.precision = _resolve_precision(self.cfg.precision, self.device)
        self._dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.precision]
        name = self._model_name()
        pretrained = self._checkpoint_or_tag(name)
        cache_dir = self.cfg.cache_dir or None
        if self._schema == "hf-hub":
            # open_clip falls back to random weights (with only a log line) when an hf-hub repo's
            # config is cached but its weights are not; resolve the weights first so that fails.
            from open_clip.pretrained import download_pretrained_from_hf

            try:
                download_pretrained_from_hf(name.split(":", 1)[1], cache_dir=cache_dir)
            except Exception as exc:  # noqa: BLE001 - hub errors come in many types
                raise self._fail(f"{type(exc).__name__}: {exc}", _offline_advice()) from None
        try:
            # Seeded inside a forked RNG: a random-init model (tests, benchmarks) is the same in
            # every process and after a restart, and the caller's global RNG is left untouched.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model, _, preprocess = open_clip.create_model_and_transforms(
                    name,
                    pretrained=pretrained,
                    precision=self.precision,
                    device=self.device,
                    cache_dir=cache_dir,
                    pretrained_text=False,  # random init means random: no surprise download of a text tower
                )
            tokenizer = open_clip.get_tokenizer(name, cache_dir=cache_dir)
        except ModelLoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - open_clip raises RuntimeError for most things
            msg = f"{type(exc).__name__}: {exc}"
            low = msg.lower()
            if "download" in low or "hub" in low or "connection" in low or "cache" in low:
                raise self._fail(msg, _offline_advice()) from None
            if pretrained is not None and os.path.isfile(pretrained):
                raise self._fail(msg, "The checkpoint does not match this model architecture, or is not an "
                                      "open_clip state_dict; check --embedder.model") from None
            raise self._fail(msg) from None
        model.eval()
        self._model, self._preprocess, self._tokenizer = model, preprocess, caption_tokens(tokenizer)
        self._batcher = BatchPreprocess(preprocess)
        self.decode = self._setup_decode()
        # Dimensions from a real forward pass: also proves the model runs before any data arrives.
        from PIL import Image

        Image.init()  # Pillow's format plugins: imported now, not inside the first batch (~50 ms)
        with torch.inference_mode():
            img = self._preprocess(Image.new("RGB", (8, 8))).unsqueeze(0)
            self.image_dim = int(self._encode_images(img).shape[1])
            self.text_dim = int(self._encode_tokens(self._tokenizer([""])).shape[1])
        log.info("loaded %s on %s (%s), image dim %d, text dim %d, %s decoding", self.model_id, self.device,
                 self.precision, self.image_dim, self.text_dim, self.decode)

    def _setup_decode(self) -> str:
        spec = (self.cfg.decode or "auto").strip().lower()
        if spec not in DECODERS:
            raise ModelLoadError(f"embedder.decode {spec!r} is not supported; use {', '.join(map(repr, DECODERS))}")
        assert self.device is not None
        if spec == "pil" or (spec == "auto" and not self.device.startswith("cuda")):
            return "pil"
        import open_clip

        from curator.embed.jpeg import JpegPreprocess

        try:
            self._jpeg = JpegPreprocess(open_clip.get_model_preprocess_cfg(self._model), self.device)
        except (ValueError, KeyError, TypeError) as exc:
            if spec == "torch":
                raise self._fail(f"embedder.decode = 'torch' cannot preprocess for this model ({exc})",
                                 "Use --embedder.decode pil (or auto)") from None
            log.info("decoding images with Pillow: %s", exc)
            return "pil"
        return "torch"

    def _encode_images(self, batch: torch.Tensor) -> np.ndarray:
        feats = self._model.encode_image(batch.to(self.device, dtype=self._dtype))
        return feats.float().cpu().numpy()

    def _encode_tokens(self, tokens: torch.Tensor) -> np.ndarray:
        feats = self._model.encode_text(tokens.to(self.device))
        return feats.float().cpu().numpy()

    # --- embedding --------------------------------------------------------------------------
    def _pil_image(self, data: bytes, hashes: ContentHashes, i: int) -> tuple[Any, np.ndarray]:
        """Row i's image prepared for `BatchPreprocess.batch` and its decoded pixels; its content keys
        go into `hashes`."""
        im = decode_image(data, self.limits)
        try:
            rgb = np.array(im)  # writable: torch takes it without a copy
            hashes.set_picture(i, data, rgb, self.keys)
            assert self._batcher is not None, "call setup() first"
            return self._batcher.prepare(im), rgb
        finally:
            im.close()

    def _via_pil(self, todo: list[tuple[int, bytes | None]], uris: list[Any], pil: dict[int, Any],
                 pixels: dict[int, np.ndarray], errors: dict[int, Fault], hashes: ContentHashes) -> None:
        """Decode and prepare these rows with Pillow, into `pil` and `pixels` (or `errors`, saying why
        not), in row order. Pillow decodes and resizes without the GIL, so the rows go to
        `decode_threads` threads: an actor given several CPUs (a GPU's feeder) or `curator ingest` on a
        multi-core machine decodes on all of them. Small pictures are mostly Python around Pillow, which
        holds the GIL, so a batch of them stays on this thread (`POOL_MIN_BYTES`); images read from
        URIs always go to the threads. Each row's result is its own, whatever the threads."""

        def one(row: tuple[int, bytes | None]) -> tuple[Any, np.ndarray] | Fault:
            i, data = row
            try:
                data = data if data is not None else fetch_image_bytes(uris[i] or "", self.limits)
                return self._pil_image(data, hashes, i)
            except InvalidRecord as exc:
                return Fault.of(exc)
            except Exception as exc:  # noqa: BLE001 - a transform failing on one odd image
                return Fault("image-undecodable", f"image could not be preprocessed ({type(exc).__name__}: {exc})")

        pool = self._decode_pool() if len(todo) > 1 else None
        if pool is not None and all(d is not None for _, d in todo) and sum(len(d) for _, d in todo) < POOL_MIN_BYTES * len(todo):
            pool = None  # small pictures
        if pool is None:
            done = [one(row) for row in todo]
        else:  # a contiguous share of the rows per thread: a future per row would cost more than a small picture
            shares = np.array_split(np.arange(len(todo)), self._threads)
            done = [out for part in pool.map(lambda rows: [one(todo[r]) for r in rows], shares) for out in part]
        for (i, _), out in zip(todo, done, strict=True):
            if isinstance(out, Fault):
                errors[i] = out
            else:
                pil[i], pixels[i] = out

    def _decode_pool(self) -> ThreadPoolExecutor | None:
        """The decoding threads (None: decode in the calling thread). 0 = as many as torch computes
        with: the CPUs Ray gave the actor (it sets OMP_NUM_THREADS), else the machine's cores."""
        if self._threads == 0:
            import torch

            self._threads = int(self.cfg.decode_threads) or torch.get_num_threads()
            if self._threads > 1:
                self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="curator-decode")
        return self._pool

    def _image_batch(self, rows: list[int], images: list[Any], uris: list[Any], errors: dict[int, Fault],
                     hashes: ContentHashes) -> tuple[list[int], torch.Tensor | None]:
        """The rows (of `rows`) whose image decodes, and their preprocessed images on the device; the
        others go into `errors`. JPEGs go through the device decoder when it is on, everything else
        -- and what it fails to decode -- through Pillow (`_via_pil`, on the decoding threads). The decoded rows'
        content hashes go into `hashes` (the perceptual one from the pixels where they were decoded)."""
        import torch

        pil: dict[int, Any] = {}  # row -> prepared for the batch (`BatchPreprocess`)
        pixels: dict[int, np.ndarray] = {}  # row -> decoded pixels, for its thumbnail
        thumbs: dict[int, np.ndarray] = {}
        jpegs: list[tuple[int, bytes, tuple[int, int]]] = []

        on_cpu: list[tuple[int, bytes | None]] = []  # rows Pillow decodes (None: read the row's URI)
        for i in rows:
            data = images[i]
            if self._jpeg is not None:
                try:
                    data = data if data is not None else fetch_image_bytes(uris[i] or "", self.limits)
                    size = jpeg_size(data, self.limits)
                except InvalidRecord as exc:
                    errors[i] = Fault.of(exc)
                    continue
                if size is not None:
                    jpegs.append((i, data, size))
                    continue
            on_cpu.append((i, data))
        self._via_pil(on_cpu, uris, pil, pixels, errors, hashes)
        decoded: dict[int, int] = {}  # row -> its place in `batch`
        batch = None
        if jpegs and self._jpeg is not None:
            batch, done, device_thumbs = self._jpeg.with_thumbnails([d for _, d, _ in jpegs], [z for _, _, z in jpegs])
            decoded = {jpegs[j][0]: p for p, j in enumerate(done)}
            for p, j in enumerate(done):
                i, data, _ = jpegs[j]
                thumbs[i] = device_thumbs[p]
                hashes.set_picture(i, data, None, self.keys)  # the pixels stay on the device: no pixel key
            # what the device could not decode: Pillow decodes it or says why
            self._via_pil([(i, data) for i, data, _ in jpegs if i not in decoded], uris, pil, pixels, errors, hashes)
        ok = [i for i in rows if i in pil or i in decoded]
        if pixels:  # one call for the batch: pictures of one shape are resized together
            small = thumbnails([torch.from_numpy(p).permute(2, 0, 1) for p in pixels.values()])
            thumbs.update(zip(pixels, small, strict=True))
        hashes.set_phash(ok, np.stack([thumbs[i] for i in ok]) if ok else np.zeros((0, 32, 32), np.float32))
        if not ok:
            return [], None
        if batch is not None and len(decoded) == len(ok):
            return ok, batch  # all decoded on the device, in row order
        on_host = [i for i in ok if i in pil]
        assert self._batcher is not None, "call setup() first"
        host = self._batcher.batch([pil[i] for i in on_host])
        if not decoded:
            return ok, host
        out = torch.empty((len(ok), *host.shape[1:]), dtype=torch.float32, device=self.device)
        place = {i: p for p, i in enumerate(on_host)}
        for p, i in enumerate(ok):
            out[p] = batch[decoded[i]] if i in decoded else host[place[i]]  # type: ignore[index]
        return ok, out

    def embed(self, samples: pa.Table) -> Embeddings:
        import torch

        self.setup()
        assert self.image_dim is not None and self.text_dim is not None
        n = samples.num_rows
        bs = max(1, int(self.cfg.batch_size))
        errors: dict[int, Fault] = {}
        images, uris, texts = column(samples, "image"), column(samples, "image_uri"), column(samples, "text")
        img_out = np.zeros((n, self.image_dim), np.float32)
        txt_out = np.zeros((n, self.text_dim), np.float32)
        has_img = np.zeros(n, bool)
        has_txt = np.zeros(n, bool)
        hashes = ContentHashes.empty(n)

        with torch.inference_mode():
            # A batch of images at a time, so memory holds at most a batch of model-sized tensors
            # (and, on the device path, a bounded number of decoded pixels), never a whole table's.
            img_rows = [i for i in range(n) if images[i] is not None or uris[i]]
            for start in range(0, len(img_rows), bs):
                rows, batch = self._image_batch(img_rows[start:start + bs], images, uris, errors, hashes)
                if batch is not None:
                    img_out[rows] = self._encode_images(batch)
                    has_img[rows] = True

            text_rows = [i for i in range(n) if isinstance(texts[i], str) and texts[i].strip() and i not in errors]
            # Each distinct caption is tokenised and embedded once, its copies given its vector: a stream
            # repeats captions (templated alt-text, one caption under many pictures), and the text tower
            # costs about what the image tower does.
            place: dict[str, int] = {}
            for i in text_rows:
                place.setdefault(texts[i], len(place))
            captions = list(place)
            vecs = np.zeros((len(captions), self.text_dim), np.float32)
            for s in range(0, len(captions), bs):
                vecs[s:s + bs] = self._encode_tokens(self._tokenizer(captions[s:s + bs]))
            if text_rows:
                txt_out[text_rows] = vecs[[place[texts[i]] for i in text_rows]]
                has_txt[text_rows] = True
            keys = [text_key(c, self.keys) for c in captions]
            for i in text_rows:
                hashes.text[i] = keys[place[texts[i]]]

        for i in range(n):
            if i not in errors and not has_img[i] and not has_txt[i]:
                errors[i] = Fault("nothing-to-embed", "nothing for the CLIP embedder to embed: the record has no "
                                  "image, image_uri or caption (records with only an 'embedding' need "
                                  "--embedder.kind precomputed)")
        img_out, img_ok = normalise_rows(img_out)
        txt_out, txt_ok = normalise_rows(txt_out)
        for j in np.flatnonzero((has_img & ~img_ok) | (has_txt & ~txt_ok)):
            errors[int(j)] = Fault("embed-failed", f"the model produced a non-finite or zero embedding "
                                                   f"({self.precision} overflow?); try --embedder.precision fp32")
        if errors:
            bad = np.fromiter(errors, dtype=np.int64)
            has_img[bad] = has_txt[bad] = False
            img_out[bad] = 0.0
            txt_out[bad] = 0.0
        return Embeddings(
            image=img_out if has_img.any() else None,
            text=txt_out if has_txt.any() else None,
            has_image=has_img,
            has_text=has_txt,
            errors=errors,
            hashes=hashes,
        )

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Unit-norm text embeddings (len(texts), text_dim); an empty list gives (0, text_dim)."""
        import torch

        self.setup()
        assert self.text_dim is not None
        out = np.zeros((len(texts), self.text_dim), np.float32)
        bs = max(1, int(self.cfg.batch_size))
        with torch.inference_mode():
            for s in range(0, len(texts), bs):
                out[s:s + bs] = self._encode_tokens(self._tokenizer([str(t) for t in texts[s:s + bs]]))
        normed, good = normalise_rows(out)
        if not good.all():
            raise EmbedderError(
                f"the model produced non-finite text embeddings for {int((~good).sum())} text(s) "
                f"({self.precision} overflow?); try --embedder.precision fp32"
            )
        return normed
