"""Offline evaluation of recommendations for users (``shelfstream eval --shoppers``).

The shoppers are simulated from the catalog's own attributes, because no real interaction log
exists here (``--interactions LOG`` evaluates a real one instead). Simulated shoppers are not
real ones: the numbers rank methods against each other on a world built to have tastes, they do
not predict what real shoppers do.

The simulator (seeded, every draw from one ``numpy`` generator):

- a *taste* is a value of the catalog's ``fine`` label, e.g. (articleType, baseColour, gender);
  only tastes with at least ``MIN_TASTE_PRODUCTS`` products are used;
- each shopper has 1-3 tastes and 3-6 sessions, a session every ~2 days (exponential gaps),
  3-8 interactions a minute apart; a session stays on the previous session's taste with
  probability ``STAY``, else picks one of the shopper's tastes at random (interest drifts);
- an interaction is a product of the session's taste, or with probability ``noise`` any product
  of the catalog (a stray click); a shopper never interacts twice with one product;
- kinds: on taste products view/click/add_to_cart/purchase with ``TASTE_KINDS``; stray ones are
  nearly all views (``NOISE_KINDS``): stronger kinds carry more signal, as they plausibly do.

Protocol: leave-last-out. Each shopper's last interaction is held out; every method ranks all
products but the shopper's other interactions; HR@10 (held-out product in the top 10) and
NDCG@10. The profile methods run ``encoders_onnx.profile``, the arithmetic the worker serves.
Weights and half-life are tuned on shoppers of another seed (``seed + 1``) and reported on these.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from encoders_onnx.fusion import ConcatFusion, ModalityBatch
from encoders_onnx.profile import decayed_profile, mmr
from encoders_onnx.session import l2_normalize
from exporters.catalog import load_catalog, mapping_from_args
from exporters.features import extract_features

K = 10
MIN_TASTE_PRODUCTS = 5
STAY = 0.6
KINDS = ("view", "click", "add_to_cart", "purchase")
TASTE_KINDS = (0.55, 0.25, 0.12, 0.08)
NOISE_KINDS = (0.90, 0.08, 0.02, 0.0)
DAY = 86400.0
HALF_LIVES = {"1 h": 3600.0, "1 day": DAY, "3 days": 3 * DAY, "7 days": 7 * DAY, "none": 0.0}
WEIGHTINGS = {"uniform": {k: 1.0 for k in KINDS},
              "view=1,click=2,add_to_cart=4,purchase=4": {"view": 1.0, "click": 2.0, "add_to_cart": 4.0, "purchase": 4.0}}
MMR_DIVERSITY = 0.3


@dataclass(frozen=True)
class Shopper:
    """One user's interactions in time order: catalog rows, kinds and times (seconds)."""

    rows: np.ndarray
    kinds: tuple[str, ...]
    times: np.ndarray


def simulate_shoppers(tastes: np.ndarray, n_shoppers: int, seed: int, noise: float = 0.2) -> list[Shopper]:
    """``tastes``: the taste code of every product (catalog row)."""
    rng = np.random.default_rng(seed)
    codes, counts = np.unique(tastes, return_counts=True)
    eligible = codes[counts >= MIN_TASTE_PRODUCTS]
    members = {code: np.flatnonzero(tastes == code) for code in eligible}
    shoppers = []
    for _ in range(n_shoppers):
        own = rng.choice(eligible, size=rng.integers(1, 4), replace=False)
        taste = rng.choice(own)
        rows: list[int] = []
        kinds: list[str] = []
        times: list[float] = []
        t = 0.0
        for _session in range(rng.integers(3, 7)):
            if rng.random() >= STAY:
                taste = rng.choice(own)
            t += rng.exponential(2 * DAY)
            for _ in range(rng.integers(3, 9)):
                stray = rng.random() < noise
                pool = np.arange(len(tastes)) if stray else members[taste]
                row = int(rng.choice(pool))
                if row in rows:
                    continue
                rows.append(row)
                kinds.append(KINDS[rng.choice(len(KINDS), p=NOISE_KINDS if stray else TASTE_KINDS)])
                times.append(t)
                t += 60.0
        if len(rows) >= 2:
            shoppers.append(Shopper(np.array(rows), tuple(kinds), np.array(times)))
    return shoppers


