"""Shared fixtures: the exported models and the real embedded services (tansu, redis-server)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATASETS = REPO.parent / "shared" / "datasets"
MYNTRA = SHARED_DATASETS / "myntra-fashion-small"
DEMO_CATALOG = REPO / "demo" / "catalog"


def free_port() -> int:
    """A loopback port that nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The ONNX models, exported once per machine (``make test`` exports them before pytest)."""
    from exporters.encoders import ensure_models

    path = Path(os.environ.get("SHELFSTREAM_MODEL_DIR", REPO / "models")).resolve()
    ensure_models(path)
    return path


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A real tansu broker and a real redis-server, started through infra/ and stopped after."""
    from infra.services import start_services, stop_services

    state_dir = tmp_path_factory.mktemp("services")
    state = start_services(state_dir)
    try:
        yield state
    finally:
        stop_services(state_dir)
