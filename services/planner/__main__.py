"""`python -m services.planner`: the planner's faust worker."""

from __future__ import annotations

import logging
import sys

import faust
import mode.loop

from charter import broker
from charter.config import Settings
from charter.errors import ConfigError
from charter.service import settle_gc
from charter.stack import readiness
from charter.telemetry import setup_logging, setup_tracing
from services.planner.service import NAME, build_app

log = logging.getLogger(__name__)


def main() -> None:
    settings = Settings()
    setup_logging(NAME, settings.log_level)
    provider = setup_tracing(NAME, settings)
    log.info("starting: %s", broker.capabilities(settings).describe())
    try:
        app = build_app(settings)
    except ConfigError as exc:
        log.error("%s", exc)
        sys.exit(2)
    # uvloop, as every other service runs on; faust's consumer thread makes its loop by the policy too.
    mode.loop.use("uvloop")
    # Charter's log format (with run and trace ids), not faust's.
    worker = faust.Worker(
        app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False, override_logging=False
    )
    worker.spinner = None  # a terminal spinner writes escape codes into the log file
    settle_gc()
    try:
        worker.execute_from_commandline()
    finally:
        readiness.clear(settings, NAME)
        provider.shutdown()


if __name__ == "__main__":
    main()
