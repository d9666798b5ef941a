"""Malformed pipeline files: whatever a file holds, loading it ends in a SpecError naming the file
and the field (or the line, for YAML problems), one line per problem, and the CLI exits 1 without
a traceback."""

from __future__ import annotations

import copy
import math
import random
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from framework.spec import Pipeline, SpecError, load_pipeline, parse_pipeline

REPO = Path(__file__).resolve().parents[2]

VALID = """\
apiVersion: natsflow.io/v1
kind: Pipeline
metadata: {name: demo}
spec:
  limits: {readBatchSize: 100, bufferMaxLength: 1000, ackWait: 30s}
  vertices:
    - name: in
      source: {generator: {rpu: 10, duration: 1s}}
    - name: agg
      udf:
        reduce:
          handler: "tests.udfs:identity"
          window: {fixed: {length: 10s}}
          partitions: 2
        retry: {attempts: 3, factor: 2}
    - name: out
      sink:
        jetstream: {stream: results, subject: results.demo}
        retryStrategy: {backoff: {steps: 3}}
  edges:
    - {from: in, to: agg}
    - {from: agg, to: out}
"""


def doc() -> dict[str, Any]:
    return yaml.safe_load(VALID)


def edit(change: Callable[[dict[str, Any]], Any]) -> str:
    """The valid pipeline with one change, as YAML text."""
    raw = doc()
    change(raw)
    return yaml.safe_dump(raw, sort_keys=False)


def vertex(raw: dict[str, Any], i: int) -> dict[str, Any]:
    return raw["spec"]["vertices"][i]


def nested(opening: str, closing: str, depth: int) -> str:
    return "apiVersion: natsflow.io/v1\nkind: Pipeline\nmetadata: {name: demo}\nspec: " + opening * depth + \
        closing * depth + "\n"


