"""The pipeline's memory is bounded whatever sellers send: a full batch of maximum-size images
is indexed by a pipeline in its own process, whose peak RSS is measured; and the image cache
keys carry the decoder's version."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import redis
from PIL import Image

from encoders_onnx.decoding import DECODER_VERSION
from streams.worker.pipeline import IncomingMessage, Pipeline

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]

# A batch of 32 products x 4 distinct images of 6000x6000 (36 Mpixel, under the default 40 Mpixel
# cap: one fast PNG, three JPEGs; ~250 MB of files) measured a peak RSS of 1,193-1,233 MB with the
# default settings, of which ~530 MB is the process once the models and the store are loaded; the
# batch's file bytes are held until it is written. Before the pixel budget and the chunks the same
# batch extrapolated to ~25 GB. What is bounded is the batch's own growth: the peak while it is
# indexed (the kernel's high-water mark, reset once the process is loaded) over the RSS before it,
# so that a loading spike of another onnxruntime/Pillow build does not hide or fail the batch.
BATCH_GROWTH_BOUND_MB = 1_536
_INDEX_BATCH = """
import json, resource, sys
from streams.settings import Settings
from streams.worker.pipeline import IncomingMessage, Pipeline
def status_mb(field):
    line = next(l for l in open("/proc/self/status") if l.startswith(field + ":"))
    return int(line.split()[1]) // 1024
pipeline = Pipeline.from_settings(Settings.from_env())
messages = [IncomingMessage(line.strip().encode()) for line in open(sys.argv[1])]
load_peak_mb = status_mb("VmHWM")
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # resets the peak RSS (VmHWM) to the current RSS
loaded_mb = status_mb("VmRSS")
outcome = pipeline.process(messages)
print(json.dumps({"counts": dict(outcome.counts), "dead_letters": [l.reason for l in outcome.dead_letters],
                  "load_peak_mb": load_peak_mb, "loaded_mb": loaded_mb, "peak_mb": status_mb("VmHWM")}))
"""


def _maximum_size_images(folder: Path, count: int) -> list[str]:
    """``count`` distinct files (different bytes, so no cache hit or dedup) of four 6000x6000
    originals: each copy has its number appended after the image data, which decoders ignore."""
    source = next((REPO / "demo" / "catalog" / "images").iterdir())
    photo = Image.open(source).convert("RGB").resize((6000, 6000), Image.Resampling.BILINEAR)
    originals = [folder / "original.png", *(folder / f"original-{q}.jpg" for q in (95, 85, 75))]
    photo.save(originals[0], compress_level=1)
    for quality, path in zip((95, 85, 75), originals[1:]):
        photo.save(path, quality=quality)
    del photo
    names = []
    for i in range(count):
        original = originals[i % len(originals)]
        name = f"big-{i}{original.suffix}"
        (folder / name).write_bytes(original.read_bytes() + str(i).encode())
        names.append(name)
    return names


def test_a_batch_of_maximum_size_images_is_indexed_in_bounded_memory(settings, catalog, tmp_path):
    settings = dataclasses.replace(settings, batch_size=32)
    assert 6000 * 6000 <= settings.max_image_pixels
    names = _maximum_size_images(Path(settings.media_root), 32 * 4)
    events = [catalog[i].derive(image_uris=names[4 * i: 4 * i + 4]) for i in range(32)]
    batch = tmp_path / "batch.jsonl"
    batch.write_text("\n".join(e.to_bytes().decode() for e in events))
    run = subprocess.run(
        [sys.executable, "-c", _INDEX_BATCH, str(batch)],
        cwd=REPO, env={**os.environ, **settings.to_env(), "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    print(f"indexing 32 products x 4 images of 6000x6000: loaded {result['loaded_mb']} MB (loading peaked at "
          f"{result['load_peak_mb']} MB), peak while indexing {result['peak_mb']} MB")
    assert result["dead_letters"] == []
    assert result["counts"]["indexed"] == 32 and result["counts"]["encoded_image"] == 128
    assert result["peak_mb"] - result["loaded_mb"] < BATCH_GROWTH_BOUND_MB


def test_image_vectors_are_cached_under_the_decoders_version(settings, catalog):
    pipeline = Pipeline.from_settings(settings)
    try:
        pipeline.process([IncomingMessage(catalog[0].to_bytes())])
        image_keys = [k.decode() for k in redis.Redis.from_url(settings.redis_url).keys("*:image:*")]
        assert len(image_keys) == 1
        assert f"{pipeline.encoders.image.version}+{DECODER_VERSION}:image:" in image_keys[0]
    finally:
        pipeline.close()


def test_images_are_encoded_in_chunks_with_the_same_vectors(settings, catalog):
    """Chunks smaller than the batch give the vectors a single chunk gives."""
    vectors = []
    for chunk in (2, 32):
        redis.Redis.from_url(settings.redis_url).flushdb()
        pipeline = Pipeline.from_settings(
            dataclasses.replace(settings, image_chunk=chunk, qdrant_path=f"{settings.qdrant_path}-{chunk}"))
        try:
            pipeline.process([IncomingMessage(e.to_bytes()) for e in catalog[:5]])
            vectors.append({p.payload["product_id"]: p.vector["image"] for p in pipeline.store.all_points()})
        finally:
            pipeline.close()
    assert vectors[0].keys() == vectors[1].keys() and len(vectors[0]) == 5
    for product_id, vector in vectors[0].items():
        np.testing.assert_allclose(vector, vectors[1][product_id], atol=1e-5)
