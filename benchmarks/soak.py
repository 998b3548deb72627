"""Soak: a long ``tiered run`` killed at random points, and the gateway under load.

**run** (``--part run``): ``--records`` records (HEADLINES from ``../shared/data/text``,
cycled under fresh ids) labelled by ``tiered run`` in quick mode (a hashed n-gram stage
in front of the label column as expert). One run goes through unkilled; another, with
the same seed, is SIGKILLed ``--kills`` times at random points (the kill point drawn
over the output's final size, plus a random delay, so kills land anywhere in a batch or
a checkpoint) and resumed each time with the same command. Reported: every id exactly
once and in order, and the share of records whose decision (stage and label) differs
from the unkilled run, over all records and after the first kill.

**gateway** (``--part gateway``): ``tiered serve`` (a subprocess) with a one-stage
cascade whose stage calls the fake upstream (:class:`tiered.testing.FakeUpstream`, a
subprocess of its own), driven by aiohttp clients on loopback:

1. side by side at 64 clients: the same requests straight to the upstream, then through
   the gateway; latency p50/p99 of both and the gateway process's CPU ms per request;
2. 64 / 256 / 1,024 concurrent clients, a bounded request count each: answers by status
   (429s past ``max_in_flight`` are expected; 5xx are not), p50/p99, CPU ms per request,
   and the gateway's RSS sampled over the run (start, peak, end);
3. 500 slow clients (headers, then one body byte a second: cut off by the body timeout,
   then back) while 64 normal clients run: the normal clients' p99 against step 2's.

    .venv/bin/python benchmarks/soak.py [--part run|gateway|all] [--records 200000]
        [--kills 20] [--requests 20000 5000 5000] [--slow 500]

Wall-clock figures depend on the machine's load (say so when it was shared).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "text"
PY = sys.executable
TIERED = [PY, "-c", "import sys; from tiered.cli import main; sys.argv[0] = 'tiered'; main()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_stats(pid: int) -> tuple[float, int]:
    """(user + system CPU seconds, resident bytes) of a process, from Linux /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    rss = int(stat[21]) * os.sysconf("SC_PAGE_SIZE")
    return cpu, rss


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q / 100 * len(s)))]


# --------------------------------------------------------------------------- run soak


def write_input(path: Path, n: int) -> list[str]:
    """``n`` records from HEADLINES, cycled with fresh ids; returns the ids in order."""
    rows = []
    for split in ("train", "test"):
        with open(DATA / f"headlines_{split}.jsonl", encoding="utf-8") as f:
            rows += [json.loads(line) for line in f]
    ids = []
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            r = rows[i % len(rows)]
            ids.append(f"r{i}")
            f.write(json.dumps({"id": ids[-1], "text": r["text"], "label": r["label"]}) + "\n")
    return ids


def run_command(src: Path, out: Path, seed: int) -> list[str]:
    return [
        *TIERED, "run", str(src), "-o", str(out),
        "--text-field", "text", "--id-field", "id", "--expert-field", "label",
        "--expert-cost", "0.002", "--target-agreement", "0.96", "--no-progress",
        "--seed", str(seed),
    ]  # fmt: skip


def decisions(path: Path) -> list[tuple[str, str, str]]:
    with path.open(encoding="utf-8") as f:
        return [(d["id"], d["stage"], d["label"]) for d in map(json.loads, f)]


