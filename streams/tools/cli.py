"""shelfstream: real-time multimodal product embeddings. One command for the embedded services,
the worker, publishing, queries, training, exporting and benchmarking. Every knob is a
SHELFSTREAM_* environment variable (`shelfstream settings` lists them); flags only say what to do."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable

from streams.settings import Settings

# Commands whose flags are defined beside heavy imports (torch, PyAV): those are imported only
# when that command runs, so the worker and the quick commands never load them.
LAZY_FLAGS = {
    "train": ("exporters.train", "configure_train_parser"),
    "eval": ("exporters.evaluate", "configure_eval_parser"),
    "make-videos": ("streams.tools.videogen", "add_make_videos_arguments"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args, Settings.from_env()) or 0
    except KeyboardInterrupt:
        return 130
    except (RuntimeError, ValueError, LookupError, OSError) as exc:
        print(f"shelfstream {args.command}: error: {exc}", file=sys.stderr)
        return 1


def build_parser(running: str | None = None) -> argparse.ArgumentParser:
    """All commands; the flags of ``running`` included even when they live beside heavy imports."""
    parser = argparse.ArgumentParser(prog="shelfstream", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable[[argparse.Namespace, Settings], int | None], help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(handler=handler)
        return sub

    command("up", cmd_up, "start the embedded tansu broker and redis-server (state in SHELFSTREAM_STATE_DIR)")
    command("down", cmd_down, "stop exactly the processes that `up` started")
    command("status", cmd_status, "show the embedded services, and the worker's counters if one runs")
    command("settings", cmd_settings, "list every SHELFSTREAM_* setting with its current value")
    worker = command("worker", cmd_worker, "run the Faust worker: index product events and serve queries over HTTP")
    worker.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])

    publish = command("publish", cmd_publish, "publish products from a CSV or JSONL file as events")
    publish.add_argument("file", type=Path)
    publish.add_argument("--mapping", help="column mapping: a JSON file or inline JSON (see README)")
    publish.add_argument("--version", type=int, help="version of every event (default: now in ms)")
    publish.add_argument("--limit", type=int, help="publish at most this many rows")
    publish.add_argument("--delete", action="store_true", help="publish deletes for the file's products instead")

    for name, help_text in (("similar", "products similar to a product (fused vector)"),
                            ("search", "search products by text, image or video")):
        sub = command(name, cmd_query, help_text)
        if name == "similar":
            sub.add_argument("product_id")
        else:
            what = sub.add_mutually_exclusive_group(required=True)
            what.add_argument("--text", help="free text, e.g. 'red running shoes'")
            what.add_argument("--image", type=Path, help="an image file")
            what.add_argument("--video", type=Path, help="a video file: matches products' videos and images")
        sub.add_argument("-k", type=int, default=10, help="how many results (default 10)")
        sub.add_argument("--category", help="category path prefix, e.g. 'Apparel > Topwear'")
        sub.add_argument("--price-min", type=float)
        sub.add_argument("--price-max", type=float)
        sub.add_argument("--json", action="store_true", help="print JSON instead of a table")

    letters = command("dead-letters", cmd_dead_letters, "show rejected events with their reasons (from the start of the topic)")
    letters.add_argument("-n", type=int, default=20, help="show at most this many (default 20)")
    letters.add_argument("--wait", type=float, default=10.0, help="seconds to read for (default 10)")
    letters.add_argument("--json", action="store_true", help="print JSON lines")

    export = command("export", cmd_export, "export the ONNX encoders (fp32 and int8), or your own torch model with --modality")
    export.add_argument("--force", action="store_true", help="re-export even if the models exist")
    own = export.add_argument_group("your own torch model (served as a new model version; see README)")
    own.add_argument("--modality", choices=["image", "text"], help="export your model as this modality's encoder")
    own.add_argument("--factory", help="'package.module:function' returning the nn.Module")
    own.add_argument("--weights", help="state dict file loaded into the factory's module (strict)")
    own.add_argument("--hf-folder", help="text: a Hugging Face / sentence-transformers folder instead of --factory")
    own.add_argument("--tokenizer", help="text with --factory: the tokenizer.json of the model")
    own.add_argument("--max-length", type=int, default=256, help="text: tokens kept per text (default 256)")
    for flag, help_text in (("resize-shorter", "image: shorter side resized to (default 256)"),
                            ("center-crop", "image: square crop fed to the model (default 224)")):
        own.add_argument(f"--{flag}", type=int, help=help_text)
    own.add_argument("--interpolation", choices=["bilinear", "bicubic"], help="image: resize filter (default bilinear)")
    own.add_argument("--mean", help="image: per-channel mean after scaling to 0-1, 'r,g,b' (default ImageNet's)")
    own.add_argument("--std", help="image: per-channel std, 'r,g,b' (default ImageNet's)")

    bench = command("bench", cmd_bench, "measure encoder and end-to-end throughput and freshness")
    bench.add_argument("--dataset", type=Path, help="catalog folder (default: ../shared/datasets/myntra-fashion-small)")
    bench.add_argument("-n", type=int, default=2000, help="products (default 2000)")
    bench.add_argument("--mapping", type=Path, help="column mapping of the dataset (default: demo/catalog/mapping.json)")
    bench.add_argument("--json", action="store_true", help="print only the JSON result")

    lazy = {
        "train": command("train", cmd_train, "train alignment heads and fusion on a catalog (torch), export the ONNX bundle"),
        "eval": command("eval", cmd_eval, "evaluate text, image, early/late/learned/autoencoder fusion and baselines on the test split"),
    }
    command("reindex", cmd_reindex, "re-embed the served catalog with the configured models, then switch queries to it")
    command("demo", cmd_demo, "the whole path on embedded services with the sample catalog")
    lazy["make-videos"] = command("make-videos", cmd_make_videos, "make test clips from product images (no real product videos exist here)")
    if running in LAZY_FLAGS:
        module, function = LAZY_FLAGS[running]
        try:  # without the export extra, train and eval explain what to install
            getattr(importlib.import_module(module), function)(lazy[running])
        except ImportError as exc:
            lazy[running].set_defaults(missing=exc)
    return parser


def cmd_up(args: argparse.Namespace, settings: Settings) -> None:
    from infra.services import start_services

    state = start_services(settings.state_path)
    print(f"kafka  {state['kafka_bootstrap']}\nredis  {state['redis_url']}\nqdrant {settings.qdrant_path} (local mode)")
    print(f"state  {settings.state_path}")


def cmd_down(args: argparse.Namespace, settings: Settings) -> None:
    from infra.services import stop_services

    stopped = stop_services(settings.state_path)
    print("stopped " + ", ".join(stopped) if stopped else "nothing to stop")


def cmd_status(args: argparse.Namespace, settings: Settings) -> None:
    from infra.services import service_status
    from streams.tools.client import get_json

    status = service_status(settings.state_path)
    status["qdrant"] = ({"mode": "server", "url": settings.qdrant_url} if settings.qdrant_url
                        else {"mode": "local", "path": settings.qdrant_path})
    print(json.dumps(status, indent=2))
    try:
        print(json.dumps({"worker": get_json(f"{settings.worker_url}/stats")}, indent=2))
    except ConnectionError:
        print(f"no worker answering at {settings.worker_url}")


def cmd_settings(args: argparse.Namespace, settings: Settings) -> None:
    for variable, _default, doc in Settings.describe():
        name = variable.removeprefix("SHELFSTREAM_").lower()
        print(f"{variable:<40} {getattr(settings, name)!r:<40} {doc}")


def cmd_worker(args: argparse.Namespace, settings: Settings) -> None:
    from streams.worker.app import run_worker

    run_worker(settings, args.loglevel)


def cmd_publish(args: argparse.Namespace, settings: Settings) -> None:
    from streams.tools.publish import load_mapping, publish_file

    mapping = load_mapping(args.mapping)
    if args.delete:
        mapping = {**mapping, "op": {"value": "delete"}}
    report = publish_file(settings, args.file, mapping, args.version, args.limit)
    print(report.line(settings.events_topic))


def cmd_query(args: argparse.Namespace, settings: Settings) -> None:
    from streams.adapters.store import SearchFilters
    from streams.tools.client import format_table, query_request, run_query

    filters = SearchFilters(args.category, args.price_min, args.price_max)
    if args.command == "similar":
        request = query_request("similar", args.product_id, args.k, filters)
    elif args.text is not None:
        request = query_request("text", args.text, args.k, filters)
    elif args.image is not None:
        request = query_request("image", args.image.read_bytes(), args.k, filters)
    else:
        request = query_request("video", args.video.read_bytes(), args.k, filters)
    rows = run_query(settings, request)
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))


def cmd_dead_letters(args: argparse.Namespace, settings: Settings) -> None:
    from streams.adapters.kafka import read_topic
    from streams.worker.app import REASON_HEADER, SOURCE_HEADER

    for record in read_topic(settings, settings.dead_letter_topic, expected=args.n, timeout_s=args.wait):
        row = {
            "source": record.headers.get(SOURCE_HEADER, ""),
            "key": (record.key or b"").decode(errors="replace"),
            "reason": record.headers.get(REASON_HEADER, ""),
            "value": (record.value or b"").decode(errors="replace"),
        }
        print(json.dumps(row) if args.json else f"{row['source']}  key={row['key']}  {row['reason']}\n    {row['value'][:200]}")


def cmd_export(args: argparse.Namespace, settings: Settings) -> None:
    if args.modality:
        from exporters.byo import export_user_model, preprocessing_from_flags

        preprocessing = preprocessing_from_flags([(k, getattr(args, k)) for k in
                                                  ("resize_shorter", "center_crop", "interpolation", "mean", "std")])
        manifest = export_user_model(args.modality, settings.model_dir, args.factory, args.weights, args.hf_folder,
                                     args.tokenizer, args.max_length, preprocessing)
        print(f"{manifest['name']}: version {manifest['version']} (dim {manifest['outputs'][0]['dim']}) in "
              f"{settings.model_dir}; restart the worker on it, then `shelfstream reindex`")
        return
    from exporters.encoders import export_all

    for manifest in export_all(settings.model_dir, force=args.force):
        print(f"{manifest['name']}: version {manifest['version']} in {settings.model_dir}")


def cmd_bench(args: argparse.Namespace, settings: Settings) -> None:
    from streams.tools.bench import run_bench

    result = run_bench(settings, args.dataset, args.n, quiet=args.json, **({"mapping_path": args.mapping} if args.mapping else {}))
    print(json.dumps(result, indent=None if args.json else 2))


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from streams.tools.demo import run_demo

    return run_demo(settings)


def cmd_train(args: argparse.Namespace, settings: Settings) -> None:
    _require_export_extra(args)
    from exporters.train import run_train

    run_train(args, _decoding(args, settings))


def cmd_eval(args: argparse.Namespace, settings: Settings) -> None:
    _require_export_extra(args)
    from exporters.evaluate import run_eval

    run_eval(args, _decoding(args, settings))


def _decoding(args: argparse.Namespace, settings: Settings) -> Any:
    """The worker's media decoding and model folder, so training and evaluation see what serving sees."""
    from encoders_onnx.video import VideoLimits
    from exporters.features import MediaDecoding

    args.model_dir = args.model_dir or settings.model_dir
    args.precision = args.precision or settings.precision
    return MediaDecoding(settings.max_image_pixels, VideoLimits.from_settings(settings), settings.video_pooling)


def _require_export_extra(args: argparse.Namespace) -> None:
    if getattr(args, "missing", None) is not None:
        raise RuntimeError(f"{args.missing}: training needs the export extra: pip install -e '.[export]'")


def cmd_reindex(args: argparse.Namespace, settings: Settings) -> int:
    from streams.tools.client import reindex_command

    job = reindex_command(settings)
    print(f"reindex {job.state} in {job.seconds} s: {job.message} {job.counts or ''}".rstrip())
    return 0 if job.state == "done" else 1


def cmd_make_videos(args: argparse.Namespace, settings: Settings) -> None:
    from streams.tools.videogen import make_videos_main

    make_videos_main(args)


if __name__ == "__main__":
    sys.exit(main())
