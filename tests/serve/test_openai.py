"""The real `openai` client against `subspec serve` (started here on 127.0.0.1): chat,
completions, streaming, stop strings, seeded sampling, 8 concurrent requests (stepped
together, answers unchanged), malformed requests, disconnects, a 200-request load run from
16 clients, and the offloaded server with 4 slots.

Usage: python3 tests/serve/test_openai.py BINARY MODEL_DIR
"""
import concurrent.futures as cf
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import openai

binary, model = sys.argv[1], sys.argv[2]
sock = socket.socket()
sock.bind(("127.0.0.1", 0))
port = sock.getsockname()[1]
sock.close()
base = f"http://127.0.0.1:{port}"


def start(*extra):
    """Starts `subspec serve` on `port` and waits until /health answers."""
    proc = subprocess.Popen([binary, "serve", "--model", model, "--port", str(port),
                             "--queue", "16", "--ctx-len", "512", *extra])
    for _ in range(240):
        try:
            urllib.request.urlopen(base + "/health").read()
            return proc
        except OSError:
            if proc.poll() is not None:
                sys.exit(f"server exited with {proc.returncode}")
            time.sleep(0.5)
    proc.terminate()
    sys.exit("server did not start")


def metrics():
    text = urllib.request.urlopen(base + "/metrics").read().decode()
    return {k: float(v) for k, v in (l.split() for l in text.splitlines() if l and l[0] != "#")}


# A budget too small for --parallel slots is refused at start, saying how many it holds.
refused = subprocess.run([binary, "serve", "--model", model, "--port", str(port), "--ctx-len", "512",
                          "--budget", "200MiB", "--parallel", "64"], capture_output=True, text=True,
                         timeout=120)
assert refused.returncode != 0 and "for 64 sequences at once; it holds" in refused.stderr, refused.stderr

