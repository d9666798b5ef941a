"""How natsflow reaches NATS.

settings  NatsSettings (flags and environment), connecting, connection errors and exit codes
headers   NATS header wire format: parse, validate, escape, encode
client    FastClient: the only module that touches nats-py internals (pinned, contract-tested)
"""
