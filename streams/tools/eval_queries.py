"""``shelfstream eval --queries attributes``: search quality from shopper-style queries that nobody
hand-writes. Each distinct combination of the template's attribute values among the test split's
products becomes a query (``"{baseColour} {articleType} for {gender}"`` -> "Red Handbags for
Women"); a hit is relevant when it has every one of those values. Reported for dense, keyword and
hybrid search through the same ``Searcher`` the API serves, on two indexes:

- ``titles``: titles and descriptions only (the attributes are kept out of the payload the keyword
  index reads): what the representations are worth;
- ``full``: with the attribute values: what the system delivers (keyword search over those very
  values answers such queries almost by construction).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import re
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from exporters.catalog import split_of
from streams.adapters.store import ProductPoint, ProductStore
from streams.settings import Settings
from streams.worker.encoders import load_encoders
from streams.worker.search import TEXT_MODES, Page, Searcher

DEFAULT_TEMPLATE = "{baseColour} {articleType} for {gender}"
VARIANTS = ("titles", "full")
CUTOFF = 10
FIELD = re.compile(r"{(\w+)}")


@dataclass(frozen=True)
class Row:
    product_id: str
    title: str
    description: str
    category: list[str]
    attributes: dict[str, str]
    columns: dict[str, str]  # every column, for the template


@dataclass(frozen=True)
class Query:
    text: str
    wanted: dict[str, str]  # column -> value a relevant product has

    def relevant(self, row: Row) -> bool:
        return all(row.columns.get(column, "").lower() == value.lower() for column, value in self.wanted.items())


def read_rows(csv_path: Path, mapping: Mapping[str, Any]) -> list[Row]:
    """The catalog's rows through the publish mapping's columns (id, title, category, attributes)."""
    def column(name: str) -> str:
        spec = mapping.get(name)
        return spec if isinstance(spec, str) else ""

    rows = []
    with csv_path.open(newline="") as handle:
        for raw in csv.DictReader(handle):
            rows.append(Row(
                raw[column("product_id")], raw.get(column("title"), ""), raw.get(column("description"), "") or "",
                [raw[c] for c in mapping.get("category", []) if raw.get(c)],
                {c: raw[c] for c in mapping.get("attributes", []) if raw.get(c)}, dict(raw),
            ))
    return rows


def make_queries(rows: Sequence[Row], template: str, min_relevant: int) -> list[Query]:
    """One query per distinct value combination of the template's fields held by at least
    ``min_relevant`` products."""
    fields = FIELD.findall(template)
    if not fields:
        raise ValueError(f"the template {template!r} names no {{column}}")
    groups: dict[tuple[str, ...], int] = defaultdict(int)
    for row in rows:
        values = tuple(row.columns.get(f, "") for f in fields)
        if all(values):
            groups[values] += 1
    return [Query(template.format(**dict(zip(fields, values))), dict(zip(fields, values)))
            for values, count in sorted(groups.items()) if count >= min_relevant]


def metrics(ranked: Sequence[bool], relevant_total: int, cutoff: int = CUTOFF) -> dict[str, float]:
    """P@k, nDCG@k (binary gains) and MRR (reciprocal rank of the first relevant hit in the top k)."""
    top = list(ranked[:cutoff])
    dcg = sum(1 / math.log2(rank + 2) for rank, hit in enumerate(top) if hit)
    ideal = sum(1 / math.log2(rank + 2) for rank in range(min(relevant_total, cutoff)))
    first = next((rank for rank, hit in enumerate(top) if hit), None)
    return {"p@10": sum(top) / cutoff, "ndcg@10": dcg / ideal if ideal else 0.0,
            "mrr": 1 / (first + 1) if first is not None else 0.0}


def index_rows(settings: Settings, rows: Sequence[Row], vectors: np.ndarray, variant: str) -> ProductStore:
    """A fresh store of the rows' title vectors; the ``titles`` variant leaves the attribute values
    and category levels out of the payload that the keyword index reads."""
    store = ProductStore(dataclasses.replace(settings, collection=f"eval_{variant}"), {"text": vectors.shape[1]})
    for start in range(0, len(rows), 256):
        chunk = rows[start:start + 256]
        store.upsert([ProductPoint(r.product_id, {"text": v}, {
            "product_id": r.product_id, "title": r.title, "description": r.description,
            "category": r.category if variant == "full" else [],
            "category_path": [" > ".join(r.category[: i + 1]) for i in range(len(r.category))],
            "attributes": r.attributes if variant == "full" else {}, "modalities": ["text"],
        }) for r, v in zip(chunk, vectors[start:start + 256])])
    return store


def evaluate(settings: Settings, rows: Sequence[Row], queries: Sequence[Query],
             keyword_weights: Sequence[float], value_weights: Sequence[float]) -> dict[str, Any]:
    """Every mode on both indexes; hybrid once per pair of keyword-list weights (free text, values).
    On the titles index the values list is empty, so pairs with one text weight tie there."""
    encoders = load_encoders(settings)
    by_id = {row.product_id: row for row in rows}
    totals = [sum(q.relevant(r) for r in rows) for q in queries]
    report: dict[str, Any] = {"queries": len(queries), "products": len(rows), "variants": {}}
    vectors = encoders.text.encode([" ".join(filter(None, (r.title, r.description))) for r in rows])
    for variant in VARIANTS:
        store = index_rows(settings, rows, vectors, variant)
        try:
            results: dict[str, dict[str, float]] = {}
            runs: list[tuple[str, tuple[float, float] | None]] = [(mode, None) for mode in TEXT_MODES if mode != "hybrid"]
            runs += [("hybrid", (text, values)) for text in keyword_weights for values in value_weights]
            for mode, weights in runs:
                searcher = Searcher(store, encoders, settings.max_image_pixels, mode, *(weights or (1.0, 1.0)))
                scores = []
                for query, total in zip(queries, totals):
                    hits = searcher.by_text(query.text, page=Page(CUTOFF))
                    scores.append(metrics([query.relevant(by_id[h.product_id]) for h in hits], total))
                name = mode if weights is None else f"hybrid (keyword weights {weights[0]:g} text, {weights[1]:g} values)"
                results[name] = {k: round(float(np.mean([s[k] for s in scores])), 3) for k in scores[0]}
                log(f"{variant:<6} {name:<32} {results[name]}")
            report["variants"][variant] = results
        finally:
            store.close()
    return report


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def best_mode(report: Mapping[str, Any]) -> str:
    """The mode (and hybrid weight) with the highest nDCG@10 on the titles-only index (what the
    representations are worth); a tie at three decimals goes to the better one on the full index."""
    titles, full = report["variants"]["titles"], report["variants"]["full"]
    return max(titles, key=lambda name: (titles[name]["ndcg@10"], full[name]["ndcg@10"]))


def format_report(report: Mapping[str, Any]) -> str:
    lines = [f"{report['queries']} attribute queries over {report['products']} test products",
             "| index | mode | P@10 | nDCG@10 | MRR |", "|---|---|---|---|---|"]
    for variant, results in report["variants"].items():
        for mode, m in results.items():
            lines.append(f"| {variant} | {mode} | {m['p@10']:.3f} | {m['ndcg@10']:.3f} | {m['mrr']:.3f} |")
    lines.append(f"best (nDCG@10 on titles only; ties by the full index): {best_mode(report)}")
    return "\n".join(lines)


def add_attribute_query_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("attribute queries (--queries attributes)")
    group.add_argument("--queries", choices=["attributes"],
                       help="evaluate search (dense, keyword, hybrid) on queries made from catalog attributes")
    group.add_argument("--template", default=DEFAULT_TEMPLATE, help=f"query template of columns (default {DEFAULT_TEMPLATE!r})")
    group.add_argument("--publish-mapping", type=Path,
                       help="publish mapping of the catalog's columns (default: demo/catalog/mapping.json)")
    group.add_argument("--min-relevant", type=int, default=5, help="queries need this many relevant test products (default 5)")
    group.add_argument("--keyword-weights", default="0.25,0.5,1",
                       help="hybrid weights of the free-text keyword list to compare, comma-separated (default 0.25,0.5,1)")
    group.add_argument("--value-weights", default="0.5,1,2",
                       help="hybrid weights of the category/attribute-values keyword list to compare (default 0.5,1,2)")


def run_attribute_eval(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    dataset = Path(args.dataset)
    csv_path = dataset if dataset.is_file() else dataset / "products.csv"
    mapping_path = args.publish_mapping or Path(__file__).resolve().parents[2] / "demo" / "catalog" / "mapping.json"
    rows = [row for row in read_rows(csv_path, json.loads(mapping_path.read_text())) if split_of(row.product_id) == "test"]
    queries = make_queries(rows, args.template, args.min_relevant)
    with tempfile.TemporaryDirectory(prefix="shelfstream-eval-") as folder:
        local = dataclasses.replace(settings, qdrant_url="", qdrant_path=folder)
        report = evaluate(local, rows, queries, [float(w) for w in args.keyword_weights.split(",")],
                          [float(w) for w in args.value_weights.split(",")])
    print(json.dumps(report, indent=2) if getattr(args, "json", False) else format_report(report), flush=True)
    return report

