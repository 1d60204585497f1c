//! Lip-sync data: when each phoneme, word and viseme is spoken, from the Piper model's own durations (see
//! [`crate::onnx`]), and the avatar's idle / listening / talking state.

use crate::phonemes::Clause;
use crate::Speech;
pub use enigma_modules::capability::AvatarState;
use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PhonemeTiming {
    pub phoneme: String,
    pub start: f64,
    pub end: f64,
}

/// A word: its IPA, and its text when espeak-ng's words line up one to one with the text's.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WordTiming {
    pub word: Option<String>,
    pub ipa: String,
    pub start: f64,
    pub end: f64,
}

/// A mouth shape, in the 15 visemes of the Oculus/Meta lip-sync set (`sil PP FF TH DD kk CH SS nn RR aa E ih oh
/// ou`), which avatar rigs commonly carry.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct VisemeTiming {
    pub viseme: &'static str,
    pub start: f64,
    pub end: f64,
}

/// A change of state at a time (seconds from the start of the stream).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StateEvent {
    pub state: AvatarState,
    pub at: f64,
}

/// Per phoneme: its id and the pad after it (`^ _ p1 _ p2 _ … $`), so the phoneme lasts both ids' samples.
/// Empty when the durations do not match the ids (a model without the durations output).
pub fn phoneme_timings(
    phonemes: &[String],
    samples_per_id: &[u32],
    rate: u32,
) -> Vec<PhonemeTiming> {
    if samples_per_id.len() != 2 * phonemes.len() + 3 || rate == 0 {
        return Vec::new();
    }
    let r = f64::from(rate);
    let mut t = u64::from(samples_per_id[0]) + u64::from(samples_per_id[1]);
    phonemes
        .iter()
        .enumerate()
        .map(|(k, p)| {
            let start = t;
            t += u64::from(samples_per_id[2 + 2 * k]) + u64::from(samples_per_id[3 + 2 * k]);
            PhonemeTiming {
                phoneme: p.clone(),
                start: start as f64 / r,
                end: t as f64 / r,
            }
        })
        .collect()
}

fn is_break(p: &str) -> bool {
    p.chars()
        .all(|c| c.is_whitespace() || ",.;:!?\"-()".contains(c))
}

/// Words are the runs of phonemes between spaces and punctuation.
pub fn word_timings(phonemes: &[PhonemeTiming], clauses: &[Clause]) -> Vec<WordTiming> {
    let mut out: Vec<WordTiming> = Vec::new();
    let mut in_word = false;
    for p in phonemes {
        if is_break(&p.phoneme) {
            in_word = false;
            continue;
        }
        match out.last_mut() {
            Some(w) if in_word => {
                w.ipa.push_str(&p.phoneme);
                w.end = p.end;
            }
            _ => out.push(WordTiming {
                word: None,
                ipa: p.phoneme.clone(),
                start: p.start,
                end: p.end,
            }),
        }
        in_word = true;
    }
    let words: Vec<&str> = clauses
        .iter()
        .flat_map(|c| c.text.split_whitespace())
        .collect();
    if words.len() == out.len() {
        for (w, t) in out.iter_mut().zip(words) {
            w.word = Some(t.to_string());
        }
    }
    out
}

/// The viseme of one IPA symbol; `None` for marks that shape no mouth of their own (stress, length, diacritics).
pub fn viseme_of(p: &str) -> Option<&'static str> {
    let c = p.chars().next()?;
    Some(match c {
        _ if is_break(p) => "sil",
        'p' | 'b' | 'm' => "PP",
        'f' | 'v' => "FF",
        'θ' | 'ð' => "TH",
        't' | 'd' | 'ɾ' => "DD",
        'k' | 'g' | 'ɡ' | 'ŋ' | 'x' | 'h' | 'ʔ' => "kk",
        'ʃ' | 'ʒ' | 'ʧ' | 'ʤ' | 'ç' => "CH",
        's' | 'z' => "SS",
        'n' | 'l' | 'ɫ' => "nn",
        'ɹ' | 'r' | 'ɚ' | 'ɝ' => "RR",
        'a' | 'ɑ' | 'æ' | 'ʌ' | 'ɐ' => "aa",
        'e' | 'ɛ' | 'ə' | 'ɜ' => "E",
        'i' | 'ɪ' | 'ᵻ' | 'j' | 'y' => "ih",
        'o' | 'ɔ' | 'ɒ' => "oh",
        'u' | 'ʊ' | 'w' => "ou",
        _ => return None,
    })
}

