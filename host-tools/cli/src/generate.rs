//! `enigma run` and `enigma chat`: the flags llama.cpp users know, and text that is always valid UTF-8.

use crate::remote::RemoteArgs;
use crate::{open, EngineArgs};
use anyhow::{bail, Context, Result};
use clap::Args;
use enigma_chat::{ChatFormat, ChatMessage};
use enigma_core::generate::{Session, Stats, Stop};
use enigma_core::utf8::Utf8Stream;
use enigma_core::{Exec, Sampler, SamplerConfig, Tokenizer};
use enigma_runtime::session::DEFAULT_CHUNK;
use enigma_runtime::HostSession;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Instant;

/// Sampling flags, named and defaulted as llama.cpp's (`--temp 0.8 --top-k 40 --top-p 0.9`).
#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Temperature: 0 picks the most likely token every time (greedy); higher is more random.
    #[arg(
        long = "temp",
        visible_alias = "temperature",
        default_value_t = 0.8,
        allow_negative_numbers = true
    )]
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches P (1 = off).
    #[arg(long, default_value_t = 0.9, allow_negative_numbers = true)]
    pub top_p: f32,
    /// Keep only the K most likely tokens (0 = off).
    #[arg(long, default_value_t = 40)]
    pub top_k: u32,
    /// Divide the odds of tokens seen among the last --repeat-last-n by this (1 = off).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub repeat_penalty: f32,
    /// How many of the last tokens --repeat-penalty looks at.
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: u32,
    /// Random seed, for a repeatable run (default: from the clock).
    #[arg(short, long)]
    pub seed: Option<u64>,
}

impl SamplingArgs {
    pub fn config(&self) -> Result<SamplerConfig> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            bail!("--temp must be a number >= 0, not {}", self.temperature);
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            bail!("--top-p must be between 0 and 1, not {}", self.top_p);
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty.is_finite()) {
            bail!(
                "--repeat-penalty must be a positive number, not {}",
                self.repeat_penalty
            );
        }
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
        Ok(SamplerConfig {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            repetition_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            seed,
        })
    }
}

/// How long a run may go and how much context it may use: `-n` and `-c` as llama.cpp reads them.
#[derive(Args, Debug, Clone)]
pub struct LengthArgs {
    /// Tokens to predict; -1 goes on until the context is full.
    #[arg(
        short = 'n',
        long = "n-predict",
        visible_alias = "predict",
        default_value_t = 256,
        allow_negative_numbers = true
    )]
    pub n_predict: i64,
    /// Context size in tokens: prompt and output together (default and maximum: the model's context).
    #[arg(short = 'c', long = "ctx-size")]
    pub ctx_size: Option<usize>,
}

impl LengthArgs {
    /// Tokens to predict, or `None` for "until the context is full".
    pub(crate) fn predict(&self) -> Result<Option<usize>> {
        match self.n_predict {
            -1 => Ok(None),
            n if n >= 1 => Ok(Some(usize::try_from(n).unwrap_or(usize::MAX))),
            n => bail!(
                "-n/--n-predict must be at least 1 (or -1: until the context is full), not {n}"
            ),
        }
    }

    /// The context this run may use: `-c`, which may not exceed what the model was made for.
    fn context(&self, model_ctx: usize) -> Result<usize> {
        match self.ctx_size {
            None => Ok(model_ctx),
            Some(0) => bail!("-c/--ctx-size must be at least 1 token"),
            Some(c) if c > model_ctx => bail!(
                "-c/--ctx-size {c} is more than this model's context of {model_ctx} tokens (its positions past that were never trained)"
            ),
            Some(c) => Ok(c),
        }
    }
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// The prompt to continue.
    #[arg(short = 'p', long, default_value = "")]
    pub prompt: String,
    /// Read the prompt from this UTF-8 text file instead.
    #[arg(short = 'f', long = "file", conflicts_with = "prompt")]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub length: LengthArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub remote: RemoteArgs,
    #[command(flatten)]
    pub port: crate::port::PortArgs,
}

