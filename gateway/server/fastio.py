"""Direct socket I/O for an established session whose both sides are plain sockets.

Once a session is relaying, each read and each write through an asyncio transport costs
a Python-level callback and uvloop's write machinery (a write is queued to the end of the
loop iteration, then sent); for ``pgbench -S`` that fixed cost per read and per write was
most of pgwarden's user CPU per statement. :class:`DirectIO` takes both sockets over
while the session relays:

- reading: each transport's reading is paused and the event loop watches a duplicate of
  its socket (``loop.add_reader``); when readable, the C endpoint makes one ``recv()``
  and hands the bytes to the relay (which frames and decides exactly as before);
- writing: the relay writes to the endpoints; an endpoint sends with one ``send()`` when
  its transport holds nothing unsent and hands the transport whatever the socket does not
  take, so ordering with everything else written through the transport, buffering, flow
  control (``pause_writing`` → :meth:`pause_upstream` / :meth:`pause_client`) and error
  handling stay the transport's;
- ending: at end of stream or a read error the endpoint stops and the transport resumes
  reading, so it meets the end itself and the connection closes the way it always does.
  :meth:`detach` (idempotent) stops watching and closes the duplicates; the connection
  calls it before it closes, aborts or pools anything.

Each side is taken over on its own: a TLS side keeps its transport (the bytes on its
socket are not the protocol's), the plain side of the same session still goes direct.
Strict-mode audit (whose writer holds statements back) keeps both transports, and so does
everything when the C part is not built or ``server.direct_io`` is false.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
from collections.abc import Callable

log = logging.getLogger(__name__)

try:
    from gateway.server._fastio import Endpoint
except ImportError:  # pragma: no cover - the extension is optional
    Endpoint = None  # type: ignore[assignment,misc]

#: Whether direct I/O can be used at all (the C part is built).
AVAILABLE = Endpoint is not None

_FAMILIES = (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)


def _plain_fd(transport: asyncio.BaseTransport) -> int | None:
    """The descriptor of a transport's socket when bytes on it are the protocol's own."""
    if transport.is_closing() or transport.get_extra_info("sslcontext") is not None:
        return None
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in _FAMILIES:
        return None
    fd = sock.fileno()
    return fd if fd >= 0 else None


class DirectIO:
    """The sockets of one relaying session that are read and written directly.

    Each side on its own: a plain socket gets an endpoint, a TLS one stays with its
    transport (its bytes on the wire are not the protocol's). :attr:`client` and
    :attr:`upstream` are the relay's writers either way.
    """

    __slots__ = ("_endpoints", "_loop", "_paused", "_reading", "client", "client_transport",
                 "upstream", "upstream_transport")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client: asyncio.Transport,
        upstream: asyncio.Transport,
        client_fd: int | None,
        upstream_fd: int | None,
    ) -> None:
        assert Endpoint is not None
        self._loop = loop
        self.client_transport = client
        self.upstream_transport = upstream
        # Duplicates: the transports keep their own descriptors (and close them), these
        # are ours (closed by detach).
        cdup = os.dup(client_fd) if client_fd is not None else None
        try:
            udup = os.dup(upstream_fd) if upstream_fd is not None else None
        except OSError:
            if cdup is not None:
                os.close(cdup)
            raise
        client_ep = Endpoint(cdup, client) if cdup is not None else None
        upstream_ep = Endpoint(udup, upstream) if udup is not None else None
        #: What the relay writes the client's bytes to, and the upstream's.
        self.client: Endpoint | asyncio.Transport = client_ep or client
        self.upstream: Endpoint | asyncio.Transport = upstream_ep or upstream
        # (endpoint, its transport) of each direct side.
        self._endpoints: list[tuple[Endpoint, asyncio.Transport]] = []
        if client_ep is not None:
            self._endpoints.append((client_ep, client))
        if upstream_ep is not None:
            self._endpoints.append((upstream_ep, upstream))
        # Endpoints watched by the loop, and those held back by flow control.
        self._reading: set[Endpoint] = set()
        self._paused: set[Endpoint] = set()

    @classmethod
    def create(
        cls, client: asyncio.Transport, upstream: asyncio.Transport
    ) -> DirectIO | None:
        """Direct I/O for this pair of transports, or None when no side is plain."""
        if Endpoint is None:
            return None
        client_fd, upstream_fd = _plain_fd(client), _plain_fd(upstream)
        if client_fd is None and upstream_fd is None:
            return None
        try:
            return cls(asyncio.get_running_loop(), client, upstream, client_fd, upstream_fd)
        except OSError as exc:  # out of descriptors: the transports still work
            log.warning("direct socket I/O unavailable for a session: %s", exc)
            return None

    @property
    def sides(self) -> tuple[bool, bool]:
        """(client side direct, upstream side direct)."""
        return (self.client is not self.client_transport,
                self.upstream is not self.upstream_transport)

    def start(
        self,
        on_client_data: Callable[[bytes], None],
        on_upstream_data: Callable[[bytes], None],
        on_failure: Callable[[str, BaseException], None],
    ) -> None:
        """Take reading over from the plain sides' transports.

        Client bytes go to *on_client_data*, upstream bytes to *on_upstream_data* (the
        TLS sides' transports deliver theirs as before). ``on_failure(side, exc)`` is
        called when a data callback raised (``side`` is ``"client"`` or ``"upstream"``);
        the connection then ends the session.
        """
        for endpoint, transport in self._endpoints:
            client_side = endpoint is self.client
            # Everything this transport read until now has been delivered: from here on
            # it reads nothing until detach or the end of the stream.
            transport.pause_reading()
            side = "client" if client_side else "upstream"
            endpoint.bind(
                on_client_data if client_side else on_upstream_data,
                functools.partial(self._ended, endpoint, transport),
                functools.partial(on_failure, side),
            )
            self._watch(endpoint)

    def _watch(self, endpoint: Endpoint) -> None:
        if endpoint in self._reading or endpoint in self._paused or endpoint.fileno() < 0:
            return
        self._loop.add_reader(endpoint.fileno(), endpoint.readable)
        self._reading.add(endpoint)

    def _unwatch(self, endpoint: Endpoint) -> None:
        if endpoint in self._reading:
            self._reading.discard(endpoint)
            with contextlib.suppress(RuntimeError, ValueError, OSError):
                # (RuntimeError: the loop is already closed at interpreter shutdown)
                self._loop.remove_reader(endpoint.fileno())

    def _ended(self, endpoint: Endpoint, transport: asyncio.Transport, code: int) -> None:
        # End of stream (code 0) or a read error: the transport reads again and meets
        # the same end, so the connection closes through its usual callbacks.
        self._unwatch(endpoint)
        endpoint.bind(_drop, _ignore, _ignore)
        if code:
            log.debug("direct read ended: %s", os.strerror(code))
        if not transport.is_closing():
            transport.resume_reading()

    # -- flow control: the other side's writer is above its high-water mark ----------

    def _pause(self, writer: Endpoint | asyncio.Transport) -> None:
        if isinstance(writer, Endpoint):
            self._paused.add(writer)
            self._unwatch(writer)
        elif not writer.is_closing():
            writer.pause_reading()

    def _resume(self, writer: Endpoint | asyncio.Transport) -> None:
        if isinstance(writer, Endpoint):
            self._paused.discard(writer)
            self._watch(writer)
        elif not writer.is_closing():
            writer.resume_reading()

    def pause_client(self) -> None:
        """Stop reading the client (the upstream's write buffer is full)."""
        self._pause(self.client)

    def resume_client(self) -> None:
        self._resume(self.client)

    def pause_upstream(self) -> None:
        """Stop reading the upstream (the client's write buffer is full)."""
        self._pause(self.upstream)

    def resume_upstream(self) -> None:
        self._resume(self.upstream)

    def detach(self) -> None:
        """Stop watching the direct sides and close the duplicates. Idempotent.

        The transports stay as they are: the caller closes them, or resumes the
        upstream's reading when it goes back to the pool.
        """
        for endpoint, _ in self._endpoints:
            self._unwatch(endpoint)
            endpoint.close()
        self._paused.clear()


def _drop(data: bytes) -> None:
    """Reads after an endpoint ended (none should come)."""


def _ignore(value: object) -> None:
    pass


__all__ = ["AVAILABLE", "DirectIO"]
