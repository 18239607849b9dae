"""The reference pages, generated from the code at every docs build (mkdocs-gen-files runs this).

Nothing here is written by hand, so the reference cannot drift from the product: the CLI from
typer's own command tree, the settings from `Settings`, the events from the `.avsc` files and
`TOPIC_OF`, the HTTP API from the FastAPI app's OpenAPI document.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import mkdocs_gen_files
import typer.core
import typer.main
from pydantic.fields import FieldInfo

from charter import events as ev
from charter.cli import app as cli_app
from charter.cli import exits
from charter.config import Settings
from charter.topics import DLQ_SUFFIX, TOPIC_OF, Topic
from services.approvals.app import create_app

GENERATED = "Generated from the code at every docs build ({source}); do not edit."


def cli_page() -> str:
    command = typer.main.get_command(cli_app)
    assert isinstance(command, typer.core.TyperGroup)
    ctx = typer.Context(command, info_name="charter")
    tree = "\n".join(command_sections(command, ctx, "charter", level=2))
    return "\n".join(
        [
            "# CLI",
            "",
            GENERATED.format(source="`charter.cli`, through typer"),
            "",
            "Every command finds the running stack through `.charter/stack.json` (or the settings), "
            "and acts as the person whose token is in `CHARTER_TOKEN` (`charter up` writes the "
            "operator's to `.charter/keys/operator.token`).",
            "",
            "## Output",
            "",
            "`--output text|json|jsonl`, anywhere on the line, chooses how a listing or showing "
            "command prints: text for people, JSON (an array, or one object), or one JSON object a "
            "line. Streams (`tail`, `replay`) print one object a line. An error is one line on stderr.",
            "",
            "## Exit codes",
            "",
            "| code | meaning |",
            "|---|---|",
            *(f"| {code} | {meaning} |" for code, meaning in exit_codes()),
            "",
            tree,
        ]
    )


def command_sections(
    command: typer.core.TyperCommand | typer.core.TyperGroup, ctx: typer.Context, path: str, level: int
) -> Iterator[str]:
    """One section a command, depth first, with its whole help, usage and options."""
    yield f"{'#' * level} `{path}`"
    yield ""
    if command.help:
        for paragraph in command.help.split("\f")[0].strip().split("\n\n"):
            yield prose(paragraph) + "\n"
        yield ""
    yield f"```text\n{path} {' '.join(command.collect_usage_pieces(ctx))}\n```"
    yield ""
    params = [r for p in command.get_params(ctx) if (r := p.get_help_record(ctx))]
    if params:
        yield "| option or argument | meaning |"
        yield "|---|---|"
        for names, text in params:
            yield f"| `{cell(names)}` | {prose(text)} |"
        yield ""
    if isinstance(command, typer.core.TyperGroup):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if isinstance(sub, typer.core.TyperCommand | typer.core.TyperGroup) and not sub.hidden:
                sub_ctx = typer.Context(sub, info_name=name, parent=ctx)
                yield from command_sections(sub, sub_ctx, f"{path} {name}", min(level + 1, 4))


def exit_codes() -> list[tuple[str, str]]:
    """The table in `charter.cli.exits`' docstring: a code, then its meaning over one or more lines."""
    rows: list[list[str]] = []
    for line in (exits.__doc__ or "").splitlines()[2:]:
        head, _, rest = line.strip().partition(" ")
        if head.isdigit():
            rows.append([head, rest.strip()])
        elif line.strip() and rows:
            rows[-1][1] += " " + line.strip()
    return [(code, meaning) for code, meaning in rows]


def settings_page() -> str:
    lines = [
        "# Settings",
        "",
        GENERATED.format(source="`charter.config.Settings`"),
        "",
        "Every setting is an environment variable, read by the services and the CLI alike. The "
        "embedded stack needs none of them; production sets at least `CHARTER_BOOTSTRAP_SERVERS` "
        "and `CHARTER_DATABASE_URL`. Secrets (`CHARTER_SECRET_<NAME>`, or `CHARTER_SECRETS_FILE`) "
        "are read by name and never listed.",
        "",
        "| variable | type | default | meaning |",
        "|---|---|---|---|",
    ]
    for name, field in Settings.model_fields.items():
        lines.append(
            f"| `CHARTER_{name.upper()}` | {type_name(field)} | {default_of(field)} | "
            f"{prose(field.description or '')} |"
        )
    return "\n".join(lines) + "\n"


def type_name(field: FieldInfo) -> str:
    return cell(" or ".join(type_words(field.annotation)))


