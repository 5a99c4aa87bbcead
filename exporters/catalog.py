"""The one catalog reader: CSV or JSONL/NDJSON files, columns named by one mapping dialect, for
``publish`` (events), ``train`` / ``eval`` (labelled products) and ``make-videos`` (image paths).

Nothing here knows any retailer: a *mapping* says which columns hold what, so a new catalog
needs flags or a small JSON file, not code.

Catalog format
--------------
A CSV file (header row) or a JSONL/NDJSON file (one JSON object per line; blank lines are
skipped). A line that cannot be read (not JSON, not an object, a missing label column, an empty
id) is reported with its row number through ``on_error`` and skipped, the same in every tool.

Mapping dialect
---------------
A JSON object (or flags) from the keys below to the catalog's columns. A value is:

- a column name (``"productDisplayName"``); under ``image`` the column may hold several paths
  or URIs split by ``|``;
- a template with ``{column}`` fields (``"images/{id}.jpg"``): empty when a field is empty;
- a list of columns: under ``category`` they are joined into a path, under ``attributes`` they
  make one attribute per column, named after it;
- ``{"value": ...}``: a constant.

Keys that fill an event field: ``id`` (also spelled ``product_id``), ``title``, ``description``,
``category``, ``attributes``, ``price``, ``currency``, ``image`` (also ``image_uris``),
``video`` (also ``video_uri``), ``op``, ``version``, ``event_time``. Keys for training: ``fine``
/ ``coarse``, comma-separated label specs joined with ``" / "``, each a column
(``articleType``) or a slice of a category path split on ``path_sep`` (``category_path[:1]``).
Reader options: ``file`` (the catalog inside a dataset folder), ``media_root`` (relative media
paths start there; default: the catalog's folder; a relative root starts at the catalog's
folder too), ``path_sep``.

Defaults: training reads ``id``, ``title``, ``category`` (fine label) and ``image`` columns;
``publish`` without a mapping reads each event field from the column of its own name.

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
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from encoders_onnx.text import encoder_text

SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
LABEL_JOIN = " / "
_SLICE = re.compile(r"^(?P<col>[^\[\]]+?)\s*(?:\[(?P<start>-?\d*):(?P<stop>-?\d*)\])?$")
_TEMPLATE_FIELD = re.compile(r"\{([^{}]+)\}")


# Mapping keys that fill an event field, in the event's order, and the event field each fills
# (the names of streams/schema/events.py, which this layer cannot import: a test compares them).
EVENT_FIELD_OF = {"op": "op", "id": "product_id", "version": "version", "title": "title", "description": "description",
                  "attributes": "attributes", "category": "category", "price": "price", "currency": "currency",
                  "image": "image_uris", "video": "video_uri", "event_time": "event_time"}
SPELLED_AS_EVENT_FIELD = {event: key for key, event in EVENT_FIELD_OF.items() if event != key}
JSONL_SUFFIXES = {".jsonl", ".ndjson", ".json"}


@dataclass(frozen=True)
class CatalogMapping:
    """Which catalog columns hold each field of a product (see the module docstring)."""

    id: Any = "id"
    title: Any = "title"
    description: Any = None
    category: Any = None
    attributes: Any = None
    price: Any = None
    currency: Any = None
    image: Any = "image"
    video: Any = None
    op: Any = None
    version: Any = None
    event_time: Any = None
    fine: tuple[str, ...] = ("category",)
    coarse: tuple[str, ...] = ()
    file: str | None = None
    media_root: str | None = None
    path_sep: str = ">"

    @classmethod
    def event_identity(cls) -> "CatalogMapping":
        """Every event field read from the column of its own name (``publish`` without a mapping)."""
        return cls(**{key: event for key, event in EVENT_FIELD_OF.items()})

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], base: "CatalogMapping | None" = None) -> "CatalogMapping":
        """Build from JSON-like values over ``base`` (default: the training defaults); label
        specs may be lists or comma-separated strings, column lists become tuples."""
        cleaned = {SPELLED_AS_EVENT_FIELD.get(key, key): value for key, value in values.items()}
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = set(cleaned) - set(known)
        if unknown:
            raise ValueError(f"mapping names unknown keys {sorted(unknown)}; known: {', '.join(known)} "
                             f"(or {', '.join(SPELLED_AS_EVENT_FIELD)})")
        for key, value in cleaned.items():
            if key in ("fine", "coarse"):
                cleaned[key] = _label_specs(value)
            elif isinstance(value, list):
                cleaned[key] = tuple(value)
        return dataclasses.replace(base or cls(), **cleaned)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def columns(self, keys: Iterable[str] | None = None) -> list[str]:
        """The columns that ``keys`` (default: all) name, in order, each once."""
        named: list[str] = []
        for key in keys if keys is not None else [f.name for f in dataclasses.fields(self)]:
            key = SPELLED_AS_EVENT_FIELD.get(key, key)
            spec = getattr(self, key)
            if key in ("fine", "coarse"):
                named += [_SLICE.match(s)["col"].strip() for s in spec if _SLICE.match(s)]
            elif isinstance(spec, str) and key in EVENT_FIELD_OF:
                named += _TEMPLATE_FIELD.findall(spec) if "{" in spec else [spec]
            elif isinstance(spec, tuple):
                named += list(spec)
        return list(dict.fromkeys(named))

    def check_columns(self, path: Path, keys: Iterable[str] | None = None) -> None:
        """Raise ValueError naming the first column ``keys`` name that a CSV file lacks, with the
        file's columns (a JSONL line may leave out any key, so JSONL is not checked)."""
        header = csv_header(path)
        if header is None:
            return
        missing = [column for column in self.columns(keys) if column not in header]
        if missing:
            more = f" (nor {', '.join(map(repr, missing[1:]))})" if missing[1:] else ""
            raise ValueError(f"{path}: column {missing[0]!r} is missing{more}; the file's columns: {', '.join(header)}")


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

    def check_media(self) -> None:
        """Raise ValueError, naming the first path tried and the flags that fix it, when the
        mapping names images (or videos) and not one product's file exists: a wrong template or
        media root, not a few broken files."""
        for kind in ("image", "video"):
            paths = [getattr(p, kind) for p in self.products if getattr(p, kind) is not None]
            if getattr(self.mapping, kind) and not any(path.is_file() for path in paths):
                tried = f"first tried: {paths[0]}" if paths else "no row names one"
                raise ValueError(f"{self.path}: no readable {kind} for any of {len(self)} products ({tried}); "
                                 f"fix --{kind} (now {getattr(self.mapping, kind)!r}) or --media-root "
                                 f"(now {str(media_root_of(self.path, self.mapping))!r})")

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


