//! The `weir` command: thin glue from the command line to the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing::{error, info};

use http::Method;
use weir::admin::{cli, cli::AdminTarget, views};
use weir::app::App;
use weir::config;
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
    /// List every worker: id, pool, state, in-flight, address, age.
    Workers(AdminArgs),
    /// List the requests waiting for a worker.
    Queue(AdminArgs),
    /// List the pools: ready, desired, min, max, in-flight, queued.
    Pools(AdminArgs),
    /// Show the scaling history.
    Activity(AdminArgs),
    /// Show the fleet (`[cluster]`): its instances and which one leads.
    Fleet(AdminArgs),
    /// Set a pool's worker count now; the scaler carries on from there.
    Scale {
        /// The pool.
        pool: String,
        /// Desired workers (0 to max_workers).
        workers: u32,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show or steer a pool's rollout: status (default), pause, resume, abort, undo.
    Rollout {
        /// The pool.
        pool: String,
        /// status | pause | resume | abort | undo
        #[arg(default_value = "status")]
        action: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Make the running weir load its config file again.
    Reload(AdminArgs),
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
        /// Answer every Nth request 500 (a version with a bug, for trying canaries).
        #[arg(long, default_value_t = 0)]
        fail_every: u64,
    },
}

/// How the CLI views reach a running weir.
#[derive(clap::Args, Clone)]
struct AdminArgs {
    /// Admin API URL (default: the config's admin.listen, else http://127.0.0.1:9901).
    #[arg(long)]
    admin: Option<String>,
    /// Bearer token (default: $WEIR_ADMIN_TOKEN, else the config's admin token).
    #[arg(long, env = "WEIR_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Config to read the admin address and token from.
    #[arg(long, short, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
}

