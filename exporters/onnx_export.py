"""The one torch -> ONNX export used by every model of the project (the text and image
encoders and the trained fusion heads).

Every export is checked against torch in onnxruntime on the sample batch and on a second batch
whose dynamic axes all have other sizes, so a shape baked into the graph by tracing fails here
rather than in a worker. The model and its manifest are written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import Tensor, nn

from encoders_onnx.session import CPU, file_sha256

DynamicAxes = Mapping[str, Mapping[int, str]]


class ExportMismatchError(RuntimeError):
    """onnxruntime's output differs from torch's by more than the tolerance."""


def _grown_inputs(sample_inputs: Mapping[str, Tensor], dynamic_axes: DynamicAxes) -> dict[str, Tensor]:
    """The sample inputs with every dynamic axis resized (rows/positions reused cyclically).

    Axes that share a symbolic name get the same new size, so e.g. ``input_ids`` and
    ``attention_mask`` stay aligned along ``sequence``.
    """
    sizes: dict[str, int] = {}
    for name, axes in dynamic_axes.items():
        if name in sample_inputs:
            for axis, symbol in axes.items():
                sizes.setdefault(symbol, sample_inputs[name].shape[axis])
    new_sizes = {symbol: size + 2 + i for i, (symbol, size) in enumerate(sorted(sizes.items()))}
    grown = {}
    for name, tensor in sample_inputs.items():
        for axis, symbol in dynamic_axes.get(name, {}).items():
            index = torch.arange(new_sizes[symbol]) % tensor.shape[axis]
            tensor = tensor.index_select(axis, index)
        grown[name] = tensor
    return grown


def _torch_outputs(module: nn.Module, inputs: Mapping[str, Tensor]) -> list[np.ndarray]:
    """The module's outputs as arrays, whether it returns one tensor or a tuple."""
    with torch.no_grad():
        outputs = module(**inputs)
    return [t.numpy() for t in ((outputs,) if isinstance(outputs, Tensor) else outputs)]


def _max_abs_diff(
    module: nn.Module, session: ort.InferenceSession, inputs: Mapping[str, Tensor], output_names: Sequence[str]
) -> float:
    """Largest absolute difference between torch and onnxruntime over all outputs."""
    got = session.run(list(output_names), {k: v.numpy() for k, v in inputs.items()})
    return max(float(np.max(np.abs(e - g))) for e, g in zip(_torch_outputs(module, inputs), got))


def check_onnx(
    module: nn.Module,
    onnx_path: Path,
    sample_inputs: Mapping[str, Tensor],
    output_names: Sequence[str],
    dynamic_axes: DynamicAxes,
) -> float:
    """Max abs diff of torch vs onnxruntime (CPU) on the sample batch and on a resized one."""
    session = ort.InferenceSession(str(onnx_path), providers=[CPU])
    return max(
        _max_abs_diff(module, session, batch, output_names)
        for batch in (sample_inputs, _grown_inputs(sample_inputs, dynamic_axes))
    )


def _value_info(values: Sequence[onnx.ValueInfoProto]) -> list[dict[str, Any]]:
    """name, dtype and shape (symbolic dims as their names) of graph inputs/outputs."""
    infos = []
    for value in values:
        tensor_type = value.type.tensor_type
        shape = [d.dim_param if d.dim_param else d.dim_value for d in tensor_type.shape.dim]
        infos.append(
            {
                "name": value.name,
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name,
                "shape": shape,
            }
        )
    return infos


