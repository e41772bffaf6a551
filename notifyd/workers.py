"""
``--workers N|auto``: one ``twistd notifyd`` that uses every core.

The parent process does no WAMP work.  It binds the public ``listen``
sockets itself and stops reading from them, starts N worker processes
(``python -m notifyd.worker``) and hands each one those sockets as inherited
file descriptors -- Twisted's documented way to share a listening port
between processes (``spawnProcess(childFDs=...)`` in the parent,
``adoptStreamPort`` in the worker).  The kernel gives each new connection to
one worker.  Every worker is a full node (:class:`notifyd.tap.NotifydService`)
with its own AMQP connection, queue, bindings and event-log follower, and
serves its own ``/healthz``, ``/readyz``, ``/metrics`` and ``/position`` on a
unix socket in a directory only this user may enter.

The parent:

* serves ``admin_listen``: ``/metrics`` (every worker's metrics summed; the
  gauges a sum would garble carry a ``worker`` label instead), ``/readyz``
  (ready when every worker is), ``/healthz`` (every running worker answers)
  and ``/position`` (one worker's answer: they follow the same log);
* relays each worker's log (JSON lines on the worker's stdout) into its own,
  marked ``w<index>``;
* restarts a worker that exits, after a delay that doubles (up to 30 s)
  while it keeps dying within 10 s of its start;
* on SIGTERM closes its copies of the sockets, sends SIGTERM to every worker
  (each stops gracefully: no new connections, consumer cancelled, acks
  flushed, GOODBYE to its sessions) and waits for them; a worker still
  running ``shutdown_timeout`` + 10 s later is killed.

A worker whose parent disappears (SIGKILL) notices within a second and
stops gracefully by itself.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.application.service import MultiService, Service
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, DeferredList, gatherResults, inlineCallbacks
from twisted.internet.endpoints import (
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    UNIXClientEndpoint,
    serverFromString,
)
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import eventFromJSON, globalLogPublisher
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.iweb import IAgentEndpointFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from notifyd import config as configmod
from notifyd import logs
from notifyd.checks import ConfigError
from notifyd.compat import quiet_http_client
from notifyd.logs import Logger
from notifyd.web import ListenService, make_admin_site

#: gauges that mean one worker's state: reported per worker, never summed
PER_WORKER = frozenset(
    {
        "notifyd_amqp_ready",
        "notifyd_history_position",
        "notifyd_history_ready",
        "notifyd_retained_topics",
    }
)

#: how long the parent waits for a worker's admin answer
FETCH_TIMEOUT = 5.0
#: a worker that exits sooner than this after its start is restarted later
#: each time (0.5 s, 1 s, 2 s ... 30 s)
YOUNG = 10.0
MAX_RESTART_DELAY = 30.0


def count(settings: configmod.Config) -> int:
    """The number of workers ``settings.workers`` asks for (``auto``: the
    CPU cores this process may run on)."""
    if settings.workers == "auto":
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            cores = os.cpu_count() or 1
        quota = cgroup_cpus()
        if quota is not None:
            cores = min(cores, quota)
        return max(1, min(cores, 256))
    return int(settings.workers)


def cgroup_cpus(path: str = "/sys/fs/cgroup/cpu.max") -> int | None:
    """The CPUs a cgroup v2 quota allows (a container's CPU limit), rounded
    up; None without a quota."""
    try:
        quota, period = open(path).read().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, math.ceil(int(quota) / int(period)))


def check(settings: configmod.Config) -> None:
    """Refuse settings that cannot run as several workers."""
    if settings.workers == "1":
        return
    if not settings.admin_listen:
        raise ConfigError(
            "workers needs admin_listen (--admin-listen): /metrics, /readyz and "
            "/healthz for all workers are served there by the parent process"
        )
    if settings.testee_listen:
        raise ConfigError("testee_listen runs with one worker only")
    from twisted.internet import reactor

    for description in settings.listen:
        endpoint = serverFromString(reactor, description)
        # (a unix: socket would be unlinked by the first worker that stops)
        if not isinstance(endpoint, (TCP4ServerEndpoint, TCP6ServerEndpoint)):
            raise ConfigError(
                f"listen endpoint {description!r}: workers share tcp: sockets only; "
                "terminate TLS (or serve a unix socket) in front of notifyd, or run "
                "one worker"
            )


def worker_settings(settings: configmod.Config, workers: int, admin: str) -> dict[str, Any]:
    """The settings of one worker: its private admin socket, no testee, and
    its share of ``max_connections``."""
    values = dict(settings.values)
    values["workers"] = "1"
    values["admin_listen"] = [admin]
    values["testee_listen"] = []
    if values["max_connections"]:
        values["max_connections"] = math.ceil(values["max_connections"] / workers)
    return values


#: metric types whose samples only grow (a sum of them must never go back)
MONOTONIC = frozenset({"counter", "histogram"})


#: a sample's name and sorted labels
SampleKey = tuple[str, tuple[tuple[str, str], ...]]


def _accumulate(
    families: dict[str, Metric],
    sums: dict[str, dict[SampleKey, float]],
    family: Metric,
    worker: int | None,
) -> None:
    """Add ``family``'s samples into ``sums``; a :data:`PER_WORKER` gauge
    gets the label ``worker``."""
    if family.name not in families:
        families[family.name] = Metric(family.name, family.documentation, family.type)
        sums[family.name] = {}
    acc = sums[family.name]
    for sample in family.samples:
        labels = dict(sample.labels)
        if family.name in PER_WORKER and worker is not None:
            labels["worker"] = str(worker)
        key = (sample.name, tuple(sorted(labels.items())))
        acc[key] = acc.get(key, 0.0) + sample.value


def _families(families: dict[str, Metric], sums: dict[str, dict[SampleKey, float]]) -> list[Metric]:
    for name, family in families.items():
        family.samples = []
        for (sample_name, labels), value in sums[name].items():
            family.add_sample(sample_name, dict(labels), value)
    return list(families.values())


def add_counters(into: dict[str, Metric], text: str) -> None:
    """Add the counter and histogram families of ``text`` into ``into``
    (family name -> its summed samples)."""
    sums = {
        name: {(s.name, tuple(sorted(s.labels.items()))): s.value for s in f.samples}
        for name, f in into.items()
    }
    for family in text_string_to_metric_families(text):
        if family.type in MONOTONIC:
            _accumulate(into, sums, family, None)
    _families(into, sums)


def aggregate(texts: dict[int, str], retired: dict[str, Metric] | None = None) -> list[Metric]:
    """Sum the workers' metrics (``texts``: worker index -> Prometheus text)
    sample by sample; :data:`PER_WORKER` gauges get a ``worker`` label.
    ``retired``: the counter families of workers that ended (see
    :func:`add_counters`), added to the sums (so that a restart never makes
    a counter go back)."""
    families: dict[str, Metric] = {}
    sums: dict[str, dict[SampleKey, float]] = {}
    for index, text in sorted(texts.items()):
        for family in text_string_to_metric_families(text):
            _accumulate(families, sums, family, index)
    for family in (retired or {}).values():
        _accumulate(families, sums, family, None)
    return _families(families, sums)


def combine_ready(
    workers: int, answers: dict[int, tuple[int, dict[str, Any]] | None], pids: dict[int, int]
) -> dict[str, Any]:
    """``/readyz`` of the whole service from each worker's answer (status
    code and JSON; None where it did not answer)."""
    out = []
    for index in range(workers):
        answer = answers.get(index)
        entry: dict[str, Any] = {"worker": index, "pid": pids.get(index)}
        if answer is None:
            entry["ready"] = False
            entry["state"] = "restarting" if index not in pids else "no answer"
        else:
            entry.update(answer[1])
            entry["ready"] = answer[0] == 200 and bool(answer[1].get("ready"))
        out.append(entry)
    return {
        "ready": bool(out) and all(e["ready"] for e in out),
        "workers": out,
        "sessions": sum(e.get("sessions", 0) for e in out),
    }


@implementer(IAgentEndpointFactory)
class _UnixSocket:
    def __init__(self, reactor: Any, path: str) -> None:
        self._reactor = reactor
        self._path = path

    def endpointForURI(self, uri: Any) -> Any:
        return UNIXClientEndpoint(self._reactor, self._path, timeout=FETCH_TIMEOUT)


def _how(reason: Any) -> str:
    if reason.check(ProcessDone):
        return "exited"
    value = reason.value
    if getattr(value, "signal", None):
        return f"was killed by signal {value.signal}"
    return f"exited with status {getattr(value, 'exitCode', '?')}"


class _WorkerTraceback:
    """A worker's failure, as its traceback text (what log observers ask of
    a failure)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def getTraceback(self, *args: Any, **kwargs: Any) -> str:
        return self.text


