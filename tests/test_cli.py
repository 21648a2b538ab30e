"""``python -m busmp``: every verb, its exit codes, the ``--json`` schema, and ``top`` in a real
terminal (a pseudo-terminal: the screen is read back, ``q`` is typed)."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time

import pytest

import busmp
from busmp import DeadLetterQueue, Dispatcher, Event, EventStore, Stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "busmp", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": ROOT})


def unique(tag: str) -> str:
    return f"c{os.getpid()}-{tag}"[:24]


def spin(ctx, ev):
    until = time.perf_counter() + 0.002
    while time.perf_counter() < until:
        pass


def fail(ctx, ev):
    raise ValueError("no")


class Feeding:
    """A named worker-mode store that a thread keeps feeding until ``stop()``."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.name = store.name
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._feed)
        self._thread.start()

    def _feed(self) -> None:
        while not self._stop.wait(0.05):
            self.store.subscribe_many(Event("p") for _ in range(20))
            self.store.publish()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def stats(self) -> Stats:
        return self.store.stats()


@pytest.fixture
def busy_store():
    """A named worker-mode store with work in flight all along (three events fail)."""
    d = Dispatcher()
    d.register("p", spin)
    d.register("bad", fail)
    store = EventStore(d, 1 << 12, workers=1, start_method="fork", name=unique("busy"), dlq=DeadLetterQueue())
    try:
        store.subscribe_many(Event("bad") for _ in range(3))
        store.subscribe_many(Event("p") for _ in range(200))
        store.publish()
        feeding = Feeding(store)
        try:
            yield feeding
        finally:
            feeding.stop()
    finally:
        store.drain(timeout=60)


# -- usage --------------------------------------------------------------------------------------

def test_no_verb_is_a_usage_error_with_the_help_on_stderr():
    out = cli()
    assert out.returncode == 2
    assert "demo" in out.stderr and "top" in out.stderr and "exit codes" in out.stderr


def test_help_names_every_verb_and_the_exit_codes():
    out = cli("--help")
    assert out.returncode == 0
    for verb in ("demo", "ls", "stats", "top", "doctor"):
        assert re.search(rf"^\s+{verb}\s", out.stdout, re.M), verb
    assert "0 ok, 1 no such store" in out.stdout and "2 usage" in out.stdout


@pytest.mark.parametrize("args", [["frobnicate"], ["stats"], ["top", "--interval", "0"], ["demo", "--events", "0"]])
def test_bad_arguments_are_usage_errors(args):
    out = cli(*args)
    assert out.returncode == 2, out
    assert "usage:" in out.stderr


# -- ls and stats --------------------------------------------------------------------------------

def test_ls_lists_the_live_stores_with_their_counts(busy_store):
    time.sleep(0.3)
    out = cli("ls")
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if line.startswith(busy_store.name))
    assert f" {os.getpid()} " in row and " 1 " in row and "open" in row
    assert out.stdout.splitlines()[0].split()[:2] == ["NAME", "PID"]


def test_ls_leaves_out_drained_stores():
    name = unique("drained")
    EventStore(Dispatcher(), 8, name=name).drain()
    out = cli("ls")
    assert out.returncode == 0 and name not in out.stdout


def test_stats_prints_one_snapshot(busy_store):
    time.sleep(0.3)
    out = cli("stats", busy_store.name)
    assert out.returncode == 0, out.stderr
    assert f"store '{busy_store.name}': pid {os.getpid()}, 1 workers, open" in out.stdout
    assert re.search(r"^\s+published\s+[\d,]+\s+[\d,.]+/s$", out.stdout, re.M), out.stdout
    for label in ("processed", "in flight", "pending", "dead letters", "dropped", "ring"):
        assert re.search(rf"^\s+{label}\s", out.stdout, re.M), label
    assert re.search(r"^\s+worker 0\s+pid \d+", out.stdout, re.M)