def alias_bomb(levels: int) -> str:
    lines = [VALID.rstrip(), "x0: &a0 [1, 2]"]
    lines += [f"x{i}: &a{i} [*a{i - 1}, *a{i - 1}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


# (id, file content, where the error points, a part of the reason)
CASES: list[tuple[str, str | bytes, str, str]] = [
    # -- the file as YAML --
    ("empty file", "", "", "the file is empty"),
    ("list at top level", "- apiVersion: natsflow.io/v1\n- kind: Pipeline\n", "", "the file holds a list"),
    ("text at top level", "just some words\n", "", "the file holds the text 'just some words'"),
    ("duplicate top-level key", VALID.replace("kind: Pipeline\n", "kind: Pipeline\nkind: Pipeline\n"),
     "line 3", "duplicate key 'kind' at the top level (first at line 2"),
    ("duplicate key in a vertex", VALID.replace("    - name: agg\n", "    - name: agg\n      name: agg2\n"),
     "line 10", "duplicate key 'name' in spec.vertices[1] (first at line 9"),
    ("duplicate key in a flow mapping", VALID.replace("{readBatchSize: 100,", "{readBatchSize: 100, readBatchSize: 5,"),
     "line 5", "duplicate key 'readBatchSize' in spec.limits"),
    ("5,000 nested lists", nested("[", "]", 5000), "line 4", "nested more than 64 levels deep"),
    ("5,000 nested mappings", nested("{a: ", "}", 5000), "line 4", "nested more than 64 levels deep"),
    ("latin-1 bytes", VALID.replace("name: demo", "name: d\xe9mo").encode("latin-1"),
     "line 3", "not UTF-8 text: byte 0xe9 at column 19"),
    ("binary garbage", bytes(range(256)) * 8, "line 2", "not UTF-8 text: byte 0x80 at column 118"),
    ("control characters", "apiVersion: natsflow.io/v1\nkind: Pipe\x00line\n", "line 2",
     "character U+0000 is not allowed"),
    ("unclosed flow sequence", VALID.replace("[", "").replace("  edges:\n", "  edges: [\n"), "line", "not valid YAML"),
    ("tab indentation", VALID.replace("  limits", "\tlimits"), "line 5", "not valid YAML"),
    ("alias bomb", alias_bomb(30), "line", "the file expands to more than 1000000 values"),
    ("alias that contains itself", VALID + "loop: &me [*me]\n", "line 23", "nested more than 64 levels deep at loop[0]"),
    ("integer of 5,000 digits", VALID.replace("rpu: 10", "rpu: " + "9" * 5000), "line 8", "cannot read this value"),
    ("two documents", VALID + "---\n" + VALID, "line", "expected a single document"),
    ("python object tag", VALID.replace("kind: Pipeline", "kind: !!python/object/apply:os.system [echo hi]"),
     "line 2", "could not determine a constructor for the tag"),
    ("file over 256 KiB", VALID + "#" * (300 << 10) + "\n", "", "the file is larger than 256 KiB"),
    # -- wrong types and shapes --
    ("vertices is a mapping", edit(lambda r: r["spec"].update(vertices={"in": {}})), "spec.vertices",
     "Input should be a valid list"),
    ("vertex without a name", edit(lambda r: vertex(r, 1).pop("name")), "spec.vertices[1].name", "Field required"),
    ("source is a list", edit(lambda r: vertex(r, 0).update(source=[{"generator": {}}])), "spec.vertices[0].source",
     "valid dictionary"),
    ("nested garbage", edit(lambda r: vertex(r, 2).update(sink=[[[[{"a": {"b": None}}]]]])),
     "spec.vertices[2].sink", "valid dictionary"),
    ("unknown key with a newline", edit(lambda r: r["spec"]["limits"].update({"ack\nWait": 3})),
     "spec.limits['ack\\nWait']", "unknown field"),
    ("boolean as a count", edit(lambda r: r["spec"]["limits"].update(readBatchSize=True)),
     "spec.limits.readBatchSize", "expected a whole number, got true"),
    ("fraction as a count", edit(lambda r: vertex(r, 0)["source"]["generator"].update(rpu=2.5)),
     "spec.vertices[0].source.generator.rpu", "expected a whole number, got 2.5"),
    ("quoted 1e9 as a count", edit(lambda r: vertex(r, 1).update(scale={"max": "1e9"})),
     "spec.vertices[1].scale.max", "YAML reads a number like 1e9 as text"),
    ("number as a flag", edit(lambda r: vertex(r, 1)["udf"]["reduce"].update(keyed=1)),
     "spec.vertices[1].udf.reduce.keyed", "expected true or false, got 1"),
    ("missing window", edit(lambda r: vertex(r, 1)["udf"]["reduce"].pop("window")),
     "spec.vertices[1].udf.reduce.window", "Field required"),
    # -- numbers out of bounds --
    ("bufferMaxLength 1e30", VALID.replace("bufferMaxLength: 1000", "bufferMaxLength: 1.0e+30"),
     "spec.limits.bufferMaxLength", "must be at most 100000000 (a buffer is a queue"),
    ("rpu 1e20", edit(lambda r: vertex(r, 0)["source"]["generator"].update(rpu=10**20)),
     "spec.vertices[0].source.generator.rpu", "must be at most 100000000"),
    ("scale.max 1e9", edit(lambda r: vertex(r, 2).update(scale={"max": 10**9})),
     "spec.vertices[2].scale.max", "must be at most 128 (each replica keeps up to 4 pull requests"),
    ("lagThreshold 0", edit(lambda r: vertex(r, 2).update(scale={"lagThreshold": 0})),
     "spec.vertices[2].scale.lagThreshold", "must be at least 1"),
    ("msgSize 1 GiB", edit(lambda r: vertex(r, 0)["source"]["generator"].update(msgSize=1 << 30)),
     "spec.vertices[0].source.generator.msgSize", "must be at most 1048576"),
    ("partitions 1000", edit(lambda r: vertex(r, 1)["udf"]["reduce"].update(partitions=1000)),
     "spec.vertices[1].udf.reduce.partitions", "must be at most 256"),
    ("ackWait 1e30s", edit(lambda r: r["spec"]["limits"].update(ackWait="1e30s")),
     "spec.limits.ackWait", "'1e30s' is not a duration"),
    ("ackWait of 10^400 hours", edit(lambda r: r["spec"]["limits"].update(ackWait="9" * 400 + "h")),
     "spec.limits.ackWait", "is not a finite duration"),
    ("ackWait 2 days", edit(lambda r: r["spec"]["limits"].update(ackWait="48h")),
     "spec.limits.ackWait", "must be at most 24h"),
    ("readTimeout NaN", VALID.replace("ackWait: 30s", "readTimeout: .nan"),
     "spec.limits.readTimeout", "is not a finite duration"),
    ("window of a year", edit(lambda r: vertex(r, 1)["udf"]["reduce"].update(window={"fixed": {"length": "8760h"}})),
     "spec.vertices[1].udf.reduce.window.fixed.length", "must be at most 168h"),
    ("sliding window of a million slides", edit(lambda r: vertex(r, 1)["udf"]["reduce"].update(
        window={"sliding": {"length": "1h", "slide": "1ms"}})),
     "spec.vertices[1].udf.reduce.window.sliding", "length / slide must be at most 1000"),
    ("retry factor infinite", VALID.replace("factor: 2", "factor: .inf"),
     "spec.vertices[1].udf.retry.factor", "expected a finite number, got inf"),
    ("backoff steps negative", edit(lambda r: vertex(r, 2)["sink"]["retryStrategy"]["backoff"].update(steps=-1)),
     "spec.vertices[2].sink.retryStrategy.backoff.steps", "must be at least 0"),
    ("http port 70000", edit(lambda r: vertex(r, 0).update(source={"http": {"port": 70000}})),
     "spec.vertices[0].source.http.port", "must be at most 65535"),
    ("mqtt qos true", edit(lambda r: vertex(r, 0).update(source={"mqtt": {"topic": "t", "qos": True}})),
     "spec.vertices[0].source.mqtt.qos", "expected a whole number, got true"),
    # -- graph --
    ("cycle without a sink", edit(lambda r: (r["spec"]["vertices"].insert(2, {
        "name": "loop", "udf": {"map": {"handler": "tests.udfs:identity"}}}), r["spec"]["edges"].extend([
            {"from": "in", "to": "loop"}, {"from": "loop", "to": "loop"}]))),
     "spec.edges", "'loop' feeds only itself with no path to a sink"),
    # -- names natsflow reserves, and what NATS accepts --
    ("sink subject in nf.>", edit(lambda r: vertex(r, 2)["sink"].update(jetstream={"stream": "s", "subject": "nf.demo.x"})),
     "spec.vertices[2].sink.jetstream.subject", "overlaps nf.>, which natsflow keeps"),
    ("sink subject with a wildcard", edit(lambda r: vertex(r, 2)["sink"].update(nats={"subject": "orders.*"}) or
                                        vertex(r, 2)["sink"].pop("jetstream")),
     "spec.vertices[2].sink.nats.subject", "has a wildcard, but a sink publishes to one subject"),
    ("source subject '>'", edit(lambda r: vertex(r, 0).update(source={"nats": {"subject": ">"}})),
     "spec.vertices[0].source.nats.subject", "overlaps nf.> and nfdlq.>"),
    ("subject with an empty token", edit(lambda r: vertex(r, 0).update(source={"nats": {"subject": "a..b"}})),
     "spec.vertices[0].source.nats.subject", "has an empty token"),
    ("stream name with a space", edit(lambda r: vertex(r, 0).update(source={"jetstream": {"stream": "my stream"}})),
     "spec.vertices[0].source.jetstream.stream", "cannot contain whitespace"),
    ("sink into an nf_ stream", edit(lambda r: vertex(r, 2)["sink"].update(jetstream={"stream": "nf_x", "subject": "a"})),
     "spec.vertices[2].sink.jetstream.stream", "stream names starting with 'nf_' are natsflow's"),
    ("source reading its own buffer", edit(lambda r: vertex(r, 0).update(source={"jetstream": {"stream": "nf_demo_agg_p0"}})),
     "spec.vertices[0].source.jetstream.stream", "is one of this pipeline's own buffers"),
    ("pipeline name too long for Kubernetes", edit(lambda r: r["metadata"].update(name="p" * 50)),
     "metadata.name", "must be at most 44 characters"),
    ("handler with a space", edit(lambda r: vertex(r, 1)["udf"]["reduce"].update(handler="my module:f")),
     "spec.vertices[1].udf.reduce", "must look like 'package.module:function'"),
]


def test_the_valid_base_loads(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(VALID)
    assert load_pipeline(f).vertex("agg").udf.reduce.partitions == 2


@pytest.mark.parametrize("content, where, reason", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_file_gives_a_spec_error_naming_the_field(tmp_path, content, where, reason):
    f = tmp_path / "p.yaml"
    f.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(SpecError) as err:
        load_pipeline(f)
    lines = str(err.value).splitlines()
    assert all(line.startswith(f"{f}: ") for line in lines), lines  # one line per problem, each names the file
    prefix = f"{f}: line " if where == "line" else f"{f}: {where}: " if where else f"{f}: "
    assert any(line.startswith(prefix) and reason in line for line in lines), lines


def test_there_are_at_least_thirty_cases():
    assert len(CASES) >= 30


CLI_CASES = ["5,000 nested lists", "latin-1 bytes", "duplicate key in a vertex", "bufferMaxLength 1e30",
             "cycle without a sink", "binary garbage"]


@pytest.mark.parametrize("name", CLI_CASES)
def test_cli_exits_1_without_traceback(tmp_path, name):
    content, where, reason = next(c[1:] for c in CASES if c[0] == name)
    f = tmp_path / "p.yaml"
    f.write_bytes(content if isinstance(content, bytes) else content.encode())
    # provision, render and asyncapi load the file before anything else (no server is needed to fail).
    for args in (["validate", str(f)], ["provision", str(f), "--nats-url", "nats://127.0.0.1:1"],
                 ["render", str(f), "--image", "x", "-o", str(tmp_path / "out")], ["asyncapi", str(f)]):
        res = subprocess.run([sys.executable, "-m", "framework.cli", *args], cwd=REPO, capture_output=True,
                             text=True, timeout=60)
        assert res.returncode == 1, (args, res.stderr)
        assert "Traceback" not in res.stderr, res.stderr
        assert f"{f}: {where}" in res.stderr and reason in res.stderr, res.stderr


# ---- property tests: random damage to a valid pipeline -----------------------------------------

# Values that broke validation before: huge, non-finite, of the wrong type, names NATS refuses.
NOTORIOUS = st.sampled_from([10**30, 2**63, 10**9, -1, 0, True, False, 1.5, float("inf"), float("nan"), "1e30",
                             "9" * 400 + "h", "nf.x.y", ">", "a b", "nf_demo_agg", "10h", "", None, [], {}])
JUNK = NOTORIOUS | st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
    | st.sampled_from(["1e30", "nf.x.y", ">", "a b", "nf_demo_agg", "10h", ".nan", "-1", ""]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def _paths(node: Any, path: tuple = ()) -> list[tuple]:
    out = [path]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*path, i))
    return out


def _damage(raw: dict[str, Any], path: tuple, how: str, junk: Any, key: str) -> None:
    if not path:
        return
    parent = raw
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if how == "replace":
        parent[last] = junk
    elif how == "delete":
        del parent[last]
    elif isinstance(parent[last], dict):
        parent[last][key] = junk
    elif isinstance(parent[last], list):
        parent[last].append(junk)


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_damaged_pipeline_gives_only_spec_errors(data):
    raw = doc()
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(raw)))
        junk = copy.deepcopy(data.draw(JUNK))  # sampled [] and {} are shared objects: never mutate them
        _damage(raw, path, data.draw(st.sampled_from(["replace", "delete", "add"])), junk,
                data.draw(st.sampled_from(["name", "max", "stream", "subject", "x", "fallback", "rpu"])))
    try:
        p = parse_pipeline(copy.deepcopy(raw), file="p.yaml", check_handlers=False)
    except SpecError as exc:
        assert exc.problems and all(reason and "\n" not in reason for _, reason in exc.problems), exc.problems
        return
    _assert_runnable_numbers(p)


