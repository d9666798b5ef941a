"""aiokafka client options from a `kafka` block: what the source and the sink share."""

from __future__ import annotations

import inspect
import ssl
from typing import Any

from vertices.kafka.config import KafkaConnection

SASL = {"plain": "PLAIN", "scram-sha-256": "SCRAM-SHA-256", "scram-sha-512": "SCRAM-SHA-512"}


def ssl_context(cfg: KafkaConnection) -> ssl.SSLContext | None:
    tls = cfg.tls
    if tls is None:
        return None
    context = ssl.create_default_context(cafile=tls.ca_file)
    if tls.cert_file:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def client_options(cfg: KafkaConnection, client_cls: type, where: str, **defaults: Any) -> dict[str, Any]:
    """aiokafka keyword arguments from the spec: `defaults`, then TLS/SASL, then `config` (which
    wins, so any client option can be tuned); an unknown `config` key is an error naming it."""
    accepted = set(inspect.signature(client_cls.__init__).parameters) - {"self", "loop", "topics"}
    unknown = sorted(set(cfg.config) - accepted)
    if unknown:
        raise ValueError(f"{where}.config: unknown {client_cls.__name__} option(s) {', '.join(unknown)}")
    # an entry may list several brokers (`brokers: ["${KAFKA_BROKERS}"]` with a comma-separated value)
    brokers = [b.strip() for entry in cfg.brokers for b in entry.split(",") if b.strip()]
    opts: dict[str, Any] = {"bootstrap_servers": brokers, **defaults}
    context = ssl_context(cfg)
    if context is not None:
        opts["ssl_context"] = context
    if cfg.sasl is not None:
        opts.update(sasl_mechanism=SASL[cfg.sasl.mechanism.value], sasl_plain_username=cfg.sasl.username,
                    sasl_plain_password=cfg.sasl.password)
    opts["security_protocol"] = ("SASL_" if cfg.sasl else "") + ("SSL" if context else "PLAINTEXT")
    opts.update(cfg.config)
    return opts
