"""Where a client's calls go: the ``--target`` text as a gRPC channel target with gRPC's own ``round_robin`` policy.

A target names one server (``host:port``), several (``host1:port,host2:port``), or a gRPC name that may resolve
to several (``dns:///name:port``, ``ipv4:10.0.0.1:50051,10.0.0.2:50051``, ``ipv6:[::1]:50051``, ``unix:PATH``).
The default policy, ``pick_first``, sends every call to the first address that connects, so a second replica
behind the same name would sit idle; ``round_robin`` (gRPC's service config, ``loadBalancingConfig``) keeps a
connection to every address and sends each call to the next one that is ready, so a replica that goes down is
skipped until it is back. With ``health_checked``, gRPC also watches each replica's ``grpc.health.v1`` status
(``healthCheckConfig``) and sends nothing to one that reports NOT_SERVING, as a draining server does, instead of
having those calls refused and retried. That is for targets that may name several servers (a list, or a name
with a scheme); one plain ``host:port`` has no other replica to turn to, and without the watch a server still
warming up answers ModelInfo and a draining one says why it refuses. The health probe never asks for it: it
must reach a server that is not serving to say so.

gRPC has schemes for a list of IP addresses (``ipv4:``, ``ipv6:``) but none for a list of host names, so a
comma-separated list that names hosts is resolved here, once, when the client is made; a name whose addresses
change belongs in one ``dns:///name:port`` target, which gRPC re-resolves. Everything here is the standard
library: the health probe imports it without torch.
"""
from __future__ import annotations

import ipaddress
import json
import socket
from dataclasses import dataclass

# gRPC's name-resolver schemes (gRPC's naming doc); a target starting with one goes to gRPC as it is
SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:")


class TargetError(ValueError):
    """A target that names no usable address; the message says what was expected."""


@dataclass(frozen=True)
class ChannelTarget:
    """What ``grpc.insecure_channel``/``secure_channel`` take: the target and the channel options."""

    target: str
    options: tuple[tuple[str, str], ...]


def service_config(health_checked: bool) -> str:
    """The channel's service config (JSON): ``round_robin`` over every address, watching health if asked."""
    config: dict[str, object] = {"loadBalancingConfig": [{"round_robin": {}}]}
    if health_checked:
        config["healthCheckConfig"] = {"serviceName": ""}  # "" is the whole server's status (docs/grpc.md)
    return json.dumps(config)


def channel_target(text: str, health_checked: bool = False) -> ChannelTarget:
    """``text`` (one address, a comma-separated list, or a gRPC name) as a round-robin channel target, watching
    the replicas' health with ``health_checked`` unless ``text`` is one plain address.

    Raises :class:`TargetError` for an empty part, a part without a port, or a host that cannot be resolved.
    """
    target = text.strip()
    if target.lower().startswith(SCHEMES):
        return ChannelTarget(target, (("grpc.service_config", service_config(health_checked)),))
    parts = [part.strip() for part in target.split(",")]
    if len(parts) == 1 and parts[0]:  # gRPC's default scheme: dns, resolved and re-resolved by gRPC
        return ChannelTarget(parts[0], (("grpc.service_config", service_config(False)),))
    addresses = _address_list([_host_port(part, text) for part in parts], text)
    return ChannelTarget(addresses, (("grpc.service_config", service_config(health_checked)),))


def _host_port(part: str, text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` as (host, port)."""
    host, colon, port = part.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not part or not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise TargetError(f"{text!r}: expected HOST:PORT[,HOST:PORT...] (an IPv6 host in brackets, [::1]:50051) "
                          f"or a gRPC name such as dns:///name:port, got the part {part!r}")
    return host, int(port)


def _address_list(parts: list[tuple[str, int]], text: str) -> str:
    """An ``ipv4:`` or ``ipv6:`` list of every address of every part (host names resolved now, once)."""
    found = [_addresses(host, port, text) for host, port in parts]
    for family, scheme in ((4, "ipv4:"), (6, "ipv6:")):
        if all(any(ip.version == family for ip, _ in addresses) for addresses in found):
            chosen = dict.fromkeys(f"[{ip}]:{port}" if family == 6 else f"{ip}:{port}"
                                   for addresses in found for ip, port in addresses if ip.version == family)
            return scheme + ",".join(chosen)
    raise TargetError(f"{text!r}: some hosts have only IPv4 and others only IPv6 addresses; gRPC takes one "
                      f"family per list")


def _addresses(host: str, port: int, text: str) -> list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]]:
    try:
        return [(ipaddress.ip_address(host), port)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as err:
        raise TargetError(f"{text!r}: cannot resolve host {host!r} ({err.strerror or err})") from None
    return [(ipaddress.ip_address(info[4][0].split("%")[0]), port) for info in infos
            if info[0] in (socket.AF_INET, socket.AF_INET6)]
