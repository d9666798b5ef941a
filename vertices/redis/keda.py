"""KEDA's `redis-streams` scaler for a redisStreams source: the consumer group's lag."""

from __future__ import annotations

from urllib.parse import urlsplit

from framework.k8s.keda import KedaTrigger, SecretKey, UpstreamScaling
from framework.spec.types import SecretRef


def redis_streams_trigger(up: UpstreamScaling) -> KedaTrigger:
    cfg, s, own = up.config, up.scale, up.secret
    meta = {"stream": cfg.stream, "consumerGroup": cfg.group, "lagCount": str(s.lag_threshold),
            "activationLagCount": str(s.activation_lag_threshold)}
    url = None if isinstance(cfg.url, SecretRef) else urlsplit(cfg.url)
    host_port = url.netloc.rpartition("@")[2] if url is not None else ""
    if url is None or not host_port or "${" in host_port:  # where Redis is, only the pods know: from the scaler Secret
        return KedaTrigger("redis-streams", meta, [SecretKey("address", own, "address"),
                                                   SecretKey("password", own, "password")])
    meta.update({"address": f"{url.hostname}:{url.port or 6379}", "databaseIndex": (url.path.strip("/") or "0")})
    if url.scheme == "rediss":
        meta["enableTLS"] = "true"
    return KedaTrigger("redis-streams", meta, [SecretKey("password", own, "password")] if url.password else [])
