"""`natsflow ui`: the server as its own process against a running pipeline, the page in a real
headless Chromium (Debian's, driven by Playwright), plus the layout and the data behind it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from playwright.async_api import async_playwright

from framework.console.ui.layout import layout
from framework.console.ui.server import redact, vertex_detail
from framework.local.embedded import EmbeddedNats, free_port, running_server
from framework.spec import Pipeline
from tests.conftest import REPO, wait_for

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(os.environ.get("NATSFLOW_TEST_ARTIFACTS", REPO / "tests" / "artifacts"))
TOTAL, FAILING = 700, 100  # seq 0..699; fail_multiples_of_7 dead-letters every 7th


def pipeline(doc_vertices: list[dict], edges: list[dict]) -> Pipeline:
    return Pipeline.model_validate({"apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": {"name": "g"},
                                    "spec": {"vertices": doc_vertices, "edges": edges}})


def src(name: str) -> dict:
    return {"name": name, "source": {"generator": {"total": 1}}}


def udf(name: str) -> dict:
    return {"name": name, "udf": {"map": {"handler": "tests.udfs:identity"}}}


def sink(name: str) -> dict:
    return {"name": name, "sink": {"log": {}}}


def test_layout_layers_fan_in_and_cycles():
    p = pipeline([src("a"), src("b"), udf("m"), udf("n"), sink("s")],
                 [{"from": "a", "to": "m"}, {"from": "b", "to": "n"}, {"from": "n", "to": "m"},
                  {"from": "m", "to": "s"}, {"from": "m", "to": "n", "conditions": {"tags": {"values": ["again"]}}}])
    lay = layout(p)
    layers = {n.name: n.layer for n in lay.nodes}
    # A DFS from the sources meets the cycle m -> n -> m at n -> m: that edge is drawn as a loop
    # back; the rest are layered by longest path (a -> m -> n, a -> m -> s).
    assert layers == {"a": 0, "b": 0, "m": 1, "n": 2, "s": 2}
    back = {(e.from_, e.to): e.back for e in lay.edges}
    assert back == {("a", "m"): False, ("b", "n"): False, ("n", "m"): True, ("m", "s"): False, ("m", "n"): False}
    assert all(layers[e.to] > layers[e.from_] for e in lay.edges if not e.back)
    assert [e.tags for e in lay.edges if e.tags] == ["or(again)"]
    boxes = [(n.x, n.y, n.x + n.w, n.y + n.h) for n in lay.nodes]
    for i, a in enumerate(boxes):  # no two boxes overlap, all inside the drawing
        assert 0 <= a[0] and a[2] <= lay.width and 0 <= a[1] and a[3] <= lay.height
        for bx in boxes[i + 1:]:
            assert a[2] <= bx[0] or bx[2] <= a[0] or a[3] <= bx[1] or bx[3] <= a[1], (a, bx)


def test_redact_hides_credentials_by_field_name():
    spec = {"source": {"http": {"port": 1, "auth": {"token": "s3cret"}}}, "sink": {"kafka": {"password": "pw", "user": "u"}},
            "list": [{"apiToken": "x"}], "creds": None}
    assert redact(spec) == {"source": {"http": {"port": 1, "auth": {"token": "***"}}},
                            "sink": {"kafka": {"password": "***", "user": "u"}}, "list": [{"apiToken": "***"}], "creds": None}


def test_redact_hides_credentials_in_environment_variables():
    env = {"API_KEY": "k1", "OPENAI_API_KEY": "k2", "GCP_CREDENTIALS": "{}", "TLS_PRIVATE_KEY": "pem",
           "DB_PASSWD": "pw", "KEY_PASSPHRASE": "pp", "MODEL": "small", "LOG_LEVEL": "info"}
    assert redact({"udf": {"command": ["./v"], "env": env}})["udf"]["env"] == {
        **{k: "***" for k in env}, "MODEL": "small", "LOG_LEVEL": "info"}


def test_redact_hides_passwords_inside_urls_dsns_and_auth_headers():
    spec = {"sink": {"postgres": {"dsn": "postgresql://bob:s3cr3t@db:5432/x"}},
            "redis": {"url": "redis://:pw@h:6379/0", "plain": "redis://h:6379"},
            "http": {"url": "http://h/x", "headers": {"Authorization": "Bearer t", "X-Api-Key": "k", "Accept": "a"}},
            "dsn": "host=h password=abc user=u"}
    assert redact(spec) == {"sink": {"postgres": {"dsn": "postgresql://bob:***@db:5432/x"}},
                            "redis": {"url": "redis://:***@h:6379/0", "plain": "redis://h:6379"},
                            "http": {"url": "http://h/x", "headers": {"Authorization": "***", "X-Api-Key": "***",
                                                                      "Accept": "a"}},
                            "dsn": "host=h password=*** user=u"}


def test_vertex_detail_masks_the_http_token_and_lists_partition_buffers():
    p = pipeline([{"name": "a", "source": {"http": {"port": 1, "auth": {"token": "s3cret"}}}},
                  {"name": "r", "udf": {"reduce": {"handler": "m:f", "window": {"fixed": {"length": "5s"}}, "partitions": 3}}}],
                 [{"from": "a", "to": "r"}])
    a = vertex_detail(p, "a")
    assert a["spec"]["source"]["http"]["auth"] == {"token": "***"} and "s3cret" not in json.dumps(a)
    assert (a["buffer"], a["out"]) == (None, ["r"])
    assert vertex_detail(p, "r")["buffer"] == "nf_g_r_p0, nf_g_r_p1, nf_g_r_p2"


def test_status_without_url_finds_the_embedded_server(tmp_path: Path):
    """`natsflow run` records its embedded server in the data dir; `status`/`ui` find it there."""
    p_file = tmp_path / "p.yaml"
    p_file.write_text(json.dumps({"apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": {"name": "disc"},
                                  "spec": {"vertices": [src("a"), sink("s")], "edges": [{"from": "a", "to": "s"}]}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATS_")}
    cmd = [sys.executable, "-m", "framework.cli", "status", str(p_file), "--data-dir", str(tmp_path)]
    missing = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0
    assert f"no NATS URL and no running `natsflow run` for pipeline 'disc' in {tmp_path}" in missing.stderr
    server = EmbeddedNats(tmp_path / "nats" / "disc").start()
    try:
        assert running_server(server.store_dir)["url"] == server.url
        subprocess.run([sys.executable, "-m", "framework.cli", "provision", str(p_file), "--nats-url", server.url],
                       env=env, cwd=REPO, check=True, capture_output=True, timeout=60)
        found = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert found.returncode == 0, found.stderr
        lines = found.stdout.splitlines()
        row = [dict(zip(lines[0].split(), line.split())) for line in lines if line.startswith("s ")]
        assert row and (row[0]["kind"], row[0]["pending"], row[0]["ack-pend"]) == ("sink", "0", "0"), found.stdout
    finally:
        server.stop()
    assert running_server(tmp_path / "nats" / "disc") is None


# ---- the page in a browser against a running pipeline -------------------------------------------


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)


@pytest.fixture
def ui_server(runner, nats_server, tmp_path: Path):
    """Starts `natsflow ui` for the runner's pipeline as its own process once `start(...)` is called."""
    procs: list[subprocess.Popen] = []

    def start() -> str:
        port = free_port()
        log = open(tmp_path / "ui.log", "ab")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "framework.cli", "ui", str(runner.file), "--port", str(port), "--interval", "0.5",
             "--nats-url", nats_server.url, "--monitor-url", f"http://127.0.0.1:{nats_server.monitor_port}"],
            cwd=REPO, env=runner.env(), stdout=log, stderr=subprocess.STDOUT))
        return f"http://127.0.0.1:{port}"

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)


