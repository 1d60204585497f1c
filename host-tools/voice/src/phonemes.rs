//! Text to Piper phoneme ids, as piper-tts does it: espeak-ng's IPA clause by clause, the clause's terminator kept
//! as a "phoneme" (`,` `;` `:` followed by a space, `.` `?` `!` ending a sentence), `(lang)` switch flags dropped,
//! everything decomposed (NFD) into single codepoints, then BOS `^`, the pad `_` after every phoneme, EOS `$`.
//!
//! piper-tts calls libespeak-ng's `espeak_TextToPhonemesWithTerminator`, which Debian's espeak-ng 1.51 does not
//! have; we find the clause terminators in the text ourselves (the same punctuation espeak-ng ends clauses at) and
//! ask the `espeak-ng` command for each clause's IPA.

use crate::Error;
use std::collections::HashMap;
use std::process::Command;
use unicode_normalization::UnicodeNormalization;

/// One clause of text and the punctuation that ends it.
#[derive(Debug, Clone, PartialEq)]
pub struct Clause {
    pub text: String,
    pub terminator: Option<char>,
    pub end_of_sentence: bool,
    /// Its IPA when libespeak-ng made the clause; otherwise the `espeak-ng` command is asked for it.
    pub ipa: Option<String>,
}

/// Splits text into clauses at `. ! ? , ; :` followed by white space or the end (so "3.5" and "e.g" stay whole).
pub fn split_clauses(text: &str) -> Vec<Clause> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        // An ellipsis ends a clause but not the sentence, and espeak-ng gives it no punctuation (piper-tts then
        // joins the clauses without a space).
        if c == '.' && chars.peek() == Some(&'.') {
            while chars.peek() == Some(&'.') {
                chars.next();
            }
            let body = cur.trim().to_string();
            cur.clear();
            if !body.is_empty() {
                out.push(Clause {
                    text: body,
                    terminator: None,
                    end_of_sentence: false,
                    ipa: None,
                });
            }
            continue;
        }
        // "?!" ends once, at the last mark.
        if matches!(c, '!' | '?') && chars.peek().is_some_and(|n| matches!(n, '!' | '?')) {
            continue;
        }
        let at_break = chars.peek().is_none_or(|n| n.is_whitespace());
        if matches!(c, '.' | '!' | '?' | ',' | ';' | ':') && at_break {
            let body = cur.trim().to_string();
            cur.clear();
            if body.is_empty() {
                // A mark with no words before it ends the previous clause's sentence, if any.
                if let Some(last) = out.last_mut() {
                    let last: &mut Clause = last;
                    if matches!(c, '.' | '!' | '?') {
                        last.end_of_sentence = true;
                    }
                }
                continue;
            }
            out.push(Clause {
                text: body,
                terminator: Some(c),
                end_of_sentence: matches!(c, '.' | '!' | '?'),
                ipa: None,
            });
        } else {
            cur.push(c);
        }
    }
    let body = cur.trim();
    if !body.is_empty() {
        out.push(Clause {
            text: body.to_string(),
            terminator: None,
            end_of_sentence: true,
            ipa: None,
        });
    }
    out
}

/// Sentences (each a list of clauses), the unit synthesis and streaming work in.
pub fn split_sentences(text: &str) -> Vec<Vec<Clause>> {
    group_sentences(split_clauses(text))
}

/// Sentences as espeak-ng's library splits them, each clause with its IPA (piper-tts's way); our own split
/// (and the `espeak-ng` command per clause) when the library cannot be loaded.
pub fn espeak_sentences(voice: &str, text: &str) -> Result<Vec<Vec<Clause>>, Error> {
    match crate::espeak_lib::clauses(voice, text) {
        Ok(lib) => {
            let n = lib.len();
            let clauses = lib
                .into_iter()
                .enumerate()
                .filter_map(|(i, c)| lib_clause(&c.text, c.ipa, i + 1 < n))
                .collect();
            Ok(group_sentences(clauses))
        }
        Err(_) => Ok(split_sentences(text)),
    }
}

/// A clause of the library, `seg` its text: the punctuation it ends with is the terminator; `more` says
/// whether clauses follow.
fn lib_clause(seg: &str, ipa: String, more: bool) -> Option<Clause> {
    let body = seg.trim_end();
    let (text, terminator, end) = if body.ends_with("..") || body.ends_with('…') {
        (body.trim_end_matches(['.', '…']), None, false)
    } else {
        match body.chars().last() {
            Some(c @ ('.' | '!' | '?')) => (&body[..body.len() - c.len_utf8()], Some(c), true),
            Some(c @ (',' | ':' | ';')) => (&body[..body.len() - c.len_utf8()], Some(c), false),
            // espeak-ng ends a clause at a dash as at a semicolon.
            Some(c @ ('—' | '–')) => (&body[..body.len() - c.len_utf8()], Some(';'), false),
            _ => (body, None, !more),
        }
    };
    let text = text.trim();
    if text.is_empty() && ipa.trim().is_empty() {
        return None;
    }
    Some(Clause {
        text: text.to_string(),
        terminator,
        end_of_sentence: end,
        ipa: Some(strip_lang_flags(ipa.trim())),
    })
}

