"""A pynumaflow SideInput retriever whose second call raises once (it leaves $MARKER behind so a
restarted program does not raise again): odd calls broadcast `value-<n>`, even ones no_broadcast."""

import os
from pathlib import Path

from pynumaflow.sideinput import Response, SideInput, SideInputServer


class FlakyCounter(SideInput):
    def __init__(self) -> None:
        self.calls = 0

    def retrieve_handler(self) -> Response:
        self.calls += 1
        marker = Path(os.environ["MARKER"])
        if self.calls == 2 and not marker.exists():
            marker.write_text("raised")
            raise RuntimeError("thresholds service unreachable")
        if self.calls % 2 == 0:
            return Response.no_broadcast_message()
        return Response.broadcast_message(f"value-{self.calls}".encode())


if __name__ == "__main__":
    SideInputServer(FlakyCounter()).start()