def _http_error(url: str) -> tuple[int, object]:
    try:
        urllib.request.urlopen(url, timeout=5)
    except urllib.error.HTTPError as exc:
        body = exc.read()
        return exc.code, json.loads(body) if exc.headers.get("content-type") == "application/json" else body
    raise AssertionError(f"{url} answered 200")


async def _live(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/livez", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


async def test_ui_page_shows_live_pipeline(runner, nc, ui_server, tmp_path: Path):
    js = nc.jetstream()
    src_stream = f"src_{runner.name}"
    await js.add_stream(name=src_stream, subjects=[f"{runner.name}.in"])
    runner.write(
        [{"name": "in", "source": {"jetstream": {"stream": src_stream}}},
         {"name": "score", "udf": {"map": {"handler": "tests.udfs:fail_multiples_of_7"},
                                   "retry": {"attempts": 1, "interval": "10ms"}}},
         # A slow sink with a small buffer: its backlog shows as pending and a busy edge.
         {"name": "out", "sink": {"udsink": {"handler": "tests.udfs:slow_sink"}},
          "limits": {"readBatchSize": 20, "bufferMaxLength": 1000}}],
        [{"from": "in", "to": "score"}, {"from": "score", "to": "out"}])
    await runner.start_all(SLOW_SINK_SECONDS="0.1")
    url = ui_server()
    await wait_for(lambda: _live(url), 30, "natsflow ui to serve /livez", interval=0.1)
    assert _http_error(url + "/api/vertex/nope") == (404, {"error": f"pipeline {runner.name!r} has no vertex 'nope' "
                                                                  "(vertices: in, score, out)"})
    assert _http_error(url + "/static/..%2Fserver.py")[0] == 404  # only the shipped assets

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 760})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(url)
            await page.wait_for_selector("body[data-ready='1']", timeout=15_000)

            # The DAG: one box per vertex, one path per edge.
            nodes = await page.locator("svg#dag g.node").evaluate_all("gs => gs.map(g => g.dataset.vertex)")
            assert sorted(nodes) == ["in", "out", "score"]
            edges = await page.locator("svg#dag path.edge").evaluate_all(
                "ps => ps.map(p => p.dataset.from + '>' + p.dataset.to)")
            assert sorted(edges) == ["in>score", "score>out"]

            async def field(vertex: str, name: str) -> str:
                return await page.locator(f"g.node[data-vertex='{vertex}'] text[data-field='{name}']").text_content()

            # Replicas from the server's client connections: one process per vertex.
            async def one_replica_each() -> bool:
                return [await field(v, "replicas") for v in ("in", "score", "out")] == ["1", "1", "1"]

            await wait_for(one_replica_each, 20, "one replica per vertex on the page")
            # Buffer replication: one replica on the session's single server, which names no leader.
            assert [await field(v, "buffers") for v in ("score", "out")] == ["R1", "R1"]
            assert await field("out", "pending") == "0"
            assert await field("score", "dead_letters") == "0"

            for i in range(TOTAL):
                await js.publish(f"{runner.name}.in", json.dumps({"seq": i}).encode())

            # Numbers change while traffic flows: the sink's backlog and the edge into it.
            seen_pending: set[int] = set()
            seen_usage: set[float] = set()

            async def backlog_visible() -> bool:
                pending = await field("out", "pending")
                if pending not in ("–", "0"):
                    seen_pending.add(int(pending.replace(",", "")))
                usage = await page.locator("path.edge[data-from='score'][data-to='out']").get_attribute("data-usage")
                if usage:
                    seen_usage.add(float(usage))
                return len(seen_pending) >= 2 and max(seen_usage, default=0) > 0

            await wait_for(backlog_visible, 30, "the sink's pending count to move on the page", interval=0.1)
            assert await field("score", "rate") != "–"

            # A click shows the vertex's spec and its dead letters with their error text.
            await wait_for(lambda: _errors_nonzero(page), 30, "a dead letter at score")
            await page.locator("g.node[data-vertex='score']").click()
            await page.wait_for_selector("aside#panel:not([hidden])", timeout=5_000)
            await wait_for(lambda: _panel_has_dead_letter(page), 15, "the panel to list a dead letter")
            spec_text = await page.locator("#panel-spec").text_content()
            assert '"handler": "tests.udfs:fail_multiples_of_7"' in spec_text
            assert '"attempts": 1' in spec_text
            shot_flowing = ARTIFACTS / "ui.png"
            await page.screenshot(path=str(shot_flowing), full_page=True)

            # Everything drained: exact totals on the page and in the API.
            async def settled() -> bool:
                return (await field("score", "dead_letters") == str(FAILING) and await field("out", "pending") == "0"
                        and await field("out", "rate") == "0.0/s")

            await wait_for(settled, 60, "the pipeline to drain on the page", interval=0.2)
            status = {v["name"]: v for v in _get(url + "/api/status")["vertices"]}
            assert (status["score"]["processed"], status["score"]["dead_letters"]) == (TOTAL, FAILING)
            assert (status["out"]["processed"], status["out"]["dead_letters"]) == (TOTAL - FAILING, 0)
            assert status["score"]["replicasFrom"] == "connections"
            assert status["out"]["buffers"] == [{"stream": f"nf_{runner.name}_out", "replicas": 1, "leader": None,
                                                 "not_current": []}]
            assert (status["in"]["rate"], status["score"]["rate"]) == (0.0, 0.0)  # a source: what reaches score

            errs = await page.locator("#panel-dead-letters li .dl-error").all_text_contents()
            assert len(errs) == 5  # the newest five
            for text in errs:
                assert "ValueError: cannot score item" in text, text
                assert int(text.split("cannot score item ")[1].split()[0]) % 7 == 0
            assert await page.locator("#panel-dlq-total").text_content() == f"{FAILING} in nf_{runner.name}_score_dlq"
            await page.screenshot(path=str(ARTIFACTS / "ui-drained.png"), full_page=True)

            # The file changes (as under `natsflow up`): the page redraws with the new vertex,
            # shown as not provisioned until its buffer exists.
            vertices, edges_doc = _doc(runner)
            runner.write(vertices + [{"name": "audit", "sink": {"blackhole": {}}}],
                         edges_doc + [{"from": "score", "to": "audit"}])
            await page.wait_for_selector("body[data-revision='1']", timeout=15_000)
            assert await page.locator("svg#dag g.node").count() == 4
            assert await page.locator("svg#dag path.edge").count() == 3
            audit_edge = page.locator("path.edge[data-from='score'][data-to='audit']")
            await wait_for(lambda: _has_class(audit_edge, "unknown"), 10, "the new edge drawn as not provisioned")
            assert await field("audit", "pending") == "–"
            await runner.provision()
            await wait_for(lambda: _has_class(audit_edge, "ok"), 15, "the new edge coloured once provisioned")
            await wait_for(lambda: _text_is(page, "audit", "pending", "0"), 10, "the new vertex's pending")
            assert errors == []
            print(f"screenshots: {shot_flowing} {ARTIFACTS / 'ui-drained.png'}")
        finally:
            await browser.close()


