"""Decoding untrusted media exactly as the worker does, and the one error type of a refused or
failed medium. Training, evaluation and the worker all decode through here, so a model is
trained on the pixels it will serve."""

from __future__ import annotations

import io

from PIL import Image, ImageOps, UnidentifiedImageError

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



def load_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode an untrusted image to RGB, refusing bombs on the header before decoding pixels.

    Pillow's own bomb check (``Image.MAX_IMAGE_PIXELS``) is process-global and too lax for us, so
    it is left alone and the size is checked here against ``max_pixels``; its error and warning
    (raised as an error under ``-W error``) are still mapped to ``too_many_pixels``.
    ``ImageFile.LOAD_TRUNCATED_IMAGES`` must stay False so a cut-off file raises ``truncated``.
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
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise MediaError(
                "too_many_pixels", f"{width}x{height} {image.format} > {max_pixels} pixels"
            )
        try:
            image.load()  # first frame only, for animated formats
            # phone photos are often stored sideways with an EXIF orientation tag: encode them upright
            return ImageOps.exif_transpose(image).convert("RGB")
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise MediaError("too_many_pixels", str(exc)) from exc
        except Exception as exc:  # decoder errors on hostile bytes
            code = _decode_error_code(exc)
            raise MediaError(code, f"{image.format} {width}x{height}: {exc}") from exc


def _decode_error_code(exc: Exception) -> str:
    """Pillow reports a cut-off file as OSError('image file is truncated ...' or 'Truncated File
    Read') or EOFError; anything else is corrupt data."""
    if isinstance(exc, EOFError) or "truncated" in str(exc).lower():
        return "truncated"
    return "corrupt_image"