class _Worker(ProcessProtocol):
    """One worker process: hands it its spec, relays its log."""

    def __init__(self, pool: WorkerPool, index: int, spec: bytes) -> None:
        self.pool = pool
        self.index = index
        self.spec = spec
        self.started = time.monotonic()
        self.pid: int | None = None
        self.ended: Deferred[None] = Deferred()
        self._out = b""
        self._err = b""

    def connectionMade(self) -> None:
        self.pid = self.transport.pid
        self.transport.writeToChild(0, self.spec)
        self.transport.closeChildFD(0)

    def outReceived(self, data: bytes) -> None:
        self._out += data
        *lines, self._out = self._out.split(b"\n")
        for line in lines:
            self.pool.relay(self.index, line)

    def errReceived(self, data: bytes) -> None:
        self._err += data
        *lines, self._err = self._err.split(b"\n")
        for line in lines:
            if line.strip():
                self.pool.log.warn(
                    "worker {index}: {line}", index=self.index, line=line.decode("utf-8", "replace")
                )

    def processEnded(self, reason: Any) -> None:
        self.pool.ended(self, reason)
        self.ended.callback(None)


class WorkerPool(Service):
    """Starts, watches and restarts the worker processes."""

    log = Logger()

    def __init__(
        self,
        settings: configmod.Config,
        workers: int,
        sockets: Callable[[], list[tuple[str, int, str]]],
        reactor: Any,
        executable: str = sys.executable,
    ) -> None:
        """``sockets``: (description, file descriptor, address family name)
        of each shared listening socket, asked when a worker starts."""
        self.settings = settings
        self.workers = workers
        self._sockets = sockets
        self._reactor = reactor
        self._executable = executable
        self.running_workers: dict[int, _Worker] = {}
        self.restarts = 0
        self._young_deaths: dict[int, int] = {}
        #: since when a worker slot has had no process (monotonic)
        self._down_since: dict[int, float] = {}
        #: each running worker's last /metrics, and the counters of the
        #: workers that ended, so that the service's counters never go back
        self._last_metrics: dict[int, str] = {}
        self._retired: dict[str, Metric] = {}
        self._pending: dict[int, Any] = {}
        self._stopping = False
        self._dir: str | None = None
        self._announce: LoopingCall | None = None
        self._pool = HTTPConnectionPool(reactor, persistent=False)

    def socket_path(self, index: int) -> str:
        assert self._dir is not None
        return os.path.join(self._dir, f"w{index}.sock")

    # -- Service -------------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        self._stopping = False
        # mode 0700; unix socket paths must stay under ~107 bytes
        base = tempfile.gettempdir()
        if len(base) > 60:
            base = "/tmp"
        self._dir = tempfile.mkdtemp(prefix="notifyd-workers-", dir=base)
        for index in range(self.workers):
            self._spawn(index)
        self._announce = LoopingCall(self._check_ready)
        self._announce.clock = self._reactor
        self._announce.start(0.5, now=False)

    @inlineCallbacks
    def stopService(self) -> Any:
        super().stopService()
        self._stopping = True
        if self._announce is not None and self._announce.running:
            self._announce.stop()
        for call in self._pending.values():
            if call.active():
                call.cancel()
        self._pending.clear()
        running = list(self.running_workers.values())
        for worker in running:
            self._signal(worker, "TERM")
        if running:
            self.log.info("stopping {n} workers", n=len(running))
            waited = DeferredList([w.ended for w in running])
            grace = self.settings.shutdown_timeout + 10
            try:
                yield waited.addTimeout(grace, self._reactor)
            except Exception:
                for worker in running:
                    if not worker.ended.called:
                        self.log.error(
                            "worker {index} (pid {pid}) did not stop in {grace} s; killing it",
                            index=worker.index,
                            pid=worker.pid,
                            grace=grace,
                        )
                        self._signal(worker, "KILL")
                yield DeferredList([w.ended for w in running])
        yield self._pool.closeCachedConnections()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    # -- processes -----------------------------------------------------------
    def _spawn(self, index: int) -> None:
        self._pending.pop(index, None)
        sockets = self._sockets()
        child_fds: dict[int, Any] = {0: "w", 1: "r", 2: "r"}
        listen = []
        for k, (description, fd, family) in enumerate(sockets):
            child_fds[3 + k] = fd
            listen.append({"description": description, "fd": 3 + k, "family": family})
        path = self.socket_path(index)
        if os.path.exists(path):
            os.unlink(path)  # left by a worker that was killed
        admin = f"unix:{path}:mode=600:lockfile=0"
        spec = {
            "index": index,
            "parent": os.getpid(),
            "settings": worker_settings(self.settings, self.workers, admin),
            "listen": listen,
        }
        worker = _Worker(self, index, json.dumps(spec).encode() + b"\n")
        env = dict(os.environ)
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
        try:
            self._reactor.spawnProcess(
                worker,
                self._executable,
                [self._executable, "-m", "notifyd.worker"],
                env=env,
                childFDs=child_fds,
            )
        except OSError as e:  # out of file descriptors or processes
            self.log.error(
                "cannot start worker {index} ({error}); trying again in {delay} s",
                index=index,
                error=str(e),
                delay=MAX_RESTART_DELAY,
            )
            self._down_since.setdefault(index, time.monotonic())
            self._pending[index] = self._reactor.callLater(MAX_RESTART_DELAY, self._spawn, index)
            return
        self._down_since.pop(index, None)
        self.running_workers[index] = worker
        self.log.info("started worker {index} (pid {pid})", index=index, pid=worker.pid)

    def _signal(self, worker: _Worker, signal: str) -> None:
        try:
            worker.transport.signalProcess(signal)
        except Exception:
            pass  # already gone

    def ended(self, worker: _Worker, reason: Any) -> None:
        """A worker exited: restart it unless the service is stopping."""
        if self.running_workers.get(worker.index) is worker:
            del self.running_workers[worker.index]
            self._down_since[worker.index] = time.monotonic()
            last = self._last_metrics.pop(worker.index, None)
            if last is not None:
                # what it counted stays counted (up to its last scrape)
                add_counters(self._retired, last)
        how = _how(reason)
        if self._stopping or not self.running:
            self.log.info("worker {index} stopped ({how})", index=worker.index, how=how)
            return
        lived = time.monotonic() - worker.started
        young = self._young_deaths.get(worker.index, 0) + 1 if lived < YOUNG else 0
        self._young_deaths[worker.index] = young
        delay = min(MAX_RESTART_DELAY, 0.5 * 2 ** max(young - 1, 0))
        self.restarts += 1
        self.log.error(
            "worker {index} (pid {pid}) {how} after {lived:.1f} s; restarting it in {delay} s",
            index=worker.index,
            pid=worker.pid,
            how=how,
            lived=lived,
            delay=delay,
        )
        self._pending[worker.index] = self._reactor.callLater(delay, self._spawn, worker.index)

    def relay(self, index: int, line: bytes) -> None:
        """Pass one of worker ``index``'s JSON log records on to this
        process's observers, marked with the worker."""
        text = line.decode("utf-8", "replace").lstrip("\x1e").strip()
        if not text:
            return
        try:
            event = eventFromJSON(text)
        except ValueError:
            self.log.warn("worker {index}: {line}", index=index, line=text)
            return
        level = event.get("log_level")
        namespace = event.get("log_namespace", "-")
        event["log_system"] = f"w{index} {namespace}#{getattr(level, 'name', 'info')}"
        event["worker"] = index
        traceback = event.pop("worker_traceback", None)
        if traceback is not None:
            event["log_failure"] = _WorkerTraceback(traceback)
        globalLogPublisher(event)

    # -- asking the workers ------------------------------------------------------
    def fetch(self, index: int, path: bytes) -> Deferred[tuple[int, bytes]]:
        """GET ``path`` from worker ``index``'s admin socket: (code, body)."""
        agent = Agent.usingEndpointFactory(
            self._reactor, _UnixSocket(self._reactor, self.socket_path(index)), pool=self._pool
        )
        d = agent.request(b"GET", b"http://worker" + path)

        def body(response: Any) -> Any:
            return readBody(response).addCallback(lambda b: (response.code, b))

        d.addCallback(body)
        d.addTimeout(FETCH_TIMEOUT, self._reactor)
        return d

    def fetch_all(self, path: bytes) -> Deferred[dict[int, tuple[int, bytes] | None]]:
        """GET ``path`` from every running worker; None for one that failed."""
        indices = sorted(self.running_workers)

        def ask(index: int) -> Deferred[tuple[int, bytes] | None]:
            return self.fetch(index, path).addErrback(lambda _: None)

        return gatherResults([ask(i) for i in indices]).addCallback(
            lambda answers: dict(zip(indices, answers, strict=True))
        )

    def health_problems(self, answers: dict[int, tuple[int, bytes] | None]) -> list[str]:
        """Why the service is not healthy (empty: it is): a running worker
        that does not answer (its reactor is stuck; one still starting is
        given ``YOUNG`` seconds), no worker at all, or a slot without a
        process for longer than ``MAX_RESTART_DELAY`` plus ``YOUNG``."""
        now = time.monotonic()
        problems = []
        for index, answer in sorted(answers.items()):
            worker = self.running_workers.get(index)
            starting = worker is not None and now - worker.started < YOUNG
            if (answer is None or answer[0] != 200) and not starting:
                problems.append(f"worker {index} does not answer\n")
        for index, since in sorted(self._down_since.items()):
            if now - since > MAX_RESTART_DELAY + YOUNG:
                problems.append(f"worker {index} has not run for {now - since:.0f} s\n")
        if not self.running_workers:
            problems.append("no worker is running\n")
        return problems

    def pids(self) -> dict[int, int]:
        return {i: w.pid for i, w in self.running_workers.items() if w.pid is not None}

    def ready(self) -> Deferred[dict[str, Any]]:
        """What the service's ``/readyz`` says."""

        def combine(answers: dict[int, tuple[int, bytes] | None]) -> dict[str, Any]:
            parsed: dict[int, tuple[int, dict[str, Any]] | None] = {}
            for index, answer in answers.items():
                try:
                    parsed[index] = (answer[0], json.loads(answer[1])) if answer else None
                except ValueError:
                    parsed[index] = None
            return combine_ready(self.workers, parsed, self.pids())

        return self.fetch_all(b"/readyz").addCallback(combine)

    def _check_ready(self) -> Deferred[None]:
        def announce(status: dict[str, Any]) -> None:
            if status["ready"] and self._announce is not None and self._announce.running:
                self._announce.stop()
                self.log.info(
                    "notifyd ready: {n} workers consuming, pids {pids}",
                    n=self.workers,
                    pids=" ".join(str(w["pid"]) for w in status["workers"]),
                )

        return self.ready().addCallback(announce)

    def metrics(self) -> Deferred[bytes]:
        """The aggregated ``/metrics`` text."""

        def render(answers: dict[int, tuple[int, bytes] | None]) -> bytes:
            texts = {}
            answering = 0
            for index, answer in answers.items():
                if answer is not None and answer[0] == 200:
                    texts[index] = answer[1].decode("utf-8", "replace")
                    answering += 1
                    self._last_metrics[index] = texts[index]
                elif index in self._last_metrics:
                    # no answer this time: its last figures stand in
                    texts[index] = self._last_metrics[index]
            families = aggregate(texts, self._retired)
            workers = GaugeMetricFamily(
                "notifyd_workers", "worker processes by state", labels=["state"]
            )
            workers.add_metric(["configured"], self.workers)
            workers.add_metric(["running"], len(self.running_workers))
            workers.add_metric(["answering"], answering)
            families.append(workers)
            families.append(
                CounterMetricFamily(
                    "notifyd_worker_restarts",
                    "worker processes restarted after they exited",
                    value=self.restarts,
                )
            )
            return exposition(families)

        return self.fetch_all(b"/metrics").addCallback(render)


