"""A pynumaflow source transformer: the value "<n>" gets event time n seconds after 2025-01-01
UTC and key "t"; "skip" is dropped, "boom" raises."""

from datetime import UTC, datetime, timedelta

from pynumaflow.sourcetransformer import Datum, Message, Messages, SourceTransformer, SourceTransformServer

BASE = datetime(2025, 1, 1, tzinfo=UTC)


class StampEventTime(SourceTransformer):
    def handler(self, keys: list[str], datum: Datum) -> Messages:
        text = datum.value.decode()
        if text == "skip":
            return Messages(Message.to_drop(datum.event_time))
        if text == "boom":
            raise ValueError("no event time in 'boom'")
        return Messages(Message(datum.value, BASE + timedelta(seconds=int(text)), keys=["t"], tags=["stamped"]))


if __name__ == "__main__":
    SourceTransformServer(StampEventTime()).start()
