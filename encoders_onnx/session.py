"""One onnxruntime session wrapper shared by every encoder: model file + manifest + providers.

Only onnxruntime and numpy here: this is the worker's runtime path, which never imports torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping, Sequence, TypeVar

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)

Providers = Literal["auto", "cpu", "cuda"]
T = TypeVar("T")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
FP32 = "fp32"
INT8 = "int8"
PRECISIONS = (FP32, INT8)


class ModelNotExportedError(FileNotFoundError):
    """The ONNX model or its manifest is missing from the model folder."""


class ModelIntegrityError(RuntimeError):
    """The ONNX file does not match the hash recorded in its manifest (edited or half-copied)."""


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks: the manifest records it and the runtime checks it."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_providers(requested: Providers | str = "auto") -> list[str]:
    """onnxruntime providers for ``auto`` | ``cpu`` | ``cuda``; CUDA falls back to CPU with a log line."""
    requested = requested.lower()
    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"providers must be 'auto', 'cpu' or 'cuda', not {requested!r}")
    if requested == "cpu":
        return [CPU]
    if CUDA in ort.get_available_providers():
        return [CUDA, CPU]
    if requested == "cuda":
        warnings.warn(
            "providers='cuda' was asked for but onnxruntime has no CUDAExecutionProvider "
            "(install onnxruntime-gpu with a matching CUDA); running on CPU",
            RuntimeWarning,
            stacklevel=3,
        )
    else:
        log.info("no CUDAExecutionProvider available; using CPUExecutionProvider")
    return [CPU]


def batched(items: Sequence[T], batch_size: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of at most ``batch_size`` items (one place for every encoder's batching)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    for start in range(0, len(items), batch_size):
        yield items[start : start + batch_size]


def split(items: Sequence[T], parts: int) -> list[Sequence[T]]:
    """``items`` in at most ``parts`` consecutive slices whose sizes differ by at most one."""
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    bounds = [i * size + min(i, extra) for i in range(parts + 1)]
    return [items[start:end] for start, end in zip(bounds, bounds[1:])]


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and ``taskset`` narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise unit vectors (float32); an all-zero row stays zero instead of becoming NaN."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, eps)).astype(np.float32, copy=False)


def model_name(modality: str, precision: str = FP32) -> str:
    """File stem of a modality's model at a precision: ``text`` (fp32) or ``text.int8``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    return modality if precision == FP32 else f"{modality}.{precision}"


def exported_manifest(model_dir: Path, name: str) -> dict[str, Any] | None:
    """The manifest of a complete export (graph, manifest and assets present), else None."""
    manifest_path = model_dir / f"{name}.manifest.json"
    if not (manifest_path.is_file() and (model_dir / f"{name}.onnx").is_file()):
        return None
    manifest = json.loads(manifest_path.read_text())
    if not all((model_dir / asset).is_file() for asset in manifest["extra"].get("assets", [])):
        return None
    return manifest


class OnnxModel:
    """``<model_dir>/<name>.onnx`` with its manifest, run on the best available provider.

    ``version`` comes from the manifest so that caches can key vectors by the model that made them.
    ``parallel``: on CPU, ``run_batches`` splits each batch into this many parts run at once,
    one core each (0: one per usable core; 1: whole batches on onnxruntime's own intra-op
    threads). Independent parts keep every core busy where intra-op threads wait for each other
    at each operator's end: on 2 cores, decode + both encoders ~94 -> ~110 items/s, and ~80 ->
    ~89 with other threads of the process taking a share, as the worker's do. A GPU takes each
    batch whole.
    """

    def __init__(self, model_dir: str | Path, name: str, providers: Providers | str = "auto", verify: bool = True,
                 parallel: int = 1) -> None:
        self.model_dir = Path(model_dir)
        self.name = name
        self.path = self.model_dir / f"{name}.onnx"
        manifest_path = self.model_dir / f"{name}.manifest.json"
        missing = [p for p in (self.path, manifest_path) if not p.is_file()]
        if missing:
            fp32 = exported_manifest(self.model_dir, name.removesuffix(f".{INT8}")) if name.endswith(f".{INT8}") else None
            if fp32 is not None and fp32["extra"].get("statistics"):
                raise ModelNotExportedError(
                    f"model {name!r} does not exist: the image model in {self.model_dir} carries colour and texture "
                    "statistics, which run at fp32 only (SHELFSTREAM_PRECISION=fp32, or export it without "
                    "SHELFSTREAM_IMAGE_STATISTICS)"
                )
            raise ModelNotExportedError(
                f"model {name!r} is not exported: missing {', '.join(str(p) for p in missing)}. "
                f"Run `SHELFSTREAM_MODEL_DIR={self.model_dir} shelfstream export` (needs the [export] extra: torch); "
                "it writes the fp32 and the int8 models side by side."
            )
        self.manifest: dict = json.loads(manifest_path.read_text())
        if verify and file_sha256(self.path) != self.manifest["onnx_sha256"]:
            raise ModelIntegrityError(
                f"{self.path} does not match the sha256 in {manifest_path.name}; "
                f"re-export it with `SHELFSTREAM_MODEL_DIR={self.model_dir} shelfstream export --force`"
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle pool threads must sleep, not spin: each model has its own pool, and the worker's
        # own threads (decoding, Kafka, the store) share the cores. Measured on 2 cores, decode +
        # both encoders at batch 32: fp32 ~100 -> ~135 items/s, int8 ~175 -> ~260.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        resolved = resolve_providers(providers)
        if parallel < 0:
            raise ValueError(f"parallel must be >= 0 (0: one part per core), not {parallel}")
        self.parallel = 1 if resolved[0] != CPU else parallel or usable_cores()
        if self.parallel > 1:
            options.intra_op_num_threads = 1  # each part on its caller's thread
        self._pool = ThreadPoolExecutor(self.parallel, f"onnx-{name}") if self.parallel > 1 else None
        self.session = ort.InferenceSession(str(self.path), options, providers=resolved)
        self.providers: list[str] = self.session.get_providers()
        self.input_names: list[str] = [i.name for i in self.session.get_inputs()]
        self.output_names: list[str] = [o.name for o in self.session.get_outputs()]
        log.info("loaded %s version %s on %s", self.path, self.version, self.providers)

    @property
    def version(self) -> str:
        return self.manifest["version"]

    def output_dim(self, output: str) -> int:
        """The last dimension of an output, as the manifest records it."""
        return next(o["dim"] for o in self.manifest["outputs"] if o["name"] == output)

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run the graph on one batch; returns ``{output name: array}``."""
        names = list(outputs) if outputs is not None else self.output_names
        return dict(zip(names, self.session.run(names, dict(feeds))))

    def run_batches(self, items: Sequence[T], batch_size: int, feeds: Callable[[Sequence[T]], Mapping[str, np.ndarray]],
                    output: str) -> np.ndarray:
        """``output`` for all ``items``, ``batch_size`` at a time, each batch split into
        ``parallel`` parts run at once; ``feeds`` turns a part into the graph's inputs (on the
        thread that runs it, so preprocessing runs in parallel too)."""
        parts = [part for batch in batched(items, batch_size) for part in split(batch, self.parallel)]
        run = lambda part: self.run(feeds(part), [output])[output]  # noqa: E731
        chunks = list(self._pool.map(run, parts)) if self._pool and len(parts) > 1 else [run(part) for part in parts]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.output_dim(output)), np.float32)

    def __repr__(self) -> str:
        return f"OnnxModel({str(self.path)!r}, version={self.version!r}, providers={self.providers})"