def read_interaction_log(path: Path, ids: Sequence[str]) -> list[Shopper]:
    """A real log, CSV with columns user, product, time (epoch seconds) and optionally kind.
    Products not in the catalog are dropped; users need two interactions left."""
    row_of = {pid: i for i, pid in enumerate(ids)}
    by_user: dict[str, list[tuple[float, int, str]]] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        for record in csv.DictReader(handle):
            if record["product"] in row_of:
                kind = record.get("kind") or "view"
                by_user.setdefault(record["user"], []).append((float(record["time"]), row_of[record["product"]], kind))
    shoppers = []
    for events in by_user.values():
        events.sort()
        if len(events) >= 2:
            shoppers.append(Shopper(np.array([r for _, r, _ in events]), tuple(k for _, _, k in events),
                                    np.array([t for t, _, _ in events])))
    return shoppers


# A method ranks the catalog for one shopper's history: it returns one score per product.
Scorer = Callable[[Shopper], np.ndarray]


def popularity(shoppers: Sequence[Shopper], n_products: int) -> Scorer:
    """Interaction counts over every shopper's history (held-out interactions left out)."""
    counts = np.bincount(np.concatenate([s.rows[:-1] for s in shoppers]), minlength=n_products).astype(np.float32)
    return lambda shopper: counts


def last_item(vectors: np.ndarray) -> Scorer:
    return lambda shopper: vectors @ vectors[shopper.rows[-1]]


def profile_scorer(vectors: np.ndarray, weights: Mapping[str, float], half_life_s: float) -> Scorer:
    def score(shopper: Shopper) -> np.ndarray:
        w = np.array([weights.get(kind, 0.0) for kind in shopper.kinds])
        return vectors @ decayed_profile(vectors[shopper.rows], w, shopper.times, half_life_s)
    return score


def leave_last_out(shoppers: Sequence[Shopper], scorer: Scorer, rerank: Callable[[Shopper, np.ndarray], np.ndarray] | None = None) -> dict[str, float]:
    hits, gains = [], []
    for shopper in shoppers:
        history = dataclasses.replace(shopper, rows=shopper.rows[:-1], kinds=shopper.kinds[:-1], times=shopper.times[:-1])
        scores = np.array(scorer(history), dtype=np.float32, copy=True)
        scores[history.rows] = -np.inf
        pool = K * 4 if rerank else K
        top = np.argpartition(-scores, pool)[:pool]
        top = top[np.argsort(-scores[top], kind="stable")]
        top = rerank(history, top) if rerank else top[:K]
        found = np.flatnonzero(top[:K] == shopper.rows[-1])
        hits.append(bool(found.size))
        gains.append(1.0 / np.log2(found[0] + 2) if found.size else 0.0)
    return {"hr@10": float(np.mean(hits)), "ndcg@10": float(np.mean(gains))}


def mmr_rerank(vectors: np.ndarray, weights: Mapping[str, float], half_life_s: float) -> Callable[[Shopper, np.ndarray], np.ndarray]:
    def rerank(shopper: Shopper, top: np.ndarray) -> np.ndarray:
        w = np.array([weights.get(kind, 0.0) for kind in shopper.kinds])
        profile = decayed_profile(vectors[shopper.rows], w, shopper.times, half_life_s)
        return top[mmr(profile, vectors[top], K, MMR_DIVERSITY)]
    return rerank


def tune(vectors: np.ndarray, shoppers: Sequence[Shopper]) -> tuple[str, str, list[dict[str, Any]]]:
    """The weighting and half-life with the best NDCG@10 on these (validation) shoppers."""
    grid = []
    for wname, weights in WEIGHTINGS.items():
        for hname, half_life in HALF_LIVES.items():
            grid.append({"weights": wname, "half_life": hname,
                         **leave_last_out(shoppers, profile_scorer(vectors, weights, half_life))})
    best = max(grid, key=lambda row: row["ndcg@10"])
    return best["weights"], best["half_life"], grid


