//! The `omnistock` command line: parses flags, sets up logging, calls into the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod ctl;
mod demo;
mod serve;
mod simulate;
mod tools;

/// omnistock: real-time authoritative available-to-promise inventory.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a server with a demo catalog, run a short checkout simulation through it, then
    /// keep serving until Ctrl-C (try `omnistock ctl` against it).
    Demo(demo::Args),
    /// Run an in-process checkout simulation against the engine and print what it saw.
    Simulate(simulate::Args),
    /// Verify a data directory (checkpoint, log checksums, replay, invariants); print counts.
    Check(tools::CheckArgs),
    /// Print a SKU's history from a data directory: the audit ledger.
    Dump(tools::DumpArgs),
    /// Run the TCP server (binary protocol, docs/protocol.md) until SIGTERM/SIGINT.
    Serve(serve::Args),
    /// Talk to a running server: ping, get, reserve, fulfill, adjust, ...
    Ctl(ctl::Args),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Demo(args) => demo::run(args),
        Cmd::Simulate(args) => simulate::run(args),
        Cmd::Check(args) => tools::check(args),
        Cmd::Dump(args) => tools::dump(args),
        Cmd::Serve(args) => serve::run(args),
        Cmd::Ctl(args) => return ctl::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
