"""The inter-step buffer: JetStream streams, consumers and KV buckets a pipeline runs on.

names      every nf_* stream, consumer, subject and KV bucket name
envelope   natsflow's headers: encode, decode, delivery metadata
provision  create or reconcile the streams, consumers and buckets
reader     pull, hold in progress, ack or nak (the only sender of ack tokens)
writer     publish with gathered acks, back pressure per buffer
reconcile  bring an existing stream or bucket to the spec's settings
descriptor what a program vertex needs to know of its buffers
ports      the one buffer interface the runtime reads and writes through (Reads, Writes, Publishes)
memory     an in-process ISB offering it, for the test harness (framework/testing)
"""