impl RunArgs {
    /// The prompt: `-p`, or the UTF-8 text of `-f`.
    pub(crate) fn prompt_text(&self) -> Result<String> {
        match &self.file {
            Some(path) => {
                let bytes = std::fs::read(path)
                    .with_context(|| format!("cannot read the prompt file {}", path.display()))?;
                String::from_utf8(bytes)
                    .map_err(|e| anyhow::anyhow!("{} is not UTF-8 text: {e}", path.display()))
            }
            None => Ok(self.prompt.clone()),
        }
    }
}

#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// An instruction placed before the first turn (a completion model gets it as the first line).
    #[arg(long, visible_alias = "system-prompt")]
    pub system: Option<String>,
    /// Print each turn's prompt as token ids (the whole conversation as the chat template lays it out) on
    /// stderr, as llama.cpp's flag does; the server's `/tokenize` with `messages` gives the same ids.
    #[arg(long)]
    pub verbose_prompt: bool,
    #[command(flatten)]
    pub length: LengthArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub remote: RemoteArgs,
    #[command(flatten)]
    pub port: crate::port::PortArgs,
    /// Before each turn, find the passages of memory nearest it (the memory module's vector_search) and put
    /// them in the prompt, saying which; the chat is saved as a conversation.
    #[arg(long)]
    pub memory: bool,
    /// Passages per turn with --memory.
    #[arg(long, default_value_t = 3, requires = "memory")]
    pub memory_top: usize,
    /// Speak each reply through the sound device, sentence by sentence as it is written (the Piper voice,
    /// or espeak-ng alone when it is not installed).
    #[cfg(feature = "voice")]
    #[arg(long)]
    pub voice: bool,
}

/// Writes generated pieces as text: bytes of a character split over byte-fallback tokens are held until
/// the character is whole, and bytes that never form one become U+FFFD, so the output is always UTF-8.
pub(crate) struct Printer<W: Write> {
    out: W,
    utf8: Utf8Stream,
    ok: bool,
}

impl<W: Write> Printer<W> {
    pub(crate) fn new(out: W) -> Self {
        Printer {
            out,
            utf8: Utf8Stream::new(),
            ok: true,
        }
    }

    /// Prints one piece; `false` when the output is gone (a closed pipe), which ends the generation.
    pub(crate) fn piece(&mut self, piece: &[u8]) -> bool {
        // A lone control byte would garble a terminal (llama2.c drops them too); whitespace stays.
        if let [b] = piece {
            if b.is_ascii_control() && !b.is_ascii_whitespace() {
                return self.ok;
            }
        }
        let out = &mut self.out;
        let ok = &mut self.ok;
        self.utf8.push(piece, &mut |s| {
            *ok = *ok && out.write_all(s.as_bytes()).is_ok();
            *ok
        });
        self.ok = self.ok && self.out.flush().is_ok();
        self.ok
    }

    /// Ends a reply: an unfinished character becomes U+FFFD, then a newline.
    pub(crate) fn finish(&mut self) {
        let out = &mut self.out;
        self.utf8
            .finish(&mut |s| out.write_all(s.as_bytes()).is_ok());
        let _ = writeln!(self.out);
        let _ = self.out.flush();
    }
}

/// Times one generation. Prefill ends when the first generated token arrives (after `echoed` echoed
/// prompt tokens); decode speed counts the tokens after that one.
struct Clock {
    start: Instant,
    first: Option<Instant>,
    echoed: usize,
    seen: usize,
}

impl Clock {
    fn new(echoed: usize) -> Self {
        Clock {
            start: Instant::now(),
            first: None,
            echoed,
            seen: 0,
        }
    }

    fn tick(&mut self) {
        self.seen += 1;
        if self.seen == self.echoed + 1 {
            self.first = Some(Instant::now());
        }
    }

    fn report(&self, stats: &Stats) {
        let first = self.first.unwrap_or(self.start);
        let prefill = (first - self.start).as_secs_f64();
        let decode = first.elapsed().as_secs_f64();
        let rate = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
        eprintln!(
            "prompt: {} tokens, {:.1} tok/s; generated: {} tokens, {:.1} tok/s",
            stats.prompt_tokens,
            rate(stats.prompt_tokens, prefill),
            stats.generated,
            rate(stats.generated.saturating_sub(1), decode)
        );
        if stats.stop == Stop::ContextFull {
            eprintln!("stopped: the context window is full");
        }
    }
}