def exposition(families: Iterable[Metric]) -> bytes:
    """``families`` in Prometheus' text format."""
    return bytes(generate_latest(_Families(families)))


class _Families:
    """A registry-like object holding already collected families."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


class _Async(Resource):
    """A GET answered, from the workers' answers, when a Deferred fires."""

    isLeaf = True

    def __init__(self, pool: WorkerPool) -> None:
        super().__init__()
        self.pool = pool

    def answer(self) -> Deferred[tuple[int, bytes, bytes]]:
        raise NotImplementedError

    def render_GET(self, request: Request) -> Any:
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def write(result: tuple[int, bytes, bytes]) -> None:
            if gone:
                return
            code, content_type, body = result
            request.setResponseCode(code)
            request.setHeader(b"content-type", content_type)
            request.setHeader(b"cache-control", b"no-store")
            request.write(body)
            request.finish()

        def failed(f: Any) -> None:
            WorkerPool.log.failure("admin request failed", f)
            write((500, b"text/plain; charset=utf-8", b"internal error\n"))

        self.answer().addCallbacks(write, failed)
        return NOT_DONE_YET


class _Metrics(_Async):
    def answer(self) -> Deferred[tuple[int, bytes, bytes]]:
        return self.pool.metrics().addCallback(
            lambda text: (200, CONTENT_TYPE_LATEST.encode(), text)
        )


