"""The resolved view of each vertex (framework.spec.plan): what callers read instead of
re-deriving it from (pipeline, vertex name)."""

from __future__ import annotations

from framework.spec import min_replicas, parse_pipeline, plan, plans


def pipeline():
    return parse_pipeline({
        "apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": {"name": "p"},
        "spec": {"limits": {"readBatchSize": 100},
                 "vertices": [
                     {"name": "in", "source": {"kafka": {"brokers": ["b:9092"], "topic": "t", "consumerGroup": "g"}},
                      "scale": {"max": 3}},
                     {"name": "count", "udf": {"reduce": {"handler": "tests.udfs:window_sum", "partitions": 3,
                                                          "window": {"fixed": {"length": "10s"}}}},
                      "limits": {"readBatchSize": 7}, "buffers": {"maxAge": "1h"}},
                     {"name": "out", "sink": {"log": {}}},
                     {"name": "quiet", "sink": {"log": {}}, "scale": {"min": 0}}],
                 "edges": [{"from": "in", "to": "count"}, {"from": "count", "to": "out"},
                           {"from": "count", "to": "quiet"}]}}, check_handlers=False)


def test_a_vertex_plan_resolves_limits_buffers_partitions_and_routes():
    p = pipeline()
    count = plan(p, "count")
    assert (count.index, count.path, count.name) == (1, "spec.vertices[1]", "count")
    assert count.limits.read_batch_size == 7 and plan(p, "out").limits.read_batch_size == 100
    assert count.buffers.max_age == 3600.0 and plan(p, "out").buffers.max_age is None
    assert count.partitions == [0, 1, 2] and plan(p, "out").partitions == [None]
    assert [e.to for e in count.out_edges] == ["out", "quiet"] and [e.from_ for e in count.in_edges] == ["in"]
    assert count.connector is None and plan(p, "in").connector.name == "kafka"
    assert [vp.name for vp in plans(p)] == ["in", "count", "out", "quiet"]


def test_the_replica_rule():
    """Sources always run, a sink keeps one unless the spec says `scale.min: 0`, UDFs scale to zero."""
    p = pipeline()
    assert [min_replicas(v) for v in p.spec.vertices] == [1, 0, 1, 0]
    assert [vp.min_replicas for vp in plans(p)] == [1, 0, 1, 0]
