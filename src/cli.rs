//! Command line: `aegis serve`, `aegis dev`. Parsing only; the work lives elsewhere.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, ProcessEnv};

/// Exit code for invalid configuration (EX_CONFIG-style usage error, sysexits' EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "aegis",
    version,
    about = "Localhost signing sidecar backed by Vault/OpenBao Transit"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve Transit's sign/verify/keys API on localhost (settings: TOML file + environment).
    Serve {
        /// TOML configuration file; environment variables override it.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Start a throwaway OpenBao dev server with demo keys and serve the sidecar against it.
    Dev {
        /// Where the sidecar listens.
        #[arg(long, default_value = "127.0.0.1:8201")]
        listen: SocketAddr,
        /// The `bao` binary to use (default: `bao` on PATH, then ./.venv/bin/bao, else install it).
        #[arg(long)]
        bao: Option<PathBuf>,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("aegis: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Serve { config } => {
            let config = match Config::load(config.as_deref(), &ProcessEnv) {
                Ok(c) => c,
                Err(e) => {
                    eprint!("aegis: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            crate::telemetry::init(config.log_format, config.log_filter.as_deref());
            runtime.block_on(serve(config))
        }
        Command::Dev { listen, bao } => runtime.block_on(crate::dev::run(listen, bao)),
    }
}

async fn serve(config: Config) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(config.listen_addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(addr = %config.listen_addr, error = %e, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    let state = match crate::server::build_state(config) {
        Ok(s) => s,
        Err(e) => {
            eprint!("aegis: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match crate::server::run(listener, state, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            ExitCode::FAILURE
        }
    }
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}