def evaluate_shoppers(vectors: Mapping[str, np.ndarray], shoppers: Sequence[Shopper], validation: Sequence[Shopper],
                      n_products: int) -> dict[str, Any]:
    wname, hname, grid = tune(vectors["fused"], validation)
    weights, half_life = WEIGHTINGS[wname], HALF_LIVES[hname]
    rows = [{"method": "popularity", "vectors": "-", **leave_last_out(shoppers, popularity(shoppers, n_products))}]
    for name, v in vectors.items():
        methods: dict[str, tuple[Scorer, Any]] = {
            "last-item-similar": (last_item(v), None),
            "mean profile": (profile_scorer(v, {k: 1.0 for k in KINDS}, 0.0), None),
            "decayed profile": (profile_scorer(v, weights, half_life), None),
            "decayed profile + MMR": (profile_scorer(v, weights, half_life), mmr_rerank(v, weights, half_life)),
        }
        for method, (scorer, rerank) in methods.items():
            rows.append({"method": method, "vectors": name, **leave_last_out(shoppers, scorer, rerank)})
    return {"shoppers": len(shoppers), "products": n_products, "weights": wname, "half_life": hname,
            "mmr_diversity": MMR_DIVERSITY, "methods": rows, "tuning": grid}


def format_table(report: Mapping[str, Any]) -> str:
    lines = ["| method | vectors | HR@10 | NDCG@10 |", "|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['vectors']} | {r['hr@10']:.3f} | {r['ndcg@10']:.3f} |" for r in report["methods"]]
    return "\n".join(lines)


def catalog_vectors(args: argparse.Namespace) -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
    """Product ids, taste codes and unit vectors (fused as the worker fuses, text, image) of the
    catalog or of a seeded subset of ``--products`` of it."""
    catalog = load_catalog(args.dataset, mapping_from_args(args))
    if args.products and args.products < len(catalog):
        keep = np.sort(np.random.default_rng(args.seed).choice(len(catalog), args.products, replace=False))
        catalog = dataclasses.replace(catalog, products=tuple(catalog.products[i] for i in keep))
    features = extract_features(catalog, args.model_dir, args.cache_dir, args.providers, threads=2)
    batch = {m: ModalityBatch(features.vectors[m], features.present[m]) for m in ("text", "image")}
    fusion = ConcatFusion(features.dims["text"], features.dims["image"], args.text_weight)
    fused = fusion.fuse(batch)["fused"].vectors
    vectors = {"fused": fused, "text": l2_normalize(features.vectors["text"]), "image": l2_normalize(features.vectors["image"])}
    return catalog.ids, catalog.labels("fine"), vectors


def add_shopper_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("shoppers (--shoppers: recommendations for users, see exporters/shoppers.py)")
    g.add_argument("--shoppers", action="store_true", help="evaluate user recommendations instead of item-to-item")
    g.add_argument("--interactions", type=Path, help="a real interaction log CSV (user, product, time[, kind]) instead of the simulator")
    g.add_argument("--n-shoppers", type=int, default=2000, help="simulated shoppers (default 2000)")
    g.add_argument("--products", type=int, help="a seeded random subset of this many products (default: all)")
    g.add_argument("--noise", type=float, default=0.2, help="share of stray interactions (default 0.2)")


def run_shoppers_eval(args: argparse.Namespace, text_weight: float) -> dict[str, Any]:
    args.text_weight = text_weight
    with contextlib.redirect_stdout(sys.stderr):  # with --json, stdout carries only the JSON
        ids, tastes, vectors = catalog_vectors(args)
    if args.interactions:
        shoppers = read_interaction_log(args.interactions, ids)
        cut = len(shoppers) // 5  # a fifth of the users tune, the rest are reported
        validation, shoppers = shoppers[:cut], shoppers[cut:]
    else:
        shoppers = simulate_shoppers(tastes, args.n_shoppers, args.seed, args.noise)
        validation = simulate_shoppers(tastes, args.n_shoppers, args.seed + 1, args.noise)
    report = evaluate_shoppers(vectors, shoppers, validation, len(ids))
    print(json.dumps(report, indent=2) if args.json else format_table(report), flush=True)
    print(f"{report['shoppers']} shoppers, {report['products']} products; tuned on other shoppers: weights "
          f"{report['weights']}, half-life {report['half_life']}", file=sys.stderr)
    return report
