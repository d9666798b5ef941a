"""`natsflow` command line: one verb, one `cmd_<verb>` function. Every command that reads a
pipeline takes its file the same way: a positional FILE (`--pipeline FILE` is a hidden alias)."""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import sys
import time
from pathlib import Path

import yaml

from framework.connector import server_problems
from framework.console import lifecycle, replay
from framework.importers import command as import_command
from framework.isb.provision import provision
from framework.isb.reconcile import ProvisionError
from framework.isb.retained import ReplayError
from framework.spec import SpecError, load_pipeline
from framework.transport.settings import (
    DEFAULT_CONNECT_TIMEOUT_S,
    EXIT_CONNECTION_LOST,
    EXIT_NO_CONNECTION,
    ConnectError,
    ConnectStopped,
    NatsSettings,
    exit_when_lost,
)

log = logging.getLogger("natsflow.cli")


def _nats_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("NATS connection (defaults: NATS_URL, NATS_TOKEN, ... env vars)")
    g.add_argument("--nats-url", help="server URL(s), comma-separated; default $NATS_URL")
    g.add_argument("--nats-token")
    g.add_argument("--nats-user")
    g.add_argument("--nats-password")
    g.add_argument("--nats-creds", help="path of a .creds file")
    g.add_argument("--tls-ca")
    g.add_argument("--tls-cert")
    g.add_argument("--tls-key")
    g.add_argument("--connect-timeout", type=_positive_seconds, metavar="SECONDS",
                   help=f"give up on the first connection after this long (default $NATSFLOW_CONNECT_TIMEOUT, "
                        f"else {DEFAULT_CONNECT_TIMEOUT_S:g}); once running, reconnects never give up")


def _running_flags(parser: argparse.ArgumentParser) -> None:
    """Flags of the commands that look at a running pipeline (status, ui)."""
    parser.add_argument("--monitor-url", help="nats-server monitoring URL(s), comma-separated for a cluster (e.g. "
                        "http://127.0.0.1:8222): replicas counted from client connections (default: the embedded "
                        "server's; else watermark heartbeats)")
    parser.add_argument("--data-dir", help="where `natsflow run` keeps the embedded server (default ./.natsflow)")
    _nats_flags(parser)


def _settings(args: argparse.Namespace) -> NatsSettings:
    return NatsSettings.from_env(
        url=args.nats_url, token=args.nats_token, user=args.nats_user, password=args.nats_password,
        creds=args.nats_creds, tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key,
        connect_timeout=args.connect_timeout,
    )


def cmd_validate(args: argparse.Namespace) -> int:
    p = load_pipeline(args.file)
    kinds = ", ".join(f"{v.name} ({v.kind})" for v in p.spec.vertices)
    print(f"{args.file}: pipeline {p.name!r} is valid: {kinds}; {len(p.spec.edges)} edges")
    return 0


async def cmd_provision(args: argparse.Namespace) -> int:
    p = load_pipeline(args.file, check_handlers=False)
    settings = _settings(args)
    nc = await settings.connect(f"natsflow-{p.name}-provision")
    print(f"provisioning pipeline {p.name} on {settings.shown_url}...", file=sys.stderr, flush=True)
    started = time.monotonic()
    try:
        problems = server_problems(p, nc.max_payload)
        if problems:
            raise SpecError(args.file, problems)
        # One line per stream/consumer/bucket as it is done: a slow server shows where it is.
        done = await provision(nc.jetstream(), p, progress=lambda what, result: print(f"{what}: {result}", flush=True))
    finally:
        await nc.close()
    counts = collections.Counter(result.split(" ", 1)[0] for _, result in done)  # "updated (replicas 1 -> 3)"
    summary = ", ".join(f"{counts[r]} {r}" for r in ("created", "updated", "unchanged") if counts[r])
    print(f"provisioned {len(done)} objects in {time.monotonic() - started:.2f}s ({summary})", file=sys.stderr)
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from framework.k8s.render import RenderError, RenderOptions, render_pipeline, report, write_rendered

    # Nothing from this machine's environment: the pods substitute the file's ${VAR}s from their
    # own, so the manifests never depend on (or leak) what is set here; defaults are used.
    p = load_pipeline(args.file, check_handlers=False, env={}, allow_unset=True)
    opts = RenderOptions(image=args.image, namespace=args.namespace, nats_secret=args.nats_secret,
                         monitoring_endpoint=args.monitoring_endpoint, account=args.account,
                         monitoring_secret=args.monitoring_secret, env_secret=args.env_secret,
                         create_namespace=args.create_namespace, service_monitor=args.service_monitor,
                         scrape_annotations=not args.no_scrape_annotations)
    try:
        files = render_pipeline(p, Path(args.file).read_text(), opts)
    except RenderError as exc:
        raise SpecError(args.file, exc.problems) from None
    for line in report(p, args.file, opts):
        print(line, file=sys.stderr)
    for path in write_rendered(files, Path(args.output)):
        print(path)
    return 0