class _Ready(_Async):
    def answer(self) -> Deferred[tuple[int, bytes, bytes]]:
        return self.pool.ready().addCallback(
            lambda status: (
                200 if status["ready"] else 503,
                b"application/json",
                json.dumps(status).encode() + b"\n",
            )
        )


class _Health(_Async):
    def answer(self) -> Deferred[tuple[int, bytes, bytes]]:
        def judge(answers: dict[int, tuple[int, bytes] | None]) -> tuple[int, bytes, bytes]:
            problems = self.pool.health_problems(answers)
            if problems:
                return 503, b"text/plain; charset=utf-8", "".join(problems).encode()
            return 200, b"text/plain; charset=utf-8", b"ok\n"

        return self.pool.fetch_all(b"/healthz").addCallback(judge)


class _Position(_Async):
    def answer(self) -> Deferred[tuple[int, bytes, bytes]]:
        def first(answers: dict[int, tuple[int, bytes] | None]) -> tuple[int, bytes, bytes]:
            for answer in answers.values():
                if answer is not None and answer[0] != 404:
                    return answer[0], b"application/json", answer[1]
            return 503, b"application/json", b'{"error": "no worker answered"}\n'

        return self.pool.fetch_all(b"/position").addCallback(first)


def _family(address: Any) -> str:
    if isinstance(address, IPv6Address):
        return "INET6"
    if isinstance(address, IPv4Address):
        return "INET"
    if isinstance(address, UNIXAddress):
        return "UNIX"
    raise ConfigError(f"cannot share a listening socket of type {type(address).__name__}")


