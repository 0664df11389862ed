//! The `steward` command: argument parsing, output and wiring. The work lives
//! in the `steward-*` library crates.

mod alert;
mod backup;
mod check;
mod converge;
mod doctor;
mod fleet;
mod image;
mod init;
mod serve;
mod snapshot;
mod table;
mod token;
mod top;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use steward_spec::{LoadError, Spec};

/// Exit codes (stable, documented in the README).
pub(crate) mod exit {
    /// Success.
    pub(crate) const OK: u8 = 0;
    /// The thing checked is unhealthy or failed.
    pub(crate) const FAILED: u8 = 1;
    /// Usage or spec error; nothing was started.
    pub(crate) const USAGE: u8 = 2;
}

#[derive(Parser)]
#[command(
    name = "steward",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("STEWARD_COMMIT"), ")"),
    about = "Operations for cloud applications, in one binary"
)]
struct Cli {
    /// The spec file.
    #[arg(
        short = 'f',
        long,
        global = true,
        env = "STEWARD_SPEC",
        default_value = "steward.toml"
    )]
    spec: PathBuf,
    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Find what runs on this machine (listening ports, their processes,
    /// health and metrics endpoints, databases, data, logs) and write a
    /// starter spec for it; then validate it and run doctor.
    Init {
        /// Take every finding without asking (needed when not on a terminal).
        #[arg(long)]
        yes: bool,
        /// Only print the findings as JSON; write nothing.
        #[arg(long)]
        json: bool,
        /// Replace an existing spec (the old one is kept as FILE.bak).
        #[arg(long)]
        force: bool,
        /// Only this listening port (repeat for more; default: every port).
        #[arg(long = "port", value_name = "PORT")]
        ports: Vec<u16>,
    },
    /// Check the whole spec; report every problem with file:line:col. Starts nothing.
    Validate {
        /// Spec file (overrides --spec).
        file: Option<PathBuf>,
    },
    /// Run health checks once and print the results; exit 1 if any fails.
    Check {
        /// Only these checks (default: all).
        names: Vec<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Run every controller until SIGTERM/SIGINT, with the HTTP API and status page.
    Serve {
        /// Listen address (overrides `[steward] listen`).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Report operational gaps in the spec and state, each with a fix; exit 1 on errors.
    Doctor {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Back up what cannot be rebuilt; list, restore, apply retention, check.
    Backup {
        #[command(subcommand)]
        action: BackupCommand,
    },
    /// Gold images: build (converge sets applied to a root), list, audit for updates.
    Image {
        #[command(subcommand)]
        action: ImageCommand,
    },
    /// Converge hosts to the spec's `[converge.*]` sets: `plan` shows, `apply` changes.
    Converge {
        #[command(subcommand)]
        action: ConvergeCommand,
    },
    /// Roll a service out to a new image (built now unless `--image` names one),
    /// health-gated, with automatic rollback; follows it to the end.
    Deploy {
        /// The service.
        service: String,
        /// An image digest (or unique prefix) already built.
        #[arg(long)]
        image: Option<String>,
        /// Let a deploy waiting on its canaries continue.
        #[arg(long)]
        promote: bool,
        /// Return once the deploy is recorded instead of following it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Go back to the version before the current one (parked instances restart at once).
    Rollback {
        /// The service.
        service: String,
        /// Return once recorded.
        #[arg(long)]
        no_wait: bool,
    },
    /// Set how many instances a service runs (within its spec's replicas).
    Scale {
        /// The service.
        service: String,
        /// Instances wanted (not with --explain).
        #[arg(required_unless_present = "explain")]
        replicas: Option<u32>,
        /// Print the autoscaler's latest decision with its arithmetic instead.
        #[arg(long, conflicts_with = "replicas")]
        explain: bool,
    },
    /// Services, their instances and deploy history.
    Fleet {
        #[command(subcommand)]
        action: FleetCommand,
    },
    /// Every service live: requests per second, errors, latency
    /// percentiles, instances ready of desired, the autoscaler's decision
    /// (q quits).
    Top {
        /// Print one table and exit instead.
        #[arg(long)]
        once: bool,
        /// How often the view is refreshed, in seconds.
        #[arg(long, default_value_t = 2.0)]
        interval: f64,
        /// Where `steward serve` answers (default: the spec's `listen`);
        /// a token, if it needs one, in STEWARD_TOKEN.
        #[arg(long)]
        url: Option<String>,
    },
    /// Output of a service's instances.
    Logs {
        /// The service.
        service: String,
        /// One instance (id or its suffix).
        instance: Option<String>,
        /// Lines per instance.
        #[arg(long, default_value_t = 100)]
        tail: usize,
        /// Keep printing new output.
        #[arg(long)]
        follow: bool,
    },
    /// Build the images of DIR/steward.toml and serve it: instances, proxies,
    /// checks, backups, dashboard.
    Up {
        /// A directory holding steward.toml (or a spec file).
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Listen address of the API and dashboard.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Stop and destroy every instance (stop `serve` first); versions are kept.
    Down,
    /// Manage API tokens for `auth = "token"` (stored only as hashes).
    Token {
        #[command(subcommand)]
        action: TokenCommand,
    },
    /// Alert channels.
    Alert {
        #[command(subcommand)]
        action: AlertCommand,
    },
    /// Snapshots of servers on OpenStack (`[snapshot.NAME]`): take, list,
    /// restore, apply retention, drill.
    Snapshot {
        #[command(subcommand)]
        action: SnapshotCommand,
    },
    /// Print a shell completion script, e.g. `steward completions bash >
    /// /etc/bash_completion.d/steward`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write the man pages (one per command) into a directory.
    #[command(hide = true)]
    Man {
        /// Where to write them (created when missing).
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum AlertCommand {
    /// Send a test notice through one channel (all when none is named).
    Test {
        /// An `[alert.NAME]`.
        channel: Option<String>,
    },
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Snapshot the service's server now (Nova createImage) and wait until
    /// its image is uploaded.
    Take {
        /// A `[snapshot.NAME]`.
        name: String,
        /// This server (a Nova id) instead of the service's oldest ready one.
        #[arg(long)]
        server: Option<String>,
    },
    /// The snapshots taken, newest first.
    List {
        /// `[snapshot.NAME]`s (default: all).
        names: Vec<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Boot a server from a snapshot (default: the newest), with the
    /// service's flavor and networks; it is yours afterwards.
    Restore {
        /// A `[snapshot.NAME]`.
        name: String,
        /// A snapshot id (or its start).
        id: Option<String>,
    },
    /// Delete the snapshots the `keep` policy does not keep.
    Forget {
        /// `[snapshot.NAME]`s (default: all).
        names: Vec<String>,
        /// Only show what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Boot the newest snapshot, run the drill's check against the server,
    /// delete it; exit 1 when it fails.
    Drill {
        /// `[snapshot.NAME]`s (default: all).
        names: Vec<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum FleetCommand {
    /// Each service: version, desired and ready counts, instances.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Deploys: who, what, when, result.
    History {
        /// Only this service.
        service: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Servers and images on the spec's clouds that carry this steward's tag
    /// but that its state does not know.
    Orphans {
        /// Delete them (servers until Nova no longer shows them).
        #[arg(long)]
        delete: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print it once.
    Create {
        /// A unique name (who or what uses it).
        #[arg(long)]
        name: String,
        /// `read`: status, history, metrics, events; `operate`: also actions.
        #[arg(long, value_enum, default_value_t = ScopeArg::Read)]
        scope: ScopeArg,
    },
    /// List tokens (never their secrets).
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token; it is refused from the next request on.
    Revoke {
        /// The token's name.
        name: String,
    },
}

#[derive(Subcommand)]
enum BackupCommand {
    /// Run backups now (default: all); one new snapshot each.
    Run {
        /// Backups to run.
        names: Vec<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// List snapshots.
    List {
        /// Backups to list (default: all).
        names: Vec<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Restore a snapshot (default: the newest) into a directory or a database.
    Restore {
        /// The backup.
        name: String,
        /// Snapshot id or prefix (default: latest).
        snapshot: Option<String>,
        /// Directory to restore into.
        #[arg(
            long,
            required_unless_present = "to_postgres",
            conflicts_with = "to_postgres"
        )]
        target: Option<PathBuf>,
        /// For a postgres backup: restore the dump into this database.
        #[arg(long)]
        to_postgres: Option<String>,
    },
    /// Remove snapshots the retention policy does not keep.
    Forget {
        /// Backups (default: all).
        names: Vec<String>,
        /// Only show what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Delete data no snapshot uses any more.
    Prune {
        /// Backups (default: all).
        names: Vec<String>,
    },
    /// Restore the newest snapshot somewhere harmless and verify it (a restore drill).
    Drill {
        /// Backups (default: all).
        names: Vec<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// The backup policy as a report: what is backed up, how often, how long it is
    /// kept, when it was last restored, and what has no backup at all.
    Policy {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Verify the repository; exit 1 when anything is wrong.
    Check {
        /// Backups (default: all).
        names: Vec<String>,
        /// Also read and verify every pack.
        #[arg(long)]
        read_data: bool,
    },
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Build images (default: all); identical inputs reuse the stored image.
    Build {
        /// Images to build.
        names: Vec<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// List built images with digest, date, package count and size.
    List {
        /// Images (default: all).
        names: Vec<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Compare the newest build with what its apt sources offer now; exit 1 when stale.
    Audit {
        /// Images (default: all).
        names: Vec<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ConvergeCommand {
    /// Show what would change, with a diff per file; exit 1 when anything would.
    Plan {
        #[command(flatten)]
        args: ConvergeArgs,
        /// Show diffs of content that comes from secret references.
        #[arg(long)]
        show_secrets: bool,
    },
    /// Make the changes; exit 1 when a resource failed.
    Apply {
        #[command(flatten)]
        args: ConvergeArgs,
    },
}

#[derive(clap::Args)]
struct ConvergeArgs {
    /// Only these sets (default: all).
    sets: Vec<String>,
    /// Converge this directory as if it were `/` (images, tests).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum ScopeArg {
    Read,
    Operate,
}

/// A reader that goes away (`steward fleet status | head`) ends the command
/// quietly, as it ends `ls` or `cat`: Rust's `println!` panics on the closed
/// pipe, so a panic saying exactly that exits with the status a shell gives a
/// command killed by SIGPIPE (141) and no message. Any other panic reports
/// as before.
fn quiet_on_closed_stdout() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        report(info);
    }));
}

/// Writes bytes to standard output; a reader that went away ends the
/// command as a closed pipe ends any (141).
fn print_bytes(bytes: &[u8]) -> u8 {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => exit::OK,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 141,
        Err(e) => {
            eprintln!("error: cannot write to standard output: {e}");
            exit::FAILED
        }
    }
}

fn init_logging(format: LogFormat, verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("STEWARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{default},hyper=warn,h2=warn,rustls=warn,reqwest=warn,tokio_postgres=warn,amqprs=warn,lettre=warn,hickory=warn,rustic_core=off")));
    // Colour only for a person at a terminal (never in a log file or a
    // journal), and never with NO_COLOR set (no-color.org).
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// The named entries of one spec section (all when `names` is empty), or a message
/// naming the unknown one with a "did you mean". `what` is e.g. "backup",
/// `section` e.g. "backup.NAME".
pub(crate) fn select<'a, T>(
    spec: &Spec,
    entries: &'a std::collections::BTreeMap<String, T>,
    names: &[String],
    what: &str,
    section: &str,
) -> Result<Vec<&'a T>, String> {
    if entries.is_empty() {
        return Err(format!("{} has no [{section}] entries", spec.file));
    }
    if names.is_empty() {
        return Ok(entries.values().collect());
    }
    names
        .iter()
        .map(|n| {
            entries.get(n).ok_or_else(|| {
                let hint = steward_spec::did_you_mean(n, entries.keys().map(String::as_str))
                    .map(|b| format!("; did you mean `{b}`?"))
                    .unwrap_or_default();
                format!("no {what} `{n}`{hint}")
            })
        })
        .collect()
}

/// Loads the spec or prints every problem and returns the exit code.
pub(crate) fn load_spec(path: &Path) -> Result<Spec, u8> {
    match Spec::load(path) {
        Ok(s) => Ok(s),
        Err(e) => {
            report(e);
            Err(exit::USAGE)
        }
    }
}

/// Prints each spec problem as its own report (file:line:col, snippet, hint),
/// then a one-line summary.
fn report(e: LoadError) {
    match e {
        LoadError::Invalid(all) => {
            let summary = all.to_string();
            for err in all.errors {
                eprintln!("{:?}", miette::Report::new(err));
            }
            eprintln!("error: {summary}");
        }
        other => eprintln!("{:?}", miette::Report::new(other)),
    }
}

fn main() -> ExitCode {
    quiet_on_closed_stdout();
    let cli = Cli::parse();
    init_logging(cli.log_format, cli.verbose);
    let code = match cli.command {
        Command::Validate { file } => {
            let path = file.unwrap_or(cli.spec);
            match load_spec(&path) {
                Ok(spec) => {
                    println!(
                        "{}: valid ({} checks, {} alert channels, {} maintenance windows, {} converge sets, {} backups, {} images, {} services)",
                        path.display(),
                        spec.checks.len(),
                        spec.alerts.len(),
                        spec.maintenance.len(),
                        spec.converge.len(),
                        spec.backups.len(),
                        spec.images.len(),
                        spec.services.len()
                    );
                    exit::OK
                }
                Err(code) => code,
            }
        }
        Command::Init {
            yes,
            json,
            force,
            ports,
        } => init::run(
            &cli.spec,
            init::Options {
                yes,
                json,
                force,
                ports,
            },
        ),
        Command::Check { names, json } => runtime().block_on(check::run(&cli.spec, &names, json)),
        Command::Serve { listen } => serve_runtime().block_on(serve::run(&cli.spec, listen)),
        Command::Doctor { json } => doctor::run(&cli.spec, json),
        Command::Backup { action } => backup::run(
            &cli.spec,
            match action {
                BackupCommand::Run { names, json } => backup::Action::Run { names, json },
                BackupCommand::List { names, json } => backup::Action::List { names, json },
                BackupCommand::Restore {
                    name,
                    snapshot,
                    target,
                    to_postgres,
                } => backup::Action::Restore {
                    name,
                    snapshot,
                    target,
                    to_postgres,
                },
                BackupCommand::Forget {
                    names,
                    dry_run,
                    json,
                } => backup::Action::Forget {
                    names,
                    dry_run,
                    json,
                },
                BackupCommand::Prune { names } => backup::Action::Prune { names },
                BackupCommand::Drill { names, json } => backup::Action::Drill { names, json },
                BackupCommand::Policy { json } => backup::Action::Policy { json },
                BackupCommand::Check { names, read_data } => {
                    backup::Action::Check { names, read_data }
                }
            },
        ),
        Command::Image { action } => image::run(
            &cli.spec,
            match action {
                ImageCommand::Build { names, json } => image::Action::Build { names, json },
                ImageCommand::List { names, json } => image::Action::List { names, json },
                ImageCommand::Audit { names, json } => image::Action::Audit { names, json },
            },
        ),
        Command::Converge { action } => {
            let (mode, args, show_secrets) = match action {
                ConvergeCommand::Plan { args, show_secrets } => {
                    (converge::Mode::Plan, args, show_secrets)
                }
                ConvergeCommand::Apply { args } => (converge::Mode::Apply, args, false),
            };
            converge::run(
                &cli.spec,
                mode,
                converge::Options {
                    sets: args.sets,
                    root: args.root,
                    json: args.json,
                    show_secrets,
                },
            )
        }
        Command::Deploy {
            service,
            image,
            promote,
            no_wait,
        } => fleet::deploy(&cli.spec, &service, image.as_deref(), promote, !no_wait),
        Command::Rollback { service, no_wait } => fleet::rollback(&cli.spec, &service, !no_wait),
        Command::Scale {
            service,
            replicas,
            explain,
        } => match (explain, replicas) {
            (true, _) | (false, None) => fleet::explain(&cli.spec, &service),
            (false, Some(n)) => fleet::scale(&cli.spec, &service, n),
        },
        Command::Fleet { action } => match action {
            FleetCommand::Status { json } => fleet::status(&cli.spec, json),
            FleetCommand::Orphans { delete, json } => fleet::orphans(&cli.spec, delete, json),
            FleetCommand::History { service, json } => {
                fleet::history(&cli.spec, service.as_deref(), json)
            }
        },
        Command::Logs {
            service,
            instance,
            tail,
            follow,
        } => fleet::logs(&cli.spec, &service, instance.as_deref(), tail, follow),
        Command::Top {
            once,
            interval,
            url,
        } => top::top(
            &cli.spec,
            once,
            std::time::Duration::from_secs_f64(interval.clamp(0.2, 3600.0)),
            url,
        ),
        Command::Up { dir, listen } => fleet::up(&dir, listen),
        Command::Down => fleet::down(&cli.spec),
        Command::Alert {
            action: AlertCommand::Test { channel },
        } => alert::test(&cli.spec, channel.as_deref()),
        Command::Snapshot { action } => snapshot::run(
            &cli.spec,
            match action {
                SnapshotCommand::Take { name, server } => snapshot::Action::Take { name, server },
                SnapshotCommand::List { names, json } => snapshot::Action::List { names, json },
                SnapshotCommand::Restore { name, id } => snapshot::Action::Restore { name, id },
                SnapshotCommand::Forget { names, dry_run } => {
                    snapshot::Action::Forget { names, dry_run }
                }
                SnapshotCommand::Drill { names, json } => snapshot::Action::Drill { names, json },
            },
        ),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "steward", &mut script);
            print_bytes(&script)
        }
        Command::Man { dir } => {
            use clap::CommandFactory;
            match std::fs::create_dir_all(&dir)
                .and_then(|()| clap_mangen::generate_to(Cli::command(), &dir))
            {
                Ok(()) => exit::OK,
                Err(e) => {
                    eprintln!("error: cannot write man pages to {}: {e}", dir.display());
                    exit::FAILED
                }
            }
        }
        Command::Token { action } => token::run(
            &cli.spec,
            match action {
                TokenCommand::Create { name, scope } => token::Action::Create {
                    name,
                    scope: match scope {
                        ScopeArg::Read => steward_state::Scope::Read,
                        ScopeArg::Operate => steward_state::Scope::Operate,
                    },
                },
                TokenCommand::List { json } => token::Action::List { json },
                TokenCommand::Revoke { name } => token::Action::Revoke { name },
            },
        ),
    };
    ExitCode::from(code)
}

/// `serve` runs its async work on one thread: probes are I/O-bound, and a
/// single-threaded scheduler never pays for waking idle workers (measured with
/// benches/probe.sh). Blocking work (SQLite reads, DNS) still uses tokio's pool.
pub(crate) fn serve_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("steward")
        .build()
        .expect("tokio runtime")
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("steward")
        .build()
        .expect("tokio runtime")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
