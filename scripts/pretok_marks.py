#!/usr/bin/env python3
"""Writes core-nostd/src/pretok_marks.rs: the characters `char::is_alphabetic` may call alphabetic that the
regex class \\p{L} does not (combining marks Mn/Mc/Me, letter numbers Nl, letter-like symbols So such as
circled letters), as sorted inclusive ranges, from Python's unicodedata. Run from the repository root."""
import unicodedata

ranges = []
for cp in range(0x110000):
    c = chr(cp)
    cat = unicodedata.category(c)
    if cat in ("Mn", "Mc", "Me", "Nl") or (cat == "So" and "LETTER" in unicodedata.name(c, "")):
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
body = "\n".join("    (0x%X, 0x%X)," % (a, b) for a, b in ranges)
with open("core-nostd/src/pretok_marks.rs", "w") as f:
    f.write(
        "//! Characters that are alphabetic (`char::is_alphabetic`) without being letters (`\\p{L}`): combining\n"
        "//! marks (Mn, Mc, Me), letter numbers (Nl) and the letter-like symbols (So) such as circled letters. Made by\n"
        f"//! scripts/pretok_marks.py from Python's unicodedata (Unicode {unicodedata.unidata_version}); ranges are\n"
        "//! inclusive and sorted.\n\n"
        f"pub static NOT_LETTERS: [(u32, u32); {len(ranges)}] = [\n{body}\n];\n"
    )