def cmd_asyncapi(args: argparse.Namespace) -> int:
    from framework.k8s.asyncapi import build_asyncapi

    p = load_pipeline(args.file, check_handlers=False, allow_unset=True)
    doc = build_asyncapi(p, servers=args.servers)
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True) if args.yaml else json.dumps(doc, indent=2)
    if args.output:
        from pathlib import Path

        Path(args.output).write_text(text)
        print(args.output)
    else:
        print(text)
    return 0


def _running_pipeline(args: argparse.Namespace, p) -> tuple[NatsSettings, str | None]:
    """Settings for a command that looks at a running pipeline: without a NATS URL, the embedded
    server `natsflow run/up` started for this pipeline (found in its data dir); also its
    monitoring URL when known."""
    from framework.local.embedded import running_server

    settings = _settings(args)
    if settings.url:
        return settings, None
    data_dir = Path(args.data_dir or Path.cwd() / ".natsflow")
    info = running_server(data_dir / "nats" / p.name)
    if info is None:
        raise SystemExit(f"no NATS URL and no running `natsflow run` for pipeline {p.name!r} in {data_dir}: "
                         "pass --nats-url or set NATS_URL")
    return settings.with_url(info["url"]), info.get("monitor")


async def cmd_status(args: argparse.Namespace) -> int:
    from framework.console.status import show

    p = load_pipeline(args.file, check_handlers=False, allow_unset=True)
    settings, monitor = _running_pipeline(args, p)
    nc = await settings.connect(f"natsflow-{p.name}-status")
    try:
        await show(nc.jetstream(), p, watch=args.watch, monitor_url=args.monitor_url or monitor)
    finally:
        await nc.close()
    return 0


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text}")
    return value


async def cmd_ui(args: argparse.Namespace) -> int:
    from framework.console.ui.server import UiOptions, serve

    p = load_pipeline(args.file, check_handlers=False, allow_unset=True)
    settings, monitor = _running_pipeline(args, p)
    options = UiOptions(interval=args.interval, monitor_url=args.monitor_url or monitor)
    await serve(p, settings, host=args.host, port=args.port, options=options, file=args.file)
    return 0


async def _supervise(args: argparse.Namespace, autoscale: bool) -> int:
    from framework.local.supervisor import Supervisor

    sup = Supervisor(args.file, _settings(args), data_dir=args.data_dir, grace=args.grace, autoscale=autoscale)
    lost = await sup.run_until_signalled()
    return EXIT_CONNECTION_LOST if lost else 0


async def cmd_run(args: argparse.Namespace) -> int:
    return await _supervise(args, autoscale=False)


async def cmd_up(args: argparse.Namespace) -> int:
    return await _supervise(args, autoscale=True)


