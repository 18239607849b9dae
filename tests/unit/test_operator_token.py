"""The operator token `charter up` makes is used by the CLI only against an API on this machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from charter.api_client import ApiClient
from charter.config import Settings
from charter.errors import Refused
from charter.identity import operator


def _saved(tmp_path: Path, url: str) -> Settings:
    settings = Settings(home=tmp_path, api_url=url)
    operator.path(settings).parent.mkdir(parents=True)
    operator.path(settings).write_text("chr_abc_operator\n")
    return settings


def test_the_operator_token_goes_to_the_local_api(tmp_path: Path) -> None:
    with ApiClient.from_settings(_saved(tmp_path, "http://127.0.0.1:8470")) as api:
        assert api._http.headers["Authorization"] == "Bearer chr_abc_operator"


def test_the_operator_token_never_goes_to_another_machine(tmp_path: Path) -> None:
    with pytest.raises(Refused, match="no API token"):
        ApiClient.from_settings(_saved(tmp_path, "https://charter.example.com"))
