"""The connector registry as the spec sees it: source and sink kinds come from the entry points,
in the order natsflow declares its own, and a connector whose client library is missing fails
validation with the extra to install."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from framework.spec import Sink, Source, SpecError, parse_pipeline, registry, sinks, sources
from framework.spec.registry import SINK_GROUP, SOURCE_GROUP, entry_points


def doc(source: dict, sink: dict) -> dict:
    return {"apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": {"name": "p"},
            "spec": {"vertices": [{"name": "in", "source": source}, {"name": "out", "sink": sink}],
                     "edges": [{"from": "in", "to": "out"}]}}


REPO = Path(__file__).resolve().parents[2]
KAFKA = {"kafka": {"brokers": ["127.0.0.1:9092"], "topic": "t", "consumerGroup": "g"}}


def test_the_spec_blocks_are_built_from_the_registry_in_declared_order():
    assert list(sources()) == ["generator", "http", "nats", "jetstream", "kafka", "rabbitmq", "mqtt", "redisStreams",
                             "serving", "numaflow"]
    assert list(sinks()) == ["log", "blackhole", "nats", "jetstream", "udsink", "kafka", "postgres", "redis", "http",
                           "serve", "numaflow"]
    assert list(Source.model_fields)[:len(sources())] == list(sources())
    assert list(Sink.model_fields)[:len(sinks())] == list(sinks())
    with pytest.raises(SpecError) as err:
        parse_pipeline(doc({}, {"log": {}}), check_handlers=False)
    assert err.value.problems == [("spec.vertices[0].source", "a source must set exactly one of: generator, http, "
                                   "nats, jetstream, kafka, rabbitmq, mqtt, redisStreams, serving, numaflow (found 0)")]


def test_installed_metadata_gives_the_same_kinds_in_the_same_order(monkeypatch, tmp_path):
    """The registry reads natsflow's own entry points from the tree it runs from; installed (a
    wheel, no tree) it reads the distribution's metadata, where setuptools sorts them by name:
    the registry must come out the same (kinds, order, implementations)."""
    from_tree = (sources(), sinks())
    assert [ep.name for ep, dist in entry_points(SOURCE_GROUP) if dist == "natsflow"] == list(sources())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    info = tmp_path / "natsflow-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: natsflow\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{name} = {value}\n" for name, value in sorted(declared.items())) + "\n"
        for group, declared in project["entry-points"].items()))
    monkeypatch.syspath_prepend(str(tmp_path))  # before any other natsflow metadata on the path
    monkeypatch.setattr(registry, "_source_tree_entry_points", lambda group: None)
    installed = (registry._load("source", SOURCE_GROUP), registry._load("sink", SINK_GROUP))
    assert [list(r) for r in installed] == [list(r) for r in from_tree]
    assert [i.factory for i in installed[1].values()] == [i.factory for i in from_tree[1].values()]


def test_a_source_whose_extra_is_missing_fails_validation(monkeypatch):
    monkeypatch.setitem(sys.modules, "aiokafka", None)  # what `import aiokafka` meets without the extra
    with pytest.raises(SpecError) as err:
        parse_pipeline(doc(KAFKA, {"log": {}}), file="p.yaml", check_handlers=False)
    assert err.value.problems == [("spec.vertices[0].source.kafka", "needs pip install 'natsflow[kafka]'")]
    assert str(err.value) == "p.yaml: spec.vertices[0].source.kafka: needs pip install 'natsflow[kafka]'"


def test_a_sink_and_a_fallback_whose_extra_is_missing_fail_validation(monkeypatch):
    monkeypatch.setitem(sys.modules, "asyncpg", None)
    monkeypatch.setitem(sys.modules, "redis", None)
    sink = {"postgres": {"dsn": "postgresql://x", "table": "t"}, "retryStrategy": {"onFailure": "fallback"},
            "fallback": {"redis": {"list": "l"}}}
    with pytest.raises(SpecError) as err:
        parse_pipeline(doc({"generator": {}}, sink), check_handlers=False)
    assert err.value.problems == [("spec.vertices[1].sink.postgres", "needs pip install 'natsflow[postgres]'"),
                                  ("spec.vertices[1].sink.fallback.redis", "needs pip install 'natsflow[redis]'")]


def test_a_missing_extra_of_an_unused_connector_does_not_matter(monkeypatch):
    monkeypatch.setitem(sys.modules, "aiokafka", None)
    parse_pipeline(doc({"generator": {}}, {"log": {}}), check_handlers=False)


def test_with_the_extra_installed_the_same_spec_validates():
    p = parse_pipeline(doc(KAFKA, {"log": {}}), check_handlers=False)
    assert p.vertex("in").source.kind == "kafka"
    assert p.vertex("in").source.connector.install == "natsflow[kafka]"


CORE_ONLY = """
import importlib.abc, sys
BLOCKED = {"aiokafka", "redis", "asyncpg", "aio_pika", "aiormq", "aiomqtt", "paho", "aiohttp"}

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
import framework, framework.cli, framework.runtime.worker, framework.k8s.render
from framework.spec import SpecError, parse_pipeline
doc = {"apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": {"name": "p"},
       "spec": {"vertices": [{"name": "in", "source": SOURCE}, {"name": "out", "sink": {"log": {}}}],
                "edges": [{"from": "in", "to": "out"}]}}
