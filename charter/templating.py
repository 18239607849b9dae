"""Playbook templates: parameters and filters written as Jinja expressions, evaluated sandboxed.

A string that is exactly one `{{ expression }}` evaluates to the expression's native value, so
`"{{ trigger.amount }}"` stays a number; any other string with `{{` renders as text. Undefined
names are errors, never empty strings: a typo in a playbook must fail the run, not send "".
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError, Undefined
from jinja2.sandbox import SandboxedEnvironment

_ENV = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
_WHOLE = re.compile(r"^\{\{(?P<expr>(?:(?!\}\}).)+)\}\}$", re.DOTALL)


class TemplateFailure(ValueError):
    """A template that does not compile, or names something the context lacks."""


@lru_cache(maxsize=4096)
def _expression(expr: str) -> Any:
    return _ENV.compile_expression(expr, undefined_to_none=False)


@lru_cache(maxsize=4096)
def _template(text: str) -> Any:
    return _ENV.from_string(text)


def evaluate(expr: str, context: dict[str, Any]) -> Any:
    """The native value of one expression, e.g. a trigger filter `trigger.amount > 0`."""
    try:
        value = _expression(expr)(**context)
    except TemplateError as exc:
        raise TemplateFailure(f"{expr!r}: {exc}") from exc
    except (TypeError, ValueError, ArithmeticError, LookupError, AttributeError) as exc:
        raise TemplateFailure(f"{expr!r}: {exc}") from exc
    if isinstance(value, Undefined):
        raise TemplateFailure(f"{expr!r} is undefined")
    return value


def render(value: Any, context: dict[str, Any]) -> Any:
    """`value` with every template in it (in nested dicts and lists too) filled from `context`."""
    if isinstance(value, dict):
        return {k: render(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, context) for v in value]
    if not isinstance(value, str) or ("{{" not in value and "{%" not in value):
        return value
    whole = _WHOLE.match(value.strip())
    if whole:
        return evaluate(whole.group("expr"), context)
    try:
        return _template(value).render(**context)
    except TemplateError as exc:
        raise TemplateFailure(f"{value!r}: {exc}") from exc


def check(value: Any) -> None:
    """Raise TemplateFailure if any template in `value` does not compile."""
    if isinstance(value, dict):
        for v in value.values():
            check(v)
    elif isinstance(value, list):
        for v in value:
            check(v)
    elif isinstance(value, str) and ("{{" in value or "{%" in value):
        whole = _WHOLE.match(value.strip())
        try:
            if whole:
                _expression(whole.group("expr"))
            else:
                _template(value)
        except TemplateError as exc:
            raise TemplateFailure(f"{value!r}: {exc}") from exc
