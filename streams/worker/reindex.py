"""``shelfstream reindex``: move queries to a new model version without a gap.

Workers started with the new models write new events into the new version's collection while
the alias keeps serving the old one. Re-indexing copies every product of the serving collection
into the new one (from cached raw features, so unchanged encoders encode nothing), then moves
the alias: from that moment queries read the new vectors. With Qdrant local mode the running
worker holds the folder, so the CLI asks the worker to do it and shows its progress.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from streams.schema.events import event_from_payload
from streams.worker.pipeline import Pipeline


@dataclass
class ReindexJob:
    state: str = "idle"  # idle | running | done | failed
    source: str | None = None
    target: str | None = None
    total: int = 0
    done: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    message: str = ""
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_reindex(pipeline: Pipeline, job: ReindexJob, on_progress: Callable[[ReindexJob], None] = lambda job: None) -> ReindexJob:
    """Re-embed the serving collection into this pipeline's version, then switch the alias."""
    started = time.monotonic()
    store = pipeline.store
    job.state, job.source, job.target = "running", store.serving_collection(), store.collection
    try:
        if job.source in (None, store.collection):
            job.message = f"alias {store.alias!r} already serves {store.collection!r}: nothing to do"
        else:
            job.total = store.point_count(job.source)

            def progress(done: int) -> None:
                job.done = done
                on_progress(job)

            job.counts = dict(reindex_collection(pipeline, job.source, progress))
            store.optimize()  # the quantized copies exist before queries read the new version (seconds at 44k)
            store.switch_alias()
            job.message = f"alias {store.alias!r} now serves {store.collection!r} (was {job.source!r})"
        job.state = "done"
    except Exception as exc:  # reported to the caller, who decides; the alias has not moved
        job.state, job.message = "failed", f"{type(exc).__name__}: {exc}"
    job.seconds = round(time.monotonic() - started, 2)
    return job


def reindex_collection(pipeline: Pipeline, source: str, progress: Callable[[int], None] = lambda done: None) -> Counter:
    """Re-embed every product of another model version's collection into this version's, from
    the cached raw features (re-encoding only what the cache lacks) and the media named in the
    payloads. Each page goes through ``Pipeline.apply`` like a batch of events, so a product this
    version already holds at the same or a newer version (written by a worker meanwhile), or
    deleted since, is left alone. The alias is not moved here."""
    counts: Counter = Counter()
    done = 0
    for page in pipeline.store.pages(source, with_vectors=False):
        outcome = pipeline.apply([event_from_payload(record.payload) for record in page if record.payload])
        applied = outcome.counts
        counts["reindexed"] += applied.pop("indexed", 0)
        counts["already_current"] += applied.pop("stale_skipped", 0) + applied.pop("duplicates", 0)
        counts.update(applied)
        done += len(page)
        progress(done)
    return counts


def start_in_background(pipeline: Pipeline, current: ReindexJob) -> ReindexJob:
    """A new job running in a thread, or ``current`` if that one is still running."""
    if current.state == "running":
        return current
    job = ReindexJob(state="running")
    threading.Thread(target=run_reindex, args=(pipeline, job), name="reindex", daemon=True).start()
    return job
