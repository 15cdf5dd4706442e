"""Retrying until Kafka answers, on a simulated clock: waits between failures, stop, giving up."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.errors import KafkaConnectionError

from mailsluice.kafka.retrying import until_kafka_answers


class SimClock:
    """A clock that moves only when the code under test sleeps on it."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Flaky:
    """An attempt that fails `failures` times with `error`, then answers."""

    def __init__(self, failures: int, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error or KafkaConnectionError("broker away")
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error


async def test_retries_after_each_failure_until_the_attempt_answers() -> None:
    clock, attempt = SimClock(), Flaky(failures=2)
    seen: list[Exception] = []
    assert await until_kafka_answers(
        attempt, retry_s=2.0, on_failure=seen.append, sleep=clock.sleep
    )
    assert attempt.calls == 3
    assert clock.sleeps == [2.0, 2.0]
    assert [type(e) for e in seen] == [KafkaConnectionError, KafkaConnectionError]


async def test_a_first_answer_waits_for_nothing() -> None:
    clock, attempt = SimClock(), Flaky(failures=0)
    assert await until_kafka_answers(attempt, retry_s=2.0, sleep=clock.sleep)
    assert (attempt.calls, clock.sleeps) == (1, [])


async def test_the_wait_doubles_up_to_its_bound() -> None:
    clock, attempt = SimClock(), Flaky(failures=5)
    assert await until_kafka_answers(attempt, retry_s=0.5, max_retry_s=2.0, sleep=clock.sleep)
    assert clock.sleeps == [0.5, 1.0, 2.0, 2.0, 2.0]


async def test_timeouts_and_refused_connections_count_as_kafka_not_answering() -> None:
    for error in (TimeoutError("metadata"), ConnectionRefusedError("refused")):
        clock, attempt = SimClock(), Flaky(failures=1, error=error)
        assert await until_kafka_answers(attempt, retry_s=1.0, sleep=clock.sleep)
        assert attempt.calls == 2


async def test_an_async_on_failure_runs_before_the_wait() -> None:
    clock, attempt = SimClock(), Flaky(failures=1)
    order: list[str] = []

    async def close_clients(exc: Exception) -> None:
        order.append(f"closed after {len(clock.sleeps)} waits")

    assert await until_kafka_answers(
        attempt, retry_s=1.0, on_failure=close_clients, sleep=clock.sleep
    )
    assert order == ["closed after 0 waits"]


async def test_other_errors_propagate_at_once() -> None:
    clock, attempt = SimClock(), Flaky(failures=1, error=ValueError("a bug"))
    with pytest.raises(ValueError, match="a bug"):
        await until_kafka_answers(attempt, retry_s=1.0, sleep=clock.sleep)
    assert (attempt.calls, clock.sleeps) == (1, [])


async def test_the_errors_retried_are_the_callers_choice() -> None:
    clock, attempt = SimClock(), Flaky(failures=2, error=LookupError("not yet"))
    assert await until_kafka_answers(attempt, retry_s=1.0, errors=(LookupError,), sleep=clock.sleep)
    assert attempt.calls == 3
    with pytest.raises(KafkaConnectionError):
        await until_kafka_answers(
            Flaky(failures=1), retry_s=1.0, errors=(LookupError,), sleep=clock.sleep
        )


async def test_on_failure_gives_up_by_raising_at_a_deadline() -> None:
    clock, attempt = SimClock(), Flaky(failures=100)
    deadline, retry_s = 5.0, 2.0

    def give_up(exc: Exception) -> None:
        if clock.now + retry_s >= deadline:
            raise OSError("Kafka did not answer in time") from exc

    with pytest.raises(OSError, match="did not answer in time"):
        await until_kafka_answers(attempt, retry_s=retry_s, on_failure=give_up, sleep=clock.sleep)
    assert attempt.calls == 3  # at 0, 2 and 4 s
    assert clock.now == 4.0


async def test_stop_set_before_makes_no_attempt() -> None:
    stop = asyncio.Event()
    stop.set()
    attempt = Flaky(failures=0)
    assert not await until_kafka_answers(attempt, retry_s=1.0, stop=stop)
    assert attempt.calls == 0


async def test_stop_cuts_the_wait_short_and_ends_without_another_attempt() -> None:
    stop = asyncio.Event()
    attempt = Flaky(failures=100)
    never = asyncio.Event()
    waits: list[float] = []

    async def endless_sleep(seconds: float) -> None:
        waits.append(seconds)
        await never.wait()  # only stop can end this wait

    def stop_during_the_wait(exc: Exception) -> None:
        asyncio.get_running_loop().call_soon(stop.set)

    retrying = until_kafka_answers(
        attempt, retry_s=3600.0, stop=stop, on_failure=stop_during_the_wait, sleep=endless_sleep
    )
    answered = await asyncio.wait_for(retrying, 10)  # a bound on a hang, not a synchronisation
    assert not answered
    assert attempt.calls == 1
    assert waits == [3600.0]


async def test_cancellation_propagates() -> None:
    never = asyncio.Event()
    waiting = asyncio.Event()

    async def endless_sleep(seconds: float) -> None:
        waiting.set()
        await never.wait()

    task = asyncio.create_task(
        until_kafka_answers(Flaky(failures=100), retry_s=1.0, sleep=endless_sleep)
    )
    await waiting.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
