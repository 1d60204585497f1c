use clap::Parser;

fn main() -> std::process::ExitCode {
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
