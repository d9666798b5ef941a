"""`{secretRef: {name, key}}` credentials: the spec type, the variable name, the one resolver that
builds connectors, and the clear error when the variable is missing (before anything connects)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from framework.connector import load_connector
from framework.local.supervisor import vertex_command
from framework.spec import SecretRef, SpecError, parse_pipeline
from framework.spec.secrets import SecretMissing, check_pipeline, env_name, resolved

REPO = Path(__file__).resolve().parents[2]


def ref(name: str, key: str) -> dict:
    return {"secretRef": {"name": name, "key": key}}


DOC = {
    "apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": {"name": "sec"},
    "spec": {
        "vertices": [
            {"name": "in", "source": {"kafka": {"brokers": ["k:9092"], "topic": "t", "consumerGroup": "g",
                                                "sasl": {"username": "app", "password": ref("kafka", "password")}}}},
            {"name": "map", "udf": {"command": ["./prog"], "env": {"API_KEY": ref("llm", "key"), "MODE": "x"}}},
            {"name": "hook", "sink": {"http": {"url": "http://127.0.0.1:1/in",
                                               "headers": {"Authorization": ref("hook", "auth"), "X-A": "b"}}}},
        ],
        "edges": [{"from": "in", "to": "map"}, {"from": "map", "to": "hook"}],
    },
}


def parse(doc: dict):
    return parse_pipeline(doc, file="p.yaml", check_handlers=False)


def test_variable_names():
    assert env_name(SecretRef(name="pg", key="dsn")) == "NATSFLOW_SECRET_PG_DSN"
    assert env_name(SecretRef(name="kafka-prod.eu", key="sasl.pass_word")) == "NATSFLOW_SECRET_KAFKA_PROD_EU_SASL_PASS_WORD"


@pytest.mark.parametrize("value, reason", [
    ({"secretRef": {"name": "pg"}}, "secretRef takes exactly name and key, both strings (got name)"),
    ({"secretRef": {"name": "pg", "key": "dsn", "optional": True}}, "secretRef takes exactly name and key"),
    ({"secretRef": {"name": "PG", "key": "dsn"}}, "secretRef.name 'PG' is not a Kubernetes Secret name"),
    ({"secretRef": {"name": "pg", "key": "a/b"}}, "secretRef.key 'a/b' is not a Secret key"),
    ({"secret": {"name": "pg", "key": "dsn"}}, "expected a string or {secretRef: {name: <Secret name>, key: <key in it>}}"),
    ("", "must not be empty"),
    (5, "expected a string or {secretRef"),
])
def test_bad_secret_refs_name_the_field(value, reason):
    doc = copy.deepcopy(DOC)
    doc["spec"]["vertices"][2]["sink"]["http"]["headers"]["Authorization"] = value
    with pytest.raises(SpecError) as err:
        parse(doc)
    [line] = str(err.value).splitlines()
    assert line.startswith(f"p.yaml: spec.vertices[2].sink.http.headers.Authorization: {reason}"), line


def test_a_dumped_pipeline_reads_back_the_same():
    p = parse(copy.deepcopy(DOC))
    dumped = p.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert dumped["spec"]["vertices"][0]["source"]["kafka"]["sasl"]["password"] == ref("kafka", "password")
    assert parse(dumped) == p


def test_connectors_are_built_with_the_values(monkeypatch):
    p = parse(copy.deepcopy(DOC))
    env = {"NATSFLOW_SECRET_HOOK_AUTH": "Bearer h", "NATSFLOW_SECRET_KAFKA_PASSWORD": "pw"}
    sink_cfg = p.vertex("hook").sink.http
    assert resolved(sink_cfg, "x", env).headers == {"Authorization": "Bearer h", "X-A": "b"}
    assert sink_cfg.headers["Authorization"] == SecretRef(name="hook", key="auth")  # the spec is not changed
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert load_connector("sink", "http", sink_cfg).cfg.headers["Authorization"] == "Bearer h"
    source = load_connector("source", "kafka", p.vertex("in").source.kafka)
    assert (source.cfg.sasl.username, source.cfg.sasl.password) == ("app", "pw")
    with pytest.raises(SecretMissing) as err:
        resolved(sink_cfg, "spec.vertices[2].sink.http", {})
    assert str(err.value) == ("spec.vertices[2].sink.http.headers.Authorization: secretRef hook/auth: environment "
                              "variable NATSFLOW_SECRET_HOOK_AUTH is not set (rendered pods get it from the Secret; "
                              "for natsflow run, export it)")


def test_udf_env_secret_is_given_to_the_program_under_its_own_name(tmp_path, monkeypatch):
    p = parse(copy.deepcopy(DOC))
    monkeypatch.setenv("NATSFLOW_SECRET_LLM_KEY", "sk-1")
    _, env = vertex_command(p, tmp_path / "p.yaml", "map")
    assert env["API_KEY"] == "sk-1" and env["MODE"] == "x"
    with pytest.raises(SpecError) as err:
        check_pipeline(p, "p.yaml", env={"NATSFLOW_SECRET_LLM_KEY": "sk-1"})
    assert [line.split(": secretRef")[0] for line in str(err.value).splitlines()] == [
        "p.yaml: spec.vertices[0].source.kafka.sasl.password", "p.yaml: spec.vertices[2].sink.http.headers.Authorization"]


def cli(*args: str, env: dict[str, str], timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NATSFLOW_SECRET_")}
    started = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "framework.cli", *args], cwd=REPO, capture_output=True, text=True,
                         timeout=timeout, env={**clean, "PYTHONPATH": str(REPO), **env})
    return res, time.monotonic() - started


def test_a_vertex_without_its_secret_stops_at_once_naming_field_and_variable(tmp_path):
    """Before connecting anywhere: the NATS URL points at a port where nothing listens."""
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(DOC, sort_keys=False))
    res, took = cli("vertex", "--pipeline", str(path), "--vertex", "hook", env={"NATS_URL": "nats://127.0.0.1:1"})
    assert res.returncode == 1, res.stderr
    assert res.stderr.strip() == (f"{path}: spec.vertices[2].sink.http.headers.Authorization: secretRef hook/auth: "
                                  "environment variable NATSFLOW_SECRET_HOOK_AUTH is not set (rendered pods get it "
                                  "from the Secret; for natsflow run, export it)")
    assert took < 20


def test_natsflow_run_checks_every_secret_before_starting(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(DOC, sort_keys=False))
    res, _ = cli("run", str(path), "--data-dir", str(tmp_path / "data"), env={"NATSFLOW_SECRET_HOOK_AUTH": "x"})
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert [line.split(": secretRef ")[0] for line in lines] == [
        f"{path}: spec.vertices[0].source.kafka.sasl.password", f"{path}: spec.vertices[1].udf.env.API_KEY"]
    assert "NATSFLOW_SECRET_LLM_KEY is not set" in lines[1]
    assert not (tmp_path / "data").exists()  # no server was started
