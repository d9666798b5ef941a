"""What `natsflow render` writes and tells: the files (YAML, a kustomization), the check that
secrets map to distinct variables, and the report on credentials for the person running it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from framework.k8s.keda import RenderError
from framework.k8s.objects import RenderOptions, env_secret
from framework.spec import Pipeline, SecretRef
from framework.spec.secrets import env_name, refs_in, vertex_path


def all_secret_refs(p: Pipeline) -> list[tuple[str, SecretRef]]:
    return list(refs_in(p.spec.vertices, "spec.vertices"))


def check_env_names(p: Pipeline) -> None:
    """Two different secrets must not share one NATSFLOW_SECRET_* variable."""
    first: dict[str, tuple[str, SecretRef]] = {}
    problems = []
    for path, ref in all_secret_refs(p):
        seen = first.setdefault(env_name(ref), (path, ref))
        if seen[1] != ref:
            problems.append((path, f"secretRef {ref.name}/{ref.key} and {seen[1].name}/{seen[1].key} ({seen[0]}) "
                                   f"both become {env_name(ref)}; rename a key or a Secret"))
    if problems:
        raise RenderError(problems)


# ---- what `natsflow render` tells the person running it -----------------------------------------

_CREDENTIAL_NAME = re.compile(r"auth|token|secret|passw|cookie|credential|api[-_]?key|private[-_]?key", re.I)
_DSN_PASSWORD = re.compile(r"(^|\s)password\s*=", re.I)


def _literal(text: str) -> bool:
    return "${" not in text


def _holds_password(text: str) -> bool:
    """A URL or DSN with a password written into it (`scheme://user:pw@host`, `password=pw`)."""
    try:
        password = urlsplit(text).password
    except ValueError:
        password = None
    return bool(password and _literal(password)) or bool(_DSN_PASSWORD.search(text))


def inline_credentials(p: Pipeline) -> list[str]:
    """Field paths of credentials written into the file itself (so into the ConfigMap): tokens and
    passwords, URLs and DSNs with a password, credential-like HTTP headers and udf.env values."""
    found = []

    def walk(value: Any, path: str, key: str, parent: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{path}.{k}", str(k), key)
        elif isinstance(value, str) and _literal(value) and (
                key in ("token", "password")
                or (key in ("url", "dsn") and _holds_password(value))
                or (parent in ("headers", "env") and _CREDENTIAL_NAME.search(key))):
            found.append(path)

    for v in p.spec.vertices:
        walk(v.model_dump(mode="json", by_alias=True, exclude_none=True), vertex_path(p, v), "", "")
    return found


def report(p: Pipeline, file: str, opts: RenderOptions) -> list[str]:
    """Lines for stderr: warnings for inline credentials, then what the pods read from Secrets."""
    lines = [f"warning: {file}: {path}: a credential written into the file ends up in the ConfigMap; "
             "use {secretRef: {name, key}} or ${VAR}" for path in inline_credentials(p)]
    refs = sorted({(env_name(ref), ref.name, ref.key, path) for path, ref in all_secret_refs(p)})
    if refs:
        lines.append("secrets the pods read (valueFrom.secretKeyRef; natsflow run reads the same variables):")
        lines += [f"  {name}/{key} -> {env}  ({path})" for env, name, key, path in refs]
    if p.env_refs:
        lines.append(f"environment variables the pods substitute into the file (Secret {env_secret(p, opts)}, "
                     "envFrom, optional; render used the defaults):")
        lines += [f"  {r.name}  ({r.path}{'' if r.default is None else f', default {r.default!r}'})"
                  for r in p.env_refs]
    if p.spec.lifecycle.desired_phase == "Paused":
        lines.append("spec.lifecycle.desiredPhase is Paused: every vertex at 0 replicas (KEDA: paused-replicas \"0\"); "
                     "re-render with Running to resume")
    return lines


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the pipeline file in the ConfigMap) as readable `|` blocks."""


_Dumper.add_representer(
    str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None))


def write_rendered(files: dict[str, list[dict[str, Any]]], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, objs in files.items():
        path = out_dir / name
        # a JSON round trip unshares nested dicts, so the YAML has no &anchors
        path.write_text(yaml.dump_all(json.loads(json.dumps(objs)), Dumper=_Dumper, sort_keys=False))
        written.append(path)
    kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                     "resources": sorted(files)}
    (out_dir / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    written.append(out_dir / "kustomization.yaml")
    return written
