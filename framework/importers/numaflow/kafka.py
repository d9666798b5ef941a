"""Numaflow's kafka source and sink blocks as natsflow's (brokers, topic, TLS, SASL)."""

from __future__ import annotations

from typing import Any

from framework.importers.numaflow.report import Node
from framework.importers.numaflow.values import secret_ref

_MECHANISMS = {"PLAIN": "plain", "SCRAM-SHA-256": "scram-sha-256", "SCRAM-SHA-512": "scram-sha-512"}
# Numaflow keeps each mechanism's credentials under its own key.
_CREDENTIALS = {"PLAIN": "plain", "SCRAM-SHA-256": "scramsha256", "SCRAM-SHA-512": "scramsha512"}
_TLS_FILES = ("natsflow's kafka TLS reads certificate files (tls.caFile/certFile/keyFile): mount the "
              "secret and name the files")


def connection(node: Node) -> dict[str, Any]:
    """brokers, topic, tls and sasl: what Numaflow's kafka source and sink share."""
    out: dict[str, Any] = {"brokers": [str(b) for b in node.take("brokers", list) or []],
                           "topic": node.take("topic", str)}
    tls = node.child("tls")
    if tls is not None:
        if tls.take("insecureSkipVerify", bool):
            out["tls"] = {"insecureSkipVerify": True}
        for key in ("caCertSecret", "certSecret", "keySecret"):
            tls.drop(key, _TLS_FILES)
        tls.rest()
    sasl = _sasl(node)
    if sasl is not None:
        out["sasl"] = sasl
    node.drop("config", "a sarama client config in YAML; natsflow's kafka.config takes aiokafka options")
    return out


def _sasl(node: Node) -> dict[str, Any] | None:
    sasl = node.child("sasl")
    if sasl is None:
        return None
    mechanism = sasl.take("mechanism", str) or "PLAIN"
    if mechanism not in _MECHANISMS:
        sasl.report.drop(sasl.at("mechanism"), f"natsflow's kafka connector supports SASL {', '.join(_MECHANISMS)}, "
                                               f"not {mechanism}")
        sasl.rest()
        return None
    creds = sasl.child(_CREDENTIALS[mechanism])
    sasl.rest("credentials of a mechanism other than the one chosen")
    if creds is None:
        sasl.report.error(sasl.at(_CREDENTIALS[mechanism]), f"SASL {mechanism} needs its userSecret and "
                                                           "passwordSecret")
        return None
    user, password = secret_ref(creds, "userSecret"), secret_ref(creds, "passwordSecret")
    creds.note("handshake", "aiokafka always sends the SASL handshake")
    creds.rest()
    if user is None or password is None:
        return None
    return {"mechanism": _MECHANISMS[mechanism], "username": user, "password": password}