def soak_run(records: int, kills: int, seed: int, folder: Path) -> None:
    src = folder / "in.jsonl"
    ids = write_input(src, records)
    ref, out = folder / "ref.jsonl", folder / "killed.jsonl"
    t0 = time.perf_counter()
    done = subprocess.run(run_command(src, ref, seed), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    ref_s = time.perf_counter() - t0
    print(f"unkilled run: {records:,} records in {ref_s:.0f} s", flush=True)

    rng = random.Random(seed)
    size = ref.stat().st_size
    targets = sorted(rng.uniform(0.02, 0.98) * size for _ in range(kills))
    killed_at: list[int] = []
    exits: Counter[int] = Counter()  # runs that ended before their kill, by exit code
    t0 = time.perf_counter()
    for target in targets:
        log_path = folder / "killed.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(run_command(src, out, seed), stdout=log, stderr=log)
        started = time.monotonic()
        # a target the output already passed (a resume restarts from its checkpoint): kill
        # this one early instead, anywhere from start-up to its first batches
        early = out.exists() and out.stat().st_size >= target
        wait_s = rng.uniform(0.5, 4.0)
        while proc.poll() is None:
            if early and time.monotonic() - started > wait_s:
                break
            if not early and out.exists() and out.stat().st_size >= target:
                time.sleep(rng.uniform(0, 0.3))  # land anywhere: mid-batch, mid-checkpoint
                break
            time.sleep(0.01)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed_at.append(out.stat().st_size if out.exists() else 0)
        elif proc.returncode != 0:
            exits[proc.returncode] += 1
            print(f"a run exited with {proc.returncode}: {log_path.read_text()[-500:]}")
        proc.wait()
    done = subprocess.run(run_command(src, out, seed), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    killed_s = time.perf_counter() - t0

    got, want = decisions(out), decisions(ref)
    got_ids = [d[0] for d in got]
    once = len(got_ids) == len(set(got_ids)) == records and got_ids == ids
    first_kill = (
        int(min(killed_at) / size * records) if killed_at else records
    )  # approximate record index of the first kill
    differ = [a[1:] != b[1:] for a, b in zip(got, want, strict=False)]
    after = differ[first_kill:]

    def expert_share(ds: list[tuple[str, str, str]]) -> float:
        return sum(d[1] == "expert" for d in ds) / max(len(ds), 1)

    print(f"killed run: {len(killed_at)} SIGKILLs + resumes, {killed_s:.0f} s in all")
    if exits:
        print(f"runs that failed on their own: {dict(exits)}")
    print(f"{'records':<34}{records:>12,}")
    print(f"{'every id exactly once, in order':<34}{'yes' if once else 'NO':>12}")
    print(f"{'ids answered twice':<34}{len(got_ids) - len(set(got_ids)):>12,}")
    print(f"{'ids missing':<34}{len(set(ids) - set(got_ids)):>12,}")
    print(f"{'decisions differing (all)':<34}{sum(differ) / max(len(differ), 1):>12.2%}")
    print(f"{'... after the first kill':<34}{sum(after) / max(len(after), 1):>12.2%}")
    print(f"{'expert share unkilled':<34}{expert_share(want):>12.2%}")
    print(f"{'expert share killed + resumed':<34}{expert_share(got):>12.2%}")


# --------------------------------------------------------------------------- gateway soak

UPSTREAM = """
import asyncio, sys
from tiered.testing import FakeUpstream

async def main():
    async with FakeUpstream(answer="fine", port=int(sys.argv[1])):
        print("ready", flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""

PAYLOAD = json.dumps(
    {"model": "bench", "messages": [{"role": "user", "content": "Is it fast?"}], "max_tokens": 8}
).encode()


@dataclass
class Load:
    """What one batch of requests met."""

    statuses: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0


async def load(url: str, n: int, clients: int, body: bytes = PAYLOAD) -> Load:
    """``n`` POSTs to ``url`` from ``clients`` concurrent keep-alive clients."""
    import aiohttp

    got = Load()
    left = iter(range(n))
    conn = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=120)
    headers = {"content-type": "application/json"}
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:

        async def client() -> None:
            for _ in left:
                t0 = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as r:
                        await r.read()
                        got.statuses[str(r.status)] += 1
                except (aiohttp.ClientError, TimeoutError) as exc:
                    got.statuses[type(exc).__name__] += 1
                got.latencies_ms.append(1000 * (time.perf_counter() - t0))

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        got.seconds = time.perf_counter() - t0
    return got


async def slow_clients(port: int, n: int, stop: asyncio.Event) -> Counter[str]:
    """``n`` clients sending headers then one body byte a second, reconnecting when cut."""
    seen: Counter[str] = Counter()

    async def one() -> None:
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError as exc:
                seen[type(exc).__name__] += 1
                await asyncio.sleep(1)
                continue
            writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n"
                b"Content-Type: application/json\r\nContent-Length: 2000\r\n\r\n{"
            )
            try:
                while not stop.is_set():
                    try:  # an answer (the 408) or the close ends this connection
                        head = await asyncio.wait_for(reader.read(64), 1)
                    except TimeoutError:
                        writer.write(b" ")  # one more byte of the body, a second later
                        await writer.drain()
                        continue
                    seen[head[9:12].decode(errors="replace") or "closed"] += 1
                    break
            except OSError:
                seen["reset"] += 1
            finally:
                writer.close()

    await asyncio.gather(*(one() for _ in range(n)))
    return seen


async def slow_child(port: int, n: int) -> dict[str, int]:
    """Run ``n`` slow clients until SIGINT; what ended their connections."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
    return dict(await slow_clients(port, n, stop))


class Sampler:
    """The gateway's CPU seconds and RSS, sampled every half second."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.rss: list[int] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.rss.append(proc_stats(self.pid)[1])
            await asyncio.sleep(0.5)

    def __enter__(self) -> Sampler:
        self.cpu0 = proc_stats(self.pid)[0]
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        self.cpu = proc_stats(self.pid)[0] - self.cpu0
        self.rss.append(proc_stats(self.pid)[1])


async def wait_up(url: str, proc: subprocess.Popen[bytes]) -> None:
    import aiohttp

    deadline = time.monotonic() + 120
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            assert proc.poll() is None, "the gateway exited"
            try:
                async with s.get(url) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError("the gateway did not start")


def row(name: str, got: Load, cpu_s: float | None, rss: list[int] | None) -> str:
    n = sum(got.statuses.values())
    statuses = " ".join(f"{k}:{v}" for k, v in sorted(got.statuses.items()))
    cpu = f"{1000 * cpu_s / n:>7.2f}" if cpu_s is not None else f"{'-':>7}"
    mem = f"{rss[0] / 2**20:>5.0f}/{max(rss) / 2**20:.0f}/{rss[-1] / 2**20:.0f}" if rss else "-"
    return (
        f"{name:<28}{n:>7,}{n / got.seconds:>8.0f}{pct(got.latencies_ms, 50):>8.1f}"
        f"{pct(got.latencies_ms, 99):>9.1f}{cpu}  {mem:<14} {statuses}"
    )


async def soak_gateway(levels: list[int], requests: list[int], n_slow: int, folder: Path) -> None:
    up_port, gw_port = free_port(), free_port()
    upstream = subprocess.Popen(
        [PY, "-c", UPSTREAM, str(up_port)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert upstream.stdout is not None and upstream.stdout.readline().strip() == b"ready"
    model = (
        f"{{kind: openai, base_url: 'http://127.0.0.1:{up_port}/v1', model: fake, "
        "mode: generate, api_key_env: null, max_retries: 0}"
    )
    cfg = folder / "gateway.yaml"
    cfg.write_text(
        "server: {max_in_flight: 256, deadline_s: 30}\n"
        f"cascades:\n  - name: bench\n    stages:\n      - {{name: up, model: {model}}}\n",
        encoding="utf-8",
    )
    with (folder / "gateway.log").open("wb") as log:
        gateway = subprocess.Popen(
            [*TIERED, "serve", str(cfg), "--port", str(gw_port)], stdout=log, stderr=log
        )
    gw = f"http://127.0.0.1:{gw_port}"
    direct = f"http://127.0.0.1:{up_port}/v1/chat/completions"
    try:
        await wait_up(gw + "/health", gateway)
        await load(gw + "/v1/chat/completions", 300, 16)  # warm up
        head = f"{'':<28}{'reqs':>7}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>9}{'cpu ms':>7}  "
        print(head + f"{'RSS MiB s/max/e':<14} statuses")
        # 1. side by side: direct, then through the gateway, same load
        n = requests[0] // 4
        cpu0 = proc_stats(upstream.pid)[0]
        got = await load(direct, n, 64)
        print(row("direct to upstream, 64", got, proc_stats(upstream.pid)[0] - cpu0, None))
        with Sampler(gateway.pid) as s:
            got = await load(gw + "/v1/chat/completions", n, 64)
        print(row("through gateway, 64", got, s.cpu, s.rss), flush=True)
        # 2. the levels
        for clients, count in zip(levels, requests, strict=False):
            with Sampler(gateway.pid) as s:
                got = await load(gw + "/v1/chat/completions", count, clients)
            print(row(f"gateway, {clients} clients", got, s.cpu, s.rss), flush=True)
        # 3. slow clients (a process of their own, not to slow the load generator) beside
        #    64 normal ones; the baseline is the same load just before
        n = requests[0] // 4
        base = await load(gw + "/v1/chat/completions", n, 64)
        print(row("64 clients (baseline)", base, None, None))
        slow = subprocess.Popen(
            [PY, __file__, "--slow-child", str(gw_port), str(n_slow)], stdout=subprocess.PIPE
        )
        await asyncio.sleep(5)  # let them connect and start dribbling
        with Sampler(gateway.pid) as s:
            got = await load(gw + "/v1/chat/completions", n, 64)
        await asyncio.sleep(12)  # long enough for the body timeout to cut them all
        slow.send_signal(signal.SIGINT)
        out, _ = slow.communicate(timeout=60)
        seen = json.loads(out.decode().strip().splitlines()[-1])
        print(row(f"64 + {n_slow} slow clients", got, None, s.rss))
        p99, base_p99 = pct(got.latencies_ms, 99), pct(base.latencies_ms, 99)
        print(f"normal clients' p99 with slow clients: {p99:.1f} ms vs {base_p99:.1f} ms "
              f"without ({p99 / base_p99:.2f}x)")  # fmt: skip
        print("slow clients ended by: " + " ".join(f"{k}:{v}" for k, v in seen.items()))
        text = (folder / "gateway.log").read_text(errors="replace")
        print(f"gateway log: {text.count('Traceback')} tracebacks, "
              f"{text.count('status=500')} status=500 lines")  # fmt: skip
    finally:
        for p in (gateway, upstream):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=["run", "gateway", "all"], default="all")
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--levels", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--requests", type=int, nargs="+", default=[20_000, 5_000, 5_000])
    ap.add_argument("--slow", type=int, default=500)
    ap.add_argument("--slow-child", type=int, nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.slow_child:  # the slow clients' own process, until SIGINT
        port, n = args.slow_child
        print(json.dumps(asyncio.run(slow_child(port, n))), flush=True)
        return
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")
    with tempfile.TemporaryDirectory() as tmp:
        if args.part in ("run", "all"):
            soak_run(args.records, args.kills, args.seed, Path(tmp))
        if args.part in ("gateway", "all"):
            asyncio.run(soak_gateway(args.levels, args.requests, args.slow, Path(tmp)))
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
