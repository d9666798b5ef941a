"""A vertex's side-input values as files, for the programs written with a Numaflow SDK that it
runs: Numaflow mounts them at /var/numaflow/side-inputs/<name>, natsflow points the SDK at each
program's own folder (framework/numaflow/program.py registers it here) and keeps one file per side
input there, rewritten on every new value the vertex's watch sees (manager.SideInputWatcher)."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

log = logging.getLogger("natsflow.sideinputs")

_latest: dict[str, bytes] = {}
_folders: list[Path] = []


def mirror_side_inputs(folder: Path) -> None:
    """From now on keep `folder` holding the newest value of each side input, one file each."""
    _folders.append(folder)
    for name, value in list(_latest.items()):
        _write(folder, name, value)


def forget_mirror(folder: Path) -> None:
    with contextlib.suppress(ValueError):
        _folders.remove(folder)


def publish(name: str, value: bytes) -> None:
    """A new value of side input `name`: into every registered folder."""
    _latest[name] = value
    for folder in list(_folders):
        _write(folder, name, value)


def _write(folder: Path, name: str, value: bytes) -> None:
    # Written aside, then renamed: a reader never sees half a value.
    try:
        aside = folder / f".{name}.new"
        aside.write_bytes(value)
        os.replace(aside, folder / name)
    except OSError as exc:  # the program's folder is gone (it stopped): nothing reads it any more
        log.warning("side input %s: cannot write it to %s (%s)", name, folder, exc)
