"""All benchmarks, one command: `make bench` or `.venv/bin/python -m bench [--quick]`.

Throughput (in process), then latency and scale, which share one throw-away Synapse on
loopback. Prints tables and ratios; asserts nothing (machines are shared and noisy).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from pathlib import Path

from bench import latency, scale, throughput
from bench._common import machine_header, synapse_at

PARTS = ("throughput", "latency", "scale")


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small N everywhere: 1,000 commands, 20 round trips, 1 restart",
    )
    parser.add_argument(
        "--only", choices=PARTS, action="append", help="run only this part (repeatable)"
    )
    for module in (throughput, latency, scale):
        module.add_arguments(parser.add_argument_group(module.__name__))
    args = parser.parse_args()
    parts = args.only or list(PARTS)

    began = time.perf_counter()
    print(f"# onboarding-bot benchmarks{' (--quick)' if args.quick else ''}")
    print(machine_header())
    print("No assertions: shared machines are noisy; compare ratios, not absolute numbers.\n")

    def section(title: str, text: str, seconds: float) -> None:
        print(f"## {title} ({seconds:.0f} s)\n\n{text}\n", flush=True)

    if "throughput" in parts:
        t0 = time.perf_counter()
        result = await throughput.run(args)
        section("Throughput", throughput.report(result), time.perf_counter() - t0)

    if "latency" in parts or "scale" in parts:
        with tempfile.TemporaryDirectory(prefix="bench-synapse-") as tmp:
            async with contextlib.AsyncExitStack() as stack:
                t0 = time.perf_counter()
                synapse = await stack.enter_async_context(synapse_at(Path(tmp)))
                print(f"(Synapse {synapse.url} up in {time.perf_counter() - t0:.1f} s)\n")
                if "latency" in parts:
                    t0 = time.perf_counter()
                    result = await latency.run(args, synapse)
                    section("Latency", latency.report(result), time.perf_counter() - t0)
                if "scale" in parts:
                    t0 = time.perf_counter()
                    result = await scale.run(args, synapse)
                    section("Scale", scale.report(result), time.perf_counter() - t0)

    print(f"total runtime: {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    asyncio.run(main())