def type_words(annotation: Any) -> list[str]:
    """`str | None` as `str`, `Literal['a', 'b']` as `a, b`: what a reader of an environment needs."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return [", ".join(f"`{a}`" for a in args)]
    if args:
        return [w for a in args if a is not type(None) for w in type_words(a)]
    return [getattr(annotation, "__name__", str(annotation))]


def default_of(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        return f"`{getattr(field.default_factory, '__name__', 'computed')}()`"
    if field.default is None:
        return "unset"
    return f"`{field.default}`" if str(field.default) else '`""`'


def cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def prose(text: str) -> str:
    """A table cell of text (not code), where `<keys>` must not read as an HTML tag."""
    parts = cell(text).split("`")
    # Even parts are outside code spans, where the escape is needed; inside, it would show.
    return "`".join(p if i % 2 else p.replace("<", "&lt;").replace(">", "&gt;") for i, p in enumerate(parts))


def events_page() -> str:
    schemas = files("charter") / "schemas"
    by_topic: dict[Topic, list[str]] = {}
    for event, topic in TOPIC_OF.items():
        by_topic.setdefault(topic, []).append(event.__name__)
    lines = [
        "# Events",
        "",
        GENERATED.format(source="the `.avsc` files in `charter/schemas` and `charter.topics`"),
        "",
        "Every event is Avro, framed with its writer schema's fingerprint, so any Avro reader with "
        "these schemas can decode a record. Each topic carries the events listed under it; the "
        "topic's full name has the `CHARTER_TOPIC_PREFIX` in front (`charter.` by default). Earlier "
        "versions of each schema are kept in `charter/schemas/versions/`, and every change must be "
        "compatible with them.",
        "",
    ]
    for topic in Topic:
        lines += [f"## `{topic.value}`", ""]
        for name in by_topic.get(topic, []):
            lines += record_section(json.loads((schemas / f"{name}.avsc").read_text()), level=3)
    lines += ["## Shared types", ""]
    for path in sorted((schemas / "types").iterdir(), key=lambda p: p.name):
        if path.name.endswith(".avsc"):
            lines += record_section(json.loads(path.read_text()), level=3)
    lines += [
        "## Dead-letter topics",
        "",
        f"Each topic has a dead-letter topic, its name with `{DLQ_SUFFIX}` after it, which keeps "
        "what could not be handled, with the reason, forever. It carries one event:",
        "",
        *record_section(json.loads((schemas / f"{ev.DeadLettered.__name__}.avsc").read_text()), 3),
    ]
    return "\n".join(lines)


def record_section(schema: dict[str, Any], level: int) -> list[str]:
    lines = [f"{'#' * level} {schema['name']}", ""]
    if schema.get("doc"):
        lines += [prose(schema["doc"]), ""]
    if schema.get("type") == "enum":
        return [*lines, "One of " + ", ".join(f"`{s}`" for s in schema["symbols"]) + ".", ""]
    lines += ["| field | type | default | meaning |", "|---|---|---|---|"]
    for field in schema.get("fields", []):
        default = f"`{json.dumps(field['default'])}`" if "default" in field else "required"
        lines.append(
            f"| `{field['name']}` | {cell(avro_type(field['type']))} | {cell(default)} | "
            f"{prose(field.get('doc', ''))} |"
        )
    return [*lines, ""]


def avro_type(t: Any) -> str:
    if isinstance(t, str):
        return t.removeprefix("charter.")
    if isinstance(t, list):
        return " or ".join(avro_type(member) for member in t)
    kind = t.get("type")
    if kind == "array":
        return f"array of {avro_type(t['items'])}"
    if kind == "map":
        return f"map of {avro_type(t['values'])}"
    if kind == "enum":
        return "enum " + "/".join(t["symbols"])
    if kind == "record":
        return f"record {t['name']}"
    if "logicalType" in t:
        return f"{t['logicalType']} ({t['type']})"
    return avro_type(kind)


def api_pages() -> tuple[str, str]:
    # The document does not depend on the context the app serves with; none is needed to read it.
    document = create_app(None).openapi()  # type: ignore[arg-type]
    lines = [
        "# HTTP API",
        "",
        GENERATED.format(source="the approvals service's FastAPI app"),
        "",
        f"Version {document['info']['version']}. A running stack serves the same document at "
        "`/v1/openapi.json`; it is also [here](openapi.json), for clients and code generators. "
        "A route that needs a credential takes `Authorization: Bearer <token>`: an API token "
        "(`charter tokens create`) or an OIDC JWT. An error is the status with a JSON body "
        '`{"error": {"status", "code", "message"}}`.',
        "",
    ]
    for path, operations in document["paths"].items():
        for method, op in operations.items():
            lines += operation_section(method, path, op)
    return "\n".join(lines), json.dumps(document, indent=2)


def operation_section(method: str, path: str, op: dict[str, Any]) -> list[str]:
    who = "needs a credential" if op.get("security") else "no credential"
    lines = [f"## `{method.upper()} {path}`", "", f"**{op.get('summary', '')}** ({who}).", ""]
    if op.get("description"):
        lines += [op["description"], ""]
    params = op.get("parameters", [])
    if params:
        lines += ["| parameter | in | required | type |", "|---|---|---|---|"]
        for p in params:
            lines.append(
                f"| `{p['name']}` | {p['in']} | {'yes' if p.get('required') else 'no'} | "
                f"{schema_name(p.get('schema', {}))} |"
            )
        lines.append("")
    body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    if body:
        lines += [f"Body: {schema_name(body)}.", ""]
    responses = ", ".join(
        f"{status} {r.get('description', '')}".strip() for status, r in sorted(op["responses"].items())
    )
    lines += [f"Responses: {responses}.", ""]
    return lines


def schema_name(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return f"`{schema['$ref'].rsplit('/', 1)[-1]}`"
    if "anyOf" in schema:
        return " or ".join(schema_name(s) for s in schema["anyOf"])
    return f"`{schema.get('type', 'object')}`"


def write(path: str, text: str) -> None:
    with mkdocs_gen_files.open(path, "w") as f:
        f.write(text)
    if path.endswith(".md"):
        # Where a reader of the page's source should go to change it: the generator, not the page.
        mkdocs_gen_files.set_edit_path(path, Path("docs/gen_reference.py"))


write("reference/cli.md", cli_page())
write("reference/settings.md", settings_page())
write("reference/events.md", events_page())
api_page, api_document = api_pages()
write("reference/api.md", api_page)
write("reference/openapi.json", api_document)
