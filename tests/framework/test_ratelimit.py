"""`limits.rateLimit` (issue 13, section 3): one limit shared by every replica of a vertex through a
JetStream KV token window, with a ramp from `min`; the local autoscaler holds a vertex at its limit."""

from __future__ import annotations

import time

import pytest

from framework.runtime.ratelimit import at_limit
from framework.spec.settings import RateLimit
from tests.conftest import wait_for
from tests.framework.test_worker import gen, udf


async def _appended(js, stream: str) -> int:
    return (await js.stream_info(stream)).state.last_seq


async def test_three_replicas_share_one_limit_of_300_per_second(runner, nc):
    runner.write([gen("in", 30_000, rpu=1000, duration="100ms"),
                  {**udf("map", "identity"), "limits": {"rateLimit": {"max": 300}}},
                  {"name": "out", "sink": {"blackhole": {}}}],
                 [{"from": "in", "to": "map"}, {"from": "map", "to": "out"}])
    await runner.start_all()
    runner.start("map", replica="2")
    runner.start("map", replica="3")
    js = nc.jetstream()
    out_buffer = f"nf_{runner.name}_out"  # what the map writes
    await wait_for(lambda: _at_least(js, out_buffer, 600), 60, "the map to run")
    await wait_for(lambda: _at_least(js, f"nf_{runner.name}_map", 9000), 60, "a backlog before the map")
    n0, t0 = await _appended(js, out_buffer), time.monotonic()
    assert await at_limit(js, runner.pipeline, "map")  # what keeps `natsflow up` from adding replicas
    await wait_for(lambda: time.monotonic() - t0 >= 20, 25, "20 s")
    n1, t1 = await _appended(js, out_buffer), time.monotonic()
    rate = (n1 - n0) / (t1 - t0)
    print(f"\n3 replicas, rateLimit max 300: {n1 - n0} messages in {t1 - t0:.1f}s = {rate:.1f}/s "
          f"({(rate / 300 - 1) * 100:+.1f}%)")
    assert 270 <= rate <= 330, rate
    for name in ("map", "map#2", "map#3"):
        assert runner.procs[name].poll() is None, runner.log(name)[-2000:]


async def test_the_limit_ramps_up_from_min_after_start(runner, nc):
    runner.write([gen("in", 20_000, rpu=1000, duration="100ms"),
                  {**udf("map", "identity"), "limits": {"rateLimit": {"max": 400, "min": 50, "rampUp": "4s"}}},
                  {"name": "out", "sink": {"blackhole": {}}}],
                 [{"from": "in", "to": "map"}, {"from": "map", "to": "out"}])
    await runner.provision()
    runner.start("in")  # a backlog first: the map then reads as fast as its limit lets it
    js = nc.jetstream()
    await wait_for(lambda: _at_least(js, f"nf_{runner.name}_map", 8000), 60, "a backlog before the map")
    runner.start("map")
    runner.start("out")
    out_buffer = f"nf_{runner.name}_out"
    await wait_for(lambda: _at_least(js, out_buffer, 1), 60, "the map to start")
    t0 = time.monotonic()
    samples = [(0.0, 0)]  # (seconds after start, written): the time each count was read, not the one asked for
    for second in range(1, 11):
        await wait_for(lambda s=second: time.monotonic() - t0 >= s, 5, f"second {second}")
        samples.append((time.monotonic() - t0, await _appended(js, out_buffer)))
    rates = [round((n1 - n0) / (s1 - s0)) for (s0, n0), (s1, n1) in zip(samples, samples[1:])]
    print(f"\nrateLimit {{max: 400, min: 50, rampUp: 4s}}: per second after start {rates}")
    assert samples[2][1] < 0.6 * samples[2][0] * 400  # the first two seconds well under the max
    (s5, n5), (s10, n10) = samples[5], samples[10]
    steady = (n10 - n5) / (s10 - s5)  # after the ramp, over five seconds
    assert 360 <= steady <= 440, (steady, rates)


async def _at_least(js, stream: str, n: int) -> bool:
    try:
        return await _appended(js, stream) >= n
    except Exception:
        return False


def test_the_limit_ramps_from_min_to_max():
    r = RateLimit(max=300, min=30, ramp_up=10.0)
    assert [r.at(t) for t in (0, 5, 10, 60)] == [30, 165, 300, 300]
    assert RateLimit(max=300).at(0) == 300  # no min: no ramp
    with pytest.raises(ValueError, match="must not exceed"):
        RateLimit(max=10, min=20)