fn group_sentences(clauses: Vec<Clause>) -> Vec<Vec<Clause>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    for c in clauses {
        let end = c.end_of_sentence;
        cur.push(c);
        if end {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Clauses back to text, their punctuation restored (for engines that take text, such as espeak-ng alone).
pub fn clause_text(clauses: &[Clause]) -> String {
    clauses
        .iter()
        .map(|c| match c.terminator {
            Some(t) => format!("{}{t}", c.text),
            None => c.text.clone(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// espeak-ng's IPA for one clause, lines joined by a space, `(en)`-style language flags removed.
pub fn espeak_ipa(voice: &str, text: &str) -> Result<String, Error> {
    let out = Command::new("espeak-ng")
        .args(["-q", "--ipa", "-v", voice, "--", text])
        .output()
        .map_err(|e| Error::Espeak(format!("cannot run espeak-ng: {e}")))?;
    if !out.status.success() {
        return Err(Error::Espeak(format!(
            "espeak-ng -v {voice} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let s = String::from_utf8_lossy(&out.stdout);
    let joined = s
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    Ok(strip_lang_flags(&joined))
}

fn strip_lang_flags(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut depth = 0usize;
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' if depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// The phonemes (single codepoints, as strings) of one sentence.
pub fn sentence_phonemes(voice: &str, clauses: &[Clause]) -> Result<Vec<String>, Error> {
    let mut s = String::new();
    for c in clauses {
        match &c.ipa {
            Some(ipa) => s.push_str(ipa),
            None => s.push_str(&espeak_ipa(voice, &c.text)?),
        }
        if let Some(t) = c.terminator {
            s.push(t);
            if matches!(t, ',' | ':' | ';') {
                s.push(' ');
            }
        }
    }
    Ok(s.nfd().map(|c| c.to_string()).collect())
}

/// Phonemes to ids through the voice's map: `^ _ p1 _ p2 _ … $`. Phonemes missing from the map are left out
/// (as piper does) and returned so the caller can say so.
pub fn phonemes_to_ids(
    phonemes: &[String],
    map: &HashMap<String, Vec<i64>>,
) -> Result<(Vec<i64>, Vec<String>), Error> {
    let get = |k: &str| {
        map.get(k)
            .ok_or_else(|| Error::Voice(format!("the phoneme id map has no '{k}'")))
    };
    let (bos, eos, pad) = (get("^")?, get("$")?, get("_")?);
    let mut ids = Vec::with_capacity(phonemes.len() * 2 + 3);
    let mut missing = Vec::new();
    ids.extend(bos);
    ids.extend(pad);
    for p in phonemes {
        match map.get(p) {
            Some(v) => {
                ids.extend(v);
                ids.extend(pad);
            }
            None => missing.push(p.clone()),
        }
    }
    ids.extend(eos);
    Ok((ids, missing))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clauses_and_sentences() {
        let c = split_clauses("Hello, world. It costs 3.5 dollars!  Why?! Wait... no end");
        let got: Vec<_> = c
            .iter()
            .map(|c| (c.text.as_str(), c.terminator, c.end_of_sentence))
            .collect();
        assert_eq!(
            got,
            vec![
                ("Hello", Some(','), false),
                ("world", Some('.'), true),
                ("It costs 3.5 dollars", Some('!'), true),
                ("Why", Some('!'), true),
                ("Wait", None, false),
                ("no end", None, true),
            ]
        );
        assert_eq!(split_sentences("A, b. C").len(), 2);
        let s = split_sentences("Hi there, you. Bye");
        assert_eq!(clause_text(&s[0]), "Hi there, you.");
        assert_eq!(clause_text(&s[1]), "Bye");
        assert!(split_clauses("  ... ").is_empty());
    }

    #[test]
    fn ids_interleave_pad() {
        let map: HashMap<String, Vec<i64>> = [("_", 0), ("^", 1), ("$", 2), ("a", 14), ("b", 15)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), vec![v]))
            .collect();
        let ph: Vec<String> = ["a", "x", "b"].iter().map(|s| s.to_string()).collect();
        let (ids, missing) = phonemes_to_ids(&ph, &map).unwrap();
        assert_eq!(ids, vec![1, 0, 14, 0, 15, 0, 2]);
        assert_eq!(missing, vec!["x".to_string()]);
    }

    #[test]
    fn library_clauses_take_their_closing_mark() {
        let c = |seg: &str, more| lib_clause(seg, "x".into(), more).unwrap();
        let a = c("Dr. ", true);
        assert_eq!(
            (a.text.as_str(), a.terminator, a.end_of_sentence),
            ("Dr", Some('.'), true)
        );
        let a = c("Hello, ", true);
        assert_eq!((a.terminator, a.end_of_sentence), (Some(','), false));
        let a = c("Wait... ", true);
        assert_eq!(
            (a.text.as_str(), a.terminator, a.end_of_sentence),
            ("Wait", None, false)
        );
        let a = c("It costs nine dollars — ", true);
        assert_eq!((a.terminator, a.end_of_sentence), (Some(';'), false));
        let a = c("no end", false);
        assert_eq!((a.terminator, a.end_of_sentence), (None, true));
        assert!(lib_clause("  ", String::new(), false).is_none());
    }

    #[test]
    fn lang_flags_dropped() {
        assert_eq!(strip_lang_flags("(fr)bɔ̃ʒuːɹ(en) hi"), "bɔ̃ʒuːɹ hi");
    }
}
