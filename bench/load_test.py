"""Load test of the served student: N concurrent clients on loopback for a bounded time (and a bounded
number of requests), then stop. Reports errors, p50/p95/p99 latency and requests/s.

The server runs in a child process under waitress (the production WSGI server the README documents),
bound to 127.0.0.1 on a free port; nothing else is contacted.

usage: python bench/load_test.py --run runs/quick [--clients 32] [--seconds 60] [--max-requests 200000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

SENTENCES = ["have a lovely day", "they are all vermin and should leave", "what a game last night #football",
             "women are too stupid to vote", "@user thanks for the follow", "I can't stand those people"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--max-requests", type=int, default=200_000)
    ap.add_argument("--model", help="model to query (default: the run's best student)")
    ap.add_argument("--threads", type=int, default=32, help="waitress worker threads (>= clients: a thread waits on the batcher)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    a = ap.parse_args()
    run = Path(a.run).resolve()
    from distillora.rundir import RunDir

    model = a.model or RunDir(run).results().best_student
    port = free_port()
    env = {**os.environ, "DISTILLORA_RUN": str(run), "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen([sys.executable, "-m", "waitress", "--host", "127.0.0.1", f"--port={port}",
                               f"--threads={a.threads}", "--call", "distillora.serve:create_app"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/healthz")
                if c.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            print("server did not become healthy", file=sys.stderr)
            return 1
        lat, errors, lock = [], [], threading.Lock()
        count = [0]
        stop_at = time.time() + a.seconds

        def client(i: int):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            k = i
            while time.time() < stop_at:
                with lock:
                    if count[0] >= a.max_requests:
                        return
                    count[0] += 1
                body = json.dumps({"text": SENTENCES[k % len(SENTENCES)], "models": [model]})
                k += 1
                t0 = time.perf_counter()
                try:
                    conn.request("POST", "/api/predict", body, {"Content-Type": "application/json"})
                    resp = conn.getresponse()
                    data = resp.read()
                    ok = resp.status == 200 and "predictions" in json.loads(data)
                except Exception as e:  # a dropped connection counts as an error, then reconnect
                    ok, data = False, repr(e).encode()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                ms = (time.perf_counter() - t0) * 1000
                with lock:
                    (lat if ok else errors).append(ms if ok else data[:200])

        start = time.perf_counter()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(timeout=30)
    arr = np.array(lat)
    result = {"run": str(run), "model": model, "clients": a.clients, "seconds": wall, "requests": len(lat) + len(errors),
              "errors": len(errors), "error_samples": [e.decode(errors="replace") for e in errors[:5]],
              "p50_ms": float(np.percentile(arr, 50)), "p95_ms": float(np.percentile(arr, 95)),
              "p99_ms": float(np.percentile(arr, 99)), "requests_per_s": len(lat) / wall}
    print("| clients | seconds | requests | errors | p50 ms | p95 ms | p99 ms | requests/s |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {a.clients} | {wall:.0f} | {result['requests']} | {result['errors']} | {result['p50_ms']:.1f} | "
          f"{result['p95_ms']:.1f} | {result['p99_ms']:.1f} | {result['requests_per_s']:.0f} |")
    print(f"\nmodel {model} of {run}, waitress {a.threads} threads, loopback only")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"load_test_{a.clients}clients.json").write_text(json.dumps(result, indent=2))
    return 0 if not errors else 1


if __name__ == "__main__":
    raise SystemExit(main())