impl AdminArgs {
    fn target(&self) -> Result<AdminTarget, String> {
        let from_config = config::load(&self.config).ok();
        let url = match (&self.admin, &from_config) {
            (Some(url), _) => url.clone(),
            (None, Some(c)) => {
                let listen = c
                    .admin
                    .listen
                    .to_string()
                    .replace("0.0.0.0", "127.0.0.1")
                    .replace("[::]", "[::1]");
                format!("http://{listen}")
            }
            (None, None) => format!("http://{}", config::DEFAULT_ADMIN_LISTEN),
        };
        let token = self
            .token
            .clone()
            .or_else(|| from_config.and_then(|c| c.admin.resolved_token().ok().flatten()));
        AdminTarget::parse(&url, token)
    }
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
        Command::Workers(args) => admin_view(&args, "/api/v1/workers", |b| {
            serde_json::from_slice::<Vec<views::WorkerView>>(b).map(|v| cli::workers_table(&v))
        }),
        Command::Queue(args) => admin_view(&args, "/api/v1/queue", |b| {
            serde_json::from_slice::<Vec<views::QueueView>>(b).map(|v| cli::queue_table(&v))
        }),
        Command::Pools(args) => admin_view(&args, "/api/v1/pools", |b| {
            serde_json::from_slice::<Vec<views::PoolView>>(b).map(|v| cli::pools_table(&v))
        }),
        Command::Activity(args) => admin_view(&args, "/api/v1/activity", |b| {
            serde_json::from_slice::<Vec<views::ActivityView>>(b).map(|v| cli::activity_table(&v))
        }),
        Command::Fleet(args) => admin_view(&args, "/api/v1/cluster", |b| {
            serde_json::from_slice::<weir::fleet::FleetView>(b).map(|v| cli::cluster_table(&v))
        }),
        Command::Scale {
            pool,
            workers,
            admin,
        } => admin_post(
            &admin,
            &format!("/api/v1/pools/{pool}/scale"),
            format!("{{\"workers\": {workers}}}"),
            |v| format!("{pool}: scaling to {} worker(s)\n", v["workers"]),
        ),
        Command::Rollout {
            pool,
            action,
            admin,
        } => admin_post(
            &admin,
            &format!("/api/v1/pools/{pool}/rollout"),
            serde_json::json!({ "action": action }).to_string(),
            |v| {
                let canary = match (v["step"].as_u64(), v["weight"].as_u64()) {
                    (Some(step), Some(weight)) => {
                        format!(", canary step {step}/{} at {weight}%", v["steps"])
                    }
                    _ => String::new(),
                };
                let gate = v["gate"]
                    .as_str()
                    .map(|g| format!("  last gate: {g}\n"))
                    .unwrap_or_default();
                format!(
                    "{pool}: rollout {} -> {} {}{canary}: {} old ready, {} new ready, {} replaced, {} failed starts\n{gate}",
                    v["from"].as_str().unwrap_or("?"),
                    v["to"].as_str().unwrap_or("?"),
                    v["state"].as_str().unwrap_or("?"),
                    v["old_ready"],
                    v["new_ready"],
                    v["replaced"],
                    v["failures"]
                )
            },
        ),
        Command::Reload(args) => admin_post(&args, "/api/v1/reload", String::new(), |v| {
            let changed: Vec<String> = v["changed"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|c| c.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            if changed.is_empty() {
                "reloaded: nothing changed\n".to_string()
            } else {
                format!("reloaded:\n  {}\n", changed.join("\n  "))
            }
        }),
        Command::DemoWorker {
            listen,
            name,
            delay,
            threads,
            fail_every,
        } => match weir::demo::run(&listen, name, delay, threads, fail_every) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn block_on<T>(future: impl std::future::Future<Output = T>) -> Result<T, String> {
    let runtime =
        weir::server::current_thread_runtime().map_err(|e| format!("cannot start runtime: {e}"))?;
    Ok(runtime.block_on(future))
}

fn admin_view(
    args: &AdminArgs,
    path: &str,
    render: impl Fn(&[u8]) -> Result<String, serde_json::Error>,
) -> ExitCode {
    let result = args.target().and_then(|target| {
        block_on(async move { target.call(Method::GET, path, None).await }).and_then(|r| r)
    });
    match result {
        Ok(bytes) if args.json => {
            println!("{}", String::from_utf8_lossy(&bytes));
            ExitCode::SUCCESS
        }
        Ok(bytes) => match render(&bytes) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("unexpected answer from the admin API: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn admin_post(
    args: &AdminArgs,
    path: &str,
    body: String,
    render: impl Fn(&serde_json::Value) -> String,
) -> ExitCode {
    let result = args.target().and_then(|target| {
        block_on(async move { target.call(Method::POST, path, Some(body)).await }).and_then(|r| r)
    });
    match result {
        Ok(bytes) if args.json => {
            println!("{}", String::from_utf8_lossy(&bytes));
            ExitCode::SUCCESS
        }
        Ok(bytes) => {
            let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            print!("{}", render(&value));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: &std::path::Path) -> Result<Snapshot, config::ConfigError> {
    let origin = path.display().to_string();
    let parsed = config::load(path)?;
    Snapshot::build(parsed, &origin)
}

/// The providers' checks before serving (a Kubernetes Deployment an HPA already scales),
/// each bounded so a component that does not answer delays the start by seconds at most.
fn preflight(config: &weir::config::Config) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot build a runtime: {e}"))?;
    runtime.block_on(async {
        match tokio::time::timeout(PREFLIGHT_WAIT, weir::provider::preflight(config)).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(wait = ?PREFLIGHT_WAIT, "provider checks did not finish; starting anyway");
                Ok(())
            }
        }
    })
}

/// Longest the providers' start checks may take.
const PREFLIGHT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn run(path: &std::path::Path) -> ExitCode {
    let snapshot = match load(path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    weir::limit::nofile::raise_and_check(&snapshot.config);
    weir::heap::keep_heap_top();
    if let Err(e) = preflight(&snapshot.config) {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    let server = match App::start(snapshot, Some(path.to_path_buf())) {
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
    let runtime = weir::server::current_thread_runtime()?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    })
}

/// rustls warns once per handshake about things clients do (an IP address sent as SNI, which
/// curl, wrk and ab all do): a log line per connection that any client can make weir write.
/// Its warnings stay out unless `WEIR_LOG` names rustls itself.
const QUIET_TLS: &str = "rustls=error";

fn init_tracing() {
    let spec = std::env::var("WEIR_LOG").unwrap_or_else(|_| "info".into());
    let spec = if spec.contains("rustls") {
        spec
    } else {
        format!("{spec},{QUIET_TLS}")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&spec)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("info,{QUIET_TLS}")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
