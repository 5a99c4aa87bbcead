"""Read a product catalog in a generic, documented format and split it by product id.

Nothing here knows any retailer: a *mapping* says which columns hold what, so a new catalog
needs flags or a small JSON file, not code.

Catalog format
--------------
A CSV file (header row) or a JSONL file (one flat JSON object per line). Columns, named by the
mapping:

- ``id``: the product id (required, unique; later duplicates are dropped and counted).
- ``title``: the product title (required).
- ``description``: optional longer text, appended to the title for the text encoder.
- ``fine`` / ``coarse``: the fine and coarse category labels used by training and evaluation.
  Each is a comma-separated list of label specs joined with ``" / "``. A spec is a column name
  (``articleType``) or a slice of a category path split on ``path_sep``
  (``category_path[:1]`` = its first level, ``category_path`` = the whole path).
- ``image`` / ``video``: a column holding a path, or a template with ``{column}`` fields
  (``images/{id}.jpg``). Relative paths resolve against ``media_root`` (default: the folder of
  the catalog file). Empty values mean the product has no such media.

Mapping: flags (``--id id --title productDisplayName --fine articleType
--coarse masterCategory,subCategory --image "images/{id}.jpg"``) or ``--mapping FILE`` with the
same keys in JSON (``{"title": "productDisplayName", "coarse": ["masterCategory",
"subCategory"], ...}``); flags override the file.

Split: each id goes to train / val / test (80/10/10) by a SHA-256 of ``seed:id``, so a product
keeps its split when the catalog grows or is reordered.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from encoders_onnx.text import encoder_text

SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
LABEL_JOIN = " / "
_SLICE = re.compile(r"^(?P<col>[^\[\]]+?)\s*(?:\[(?P<start>-?\d*):(?P<stop>-?\d*)\])?$")
_TEMPLATE_FIELD = re.compile(r"\{([^{}]+)\}")


@dataclass(frozen=True)
class CatalogMapping:
    """Which catalog columns hold the id, texts, labels and media of a product."""

    id: str = "id"
    title: str = "title"
    description: str | None = None
    fine: tuple[str, ...] = ("category",)
    coarse: tuple[str, ...] = ()
    image: str | None = "image"
    video: str | None = None
    file: str | None = None
    media_root: str | None = None
    path_sep: str = ">"

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "CatalogMapping":
        """Build from JSON-like values; label specs may be lists or comma-separated strings."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown mapping keys {sorted(unknown)}; known: {sorted(known)}")
        cleaned = dict(values)
        for key in ("fine", "coarse"):
            if key in cleaned:
                cleaned[key] = _label_specs(cleaned[key])
        return cls(**cleaned)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class Product:
    id: str
    title: str
    description: str
    fine: str
    coarse: str
    image: Path | None
    video: Path | None

    @property
    def text(self) -> str:
        """What the text encoder sees: the title, then the description when there is one."""
        return encoder_text(self.title, self.description or "")


@dataclass(frozen=True)
class Catalog:
    path: Path
    mapping: CatalogMapping
    products: tuple[Product, ...]
    dropped_duplicates: int = 0

    def __len__(self) -> int:
        return len(self.products)

    @property
    def ids(self) -> list[str]:
        return [p.id for p in self.products]

    def labels(self, level: str) -> np.ndarray:
        """Integer codes of the ``fine`` or ``coarse`` labels (codes follow sorted label names)."""
        names = [getattr(p, level) for p in self.products]
        _, codes = np.unique(np.asarray(names, dtype=object).astype(str), return_inverse=True)
        return codes.astype(np.int64)

    def split(self, seed: int = 0) -> dict[str, np.ndarray]:
        """Row indices of each split; deterministic in (id, seed) only."""
        names = np.asarray([split_of(p.id, seed) for p in self.products])
        return {s: np.flatnonzero(names == s) for s in SPLITS}

    def fingerprint(self) -> str:
        """Hash of everything the catalog contributes to training: ids, texts, labels, media paths."""
        h = hashlib.sha256()
        for p in self.products:
            h.update(json.dumps([p.id, p.text, p.fine, p.coarse, str(p.image), str(p.video)]).encode())
        return h.hexdigest()[:16]

    def summary(self, seed: int = 0) -> dict[str, Any]:
        """What a model manifest records about its training data."""
        split = self.split(seed)
        return {
            "catalog": str(self.path),
            "fingerprint": self.fingerprint(),
            "products": len(self),
            "split_seed": seed,
            "splits": {s: int(len(idx)) for s, idx in split.items()},
            "fine_labels": len({p.fine for p in self.products}),
            "coarse_labels": len({p.coarse for p in self.products}),
            "with_image": sum(p.image is not None for p in self.products),
            "with_video": sum(p.video is not None for p in self.products),
            "with_description": sum(bool(p.description) for p in self.products),
            "mapping": self.mapping.to_dict(),
        }


