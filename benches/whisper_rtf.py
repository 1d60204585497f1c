#!/usr/bin/env python3
"""Real-time factor of `enigma transcribe` against faster-whisper (benches/whisper_rtf.sh runs this).

    whisper_rtf.py ENIGMA_BIN MODEL.enigma CT2_DIR WAV ROUNDS THREADS...

Per round and thread count, in alternating order: the wall time of a whole `enigma transcribe
--no-timestamps --threads T` process (start-up and load charged to it), and faster-whisper's
`transcribe(..., beam_size=1, temperature=0, without_timestamps=True)` consumed in a process where the
model (cpu_threads=T) is loaded and warmed up. RTF = seconds of processing / seconds of audio (lower is
faster). Prints every measurement, then TABLE and the medians.
"""
import os
import statistics
import subprocess
import sys
import time
import wave

import numpy as np
from faster_whisper import WhisperModel

enigma, model, ct2, wav, rounds = sys.argv[1:6]
threads = [int(t) for t in sys.argv[6:]]
with wave.open(wav, "rb") as w:
    audio = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0
secs = len(audio) / 16000.0
fw = {t: WhisperModel(ct2, device="cpu", compute_type="float32", cpu_threads=t) for t in threads}


def run_fw(t):
    segs, _ = fw[t].transcribe(audio, beam_size=1, best_of=1, temperature=0.0,
                               without_timestamps=True, condition_on_previous_text=False, vad_filter=False)
    return "".join(s.text for s in segs)


for t in threads:
    run_fw(t)  # warm-up
times = {(e, t): [] for e in ("enigma", "faster-whisper") for t in threads}
texts = {}
for r in range(int(rounds)):
    order = ["enigma", "faster-whisper"] if r % 2 == 0 else ["faster-whisper", "enigma"]
    for t in threads:
        for e in order:
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            if e == "enigma":
                out = subprocess.run([enigma, "transcribe", "-m", model, wav, "--no-timestamps",
                                      "--threads", str(t)], check=True, capture_output=True, text=True)
                text = out.stdout.strip()
            else:
                text = run_fw(t).strip()
            dt = time.perf_counter() - t0
            times[(e, t)].append(dt)
            texts[e] = text
            print(f"round {r + 1} threads {t} {e:15s} {dt:6.2f} s  RTF {dt / secs:.3f}  (load {load:.2f})")
print(f"enigma text:         {texts['enigma']}")
print(f"faster-whisper text: {texts['faster-whisper']}")
print("TABLE")
print(f"audio {secs:.1f} s; RTF = processing seconds / audio seconds (lower is faster); medians of {rounds} rounds")
print("threads  enigma RTF  faster-whisper RTF  speed-up (faster-whisper time / enigma time)")
for t in threads:
    e = statistics.median(times[("enigma", t)])
    f = statistics.median(times[("faster-whisper", t)])
    print(f"{t:7d}  {e / secs:10.3f}  {f / secs:18.3f}  {f / e:5.2f}x")