/// What a reply is made of: the prompt's tokens, how many may follow, whether the prompt is echoed,
/// whether a blank line ends it (a completion model in `chat` answers with one paragraph), and which
/// tokens end it besides EOS (a chat template's end of turn).
struct Turn<'a> {
    ids: &'a [u32],
    max_new: usize,
    echo: bool,
    until_blank_line: bool,
    format: Option<&'a ChatFormat>,
    /// Speaks the reply as it comes (`chat --voice`).
    #[cfg(feature = "voice")]
    talk: Option<&'a crate::speak::Talker>,
}

/// What one reply generated: the ids sampled (an end-of-turn token included: it stays in the context)
/// and the text printed.
#[derive(Default)]
struct Reply {
    ids: Vec<u32>,
    text: Vec<u8>,
}

/// Where a paragraph ends in the generated text: the first blank line after some text.
#[derive(Default)]
struct Paragraph {
    text: bool,
    newlines: u32,
}

impl Paragraph {
    /// The bytes of `piece` that belong to the paragraph, and whether it ended in this piece. Line breaks
    /// before any text are dropped.
    fn cut<'p>(&mut self, piece: &'p [u8]) -> (&'p [u8], bool) {
        let mut start = 0;
        for (i, &b) in piece.iter().enumerate() {
            if b == b'\n' {
                if !self.text {
                    start = i + 1;
                    continue;
                }
                self.newlines += 1;
                if self.newlines == 2 {
                    // The paragraph keeps its last line break; the reply's own newline follows.
                    return (&piece[start..i], true);
                }
            } else if !b.is_ascii_whitespace() {
                self.text = true;
                self.newlines = 0;
            }
        }
        (&piece[start..], false)
    }
}

/// Generates one reply, streaming it as text to stdout and its speed to stderr. `run` and `chat` both
/// go through here.
fn reply(
    session: &mut Session<'_, '_>,
    exec: &dyn Exec,
    tok: &Tokenizer<'_>,
    sampler: &mut Sampler,
    turn: Turn<'_>,
) -> Result<(Stats, Reply)> {
    let stdout = std::io::stdout();
    let mut printer = Printer::new(stdout.lock());
    // A fresh session echoes every prompt token but the leading BOS.
    let echoed = if turn.echo {
        turn.ids.len().saturating_sub(1)
    } else {
        0
    };
    let mut clock = Clock::new(echoed);
    let mut paragraph = Paragraph::default();
    let mut out = Reply::default();
    let stats = session.generate(
        exec,
        tok,
        sampler,
        turn.ids,
        turn.max_new,
        turn.echo,
        &mut |id, piece| {
            clock.tick();
            if clock.seen <= echoed {
                return printer.piece(piece);
            }
            out.ids.push(id);
            if turn.format.is_some_and(|f| f.ends_reply(id)) {
                return false;
            }
            let (part, ended) = if turn.until_blank_line {
                paragraph.cut(piece)
            } else {
                (piece, false)
            };
            out.text.extend_from_slice(part);
            #[cfg(feature = "voice")]
            if let Some(t) = turn.talk {
                t.push(part);
            }
            printer.piece(part) && !ended
        },
    )?;
    // EOS ends the loop without reaching the callback, and waits in the context like any sampled token.
    if stats.stop == Stop::EndOfText {
        out.ids.push(tok.eos());
    }
    printer.finish();
    #[cfg(feature = "voice")]
    if let Some(t) = turn.talk {
        t.end_turn();
    }
    clock.report(&stats);
    Ok((stats, out))
}

/// Encodes a prompt that must fit in `max` tokens, in O(n log n) (the core's loop is quadratic).
fn encode(tok: &Tokenizer<'_>, text: &str, bos: bool, max: usize) -> Result<Vec<u32>> {
    Ok(enigma_runtime::tokenize::encode_within(
        tok, text, bos, false, max,
    )?)
}

