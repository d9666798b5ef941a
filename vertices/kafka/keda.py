"""KEDA's `kafka` scaler for a Kafka source: the consumer group's lag on its topic."""

from __future__ import annotations

from framework.k8s.keda import KedaTrigger, SecretKey, UpstreamScaling, keda_param
from framework.spec.types import SecretRef

KAFKA_SASL = {"plain": "plaintext", "scram-sha-256": "scram_sha256", "scram-sha-512": "scram_sha512"}


def kafka_trigger(up: UpstreamScaling) -> KedaTrigger:
    cfg, s, where, own = up.config, up.scale, up.path, up.secret
    meta = {"lagThreshold": str(s.lag_threshold), "activationLagThreshold": str(s.activation_lag_threshold),
            "offsetResetPolicy": "earliest"}
    keda_param(meta, "bootstrapServers", ",".join(cfg.brokers), f"{where}.brokers")
    keda_param(meta, "consumerGroup", cfg.consumer_group, f"{where}.consumerGroup")
    keda_param(meta, "topic", cfg.topic, f"{where}.topic")
    auth: list[SecretKey] = []
    if cfg.sasl is not None:
        meta["sasl"] = KAFKA_SASL[cfg.sasl.mechanism.value]
        for param, value in (("username", cfg.sasl.username), ("password", cfg.sasl.password)):
            # a secretRef is read by KEDA from that same Secret; a literal from the scaler Secret
            auth.append(SecretKey(param, value.name, value.key) if isinstance(value, SecretRef)
                        else SecretKey(param, own, param))
    if cfg.tls is not None:
        meta["tls"] = "enable"
        auth += [SecretKey(k, own, k) for k, present in (("ca", cfg.tls.ca_file), ("cert", cfg.tls.cert_file),
                                                         ("key", cfg.tls.key_file)) if present]
    return KedaTrigger("kafka", meta, auth)