/// Visemes over time: consecutive phonemes of the same shape merged, marks given to the shape before them.
pub fn visemes(phonemes: &[PhonemeTiming]) -> Vec<VisemeTiming> {
    let mut out: Vec<VisemeTiming> = Vec::new();
    for p in phonemes {
        match (viseme_of(&p.phoneme), out.last_mut()) {
            (Some(v), Some(last)) if last.viseme == v => last.end = p.end,
            (None, Some(last)) => last.end = p.end,
            (v, _) => out.push(VisemeTiming {
                viseme: v.unwrap_or("sil"),
                start: p.start,
                end: p.end,
            }),
        }
    }
    out
}

/// Appends a sentence to a longer speech, its timings shifted by the audio already there.
pub fn append(all: &mut Speech, s: Speech) {
    let off = all.duration_s();
    all.phonemes.extend(s.phonemes.into_iter().map(|mut p| {
        p.start += off;
        p.end += off;
        p
    }));
    all.words.extend(s.words.into_iter().map(|mut w| {
        w.start += off;
        w.end += off;
        w
    }));
    all.visemes.extend(s.visemes.into_iter().map(|mut v| {
        v.start += off;
        v.end += off;
        v
    }));
    all.samples.extend(s.samples);
    all.sample_rate = s.sample_rate;
}

/// The state stream around one utterance: talking from 0 to its end, then idle.
pub fn talking_states(duration_s: f64) -> Vec<StateEvent> {
    vec![
        StateEvent {
            state: AvatarState::Talking,
            at: 0.0,
        },
        StateEvent {
            state: AvatarState::Idle,
            at: duration_s,
        },
    ]
}

/// The JSON written by `enigma speak --visemes`: phonemes, words, visemes and the state stream, in seconds.
pub fn timings_json(s: &Speech, engine: &str) -> serde_json::Value {
    serde_json::json!({
        "engine": engine,
        "sample_rate": s.sample_rate,
        "duration": s.duration_s(),
        "timing_source": if s.phonemes.is_empty() { "none (espeak-ng alone gives no timings)" } else { "piper model durations (w_ceil x hop 256)" },
        "phonemes": s.phonemes,
        "words": s.words,
        "visemes": s.visemes,
        "states": talking_states(s.duration_s()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timings_from_durations() {
        let ph: Vec<String> = ["h", "ˈ", "a", " ", "m"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        // ^ _ h _ ˈ _ a _ ' ' _ m _ $
        let spi = [256, 0, 512, 0, 0, 0, 1024, 256, 256, 0, 512, 256, 0];
        let t = phoneme_timings(&ph, &spi, 256);
        assert_eq!(t.len(), 5);
        assert_eq!((t[0].start, t[0].end), (1.0, 3.0));
        assert_eq!((t[2].start, t[2].end), (3.0, 8.0));
        assert_eq!(t[4].end, 12.0);
        let clauses = crate::phonemes::split_clauses("ha me");
        let w = word_timings(&t, &clauses);
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].word.as_deref(), Some("ha"));
        assert_eq!(w[0].ipa, "hˈa");
        let v = visemes(&t);
        let names: Vec<_> = v.iter().map(|v| v.viseme).collect();
        assert_eq!(names, vec!["kk", "aa", "sil", "PP"]);
        assert_eq!(v[0].end, 3.0);
        assert!(phoneme_timings(&ph, &spi[1..], 256).is_empty());
    }
}