def _output_info(
    module: nn.Module,
    sample_inputs: Mapping[str, Tensor],
    graph_outputs: Sequence[onnx.ValueInfoProto],
    dynamic_axes: DynamicAxes,
) -> list[dict[str, Any]]:
    """Output name, dtype, shape and ``dim`` (last axis size); static axes measured on the sample.

    The tracer names computed axes after ops (e.g. ``Divembeddings_dim_1``), so the sizes of
    the axes not declared dynamic are taken from the torch output instead.
    """
    infos = []
    for info, tensor in zip(_value_info(graph_outputs), _torch_outputs(module, sample_inputs)):
        axes = dynamic_axes.get(info["name"], {})
        shape = [axes.get(axis, size) for axis, size in enumerate(tensor.shape)]
        infos.append({**info, "shape": shape, "dim": shape[-1]})
    return infos


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temp file beside ``path`` and rename, so readers never see a partial file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the model folder is shared with other users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_onnx(
    module: nn.Module,
    sample_inputs: Mapping[str, Tensor],
    output_names: Sequence[str],
    dynamic_axes: DynamicAxes,
    out_dir: str | Path,
    name: str,
    source: str,
    extra: Mapping[str, Any] | None = None,
    opset: int = 17,
    tolerance: float = 1e-4,
) -> dict[str, Any]:
    """Export ``module`` to ``<out_dir>/<name>.onnx`` + ``<name>.manifest.json`` and return the manifest.

    ``sample_inputs`` are keyword arguments of ``module.forward`` (their order is the graph's
    input order); ``dynamic_axes`` maps input and output names to ``{axis: symbol}``.
    Raises :class:`ExportMismatchError`, writing nothing, when onnxruntime and torch differ by
    more than ``tolerance``. The manifest's ``version`` changes whenever the graph, the weights
    or ``extra`` (e.g. tokenizer or preprocessing settings) change.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=f".{name}.export.") as tmp:
        tmp_onnx = Path(tmp) / f"{name}.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter (dynamo=False) is chosen on purpose for its plain
            # dynamic_axes; the check below guards what tracing baked in.
            warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export", DeprecationWarning)
            torch.onnx.export(
                module,
                (),
                str(tmp_onnx),
                kwargs=dict(sample_inputs),
                input_names=list(sample_inputs),
                output_names=list(output_names),
                dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()},
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        diff = check_onnx(module, tmp_onnx, sample_inputs, output_names, dynamic_axes)
        print(f"{name}: max abs diff {diff:.3g} (tolerance {tolerance:g})", flush=True)
        if not diff <= tolerance:
            raise ExportMismatchError(
                f"{name}: onnxruntime differs from torch by {diff:.3g} > tolerance {tolerance:g}; nothing written"
            )
        graph = onnx.load(str(tmp_onnx), load_external_data=False).graph
        fields = {
            "inputs": _value_info(graph.input),
            "outputs": _output_info(module, sample_inputs, graph.output, dynamic_axes),
            "opset": opset,
            "max_abs_diff": diff,
            "tolerance": tolerance,
            "torch_version": torch.__version__,
        }
        return install_model(tmp_onnx, out_dir, name, source, dict(extra or {}), fields)


def install_model(
    onnx_path: Path, out_dir: Path, name: str, source: str, extra: Mapping[str, Any], fields: Mapping[str, Any]
) -> dict[str, Any]:
    """Move a checked ``onnx_path`` to ``<out_dir>/<name>.onnx`` and write its manifest; return the manifest.

    ``fields`` are the manifest entries that describe the graph (inputs, outputs, checks).
    """
    onnx_sha256 = file_sha256(onnx_path)
    manifest = {
        "name": name,
        "source": source,
        "version": _version(onnx_sha256, extra),
        "onnx_sha256": onnx_sha256,
        **fields,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "extra": dict(extra),
    }
    # The manifest goes first and lands last: a model counts as exported only while its
    # manifest exists, and a manifest always describes the .onnx beside it.
    (out_dir / f"{name}.manifest.json").unlink(missing_ok=True)
    os.replace(onnx_path, out_dir / f"{name}.onnx")
    atomic_write(out_dir / f"{name}.manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest


def _version(onnx_sha256: str, extra: Mapping[str, Any]) -> str:
    """12-hex version over the ONNX bytes and the settings in ``extra`` that change the vectors."""
    payload = onnx_sha256 + json.dumps(extra, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]
