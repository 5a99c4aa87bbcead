"""Metrics on hand-made examples with known answers, and the evaluation end to end on a Myntra subset."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from exporters.metrics import (
    average_precision_at_k,
    item_to_item,
    mean_reciprocal_rank,
    own_ranks,
    precision_at_k,
    recall_at_k,
    text_to_image,
    top_k,
)

MYNTRA = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "myntra-fashion-small"


def test_precision_and_average_precision_by_hand() -> None:
    hits = np.array([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]], bool)
    assert precision_at_k(hits) == pytest.approx((2 / 4 + 0 + 1) / 3)
    # query 0: (1/1 + 2/3) / min(4, 3 relevant); query 1 has nothing relevant: skipped; query 2: 4/4
    ap = average_precision_at_k(hits, np.array([3, 0, 9]))
    assert ap == pytest.approx(((1 + 2 / 3) / 3 + 1.0) / 2)
    # relevant items missed beyond k still count in the denominator (min(k, R) = k here)
    assert average_precision_at_k(np.array([[0, 1]], bool), np.array([5])) == pytest.approx((1 / 2) / 2)


def test_recall_and_mrr_by_hand() -> None:
    ranks = np.array([1, 3, 12, 2])
    assert recall_at_k(ranks, 1) == 0.25
    assert recall_at_k(ranks, 5) == 0.75
    assert mean_reciprocal_rank(ranks) == pytest.approx((1 + 1 / 3 + 1 / 12 + 1 / 2) / 4)


def test_ranking_excludes_self_and_breaks_ties_by_catalog_order() -> None:
    v = np.array([[1.0, 0.0], [0.9, 0.436], [0.0, 1.0], [1.0, 0.0]], np.float32)
    assert top_k(v, v, 2, exclude_self=True)[0].tolist() == [3, 1]
    gallery = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], np.float32)
    queries = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]], np.float32)
    assert own_ranks(queries, gallery).tolist() == [1, 2, 3]


def test_item_to_item_and_text_to_image_on_a_tiny_space() -> None:
    vectors = np.array([[1, 0], [0.99, 0.14], [0, 1], [0.14, 0.99]], np.float32)
    labels = np.array([0, 0, 1, 1])
    metrics = item_to_item(vectors, labels, k=1)
    assert metrics == {"p@1": 1.0, "map@1": 1.0}
    swapped = text_to_image(vectors, vectors[[1, 0, 3, 2]], labels)
    assert swapped["recall@1"] == 0.0 and swapped["recall@5"] == 1.0 and swapped["mrr"] == 0.5
    assert swapped["p@10_fine"] == pytest.approx(0.5)  # a gallery of 4 < 10: all 4 ranked, 2 share the label
    own = text_to_image(vectors, vectors, labels, rows=np.array([True, False, True, False]))
    assert own["recall@1"] == 1.0 and own["mrr"] == 1.0


@pytest.mark.skipif(not MYNTRA.is_dir(), reason="shared/datasets/myntra-fashion-small is absent")
def test_train_and_evaluate_end_to_end_on_a_myntra_subset(tmp_path: Path, model_dir: Path) -> None:
    pytest.importorskip("torch")
    from exporters.catalog import CatalogMapping
    from exporters.evaluate import evaluate
    from exporters.train import TrainConfig, train

    rows = list(csv.DictReader((MYNTRA / "products.csv").open()))
    subset = [r for r in rows if r["masterCategory"] in {"Apparel", "Footwear", "Accessories"}][:240]
    catalog = tmp_path / "catalog.csv"
    with catalog.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(subset[0]))
        writer.writeheader()
        writer.writerows(subset)
    mapping = CatalogMapping(title="productDisplayName", fine=("articleType",), coarse=("masterCategory", "subCategory"),
                             image="images/{id}.jpg", media_root=str(MYNTRA))
    config = TrainConfig(shared_dim=32, hidden=64, fused_dim=32, batch_size=64, head_batch_size=64, max_epochs=3, patience=1, ae_bottleneck=32)
    cache = tmp_path / "features"
    bundle = train(catalog, mapping, model_dir, tmp_path / "fusion", seed=0, config=config, cache_dir=cache)
    assert (tmp_path / "fusion" / "bundle.json").is_file()
    assert set(bundle["metrics"]) == {"val", "test"}
    assert bundle["training_data"]["products"] == 240

    report = evaluate(catalog, mapping, model_dir, tmp_path / "fusion", seed=0, cache_dir=cache)
    methods = {m["method"]: m for m in report["methods"]}
    assert {"text_only", "image_only", "early_fusion", "late_fusion", "learned_fusion", "autoencoder_fusion",
            "random", "zero_shot_bridge", "supervised_text_only"} <= set(methods)
    assert all(len(m) == len(methods["random"]) for m in methods.values())
    assert methods["text_only"]["p@10_fine"] > methods["random"]["p@10_fine"]
    assert methods["learned_fusion"]["t2i_recall@10"] is not None and methods["text_only"]["t2i_recall@10"] is None


@pytest.mark.skipif(not MYNTRA.is_dir(), reason="shared/datasets/myntra-fashion-small is absent")
def test_another_retailers_catalog_needs_a_mapping_not_code(tmp_path: Path, model_dir: Path) -> None:
    """JSONL, other column names, a category path instead of label columns, larger PNG photos in
    their own folder: train and eval run unchanged, given only a mapping file."""
    pytest.importorskip("torch")
    from PIL import Image

    from exporters.catalog import CatalogMapping
    from exporters.evaluate import evaluate
    from exporters.train import TrainConfig, train

    rows = list(csv.DictReader((MYNTRA / "products.csv").open()))
    subset = [r for r in rows if r["masterCategory"] in {"Apparel", "Footwear", "Accessories"}][240:480]
    photos = tmp_path / "media" / "photos"
    photos.mkdir(parents=True)
    with (tmp_path / "catalog.jsonl").open("w") as out:
        for r in subset:
            with Image.open(MYNTRA / r["image"]) as image:
                image.convert("RGB").resize((240, 320)).save(photos / f"sku-{r['id']}.png")
            path = " > ".join([r["masterCategory"], r["subCategory"], r["articleType"]])
            out.write(json.dumps({"sku": f"sku-{r['id']}", "name": r["productDisplayName"], "path": path,
                                  "photo": f"photos/sku-{r['id']}.png"}) + "\n")
    mapping_file = tmp_path / "mapping.json"
    mapping_file.write_text(json.dumps({"id": "sku", "title": "name", "fine": ["path"], "coarse": ["path[:1]"],
                                        "image": "photo", "media_root": str(tmp_path / "media")}))
    mapping = CatalogMapping.from_dict(json.loads(mapping_file.read_text()))
    config = TrainConfig(shared_dim=32, hidden=64, fused_dim=32, batch_size=64, head_batch_size=64, max_epochs=3, patience=1, ae_bottleneck=32)
    bundle = train(tmp_path / "catalog.jsonl", mapping, model_dir, tmp_path / "fusion", seed=0, config=config,
                   cache_dir=tmp_path / "features")
    assert bundle["training_data"]["products"] == len(subset)
    report = evaluate(tmp_path / "catalog.jsonl", mapping, model_dir, tmp_path / "fusion", seed=0,
                      cache_dir=tmp_path / "features", single_modality_baseline=False)
    methods = {m["method"]: m for m in report["methods"]}
    assert methods["image_only"]["p@10_fine"] > methods["random"]["p@10_fine"]
    assert methods["learned_fusion"]["p@10_coarse"] > methods["random"]["p@10_coarse"]
