use clap::Parser;

fn main() -> std::process::ExitCode {
    // Rust ignores SIGPIPE, so `enigma info m | head` would end in a "failed printing to stdout" panic
    // when head stops reading. Like any Unix filter, end quietly instead.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of one signal at startup, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = enigma_cli::Cli::parse();
    match enigma_cli::main(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line: the chain of contexts joined by ": ". Some errors print their source in their own
            // message and also return it as `source()`; say each cause once.
            let mut line = String::new();
            for cause in e.chain() {
                let msg = cause.to_string();
                if line.ends_with(&msg) {
                    continue;
                }
                if !line.is_empty() {
                    line.push_str(": ");
                }
                line.push_str(&msg);
            }
            eprintln!("error: {}", line.replace('\n', " "));
            std::process::ExitCode::FAILURE
        }
    }
}