OnError = Callable[[int, str], None]


@dataclass(frozen=True)
class BadRow:
    """A catalog line that could not be read, in place of its row."""

    reason: str


def read_rows(path: Path) -> Iterator[tuple[int, Mapping[str, Any] | BadRow]]:
    """(row number from 1, row) of a CSV (header line) or JSONL/NDJSON catalog; a JSON line that
    is not an object comes as a ``BadRow``, so one bad line does not end the catalog."""
    with path.open(encoding="utf-8", newline="") as handle:
        if path.suffix.lower() not in JSONL_SUFFIXES:
            yield from enumerate(csv.DictReader(handle), start=1)
            return
        number = 0
        for line in handle:
            if not line.strip():
                continue
            number += 1
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, RecursionError, ValueError) as exc:
                yield number, BadRow(f"not valid JSON ({exc})")
                continue
            yield number, row if isinstance(row, dict) else BadRow(f"not a JSON object but {type(row).__name__}")


def csv_header(path: Path) -> list[str] | None:
    """The column names of a CSV catalog; None for JSONL."""
    if path.suffix.lower() in JSONL_SUFFIXES:
        return None
    with path.open(encoding="utf-8", newline="") as handle:
        return next(csv.reader(handle), [])


def report_skipped(path: Path) -> OnError:
    """The ``on_error`` every tool uses by default: one line on stderr per skipped row."""
    return lambda number, reason: print(f"skipped {path.name} row {number}: {reason}", file=sys.stderr)


def map_row(row: Mapping[str, Any], mapping: CatalogMapping, media_root: Path) -> dict[str, Any]:
    """The event fields a row holds under ``mapping`` (empty ones left out), by event field
    name. Media: a URI or an absolute path stays as it is (a str); a relative path becomes a
    ``Path`` under ``media_root``; ``image_uris`` is always a list."""
    data: dict[str, Any] = {}
    for key, name in EVENT_FIELD_OF.items():
        value = _value(row, getattr(mapping, key), key)
        if value not in (None, ""):
            data[name] = value
    if "image_uris" in data:
        uris = data["image_uris"].split("|") if isinstance(data["image_uris"], str) else data["image_uris"]
        data["image_uris"] = [_media(str(uri).strip(), media_root) for uri in uris if str(uri).strip()]
    if "video_uri" in data:
        data["video_uri"] = _media(str(data["video_uri"]).strip(), media_root)
    return data


def media_root_of(path: Path, mapping: CatalogMapping) -> Path:
    """Where relative media paths start: the mapping's root, relative to the catalog's folder."""
    return path.parent / mapping.media_root if mapping.media_root else path.parent


