"""Decoding untrusted image bytes and fetching images by URI, safely.

Everything here treats its input as hostile: a stream message can carry a truncated
file, a decompression bomb, an exotic format whose decoder shells out (EPS runs
Ghostscript), or a URI pointing at a FIFO or a slow server. Each of those becomes an
:class:`~curator.records.InvalidRecord` whose message is the reason recorded in the
dead-letter sink; nothing here lets a bad item stop the stream.
"""

from __future__ import annotations

import http.client
import io
import stat
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from curator.records import InvalidRecord, Limits

#: Formats we agree to decode. Pillow knows many more (EPS, PSD, FITS, ...); some are
#: rarely seen in datasets and poorly hardened, and EPS hands the bytes to Ghostscript.
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")

#: URI schemes `load_image_uri` understands (a URI without a scheme is a local path).
SUPPORTED_SCHEMES: tuple[str, ...] = ("file", "http", "https")

_USER_AGENT = "curator/0.1 (image fetch)"
_CHUNK = 1 << 16
_HEADERS = threading.Lock()  # see `_bombs_raise`


def _allowed_formats() -> tuple[str, ...]:
    Image.init()  # registers every plugin Pillow has; we then keep only our allow-list
    return tuple(f for f in ALLOWED_FORMATS if f in Image.OPEN)


def _checked_bytes(data: bytes, limits: Limits) -> bytes:
    if isinstance(data, memoryview):
        data = data.tobytes()
    if not isinstance(data, (bytes, bytearray)):
        raise InvalidRecord(f"image must be bytes, got {type(data).__name__}", "bad-field")
    if len(data) == 0:
        raise InvalidRecord("image is empty (0 bytes)", "image-undecodable")
    if len(data) > limits.max_image_bytes:
        raise InvalidRecord(f"image is {len(data)} bytes, over the limit of {limits.max_image_bytes}", "too-large")
    return data


def _open_header(data: bytes, formats: tuple[str, ...], limits: Limits) -> Image.Image | None:
    """Read the header only (lazy open) and apply the pixel-count guards; None: no plugin of `formats`
    knows the data. Call inside `_bombs_raise()`."""
    try:
        im = Image.open(io.BytesIO(data), formats=list(formats))
    except UnidentifiedImageError:
        return None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidRecord(f"image rejected as a decompression bomb: {exc}", "too-large") from None
    except Exception as exc:  # noqa: BLE001 - any plugin error on hostile input is a bad record
        raise InvalidRecord(f"image header could not be read ({type(exc).__name__}: {exc})",
                            "image-undecodable") from None
    try:
        width, height = im.size
        if width <= 0 or height <= 0:
            raise InvalidRecord(f"image has an empty size {width}x{height}", "image-undecodable")
        if width * height > limits.max_image_pixels:
            raise InvalidRecord(
                f"image is {width}x{height} = {width * height} pixels, over the limit of "
                f"{limits.max_image_pixels} (decompression-bomb guard; raise Limits.max_image_pixels "
                "if such images are expected)",
                "too-large",
            )
    except BaseException:
        im.close()
        raise
    return im


def decode_image(data: bytes, limits: Limits | None = None) -> Image.Image:
    """Decode image bytes into an RGB image, or raise InvalidRecord saying why not.

    The pixel count is checked from the header *before* any pixel is decoded, so a
    small file that claims 100000x100000 pixels costs nothing. Pillow's own bomb
    guard (``Image.MAX_IMAGE_PIXELS``) also applies: its warning is treated as an error
    here, so the effective limit is the smaller of the two.
    """
    limits = limits or Limits()
    data = _checked_bytes(data, limits)
    formats = _allowed_formats()
    with _bombs_raise():
        im = _open_header(data, formats, limits)
    if im is None:
        raise InvalidRecord(
            f"not a supported image ({len(data)} bytes, starts with {bytes(data[:8])!r}); "
            f"supported formats: {', '.join(formats)}",
            "image-undecodable",
        )
    try:
        try:
            im.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise InvalidRecord(f"image rejected as a decompression bomb: {exc}", "too-large") from None
        except Exception as exc:  # noqa: BLE001 - truncated/corrupt data raises many types
            reason = str(exc) or type(exc).__name__
            kind = "truncated" if "truncated" in reason.lower() else "corrupt"
            raise InvalidRecord(f"{im.format} image is {kind} and could not be decoded ({reason})",
                                "image-undecodable") from None
        try:
            rgb = _to_rgb(im)
        except Exception as exc:  # noqa: BLE001 - e.g. an exotic mode with no RGB conversion
            raise InvalidRecord(f"{im.format} image in mode {im.mode} cannot be converted to RGB ({exc})",
                                "image-undecodable") from None
    except BaseException:
        im.close()
        raise
    if rgb is not im:
        im.close()
    return rgb  # an RGB picture itself: it was read from memory, so closing it frees no file