def split_of(product_id: str, seed: int = 0) -> str:
    """train / val / test from a uniform hash of the id, so splits never depend on row order."""
    digest = hashlib.sha256(f"{seed}:{product_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    edges = np.cumsum(SPLIT_FRACTIONS)
    return SPLITS[int(np.searchsorted(edges, u, side="right"))]


def load_catalog(dataset: str | Path, mapping: CatalogMapping) -> Catalog:
    """Read the catalog file (``dataset`` is the file, or a folder holding one CSV/JSONL)."""
    path = _catalog_file(Path(dataset), mapping.file)
    media_root = Path(mapping.media_root) if mapping.media_root else path.parent
    if not media_root.is_absolute():
        media_root = path.parent / media_root
    products: dict[str, Product] = {}
    duplicates = 0
    for line, row in enumerate(_rows(path), start=2):
        try:
            product = _product(row, mapping, media_root)
        except KeyError as exc:
            raise ValueError(f"{path}:{line}: column {exc} is missing (mapping {mapping.to_dict()})") from None
        if not product.id:
            raise ValueError(f"{path}:{line}: empty product id")
        if product.id in products:
            duplicates += 1
            continue
        products[product.id] = product
    if not products:
        raise ValueError(f"{path}: no products")
    return Catalog(path=path, mapping=mapping, products=tuple(products.values()), dropped_duplicates=duplicates)


def _catalog_file(dataset: Path, name: str | None) -> Path:
    if dataset.is_file():
        return dataset
    if name:
        return dataset / name
    found = sorted(p for p in dataset.iterdir() if p.suffix.lower() in {".csv", ".jsonl"})
    if len(found) != 1:
        raise ValueError(f"{dataset}: expected one .csv or .jsonl catalog, found {[p.name for p in found]}; "
                         "name it with --catalog-file")
    return found[0]


def _rows(path: Path) -> Iterator[Mapping[str, Any]]:
    with path.open(newline="", encoding="utf-8") as f:
        if path.suffix.lower() == ".jsonl":
            for line in f:
                if line.strip():
                    yield json.loads(line)
        else:
            yield from csv.DictReader(f)


def _product(row: Mapping[str, Any], m: CatalogMapping, media_root: Path) -> Product:
    return Product(
        id=_text(row[m.id]),
        title=_text(row[m.title]),
        description=_text(row[m.description]) if m.description else "",
        fine=_label(row, m.fine, m.path_sep),
        coarse=_label(row, m.coarse, m.path_sep) if m.coarse else "",
        image=_media(row, m.image, media_root),
        video=_media(row, m.video, media_root),
    )


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _label(row: Mapping[str, Any], specs: tuple[str, ...], sep: str) -> str:
    parts: list[str] = []
    for spec in specs:
        match = _SLICE.match(spec)
        if match is None:
            raise ValueError(f"bad label spec {spec!r}")
        value = _text(row[match["col"].strip()])
        if "[" not in spec:
            parts.append(value)
            continue
        levels = [v.strip() for v in value.split(sep)]
        start = int(match["start"]) if match["start"] else None
        stop = int(match["stop"]) if match["stop"] else None
        parts.extend(levels[start:stop])
    return LABEL_JOIN.join(parts)


def _media(row: Mapping[str, Any], spec: str | None, root: Path) -> Path | None:
    if not spec:
        return None
    if "{" in spec:
        fields = {name: _text(row[name]) for name in _TEMPLATE_FIELD.findall(spec)}
        if not all(fields.values()):
            return None
        value = spec.format(**fields)
    else:
        value = _text(row[spec])
    if not value:
        return None
    path = Path(value)
    return path if path.is_absolute() else root / path


def _label_specs(value: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(s.strip() for s in items if s.strip())


def add_catalog_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that locate a catalog and map its columns (shared by train and eval)."""
    g = parser.add_argument_group("catalog (see exporters/catalog.py for the format)")
    g.add_argument("--dataset", required=True, help="catalog file, or a folder holding one .csv/.jsonl")
    g.add_argument("--mapping", help="JSON file with mapping keys; flags below override it")
    g.add_argument("--catalog-file", dest="file", help="catalog file name inside --dataset")
    g.add_argument("--id", help="id column (default: id)")
    g.add_argument("--title", help="title column (default: title)")
    g.add_argument("--description", help="optional description column")
    g.add_argument("--fine", help="fine label spec(s), comma-separated (default: category)")
    g.add_argument("--coarse", help="coarse label spec(s), comma-separated, e.g. 'path[:1]'")
    g.add_argument("--image", help="image path column or template like 'images/{id}.jpg' (default: image)")
    g.add_argument("--video", help="optional video path column or template")
    g.add_argument("--media-root", help="folder that relative media paths start from (default: the catalog's)")
    g.add_argument("--path-sep", help="separator of category paths (default: '>')")


def mapping_from_args(args: argparse.Namespace) -> CatalogMapping:
    """The mapping file's values, overridden by any flag that was given."""
    values: dict[str, Any] = json.loads(Path(args.mapping).read_text()) if args.mapping else {}
    for f in dataclasses.fields(CatalogMapping):
        flag = getattr(args, f.name, None)
        if flag is not None:
            values[f.name] = flag
    return CatalogMapping.from_dict(values)