def _assert_runnable_numbers(p: Pipeline) -> None:
    """What the checks promise: every number that reaches JetStream fits an int64 and is finite."""
    from framework.isb import provision
    configs = []
    for v in p.reading_vertices():
        parts = v.udf.reduce.partitions if v.udf is not None and v.udf.reduce is not None else None
        for part in range(parts) if parts else [None]:
            configs += [provision.buffer_stream_config(p, v.name, part), provision.buffer_consumer_config(p, v.name, part)]
        configs.append(provision.dlq_stream_config(p, v.name))
    for cfg in configs:
        for value in cfg.as_dict().values():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                assert math.isfinite(value) and abs(value) < 2**63, (cfg, value)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=st.lists(st.tuples(st.integers(0, len(VALID.encode()) - 1), st.sampled_from(["flip", "insert", "delete"]),
                                st.binary(min_size=1, max_size=4)), min_size=1, max_size=4))
def test_damaged_bytes_give_only_spec_errors(tmp_path_factory, edits):
    data = bytearray(VALID.encode())
    for pos, how, chunk in edits:
        pos = min(pos, len(data) - 1)
        if how == "flip":
            data[pos] ^= chunk[0] or 1
        elif how == "insert":
            data[pos:pos] = chunk
        else:
            del data[pos:pos + len(chunk)]
    f = tmp_path_factory.mktemp("bytes") / "p.yaml"
    f.write_bytes(bytes(data))
    try:
        load_pipeline(f, check_handlers=False)
    except SpecError as exc:
        assert all(line.startswith(f"{f}: ") for line in str(exc).splitlines()), str(exc)


def test_seeded_random_files_give_only_spec_errors(tmp_path):
    """Random YAML-looking text: tokens YAML treats specially, in random order (seeded)."""
    rng = random.Random(11)
    tokens = ["{", "}", "[", "]", ":", "- ", "&a ", "*a ", "!!str ", "? ", "|", ">", "'", '"', "#", "\n", "  ",
              "spec", "vertices", "name", "1e30", ".nan", "~", "<<: *a", ",", "%YAML 1.1\n", "---\n", "\t", "\\"]
    for i in range(200):
        f = tmp_path / f"r{i}.yaml"
        f.write_text("".join(rng.choice(tokens) for _ in range(rng.randint(1, 80))))
        try:
            load_pipeline(f, check_handlers=False)
        except SpecError as exc:
            assert all(line.startswith(f"{f}: ") for line in str(exc).splitlines()), str(exc)
