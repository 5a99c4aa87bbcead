"""Decoding untrusted media exactly as the worker does, and the one error type of a refused or
failed medium. Training, evaluation and the worker all decode through here, so a model is
trained on the pixels it will serve."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import io
import threading
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

# Decoders exposed to seller bytes: the common web formats only. This keeps out e.g. EPS (which
# runs Ghostscript) and the long tail of rarely used, less hardened Pillow plugins.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")


class MediaError(Exception):
    """A refused or failed media load; ``code`` is machine-readable, the message is for humans.

    Codes: ``bad_scheme`` (not file/http/https, redirects included), ``bad_url`` (unparsable,
    userinfo, bad host, port or path), ``not_found``, ``outside_media_root``, ``not_a_file``
    (directory, device, fifo, socket), ``unreadable`` (other local I/O errors, a symlink swapped
    in while opening included), ``dns_error``, ``blocked_address`` (a non-public address),
    ``connection_error``, ``tls_error``, ``http_error`` (non-2xx status), ``too_many_redirects``,
    ``too_large``, ``truncated`` (body or image file cut short), ``timeout`` (the overall
    deadline), ``not_an_image`` (empty, unknown or not allowed format), ``too_many_pixels``,
    ``corrupt_image`` (an allowed format that does not decode).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


# What the decoder keeps of an image. The image encoder resizes the shorter side to 256 px and
# crops 224 px, so twice that (512 px) keeps a margin for its own resampling; the pixel cap
# bounds images of extreme aspect ratio (a 4:1 banner keeps its 512 px shorter side).
# Measured on 64 Myntra photos and the 2 scikit-learn photos upscaled to 2400-6000 px (JPEG q90
# and PNG): the image encoder's vectors of these decodes have a cosine to those of a full-size
# decode of min 0.9988, mean 0.9997; tests hold it to KEPT_COSINE.
KEPT_SHORT_SIDE = 512
KEPT_MAX_PIXELS = 1 << 20
KEPT_COSINE = 0.998
# Bumped whenever the same bytes decode to other pixels: caches keyed by content include it.
DECODER_VERSION = "d2"
# One pixel of a decoded image costs 4 bytes in Pillow (RGB is stored as RGBX); converting a
# 16-bit, palette or transparent image holds up to three full-size copies at once.
BYTES_PER_PIXEL = 4
_BACKGROUND = (255, 255, 255)  # transparent parts of product photos are shown on white
_ORIENTATION = {  # EXIF orientation tag -> the transpose that shows the photo upright
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
MMAP_THRESHOLD_BYTES = 4 << 20


def _return_large_buffers_to_the_os() -> None:
    """Make glibc hand freed full-size decode buffers back to the OS at once.

    Pillow allocates a large image in 16 MiB blocks. glibc raises its mmap threshold up to
    32 MiB after the first such block is freed, so later ones come from the decoding thread's
    malloc arena, which keeps them: with the pipeline's 8 media threads, a batch of 6000x6000
    PNGs left the process at 1.3 GB instead of 0.2 GB. A fixed 4 MiB threshold keeps every block
    mmapped. Process-wide, and a no-op where the C library is not glibc.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError, TypeError):
        pass


_return_large_buffers_to_the_os()


@dataclass(frozen=True)
class ImageHeader:
    """What decoding one image will cost, read from its header without decoding pixels.

    ``decode_pixels`` is the size of the buffer the decoder fills (the JPEG draft size, else the
    full image): memory at the peak is about ``BYTES_PER_PIXEL`` bytes per pixel of it, times up to
    three for 16-bit, palette and transparent images. ``kept_pixels`` is what ``load_image``
    returns and a batch holds until it is encoded (at most ``KEPT_MAX_PIXELS``).
    """

    format: str
    width: int
    height: int
    decode_pixels: int
    kept_size: tuple[int, int]

    @property
    def kept_pixels(self) -> int:
        return self.kept_size[0] * self.kept_size[1]


class PixelBudget:
    """At most ``capacity`` pixels being decoded at once, across threads.

    The pipeline decodes a batch's images on a thread pool; each decode holds a full-size buffer
    until it is downscaled. Sharing one budget makes the transient memory of a batch
    ``capacity * BYTES_PER_PIXEL`` (x3 at worst) whatever the pool size. An image larger than the
    whole budget waits until it can be decoded alone.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a pixel budget must be positive, not {capacity}")
        self.capacity = capacity
        self._used = 0
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, pixels: int) -> Iterator[None]:
        pixels = min(pixels, self.capacity)
        with self._changed:
            self._changed.wait_for(lambda: self._used + pixels <= self.capacity)
            self._used += pixels
        try:
            yield
        finally:
            with self._changed:
                self._used -= pixels
                self._changed.notify_all()


def probe_image(data: bytes, max_pixels: int) -> ImageHeader:
    """The header of an untrusted image, refused like ``load_image`` would on its header."""
    with _open(data, max_pixels) as image:
        return _plan(image)


