//! Prints the Piper phoneme ids of each line of standard input as JSON (one list of sentences per line), in
//! the shape `scripts/piper_reference.py ids` prints piper-tts's, to compare the two on any text:
//!
//!     cargo run -p enigma-voice --example phoneme_ids < lines.txt

use std::io::Read;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let onnx = enigma_voice::piper::find_voice()?;
    let json = std::fs::read_to_string(format!("{}.json", onnx.display()))?;
    let config: enigma_voice::piper::VoiceConfig = serde_json::from_str(&json)?;
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text)?;
    let mut out = Vec::new();
    for line in text.lines() {
        out.push(enigma_voice::text_ids(&config, line)?);
    }
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}
