"""``aki serve`` on 127.0.0.1: requests/s and p50/p95 latency at 1 and 8 concurrent clients (tiny AKI).

The server is ``python -m aki.serve.cli serve`` in its own process (default engine: up to 8 requests per
``generate``, a 20 ms window), on a freshly saved ``aki_tiny`` directory. The clients are threads of this
process (:mod:`aki.serve.loadtest`), each sending one greedy request at a time: chats of different lengths, two
in three with an image, ``max_tokens`` new tokens each. The 1-client and 8-client phases alternate, after a
warm-up; each round sends the same number of requests per phase. Reported: median requests/s over the rounds
and latency percentiles over all requests of a phase. Every answer under load is checked against the same
request sent alone. The issue's target: batching makes 8 clients >= 3x the throughput of 1.

Run: ``python benchmarks/bench_serve.py --threads 1`` (about a minute) or ``--quick``. ``--threads`` is the
server's torch thread count: the tiny model is fastest with 1; with 2 on a machine whose two cores were busy,
one ``generate`` of 16 tokens took 1.7 s instead of 50 ms.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from _common import parse_args, report_check
from _serving import save_tiny_model, start_server
from aki.serve.loadtest import (
    LoadResult,
    reference_answers,
    request_bodies,
    run_load,
    served_model,
)

CLIENTS = (1, 8)
TARGET = 3.0


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], default_repeats=3)
    requests, max_tokens = (16, 8) if args.quick else (48, 16)
    with tempfile.TemporaryDirectory(prefix="aki-bench-serve-") as folder:
        save_tiny_model(Path(folder))
        server, url = start_server(Path(folder), ["--threads", str(args.threads)])
        try:
            bodies = request_bodies(6, max_tokens=max_tokens, model=served_model(url))
            expected = reference_answers(url, bodies)  # also the warm-up
            runs: dict[int, list[LoadResult]] = {clients: [] for clients in CLIENTS}
            for round_index in range(args.repeats):
                order = CLIENTS if round_index % 2 == 0 else CLIENTS[::-1]
                for clients in order:
                    runs[clients].append(
                        run_load(url, bodies, clients=clients, requests=requests, expected=expected)
                    )
        finally:
            server.terminate()
            server.wait(timeout=30)

    print(
        f"\n## aki serve, tiny AKI, {requests} requests x {max_tokens} new tokens per phase, {args.repeats} rounds"
    )
    throughput = {}
    for clients, results in runs.items():
        throughput[clients] = statistics.median(result.requests_per_s for result in results)
        pooled = LoadResult(clients=clients, requests=requests, seconds=1.0)
        pooled.latencies_ms = [ms for result in results for ms in result.latencies_ms]
        print(
            f"  {clients} client(s): {throughput[clients]:8.2f} requests/s   "
            f"p50 {pooled.percentile_ms(50):8.1f} ms   p95 {pooled.percentile_ms(95):8.1f} ms"
        )
    problems = [line for results in runs.values() for r in results for line in r.mismatches + r.errors]
    answered = sum(len(r.latencies_ms) for results in runs.values() for r in results)
    report_check(
        "every answer under load equals the request's lone answer",
        not problems and answered == requests * len(CLIENTS) * args.repeats,
        f"{answered} answers, {len(problems)} problems{': ' + problems[0] if problems else ''}",
    )
    ratio = throughput[8] / throughput[1]
    verdict = "PASS" if ratio >= TARGET else "FAIL"
    print(f"RATIO serve throughput: 8 clients / 1 client: {ratio:.2f}x  [target >= {TARGET:.2f}x: {verdict}]")


if __name__ == "__main__":
    main()
