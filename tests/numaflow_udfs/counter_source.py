"""A user-defined source written with pynumaflow's Sourcer, as its documentation shows (a counter
that keeps its unacked offsets in memory), stopping after $TOTAL records. The payload is the
record's number; the offset is the number too, so a re-read gives the same offset."""

import os
from datetime import datetime

from pynumaflow.shared.asynciter import NonBlockingIterator
from pynumaflow.sourcer import (
    AckRequest,
    Message,
    NackRequest,
    Offset,
    PartitionsResponse,
    PendingResponse,
    ReadRequest,
    SourceAsyncServer,
    Sourcer,
    get_default_partitions,
)

TOTAL = int(os.environ.get("TOTAL", "1000"))


class CounterSource(Sourcer):
    def __init__(self) -> None:
        self.read_idx = 0
        self.to_ack_set: set[int] = set()
        self.nacked: set[int] = set()

    async def read_handler(self, datum: ReadRequest, output: NonBlockingIterator) -> None:
        if self.to_ack_set:  # the previous batch is not acked yet
            return
        for _ in range(datum.num_records):
            if self.nacked:
                idx = self.nacked.pop()
            elif self.read_idx < TOTAL:
                idx = self.read_idx
                self.read_idx += 1
            else:
                return
            await output.put(Message(payload=str(idx).encode(),
                                     offset=Offset.offset_with_default_partition_id(str(idx).encode()),
                                     event_time=datetime.now(), keys=[f"k{idx % 3}"]))
            self.to_ack_set.add(idx)

    async def ack_handler(self, ack_request: AckRequest) -> None:
        for offset in ack_request.offsets:
            self.to_ack_set.remove(int(offset.offset))

    async def nack_handler(self, ack_request: NackRequest) -> None:
        for offset in ack_request.offsets:
            idx = int(offset.offset)
            self.to_ack_set.remove(idx)
            self.nacked.add(idx)

    async def pending_handler(self) -> PendingResponse:
        return PendingResponse(count=TOTAL - self.read_idx)

    async def active_partitions_handler(self) -> PartitionsResponse:
        return PartitionsResponse(partitions=get_default_partitions())


if __name__ == "__main__":
    SourceAsyncServer(CounterSource()).start()
