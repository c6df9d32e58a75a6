"""All benchmarks, one command: `make bench` or `.venv/bin/python -m bench [--quick]`.

In process first: throughput, then the soak (a year of a busy team). Then latency and scale,
which share one throw-away Synapse on loopback. One table (or two) per figure; ratios and
targets, no assertions (machines are shared and noisy). CI does not run this.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from pathlib import Path

from bench import latency, scale, soak, throughput
from bench._common import machine_header, synapse_at

PARTS = ("throughput", "soak", "latency", "scale")


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small N everywhere: 1,000 commands a throughput row, a 20,000-command soak, "
        "a few rounds of each latency pattern, 1 restart",
    )
    parser.add_argument(
        "--only", choices=PARTS, action="append", help="run only this part (repeatable)"
    )
    for module in (throughput, soak, latency, scale):
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

    if "soak" in parts:
        t0 = time.perf_counter()
        result = await soak.run(args)
        section("Soak", soak.report(result), time.perf_counter() - t0)

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
