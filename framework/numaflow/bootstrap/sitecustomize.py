"""Points an unmodified pynumaflow program at natsflow's private socket folder.

pynumaflow fixes its socket and server-info paths under /var/run/numaflow (and side inputs under
/var/numaflow/side-inputs) in `pynumaflow._constants`, and its server classes copy them into
default arguments when they are imported. natsflow puts this folder first on the program's
PYTHONPATH, so Python runs this module at start-up, before the UDF's own imports: the constants
are rewritten to NATSFLOW_NUMAFLOW_DIR (and NATSFLOW_NUMAFLOW_SIDE_INPUT_DIR) while nothing has
copied them yet. Without those variables, or without pynumaflow, it does nothing. Any other
`sitecustomize` further down the path still runs afterwards.
"""

from __future__ import annotations

import importlib
import os
import sys

_NUMAFLOW_RUN = "/var/run/numaflow"
_NUMAFLOW_SIDE_INPUTS = "/var/numaflow/side-inputs"
_NUMAFLOW_RUNTIME = "/var/numaflow/runtime"


def _moved(value: str, folder: str, side_inputs: str) -> str:
    if value.startswith(_NUMAFLOW_RUN):
        return folder + value[len(_NUMAFLOW_RUN):]
    if value.startswith(_NUMAFLOW_SIDE_INPUTS):
        return side_inputs + value[len(_NUMAFLOW_SIDE_INPUTS):]
    if value.startswith(_NUMAFLOW_RUNTIME):  # where the SDK reports a crash (application-errors)
        return os.path.join(folder, "runtime") + value[len(_NUMAFLOW_RUNTIME):]
    return value


def _redirect() -> None:
    folder = os.environ.get("NATSFLOW_NUMAFLOW_DIR")
    if not folder:
        return
    side_inputs = os.environ.get("NATSFLOW_NUMAFLOW_SIDE_INPUT_DIR") or os.path.join(folder, "side-inputs")
    try:
        constants = importlib.import_module("pynumaflow._constants")
    except ImportError:  # not a pynumaflow program (or not this interpreter's)
        return
    for name, value in list(vars(constants).items()):
        if name.isupper() and isinstance(value, str):
            setattr(constants, name, _moved(value, folder, side_inputs))


def _chain() -> None:
    """Run the sitecustomize this one shadows, if there is one."""
    here = os.path.dirname(os.path.abspath(__file__))
    me = sys.modules.pop("sitecustomize", None)
    kept = list(sys.path)
    sys.path[:] = [p for p in kept if os.path.abspath(p or ".") != here]
    try:
        importlib.import_module("sitecustomize")
    except ImportError:
        pass
    finally:
        sys.path[:] = kept
        if me is not None:  # the import system looks this module up once it has run
            sys.modules["sitecustomize"] = me


_redirect()
_chain()
