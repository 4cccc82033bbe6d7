//! `autouser`: run pg-autouser's provisioning locally, with the same core the Lambda
//! functions use.
//!
//! Exit codes: 0 success; 1 refused (policy, name conflict, missing privilege: a person must
//! act); 2 bad command line; 65 malformed event; 75 transient failure (retry later);
//! 78 invalid config.

mod commands;
mod demo;
mod progress;
mod view;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "autouser", version, about = "Just-in-time PostgreSQL users, run locally")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create or unlock the database user of a starting session and grant its roles.
    SessionStart(EventArgs),
    /// Close a session: lock or drop its user once no other session of theirs remains.
    SessionEnd(EventArgs),
    /// Check, as the admin, that sessions on a database will work; print each finding and its fix.
    /// Exits 1 when a check fails.
    Preflight {
        /// Configuration file (YAML or JSON).
        #[arg(long)]
        config: PathBuf,
        /// The database's `name` in the config.
        #[arg(long)]
        database: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Find every RDS PostgreSQL instance and Aurora PostgreSQL cluster carrying the admin tag,
    /// check each as its admin (preflight), create the managed group where missing, and print
    /// the report. Exits 1 when a database needs attention.
    Discover {
        /// Configuration file (YAML or JSON): tag keys, managed group, policy, and the entries
        /// of databases that need more than IAM authentication.
        #[arg(long)]
        config: PathBuf,
        /// A region to search; repeat for several.
        #[arg(long = "region", required = true)]
        regions: Vec<String>,
        /// Databases checked at the same time.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Only check; do not create the managed group.
        #[arg(long)]
        no_bootstrap: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Close sessions whose end was lost and lock managed users left able to log in: sessions
    /// older than `max_session_duration` (default 12h) whose user has no live connection are
    /// ended as their session-end would have; managed users that can log in with no open
    /// session are locked. Prints a JSON report per database; exits 1 when an action failed.
    Reap {
        /// Configuration file (YAML or JSON).
        #[arg(long)]
        config: PathBuf,
        /// Only this database (its `name` in the config); all of them by default.
        #[arg(long)]
        database: Option<String>,
    },
    /// Show what a session-start or session-end would decide and the exact SQL it would run
    /// now, for a reviewer. Reads the state in a transaction that is rolled back: changes
    /// nothing. Exits as the call would: 0, or the call's error and exit code.
    Plan {
        #[command(subcommand)]
        call: PlanCall,
    },
    /// Show who has access now: on each configured database (or one), read as its admin and
    /// changing nothing, the managed users, whether each can log in, its roles, its open
    /// sessions and when the reaper would close them, drift between the catalog and the
    /// ledger, and the login roles outside the managed group.
    Status {
        /// Configuration file (YAML or JSON).
        #[arg(long)]
        config: PathBuf,
        /// Only this database (its `name` in the config); all of them by default.
        #[arg(long)]
        database: Option<String>,
        /// Print one JSON object: `{"databases": [...]}`.
        #[arg(long)]
        json: bool,
    },
    /// Start a throwaway PostgreSQL and walk through keep and best_effort_drop sessions.
    Demo {
        /// Also walk through an RDS instance resolved through a local AWS emulator (moto).
        #[arg(long)]
        rds: bool,
    },
}

#[derive(Subcommand)]
enum PlanCall {
    /// Plan a session-start.
    SessionStart(PlanArgs),
    /// Plan a session-end.
    SessionEnd(PlanArgs),
}

#[derive(clap::Args)]
struct PlanArgs {
    #[command(flatten)]
    event: EventArgs,
    /// Print the plan as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct EventArgs {
    /// Configuration file (YAML or JSON).
    #[arg(long)]
    config: PathBuf,
    /// Event file (JSON), or '-' for standard input.
    #[arg(long)]
    event: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    for target in autouser_aws::CREDENTIAL_LOG_TARGETS {
        filter = filter.add_directive(format!("{target}=warn").parse().expect("a valid directive"));
    }
    tracing_subscriber::fmt()
        .with_writer(|| progress::StderrAroundBar)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("autouser: cannot start the async runtime: {error}");
            return ExitCode::from(70);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::SessionStart(args) => {
                commands::session_start(&args.config, &args.event, &commands::AwsSetup::FromEnvironment).await
            }
            Command::SessionEnd(args) => {
                commands::session_end(&args.config, &args.event, &commands::AwsSetup::FromEnvironment).await
            }
            Command::Preflight { config, database, json } => {
                commands::preflight(&config, &database, json, &commands::AwsSetup::FromEnvironment).await
            }
            Command::Discover { config, regions, concurrency, no_bootstrap, json } => {
                let options =
                    autouser_aws::discovery::DiscoveryOptions { regions, concurrency, bootstrap: !no_bootstrap };
                commands::discover(&config, &options, json, &commands::AwsSetup::FromEnvironment).await
            }
            Command::Reap { config, database } => {
                commands::reap(&config, database.as_deref(), &commands::AwsSetup::FromEnvironment).await
            }
            Command::Plan { call } => {
                let (kind, args) = match call {
                    PlanCall::SessionStart(args) => (commands::PlannedKind::SessionStart, args),
                    PlanCall::SessionEnd(args) => (commands::PlannedKind::SessionEnd, args),
                };
                let aws = commands::AwsSetup::FromEnvironment;
                commands::plan(kind, &args.event.config, &args.event.event, args.json, &aws).await
            }
            Command::Status { config, database, json } => {
                commands::status(&config, database.as_deref(), json, &commands::AwsSetup::FromEnvironment).await
            }
            Command::Demo { rds } => demo::run(rds).await,
        }
    });
    match result {
        Ok(json) => {
            if let Some(json) = json {
                println!("{json}");
            }
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!("autouser: {}", failure.message);
            ExitCode::from(failure.exit_code)
        }
    }
}
