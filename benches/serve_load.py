"""Load test of a running `enigma serve` (or any OpenAI-compatible server): C concurrent streaming clients for
D seconds each, for each C of a list.

    python3 benches/serve_load.py URL MODEL [--clients 1,8,32] [--seconds 30] [--max-tokens 64] [--api-key K]
    python3 benches/serve_load.py URL MODEL --chat-turns 3 [--clients 1] [--seconds 30]

Each client loops: POST /v1/completions with `stream: true` and `stream_options.include_usage`, reads the
server-sent events, and records the time to the first text chunk (from sending the request) and the time
between text chunks (inter-token latency); tokens are the usage chunk's `completion_tokens`. A request that
does not answer 200 and end with `data: [DONE]` is an error. A client starts no request after the D seconds;
the phase ends when its last request has. Aggregate tok/s = tokens of all requests / phase wall time.

With --chat-turns T, each client instead holds conversations of T turns (/v1/chat/completions, the whole
conversation sent each turn) and the table is per turn: prompt tokens, the tokens the server reports as cached
(`usage.prompt_tokens_details.cached_tokens`), and the time to the first token; beside it, the same conversation
sent under a first line no request had before (nothing to reuse): the prompt cache's effect is the difference.

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


def one_request(url, path, payload, headers):
    """Streams one request: (usage, ttft, [inter-token gaps], text) or raises."""
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=300)
    body = json.dumps({**payload, "stream": True, "stream_options": {"include_usage": True}})
    t0 = time.perf_counter()
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json", **headers})
    r = conn.getresponse()
    if r.status != 200:
        raise RuntimeError(f"status {r.status}: {r.read()[:200]!r}")
    first, last, gaps, usage, done, text = None, None, [], None, False, []
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
            usage = chunk["usage"]
        choice = (chunk.get("choices") or [{}])[0]
        piece = choice.get("text") or (choice.get("delta") or {}).get("content")
        if piece:
            text.append(piece)
            now = time.perf_counter()
            if first is None:
                first = now - t0
            else:
                gaps.append(now - last)
            last = now
    conn.close()
    if not done or usage is None:
        raise RuntimeError("the stream ended without its usage chunk and [DONE]")
    return usage, first, gaps, "".join(text)


def completion(url, model, prompt, max_tokens, headers):
    usage, first, gaps, _ = one_request(
        url, "/v1/completions",
        {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.8}, headers)
    return usage["completion_tokens"], first, gaps


USER_TURNS = ["Tell me a story about a cat.", "What happened next?", "And how did it end?", "Tell me another one."]


def chats(url, model, clients, seconds, turns, max_tokens, headers):
    """Conversations of `turns` turns, each turn sending the whole conversation so far: per turn, the time to
    the first token and the prompt tokens the server reports as cached (a provider that reuses the previous
    turns' keys and values reports them, and its later turns start sooner)."""
    stop_at = time.perf_counter() + seconds
    lock = threading.Lock()
    per_turn = [{"ttft": [], "prompt": [], "cached": [], "cold_ttft": [], "cold_cached": []} for _ in range(turns)]
    cold_n = [0]
    errors = []

    def client(i):
        while time.perf_counter() < stop_at:
            msgs = [{"role": "system", "content": f"You are storyteller number {i}."}]
            for t in range(turns):
                msgs.append({"role": "user", "content": USER_TURNS[t % len(USER_TURNS)]})
                try:
                    usage, ttft, _, reply = one_request(
                        url, "/v1/chat/completions",
                        {"model": model, "messages": msgs, "max_tokens": max_tokens, "temperature": 0.8}, headers)
                except Exception as e:  # every failure counts, whatever it is
                    with lock:
                        errors.append(repr(e))
                    break
                # The same conversation under a first line no other request had: the same length with nothing
                # to reuse, so its time to the first token is the uncached baseline for this turn.
                with lock:
                    cold_n[0] += 1
                    tag = cold_n[0]
                cold = [{"role": "system", "content": f"You are storyteller number {i}, take {tag}."}] + msgs[1:]
                try:
                    cold_usage, cold_ttft, _, _ = one_request(
                        url, "/v1/chat/completions",
                        {"model": model, "messages": cold, "max_tokens": 1, "temperature": 0.8}, headers)
                except Exception as e:  # every failure counts, whatever it is
                    with lock:
                        errors.append(repr(e))
                    break
                msgs.append({"role": "assistant", "content": reply})
                with lock:
                    if cold_ttft is not None:
                        per_turn[t]["cold_ttft"].append(cold_ttft)
                    per_turn[t]["cold_cached"].append(
                        (cold_usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0))
                    if ttft is not None:
                        per_turn[t]["ttft"].append(ttft)
                    per_turn[t]["prompt"].append(usage["prompt_tokens"])
                    per_turn[t]["cached"].append((usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return per_turn, errors


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
                tokens, ttft, gaps = completion(url, model, prompt, max_tokens, headers)
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
    ap.add_argument("--chat-turns", type=int, default=0,
                    help="instead of the load phases: conversations of this many turns, one client each of --clients")
    a = ap.parse_args()
    headers = {"Authorization": f"Bearer {a.api_key}"} if a.api_key else {}
    failed = False
    if a.chat_turns:
        clients = int(a.clients.split(",")[0])
        per_turn, errors = chats(a.url, a.model, clients, a.seconds, a.chat_turns, a.max_tokens, headers)
        mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")
        print(f"{'model':<14} {'turn':>4} {'requests':>8} {'prompt tok':>10} {'cached tok':>10} {'TTFT p50':>9} "
              f"{'TTFT p99':>9} {'cold cached':>11} {'cold p50':>9} {'cold p99':>9}")
        for t, r in enumerate(per_turn):
            print(f"{a.label or a.model:<14} {t + 1:>4} {len(r['prompt']):>8} {mean(r['prompt']):>10.1f} "
                  f"{mean(r['cached']):>10.1f} {percentile(r['ttft'], 50) * 1000:>6.0f} ms "
                  f"{percentile(r['ttft'], 99) * 1000:>6.0f} ms {mean(r['cold_cached']):>11.1f} "
                  f"{percentile(r['cold_ttft'], 50) * 1000:>6.0f} ms "
                  f"{percentile(r['cold_ttft'], 99) * 1000:>6.0f} ms", flush=True)
        if errors:
            print(f"  {len(errors)} errors; first: {errors[0]}", file=sys.stderr)
        sys.exit(1 if errors else 0)
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