class SharedListener(ListenService):
    """Binds one public endpoint for the workers and never accepts on it."""

    def __init__(self, description: str, reactor: Any) -> None:
        factory = Factory.forProtocol(Protocol)
        factory.noisy = False
        super().__init__(description, factory, reactor=reactor)

    def _listening(self, port: Any) -> None:
        super()._listening(port)
        port.stopReading()  # the workers accept; this process only holds it

    def socket(self) -> tuple[str, int, str]:
        return self.description, self.port.fileno(), _family(self.port.getHost())


class Supervisor(MultiService):
    """The parent of ``--workers``: shared sockets, workers, one admin."""

    _log = Logger()

    def __init__(self, settings: configmod.Config, reactor: Any = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        self.settings = settings
        self.listeners = [SharedListener(d, reactor) for d in settings.listen]
        for listener in self.listeners:
            listener.setServiceParent(self)
        self.pool = WorkerPool(
            settings,
            count(settings),
            lambda: [listener.socket() for listener in self.listeners],
            reactor,
        )
        self.pool.setServiceParent(self)
        quiet_http_client()
        admin = make_admin_site(
            {
                b"healthz": _Health(self.pool),
                b"readyz": _Ready(self.pool),
                b"metrics": _Metrics(self.pool),
                b"position": _Position(self.pool),
            }
        )
        self.admin = [
            ListenService(d, admin, reactor=reactor, label="admin") for d in settings.admin_listen
        ]
        for listener in self.admin:
            listener.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> None:
        super().setServiceParent(parent)
        # twistd asks the application for a log observer before it starts
        logs.configure(parent, self.settings.log_format, self.settings.log_level)

    @inlineCallbacks
    def stopService(self) -> Any:
        """Close the shared sockets first (so that no connection waits in a
        backlog nobody accepts from), then stop the workers, then admin."""
        self._log.info("notifyd shutting down {n} workers", n=len(self.pool.running_workers))
        for listener in self.listeners:
            try:
                yield listener.stopService()
            except Exception:
                self._log.failure("closing {description} failed", description=listener.description)
        yield self.pool.stopService()
        yield MultiService.stopService(self)
        self._log.info("notifyd stopped: all workers ended")
