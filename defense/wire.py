"""Serving a gRPC service whose handlers parse their own requests, so that a body that is not the method's
message is refused with INVALID_ARGUMENT like any other bad request.

grpcio runs a method's request deserializer before the handler. When it raises (any body that is not
a protobuf of the request type), grpcio answers UNKNOWN and logs the exception with its traceback at
ERROR, once per call: any client could flood the server's log. A method registered here takes its body
as bytes (grpc's pass-through: no deserializer) and parses it first thing in the handler, where a
failure is an ordinary refusal: INVALID_ARGUMENT with a one-line message, after ``on_unparsable`` (the
server's counter and throttled log line) has been told.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc
from google.protobuf import descriptor, message_factory
from google.protobuf.message import DecodeError, Message

Behaviour = Callable[[Any, grpc.aio.ServicerContext], Any]  # a servicer's method: a coroutine or async generator
OnUnparsable = Callable[[str, int, grpc.aio.ServicerContext], None]  # called with: method path, body bytes, context
Parse = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Message]]


def add_service(server: grpc.aio.Server, service: descriptor.ServiceDescriptor, behaviours: Mapping[str, Behaviour],
                on_unparsable: OnUnparsable) -> None:
    """Serve ``behaviours`` (method name -> ``async (request, context)``, as in a servicer) as ``service``.

    A behaviour with a unary request is a coroutine (a server-streaming one writes its replies with
    ``context.write`` and returns None); one with streams both ways, such as grpc's reflection servicer,
    is an async generator over an async iterator of requests (no method served here streams its requests
    alone). Methods left out answer UNIMPLEMENTED.
    """
    handlers = {}
    for name, behaviour in behaviours.items():
        method = service.methods_by_name[name]
        parse = _parser(method, on_unparsable)
        serialize = message_factory.GetMessageClass(method.output_type).SerializeToString
        if method.client_streaming:
            make, handler = grpc.stream_stream_rpc_method_handler, _streaming(parse, behaviour)
        else:
            make, handler = (grpc.unary_stream_rpc_method_handler if method.server_streaming
                             else grpc.unary_unary_rpc_method_handler), _unary(parse, behaviour)
        handlers[name] = make(handler, response_serializer=serialize)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)



def _parser(method: descriptor.MethodDescriptor, on_unparsable: OnUnparsable) -> Parse:
    """``method``'s request from a raw body, or INVALID_ARGUMENT (the call ends there)."""
    request_type: type[Message] = message_factory.GetMessageClass(method.input_type)
    path = f"/{method.containing_service.full_name}/{method.name}"

    async def parse(body: bytes, context: grpc.aio.ServicerContext) -> Message:
        try:
            return request_type.FromString(body)
        except DecodeError:
            on_unparsable(path, len(body), context)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"the body ({len(body)} bytes) is not a serialized {method.input_type.full_name}")

    return parse


def _unary(parse: Parse, behaviour: Behaviour) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Any]]:
    async def handler(body: bytes, context: grpc.aio.ServicerContext) -> Any:
        # the request goes straight to the behaviour: this frame holds no reference, so the behaviour can free it
        return await behaviour(await parse(body, context), context)

    return handler


def _streaming(parse: Parse, behaviour: Behaviour) -> Callable[[AsyncIterator[bytes], grpc.aio.ServicerContext],
                                                               AsyncIterator[Any]]:
    async def handler(bodies: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async def requests() -> AsyncIterator[Message]:
            async for body in bodies:
                yield await parse(body, context)

        async for reply in behaviour(requests(), context):
            yield reply

    return handler
