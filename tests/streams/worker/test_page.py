"""The results page and the product images it shows: the page and its assets over the query API
on the demo catalog, and the image route's confinement on its own (a fake product list, a real
media root, real files)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient

from encoders_onnx.decoding import MediaError
from streams.adapters.media import MediaLimits
from streams.worker.page import add_page, image_type

CATALOG = Path(__file__).resolve().parents[3] / "demo" / "catalog"


@pytest.mark.integration
def test_the_page_and_its_assets_are_served_with_a_strict_policy(api):
    page = api.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<form id="search"' in page.text and 'src="/page/page.js"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    script = api.get("/page/page.js")
    assert script.status_code == 200 and "/v1/search/text" in script.text and "innerHTML" not in script.text
    assert api.get("/page/page.css").status_code == 200
    for name in ("index.html", "__init__.py", "..%2F..%2Fsettings.py"):
        assert api.get(f"/page/{name}").status_code == 404


@pytest.mark.integration
def test_a_product_image_is_the_catalog_file(api):
    image = api.get("/v1/products/53010/images/0")
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    assert image.content == (CATALOG / "images" / "53010.jpg").read_bytes()
    assert image.headers["x-content-type-options"] == "nosniff"
    assert api.get("/v1/products/53010/images/1").status_code == 404
    assert api.get("/v1/products/no-such-product/images/0").status_code == 404


@pytest.mark.integration
def test_metrics_and_readiness_of_the_query_service(api):
    ready = api.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["ok"]
    assert ready.json()["checks"]["store"]["detail"].endswith("points served")
    api.post("/v1/search/text", json={"text": "watch"})
    exposition = api.get("/metrics")
    assert exposition.headers["content-type"].startswith("text/plain")
    assert 'shelfstream_model_info{modality="text"' in exposition.text


def confined_app(tmp_path: Path, uris: dict[str, list[str]]) -> TestClient:
    app, v1 = FastAPI(), APIRouter(prefix="/v1")

    @app.exception_handler(MediaError)
    async def media_error(request, exc: MediaError):
        from fastapi.responses import JSONResponse
        return JSONResponse({"code": exc.code}, status_code=422)

    add_page(app, v1, lambda product_id: uris[product_id], MediaLimits(tmp_path / "media", False, 5.0, 1_000_000))
    app.include_router(v1)
    return TestClient(app)


def test_images_outside_the_media_root_or_not_images_are_refused(tmp_path: Path):
    media = tmp_path / "media"
    media.mkdir()
    (media / "notes.txt").write_text("<script>alert(1)</script>")
    (media / "photo.jpg").write_bytes((CATALOG / "images" / "53010.jpg").read_bytes())
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"\xff\xd8\xff secret")
    (media / "link.jpg").symlink_to(secret)
    client = confined_app(tmp_path, {"p": [str(media / "photo.jpg"), str(secret), str(media / "link.jpg"),
                                           str(media / "notes.txt"), f"{media}/../secret.jpg", "http://127.0.0.1:1/x.jpg"]})
    assert client.get("/v1/products/p/images/0").status_code == 200
    refused = {index: client.get(f"/v1/products/p/images/{index}") for index in range(1, 6)}
    assert {i: r.status_code for i, r in refused.items()} == {1: 422, 2: 422, 3: 422, 4: 422, 5: 422}
    assert refused[1].json()["code"] == "outside_media_root"
    assert refused[3].json()["code"] == "not_an_image"
    assert refused[5].json()["code"] == "blocked_address"
    assert client.get("/v1/products/p/images/99").status_code == 422  # past MAX_IMAGES: a validation error


@pytest.mark.parametrize(("data", "kind"), [
    (b"\xff\xd8\xff\xe0rest", "image/jpeg"), (b"\x89PNG\r\n\x1a\nrest", "image/png"), (b"GIF89a...", "image/gif"),
    (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp"), (b"<svg xmlns=...>", None), (b"", None),
])
def test_image_type_by_magic_bytes(data: bytes, kind: str | None):
    assert image_type(data) == kind