@contextmanager
def _bombs_raise() -> Iterator[None]:
    """Pillow's DecompressionBombWarning (between MAX_IMAGE_PIXELS and twice that; Pillow checks when it
    reads the header) raised as an error. `warnings.catch_warnings` swaps process-wide state, so
    threads decoding at once (`embedder.decode_threads`) take turns reading headers; their pixels are
    decoded outside."""
    with _HEADERS, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def jpeg_size(data: bytes, limits: Limits | None = None) -> tuple[int, int] | None:
    """(width, height) when `data` is a JPEG a JPEG decoder other than Pillow's may take (RGB or grayscale,
    complete up to its end marker), after the guards `decode_image` applies, with the same reasons;
    None for anything else: decode that with `decode_image` (it says what is wrong, if anything).

    Only the header is read (~20 us), so a bomb is refused before any decoder sees its pixels."""
    limits = limits or Limits()
    data = _checked_bytes(data, limits)
    if not (data.startswith(b"\xff\xd8\xff") and data.endswith(b"\xff\xd9")):
        return None  # not a JPEG, or truncated: Pillow's reasons for those are the ones recorded
    with _bombs_raise():
        try:
            im = _open_header(data, ("JPEG",), limits)
        except InvalidRecord as exc:
            if "header could not be read" in str(exc):
                return None  # decode_image, trying every allowed format, words this one
            raise
    if im is None:
        return None
    try:
        return im.size if im.format == "JPEG" and im.mode in ("RGB", "L") else None
    finally:
        im.close()


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im  # a copy cost ~7% of a photograph's decoding (~160 of ~2,300 us, a one-off timer)
    if im.mode == "P" and "transparency" in im.info:
        # Going through RGBA avoids Pillow's warning about palette transparency.
        return im.convert("RGBA").convert("RGB")
    return im.convert("RGB")


def fetch_image_bytes(uri: str, limits: Limits | None = None, timeout: float = 10.0) -> bytes:
    """Read the bytes an ``image_uri`` points at, never more than ``limits.max_image_bytes``.

    Local paths and ``file://`` URIs must name regular files (a FIFO or device would
    block or never end). ``http(s)://`` downloads get ``timeout`` seconds in total,
    not per read, so a server that drips bytes cannot hold a worker.
    """
    limits = limits or Limits()
    if not isinstance(uri, str) or not uri.strip():
        raise InvalidRecord("image_uri must be a non-empty string", "bad-field")
    uri = uri.strip()
    parsed = urllib.parse.urlsplit(uri)
    scheme = parsed.scheme.lower()
    if scheme in ("http", "https"):
        return _fetch_http(uri, limits.max_image_bytes, timeout)
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise InvalidRecord(f"file:// URI names a remote host {parsed.netloc!r}; only local files are supported",
                                "image-unreadable")
        return _read_local(Path(urllib.request.url2pathname(parsed.path)), limits.max_image_bytes)
    if scheme == "":
        return _read_local(Path(uri), limits.max_image_bytes)
    raise InvalidRecord(
        f"unsupported image_uri scheme {scheme!r} in {uri[:200]!r}; supported: local paths, "
        + ", ".join(f"{s}://" for s in SUPPORTED_SCHEMES),
        "image-unreadable",
    )


def load_image_uri(uri: str, limits: Limits | None = None, timeout: float = 10.0) -> Image.Image:
    """Fetch and decode the image an ``image_uri`` points at (see `fetch_image_bytes`)."""
    return decode_image(fetch_image_bytes(uri, limits, timeout), limits)


def _read_local(path: Path, cap: int) -> bytes:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InvalidRecord(f"image file {str(path)[:300]!r} does not exist", "image-unreadable") from None
    except OSError as exc:
        raise InvalidRecord(f"image file {str(path)[:300]!r} cannot be read ({exc.strerror or exc})",
                            "image-unreadable") from None
    if not stat.S_ISREG(st.st_mode):
        raise InvalidRecord(f"image path {str(path)[:300]!r} is not a regular file", "image-unreadable")
    if st.st_size > cap:
        raise InvalidRecord(f"image file {str(path)[:300]!r} is {st.st_size} bytes, over the limit of {cap}",
                            "too-large")
    try:
        with open(path, "rb") as fh:
            data = fh.read(cap + 1)  # the file may have grown since stat
    except OSError as exc:
        raise InvalidRecord(f"image file {str(path)[:300]!r} cannot be read ({exc.strerror or exc})",
                            "image-unreadable") from None
    if len(data) > cap:
        raise InvalidRecord(f"image file {str(path)[:300]!r} is over the limit of {cap} bytes", "too-large")
    return data


def _fetch_http(uri: str, cap: int, timeout: float) -> bytes:
    short = uri[:300]
    deadline = time.monotonic() + timeout
    req = urllib.request.Request(uri, headers={"User-Agent": _USER_AGENT, "Accept": "image/*"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - scheme checked by caller
            length = resp.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > cap:
                raise InvalidRecord(f"image at {short} is {length} bytes, over the limit of {cap}", "too-large")
            chunks: list[bytes] = []
            size = 0
            while True:
                if time.monotonic() > deadline:
                    raise InvalidRecord(f"image at {short} took longer than {timeout:g}s to download",
                                        "image-unreadable")
                chunk = resp.read(min(_CHUNK, cap + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size > cap:
                    raise InvalidRecord(f"image at {short} is over the limit of {cap} bytes", "too-large")
    except InvalidRecord:
        raise
    except urllib.error.HTTPError as exc:
        raise InvalidRecord(f"could not fetch image at {short}: HTTP {exc.code} {exc.reason}",
                            "image-unreadable") from None
    except urllib.error.URLError as exc:
        raise InvalidRecord(f"could not fetch image at {short}: {exc.reason}", "image-unreadable") from None
    except TimeoutError:
        raise InvalidRecord(f"could not fetch image at {short}: timed out after {timeout:g}s",
                            "image-unreadable") from None
    except (OSError, ValueError, http.client.HTTPException) as exc:  # connection reset, malformed URL, bad chunked encoding ...
        raise InvalidRecord(f"could not fetch image at {short}: {type(exc).__name__}: {exc}",
                            "image-unreadable") from None
    data = b"".join(chunks)
    if not data:
        raise InvalidRecord(f"image at {short} is empty (0 bytes)", "image-unreadable")
    return data
