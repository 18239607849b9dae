"""A tool that fails with its secret in the error message, as a careless client library's
exception does (tests/e2e/test_trace_redaction.py)."""

from __future__ import annotations

from pydantic import BaseModel

from charter.tools import ToolContext, ToolError, tool


class Nothing(BaseModel):
    order: str = ""


@tool(secrets=["LEAKY_TOKEN"], description="Fails, quoting the token it was given.")
def test_leaky(params: Nothing, ctx: ToolContext) -> Nothing:
    raise ToolError(f"401 Unauthorized: token {ctx.secret('LEAKY_TOKEN')} was refused")
