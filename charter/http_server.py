"""An ASGI app served by uvicorn inside a service process: the API and console in approvals, and
every service's metrics endpoint. The service owns the process's signals and its stop event."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn
from starlette.applications import Starlette

from charter.errors import ConfigError

log = logging.getLogger(__name__)


class _QuietServer(uvicorn.Server):
    """uvicorn inside a service: the service owns SIGTERM, not the web server."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    def __init__(self, app: Starlette, host: str, port: int, what: str) -> None:
        config = uvicorn.Config(
            app, host=host, port=port, log_config=None, access_log=False, lifespan="off", server_header=False
        )
        self._server = _QuietServer(config)
        self.listening = asyncio.Event()
        self.address = f"http://{host}:{port}"
        self._what = what

    def _bind(self) -> socket.socket:
        """The listening socket, bound here: uvicorn would exit the whole process on a port in use."""
        config = self._server.config
        family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((config.host, config.port))
        except OSError as exc:
            sock.close()
            raise ConfigError(f"the {self._what} cannot listen on {self.address}: {exc.strerror}") from None
        return sock

    async def run(self, stop: asyncio.Event) -> None:
        serving = asyncio.create_task(self._server.serve(sockets=[self._bind()]))
        # uvicorn says it is listening only through this flag.
        while not self._server.started and not serving.done():  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        if serving.done():
            serving.result()
            raise RuntimeError(f"the {self._what} did not start on {self.address}")
        log.info("%s on %s", self._what, self.address)
        self.listening.set()
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        self._server.should_exit = True
        stopping.cancel()
        await serving
