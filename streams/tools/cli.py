"""shelfstream: real-time multimodal product embeddings. One command for the embedded services,
the worker, publishing, queries, training, exporting and benchmarking. Every knob is a
SHELFSTREAM_* environment variable (`shelfstream settings` lists them); flags only say what to do."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable

from streams.settings import Settings

# Commands whose flags are defined beside heavy imports (torch, PyAV): those are imported only
# when that command runs, so the worker and the quick commands never load them.
LAZY_FLAGS = {
    "train": ("exporters.train", "configure_train_parser"),
    "eval": ("exporters.evaluate", "configure_eval_parser"),
    "finetune": ("exporters.finetune", "configure_finetune_parser"),
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
    except BrokenPipeError:  # the reader went away (`shelfstream similar ID | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
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
    command("down", cmd_down, "stop the workers `worker` started (SIGTERM), then the services `up` started")
    status = command("status", cmd_status, "services, workers, the indexing backlog per partition, counters, freshness")
    status.add_argument("--json", action="store_true", help="print one JSON document")
    wait = command("wait", cmd_wait, "show a progress bar until every event published so far is in the store")
    wait.add_argument("--timeout", type=float, default=3600.0, help="give up after this many seconds (default 3600)")
    command("settings", cmd_settings, "list every SHELFSTREAM_* setting with its current value")
    worker = command("worker", cmd_worker, "run the Faust worker: index product events and serve queries over HTTP")
    worker.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])

    publish = command("publish", cmd_publish, "publish products from a CSV or JSONL file as events")
    publish.add_argument("file", type=Path)
    publish.add_argument("--mapping", help="column mapping: a JSON file or inline JSON (see README)")
    publish.add_argument("--version", type=int, help="version of every event (default: now in ms)")
    publish.add_argument("--limit", type=int, help="publish at most this many rows")
    publish.add_argument("--delete", action="store_true", help="publish deletes for the file's products instead")

    command("serve", cmd_serve, "serve the query API without indexing (a stateless query service; "
                                "against a Qdrant server in production) on SHELFSTREAM_WEB_HOST:PORT")
    similar = _query_command(command("similar", cmd_query, "products similar to a product (fused vector)"))
    similar.add_argument("product_id")
    search = _query_command(command("search", cmd_query, "search products by text, image or video"))
    what = search.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", help="free text, e.g. 'red running shoes'")
    what.add_argument("--image", type=Path, help="an image file")
    what.add_argument("--video", type=Path, help="a video file: matches products' videos and images")
    search.add_argument("--mode", choices=["dense", "keyword", "hybrid"],
                        help="text search: vectors, BM25 keywords or both fused (default SHELFSTREAM_SEARCH_MODE)")
    recommend = _query_command(command("recommend", cmd_query, "products like the positives and unlike the negatives, "
                                                               "or for a user (--user) from the live profile"))
    recommend.add_argument("positive", nargs="*", help="ids of liked products")
    recommend.add_argument("--negative", nargs="*", default=[], help="ids of disliked products")
    recommend.add_argument("--user", help="a user id: recommendations from the user's interactions")
    recommend.add_argument("--diversity", type=float, default=0.0, help="with --user, 0..1: re-rank for variety (MMR)")

    interactions = command("publish-interactions", cmd_publish_interactions,
                           "publish shopper interactions from a CSV or JSONL file (keyed by user id)")
    interactions.add_argument("file", type=Path)
    interactions.add_argument("--mapping", help="column mapping: a JSON file or inline JSON (see README)")
    interactions.add_argument("--limit", type=int, help="publish at most this many rows")
    forget = command("forget-user", cmd_forget_user, "remove a user's profile, purchased and disliked sets")
    forget.add_argument("user_id")

    letters = command("dead-letters", cmd_dead_letters, "show rejected events with their reasons (from the start of the topic)")
    letters.add_argument("-n", type=int, default=20, help="show at most this many (default 20)")
    letters.add_argument("--wait", type=float, default=30.0,
                         help="longest time to read, seconds (default 30); it returns as soon as the topic's end is reached")
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
    bench.add_argument("--store", action="store_true", help="benchmark the product store alone: Qdrant Edge against qdrant-client local mode")
    bench.add_argument("--points", type=int, default=44_000, help="points of --store (default 44000)")
    bench.add_argument("--no-local-mode", action="store_true", help="--store without the slow local-mode baseline")
    bench.add_argument("--no-optimize", action="store_true", help="--store without optimize() (int8 quantization of fused, seconds at 44k)")
    bench.add_argument("--consumer", action="store_true", help="benchmark Faust's consumer alone: mode's per-message wait against LeanConsumer")
    bench.add_argument("--events", type=int, default=20_000, help="events of --consumer (default 20000)")
    bench.add_argument("--work-ms", type=float, default=0.24, help="GIL-held CPU per event of --consumer, ms (default 0.24: a price update's pipeline)")

    lazy = {
        "train": command("train", cmd_train, "train alignment heads and fusion on a catalog (torch), export the ONNX bundle"),
        "eval": command("eval", cmd_eval, "evaluate text, image, early/late/learned/autoencoder fusion and baselines on the test split; "
                                     "--shoppers: recommendations for (simulated) users"),
        "finetune": command("finetune", cmd_finetune, "fine-tune the last MobileNetV2 blocks on a catalog (image-title "
                                                      "contrastive, torch) into weights for `export --modality image`"),
    }
    command("reindex", cmd_reindex, "re-embed the served catalog with the configured models, then switch queries to it")
    for name, help_text in (("backup", "snapshot the product store into the backup NAME under SHELFSTREAM_BACKUP_DIR "
                                       "(Edge shards, or the server's snapshot API)"),
                            ("restore", "replace the product store by the snapshots of the backup NAME and point the alias as it was")):
        command(name, cmd_backup, help_text).add_argument("name", help="a folder name (letters, digits, . _ -), not a path")
    command("optimize", cmd_optimize, "build the store's vector indexes now (Edge: int8 copies of fused; writes and "
                                      "queries wait for it): once a catalog has arrived through the stream")
    command("demo", cmd_demo, "the whole path on embedded services with the sample catalog")
    lazy["make-videos"] = command("make-videos", cmd_make_videos, "make test clips from product images (no real product videos exist here)")
    if running == "eval":
        from streams.tools.eval_queries import add_attribute_query_arguments

        add_attribute_query_arguments(lazy["eval"])
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
    print(f"kafka  {state['kafka_bootstrap']}\nredis  {state['redis_url']}\nqdrant {settings.qdrant_path} (Qdrant Edge)")
    print(f"state  {settings.state_path}")


def cmd_down(args: argparse.Namespace, settings: Settings) -> None:
    from infra.services import stop_services
    from streams.tools.runner import stop_workers

    workers = [f"worker {pid}" for pid in stop_workers(settings.state_path)]
    stopped = workers + stop_services(settings.state_path)
    print("stopped " + ", ".join(stopped) if stopped else "nothing to stop")


def cmd_status(args: argparse.Namespace, settings: Settings) -> None:
    from streams.tools.status import status_document, status_summary

    document = status_document(settings)
    print(json.dumps(document, indent=2) if args.json else status_summary(document))


def cmd_wait(args: argparse.Namespace, settings: Settings) -> None:
    from streams.tools.status import wait_for_indexing

    print(f"{wait_for_indexing(settings, args.timeout)} events indexed", file=sys.stderr)


def cmd_settings(args: argparse.Namespace, settings: Settings) -> None:
    for variable, _default, doc in Settings.describe():
        name = variable.removeprefix("SHELFSTREAM_").lower()
        print(f"{variable:<40} {getattr(settings, name)!r:<40} {doc}")


def cmd_worker(args: argparse.Namespace, settings: Settings) -> None:
    from streams.tools.runner import recorded_worker
    from streams.worker.app import run_worker

    with recorded_worker(settings) as record:  # so that `shelfstream down` stops it
        print(f"shelfstream worker pid {record.pid}: query API at {record.url}", file=sys.stderr, flush=True)
        run_worker(settings, args.loglevel)


def cmd_publish(args: argparse.Namespace, settings: Settings) -> None:
    from streams.tools.publish import load_mapping, publish_file

    mapping = load_mapping(args.mapping)
    if args.delete:
        mapping = {**mapping, "op": {"value": "delete"}}
    report = publish_file(settings, args.file, mapping, args.version, args.limit)
    print(report.line(settings.events_topic))


def cmd_publish_interactions(args: argparse.Namespace, settings: Settings) -> None:
    from streams.tools.interactions import load_interaction_mapping, publish_interactions_file

    report = publish_interactions_file(settings, args.file, load_interaction_mapping(args.mapping), args.limit)
    print(report.line(settings.interactions_topic))


def cmd_forget_user(args: argparse.Namespace, settings: Settings) -> None:
    from streams.tools.interactions import forget_user

    forgotten = forget_user(settings, args.user_id)
    print(f"user {args.user_id!r}: " + ("profile and sets removed" if forgotten else "nothing stored"))


def _query_command(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Paging, filters and output of every query command: the API's query fields, flag for flag."""
    sub.add_argument("-k", "--limit", dest="limit", type=int, default=10, help="how many results (default 10)")
    sub.add_argument("--offset", type=int, default=0, help="results to skip (next pages)")
    sub.add_argument("--score-threshold", type=float, help="drop results scoring below this")
    sub.add_argument("--category", help="a category at any level or a path prefix, any case: 'footwear', 'Apparel > Topwear'")
    sub.add_argument("--price-min", type=float)
    sub.add_argument("--price-max", type=float)
    sub.add_argument("--attr", action="append", default=[], metavar="KEY=VALUE",
                     help="attribute filter; repeat a key for any-of, e.g. --attr gender=Women --attr baseColour=Red")
    sub.add_argument("--has", action="append", default=[], choices=["text", "image", "video"],
                     help="only products with this modality (repeatable)")
    sub.add_argument("--exclude", action="append", default=[], metavar="ID", help="leave this product out (repeatable)")
    sub.add_argument("--json", action="store_true", help="print the API's JSON answer instead of a table")
    return sub


