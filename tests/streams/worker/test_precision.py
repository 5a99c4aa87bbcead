"""SHELFSTREAM_PRECISION=int8 end to end on real Redis and Qdrant local mode: the pipeline serves
the int8 encoders' vectors in a collection of their own, close to what fp32 serves."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from streams.settings import Settings
from streams.worker.pipeline import IncomingMessage, Pipeline

pytestmark = pytest.mark.integration


def _index(settings: Settings, catalog) -> tuple[str, dict[str, dict], dict[str, dict[str, np.ndarray]]]:
    """Collection, payloads and vectors by product id after one pipeline run over ``catalog``."""
    pipeline = Pipeline.from_settings(settings)
    try:
        outcome = pipeline.process([IncomingMessage(e.to_bytes(), e.product_id.encode()) for e in catalog])
        assert outcome.counts["indexed"] == len(catalog) and not outcome.dead_letters
        points = pipeline.store.all_points()
        return (pipeline.store.collection, {p.payload["product_id"]: p.payload for p in points},
                {p.payload["product_id"]: {k: np.asarray(v) for k, v in p.vector.items()} for p in points})
    finally:
        pipeline.close()


def test_int8_pipeline_serves_int8_vectors_in_its_own_collection(settings: Settings, catalog) -> None:
    catalog = catalog[:16]
    fp32_collection, _, fp32 = _index(settings, catalog)
    int8_settings = dataclasses.replace(settings, precision="int8")
    int8_collection, payloads, int8 = _index(int8_settings, catalog)

    assert int8_collection != fp32_collection
    for modality in ("text", "image"):
        version = json.loads((Path(settings.model_dir) / f"{modality}.int8.manifest.json").read_text())["version"]
        assert all(p["model_version"][modality] == version for p in payloads.values())
    assert set(int8) == {e.product_id for e in catalog}
    # mean cosine floors: the export's parity thresholds (fused is the mean of the two)
    for name, floor in (("text", 0.985), ("image", 0.95), ("fused", 0.965)):
        cosines = [float(fp32[pid][name] @ int8[pid][name]) for pid in int8]
        assert np.mean(cosines) >= floor and min(cosines) >= 0.8, (name, cosines)
        assert max(cosines) < 1 - 1e-6  # the vectors did come from the other graph
