"""A small client of Charter's HTTP API, for the CLI and scripts: a token in, JSON out, and
every error as one line (the API's own message)."""

from __future__ import annotations

from typing import Any

import httpx

from charter.config import Settings
from charter.errors import CharterError, Refused, Unavailable
from charter.identity import operator

TIMEOUT_S = 30.0


class ApiCallFailed(CharterError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} (HTTP {status} {code})")
        self.status = status
        self.code = code
        self.message = message


class ApiClient:
    def __init__(self, base_url: str, token: str, timeout_s: float = TIMEOUT_S) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout_s,
            follow_redirects=False,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiClient:
        url = settings.api()
        token = settings.token.get_secret_value() if settings.token is not None else None
        if token is None and _on_this_machine(url):
            # The operator token `charter up` made goes only to an API on this machine: never
            # to whatever CHARTER_API_URL names elsewhere.
            token = operator.saved(settings)
        if token is None:
            raise Refused(
                "no API token: set CHARTER_TOKEN (an admin issues one with `charter tokens create`)"
            )
        return cls(url, token)

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise Unavailable(f"cannot reach the API at {self.base_url}: {exc}") from None
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
                raise ApiCallFailed(response.status_code, error["code"], error["message"])
            except (ValueError, KeyError, TypeError):
                raise ApiCallFailed(response.status_code, "error", response.text[:200]) from None
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self.call("POST", path, json=body)

    def approvals(self, status: str = "pending") -> list[dict[str, Any]]:
        return list(self.get("/v1/approvals", status=status)["approvals"])

    def approval(self, approval_id: str) -> dict[str, Any]:
        return dict(self.get(f"/v1/approvals/{approval_id}"))

    def approve(
        self,
        approval_id: str,
        action_hash: str,
        comment: str | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"action_hash": action_hash, "comment": comment}
        if parameters is not None:
            body["parameters"] = parameters
        return dict(self.post(f"/v1/approvals/{approval_id}/approve", body))

    def reject(self, approval_id: str, action_hash: str, reason: str | None = None) -> dict[str, Any]:
        return dict(
            self.post(f"/v1/approvals/{approval_id}/reject", {"action_hash": action_hash, "reason": reason})
        )


def _on_this_machine(url: str) -> bool:
    host = httpx.URL(url).host
    return host in ("localhost", "::1") or host.startswith("127.")