pub fn run(args: RunArgs) -> Result<()> {
    if let Some(port) = &args.port.port {
        return crate::port::run(&args, port);
    }
    if let Some(client) = args.remote.client()? {
        return crate::remote::run(&args, &client);
    }
    let sampler_cfg = args.sampling.config()?;
    let predict = args.length.predict()?;
    let kv = args.engine.kv_type()?;
    let prompt_text = args.prompt_text()?;
    let (file, backend) = open(&args.engine, "run")?;
    if let Some(gpu) = backend.gpu() {
        return run_cuda(&args, &file, gpu, &prompt_text, sampler_cfg, predict, kv);
    }
    let model = file.model(backend.kernels())?;
    let ctx = args
        .length
        .context(model.transformer.config.seq_len as usize)?;
    let prompt = encode(&model.tokenizer, &prompt_text, true, ctx)?;
    // The cache holds what this run can reach, not the whole context the header declares.
    let reach = predict.map_or(ctx, |n| prompt.len().saturating_add(n).min(ctx));
    let transformer = model.transformer.with_context(reach);
    let mut bufs = HostSession::try_with_kv(&transformer, DEFAULT_CHUNK, kv)?;
    let mut session = bufs.session(transformer)?;
    let mut sampler = Sampler::new(sampler_cfg);
    let turn = Turn {
        ids: &prompt,
        max_new: predict.unwrap_or(usize::MAX),
        echo: true,
        until_blank_line: false,
        format: None,
        #[cfg(feature = "voice")]
        talk: None,
    };
    reply(
        &mut session,
        backend.exec(),
        &model.tokenizer,
        &mut sampler,
        turn,
    )?;
    Ok(())
}

/// `enigma run --device cuda`: the weights and KV cache on the GPU, the prompt in chunks through the
/// tensor-core GEMM, then one token per step with sampling on the device (host sampling from copied logits
/// when top-k or a repetition penalty is asked for). Printed as `run` prints on the CPU.
fn run_cuda(
    args: &RunArgs,
    file: &enigma_runtime::ModelFile,
    gpu: &enigma_runtime::device::Gpu,
    prompt_text: &str,
    sampler_cfg: SamplerConfig,
    predict: Option<usize>,
    kv: enigma_core::KvType,
) -> Result<()> {
    let f = file.parse()?;
    let tok = Tokenizer::from_file(&f)?;
    let ctx = args.length.context(f.config().seq_len as usize)?;
    let prompt = encode(&tok, prompt_text, true, ctx)?;
    let reach = predict.map_or(ctx, |n| prompt.len().saturating_add(n).min(ctx));
    let mut runner = enigma_runtime::device::Runner::load(gpu, &f, kv, reach, 1)?;
    let stdout = std::io::stdout();
    let mut printer = Printer::new(stdout.lock());
    // Pieces as the CPU's token loop decodes them: after their predecessor (a leading space is dropped after
    // BOS, byte tokens become their byte).
    let mut prev = prompt.first().copied().unwrap_or(tok.bos());
    for &id in prompt.iter().skip(1) {
        printer.piece(tok.decode(prev, id));
        prev = id;
    }
    let mut sampler = Sampler::new(sampler_cfg);
    let start = Instant::now();
    let ids = runner.generate(
        &prompt,
        predict.unwrap_or(usize::MAX),
        &mut sampler,
        &mut |id| {
            // EOS (or BOS, a new document) ends the text, as on the CPU.
            if id == tok.eos() || id == tok.bos() {
                return false;
            }
            let piece = tok.decode(prev, id);
            prev = id;
            printer.piece(piece)
        },
    )?;
    printer.finish();
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "\n{} prompt + {} generated tokens in {secs:.2} s ({:.1} tok/s) on {}",
        prompt.len(),
        ids.len(),
        ids.len() as f64 / secs.max(1e-9),
        enigma_runtime::device::describe(gpu)
    );
    Ok(())
}

const HELP: &str = "/help     this list\n\
/reset    forget the conversation (the context starts empty again)\n\
/quit     leave (so does /exit, or the end of input)";

/// One line of `chat`'s input, once its commands are handled.
pub(crate) enum Input {
    Text(String),
    Reset,
    Quit,
}

/// Prompts for and reads the next turn; answers `/help` and unknown commands itself and skips blank lines.
/// The local and the `--remote` chat read their input through here.
pub(crate) fn next_input(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
) -> Result<Input> {
    loop {
        eprint!("> ");
        let Some(line) = lines.next() else {
            return Ok(Input::Quit);
        };
        let line = line.context("cannot read standard input")?;
        match line.trim() {
            "" => continue,
            "/quit" | "/exit" => return Ok(Input::Quit),
            "/help" | "/?" => eprintln!("{HELP}"),
            "/reset" => return Ok(Input::Reset),
            t if t.starts_with('/') && !t.contains(char::is_whitespace) => {
                eprintln!("unknown command {t}; /help lists the commands");
            }
            t => return Ok(Input::Text(t.to_string())),
        }
    }
}

