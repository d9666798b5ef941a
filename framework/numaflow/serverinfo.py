"""The server-info file a Numaflow SDK writes once its gRPC server listens, and natsflow's
compatibility check of it (what Numaflow's data plane checks before it sends the first datum).

The file is JSON followed by the SDK's end marker, e.g.
`{"protocol": "uds", "language": "python", "minimum_numaflow_version": "1.4.0-z", "version": "0.14.0",
"metadata": {"MAP_MODE": "unary-map"}}U+005C__END__`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from framework.runtime.udf import VertexFailure

END_MARKER = "U+005C__END__"

# The Numaflow release whose data-plane contract natsflow implements (handshakes, the streaming
# map/transform/sink RPCs, read/ack/pending/partitions sources).
NUMAFLOW_VERSION = (1, 5, 0)
# Oldest SDK of each language that speaks that contract (older ones use unary RPCs natsflow lacks).
MINIMUM_SDK_VERSIONS: dict[str, tuple[int, ...]] = {
    "python": (0, 9, 0),
    "go": (0, 9, 0),
    "java": (0, 9, 0),
    "rust": (0, 1, 0),
}
PROTOCOL_UDS = "uds"

# Files the SDKs write, by role (pynumaflow/_constants.py, numaflow-go's info package).
MAPPER = "mapper-server-info"
REDUCER = "reducer-server-info"
REDUCE_STREAMER = "reducestreamer-server-info"
SOURCE_TRANSFORMER = "sourcetransformer-server-info"
SINKER = "sinker-server-info"
FALLBACK_SINKER = "fb-sinker-server-info"
ON_SUCCESS_SINKER = "ons-sinker-server-info"
SIDE_INPUT = "sideinput-server-info"
SOURCER = "sourcer-server-info"

# A mapper's MAP_MODE metadata → the socket it serves on.
MAP_MODE_KEY = "MAP_MODE"
MAP_SOCKETS = {"unary-map": "map.sock", "stream-map": "mapstream.sock", "batch-map": "batchmap.sock"}


class IncompatibleProgram(VertexFailure):
    """The SDK program cannot be served by this natsflow; the text says why and what to change."""


@dataclass(frozen=True)
class ServerInfo:
    """What an SDK program says about itself; `file` is the server-info file's name."""

    file: str
    protocol: str
    language: str
    version: str
    minimum_numaflow_version: str
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def map_mode(self) -> str:
        """unary-map, stream-map or batch-map (a mapper that says nothing: unary-map)."""
        return self.metadata.get(MAP_MODE_KEY) or "unary-map"


def read_server_info(path: Path) -> ServerInfo | None:
    """The parsed file; None while it is missing or not completely written (no end marker yet).
    IncompatibleProgram when it is complete but not what an SDK writes."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    body, marker, _ = text.partition(END_MARKER)
    if not marker:
        return None
    try:
        raw: Any = json.loads(body)
    except ValueError as exc:
        raise IncompatibleProgram(f"{path}: the server-info file is not JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise IncompatibleProgram(f"{path}: the server-info file holds {type(raw).__name__}, expected an object")
    metadata = raw.get("metadata") or {}
    return ServerInfo(file=path.name, protocol=str(raw.get("protocol", "")), language=str(raw.get("language", "")),
                      version=str(raw.get("version", "")),
                      minimum_numaflow_version=str(raw.get("minimum_numaflow_version", "")),
                      metadata={str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {})


def version_tuple(text: str) -> tuple[int, ...] | None:
    """(1, 4, 0) for "1.4.0", "v1.4.0-z", "0.9.0rc100"; None when there are no numbers."""
    found = re.match(r"v?(\d+(?:\.\d+)*)", text.strip())
    return tuple(int(p) for p in found.group(1).split(".")) if found else None


def dotted(version: tuple[int, ...]) -> str:
    return ".".join(str(p) for p in version)


def check_compatible(info: ServerInfo, program: str) -> None:
    """IncompatibleProgram naming `program` (its command) when natsflow cannot serve it: a TCP
    (multiprocess) server, an SDK older than the streaming protocol, or one that needs a newer
    Numaflow than the one natsflow implements."""
    if info.protocol != PROTOCOL_UDS:
        raise IncompatibleProgram(
            f"{program}: the SDK serves over {info.protocol!r}; natsflow speaks gRPC over a Unix socket only "
            f"(protocol {PROTOCOL_UDS!r}); a multiprocess server (pynumaflow's MapMultiprocServer, "
            "protocol 'tcp') is not supported: use the async or sync server and run replicas instead")
    needed = version_tuple(info.minimum_numaflow_version) if info.minimum_numaflow_version else None
    if needed is not None and needed > NUMAFLOW_VERSION:
        raise IncompatibleProgram(
            f"{program}: the {info.language} SDK {info.version} needs Numaflow {info.minimum_numaflow_version} "
            f"or newer; natsflow implements the data plane of Numaflow {dotted(NUMAFLOW_VERSION)}: use an "
            "older SDK release")
    oldest = MINIMUM_SDK_VERSIONS.get(info.language.lower())
    have = version_tuple(info.version)
    if oldest is not None and have is not None and have < oldest:
        raise IncompatibleProgram(
            f"{program}: the {info.language} SDK {info.version} is older than {dotted(oldest)}, the first "
            "release with the streaming protocol natsflow speaks: upgrade the SDK")