async def _errors_nonzero(page) -> bool:
    text = await page.locator("g.node[data-vertex='score'] text[data-field='dead_letters']").text_content()
    return text not in ("–", "0")


async def _panel_has_dead_letter(page) -> bool:
    texts = await page.locator("#panel-dead-letters li .dl-error").all_text_contents()
    return any("cannot score item" in t for t in texts)


def _doc(runner) -> tuple[list[dict], list[dict]]:
    import yaml

    spec = yaml.safe_load(runner.file.read_text())["spec"]
    return spec["vertices"], spec["edges"]


async def _has_class(locator, name: str) -> bool:
    return name in ((await locator.get_attribute("class")) or "").split()


async def _text_is(page, vertex: str, field: str, value: str) -> bool:
    return await page.locator(f"g.node[data-vertex='{vertex}'] text[data-field='{field}']").text_content() == value


async def test_ui_shows_what_a_reduce_holds_in_open_windows(runner, nc, ui_server):
    """A reduce's box shows the inputs it holds in open windows; its panel how many windows and
    which replica reads which partitions."""
    from tests.framework.test_reduce import consumed, publish, reduce_pipeline, source_stream

    js = await source_stream(nc, runner)
    reduce_pipeline(runner, {"fixed": {"length": "10s"}}, partitions=2)
    await runner.start_all(NATSFLOW_REPLICA_ID="r1")
    await publish(js, f"{runner.name}.src", [(k, t, t) for t in range(10) for k in ("a", "b", "c", "d")])
    await consumed(nc, runner)
    url = ui_server()
    await wait_for(lambda: _live(url), 30, "natsflow ui to serve /livez", interval=0.1)

    def api_agg() -> dict | None:
        agg = {v["name"]: v for v in _get(url + "/api/status")["vertices"]}["agg"]
        return agg if agg["held"] == 40 else None

    agg = await wait_for(api_agg, 30, "/api/status to report 40 held inputs")
    assert agg["open_windows"] == 4 and agg["partition_owners"] == {"r1": [0, 1]}
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 760})
            await page.goto(url)
            await page.wait_for_selector("body[data-ready='1']", timeout=15_000)
            held = page.locator("g.node[data-vertex='agg'] text[data-field='held']")
            await wait_for(lambda: _locator_text_is(held, "40"), 15, "the reduce box to show 40 held")
            assert await page.locator("g.node[data-vertex='out'] text[data-field='held']").count() == 0
            await page.locator("g.node[data-vertex='agg']").click()
            await page.wait_for_selector("aside#panel:not([hidden])", timeout=5_000)
            live = await page.locator("#panel-live").inner_text()
            assert "40 in 4 windows" in live and "r1: 0,1" in live, live
        finally:
            await browser.close()


async def _locator_text_is(locator, value: str) -> bool:
    return await locator.text_content() == value
