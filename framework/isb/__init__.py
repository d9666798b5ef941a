"""The inter-step buffer: JetStream streams, consumers and KV buckets a pipeline runs on."""
