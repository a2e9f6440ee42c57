"""The real `openai` client against `subspec serve` (started here on 127.0.0.1).

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

    plain = complete().choices[0].text
    assert plain, "empty completion"
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
finally:
    server.terminate()
    server.wait(10)

# Offloaded at the smallest budget: the same text, and /metrics shows the slow tier's work.
server = start("--budget", "min")
try:
    client = openai.OpenAI(base_url=base + "/v1", api_key="none")
    assert complete().choices[0].text == plain
    m = metrics()
    assert m["subspec_streamed_bytes_total"] > 0 and m["subspec_stream_read_seconds_total"] > 0, m
    print("serve: all checks passed")
finally:
    server.terminate()
    server.wait(10)
