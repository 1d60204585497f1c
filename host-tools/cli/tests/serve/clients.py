"""Drives a running `enigma serve` with the official `openai` and `ollama` Python clients.

    python3 clients.py BASE_URL MODEL PROMPT N

Asserts what the clients can see (shapes, usage counts, streamed text equal to the whole reply, the same
seed giving the same text through both clients) and prints one JSON object of what the Rust test compares
with `enigma run` (the greedy completion), how many log-probabilities came back and how many prompt tokens
a second chat turn had cached: the Rust test asserts those against the batching engine.
"""
import json
import sys

import ollama
import openai

base, model, prompt, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
oa = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
ol = ollama.Client(host=base)
out = {}

# Models list, both ways.
assert [m.id for m in oa.models.list().data] == [model], oa.models.list()
assert [m.model for m in ol.list().models] == [model], ol.list()

# Completion: greedy, and the same streamed.
c = oa.completions.create(model=model, prompt=prompt, max_tokens=n, temperature=0)
text = c.choices[0].text
u = c.usage
assert u.completion_tokens >= 1 and u.completion_tokens <= n, u
assert u.total_tokens == u.prompt_tokens + u.completion_tokens, u
assert u.prompt_tokens_details.cached_tokens >= 0, u
assert c.choices[0].finish_reason in ("stop", "length"), c
streamed = "".join(
    ch.choices[0].text
    for ch in oa.completions.create(model=model, prompt=prompt, max_tokens=n, temperature=0, stream=True)
    if ch.choices
)
assert streamed == text, (streamed, text)
out["completion"] = text

# A stop string ends the text before it, with finish_reason "stop", through both clients.
word = text.split()[3]
stopped = oa.completions.create(model=model, prompt=prompt, max_tokens=n, temperature=0, stop=[word])
assert stopped.choices[0].text == text[:text.index(word)], (stopped.choices[0].text, word, text)
assert stopped.choices[0].finish_reason == "stop", stopped
og_stop = ol.generate(model=model, prompt=prompt, stream=False, options={"temperature": 0, "num_predict": n, "stop": [word]})
assert og_stop.response == text[:text.index(word)] and og_stop.done_reason == "stop", og_stop
out["completion_usage"] = u.model_dump()

# Chat, whole and streamed (with the usage chunk).
msgs = [{"role": "system", "content": "You tell short stories."}, {"role": "user", "content": "Tell me about a cat."}]
r = oa.chat.completions.create(model=model, messages=msgs, max_tokens=n, temperature=0)
reply = r.choices[0].message.content
assert r.choices[0].message.role == "assistant"
assert r.usage.prompt_tokens > 0 and 1 <= r.usage.completion_tokens <= n, r.usage
parts, usage, finish = [], None, None
for ch in oa.chat.completions.create(model=model, messages=msgs, max_tokens=n, temperature=0, stream=True,
                                     stream_options={"include_usage": True}):
    if ch.usage is not None:
        usage = ch.usage
    for choice in ch.choices:
        parts.append(choice.delta.content or "")
        finish = choice.finish_reason or finish
assert "".join(parts) == reply, (parts, reply)
assert usage is not None and usage.completion_tokens == r.usage.completion_tokens, usage
assert finish == r.choices[0].finish_reason, finish
out["chat"] = reply

# A second turn: a longer prompt; what the provider reuses from the first is reported as cached (the
# batching engine reports the first turn's whole blocks).
turn2 = msgs + [{"role": "assistant", "content": reply}, {"role": "user", "content": "And then?"}]
r2 = oa.chat.completions.create(model=model, messages=turn2, max_tokens=4, temperature=0)
assert r2.usage.prompt_tokens > r.usage.prompt_tokens, (r2.usage, r.usage)
cached = r2.usage.prompt_tokens_details.cached_tokens
assert 0 <= cached < r2.usage.prompt_tokens, r2.usage
out["second_turn_cached"] = cached

# Ollama chat and generate: the same greedy reply, counters on the last chunk.
oc = ol.chat(model=model, messages=msgs, stream=False, options={"temperature": 0, "num_predict": n})
assert oc.message.content == reply, (oc.message.content, reply)
assert oc.done and oc.eval_count == r.usage.completion_tokens and oc.prompt_eval_count == r.usage.prompt_tokens, oc
assert oc.total_duration > 0 and oc.eval_duration >= 0 and oc.prompt_eval_duration > 0, oc
chunks = list(ol.chat(model=model, messages=msgs, stream=True, options={"temperature": 0, "num_predict": n}))
assert "".join(c.message.content for c in chunks) == reply
assert chunks[-1].done and chunks[-1].done_reason in ("stop", "length"), chunks[-1]
og = ol.generate(model=model, prompt=prompt, stream=False, options={"temperature": 0, "num_predict": n})
assert og.response == text, (og.response, text)

# The same seed, the same sampled text, through both clients (and again).
kw = dict(temperature=0.9, top_p=0.95)
a = oa.completions.create(model=model, prompt=prompt, max_tokens=n, seed=42, **kw).choices[0].text
b = ol.generate(model=model, prompt=prompt, stream=False, options=dict(seed=42, num_predict=n, **kw)).response
a2 = oa.completions.create(model=model, prompt=prompt, max_tokens=n, seed=42, **kw).choices[0].text
assert a == b == a2, (a, b, a2)
out["seeded"] = a

# Log-probabilities: their shape here, their count in the Rust test.
lp = oa.chat.completions.create(model=model, messages=msgs, max_tokens=4, temperature=0, logprobs=True, top_logprobs=2)
content = (lp.choices[0].logprobs.content or []) if lp.choices[0].logprobs else []
for t in content:
    assert t.logprob <= 0 and len(t.top_logprobs) <= 2, t
out["logprobs_given"] = len(content)
olp = ol.chat(model=model, messages=msgs, stream=False, options={"temperature": 0, "num_predict": 4},
              logprobs=True, top_logprobs=2).logprobs or []
for t in olp:
    assert t.logprob <= 0 and len(t.top_logprobs or []) <= 2, t

# Errors reach the clients as their own exception types.
try:
    oa.completions.create(model="no-such-model", prompt="x")
    raise AssertionError("unknown model accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400 and e.body["param"] == "model", e.body
try:
    ol.generate(model="no-such-model", prompt="x")
    raise AssertionError("unknown model accepted")
except ollama.ResponseError as e:
    assert e.status_code == 400 and "no-such-model" in e.error, e

print(json.dumps(out))
