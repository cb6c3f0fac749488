"""drivers.bus: the shared-link scheduler, over a real TCP connection to a small line server.

The server answers ``NAME\\n`` with ``NAME N\\n`` (N counts that name's requests) unless NAME is dead, and
logs the order in which requests arrive: fairness and serialisation are asserted on that log and on counts,
never on durations."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from drivers import bus
from drivers.errors import ConfigurationError, ConnectionLost, DeviceTimeout, DeviceUnavailable
from tests.waiting import until

pytestmark = pytest.mark.timeout(60)


@dataclass
class LineServer:
    dead: set[str] = field(default_factory=set)
    slow: dict[str, asyncio.Event] = field(default_factory=dict)
    """Names whose answer waits for their event."""
    log: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    connections: int = 0
    closed: int = 0
    writers: set[asyncio.StreamWriter] = field(default_factory=set)
    port: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``predicate()`` holds (checked whenever a request arrives or a connection ends)."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.add(writer)
        try:
            while line := await reader.readline():
                name = line.decode().strip()
                self.log.append(name)
                self.counts[name] += 1
                self.changed.set()
                if name in self.dead:
                    continue
                if name in self.slow:
                    await self.slow[name].wait()
                writer.write(f"{name} {self.counts[name]}\n".encode())
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.closed += 1
            self.changed.set()
            self.writers.discard(writer)
            writer.close()

    def drop_all(self) -> None:
        for writer in list(self.writers):
            writer.transport.abort()


class LineLink:
    """The link the bus shares: one TCP connection; ``ask`` is one exchange."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.active = 0
        self.max_active = 0

    async def ask(self, name: str) -> str:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            self.writer.write(f"{name}\n".encode())
            while True:
                line = await self.reader.readline()
                if not line:
                    raise ConnectionLost("closed by the server")
                answer = line.decode().strip()
                if answer.split()[0] == name:  # a late answer to someone else's timed-out request: skip
                    return answer
        finally:
            self.active -= 1

    def close(self) -> None:
        self.writer.close()


