"""The results page at ``/``: plain HTML, CSS and a little JavaScript (no build step) over the
query API, and the product images it shows.

Images are served only as ``/v1/products/{id}/images/{n}``: the n-th image URI of an indexed
product, loaded by ``streams.adapters.media.fetch_bytes`` with the same limits as ingestion
(local files confined to the media root, http(s) vetted against private addresses, bytes and
time capped). No request names a path, so no request can read an arbitrary file; what is
served must also look like an image (its magic bytes), and is sent with ``nosniff`` and a
content security policy that forbids it from running anything.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi import APIRouter, FastAPI, HTTPException
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response

from encoders_onnx.decoding import MediaError
from streams.adapters.media import MediaLimits, fetch_bytes

HERE = Path(__file__).resolve().parent
ASSETS = {"page.js": "text/javascript", "page.css": "text/css"}  # every file the page may serve
MAX_IMAGES = 64
IMAGE_TYPES = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"), (b"GIF87a", "image/gif"),
               (b"GIF89a", "image/gif"))
IMAGE_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "default-src 'none'; sandbox",
                 "Cache-Control": "private, max-age=300"}
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; object-src 'none'; "
                                           "base-uri 'none'; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff"}


def image_type(data: bytes) -> str | None:
    """The media type of an image by its first bytes (WebP included); None if it is none of them."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((kind for magic, kind in IMAGE_TYPES if data.startswith(magic)), None)


def add_page(app: FastAPI, v1: APIRouter, image_uris: Callable[[str], list[str]], media_limits: MediaLimits) -> None:
    """``/`` and its two assets (no key: they hold no data), and the image route on ``v1`` (keyed
    like every data endpoint). ``image_uris`` raises for a product that is not indexed."""

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(HERE / "index.html", media_type="text/html", headers=PAGE_HEADERS)

    @app.get("/page/{asset}", include_in_schema=False)
    def asset(asset: str) -> FileResponse:
        if asset not in ASSETS:
            raise HTTPException(404, f"no page asset {asset!r}")
        return FileResponse(HERE / asset, media_type=ASSETS[asset], headers=PAGE_HEADERS)

    @v1.get("/products/{product_id}/images/{index}", tags=["products"], response_class=Response,
            responses={200: {"content": {"image/jpeg": {}}}, 404: {}, 422: {}})
    def product_image(product_id: str, index: int = PathParam(ge=0, lt=MAX_IMAGES)) -> Response:
        """The product's ``index``-th image, loaded under the same confinement as ingestion."""
        uris = image_uris(product_id)
        if index >= len(uris):
            raise HTTPException(404, f"product {product_id!r} has {len(uris)} images")
        data = fetch_bytes(uris[index], media_limits)
        kind = image_type(data)
        if kind is None:
            raise MediaError("not_an_image", f"image {index} of product {product_id!r} is not a JPEG, PNG, GIF or WebP")
        return Response(data, media_type=kind, headers=IMAGE_HEADERS)
