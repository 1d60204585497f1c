"""Load test of a running `enigma serve` (or any OpenAI-compatible server): C concurrent streaming clients for
D seconds each, for each C of a list.

    python3 benches/serve_load.py URL MODEL [--clients 1,8,32] [--seconds 30] [--max-tokens 64] [--api-key K]

Each client loops: POST /v1/completions with `stream: true` and `stream_options.include_usage`, reads the
server-sent events, and records the time to the first text chunk (from sending the request) and the time
between text chunks (inter-token latency); tokens are the usage chunk's `completion_tokens`. A request that
does not answer 200 and end with `data: [DONE]` is an error. A client starts no request after the D seconds;
the phase ends when its last request has. Aggregate tok/s = tokens of all requests / phase wall time.

Raw http.client rather than the openai package, so the client side costs as little CPU as it can: on a
small machine the load generator shares the cores with the server. Prints one table row per C.
"""
import argparse
import http.client
import json
import statistics
import sys
import threading
import time
from urllib.parse import urlparse

PROMPTS = [
    "Once upon a time, there was a little girl who",
    "The old dog walked slowly to the park and",
    "Tom and his sister found a big red box under the tree.",
    "In a small town by the sea lived a fisherman who",
]


def percentile(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))
    return xs[k]


def one_request(url, model, prompt, max_tokens, headers):
    """(tokens, ttft, [inter-token gaps]) or raises."""
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=300)
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.8,
                       "stream": True, "stream_options": {"include_usage": True}})
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json", **headers})
    r = conn.getresponse()
    if r.status != 200:
        raise RuntimeError(f"status {r.status}: {r.read()[:200]!r}")
    first, last, gaps, tokens, done = None, None, [], None, False
    for raw in r:
        line = raw.strip()
        if not line.startswith(b"data: "):
            continue
        data = line[6:]
        if data == b"[DONE]":
            done = True
            break
        chunk = json.loads(data)
        if "error" in chunk:
            raise RuntimeError(f"error in stream: {chunk['error']}")
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        if chunk.get("choices") and chunk["choices"][0].get("text"):
            now = time.perf_counter()
            if first is None:
                first = now - t0
            else:
                gaps.append(now - last)
            last = now
    conn.close()
    if not done or tokens is None:
        raise RuntimeError("the stream ended without its usage chunk and [DONE]")
    return tokens, first, gaps


def phase(url, model, clients, seconds, max_tokens, headers):
    stop_at = time.perf_counter() + seconds
    lock = threading.Lock()
    res = {"tokens": 0, "requests": 0, "errors": 0, "ttft": [], "itl": [], "first_error": None}

    def client(i):
        n = 0
        while time.perf_counter() < stop_at:
            prompt = PROMPTS[(i + n) % len(PROMPTS)]
            n += 1
            try:
                tokens, ttft, gaps = one_request(url, model, prompt, max_tokens, headers)
            except Exception as e:  # every failure counts, whatever it is
                with lock:
                    res["errors"] += 1
                    res["first_error"] = res["first_error"] or repr(e)
                continue
            with lock:
                res["tokens"] += tokens
                res["requests"] += 1
                if ttft is not None:
                    res["ttft"].append(ttft)
                res["itl"].extend(gaps)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    res["wall"] = time.perf_counter() - t0
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("model")
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--api-key")
    ap.add_argument("--label", default="")
    a = ap.parse_args()
    headers = {"Authorization": f"Bearer {a.api_key}"} if a.api_key else {}
    failed = False
    print(f"{'model':<14} {'clients':>7} {'requests':>8} {'errors':>6} {'tokens':>7} {'tok/s':>8} "
          f"{'TTFT p50':>9} {'TTFT p99':>9} {'ITL p50':>8} {'ITL p99':>8}")
    for c in [int(x) for x in a.clients.split(",")]:
        r = phase(a.url, a.model, c, a.seconds, a.max_tokens, headers)
        ms = lambda x: f"{x * 1000:.0f} ms"
        print(f"{a.label or a.model:<14} {c:>7} {r['requests']:>8} {r['errors']:>6} {r['tokens']:>7} "
              f"{r['tokens'] / r['wall']:>8.1f} {ms(percentile(r['ttft'], 50)):>9} {ms(percentile(r['ttft'], 99)):>9} "
              f"{ms(percentile(r['itl'], 50)):>8} {ms(percentile(r['itl'], 99)):>8}", flush=True)
        if r["errors"]:
            failed = True
            print(f"  first error: {r['first_error']}", file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