def load_catalog(dataset: str | Path, mapping: CatalogMapping, on_error: OnError | None = None) -> Catalog:
    """Read the catalog file (``dataset`` is the file, or a folder holding one CSV/JSONL); rows
    that cannot be read go to ``on_error`` (default: a line on stderr) and are skipped."""
    path = _catalog_file(Path(dataset), mapping.file)
    mapping.check_columns(path)
    media_root = media_root_of(path, mapping)
    on_error = on_error or report_skipped(path)
    products: dict[str, Product] = {}
    duplicates = 0
    for number, row in read_rows(path):
        try:
            if isinstance(row, BadRow):
                raise ValueError(row.reason)
            product = _product(row, mapping, media_root)
        except (KeyError, ValueError) as exc:
            on_error(number, f"column {exc} is missing" if isinstance(exc, KeyError) else str(exc))
            continue
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
    found = sorted(p for p in dataset.iterdir() if p.suffix.lower() in {".csv", *JSONL_SUFFIXES})
    if len(found) != 1:
        raise ValueError(f"{dataset}: expected one .csv or .jsonl catalog, found {[p.name for p in found]}; "
                         "name it with --catalog-file")
    return found[0]


def _product(row: Mapping[str, Any], m: CatalogMapping, media_root: Path) -> Product:
    data = map_row(row, m, media_root)
    product_id = _text(data.get("product_id"))
    if not product_id:
        raise ValueError("empty product id")
    images = data.get("image_uris", [])
    return Product(
        id=product_id,
        title=_text(data.get("title")),
        description=_text(data.get("description")),
        fine=_label(row, m.fine, m.path_sep),
        coarse=_label(row, m.coarse, m.path_sep) if m.coarse else "",
        image=Path(images[0]) if images else None,
        video=Path(data["video_uri"]) if "video_uri" in data else None,
    )


def _value(row: Mapping[str, Any], spec: Any, key: str) -> Any:
    """What ``spec`` reads from ``row``: a constant, a column list, a template or one column."""
    if spec is None:
        return None
    if isinstance(spec, Mapping):
        return spec.get("value")
    if isinstance(spec, tuple):
        present = [column for column in spec if row.get(column) not in (None, "")]
        return {c: str(row[c]) for c in present} if key == "attributes" else [str(row[c]) for c in present]
    if "{" in spec:
        fields = {name: _text(row.get(name)) for name in _TEMPLATE_FIELD.findall(spec)}
        return spec.format(**fields) if all(fields.values()) else None
    return row.get(spec)


def _media(uri: str, root: Path) -> str | Path:
    if "://" in uri or Path(uri).is_absolute():
        return uri
    return root / uri


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


def _label_specs(value: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(s.strip() for s in items if s.strip())


MAPPING_FLAGS = ("file", "id", "title", "description", "fine", "coarse", "image", "video", "media_root", "path_sep")


def add_catalog_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that locate a catalog and map its columns (shared by train and eval)."""
    g = parser.add_argument_group("catalog (see exporters/catalog.py for the format)")
    g.add_argument("--dataset", required=True, help="catalog file, or a folder holding one .csv/.jsonl")
    g.add_argument("--catalog-file", dest="file", help="catalog file name inside --dataset")
    add_mapping_arguments(g)


def add_mapping_arguments(group: Any) -> None:
    """``--mapping`` and the flags that override its keys (train, eval and make-videos)."""
    group.add_argument("--mapping", help="JSON file (or inline JSON object) with mapping keys; flags below override it")
    group.add_argument("--id", help="id column (default: id)")
    group.add_argument("--title", help="title column (default: title)")
    group.add_argument("--description", help="optional description column")
    group.add_argument("--fine", help="fine label spec(s), comma-separated (default: category)")
    group.add_argument("--coarse", help="coarse label spec(s), comma-separated, e.g. 'path[:1]'")
    group.add_argument("--image", help="image path column ('|'-separated paths) or template like 'images/{id}.jpg' (default: image)")
    group.add_argument("--video", help="optional video path column or template")
    group.add_argument("--media-root", help="folder that relative media paths start from (default: the catalog's)")
    group.add_argument("--path-sep", help="separator of category paths (default: '>')")


def mapping_values(path_or_json: str | None) -> dict[str, Any]:
    """The keys of a mapping given as a JSON file path or an inline JSON object (None: none)."""
    if not path_or_json:
        return {}
    text = path_or_json if path_or_json.lstrip().startswith("{") else Path(path_or_json).read_text()
    values = json.loads(text)
    if not isinstance(values, dict):
        raise ValueError(f"a mapping must be a JSON object, got {type(values).__name__}")
    return values


def mapping_from_args(args: argparse.Namespace, base: CatalogMapping | None = None) -> CatalogMapping:
    """The mapping file's values, overridden by any flag that was given."""
    values = mapping_values(getattr(args, "mapping", None))
    for name in MAPPING_FLAGS:
        flag = getattr(args, name, None)
        if flag is not None:
            values[name] = flag
    return CatalogMapping.from_dict(values, base)
