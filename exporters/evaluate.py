"""Held-out evaluation of every way of making product vectors, on the test split only.

Metrics (a hit shares the query's label; the query itself is never in its own results):
- item-to-item: ``p@10`` = mean fraction of hits in the top 10; ``map@10`` = mean over queries
  with at least one relevant item of sum_i P@i * hit_i / min(10, relevant items);
- text-to-image: each test title against the image vectors of all test products: ``recall@k``
  = fraction whose own image ranks in the top k, ``mrr`` = mean 1 / rank of the own image,
  ``p@10_fine`` = fraction of the top 10 images sharing the fine label. Reported also without
  queries whose title another test product shares (``*_unique_title``): those cannot be told
  apart from the title. Exact score ties rank by catalog order.

Methods: text only, image only, early fusion (concatenation of normalized vectors), late fusion
(weighted sum of per-modality cosines, weights chosen on validation), learned fusion and
autoencoder fusion (the ONNX bundle, as the worker runs it), learned fusion with one modality
masked out for every product (how the worker handles a missing modality), the mean of the aligned
projections, the same supervised training on the best single modality (chosen on validation),
random vectors, and the zero-shot bridge (image -> top ImageNet classes -> text encoder; only when the
image model has its ImageNet classifier, which a bring-your-own or fine-tuned one has not).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from encoders_onnx.fusion import FusionModel
from encoders_onnx.session import FP32, INT8, l2_normalize
from exporters.catalog import Catalog, CatalogMapping, add_catalog_arguments, load_catalog, mapping_from_args
from exporters.features import (
    DEFAULT_CACHE_DIR,
    IMAGENET_CLASSES,
    Features,
    MediaDecoding,
    add_feature_arguments,
    extract_features,
    zero_shot_bridge,
)
from exporters.metrics import K, fused_vectors, item_to_item, method_metrics, projection_mean, split_labels
from exporters.shoppers import add_shopper_arguments

LATE_FUSION_STEP = 0.1


# -- the methods --------------------------------------------------------------------------------


def _weighted_concat(features: Features, weights: Mapping[str, float]) -> np.ndarray:
    """[sqrt(w_m) * v_m]: its dot product is sum_m w_m cos_m, i.e. late fusion of cosine scores."""
    return np.concatenate([np.sqrt(w) * features.vectors[m] for m, w in weights.items()], axis=1)


def _late_fusion_weights(val: Features, fine: np.ndarray) -> dict[str, float]:
    """Weights on a 0.1 grid of the simplex, picked by validation precision@10 (never on test)."""
    modalities = val.modalities
    steps = int(round(1 / LATE_FUSION_STEP))
    grid = [c for c in itertools.product(range(steps + 1), repeat=len(modalities)) if sum(c) == steps]
    scored = []
    for combo in grid:
        weights = {m: c / steps for m, c in zip(modalities, combo)}
        scored.append((item_to_item(_weighted_concat(val, weights), fine)[f"p@{K}"], combo, weights))
    return max(scored, key=lambda s: (s[0], s[1]))[2]


def _random_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    return l2_normalize(np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32))


def _unique_titles(catalog: Catalog, index: np.ndarray) -> np.ndarray:
    """True where no other product of ``index`` has the same (case-folded) title."""
    titles = [catalog.products[i].title.casefold().strip() for i in index]
    _, inverse, counts = np.unique(titles, return_inverse=True, return_counts=True)
    return counts[inverse] == 1


def _projections(model: FusionModel, features: Features) -> dict[str, np.ndarray]:
    """Shared-space vectors of the present rows; absent rows are zero so they match nothing."""
    z = model.project(**{m: features.vectors[m] for m in features.modalities})
    return {m: z[m] * features.present[m][:, None] for m in features.modalities}


def _supervised_single(
    model: FusionModel, features: Features, split: Mapping[str, np.ndarray], fine: np.ndarray, modality: str, seed: int
) -> np.ndarray:
    """Test vectors of the bundle's own fusion training run on one modality's projection only."""
    from exporters.train import TrainConfig, fit_single_modality, fuse_single  # torch only for this baseline

    z = _projections(model, features)[modality]
    has = features.present[modality]
    fit_rows = {p: split[p][has[split[p]]] for p in ("train", "val")}
    fusion = fit_single_modality(
        {p: {modality: z[rows]} for p, rows in fit_rows.items()},
        {p: fine[rows] for p, rows in fit_rows.items()},
        TrainConfig(**model.manifest["config"]),
        seed,
    )
    return fuse_single(fusion, z[split["test"]]) * has[split["test"]][:, None]


def evaluate(
    catalog: str | Path | Catalog,
    mapping: CatalogMapping | None,
    model_dir: str | Path,
    bundle_dir: str | Path,
    seed: int = 0,
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
    providers: str = "cpu",
    classes_path: str | Path = IMAGENET_CLASSES,
    single_modality_baseline: bool = True,
    decoding: MediaDecoding = MediaDecoding(),
    precision: str = FP32,
) -> dict[str, Any]:
    """One metrics object per method on the test split (see the module docstring), on features
    of the encoders at ``precision`` (the bundle is applied as it is)."""
    cat = catalog if isinstance(catalog, Catalog) else load_catalog(catalog, mapping)
    split = cat.split(seed)
    fine_all = cat.labels("fine")
    features = extract_features(cat, model_dir, cache_dir, providers=providers, decoding=decoding, precision=precision)
    test, val = features.rows(split["test"]), features.rows(split["val"])
    labels = split_labels(cat, split["test"])
    unique = _unique_titles(cat, split["test"])
    learned = FusionModel(bundle_dir, providers)
    autoencoder = FusionModel(bundle_dir, providers, fusion="autoencoder")
    z = _projections(learned, test)
    pairs = test.present["text"] & test.present["image"]
    t2i_queries = {"": pairs, "_unique_title": pairs & unique}
    bridge = zero_shot_bridge(cat, split["test"], model_dir, cache_dir, classes_path, providers)
    n = len(split["test"])

    def row(vectors: np.ndarray, t2i: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, float | None]:
        return method_metrics(vectors, labels, t2i, t2i_queries)

    methods: dict[str, dict[str, float | None]] = {}
    for m in test.modalities:
        methods[f"{m}_only"] = row(test.vectors[m])
    equal = {m: 1.0 / len(test.modalities) for m in test.modalities}
    methods["early_fusion"] = row(l2_normalize(_weighted_concat(test, equal)))
    weights = _late_fusion_weights(val, fine_all[split["val"]])
    methods["late_fusion"] = row(_weighted_concat(test, weights))
    methods["learned_fusion"] = row(fused_vectors(learned, test), (z["text"], z["image"]))
    if len(test.modalities) > 1:
        for m in test.modalities:
            methods[f"learned_fusion_without_{m}"] = row(fused_vectors(learned, test.without(m)))
    methods["autoencoder_fusion"] = row(fused_vectors(autoencoder, test))
    methods["projection_mean"] = row(projection_mean(z, test))
    best_single = max(test.modalities, key=lambda m: item_to_item(val.vectors[m], fine_all[split["val"]])[f"p@{K}"])
    if single_modality_baseline:
        methods[f"supervised_{best_single}_only"] = row(
            _supervised_single(learned, features, split, fine_all, best_single, seed)
        )
    methods["random"] = row(_random_vectors(n, learned.dim, seed), (_random_vectors(n, learned.dim, seed + 1),
                                                                    _random_vectors(n, learned.dim, seed + 2)))
    if bridge is not None:
        methods["zero_shot_bridge"] = row(bridge, (test.vectors["text"], bridge))
    return {
        "dataset": str(cat.path),
        "split": "test",
        "split_seed": seed,
        "precision": precision,
        "encoder_versions": features.versions,
        "test_products": n,
        "t2i_queries": int(pairs.sum()),
        "t2i_queries_unique_title": int((pairs & unique).sum()),
        "bundle_version": learned.version,
        "late_fusion_weights_from_val": weights,
        "best_single_modality_on_val": best_single,
        "methods": [{"method": name, **{k: _round(v) for k, v in metrics.items()}} for name, metrics in methods.items()],
    }


def precision_change(fp32: Mapping[str, Any], int8: Mapping[str, Any]) -> dict[str, Any]:
    """int8 minus fp32 for every metric of every method both reports have (same bundle, same split)."""
    baseline = {m["method"]: m for m in fp32["methods"]}
    methods = []
    for m in int8["methods"]:
        if m["method"] in baseline:
            base = baseline[m["method"]]
            methods.append({"method": m["method"], **{k: _delta(v, base.get(k)) for k, v in m.items() if k != "method"}})
    return {**{k: v for k, v in int8.items() if k != "methods"}, "precision": "int8 - fp32", "methods": methods}


def _delta(value: float | None, base: float | None) -> float | None:
    return None if value is None or base is None else round(value - base, 4)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


TABLE_COLUMNS = ("p@10_fine", "map@10_fine", "p@10_coarse", "map@10_coarse",
                 "t2i_recall@1", "t2i_recall@5", "t2i_recall@10", "t2i_mrr", "t2i_p@10_fine",
                 "t2i_recall@10_unique_title", "t2i_mrr_unique_title")


def format_table(report: Mapping[str, Any]) -> str:
    """A Markdown table of the report (the README shows it)."""
    lines = ["| method | " + " | ".join(TABLE_COLUMNS) + " |", "|---" * (len(TABLE_COLUMNS) + 1) + "|"]
    for m in report["methods"]:
        cells = ["-" if m[c] is None else f"{m[c]:.3f}" for c in TABLE_COLUMNS]
        lines.append(f"| {m['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def configure_eval_parser(parser: argparse.ArgumentParser) -> None:
    """Flags of ``shelfstream eval`` (the CLI adds this parser and calls :func:`run_eval`)."""
    add_catalog_arguments(parser)
    add_feature_arguments(parser)
    parser.add_argument("--bundle", help="fusion bundle folder (default: MODEL_DIR/fusion)")
    parser.add_argument("--classes", default=str(IMAGENET_CLASSES), help="ImageNet class names (JSON list)")
    parser.add_argument("--no-single-baseline", action="store_true",
                        help="skip training the best-single-modality baseline (needs torch)")
    parser.add_argument("--compare-precisions", action="store_true",
                        help="evaluate fp32 and int8 encoder features with the same bundle and report the change")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    add_shopper_arguments(parser)


def run_eval(args: argparse.Namespace, decoding: MediaDecoding = MediaDecoding()) -> dict[str, Any]:
    """Print the report; with ``--json`` stdout carries only the JSON (progress goes to stderr).
    ``decoding`` is the worker's (the CLI reads it from the settings)."""
    def report_at(precision: str) -> dict[str, Any]:
        with contextlib.redirect_stdout(sys.stderr):
            return evaluate(
                args.dataset, mapping_from_args(args), args.model_dir, args.bundle or str(Path(args.model_dir) / "fusion"),
                args.seed, args.cache_dir, args.providers, args.classes, not args.no_single_baseline, decoding, precision,
            )

    if not args.compare_precisions:
        report = report_at(args.precision)
        print(json.dumps(report, indent=2) if args.json else format_table(report), flush=True)
        return report
    reports = {precision: report_at(precision) for precision in (FP32, INT8)}
    report = {**reports, "int8_minus_fp32": precision_change(reports[FP32], reports[INT8])}
    if args.json:
        print(json.dumps(report, indent=2), flush=True)
    else:
        for name, part in report.items():
            print(f"\n{name}\n{format_table(part)}", flush=True)
    return report
