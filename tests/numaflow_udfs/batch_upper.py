"""A pynumaflow batch map: upper-case every value of the batch, keys kept."""

from collections.abc import AsyncIterable

from pynumaflow.batchmapper import BatchMapAsyncServer, BatchMapper, BatchResponse, BatchResponses, Datum, Message


class Upper(BatchMapper):
    async def handler(self, datums: AsyncIterable[Datum]) -> BatchResponses:
        responses = BatchResponses()
        async for datum in datums:
            if datum.value == b"boom":
                raise RuntimeError("batch cannot take 'boom'")
            response = BatchResponse.from_id(datum.id)
            response.append(Message(datum.value.upper(), keys=datum.keys))
            responses.append(response)
        return responses


if __name__ == "__main__":
    BatchMapAsyncServer(Upper()).start()
