"""Where the last seconds of a ``segtrt predict`` process go, after its run report's final write.

Runs ``segtrt`` in this process with the given arguments and, to standard error, reports: the threads
still alive and the child processes when ``main`` returns; the main thread's stack, sampled every 0.1 s,
from just before the report's final write (deduplicated); how long joining the other threads and running
the exit handlers (``atexit``) took; the wall clock just before ``os._exit``. Compare that last time with
the time the caller sees the process end to get the operating system's share.

    python scripts/exit_probe.py predict CASES -o OUT -m MODEL --precision fp16 --compile default --no-tta

Found on the H200 (2026-12-03, ``benchmarks/h200_exit_probe_2026-12-03.log``): after warm precompiled runs,
8.9-10.6 s of exit handlers waiting for inductor's compile-worker pool that loading the saved module had
started (segtrt.runners.precompiled.without_compile_workers).
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path

SAMPLE_S = 0.1


def main(argv: list[str]) -> None:
    import segtrt.cli

    samples: list[tuple[float, str]] = []
    stop = threading.Event()
    main_thread = threading.main_thread().ident

    def sample() -> None:
        while not stop.wait(SAMPLE_S):
            frame = sys._current_frames().get(main_thread)
            if frame is not None:
                where = [f"{Path(f.filename).name}:{f.lineno}:{f.name}" for f in traceback.extract_stack(frame)[-6:]]
                samples.append((time.time(), " < ".join(reversed(where))))

    threading.Thread(target=sample, daemon=True, name="exit-probe").start()
    join_threads, exit_handlers, end = threading._shutdown, atexit._run_exitfuncs, os._exit

    def say(message: str) -> None:
        print(f"[exit_probe {time.time():.3f}] {message}", file=sys.stderr, flush=True)

    def joined() -> None:
        stop.set()
        report = Path(argv[argv.index("-o") + 1]) / "segtrt_report.json" if "-o" in argv else None
        finished = json.loads(report.read_text()).get("finished_epoch") if report and report.is_file() else None
        say(f"main returned; report finished_epoch {finished}; threads: {[t.name for t in threading.enumerate()]}")
        children = sorted(Path("/proc").glob("[0-9]*/stat"))
        for stat in children:  # Linux: the processes whose parent is this one
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == os.getpid():
                    say(f"child {stat.parent.name}: {(stat.parent / 'cmdline').read_bytes()[:120]!r}")
            except (OSError, IndexError, ValueError):
                continue
        last = None
        for when, stack in samples:
            if finished is not None and when >= finished - 3 * SAMPLE_S and stack != last:
                say(f"sample {when - finished:+.2f} s: {stack}")
                last = stack
        start = time.time()
        join_threads()
        say(f"threads joined in {time.time() - start:.2f} s")

    def handlers() -> None:
        start = time.time()
        exit_handlers()
        say(f"exit handlers in {time.time() - start:.2f} s")

    def exit_now(code: int) -> None:
        say(f"os._exit({code})")
        end(code)

    threading._shutdown, atexit._run_exitfuncs, os._exit = joined, handlers, exit_now
    sys.argv = ["segtrt", *argv]
    segtrt.cli.console()


if __name__ == "__main__":
    main(sys.argv[1:])