def load_image(data: bytes, max_pixels: int, budget: PixelBudget | None = None) -> Image.Image:
    """Decode an untrusted image to upright RGB of at most ``KEPT_SHORT_SIDE`` px on its shorter side.

    Bombs are refused on the header before decoding pixels. JPEGs are decoded downscaled by the
    DCT (draft mode); other formats are decoded at full size, inside ``budget`` when given, and
    downscaled before anything else is done to them. Modes with more than 8 bits, palettes and
    transparency are converted as a viewer shows them: 16-bit levels scaled to 8 bits, transparent
    parts on white. ``ImageFile.LOAD_TRUNCATED_IMAGES`` must stay False so a cut-off file raises
    ``truncated``.
    """
    with _open(data, max_pixels) as image:
        header = _plan(image)
        with budget.reserve(header.decode_pixels) if budget is not None else contextlib.nullcontext():
            try:
                image.load()  # first frame only, for animated formats
                orientation = _orientation(image)  # after load: PNG's getexif() loads the pixels
                small = _downscale(as_shown(image), header.kept_size)
                if orientation is not None:
                    small = small.transpose(orientation)
                return small.convert("RGB")
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise MediaError("too_many_pixels", str(exc)) from exc
            except Exception as exc:  # decoder errors on hostile bytes
                code = _decode_error_code(exc)
                raise MediaError(code, f"{header.format} {header.width}x{header.height}: {exc}") from exc


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Open lazily (header only) and refuse too many pixels.

    Pillow's own bomb check (``Image.MAX_IMAGE_PIXELS``) is process-global and too lax for us, so
    it is left alone and the size is checked here against ``max_pixels``; its error and warning
    (raised as an error under ``-W error``) are still mapped to ``too_many_pixels``.
    """
    if not data:
        raise MediaError("not_an_image", "empty file")
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise MediaError("too_many_pixels", str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise MediaError("not_an_image", f"not a {'/'.join(IMAGE_FORMATS)} image") from exc
    except Exception as exc:  # any plugin failure on hostile bytes
        raise MediaError(_decode_error_code(exc), f"unreadable image header: {exc}") from exc
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise MediaError("too_many_pixels", f"{width}x{height} {image.format} > {max_pixels} pixels")
    if width < 1 or height < 1:
        image.close()
        raise MediaError("corrupt_image", f"{width}x{height} {image.format} has no pixels")
    return image


def _plan(image: Image.Image) -> ImageHeader:
    """The kept size, and the JPEG draft (a no-op for other formats) set on the unloaded image."""
    width, height = image.size
    scale = min(1.0, KEPT_SHORT_SIDE / min(width, height), (KEPT_MAX_PIXELS / (width * height)) ** 0.5)
    kept = (max(1, round(width * scale)), max(1, round(height * scale)))
    if scale < 1.0:
        try:
            image.draft(None, kept)  # JPEG: decode at 1/2, 1/4 or 1/8 scale, never below ``kept``
        except Exception as exc:  # hostile JPEG headers
            raise MediaError(_decode_error_code(exc), f"unreadable image header: {exc}") from exc
    return ImageHeader(image.format or "?", width, height, image.size[0] * image.size[1], kept)


def _orientation(image: Image.Image) -> Image.Transpose | None:
    """The transpose named by the EXIF orientation tag: phone photos are often stored sideways."""
    try:
        return _ORIENTATION.get(image.getexif().get(ExifTags.Base.Orientation))
    except Exception:  # a malformed EXIF block does not make the pixels unusable
        return None


def as_shown(image: Image.Image) -> Image.Image:
    """L or RGB, 8 bits a channel, without transparency: what a viewer shows on a white page.

    16-bit levels (``I;16*``, and ``I``, which holds them) keep their top 8 bits; ``F`` is read
    as levels 0-255 as Pillow does; transparent parts (alpha, a palette's or a tRNS colour key)
    are composited on white; CMYK and other modes go through Pillow's conversion.
    """
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # PNG's 16-bit greyscale; Pillow's own conversion clips it at 255 (all white)
        levels = np.asarray(image).astype(np.uint32).clip(0, 0xFFFF) >> 8
        return Image.fromarray(levels.astype(np.uint8), "L")
    if image.mode == "F":  # Pillow's convention: levels 0-255
        return Image.fromarray(np.asarray(image).clip(0, 255).round().astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode in ("L", "RGB") and "transparency" in image.info:  # a tRNS colour key
        image = image.convert("RGBA")
    elif image.mode == "1":
        image = image.convert("L")
    if image.mode in ("LA", "La", "PA", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, _BACKGROUND)
        background.paste(image, mask=image.getchannel("A"))
        return background
    if image.mode not in ("L", "RGB"):  # CMYK, YCbCr, LAB, ...
        return image.convert("RGB")
    return image


def _downscale(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Box-reduce by an integer factor, then resample to exactly ``size``: cheap and alias-free."""
    if image.size == size:
        return image
    return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)


def _decode_error_code(exc: Exception) -> str:
    """Pillow reports a cut-off file as OSError('image file is truncated ...' or 'Truncated File
    Read') or EOFError; anything else is corrupt data."""
    if isinstance(exc, EOFError) or "truncated" in str(exc).lower():
        return "truncated"
    return "corrupt_image"
