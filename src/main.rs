//! The `weir` command: thin glue from the command line to the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing::{error, info};

use weir::config;
use weir::server::Server;
use weir::state::Snapshot;

/// Where `weir run` and `weir check` look for their config unless told otherwise.
const DEFAULT_CONFIG: &str = "config/weir.toml";

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "A load-aware HTTPS reverse proxy with built-in worker autoscaling"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with the given config until SIGTERM or SIGINT.
    Run {
        /// Path to the TOML config.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate a config (including certificates) and exit non-zero on the first error.
    Check {
        /// Path to the TOML config.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Run the demo worker (a small HTTP server for trying, testing and benchmarking weir).
    DemoWorker {
        /// Address to listen on; repeat to serve several ports from one process.
        #[arg(long, default_value = "127.0.0.1:3001")]
        listen: Vec<SocketAddr>,
        /// Name reported in responses (default: demo@PORT).
        #[arg(long)]
        name: Option<String>,
        /// Wait this long before every answer, e.g. "20ms".
        #[arg(long, default_value = "0ms", value_parser = config::parse_duration)]
        delay: std::time::Duration,
        /// Runtime threads (1 = single-threaded).
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match cli.command {
        Command::Check { config } => match load(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => run(&config),
        Command::DemoWorker {
            listen,
            name,
            delay,
            threads,
        } => match weir::demo::run(&listen, name, delay, threads) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn load(path: &std::path::Path) -> Result<Snapshot, config::ConfigError> {
    let origin = path.display().to_string();
    let parsed = config::load(path)?;
    Snapshot::build(parsed, &origin)
}

fn run(path: &std::path::Path) -> ExitCode {
    let snapshot = match load(path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match Server::start(snapshot) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = wait_for_stop_signal() {
        error!(error = %e, "cannot wait for signals; shutting down");
    }
    info!("shutting down: no new connections, finishing in-flight requests");
    server.shutdown();
    info!("stopped");
    ExitCode::SUCCESS
}

fn wait_for_stop_signal() -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    })
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
