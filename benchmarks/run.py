"""pgqueue benchmark harness: pgqueue against Procrastinate, PgQueuer and plain psycopg.

    python benchmarks/run.py [--quick] [--systems pgqueue,pgqueue-history-off,procrastinate,pgqueuer,plain]
                             [--out benchmarks/results] [--reps N] [--scale]

Every measurement runs in a fresh database (``bench_<system>``, copied from a template
that holds the system's schema); workloads are interleaved across systems within each
repetition, and the system order rotates between repetitions. Writes
``<out>/<timestamp>.md``, ``.json``, ``throughput.png`` and ``latest.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import statistics
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


import common
import report
from systems import ALIASES, MODULES, get_system_class
from wakeup import read as read_wakeups

DRAIN_CONFIGS = [(1, 1), (1, 10), (1, 50), (2, 50)]  # (processes, concurrency)
WAKEUP_CONCURRENCY = 10
BULK_BATCH = 5000

PROFILES = {
    "full": {
        "reps": 3,
        "enqueue_one": 2000,
        "enqueue_bulk": 50_000,
        "drain": 20_000,
        "wakeup": 200,
        "scale_rows": 1_000_000,
        "scale_drain": 20_000,
        "budget_s": None,
    },
    # quick: a smoke run that must end in under 3 minutes, whatever else runs on the box:
    # past budget_s no new measurement starts and the report says what was left out.
    "quick": {
        "reps": 3,
        "enqueue_one": 200,
        "enqueue_bulk": 10_000,
        "drain": 1000,
        "wakeup": 20,
        "scale_rows": 100_000,
        "scale_drain": 5000,
        "budget_s": 140,
    },
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------ measurements


class Bench:
    def __init__(self, names: list[str], profile: dict):
        self.profile = profile
        self.systems: dict[str, object] = {}
        self.skipped: dict[str, str] = {}
        self.results: dict[str, dict[str, list]] = {}
        self.extras: dict[str, dict[str, list]] = {}
        self.errors: list[str] = []
        self.loads: list[float] = []  # 1-minute load average at each repetition's start
        self.over_budget: list[str] = []  # measurements not started: time budget spent
        self.t0 = time.perf_counter()
        for name in names:
            cls = get_system_class(name)
            reason = cls.available()
            if reason:
                self.skipped[name] = reason
                log(f"SKIP {name}: {reason}")
                continue
            self.systems[name] = cls

    # -- databases

    @staticmethod
    def db(name: str) -> str:
        return "bench_" + name.replace("-", "_")

    def dsn(self, name: str) -> str:
        db = self.db(name)
        return common.url_for(db) if self.systems[name].url else common.dsn_for(db)

    def prepare_templates(self) -> None:
        for name in list(self.systems):
            tpl = self.db(name) + "_tpl"
            try:
                common.create_db(tpl)
                self.systems[name]().install_schema(
                    common.url_for(tpl) if self.systems[name].url else common.dsn_for(tpl)
                )
                log(f"schema ready for {name}")
            except Exception as exc:
                self.skipped[name] = f"schema install failed: {exc}"
                log(f"SKIP {name}: schema install failed: {exc}")
                del self.systems[name]
                common.drop_db(tpl)

    def fresh(self, name: str) -> str:
        common.create_db(self.db(name), template=self.db(name) + "_tpl")
        return self.dsn(name)

    def drop_all(self) -> None:
        for name in MODULES:
            with contextlib.suppress(Exception):
                common.drop_db(self.db(name))
                common.drop_db(self.db(name) + "_tpl")

    def record(self, workload: str, name: str, value: float, **extra) -> None:
        self.results.setdefault(workload, {}).setdefault(name, []).append(value)
        for k, v in extra.items():
            self.extras.setdefault(f"{workload}:{k}", {}).setdefault(name, []).append(v)

    # -- workloads

    async def enqueue_one(self, name: str) -> None:
        n = self.profile["enqueue_one"]
        dsn = self.fresh(name)
        s = self.systems[name]()
        await s.open(dsn)
        try:
            await s.enqueue_one(20)  # warm-up: connections, prepared statements
            common.checkpoint()
            t0 = time.perf_counter()
            await s.enqueue_one(n)
            dt = time.perf_counter() - t0
        finally:
            await s.close()
        self.record("enqueue_one", name, n / dt)
        log(f"  {name:14s} enqueue one/txn   {n / dt:10,.0f} tasks/s")

    async def enqueue_bulk(self, name: str) -> None:
        n = self.profile["enqueue_bulk"]
        dsn = self.fresh(name)
        s = self.systems[name]()
        await s.open(dsn)
        try:
            await s.enqueue_bulk(BULK_BATCH, BULK_BATCH)  # warm-up
            common.checkpoint()
            t0 = time.perf_counter()
            await s.enqueue_bulk(n, BULK_BATCH)
            dt = time.perf_counter() - t0
        finally:
            await s.close()
        self.record("enqueue_bulk", name, n / dt)
        log(f"  {name:14s} enqueue bulk       {n / dt:10,.0f} tasks/s")

    async def seed(self, name: str, dsn: str, n: int, finished: int = 0) -> object:
        s = self.systems[name]()
        await s.open(dsn)
        try:
            if finished:
                await s.seed_finished(finished)
            await s.enqueue_bulk(n, BULK_BATCH)
        finally:
            await s.close()
        with common.connect(dsn) as conn:
            conn.execute("VACUUM ANALYZE")
        common.checkpoint()
        return s

    async def drain(
        self,
        name: str,
        processes: int,
        concurrency: int,
        workload: str | None = None,
        finished: int = 0,
    ) -> None:
        scale = bool(workload and workload.startswith("scale"))
        n = self.profile["scale_drain"] if scale else self.profile["drain"]
        workload = workload or f"drain_p{processes}_c{concurrency}"
        dsn = self.fresh(name)
        s = await self.seed(name, dsn, n, finished)
        sql = s.finished_sql(n)
        # Scale: a system that can count its unfinished rows from an index is polled that
        # way; a count of finished rows reads the whole table, which with 1,000,000 finished
        # rows costs the server more than the drain it measures.
        remaining_sql = getattr(s, "remaining_sql", lambda: None)() if scale else None
        with common.connect(dsn) as conn:
            base = conn.execute(sql).fetchone()[0]  # finished rows already there (scale)
        env = s.worker_env(dsn)
        workers = [common.Worker(name, dsn, concurrency, env) for _ in range(processes)]
        try:
            startup = max(w.wait_ready() for w in workers)
            poll = 0.1 if scale else (0.005 if n <= 5000 else 0.02)
            timeout = 30.0 if self.profile.get("budget_s") else max(60.0, n / 100)
            with common.connect(dsn) as conn:
                for w in workers:
                    w.go()
                t0 = time.perf_counter()
                while True:
                    time.sleep(poll)
                    if remaining_sql:
                        done = n - conn.execute(remaining_sql).fetchone()[0]
                    else:
                        done = conn.execute(sql).fetchone()[0] - base
                    dt = time.perf_counter() - t0
                    if done >= n:
                        break
                    dead = [w for w in workers if not w.alive()]
                    if dead or dt > timeout:
                        why = "worker exited" if dead else f"timeout ({done}/{n} done)"
                        raise RuntimeError(f"{why}: {(dead or workers)[0].stderr_tail()}")
            cpu = sum(w.cpu_used() for w in workers)
            rss = max(w.peak_rss_mb() for w in workers)
        finally:
            for w in workers:
                w.stop()
        self.record(
            workload, name, n / dt, cpu_us=cpu / n * 1e6, rss_mb=rss, seconds=dt, startup_s=startup
        )
        log(
            f"  {name:14s} {workload:18s} {n / dt:10,.0f} tasks/s  ({dt:.2f} s, "
            f"cpu {cpu / n * 1e6:.0f} us/task, rss {rss:.0f} MB)"
        )

    async def wakeup(self, name: str) -> None:
        samples = self.profile["wakeup"]
        dsn = self.fresh(name)
        s = self.systems[name]()
        fd, path = tempfile.mkstemp(prefix="bench-wakeup-")
        os.close(fd)
        env = dict(s.worker_env(dsn), BENCH_WAKEUP_FILE=path)
        worker = common.Worker(name, dsn, WAKEUP_CONCURRENCY, env)
        await s.open(dsn)
        lat: list[float] = []
        try:
            worker.wait_ready()
            worker.go()

            async def one(i: int) -> float:
                t = await s.enqueue_wakeup(i)
                deadline = time.perf_counter() + 10
                while time.perf_counter() < deadline:
                    got = read_wakeups(path)
                    if i in got:
                        return (got[i] - t) * 1000
                    if not worker.alive():
                        raise RuntimeError(f"worker exited: {worker.stderr_tail()}")
                    await asyncio.sleep(0.002)
                raise RuntimeError(f"wake-up sample {i} never started")

            for i in range(1_000_000, 1_000_003):  # warm-up: worker listening and idle
                await one(i)
            await asyncio.sleep(0.2)
            for i in range(samples):
                lat.append(await one(i))
                await asyncio.sleep(0.01 + random.random() * 0.01)
        finally:
            await s.close()
            worker.stop()
            with contextlib.suppress(OSError):
                os.unlink(path)
        lat.sort()
        p50 = statistics.median(lat)
        p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))]
        self.record("wakeup_p50", name, p50)
        self.record("wakeup_p99", name, p99)
        log(f"  {name:14s} wake-up            p50 {p50:.2f} ms  p99 {p99:.2f} ms")

    # -- orchestration

    async def guarded(self, fn, name: str, *args) -> None:
        budget = self.profile.get("budget_s")
        if budget and time.perf_counter() - self.t0 > budget:
            self.over_budget.append(f"{name} {fn.__name__}{args}")
            return
        try:
            await fn(name, *args)
        except Exception as exc:
            msg = f"{name} {fn.__name__}{args}: {exc}"
            self.errors.append(msg)
            log(f"  ERROR {msg}")
            traceback.print_exc(limit=3)

    async def run(self, scale: bool) -> None:
        names = list(self.systems)
        workloads = [(self.enqueue_one, ()), (self.enqueue_bulk, ())]
        workloads += [(self.drain, cfg) for cfg in DRAIN_CONFIGS]
        workloads.append((self.wakeup, ()))
        for rep in range(self.profile["reps"]):
            order = names[rep % len(names) :] + names[: rep % len(names)] if names else []
            load = common.loadavg()
            self.loads.append(load)
            log(f"repetition {rep + 1}/{self.profile['reps']}, order {order}, load {load}")
            for fn, args in workloads:
                for name in order:
                    await self.guarded(fn, name, *args)
        if scale:
            rows = self.profile["scale_rows"]
            for rep in range(self.profile["reps"]):
                log(f"scale repetition {rep + 1}: {rows:,} finished rows in the table")
                for name in names:
                    if not self.systems[name].supports_scale:
                        continue
                    await self.guarded(self.drain, name, 1, 50, "scale_p1_c50", 0)
                    await self.guarded(self.drain, name, 1, 50, "scale_full_p1_c50", rows)


def parse_systems(arg: str) -> list[str]:
    out: list[str] = []
    for part in arg.split(","):
        part = part.strip()
        for name in ALIASES.get(part, [part]):
            if name not in MODULES:
                raise SystemExit(f"unknown system {name!r}; known: {', '.join(MODULES)}, plain")
            if name not in out:
                out.append(name)
    return out


def _sigterm(signum, frame):  # so that the finally blocks clean up
    raise SystemExit(143)


def main() -> None:
    signal.signal(signal.SIGTERM, _sigterm)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short smoke run (< 3 minutes)")
    ap.add_argument("--systems", default="pgqueue,pgqueue-history-off,procrastinate,pgqueuer,plain")
    ap.add_argument("--out", default=str(common.BENCH_DIR / "results"))
    ap.add_argument("--reps", type=int, help="repetitions (default 3)")
    ap.add_argument("--drain", type=int, help="tasks per drain")
    ap.add_argument(
        "--scale", action="store_true", help="also drain with finished rows already in the table"
    )
    args = ap.parse_args()

    mode = "quick" if args.quick else "full"
    profile = dict(PROFILES[mode])
    if args.reps:
        profile["reps"] = args.reps
    if args.drain:
        profile["drain"] = args.drain
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    started = datetime.now(UTC)
    t0 = time.perf_counter()
    bench = Bench(parse_systems(args.systems), profile)
    meta = {
        "mode": mode,
        "profile": profile,
        "started": started.isoformat(),
        "machine": common.machine_facts(),
        "postgres": common.pg_facts(),
        "drain_configs": DRAIN_CONFIGS,
        "wakeup_concurrency": WAKEUP_CONCURRENCY,
        "bulk_batch": BULK_BATCH,
        "command": " ".join(sys.argv),
    }
    log(f"mode {mode}: {profile}")
    try:
        bench.prepare_templates()
        asyncio.run(bench.run(args.scale))
    finally:
        bench.drop_all()
    bench.loads.append(common.loadavg())
    meta["load_averages"] = bench.loads
    meta["elapsed_s"] = round(time.perf_counter() - t0, 1)
    data = {
        "meta": meta,
        "systems": list(bench.systems),
        "skipped": bench.skipped,
        "results": bench.results,
        "extras": bench.extras,
        "errors": bench.errors,
        "over_budget": bench.over_budget,
    }
    stamp = started.strftime("%Y%m%dT%H%M%SZ") + ("-quick" if args.quick else "")
    common.write_json(out / f"{stamp}.json", data)
    md = report.markdown(data)
    (out / f"{stamp}.md").write_text(md)
    (out / "latest.md").write_text(md)
    png = report.plot(data, out / "throughput.png")
    log(f"wrote {out / (stamp + '.md')}, {out / (stamp + '.json')}, {png or 'no plot'}")
    print(md)
    if bench.errors:
        log(f"{len(bench.errors)} measurement(s) failed; see the report")


if __name__ == "__main__":
    main()