def cmd_conformance(args: argparse.Namespace) -> int:
    from framework.testing.conformance import run_conformance
    from framework.testing.rules import format_table

    command = args.cmd[1:] if args.cmd and args.cmd[0] == "--" else args.cmd
    if bool(command) == bool(args.handler):
        print("natsflow conformance: give either --handler MOD:FN or -- CMD ...", file=sys.stderr)
        return 2
    env = dict(kv.split("=", 1) for kv in args.env)
    results, passed = run_conformance(
        command=command or None, handler=args.handler, tag=args.tag, messages=args.messages,
        grace=args.grace, workdir=Path(args.workdir) if args.workdir else None, env=env,
        progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(format_table(results))
    return 0 if passed else 1


async def cmd_sideinputs(args: argparse.Namespace) -> int:
    from framework.sideinputs.manager import run_manager

    await run_manager(args.file, _settings(args))
    return 0


async def cmd_watermark_proxy(args: argparse.Namespace) -> int:
    from framework.watermark.proxy import run_proxy

    await run_proxy(args.file, args.vertex, _settings(args))
    return 0


async def cmd_vertex(args: argparse.Namespace) -> int:
    from framework.runtime.worker import run_vertex

    await run_vertex(args.file, args.vertex, _settings(args))
    return 0


def _file_arg(parser: argparse.ArgumentParser) -> None:
    """Every command names the pipeline file the same way: a positional FILE. `--pipeline FILE`,
    the older spelling of `vertex` and `watermark-proxy` (rendered Deployments still use it), is
    accepted by every command as a hidden alias."""
    parser.add_argument("file", nargs="?", metavar="FILE", help="pipeline file")
    parser.add_argument("--pipeline", dest="pipeline_alias", metavar="FILE", help=argparse.SUPPRESS)
    parser.set_defaults(file_parser=parser)  # errors about FILE are shown with this command's usage


def _resolve_file(args: argparse.Namespace) -> None:
    """One of FILE / --pipeline FILE is required; both must then agree."""
    parser, alias = args.file_parser, args.pipeline_alias
    if args.file is not None and alias is not None and args.file != alias:
        parser.error(f"two pipeline files given: {args.file} and --pipeline {alias}")
    args.file = args.file if args.file is not None else alias
    if args.file is None:
        parser.error("the following arguments are required: FILE")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="natsflow", description="Stream pipelines on NATS JetStream.")
    parser.add_argument("--log-level", default="INFO")
    parser.set_defaults(file=None, file_parser=None)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check a pipeline file (graph, fields, handler imports)")
    _file_arg(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("provision", help="create/update the pipeline's streams and consumers")
    _file_arg(p)
    _nats_flags(p)
    p.set_defaults(func=cmd_provision)

    for name, func, help_text in (
        ("run", cmd_run, "run every vertex as its own process (embedded NATS without a URL)"),
        ("up", cmd_up, "like run, but replicas follow each vertex's lag (KEDA's rule, locally)"),
    ):
        p = sub.add_parser(name, help=help_text)
        _file_arg(p)
        p.add_argument("--data-dir", help="where the embedded server keeps its data (default ./.natsflow)")
        p.add_argument("--grace", type=float, default=30.0, help="seconds a vertex may take to drain on stop")
        _nats_flags(p)
        p.set_defaults(func=func)

    lifecycle.add_parsers(sub, _file_arg, _running_flags, _running_pipeline)
    replay.add_parser(sub, _file_arg, _running_flags, _running_pipeline)

    p = sub.add_parser("render", help="write Kubernetes Deployments + KEDA ScaledObjects for a pipeline")
    _file_arg(p)
    p.add_argument("--image", required=True, help="container image with natsflow and your handlers")
    p.add_argument("--namespace", default="default")
    p.add_argument("-o", "--output", required=True, help="directory to write the manifests to")
    p.add_argument("--nats-secret", default="natsflow-nats", help="Secret with NATS_URL (and credentials)")
    p.add_argument("--monitoring-endpoint", default="nats-headless.nats.svc.cluster.local:8222",
                   help="NATS monitoring host:port KEDA reads (the headless service when clustered)")
    p.add_argument("--account", default="$G", help="NATS account of the streams ($G without accounts)")
    p.add_argument("--monitoring-secret", help="Secret with keys endpoint/account: render a TriggerAuthentication")
    p.add_argument("--env-secret", help="optional Secret every container reads the file's ${VAR}s from "
                   "(envFrom; default <pipeline>-env)")
    p.add_argument("--create-namespace", action="store_true", help="also render the Namespace (restricted Pod "
                   "Security enforced)")
    p.add_argument("--service-monitor", action="store_true", help="also render a metrics Service and a "
                   "prometheus-operator ServiceMonitor")
    p.add_argument("--no-scrape-annotations", action="store_true", help="leave out the prometheus.io/* pod "
                   "annotations")
    p.set_defaults(func=cmd_render)

    import_command.add_parsers(sub)

    p = sub.add_parser("status", help="per vertex: replicas, rates, pending, ack pending, buffer use, dead "
                                      "letters, watermark")
    _file_arg(p)
    p.add_argument("--watch", type=float, nargs="?", const=2.0, help="refresh every N seconds (default 2)")
    _running_flags(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("ui", help="a live web page of the pipeline: graph, rates, pending, replicas, errors")
    _file_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8321)
    p.add_argument("--interval", type=_positive_seconds, default=1.0, help="seconds between JetStream polls")
    _running_flags(p)
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser("asyncapi", help="an AsyncAPI document of every buffer subject (via FastStream)")
    _file_arg(p)
    p.add_argument("--servers", default="nats://localhost:4222", help="server URL to put in the document")
    p.add_argument("--yaml", action="store_true", help="YAML instead of JSON")
    p.add_argument("-o", "--output", help="write to this file instead of stdout")
    p.set_defaults(func=cmd_asyncapi)

    p = sub.add_parser("conformance", help="check a vertex program against docs/protocol.md",
                       description="Runs CMD as the UDF vertex of a small pipeline on a private nats-server "
                                   "and checks it against every rule of the protocol; exit 1 on any failure.")
    p.add_argument("--handler", help="check the Python worker running this map handler instead of a command")
    p.add_argument("--tag", default="even", help="a tag your function sets on some outputs (routing check)")
    p.add_argument("--messages", type=int, default=3000, help="inputs per scenario (default 3000)")
    p.add_argument("--grace", type=float, default=10.0, help="seconds allowed to exit after SIGTERM")
    p.add_argument("--env", action="append", default=[], metavar="K=V", help="extra environment for CMD")
    p.add_argument("--workdir", help="keep pipeline files and the vertex's logs here")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- the vertex program and its arguments")
    p.set_defaults(func=cmd_conformance)

    p = sub.add_parser("sideinputs", help="run the side-input manager: spec.sideInputs handlers on their "
                       "triggers, values into JetStream KV (run/up start it for you)")
    _file_arg(p)
    _nats_flags(p)
    p.set_defaults(func=cmd_sideinputs)

    p = sub.add_parser("watermark-proxy", help="publish watermarks for a program vertex (another language) from "
                                               "its ack floor and out-buffers; run/up do it for you")
    _file_arg(p)
    p.add_argument("--vertex", required=True, help="the program vertex")
    _nats_flags(p)
    p.set_defaults(func=cmd_watermark_proxy)

    p = sub.add_parser("vertex", help="run exactly one vertex (what each Deployment runs)")
    _file_arg(p)
    p.add_argument("--vertex", required=True, help="vertex name")
    _nats_flags(p)
    p.set_defaults(func=cmd_vertex)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.file_parser is not None:
        _resolve_file(args)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    exit_when_lost()
    try:
        result = args.func(args)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        return int(result or 0)
    except SpecError as exc:
        print(exc, file=sys.stderr)
        return 1
    except ProvisionError as exc:  # a setting the servers refuse: one line naming the field, no traceback
        print(f"{args.file or ''}: {exc}", file=sys.stderr)
        return 1
    except ReplayError as exc:  # not a source, nothing retained, an empty range: one line
        print(f"natsflow replay: {exc}", file=sys.stderr)
        return 1
    except ConnectError as exc:  # one line naming the cause and the (masked) URL, no traceback
        print(f"natsflow: {exc}", file=sys.stderr)
        return EXIT_NO_CONNECTION
    except ConnectStopped as exc:  # SIGTERM/SIGINT before there was anything to drain
        log.info("%s", exc)
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
