"""One vertex as one process.

worker         pick the vertex's kind and run it (`natsflow vertex`)
lifecycle      connect, readiness, stop and drain; the VertexKind protocol
forward        read → process → route → write → ack, for maps, batch maps, map streams and sinks
source, map, batch_map, map_stream, sink, reduce (+ reduce_windows)   one module per kind
routing        outputs to out-edges and buffer partitions
retry          the one retry policy; deadletter: dead-letter messages and their writer
udf, bounded   calling user handlers, with timeouts and bounded threads
ownership      reduce partition leases
phase          the pipeline's lifecycle phase (Running/Paused) from JetStream KV
"""