@contextlib.asynccontextmanager
async def line_server(**kwargs: object) -> AsyncIterator[LineServer]:
    state = LineServer(**kwargs)  # type: ignore[arg-type]
    server = await asyncio.start_server(state.handle, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        state.drop_all()
        server.close()


def opener(port: int) -> Callable[[Callable[[BaseException], None]], asyncio.Future[LineLink]]:
    async def open_link(lost: Callable[[BaseException], None]) -> LineLink:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError as err:
            raise DeviceUnavailable(f"127.0.0.1:{port}: {err.strerror}") from err
        return LineLink(reader, writer)

    return open_link  # type: ignore[return-value]


def ask(name: str) -> Callable[[LineLink], asyncio.Future[str]]:
    return lambda link: link.ask(name)  # type: ignore[return-value]


KEY = "tcp:test-line"


async def test_requests_are_serialised_and_round_robin() -> None:
    async with line_server() as server, contextlib.AsyncExitStack() as stack:
        ports = [
            await stack.enter_async_context(
                bus.attach(KEY, opener(server.port), settings="s", device=f"d{i}")
            )
            for i in range(5)
        ]
        stop = asyncio.Event()
        done: Counter[str] = Counter()

        async def loop(port: bus.Port[LineLink]) -> None:
            while not stop.is_set():
                assert (
                    await port.request(ask(port.device), timeout=5)
                    == f"{port.device} {done[port.device] + 1}"
                )
                done[port.device] += 1
                if sum(done.values()) >= 500:
                    stop.set()

        await asyncio.gather(*(loop(p) for p in ports))
        link = bus.buses()[KEY]._link
        assert link is not None
        assert link.max_active == 1  # one request at a time on the link
    assert max(done.values()) - min(done.values()) <= 1  # every device had its turn in every round
    # FIFO with one request per device: the arrival order cycles through all five devices.
    for window in range(0, 400, 5):
        assert sorted(server.log[window : window + 5]) == [f"d{i}" for i in range(5)]


async def test_a_dead_device_costs_one_timeout_per_attempt_and_backs_off() -> None:
    async with line_server(dead={"dead"}) as server, contextlib.AsyncExitStack() as stack:
        healthy = [
            await stack.enter_async_context(
                bus.attach(KEY, opener(server.port), settings="s", device=f"d{i}")
            )
            for i in range(9)
        ]
        dead = await stack.enter_async_context(
            bus.attach(
                KEY,
                opener(server.port),
                settings="s",
                device="dead",
                backoff_initial_s=0.2,
                backoff_max_s=0.2,
            )
        )
        stop = asyncio.Event()
        done: Counter[str] = Counter()
        failures: list[DeviceTimeout] = []

        async def loop(port: bus.Port[LineLink]) -> None:
            while not stop.is_set():
                await port.request(ask(port.device), timeout=5)
                done[port.device] += 1
                if min(done[p.device] for p in healthy) >= 300:
                    stop.set()

        async def dead_loop() -> None:
            while not stop.is_set():
                try:
                    await dead.request(ask("dead"), timeout=0.05, attempts=2)
                except DeviceTimeout as err:
                    failures.append(err)

        await asyncio.gather(*(loop(p) for p in healthy), dead_loop())
        stats = dead.bus.stats
    attempts = server.counts["dead"]
    assert failures, "the dead device was never tried"
    assert attempts == dead.timeouts == stats.timeouts  # each attempt ended by its timeout, nothing more
    assert dead.backoffs == len(failures) and attempts in (2 * len(failures), 2 * len(failures) + 1)
    counts = [done[p.device] for p in healthy]
    assert max(counts) - min(counts) <= 1  # the healthy devices kept equal shares
    assert attempts * 10 <= min(counts)  # the backoff keeps the dead device's claims rare
    # A retry waits behind the devices queued meanwhile: no two dead attempts in a row while the others
    # were still asking (after the last of their requests, the dead device's retry is alone in the queue).
    last_healthy = max(i for i, name in enumerate(server.log) if name != "dead")
    log = server.log[: last_healthy + 1]
    assert not any(a == b == "dead" for a, b in itertools.pairwise(log))


async def test_the_backoff_outlives_a_reattach() -> None:
    async with (
        line_server(dead={"dead"}) as server,
        bus.attach(KEY, opener(server.port), settings="s", device="keeper"),
    ):
        async with bus.attach(
            KEY, opener(server.port), settings="s", device="dead", backoff_initial_s=60, backoff_max_s=60
        ) as dead:
            with pytest.raises(DeviceTimeout, match="next try in 60 s"):
                await dead.request(ask("dead"), timeout=0.01)
        # The driver raised and the supervisor restarted it: same device, same bus (kept open by keeper).
        async with bus.attach(KEY, opener(server.port), settings="s", device="dead") as again:
            assert again.backoff_remaining_s > 50  # a restarted driver cannot jump its backoff
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await again.request(ask("dead"), timeout=0.01)
        assert server.counts["dead"] == 1


async def test_an_answer_resets_the_backoff() -> None:
    async with (
        line_server(dead={"flaky"}) as server,
        bus.attach(KEY, opener(server.port), settings="s", device="flaky", backoff_initial_s=0.01) as port,
    ):
        with pytest.raises(DeviceTimeout):
            await port.request(ask("flaky"), timeout=0.01)
        server.dead.clear()
        assert (await port.request(ask("flaky"), timeout=5)).startswith("flaky")
        assert port.backoff_remaining_s == 0


async def test_a_failed_link_fails_every_device_and_the_next_attach_reopens() -> None:
    gate = asyncio.Event()
    async with line_server(slow={"a": gate}) as server:
        async with (
            bus.attach(KEY, opener(server.port), settings="s", device="a") as a,
            bus.attach(KEY, opener(server.port), settings="s", device="b") as b,
        ):
            in_flight = asyncio.create_task(a.request(ask("a"), timeout=30))
            waiting = asyncio.create_task(b.request(ask("b"), timeout=30))
            await server.until(lambda: server.counts["a"] > 0)
            server.drop_all()
            results = await asyncio.gather(in_flight, waiting, return_exceptions=True)
            assert all(isinstance(r, ConnectionLost) for r in results), results
            assert KEY not in bus.buses()
            with pytest.raises(ConnectionLost):
                await b.request(ask("b"), timeout=1)
        async with bus.attach(KEY, opener(server.port), settings="s", device="b") as b:
            assert (await b.request(ask("b"), timeout=5)).startswith("b ")
        assert server.connections == 2


async def test_the_last_device_to_leave_closes_the_link() -> None:
    async with line_server() as server:
        async with bus.attach(KEY, opener(server.port), settings="s", device="a") as a:
            async with bus.attach(KEY, opener(server.port), settings="s", device="b"):
                await a.request(ask("a"), timeout=5)
            assert bus.buses()[KEY].devices == ["a"]
            assert server.closed == 0
        assert KEY not in bus.buses()
        await server.until(lambda: server.closed > 0)
        assert server.connections == 1


async def test_devices_on_one_bus_must_agree_on_its_settings() -> None:
    async with (
        line_server() as server,
        bus.attach(KEY, opener(server.port), settings=("modbus", 9600), device="a"),
    ):
        with pytest.raises(ConfigurationError, match=r"tcp:test-line is shared with a .* 9600"):
            async with bus.attach(KEY, opener(server.port), settings=("dlt645", 2400), device="b"):
                pass


async def test_a_bus_that_cannot_open_is_unavailable_and_forgotten() -> None:
    async with line_server() as server:
        port = server.port
    with pytest.raises(DeviceUnavailable):
        async with bus.attach(KEY, opener(port), settings="s", device="a"):
            pass
    assert KEY not in bus.buses()


class Garbled(Exception):
    pass


async def test_retry_on_errors_are_retried_without_backoff() -> None:
    tries = 0

    async def garbled_once(link: LineLink) -> str:
        nonlocal tries
        tries += 1
        answer = await link.ask("g")
        if tries == 1:
            raise Garbled(answer)
        return answer

    async with (
        line_server() as server,
        bus.attach(KEY, opener(server.port), settings="s", device="g") as port,
    ):
        assert await port.request(garbled_once, timeout=5, attempts=2, retry_on=(Garbled,)) == "g 2"
        with pytest.raises(Garbled):
            tries = 0
            await port.request(garbled_once, timeout=5, attempts=1, retry_on=(Garbled,))
        assert port.backoffs == 0 and port.backoff_remaining_s == 0


async def test_a_cancelled_request_never_wedges_the_bus() -> None:
    gate = asyncio.Event()
    async with (
        line_server(slow={"a": gate}) as server,
        bus.attach(KEY, opener(server.port), settings="s", device="a") as a,
        bus.attach(KEY, opener(server.port), settings="s", device="b") as b,
        bus.attach(KEY, opener(server.port), settings="s", device="c") as c,
    ):
        first = asyncio.create_task(a.request(ask("a"), timeout=30))
        second = asyncio.create_task(b.request(ask("b"), timeout=30))
        third = asyncio.create_task(c.request(ask("c"), timeout=30))
        await server.until(lambda: server.counts["a"] > 0)
        second.cancel()  # cancelled while waiting for its turn
        gate.set()
        assert await first == "a 1"
        assert await third == "c 1"
        with pytest.raises(asyncio.CancelledError):
            await second
        assert server.counts["b"] == 0
        first = asyncio.create_task(a.request(ask("a"), timeout=30))
        assert await first == "a 2"


async def test_ports_get_spread_phases() -> None:
    async with line_server() as server, contextlib.AsyncExitStack() as stack:
        ports = [
            await stack.enter_async_context(
                bus.attach(KEY, opener(server.port), settings="s", device=f"d{i}")
            )
            for i in range(10)
        ]
        phases = sorted(p.phase for p in ports)
    assert all(0 <= p < 1 for p in phases)
    assert min(b - a for a, b in itertools.pairwise(phases)) > 0.03  # no two devices in step


async def test_an_urgent_request_takes_the_next_turn_and_turns_alternate() -> None:
    gate = asyncio.Event()
    async with line_server(slow={"gate": gate}) as server, contextlib.AsyncExitStack() as stack:
        ports = {
            name: await stack.enter_async_context(
                bus.attach(KEY, opener(server.port), settings="s", device=name)
            )
            for name in ("gate", "a", "b", "c", "x", "y", "z")
        }
        held = asyncio.create_task(ports["gate"].request(ask("gate"), timeout=5))
        await server.until(lambda: server.log == ["gate"])
        tasks = []
        for ordinary, urgent in (("a", "x"), ("b", "y"), ("c", "z")):
            tasks.append(asyncio.create_task(ports[ordinary].request(ask(ordinary), timeout=5)))
            tasks.append(asyncio.create_task(ports[urgent].request(ask(urgent), timeout=5, urgent=True)))
        registry = bus.buses()[KEY]
        await until(
            "six requests queued behind the gate",
            lambda: len(registry._waiting) + len(registry._urgent) == 6,
        )
        gate.set()
        await asyncio.gather(held, *tasks)
    # The urgent requests went first at each free turn, alternating with the ordinary ones (never starving
    # them), although the ordinary ones had queued first.
    assert server.log == ["gate", "x", "a", "y", "b", "z", "c"]


async def test_a_command_does_not_wait_behind_its_own_devices_poll_cycle() -> None:
    async with line_server() as server, contextlib.AsyncExitStack() as stack:
        ports = [
            await stack.enter_async_context(
                bus.attach(KEY, opener(server.port), settings="s", device=f"d{i}")
            )
            for i in range(4)
        ]
        stop = asyncio.Event()

        async def poll_cycles(port: bus.Port[LineLink]) -> None:
            while not stop.is_set():
                for register in range(10):  # one poll: ten requests, one at a time
                    await port.request(ask(f"{port.device}.{register}"), timeout=5)

        pollers = [asyncio.create_task(poll_cycles(p)) for p in ports]
        await server.until(lambda: len(server.log) >= 40)
        positions = []
        for n in range(20):
            before = len(server.log)
            await ports[0].request(ask(f"cmd{n}"), timeout=5, urgent=True)
            positions.append(server.log.index(f"cmd{n}") - before)
        stop.set()
        await asyncio.gather(*pollers)
    # Queued while one exchange ran (and, after its own urgent turn, at most one ordinary turn): never
    # behind the other devices' queued polls, nor behind the rest of d0's own ten-request poll.
    assert max(positions) <= 2
    polls = sum(1 for name in server.log if not name.startswith("cmd"))
    assert polls >= 40 + 20  # the polls went on between the commands


async def test_an_urgent_request_cancelled_while_waiting_leaves_the_bus_usable() -> None:
    # The runtime cancels a command at its deadline: waiting for its turn, or as its turn is granted.
    gate = asyncio.Event()
    async with line_server(slow={"gate": gate}) as server, contextlib.AsyncExitStack() as stack:
        ports = {
            name: await stack.enter_async_context(
                bus.attach(KEY, opener(server.port), settings="s", device=name)
            )
            for name in ("gate", "cmd", "a")
        }
        held = asyncio.create_task(ports["gate"].request(ask("gate"), timeout=5))
        await server.until(lambda: server.log == ["gate"])
        waiting = asyncio.create_task(ports["cmd"].request(ask("cmd"), timeout=5, urgent=True))
        ordinary = asyncio.create_task(ports["a"].request(ask("a"), timeout=5))
        registry = bus.buses()[KEY]
        await until("both queued", lambda: len(registry._urgent) == 1 and len(registry._waiting) == 1)
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        assert not registry._urgent
        gate.set()
        await asyncio.gather(held, ordinary)
        assert await ports["cmd"].request(ask("cmd"), timeout=5, urgent=True) == "cmd 1"
    assert server.log == ["gate", "a", "cmd"]  # the cancelled request never reached the line
