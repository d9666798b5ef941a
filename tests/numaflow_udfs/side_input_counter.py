"""A side-input retriever written with pynumaflow's SideInput, as its documentation shows: every
call counts; odd calls broadcast `value-<n>`, even ones say no_broadcast."""

from pynumaflow.sideinput import Response, SideInput, SideInputServer


class EveryOtherCall(SideInput):
    def __init__(self) -> None:
        self.calls = 0

    def retrieve_handler(self) -> Response:
        self.calls += 1
        if self.calls % 2 == 0:
            return Response.no_broadcast_message()
        return Response.broadcast_message(f"value-{self.calls}".encode())


if __name__ == "__main__":
    SideInputServer(EveryOtherCall()).start()
