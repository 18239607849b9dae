from __future__ import annotations

import pytest

from charter.templating import TemplateFailure, check, evaluate, render

CTX = {"trigger": {"amount": 250, "order_id": "A-1", "tags": ["x"]}, "steps": {"lookup": {"currency": "EUR"}}}


def test_a_whole_expression_keeps_its_type() -> None:
    assert render("{{ trigger.amount }}", CTX) == 250
    assert render("{{trigger.tags}}", CTX) == ["x"]


def test_text_with_expressions_renders_as_text() -> None:
    assert render("Refund {{ trigger.amount }} {{ steps.lookup.currency }}", CTX) == "Refund 250 EUR"


def test_nested_values_render_throughout() -> None:
    assert render({"a": ["{{ trigger.order_id }}", 3], "b": {"c": "{{ trigger.amount * 2 }}"}}, CTX) == {
        "a": ["A-1", 3],
        "b": {"c": 500},
    }


def test_undefined_names_fail_rather_than_render_empty() -> None:
    with pytest.raises(TemplateFailure, match="undefined"):
        render("{{ trigger.missing }}", CTX)
    with pytest.raises(TemplateFailure):
        render("id: {{ trigger.missing }}", CTX)


def test_defaults_are_allowed() -> None:
    assert render("{{ trigger.missing | default('none') }}", CTX) == "none"


def test_filters_evaluate_to_booleans() -> None:
    assert evaluate("trigger.amount > 100", CTX) is True


def test_the_sandbox_refuses_python_internals() -> None:
    with pytest.raises(TemplateFailure):
        render("{{ trigger.__class__.__mro__ }}", CTX)


def test_check_finds_syntax_errors_without_a_context() -> None:
    check({"ok": "{{ a.b }}"})
    with pytest.raises(TemplateFailure):
        check({"bad": "{{ a. }}"})