try:
    parse_pipeline(doc, check_handlers=False)
    print("valid")
except SpecError as exc:
    print(exc)
print(sorted(BLOCKED & {m.partition(".")[0] for m in sys.modules}))
"""


@pytest.mark.parametrize(("source", "expected"), [
    ({"generator": {}}, "valid"),
    (KAFKA, "<pipeline>: spec.vertices[0].source.kafka: needs pip install 'natsflow[kafka]'"),
])
def test_the_core_runs_without_any_client_library(source, expected):
    """A core install (no extra): natsflow imports, validates and would run a spec that needs no
    extra, and names the extra of one that does."""
    out = subprocess.run([sys.executable, "-c", CORE_ONLY.replace("SOURCE", repr(source))], capture_output=True,
                         text=True, timeout=60, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [expected, "[]"]


def fake_distribution(root: Path, name: str, group: str, entries: dict[str, str]) -> None:
    info = root / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()))


@pytest.mark.parametrize(("entries", "expected"), [
    ({"kafka": "vertices.kafka:SOURCE"}, "source kind 'kafka' is already registered by natsflow"),
    ({"eventTime": "vertices.kafka:SOURCE"}, "'eventTime' cannot be a source kind"),
    ({"odd": "vertices.kafka.config:KafkaSourceConfig"}, "names a ModelMetaclass, not a ConnectorInfo"),
    ({"gone": "no_such_module_here:SOURCE"}, "cannot load it: ModuleNotFoundError"),
])
def test_an_entry_point_that_cannot_be_a_connector_is_an_error_naming_it(monkeypatch, tmp_path, entries, expected):
    fake_distribution(tmp_path, "natsflow_other", SOURCE_GROUP, entries)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(registry.RegistryError) as err:
        registry._load("source", SOURCE_GROUP)
    assert f"entry point {SOURCE_GROUP}:{next(iter(entries))} = " in str(err.value)
    assert "(natsflow-other)" in str(err.value) and expected in str(err.value)


def test_a_third_party_connector_comes_after_natsflows_own(monkeypatch, tmp_path):
    (tmp_path / "natsflow_other_sink.py").write_text(
        "from framework.spec.registry import ConnectorInfo\nfrom vertices.log import LogConfig\n"
        "SINK = ConnectorInfo(LogConfig, 'vertices.log.sink:LogSink')\n")
    fake_distribution(tmp_path, "natsflow_other", SINK_GROUP, {"another": "natsflow_other_sink:SINK"})
    monkeypatch.syspath_prepend(str(tmp_path))
    found = registry._load("sink", SINK_GROUP)
    assert list(found)[-1] == "another" and list(found)[:-1] == list(sinks())
    assert (found["another"].origin, found["another"].name) == ("natsflow-other", "another")


def test_connector_rules_report_at_their_paths():
    mqtt = doc({"mqtt": {"topic": "t/#"}}, {"log": {}})
    mqtt["spec"]["vertices"][0]["scale"] = {"min": 2, "max": 2}
    with pytest.raises(SpecError) as err:
        parse_pipeline(mqtt, check_handlers=False)
    assert err.value.problems == [("spec.vertices[0].scale.min", "an mqtt source runs as one replica (replicas "
                                   "sharing its client id would disconnect each other); set min: 1")]
    with pytest.raises(SpecError) as err:
        parse_pipeline(doc({"jetstream": {"stream": "nf_p_out"}}, {"log": {}}), check_handlers=False)
    assert err.value.problems == [("spec.vertices[0].source.jetstream.stream", "'nf_p_out' is one of this "
                                   "pipeline's own buffers or dead-letter streams: reading it back would loop")]