/// How many tokens a session whose context holds `history` (the first `fed` of them run through the model)
/// keeps for the prompt `ids`: the start they share, less one when that is all of `ids` (the prompt's last
/// token is fed again, for its logits). What follows differs when a reply encodes differently as text than
/// as sampled, or was cut at a blank line or by `-n`.
fn reusable(history: &[u32], fed: usize, ids: &[u32]) -> usize {
    let common = history.iter().zip(ids).take_while(|(a, b)| a == b).count();
    common.min(fed).min(ids.len().saturating_sub(1))
}

pub fn chat(args: ChatArgs) -> Result<()> {
    if let Some(port) = &args.port.port {
        return crate::port::chat(&args, port);
    }
    if let Some(client) = args.remote.client()? {
        anyhow::ensure!(
            !args.memory,
            "--memory works with a local model, not with --remote"
        );
        #[cfg(feature = "voice")]
        anyhow::ensure!(
            !args.voice,
            "--voice works with a local model, not with --remote"
        );
        return crate::remote::chat(&args, &client);
    }
    #[cfg(feature = "voice")]
    let talker = if args.voice {
        Some(crate::speak::Talker::start(None)?)
    } else {
        None
    };
    let mut memory = if args.memory {
        Some(crate::memory::ChatMemory::open(args.memory_top)?)
    } else {
        None
    };
    let sampler_cfg = args.sampling.config()?;
    let predict = args.length.predict()?;
    let kv = args.engine.kv_type()?;
    let (file, backend) = open(&args.engine, "chat")?;
    crate::cuda::cpu_only(&backend, "chat")?;
    let model = file.model(backend.kernels())?;
    let format = ChatFormat::of(&file.parse()?, &model.tokenizer)?;
    let ctx = args
        .length
        .context(model.transformer.config.seq_len as usize)?;
    let transformer = model.transformer.with_context(ctx);
    let mut bufs = HostSession::try_with_kv(&transformer, DEFAULT_CHUNK, kv)?;
    let mut session = bufs.session(transformer)?;
    let mut sampler = Sampler::new(sampler_cfg);
    let name = args.engine.model_name();
    // The first line says what kind of conversation this can be.
    if format.is_chat() {
        eprintln!(
            "chatting with {name}, a chat model prompted with {} ({ctx} tokens of context; /help lists commands)",
            format.describe()
        );
    } else {
        eprintln!(
            "{name} is a completion model, not trained on conversations: each line you type is continued as text, up to a blank line or -n tokens ({ctx} tokens of context; /help lists commands)"
        );
    }
    // The conversation is rendered whole each turn, as the server renders it, and only what the context
    // does not hold yet is fed.
    let start: Vec<ChatMessage> = args.system.iter().map(ChatMessage::system).collect();
    let mut messages = start.clone();
    let mut history: Vec<u32> = Vec::new();
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        let text = match next_input(&mut lines)? {
            Input::Quit => break,
            Input::Reset => {
                session.reset();
                sampler.clear_history();
                messages.clone_from(&start);
                history.clear();
                eprintln!("(conversation forgotten)");
                continue;
            }
            Input::Text(t) => t,
        };
        let asked = text.clone();
        let text = match &memory {
            Some(m) => m.recall(&text)?,
            None => text,
        };
        messages.push(ChatMessage::user(text));
        // One slot stays free for the reply's first token.
        let room = ctx.saturating_sub(1);
        let ids = match format.prompt(&model.tokenizer, &messages, room) {
            Ok(ids) => ids,
            Err(e) => {
                messages.pop();
                eprintln!("error: that turn cannot be prompted ({e}); /reset to start over");
                continue;
            }
        };
        if args.verbose_prompt {
            eprintln!("prompt ids: {ids:?}");
        }
        let keep = reusable(&history, session.pos(), &ids);
        session.truncate(keep, keep.checked_sub(1).map(|i| ids[i]));
        // The sampler's history becomes what a fresh session fed `ids` would have seen.
        sampler.clear_history();
        for &t in &ids[..keep] {
            sampler.observe(t);
        }
        let feed = &ids[keep..];
        if args.verbose_prompt {
            eprintln!("({keep} of them already in the context)");
        }
        let left = ctx.saturating_sub(ids.len());
        let turn = Turn {
            ids: feed,
            max_new: predict.map_or(left, |n| n.min(left)),
            echo: false,
            until_blank_line: !format.is_chat(),
            format: Some(&format),
            #[cfg(feature = "voice")]
            talk: talker.as_ref(),
        };
        let (_, reply) = reply(
            &mut session,
            backend.exec(),
            &model.tokenizer,
            &mut sampler,
            turn,
        )?;
        history.clone_from(&ids);
        history.extend(&reply.ids);
        let said = String::from_utf8_lossy(&reply.text).into_owned();
        if let Some(m) = &mut memory {
            m.save(&asked, &said)?;
        }
        messages.push(ChatMessage::assistant(said));
    }
    // The last reply plays to its end before the command exits.
    #[cfg(feature = "voice")]
    if let Some(t) = talker {
        t.finish()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_character_split_over_byte_tokens_is_printed_whole() {
        let mut p = Printer::new(Vec::new());
        // "é" (C3 A9) as two byte-fallback pieces, then "€" (E2 82 AC) as three.
        for piece in [&b"caf"[..], b"\xC3", b"\xA9 ", b"\xE2", b"\x82", b"\xAC"] {
            assert!(p.piece(piece));
        }
        p.finish();
        assert_eq!(String::from_utf8(p.out).unwrap(), "café €\n");
    }

    #[test]
    fn bytes_that_never_form_a_character_become_replacement_characters() {
        let mut p = Printer::new(Vec::new());
        for piece in [&b"a"[..], b"\xFF", b"b", b"\xE2\x82"] {
            p.piece(piece);
        }
        p.finish();
        assert_eq!(String::from_utf8(p.out).unwrap(), "a\u{FFFD}b\u{FFFD}\n");
    }

    #[test]
    fn a_closed_output_stops_the_generation() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut p = Printer::new(Closed);
        assert!(!p.piece(b"text"));
    }

    #[test]
    fn a_paragraph_ends_at_the_first_blank_line_after_text() {
        let mut p = Paragraph::default();
        assert_eq!(p.cut(b"\n\n"), (&b""[..], false));
        assert_eq!(p.cut(b"\nAnd he"), (&b"And he"[..], false));
        assert_eq!(p.cut(b" said.\n"), (&b" said.\n"[..], false));
        assert_eq!(p.cut(b"Then\n"), (&b"Then\n"[..], false));
        assert_eq!(p.cut(b" \nmore"), (&b" "[..], true));
    }

    #[test]
    fn the_context_keeps_the_start_the_new_prompt_shares() {
        assert_eq!(reusable(&[1, 5, 6], 3, &[1, 5, 6, 7, 8]), 3);
        // A pending (sampled, not yet fed) token is not in the cache.
        assert_eq!(reusable(&[1, 5, 6], 2, &[1, 5, 6, 7, 8]), 2);
        assert_eq!(reusable(&[], 0, &[1, 5]), 0);
        assert_eq!(reusable(&[1, 5, 6], 3, &[1, 5, 9, 7]), 2);
        // The whole prompt already there: its last token is fed again.
        assert_eq!(reusable(&[1, 5, 6], 3, &[1, 5]), 1);
    }

    #[test]
    fn n_predict_and_ctx_size_are_checked() {
        let l = |n, c| LengthArgs {
            n_predict: n,
            ctx_size: c,
        };
        assert_eq!(l(5, None).predict().unwrap(), Some(5));
        assert_eq!(l(-1, None).predict().unwrap(), None);
        assert!(l(0, None).predict().is_err());
        assert!(l(-2, None).predict().is_err());
        assert_eq!(l(1, None).context(256).unwrap(), 256);
        assert_eq!(l(1, Some(64)).context(256).unwrap(), 64);
        assert!(l(1, Some(512)).context(256).is_err());
        assert!(l(1, Some(0)).context(256).is_err());
    }
}
