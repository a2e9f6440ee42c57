"""Aggregate tokens/s and per-request latency of `subspec serve` at 1, 2, 4, 8 concurrent
requests (each concurrency level sends 8 requests of greedy `max_tokens` 32).

Usage: python3 bench/serve_load.py http://127.0.0.1:8080
"""
import concurrent.futures as cf
import json
import sys
import time
import urllib.request

base = sys.argv[1]


def one(i):
    body = json.dumps({"prompt": f"Write a short story about robot number {i}.",
                       "max_tokens": 32, "temperature": 0}).encode()
    t0 = time.time()
    req = urllib.request.Request(base + "/v1/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        out = json.loads(r.read())
    return time.time() - t0, out["usage"]["completion_tokens"]


for c in (1, 2, 4, 8):
    t0 = time.time()
    with cf.ThreadPoolExecutor(c) as ex:
        res = list(ex.map(one, range(8)))
    wall = time.time() - t0
    toks = sum(n for _, n in res)
    lat = sorted(s for s, _ in res)
    print(f"concurrency {c}: {toks / wall:.1f} tokens/s aggregate, latency median {lat[4]:.2f}s max {lat[-1]:.2f}s")
