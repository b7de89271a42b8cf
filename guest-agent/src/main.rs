//! `k2hdkc-guest-agent`: parse arguments, set up logging, run the agent.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = k2hdkc_guest_agent::transport::Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match k2hdkc_guest_agent::transport::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("k2hdkc-guest-agent: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
