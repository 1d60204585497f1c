#!/usr/bin/env python3
"""Writes core-nostd/src/wordpiece_tables.rs: the Unicode tables of the BERT normalizer and pre-tokenizer
(Hugging Face tokenizers' BertNormalizer and BertPreTokenizer), from Python's unicodedata.

- OTHER: category C* (Cc, Cf, Cs, Co, Cn), which `clean_text` drops;
- PUNCT: category P* (Pc, Pd, Ps, Pe, Pi, Pf, Po), split off as words of their own;
- MARKS: category Mn, which accent stripping drops after NFD;
- DECOMP: each character whose NFD, less its Mn marks, differs from itself: up to 3 characters (0 = none).
  Hangul syllables are decomposed by rule in the code, not listed.
"""
import sys
import unicodedata


def ranges(pred):
    out, start = [], None
    for cp in range(0x110000):
        ok = pred(cp)
        if ok and start is None:
            start = cp
        if not ok and start is not None:
            out.append((start, cp - 1))
            start = None
    if start is not None:
        out.append((start, 0x10FFFF))
    return out


def cat(cp):
    return unicodedata.category(chr(cp))


def main(path):
    other = ranges(lambda cp: cat(cp).startswith("C"))
    punct = ranges(lambda cp: cat(cp).startswith("P"))
    marks = ranges(lambda cp: cat(cp) == "Mn")
    decomp = []
    for cp in range(0x110000):
        if 0xAC00 <= cp <= 0xD7A3 or 0xD800 <= cp <= 0xDFFF:
            continue
        c = chr(cp)
        d = unicodedata.normalize("NFD", c)
        if d == c:
            continue
        kept = [ord(x) for x in d if unicodedata.category(x) != "Mn"]
        if kept == [cp]:
            continue
        assert len(kept) <= 3, (hex(cp), kept)
        decomp.append((cp, kept + [0] * (3 - len(kept))))
    w = []
    w.append("//! Unicode tables of the BERT normalizer and pre-tokenizer. Made by scripts/wordpiece_tables.py from")
    w.append(f"//! Python's unicodedata (Unicode {unicodedata.unidata_version}); ranges are inclusive and sorted.")
    w.append("")
    for name, rs, doc in [
        ("OTHER", other, "Category C*: dropped by `clean_text`."),
        ("PUNCT", punct, "Category P*: split off as words of their own."),
        ("MARKS", marks, "Category Mn: dropped by accent stripping."),
    ]:
        w.append(f"/// {doc}")
        w.append(f"pub static {name}: [(u32, u32); {len(rs)}] = [")
        w.extend(f"    (0x{a:X}, 0x{b:X})," for a, b in rs)
        w.append("];")
        w.append("")
    w.append("/// NFD less its Mn marks, for each character where that differs from itself (0 pads).")
    w.append(f"pub static DECOMP: [(u32, [u32; 3]); {len(decomp)}] = [")
    w.extend(f"    (0x{cp:X}, [0x{k[0]:X}, 0x{k[1]:X}, 0x{k[2]:X}])," for cp, k in decomp)
    w.append("];")
    with open(path, "w") as f:
        f.write("\n".join(w) + "\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "core-nostd/src/wordpiece_tables.rs")
