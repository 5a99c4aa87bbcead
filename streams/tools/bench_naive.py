"""The naive baseline of ``shelfstream bench``: what a first version of this system would do.

One product at a time: read its image, run the torch models (MiniLM and MobileNetV2, no ONNX, no
batching, no cache), concatenate, and upsert that one point into Qdrant local mode through
qdrant-client. No Kafka and no Redis: the baseline is given every advantage except the design
choices the real pipeline makes, so ``speedup_over_naive`` measures those choices.
Needs the export extra (torch); the worker never imports this module.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path
from typing import Sequence

import numpy as np

from encoders_onnx.decoding import load_image
from encoders_onnx.text import load_tokenizer, tokenize
from streams.adapters.media import MediaLimits, fetch_bytes
from streams.schema.events import ProductEvent
from streams.settings import Settings

COLLECTION = "naive"


def naive_items_per_s(settings: Settings, events: Sequence[ProductEvent]) -> float:
    """Products per second through the per-product torch + qdrant-client pipeline."""
    import torch
    from qdrant_client import QdrantClient, models

    from encoders_onnx.image import ImagePreprocessing
    from exporters.encoders import IMAGE_PREPROCESSING, TEXT_MAX_LENGTH
    from exporters.torch_models import load_minilm, load_mobilenet_v2

    text_model, image_model = load_minilm(), load_mobilenet_v2()
    tokenizer = load_tokenizer(Path(settings.model_dir) / "tokenizer.json", TEXT_MAX_LENGTH)
    preprocess = ImagePreprocessing(IMAGE_PREPROCESSING)  # the torch model's own, as the packaged export's
    limits = MediaLimits.for_images(settings)
    with tempfile.TemporaryDirectory(prefix="shelfstream-naive-") as folder:
        client = QdrantClient(path=folder)
        client.create_collection(COLLECTION, vectors_config={
            "text": models.VectorParams(size=384, distance=models.Distance.COSINE),
            "image": models.VectorParams(size=1280, distance=models.Distance.COSINE),
            "fused": models.VectorParams(size=1664, distance=models.Distance.COSINE),
        })
        started = time.perf_counter()
        with torch.inference_mode():  # a context, not a global switch: callers may train afterwards
            for event in events:
                feeds = {k: torch.from_numpy(v) for k, v in tokenize(tokenizer, [event.text]).items()}
                text = text_model(**feeds)[0].numpy()
                image = load_image(fetch_bytes(event.image_uris[0], limits), settings.max_image_pixels)
                features, _ = image_model(torch.from_numpy(preprocess(image))[None])
                image_vector = features[0].numpy() / max(float(np.linalg.norm(features[0].numpy())), 1e-12)
                fused = np.concatenate([text, image_vector]) / np.sqrt(2.0)
                client.upsert(COLLECTION, [models.PointStruct(
                    id=str(uuid.uuid5(uuid.NAMESPACE_URL, event.product_id)),
                    vector={"text": text.tolist(), "image": image_vector.tolist(), "fused": fused.tolist()},
                    payload={"product_id": event.product_id, "title": event.title, "price": event.price},
                )])
        elapsed = time.perf_counter() - started
        stored = client.count(COLLECTION).count
        client.close()
    if stored != len(events):
        raise RuntimeError(f"naive baseline stored {stored} of {len(events)} products")
    return len(events) / elapsed
