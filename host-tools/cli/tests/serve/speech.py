"""Drives `POST /v1/audio/speech` of a running `enigma serve` with the official `openai` Python client.

    python3 speech.py BASE_URL OUT_DIR

Writes OUT_DIR/speech.wav (response_format wav) and OUT_DIR/speech.pcm (pcm, at speed 2), checks that an
mp3 request is refused with a 400 naming response_format, and prints what it saw as JSON.
"""
import json
import sys

import openai

base, out_dir = sys.argv[1], sys.argv[2]
oa = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
text = "Hello from Enigma Engine. The network cable is out."
out = {}

r = oa.audio.speech.create(model="tts-1", voice="alloy", input=text, response_format="wav")
r.write_to_file(out_dir + "/speech.wav")
out["wav_content_type"] = r.response.headers.get("content-type")

r = oa.audio.speech.create(model="tts-1", voice="alloy", input=text, response_format="pcm", speed=2.0)
r.write_to_file(out_dir + "/speech.pcm")
out["pcm_content_type"] = r.response.headers.get("content-type")
out["pcm_sample_rate"] = r.response.headers.get("x-sample-rate")

try:
    oa.audio.speech.create(model="tts-1", voice="alloy", input=text, response_format="mp3")
    out["mp3"] = "accepted"
except openai.BadRequestError as e:
    out["mp3"] = {"status": e.status_code, "param": (e.body or {}).get("param"), "message": str(e)}

print(json.dumps(out))