server = start("--parallel", "4")
try:
    client = openai.OpenAI(base_url=base + "/v1", api_key="none")
    name = client.models.list().data[0].id

    chat = client.chat.completions.create(
        model=name, messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=16, temperature=0)
    assert "Paris" in chat.choices[0].message.content, chat
    assert chat.usage.completion_tokens > 0

    def complete(**kw):
        args = dict(model=name, prompt="The three primary colours are", max_tokens=16, temperature=0)
        args.update(kw)
        return client.completions.create(**args)

    first = complete()
    plain = first.choices[0].text
    assert plain, "empty completion"
    assert first.usage.prompt_tokens_details.cached_tokens == 0, first.usage
    again = complete()
    assert again.choices[0].text == plain, (again, plain)
    # The slot kept the prompt's KV: only its last token ran again.
    assert again.usage.prompt_tokens_details.cached_tokens == first.usage.prompt_tokens - 1, again.usage

    # A chat's second turn starts with the first turn's tokens: their KV is reused (the
    # answer is checked against a fresh server's below).
    turn1 = [{"role": "user", "content": "Name a fruit."}]
    reply = client.chat.completions.create(model=name, messages=turn1, max_tokens=12, temperature=0)
    turn2 = turn1 + [{"role": "assistant", "content": reply.choices[0].message.content},
                     {"role": "user", "content": "And a vegetable?"}]
    second = client.chat.completions.create(model=name, messages=turn2, max_tokens=12, temperature=0)
    assert second.usage.prompt_tokens_details.cached_tokens >= reply.usage.prompt_tokens - 1, second.usage
    streamed = "".join(c.choices[0].text for c in complete(stream=True) if c.choices)
    assert streamed == plain, (streamed, plain)

    cut = plain.strip().split()[2]
    stopped = complete(stop=[cut])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == plain[:plain.index(cut)], (stopped, plain)

    a = complete(temperature=0.9, seed=7).choices[0].text
    b = complete(temperature=0.9, seed=7).choices[0].text
    assert a == b, (a, b)

    alone = [complete(prompt=f"Count to {i}:").choices[0].text for i in range(8)]
    with cf.ThreadPoolExecutor(8) as ex:
        together = list(ex.map(lambda i: complete(prompt=f"Count to {i}:").choices[0].text, range(8)))
    assert together == alone, (together, alone)
    # Concurrent generations were stepped together (one target pass for several).
    m = metrics()
    assert m["subspec_batched_steps_total"] > m["subspec_batches_total"] > 0, m
    # Two generations running side by side step together, not in alternating batches of
    # one (a batch's leader gathers every running generation's step). The same greedy
    # request twice: stepped together, both take the same steps, so nearly every batch
    # holds both (alternating batches hold ~1.4 on average).
    with cf.ThreadPoolExecutor(2) as ex:
        pair = list(ex.map(lambda _: complete(prompt="Count from one to twenty: one, two,",
                                              max_tokens=24), range(2)))
    after = metrics()
    batches = after["subspec_batches_total"] - m["subspec_batches_total"]
    stepped = after["subspec_batched_steps_total"] - m["subspec_batched_steps_total"]
    assert pair[0].choices[0].text == pair[1].choices[0].text, pair
    if pair[0].usage.completion_tokens >= 16:
        assert stepped >= 1.6 * batches, (stepped, batches, pair)
    print(f"serve: two concurrent generations took {stepped:.0f} steps in {batches:.0f} batches")

    def post(path, body):
        req = urllib.request.Request(base + path, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw)
            except ValueError:
                return e.code, {"raw": raw.decode(errors="replace")}

    bad = [
        (b"{not json", 400, "body"),
        (json.dumps({"prompt": 5}).encode(), 400, "prompt"),
        (json.dumps({"prompt": "x", "max_tokens": -1}).encode(), 400, "max_tokens"),
        (json.dumps({"prompt": "x", "max_tokens": 10**9}).encode(), 400, "max_tokens"),
        (json.dumps({"prompt": "x", "max_tokens": "ten"}).encode(), 400, "max_tokens"),
        (json.dumps({"prompt": "word " * 2000}).encode(), 400, "prompt"),
        (json.dumps({"prompt": "x", "model": "nope"}).encode(), 404, "model"),
        (json.dumps({"prompt": "x", "n": 2}).encode(), 400, "n"),
        (json.dumps({"prompt": "x", "temperature": -1}).encode(), 400, "temperature"),
    ]
    for body, status, field in bad:
        got, err = post("/v1/completions", body)
        assert got == status and err["error"]["param"] == field, (body[:40], got, err)
    got, err = post("/v1/chat/completions", json.dumps({"messages": "hi"}).encode())
    assert got == 400 and err["error"]["param"] == "messages", err
    got, err = post("/v1/completions", b'{"prompt":"' + b"a" * (2 << 20) + b'"}')
    assert got == 413 and err["error"]["param"] == "body", (got, err)
    assert "--max-body" in err["error"]["message"], err

    # A client that disconnects mid-stream frees its slot.
    for _ in range(5):
        s = client.completions.create(model=name, prompt="Once upon a time", max_tokens=400,
                                      temperature=0, stream=True)
        next(iter(s))
        s.close()
    assert complete().choices[0].text == plain
    m = metrics()
    assert m["subspec_tokens_predicted_total"] > 0 and m["subspec_streamed_bytes_total"] == 0, m
    assert m["subspec_prompt_tokens_cached_total"] >= again.usage.prompt_tokens - 1, m

    # A bounded load run: 200 requests from 16 concurrent clients (4 generate at a time,
    # the rest wait in the queue), every answer the one its request gets alone, and the
    # server's resident memory after a warm-up round growing by at most 5%.
    def rss_kib():
        with open(f"/proc/{server.pid}/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))

    prompts = [f"Name {i + 2} colours:" for i in range(10)]
    solo = {p: complete(prompt=p, max_tokens=3).choices[0].text for p in prompts}

    def request(i):
        p = prompts[i % len(prompts)]
        return p, complete(prompt=p, max_tokens=3).choices[0].text

    t0 = time.time()
    with cf.ThreadPoolExecutor(16) as ex:
        list(ex.map(request, range(32)))
        warm = rss_kib()
        answers = list(ex.map(request, range(200)))
    end = rss_kib()
    wrong = [(p, t, solo[p]) for p, t in answers if t != solo[p]]
    assert not wrong, wrong[:3]
    assert end <= warm * 1.05, f"resident memory grew from {warm} KiB to {end} KiB"
    print(f"serve: 200 requests from 16 clients in {time.time() - t0:.1f}s, all equal to their "
          f"solo answers; VmRSS {warm / 1024:.1f} MiB after the warm-up, {end / 1024:.1f} MiB after")
finally:
    server.terminate()
    server.wait(10)

# Offloaded at the smallest budget for 4 slots: the same text, concurrent requests stepped
# together with unchanged answers, and /metrics shows the slow tier's work.
server = start("--budget", "min", "--parallel", "4")
try:
    client = openai.OpenAI(base_url=base + "/v1", api_key="none")
    fresh = client.chat.completions.create(model=name, messages=turn2, max_tokens=12, temperature=0)
    assert fresh.usage.prompt_tokens_details.cached_tokens == 0, fresh.usage
    assert fresh.choices[0].message.content == second.choices[0].message.content, (fresh, second)
    assert complete().choices[0].text == plain
    with cf.ThreadPoolExecutor(4) as ex:
        together = list(ex.map(lambda i: complete(prompt=f"Count to {i}:").choices[0].text, range(8)))
    assert together == alone, (together, alone)
    m = metrics()
    assert m["subspec_streamed_bytes_total"] > 0 and m["subspec_stream_read_seconds_total"] > 0, m
    assert m["subspec_batched_steps_total"] > m["subspec_batches_total"] > 0, m
    print(f"serve offloaded: {m['subspec_batched_steps_total']:.0f} steps in "
          f"{m['subspec_batches_total']:.0f} batched target passes")
    print("serve: all checks passed")
finally:
    server.terminate()
    server.wait(10)
