//! The `syncnode` binary: parse the command line, set up logging, run, map errors to exit codes.

use clap::Parser;
use syncnode::cli::{execute, Cli, Failure};

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    let code = match execute(cli) {
        Ok(()) => 0,
        Err(Failure::Usage(message)) => {
            eprintln!("syncnode: {message}");
            2
        }
        Err(Failure::Fatal(error)) => {
            eprintln!("syncnode: {error:#}");
            1
        }
    };
    std::process::exit(code);
}