def test_stats_json_has_every_stats_field_with_its_type(busy_store):
    busy_store.stop()
    busy_store.store.flush(timeout=60)
    time.sleep(0.3)
    out = cli("stats", busy_store.name, "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    fields = {f.name: f.type for f in dataclasses.fields(Stats)}
    assert set(data) == set(fields)
    types = {"int": int, "float": (int, float), "str": str, "tuple[int, ...]": list, "tuple[str, ...]": list,
             "tuple[float, ...]": list}
    for key, value in data.items():
        assert isinstance(value, types[fields[key]]), (key, value)
    assert data["name"] == busy_store.name and data["pid"] == os.getpid()
    published = data["published"]
    assert published >= 203 and (data["processed"], data["errors"], data["dead_letters"]) == (published, 3, 3)
    assert data["pending"] == 0 and data["in_flight"] == 0 and data["workers"] == 1
    assert sum(data["per_worker"]) == published and data["worker_states"] == ["idle"]
    assert data == {**busy_store.stats().to_dict(), "updated": data["updated"],
                    "published_rate": data["published_rate"], "processed_rate": data["processed_rate"],
                    "errors_rate": data["errors_rate"], "dropped_rate": data["dropped_rate"],
                    "worker_since": data["worker_since"]}
    assert data["worker_since"][0] <= data["updated"]


def test_stats_of_an_unknown_store_exits_1_and_lists_the_live_ones(busy_store):
    out = cli("stats", unique("nosuch"))
    assert out.returncode == 1
    assert "no live busmp store is named" in out.stderr and busy_store.name in out.stderr
    assert out.stdout == ""


def test_stats_of_an_invalid_name_is_a_usage_error():
    out = cli("stats", "no/slashes")
    assert out.returncode == 2
    assert "1-24 characters" in out.stderr


# -- doctor ------------------------------------------------------------------------------------------

def test_doctor_reports_room_start_methods_and_versions():
    import cloudpickle
    import numpy

    out = cli("doctor")
    assert out.returncode in (0, 1), out.stderr
    text = out.stdout
    assert re.search(rf"numpy\s+{re.escape(numpy.__version__)}", text)
    assert re.search(rf"cloudpickle\s+{re.escape(cloudpickle.__version__)}", text)
    assert re.search(rf"busmp\s+{re.escape(busmp.__version__)}", text)
    assert re.search(r"^\s+ray\s+\S", text, re.M)
    assert re.search(r"start methods\s+.*(fork|spawn)", text)
    assert re.search(rf"cpus\s+{os.cpu_count()}", text)
    if os.path.isdir("/dev/shm"):
        assert re.search(r"/dev/shm: [\d,]+ MiB, [\d,]+ MiB free", text)
        assert re.search(r"a default store .* takes up to [\d,]+ MiB with 1 worker", text)
    assert text.rstrip().endswith("ok") == (out.returncode == 0)


def test_doctor_does_not_import_ray():
    code = ("import sys; from busmp._cli.doctor import run_doctor; import io, contextlib; "
            "contextlib.redirect_stdout(io.StringIO()).__enter__(); run_doctor(); "
            "sys.stderr.write(str('ray' in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.stderr.strip().endswith("False"), out.stderr


# -- demo ------------------------------------------------------------------------------------------

def test_demo_runs_both_stores_and_prints_the_table():
    out = cli("demo", "--events", "14", "--workers", "2", timeout=120)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "14 CPU-bound events" in text
    header = next(line for line in text.splitlines() if "speed-up" in line)
    assert header.split() == ["events", "seconds", "events/s", "speed-up", "processed", "errors", "dead", "letters"]
    sync = next(line for line in text.splitlines() if line.strip().startswith("sync (workers=0)") and "x" in line)
    workers = next(line for line in text.splitlines() if line.strip().startswith("2 worker processes")
                   and "x" in line)
    # 14 events, two handlers each; bounds 12000..12013 hold two multiples of 7 (12005, 12012)
    assert sync.split()[2] == "14" and workers.split()[3] == "14"
    assert sync.split()[-3:] == ["28", "2", "2"] and workers.split()[-3:] == ["28", "2", "2"]
    assert sync.split()[-4] == "1.00x"
    assert re.search(r"events per worker process: pid \d+: \d+", text)
    assert "ValueError('refusing 120" in text
    assert out.stderr == ""


# -- top, in a pseudo-terminal -----------------------------------------------------------------------------

class Terminal:
    """``python -m busmp top ...`` on the slave end of a pty; the test holds the master end."""

    def __init__(self, *args: str) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 110, 0, 0))
        env = {**os.environ, "PYTHONPATH": ROOT}
        env.pop("COLUMNS", None)
        env.pop("LINES", None)
        self.process = subprocess.Popen([sys.executable, "-m", "busmp", "top", *args], stdin=slave, stdout=slave,
                                        stderr=slave, cwd=ROOT, env=env, close_fds=True)
        os.close(slave)
        self.output = b""

    def read_until(self, pattern: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, self.screen()):
                return self.screen()
            if select.select([self.master], [], [], 0.1)[0]:
                try:
                    self.output += os.read(self.master, 65536)
                except OSError:  # the other end is closed
                    break
        raise AssertionError(f"{pattern!r} never showed; the terminal shows:\n{self.screen()}")

    def screen(self) -> str:
        """The last frame, escape codes removed."""
        text = self.output.decode(errors="replace")
        return ANSI.sub("", text.rsplit("\x1b[H", 1)[-1])

    def finish(self, timeout: float = 5) -> tuple[int, float]:
        start = time.monotonic()
        try:
            code = self.process.wait(timeout=timeout)
        finally:
            self.drain_output()
            os.close(self.master)
        return code, time.monotonic() - start

    def drain_output(self) -> None:
        while select.select([self.master], [], [], 0.05)[0]:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            self.output += data

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def test_top_shows_a_store_live_and_quits_on_q(busy_store):
    term = Terminal(busy_store.name, "--interval", "0.2")
    try:
        first = term.read_until(r"workers.*\n.*pid \d+\s+(busy|idle)")
        assert f"busmp top: {busy_store.name}" in first and f"pid {os.getpid()}" in first
        assert re.search(r"ring\s+\[[#.]+\] [\d,]+ of 4,096 events held", first)
        assert "dead letters" in first and "q or Ctrl-C quits" in first
        worker_pid = busy_store.stats().worker_pids[0]
        assert f"pid {worker_pid}" in first
        seen = re.search(r"processed\s+([\d,]+)", first)
        assert seen is not None
        # it refreshes: the count moves while the worker runs
        term.read_until(rf"processed\s+(?!{re.escape(seen.group(1))}\s)[\d,]+\s")
        os.write(term.master, b"q")
        code, seconds = term.finish()
    finally:
        term.kill()
    assert code == 0
    assert seconds < 2, f"top took {seconds:.1f} s to quit"
    raw = term.output.decode(errors="replace")
    assert raw.startswith("\x1b[?1049h") and raw.rstrip().endswith("\x1b[?1049l")  # the screen is given back


