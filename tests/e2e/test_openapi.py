"""Schemathesis against the live API: requests generated from its own OpenAPI document, valid
and not, with an admin's token (every route reachable) and with none."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import Stack

pytestmark = pytest.mark.e2e
SCHEMATHESIS = Path(sys.executable).with_name("st")


def _run(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(SCHEMATHESIS), "run", f"{stack.api_url}/v1/openapi.json",
            "--max-examples", "25", "--seed", "20261122", "--request-timeout", "30", "--no-color", *args,
        ],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


def test_no_request_the_openapi_document_allows_gets_a_server_error(stack: Stack) -> None:
    checks = "not_a_server_error,status_code_conformance,content_type_conformance"
    # Revoking tokens gets a run of its own: in the main run, the stateful phase would follow
    # GET /v1/tokens to DELETE the very token it calls with, and test the rest as nobody.
    revoke = "/v1/tokens/{token_id}"
    main = _run(
        stack, "--checks", checks, "--exclude-path", revoke,
        "--header", f"Authorization: Bearer {stack.token('root')}",
    )  # fmt: skip
    assert main.returncode == 0, main.stdout[-6000:] + main.stderr[-2000:]
    assert "Tested: 18" in main.stdout, main.stdout[-3000:]
    assert "401 Unauthorized" not in main.stdout, main.stdout[-3000:]
    tokens = _run(
        stack, "--checks", checks, "--include-path", revoke,
        "--header", f"Authorization: Bearer {stack.token('root', 'admin')}",
    )  # fmt: skip
    assert tokens.returncode == 0, tokens.stdout[-6000:] + tokens.stderr[-2000:]
    assert "Tested: 1" in tokens.stdout, tokens.stdout[-3000:]
