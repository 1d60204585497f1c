//! espeak-ng's library (libespeak-ng.so.1, which the Debian package installs beside the command), loaded at run
//! time, for `espeak_TextToPhonemes`: it phonemizes one clause per call and moves the text pointer past it, so
//! espeak-ng itself decides where clauses end ("Dr." ends one, "St." does not), as piper-tts's call does. The
//! text it moved past tells the clause's closing punctuation, which the library does not return in 1.51.

use crate::Error;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::Mutex;

type Initialize = unsafe extern "C" fn(c_int, c_int, *const c_char, c_int) -> c_int;
type SetVoiceByName = unsafe extern "C" fn(*const c_char) -> c_int;
type TextToPhonemes = unsafe extern "C" fn(*mut *const c_void, c_int, c_int) -> *const c_char;

const AUDIO_OUTPUT_SYNCHRONOUS: c_int = 2;
const CHARS_UTF8: c_int = 1;
const PHONEMES_IPA: c_int = 0x02;

struct Lib {
    _lib: libloading::Library,
    set_voice: SetVoiceByName,
    to_phonemes: TextToPhonemes,
    voice: Option<String>,
}

// The library keeps global state: one caller at a time.
static LIB: Mutex<Option<Result<Lib, String>>> = Mutex::new(None);

fn open() -> Result<Lib, String> {
    // SAFETY: loading libespeak-ng runs no code of ours; the three symbols are its documented API with these
    // signatures (speak_lib.h), and espeak_Initialize is called once, before any other call.
    unsafe {
        let lib = libloading::Library::new("libespeak-ng.so.1").map_err(|e| {
            format!("cannot load libespeak-ng.so.1 (apt-get install espeak-ng): {e}")
        })?;
        let init: Initialize = *lib
            .get::<Initialize>(b"espeak_Initialize")
            .map_err(|e| e.to_string())?;
        let set_voice: SetVoiceByName = *lib
            .get::<SetVoiceByName>(b"espeak_SetVoiceByName")
            .map_err(|e| e.to_string())?;
        let to_phonemes: TextToPhonemes = *lib
            .get::<TextToPhonemes>(b"espeak_TextToPhonemes")
            .map_err(|e| e.to_string())?;
        if init(AUDIO_OUTPUT_SYNCHRONOUS, 0, std::ptr::null(), 0) < 0 {
            return Err("espeak_Initialize failed (is espeak-ng-data installed?)".into());
        }
        Ok(Lib {
            _lib: lib,
            set_voice,
            to_phonemes,
            voice: None,
        })
    }
}

/// One clause as espeak-ng split it: its IPA and its text (punctuation included).
pub struct LibClause {
    pub ipa: String,
    pub text: String,
}

/// The clauses of `text` in `voice`, split and phonemized by libespeak-ng.
pub fn clauses(voice: &str, text: &str) -> Result<Vec<LibClause>, Error> {
    let mut guard = LIB.lock().unwrap_or_else(|e| e.into_inner());
    let lib = match guard.get_or_insert_with(open) {
        Ok(l) => l,
        Err(e) => return Err(Error::Espeak(e.clone())),
    };
    let cvoice =
        CString::new(voice).map_err(|_| Error::Espeak("a voice name with a NUL".into()))?;
    if lib.voice.as_deref() != Some(voice) {
        // SAFETY: a NUL-terminated name; the library copies what it needs.
        if unsafe { (lib.set_voice)(cvoice.as_ptr()) } != 0 {
            return Err(Error::Espeak(format!("espeak-ng has no voice {voice}")));
        }
        lib.voice = Some(voice.to_string());
    }
    // NULs would end the text early; they carry nothing to say.
    let ctext = CString::new(text.replace('\0', " ")).map_err(|_| Error::Espeak("NUL".into()))?;
    let base = ctext.as_ptr();
    let len = ctext.as_bytes().len();
    let bytes = ctext.as_bytes();
    let mut ptr = base as *const c_void;
    let mut out = Vec::new();
    let mut start = 0;
    while !ptr.is_null() {
        // SAFETY: `ptr` points into `ctext` (or is null, ending the loop), which outlives the call; the
        // returned string is the library's own buffer, copied before the next call.
        let ipa = unsafe {
            let p = (lib.to_phonemes)(&mut ptr, CHARS_UTF8, PHONEMES_IPA);
            if p.is_null() {
                String::new()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        let end = if ptr.is_null() {
            len
        } else {
            // The library has read one character of the next clause: that character is the next clause's.
            let mut e = (ptr as usize).wrapping_sub(base as usize).clamp(start, len);
            if e > start {
                e -= 1;
                while e > start && (bytes[e] & 0xc0) == 0x80 {
                    e -= 1;
                }
            }
            e
        };
        out.push(LibClause {
            ipa,
            text: String::from_utf8_lossy(&bytes[start..end]).into_owned(),
        });
        // Each call moves on at least one byte, so more clauses than bytes would be a library surprise: stop.
        if out.len() > len + 1 {
            break;
        }
        start = end;
    }
    Ok(out)
}
