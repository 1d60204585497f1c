#!/usr/bin/env python3
"""Reference outputs for host-tools/voice/tests/piper.rs, from the pip packages themselves.

  piper_reference.py audio VOICE.onnx 'IDS_JSON' NOISE LENGTH NOISE_W   raw little-endian f32 audio on stdout,
      from onnxruntime (pip) running the voice on those phoneme ids: the model's output before any post-processing
  piper_reference.py ids VOICE.onnx < sentences.txt                     JSON: per input line, piper-tts's phoneme
      ids of each sentence (piper.PiperVoice.phonemize + phonemes_to_ids, piper's own espeak-ng)
"""
import json
import sys


def main() -> int:
    mode, voice = sys.argv[1], sys.argv[2]
    if mode == "audio":
        import numpy as np
        import onnxruntime

        ids = json.loads(sys.argv[3])
        scales = np.array([float(x) for x in sys.argv[4:7]], dtype=np.float32)
        sess = onnxruntime.InferenceSession(voice, providers=["CPUExecutionProvider"])
        out = sess.run(
            ["output"],
            {
                "input": np.array([ids], dtype=np.int64),
                "input_lengths": np.array([len(ids)], dtype=np.int64),
                "scales": scales,
            },
        )[0]
        sys.stdout.buffer.write(out.astype("<f4").tobytes())
        return 0
    if mode == "ids":
        from piper import PiperVoice

        v = PiperVoice.load(voice)
        out = []
        for line in sys.stdin.read().splitlines():
            out.append([v.phonemes_to_ids(p) for p in v.phonemize(line)])
        json.dump(out, sys.stdout)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