def query_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The API request (``streams.worker.api``) the flags of a query command describe."""
    attributes: dict[str, list[str]] = {}
    for pair in args.attr:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--attr {pair!r}: expected KEY=VALUE")
        attributes.setdefault(key, []).append(value)
    filters = {"category": args.category, "price_min": args.price_min, "price_max": args.price_max,
               "attributes": attributes, "modalities": args.has, "exclude_product_ids": args.exclude}
    query: dict[str, Any] = {"limit": args.limit, "offset": args.offset, "score_threshold": args.score_threshold,
                             "filter": {k: v for k, v in filters.items() if v not in (None, [], {})} or None}
    if args.command == "similar":
        query.update(type="similar", product_id=args.product_id)
    elif args.command == "recommend" and args.user is not None:
        if args.positive or args.negative:
            raise ValueError("recommend: give either --user or product ids, not both")
        query.update(type="user", user_id=args.user, diversity=args.diversity)
    elif args.command == "recommend":
        if not args.positive:
            raise ValueError("recommend: give liked product ids, or --user ID")
        query.update(type="recommend", positive=args.positive, negative=args.negative)
    elif args.text is not None:
        query.update(type="text", text=args.text, mode=args.mode)
    else:
        kind = "image" if args.image is not None else "video"
        query.update(type=kind, file=(args.image or args.video).read_bytes())
    return {key: value for key, value in query.items() if value is not None}


def cmd_query(args: argparse.Namespace, settings: Settings) -> None:
    from streams.tools.client import format_table, run_query

    answer = run_query(settings, query_from_args(args))
    print(json.dumps(answer, indent=2) if args.json else format_table(answer["hits"]))


def cmd_serve(args: argparse.Namespace, settings: Settings) -> None:
    import uvicorn

    from streams.worker.api import QueryService, create_api

    service = QueryService(settings)
    try:
        uvicorn.run(create_api(service), host=settings.web_host, port=settings.web_port, log_level="info")
    finally:
        service.close()


def cmd_dead_letters(args: argparse.Namespace, settings: Settings) -> None:
    from streams.adapters.kafka import StopReason, read_topic
    from streams.worker.app import REASON_HEADER, SOURCE_HEADER

    read = read_topic(settings, settings.dead_letter_topic, expected=args.n, timeout_s=args.wait)
    for record in read:
        row = {
            "source": record.headers.get(SOURCE_HEADER, ""),
            "key": (record.key or b"").decode(errors="replace"),
            "reason": record.headers.get(REASON_HEADER, ""),
            "value": (record.value or b"").decode(errors="replace"),
        }
        print(json.dumps(row) if args.json else f"{row['source']}  key={row['key']}  {row['reason']}\n    {row['value'][:200]}")
    why = {StopReason.END: "the end of the topic was reached", StopReason.EXPECTED: f"-n {args.n} reached",
           StopReason.TIMEOUT: f"--wait {args.wait:g} s ran out before the end of the topic"}[read.stopped]
    print(f"{len(read)} dead letters shown: {why}", file=sys.stderr)


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

    for manifest in export_all(settings.model_dir, force=args.force, image_statistics=settings.image_statistics):
        print(f"{manifest['name']}: version {manifest['version']} in {settings.model_dir}")


def cmd_bench(args: argparse.Namespace, settings: Settings) -> None:
    if args.store:
        from streams.tools.bench_store import run_store_bench

        print(json.dumps(run_store_bench(settings, args.points, quiet=args.json, local_mode=not args.no_local_mode,
                                         optimize=not args.no_optimize),
                         indent=None if args.json else 2))
        return
    if args.consumer:
        from streams.tools.bench_consumer import run_consumer_bench

        say = (lambda _: None) if args.json else (lambda line: print(line, file=sys.stderr, flush=True))
        print(json.dumps(run_consumer_bench(settings, args.events, args.work_ms, say=say), indent=None if args.json else 2))
        return
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


def cmd_finetune(args: argparse.Namespace, settings: Settings) -> None:
    _require_export_extra(args)
    from exporters.finetune import run_finetune

    run_finetune(args, _decoding(args, settings))


def cmd_eval(args: argparse.Namespace, settings: Settings) -> None:
    if getattr(args, "queries", None) == "attributes":  # search quality: no torch needed
        from streams.tools.eval_queries import run_attribute_eval

        run_attribute_eval(args, settings)
        return
    _require_export_extra(args)
    decoding = _decoding(args, settings)
    if args.shoppers or args.interactions:
        from exporters.shoppers import run_shoppers_eval

        run_shoppers_eval(args, settings.text_weight)
        return
    from exporters.evaluate import run_eval

    run_eval(args, decoding)


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


def cmd_backup(args: argparse.Namespace, settings: Settings) -> None:
    from streams.tools.client import backup_command

    done = backup_command(settings, args.name, restore=args.command == "restore")
    print(f"{args.command}: {', '.join(done)} ({settings.backup_path / args.name})")


def cmd_optimize(args: argparse.Namespace, settings: Settings) -> None:
    from streams.tools.client import optimize_command

    done = optimize_command(settings)
    print(f"optimize: {done['collection']}: indexes built in {done['seconds']} s" if done["optimized"] else
          f"optimize: {done['collection']}: nothing to build (indexed already, too few new points, or a Qdrant server that indexes by itself)")


def cmd_make_videos(args: argparse.Namespace, settings: Settings) -> None:
    from streams.tools.videogen import make_videos_main

    make_videos_main(args)


if __name__ == "__main__":
    sys.exit(main())
