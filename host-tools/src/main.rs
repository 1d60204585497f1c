use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = enigma_tools::cli::Cli::parse();
    match enigma_tools::cli::main(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line: the chain of contexts joined by ": ".
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
