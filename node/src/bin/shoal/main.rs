//! The `shoal` command-line tool: make a mesh CA and node certificates, run a node that
//! answers messages, talk to running nodes (send, request, publish, ping, list peers), and
//! print and compare AsyncAPI documents (spec, spec diff).
//!
//! ```text
//! shoal ca init --dir mesh
//! shoal cert issue --ca mesh --service echo
//! shoal serve --ca mesh --service echo --listen 127.0.0.1:7701
//! shoal request --ca mesh --peer 127.0.0.1:7701 --service echo --name echo --payload hi
//! ```
//!
//! Everything meant for scripts goes to stdout, one line per fact; logs (`RUST_LOG`, default
//! `warn`) and errors go to stderr. Failures print `error: <message>` and exit with code 1
//! (command-line usage errors exit with clap's code 2).

use std::fmt;
use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Prints one line to stdout. A closed stdout (`shoal ping | head -1`) is not worth a panic:
/// the line is dropped and the command carries on.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod certs;
mod client;
mod common;
mod peers;
mod ping;
mod reload;
mod serve;
mod spec;

/// Shoal: a brokerless messaging mesh (QUIC + mutual TLS).
#[derive(Debug, Parser)]
#[command(name = "shoal", version, propagate_version = true)]
#[command(
    after_help = "Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=shoal=debug) for more \
                        than warnings."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Manage the mesh certificate authority.
    #[command(subcommand)]
    Ca(certs::CaCommand),
    /// Issue node certificates from the mesh CA.
    #[command(subcommand)]
    Cert(certs::CertCommand),
    /// Run a node that answers messages (echo and print handlers) until Ctrl-C or SIGTERM.
    Serve(serve::ServeArgs),
    /// Send commands to a service and print their receipts.
    Send(client::SendArgs),
    /// Send a request to a service and print the reply's payload.
    Request(client::RequestArgs),
    /// Publish events on a topic to every subscriber group and print who took them.
    Publish(client::PublishArgs),
    /// Measure round trips to a service (request/reply to its echo handler, or protocol pings).
    Ping(ping::PingArgs),
    /// Connect to peers and list the live ones per service, with address and RTT.
    Peers(peers::PeersArgs),
    /// Print an AsyncAPI document (a file, or a service binary's --print-spec), or compare
    /// two (`spec diff OLD NEW`, exit 1 on a breaking change).
    Spec(spec::SpecArgs),
}

/// A failure to report: printed as `error: <message>`, exit code 1.
#[derive(Debug)]
struct CliError(String);

impl CliError {
    /// An error with this message.
    fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<shoal::Error> for CliError {
    fn from(e: shoal::Error) -> Self {
        Self(e.to_string())
    }
}

/// What every command returns.
type CliResult<T = ()> = Result<T, CliError>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Ca(cmd) => certs::run_ca(cmd),
        Command::Cert(cmd) => certs::run_cert(cmd),
        Command::Serve(args) => serve::run(args).await,
        Command::Send(args) => client::send(args).await,
        Command::Request(args) => client::request(args).await,
        Command::Publish(args) => client::publish(args).await,
        Command::Ping(args) => ping::run(args).await,
        Command::Peers(args) => peers::run(args).await,
        Command::Spec(args) => spec::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `warn`).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    /// clap checks the whole command tree (no two arguments of one command share a name, ...).
    #[test]
    fn the_command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
