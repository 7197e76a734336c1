"""The server side of ``grpc.health.v1``: one status for the whole server and its services, and Watch
streams that end when the server stops.

grpc's reference servicer (``grpc_health.v1.health.aio``) keeps every Watch stream open until the
server cancels it, so one open stream held a stopping server for its whole grace period. Here a
stream reports each change (NOT_SERVING while the server drains) and ends, with status OK, at
:meth:`HealthService.close`. ``defense/health.py`` is the other side, the probe.
"""
from __future__ import annotations

import asyncio
from collections.abc import Iterable

import grpc
from grpc_health.v1 import health_pb2

Status = health_pb2.HealthCheckResponse.ServingStatus
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"]


class HealthService:
    """``Check`` and ``Watch`` for ``services`` ("" is the whole server); NOT_SERVING until :meth:`set` says otherwise.

    Serve it with :func:`defense.wire.add_service`; use it on the server's event loop only.
    """

    def __init__(self, services: Iterable[str]) -> None:
        self._services = frozenset(services)
        self._status: Status = NOT_SERVING
        self._closed = False
        self._changed = asyncio.Condition()

    async def set(self, status: Status) -> None:
        """Report ``status`` for every service from now on (Watch streams get it at once)."""
        async with self._changed:
            self._status = status
            self._changed.notify_all()

    async def close(self) -> None:
        """NOT_SERVING for good: every Watch stream sends it, if it has not yet, and ends."""
        async with self._changed:
            self._status, self._closed = NOT_SERVING, True
            self._changed.notify_all()

    async def Check(self, request: health_pb2.HealthCheckRequest,
                    context: grpc.aio.ServicerContext) -> health_pb2.HealthCheckResponse:
        if request.service not in self._services:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no service {request.service!r} here")
        return health_pb2.HealthCheckResponse(status=self._status)

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext) -> None:
        sent = None
        while True:
            async with self._changed:  # held only to look, never while writing to a slow client
                while self._status_of(request.service) == sent and not self._closed:
                    await self._changed.wait()
                status, closed = self._status_of(request.service), self._closed
            if status != sent:
                await context.write(health_pb2.HealthCheckResponse(status=status))
                sent = status
            elif closed:
                return

    def _status_of(self, service: str) -> Status:
        # the protocol: an unknown service is SERVICE_UNKNOWN to Watch (NOT_FOUND to Check), and the stream stays open
        return self._status if service in self._services else SERVICE_UNKNOWN
