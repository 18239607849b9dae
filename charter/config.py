"""Settings, from `CHARTER_*` environment variables (and nothing else, so services and the CLI agree).

The embedded stack needs none of them. Production sets at least CHARTER_BOOTSTRAP_SERVERS and
CHARTER_DATABASE_URL.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from charter.errors import Unavailable

BrokerKind = Literal["tansu", "kafka"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHARTER_", frozen=True, extra="ignore")

    home: Path = Field(Path(".charter"), description="Stores, logs and the running stack's address.")
    bootstrap_servers: str | None = Field(None, description="Kafka to use; unset means the embedded broker.")
    broker: BrokerKind | None = Field(
        None,
        description="tansu or kafka: with CHARTER_BOOTSTRAP_SERVERS, the capabilities to assume; without, "
        "the local broker `charter up` starts (unset: Kafka where Java 17 runs, else Tansu).",
    )
    topic_prefix: str = Field("charter.", description="Put in front of every topic's name.")
    partitions: int = Field(3, ge=1, description="Partitions of each topic.")
    dlq_partitions: int = Field(1, ge=1, description="Partitions of each dead-letter topic.")
    topic_retention_hours: float = Field(
        168.0,
        gt=0,
        description="How long topics keep records (audit.checkpoints, control and the DLQs: forever).",
    )
    topic_retention_mb: int = Field(
        1024, ge=1, description="The most each partition of those topics keeps, in MiB, whatever their age."
    )
    replication_factor: int = Field(1, ge=1, description="Replicas of each topic created.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; unset means SQLite under home.")
    agents_dir: Path = Field(Path("agents"), description="The agents' YAML files (the planner reloads them).")
    policies_dir: Path = Field(
        Path("policies"),
        description="Cedar policies, limits.yaml and the schema (the policy service reloads them).",
    )
    tool_modules: str = Field("charter.demo.tools", description="Comma-separated modules that declare tools.")
    executor_pool: str = Field(
        "",
        pattern=r"^([a-z][a-z0-9-]{0,39})?$",
        description="The pool this executor serves: it runs only the tools declared with that pool "
        "(empty: the tools of no pool).",
    )
    http_private_networks: str = Field(
        "", description="Comma-separated non-public addresses or networks HTTP tools may reach."
    )
    dry_run_environments: str = Field(
        "", description="Comma-separated environments whose tools run their dry-run path only."
    )
    secrets_file: Path | None = Field(
        None, description="YAML file of secret names to values (or a directory, one file a name)."
    )
    breaker_failures: int = Field(
        5, ge=1, description="Transient failures in a row that open a tool's (or the model's) circuit."
    )
    breaker_cooldown_s: float = Field(30.0, gt=0, description="How long an open circuit refuses calls.")
    llm_base_url: str | None = Field(
        None, description="OpenAI-compatible API for `plan: llm` agents, e.g. https://api.openai.com/v1."
    )
    llm_model: str | None = Field(None, description="The model, unless an agent names its own.")
    llm_api_key_secret: str = Field(
        "LLM_API_KEY",
        pattern=r"^[A-Z][A-Z0-9_]*$",
        description="Name of the secret holding the API key (CHARTER_SECRET_<NAME> or the secrets file); "
        "unset secret: no key is sent.",
    )
    llm_timeout_s: float = Field(60.0, gt=0, description="Bound on one model call.")
    llm_max_attempts: int = Field(3, ge=1, le=10, description="Tries of one model call on transient errors.")
    llm_max_concurrency: int = Field(
        512, ge=1, description="Model calls one planner process makes at once; more wait for a slot."
    )
    llm_input_cost_per_1k: float = Field(0.0, ge=0, description="Cost units per 1,000 prompt tokens.")
    llm_output_cost_per_1k: float = Field(0.0, ge=0, description="Cost units per 1,000 completion tokens.")
    audit_checkpoint_every: int = Field(
        1000, ge=1, description="The audit signs a tree head after this many new records..."
    )
    audit_checkpoint_seconds: float = Field(
        5.0, gt=0, description="...or after this many seconds with records not yet signed."
    )
    personal_fields: str = Field(
        "email,phone,name,customer_name,address",
        description="Comma-separated payload field names the audit stores encrypted per data subject.",
    )
    subject_fields: str = Field(
        "customer_id,subject_id", description="Payload fields naming the data subject, first found wins."
    )
    audit_retention: str = Field(
        "", description="Per-tenant retention of event bytes, e.g. 'acme=90d,default=365d'; unset keeps all."
    )
    tenant: str = Field("default", description="The tenant the CLI and the SDK stamp on what they publish.")
    instance: str = Field(
        default_factory=socket.gethostname,
        description="Names this replica of a service; its transactional id is group + instance.",
    )
    embedded_port: int = Field(
        0, ge=0, le=65535, description="Port of the embedded broker; 0 picks a free one."
    )
    fetch_max_wait_ms: int = Field(20, ge=1, description="Broker wait for data per fetch: the latency floor.")
    producer_linger_ms: int = Field(
        0,
        ge=0,
        description="How long a producer holds a record for others to join its batch. 0: a record is "
        "sent at once, with whatever else was queued meanwhile (a service queues a whole batch's "
        "outputs before its sender runs, so they still go together).",
    )
    sink_fetch_max_wait_ms: int = Field(
        100,
        ge=1,
        description="The same for the consumers off the hot path, the audit and the approvals service "
        "(a person's decision takes seconds anyway): fewer, larger fetches.",
    )
    max_in_flight: int = Field(
        1000,
        ge=1,
        description="Records a service process holds at once, fetched and not yet finished (runs waiting "
        "on a model or a tool among them); when full, it pauses fetching until some finish.",
    )
    read_ahead: int = Field(
        1000,
        ge=0,
        description="Records a keyed service (planner, executor) fetches beyond max_in_flight, queued "
        "rather than in hand, so the next free slot can go to a tenant with fewer in hand.",
    )
    tool_threads: int = Field(
        256, ge=1, description="Threads for the executor's synchronous Python tools: calls of them at once."
    )
    session_timeout_ms: int = Field(
        6000, ge=1000, description="A consumer silent this long leaves its group; its partitions move."
    )
    heartbeat_interval_ms: int = Field(
        1000, ge=100, description="How often a consumer tells its group it lives."
    )
    max_message_bytes: int = Field(
        1_000_000,
        ge=1024,
        description="The largest record a producer sends; a tool's result may take half of it.",
    )
    trace_exporter: Literal["none", "console", "file", "otlp"] = Field(
        "file",
        description="Where spans go: none, console, file (traces-<service>.jsonl in the logs) or otlp.",
    )
    otlp_endpoint: str = Field(
        "http://127.0.0.1:4318", description="OTLP over HTTP: the collector spans go to (+ /v1/traces)."
    )
    metrics_host: str = Field("127.0.0.1", description="Address the services' metrics endpoints listen on.")
    metrics_port: int = Field(
        9460, ge=0, le=65535, description="First metrics port: audit +0 ... planner +4; 0 turns them off."
    )
    metrics_token: SecretStr | None = Field(
        None, description="Bearer token a metrics scrape must send; unset: <keys>/metrics.token."
    )
    keys_dir: Path | None = Field(None, description="Signing keys (PEM); unset means <home>/keys.")
    # The HTTP API and console, served by the approvals service.
    api_host: str = Field("127.0.0.1", description="Address the API and console listen on.")
    api_port: int = Field(8470, ge=1, le=65535, description="Port of the API and console.")
    public_url: str | None = Field(
        None, description="The console's address in links; unset: http://host:port."
    )
    api_url: str | None = Field(None, description="The API the CLI talks to; unset: the running stack's.")
    token: SecretStr | None = Field(None, description="The CLI's API token.")
    users_file: Path = Field(Path("users.yaml"), description="Users and their roles.")
    oidc_issuer: str | None = Field(None, description="Accept JWTs from this OpenID Connect issuer.")
    oidc_audience: str | None = Field(None, description="The audience those JWTs must name.")
    oidc_jwks_url: str | None = Field(None, description="The JWKS; unset: <issuer>/.well-known/jwks.json.")
    oidc_user_claim: str = Field("preferred_username", description="The JWT claim naming the user.")
    oidc_roles_claim: str = Field("roles", description="The JWT claim listing roles (dots for nesting).")
    oidc_tenants_claim: str = Field(
        "tenants", description="The JWT claim listing one's tenants ('*' all; none: CHARTER_TENANT alone)."
    )
    approval_timeout_s: float = Field(86_400, gt=0, description="An approval not decided by then expires.")
    webhook_url: str | None = Field(None, description="Called on approvals requested, runs escalated.")
    webhook_secret: SecretStr | None = Field(None, description="Signs webhook bodies (HMAC-SHA256).")
    log_level: str = Field("INFO", description="The services' log level.")

    @property
    def stack_file(self) -> Path:
        return self.home / "stack.json"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def keys(self) -> Path:
        return self.keys_dir if self.keys_dir is not None else self.home / "keys"

    @property
    def console_url(self) -> str:
        return (self.public_url or f"http://{self.api_host}:{self.api_port}").rstrip("/")

    def api(self) -> str:
        """The API to call: the configured one, else the one `charter up` is running."""
        if self.api_url:
            return self.api_url.rstrip("/")
        try:
            return str(json.loads(self.stack_file.read_text())["api_url"])
        except (FileNotFoundError, KeyError, ValueError):
            return f"http://{self.api_host}:{self.api_port}"

    @property
    def broker_kind(self) -> BrokerKind:
        if self.broker is not None:
            return self.broker
        # An external broker is assumed to be Apache Kafka unless told otherwise; without one,
        # it is the broker `charter up` started.
        if self.bootstrap_servers:
            return "kafka"
        try:
            started = json.loads(self.stack_file.read_text()).get("broker")
        except (FileNotFoundError, ValueError):
            started = None
        return "kafka" if started == "kafka" else "tansu"

    def database_url_for(self, service: str) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / f'{service}.db').resolve()}"

    def tool_module_list(self) -> list[str]:
        return [m.strip() for m in self.tool_modules.split(",") if m.strip()]

    def private_networks(self) -> list[str]:
        return [n.strip() for n in self.http_private_networks.split(",") if n.strip()]

    def dry_run(self, environment: str) -> bool:
        return environment in {e.strip() for e in self.dry_run_environments.split(",") if e.strip()}

    def bootstrap(self) -> str:
        """The broker to talk to: the configured one, else the one `charter up` is running."""
        if self.bootstrap_servers:
            return self.bootstrap_servers
        try:
            stack = json.loads(self.stack_file.read_text())
        except FileNotFoundError:
            raise Unavailable(
                f"no broker: start the stack with `charter up` (home {self.home}) "
                "or set CHARTER_BOOTSTRAP_SERVERS"
            ) from None
        return str(stack["bootstrap_servers"])

    def with_bootstrap(self, bootstrap: str, broker: BrokerKind) -> Settings:
        return self.model_copy(update={"bootstrap_servers": bootstrap, "broker": broker})
