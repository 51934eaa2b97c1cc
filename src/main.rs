//! The `syncnode` binary: parse the command line, set up logging, run, map errors to exit codes.

use clap::Parser;
use syncnode::cli::{execute, Cli, Failure};

/// Most malloc arenas (glibc's default is 8 per core). Each thread that meets contention gets an
/// arena of its own and memory freed there is kept there: with the pulls' and scans' blocking
/// threads, the spare memory of a dozen arenas added up (100,000 files: peak RSS 67 / 74 MiB with
/// the default, 61 / 69 with two).
#[cfg(target_env = "gnu")]
const MALLOC_ARENAS: libc::c_int = 2;

fn main() {
    // SAFETY: called before any other thread exists; mallopt only tunes the allocator.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS)
    };
    let cli = Cli::parse();
    // Hundreds of small files are pulled at once, each with its temp file open, beside RocksDB's
    // tables and the peers' sockets: the soft limit of open files goes up to the hard one (as Go's
    // runtime does at start), so a shell's 1,024 is not what a big sync runs into.
    let nofile = rlimit::increase_nofile_limit(u64::MAX);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    match nofile {
        Ok(limit) => tracing::debug!(limit, "open files"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the limit of open files"),
    }
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
