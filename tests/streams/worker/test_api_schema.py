"""Property tests generated from the API's own OpenAPI document (schemathesis, in-process over
ASGI): whatever schemathesis sends to any operation, valid or not, the API never answers a 5xx."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from streams.worker.api import QueryService, backup_folder, create_api

pytestmark = pytest.mark.integration
EXAMPLES_PER_OPERATION = 15  # modest: the suite stays fast; the CI can raise it


def test_no_request_gives_a_server_error(query_service: QueryService, monkeypatch: pytest.MonkeyPatch):
    query_service.api_key = ""
    backups: list[Path] = []  # the route is exercised; no snapshot lands in random folders
    monkeypatch.setattr(query_service, "backup",
                        lambda name, restore: backups.append(backup_folder(query_service.settings, name)) or [])
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_api(query_service))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 11  # every endpoint is in the document

    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def no_server_error(case: schemathesis.Case) -> None:
            case.call_and_validate(checks=[not_a_server_error])

        no_server_error()
    assert backups and all(folder.parent == query_service.settings.backup_path for folder in backups)