def test_top_quits_cleanly_on_ctrl_c(busy_store):
    term = Terminal(busy_store.name, "--interval", "0.2")
    try:
        term.read_until(r"busmp top: ")
        term.process.send_signal(signal.SIGINT)
        code, seconds = term.finish()
    finally:
        term.kill()
    assert code == 0 and seconds < 2
    assert "Traceback" not in term.output.decode(errors="replace")
    assert term.output.decode(errors="replace").rstrip().endswith("\x1b[?1049l")


def test_top_without_a_name_lists_every_live_store(busy_store):
    term = Terminal("--interval", "0.2")
    try:
        term.read_until(re.escape(busy_store.name))
        assert "live stores of this user" in term.screen()
        os.write(term.master, b"q")
        code, _ = term.finish()
    finally:
        term.kill()
    assert code == 0


def test_top_of_an_unknown_store_exits_1_before_touching_the_screen():
    term = Terminal(unique("nosuch"))
    try:
        code, _ = term.finish(timeout=30)
    finally:
        term.kill()
    text = term.output.decode(errors="replace")
    assert code == 1
    assert "no live busmp store is named" in text and "\x1b[?1049h" not in text


def test_top_ends_when_the_store_is_drained():
    d = Dispatcher()
    name = unique("ending")
    store = EventStore(d, 64, name=name)
    term = Terminal(name, "--interval", "0.1")
    try:
        term.read_until(rf"busmp top: {name}")
        store.drain()
        code, _ = term.finish(timeout=10)
    finally:
        store.drain()
        term.kill()
    assert code == 0
    assert f"store '{name}' is gone" in term.output.decode(errors="replace")


def test_demo_draws_a_progress_bar_in_a_terminal():
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    process = subprocess.Popen([sys.executable, "-m", "busmp", "demo", "--events", "6", "--workers", "2"],
                               stdin=slave, stdout=slave, stderr=slave, cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": ROOT})
    os.close(slave)
    output = b""
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    break
                if not data:
                    break
                output += data
            elif process.poll() is not None:
                break
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
    text = output.decode(errors="replace")
    assert code == 0, text
    assert re.search(r"\r  sync \(workers=0\)\s+\[#*\.*\]\s+\d+/6 events", text), text
    assert "speed-up" in text
