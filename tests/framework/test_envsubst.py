"""`${VAR}` references in pipeline files: replaced after YAML parsing in string values only, with
defaults and `$${` escapes; an unset one is an error naming the file, the field and the variable;
`render` keeps unset ones and tolerates them where any string fits."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from framework.spec import SpecError, load_pipeline, parse_pipeline
from framework.spec.envsubst import EnvRef, substitute

REPO = Path(__file__).resolve().parents[2]

DOC = {
    "apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": {"name": "env"},
    "spec": {
        "vertices": [
            {"name": "in", "source": {"http": {"port": "${HTTP_PORT:-8080}", "auth": {"token": "${TOKEN}"}}}},
            {"name": "map", "udf": {"map": {"handler": "x:y"}, "env": {"MODEL": "models/${MODEL:-small}.bin"}}},
            {"name": "db", "sink": {"postgres": {"dsn": "${PG_DSN}", "table": "events"}}},
        ],
        "edges": [{"from": "in", "to": "map"}, {"from": "map", "to": "db"}],
    },
}


def test_values_defaults_and_escapes():
    doc = {"a": "${A}", "b": ["x-${A}-${B:-dflt}-y", 3, True, None], "c": {"${A}": "$${A} and $$ and $A"},
           "d": "${EMPTY:-fallback}", "e": "${EMPTY}"}
    out = substitute(doc, {"A": "alpha", "EMPTY": ""})
    assert out.doc == {"a": "alpha", "b": ["x-alpha-dflt-y", 3, True, None],
                       "c": {"${A}": "${A} and $$ and $A"},  # keys untouched; $${ is a literal ${
                       "d": "fallback", "e": ""}
    assert out.refs == [EnvRef("a", "A", None), EnvRef("b[0]", "A", None), EnvRef("b[0]", "B", "dflt"),
                        EnvRef("d", "EMPTY", "fallback"), EnvRef("e", "EMPTY", None)]
    assert out.unset == [] and out.problems == []
    assert doc["a"] == "${A}"  # the parsed document itself is not changed


def test_substituted_after_parsing_so_a_value_cannot_change_the_structure():
    env = {"TOKEN": "t", "PG_DSN": "x\n  table: other\nmode: upsert"}
    p = parse_pipeline(copy.deepcopy(DOC), file="p.yaml", check_handlers=False, env=env)
    sink = p.vertex("db").sink.postgres
    assert sink.dsn == env["PG_DSN"] and sink.table == "events" and sink.mode.value == "insert"
    assert p.vertex("in").source.http.port == 8080  # a number field from a default, read as a number
    assert p.vertex("map").udf.env == {"MODEL": "models/small.bin"}
    assert [r.path for r in p.env_refs] == ["spec.vertices[0].source.http.port", "spec.vertices[0].source.http.auth.token",
                                            "spec.vertices[1].udf.env.MODEL", "spec.vertices[2].sink.postgres.dsn"]


def test_unset_variables_are_errors_naming_file_field_and_variable(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(DOC, sort_keys=False))
    with pytest.raises(SpecError) as err:
        load_pipeline(path, check_handlers=False, env={"HTTP_PORT": "9000"})
    assert str(err.value).splitlines() == [
        f"{path}: spec.vertices[0].source.http.auth.token: environment variable TOKEN is not set",
        f"{path}: spec.vertices[2].sink.postgres.dsn: environment variable PG_DSN is not set"]


def test_the_cli_reports_an_unset_variable_and_exits_1(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(DOC, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k not in ("TOKEN", "PG_DSN")}
    res = subprocess.run([sys.executable, "-m", "framework.cli", "validate", str(path)], cwd=REPO,
                         capture_output=True, text=True, timeout=60, env={**env, "TOKEN": "t", "PYTHONPATH": str(REPO)})
    assert res.returncode == 1
    assert res.stderr.strip() == f"{path}: spec.vertices[2].sink.postgres.dsn: environment variable PG_DSN is not set"


def test_a_malformed_reference_is_an_error():
    doc = copy.deepcopy(DOC)
    doc["spec"]["vertices"][2]["sink"]["postgres"]["table"] = "${bad name}"
    with pytest.raises(SpecError) as err:
        parse_pipeline(doc, file="p.yaml", check_handlers=False, env={"TOKEN": "t", "PG_DSN": "d"})
    assert str(err.value).startswith("p.yaml: spec.vertices[2].sink.postgres.table: bad reference '${bad name}'")
    assert "$${ for a literal ${" in str(err.value)


def test_render_mode_keeps_unset_references_where_any_string_fits():
    p = parse_pipeline(copy.deepcopy(DOC), file="p.yaml", check_handlers=False, env={}, allow_unset=True)
    assert p.vertex("db").sink.postgres.dsn == "${PG_DSN}"
    assert p.vertex("in").source.http.auth.token == "${TOKEN}"
    assert p.vertex("in").source.http.port == 8080
    # a number field needs a value to be checked: the error says which variable and how to give one
    doc = copy.deepcopy(DOC)
    doc["spec"]["vertices"][0]["source"]["http"]["port"] = "${HTTP_PORT}"
    with pytest.raises(SpecError) as err:
        parse_pipeline(doc, file="p.yaml", check_handlers=False, env={}, allow_unset=True)
    assert str(err.value) == (
        "p.yaml: spec.vertices[0].source.http.port: expected a whole number, got the text '${HTTP_PORT}' "
        "(it holds ${HTTP_PORT}, which is not set here: set it, or give the value to check with a default, "
        "${HTTP_PORT:-...})")
