//! `autouser-bench`: pg-autouser against a minimal-SQL baseline on a throwaway local
//! PostgreSQL over TLS, and the footprint of the Lambda binaries. Prints Markdown tables for
//! `BENCHMARKS.md`. Run it with `scripts/bench`, which builds what it measures.

mod burst;
mod lambda;
mod objects;
mod provisioning;
mod reaper;
mod replica;
mod scale;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use provisioning::{Side, Target};
use scratch_postgres::{Cluster, Durability, PgInstall};
use stats::{ms, ratio, Samples};

#[derive(Parser)]
#[command(about = "Benchmarks pg-autouser against a minimal-SQL baseline; prints Markdown")]
struct Args {
    /// Iterations of each latency measurement.
    #[arg(long, default_value_t = 200)]
    iterations: usize,
    /// Distinct users per throughput run.
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// Throughput runs per side and concurrency, alternating ours and baseline; the median
    /// is reported, with the range.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Warm invocations per Lambda function for the peak RSS.
    #[arg(long, default_value_t = 1000)]
    invocations: usize,
    /// The cargo target directory holding `lambda-x86-64/`, `lambda-arm64/` (zips) and
    /// `x86_64-unknown-linux-gnu/release/` (the binaries), as `scripts/bench` builds them.
    /// Without it, the Lambda footprint is not measured.
    #[arg(long)]
    lambda_target_dir: Option<PathBuf>,
    /// Tables in the schema of the object permission benchmark.
    #[arg(long, default_value_t = 10_000)]
    tables: usize,
    /// Users started and ended per side in the object permission benchmark.
    #[arg(long, default_value_t = 20)]
    object_iterations: usize,
    /// Only the object permission benchmark.
    #[arg(long)]
    objects_only: bool,
    /// Only the Lambda footprint (with `--lambda-target-dir`).
    #[arg(long, conflicts_with = "objects_only", requires = "lambda_target_dir")]
    lambda_only: bool,
    /// Managed users with ended sessions in the reaper benchmark; a tenth as many sessions
    /// are closed, and users locked, by its measured runs.
    #[arg(long, default_value_t = 1000)]
    reaper_users: usize,
    /// Reaper runs with nothing to do, for their median.
    #[arg(long, default_value_t = 20)]
    reaper_runs: usize,
    /// Only the reaper benchmark.
    #[arg(long, conflicts_with_all = ["objects_only", "lambda_only"])]
    reaper_only: bool,
    /// Only the scale benchmark: session latency as the kept users grow to each of
    /// `--scale-users`, on one durable server.
    #[arg(long, conflicts_with_all = ["objects_only", "lambda_only", "reaper_only"])]
    scale_only: bool,
    /// The populations of kept users the scale benchmark measures at, ascending.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,3000,10000")]
    scale_users: Vec<usize>,
    /// Users per side and operation at each size of the scale benchmark.
    #[arg(long, default_value_t = 50)]
    scale_iterations: usize,
    /// The config's `creator_roles` for our side of the scale benchmark (0: the admin creates
    /// and manages the users). Without it, the config's default.
    #[arg(long)]
    scale_creator_roles: Option<u32>,
    /// Only the burst benchmark: sessions of one user started all at once, then ended.
    #[arg(long, conflicts_with_all = ["objects_only", "lambda_only", "reaper_only", "scale_only"])]
    burst_only: bool,
    /// Only the read replica benchmark: starts and ends on a hot standby's entry (changes on its
    /// primary, then the wait for the standby's replay) against the same on the primary's.
    #[arg(long, conflicts_with_all = ["objects_only", "lambda_only", "reaper_only", "scale_only", "burst_only"])]
    replica_only: bool,
    /// Only the provisioning tables of the durable server (warm, cold, throughput) and the
    /// ratio lines the main run ends with.
    #[arg(long, conflicts_with_all = ["objects_only", "lambda_only", "reaper_only", "scale_only", "burst_only"])]
    provisioning_only: bool,
    /// The burst sizes (sessions of one user at once, one admin connection each; the test
    /// server allows 300 connections).
    #[arg(long, value_delimiter = ',', default_value = "10,50,100,200")]
    burst_sessions: Vec<usize>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("autouser-bench: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> Result<(), String> {
    let install = PgInstall::from_env().map_err(|e| e.to_string())?;
    println!("## Machine\n\n{}\n- PostgreSQL {}\n", machine(), install.major());
    if args.scale_only {
        let cluster = Cluster::start_with(&install, Durability::Production).map_err(|e| e.to_string())?;
        provisioning::prepare_server(&cluster).await.map_err(|e| e.to_string())?;
        return scale_table(&cluster, args, install.major()).await;
    }
    if args.burst_only {
        let cluster = Cluster::start_with(&install, Durability::Production).map_err(|e| e.to_string())?;
        provisioning::prepare_server(&cluster).await.map_err(|e| e.to_string())?;
        return burst_table(&cluster, &args.burst_sessions).await.map_err(|e| e.to_string());
    }
    if args.replica_only {
        let mut cluster = Cluster::start_with(&install, Durability::Production).map_err(|e| e.to_string())?;
        provisioning::prepare_server(&cluster).await.map_err(|e| e.to_string())?;
        let standby = cluster.start_standby().map_err(|e| e.to_string())?;
        return replica_table(&cluster, &standby, args.iterations).await.map_err(|e| e.to_string());
    }
    if args.provisioning_only {
        let cluster = Cluster::start_with(&install, Durability::Production).map_err(|e| e.to_string())?;
        provisioning::prepare_server(&cluster).await.map_err(|e| e.to_string())?;
        println!("## Provisioning, durable server (fsync=on, the default)\n");
        let ratios = provisioning_tables(&cluster, args, "p").await.map_err(|e| e.to_string())?;
        ratios.print();
        return Ok(());
    }
    let one_table = args.objects_only || args.lambda_only || args.reaper_only;
    let mut durable_ratios = None;
    for durability in [Durability::Production, Durability::Test] {
        if one_table && durability == Durability::Test {
            continue;
        }
        let cluster = Cluster::start_with(&install, durability).map_err(|e| e.to_string())?;
        provisioning::prepare_server(&cluster).await.map_err(|e| e.to_string())?;
        let run = match durability {
            Durability::Production => "p",
            Durability::Test => "t",
        };
        if !one_table {
            match durability {
                Durability::Production => println!("## Provisioning, durable server (fsync=on, the default)\n"),
                Durability::Test => println!("## Provisioning, fsync=off (the server's commit cost removed)\n"),
            }
            let ratios = provisioning_tables(&cluster, args, run).await.map_err(|e| e.to_string())?;
            if durability == Durability::Production {
                durable_ratios = Some(ratios);
            }
        }
        if durability == Durability::Production {
            if !one_table {
                round_trip_table(&cluster).await.map_err(|e| e.to_string())?;
            }
            if let (false, false, Some(dir)) = (args.objects_only, args.reaper_only, &args.lambda_target_dir) {
                lambda_tables(&cluster, dir, args.invocations).await?;
            }
            if !args.lambda_only && !args.reaper_only {
                object_table(&cluster, args).await.map_err(|e| e.to_string())?;
            }
            if !args.lambda_only && !args.objects_only {
                reaper_table(&cluster, args).await?;
            }
        }
    }
    if let Some(ratios) = durable_ratios {
        ratios.print();
    }
    Ok(())
}

/// The concurrency levels of the throughput measurement.
const CONCURRENCY: [usize; 3] = [1, 8, 32];

/// Ours over the baseline (medians) in the provisioning tables: the lines the main run ends
/// with, for its durable server.
struct ProvisioningRatios {
    warm_start: f64,
    warm_end: f64,
    /// Users per second, at each of [`CONCURRENCY`].
    throughput: [f64; CONCURRENCY.len()],
}

impl ProvisioningRatios {
    fn print(&self) {
        println!("warm start ratio: {:.2}", self.warm_start);
        println!("warm end ratio: {:.2}", self.warm_end);
        for (concurrency, ratio) in CONCURRENCY.into_iter().zip(self.throughput) {
            println!("throughput ratio c{concurrency}: {ratio:.2}");
        }
    }
}

/// Ours over the baseline, medians.
fn median_ratio(ours: &Samples, baseline: &Samples) -> f64 {
    ours.median().as_secs_f64() / baseline.median().as_secs_f64()
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model =
        cpuinfo.lines().find_map(|l| l.strip_prefix("model name")).map(|l| l.trim_start_matches([' ', '\t', ':']));
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:")).map(str::trim);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "- CPU: {} × {}\n- memory: {}\n- Linux {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        model.unwrap_or("unknown"),
        memory.unwrap_or("unknown"),
        kernel.trim()
    )
}

async fn provisioning_tables(
    cluster: &Cluster,
    args: &Args,
    run: &str,
) -> Result<ProvisioningRatios, autouser_engine::Error> {
    let target = Target::new(cluster, cluster.port())?;
    let n = args.iterations;
    let [ours, baseline] = provisioning::warm(&target, n, run).await?;
    let [ours_cold, baseline_cold] = provisioning::cold(&target, n, run).await?;
    for i in [0, n - 1] {
        let ours_state = provisioning::user_state(cluster, &format!("{run}-warm-ours-{i}")).await?;
        let baseline_state = provisioning::user_state(cluster, &format!("{run}-warm-baseline-{i}")).await?;
        assert_eq!(ours_state, baseline_state, "both sides must leave the same end state");
    }
    println!("Latency over {n} users each, two database roles per user; medians and p99 in ms.\n");
    println!("| operation | ours median | ours p99 | baseline median | baseline p99 | ratio (median) |");
    println!("|---|---:|---:|---:|---:|---:|");
    latency_row("warm session-start", &ours.start, &baseline.start);
    latency_row("warm session-end (keep)", &ours.end, &baseline.end);
    latency_row("cold session-start (new TLS connection)", &ours_cold, &baseline_cold);
    let mut ratios = ProvisioningRatios {
        warm_start: median_ratio(&ours.start, &baseline.start),
        warm_end: median_ratio(&ours.end, &baseline.end),
        throughput: [0.0; CONCURRENCY.len()],
    };
    println!();
    println!(
        "Throughput: {} distinct users started and ended, one connection per worker; median of {} \
         runs per side (alternating), range in brackets.\n",
        args.users, args.repeats
    );
    println!("| concurrency | ours users/s | baseline users/s | ratio (medians) | ours errors | baseline errors |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for (level, concurrency) in CONCURRENCY.into_iter().enumerate() {
        let mut rates = [Vec::new(), Vec::new()];
        let mut errors = [0, 0];
        for _ in 0..args.repeats {
            for (n, side) in [Side::Ours, Side::Baseline].into_iter().enumerate() {
                // Each run starts from the catalog the warm and cold measurements left.
                let result = provisioning::throughput(&target, side, args.users, concurrency, run).await?;
                provisioning::drop_users(cluster, &format!("{run}-tp")).await?;
                rates[n].push(result.per_second());
                errors[n] += result.errors;
                if let Some(error) = result.first_error {
                    eprintln!("autouser-bench: {} throughput error at concurrency {concurrency}: {error}", side.name());
                }
            }
        }
        let [ours, baseline] = rates.map(|mut r| {
            r.sort_by(f64::total_cmp);
            (r[r.len() / 2], r[0], r[r.len() - 1])
        });
        ratios.throughput[level] = ours.0 / baseline.0;
        println!(
            "| {concurrency} | {:.0} [{:.0}–{:.0}] | {:.0} [{:.0}–{:.0}] | {} | {} | {} |",
            ours.0,
            ours.1,
            ours.2,
            baseline.0,
            baseline.1,
            baseline.2,
            ratio(ours.0, baseline.0),
            errors[0],
            errors[1]
        );
    }
    println!();
    Ok(ratios)
}

/// `SELECT` on every table of one schema, granted at start and revoked at end.
async fn object_table(cluster: &Cluster, args: &Args) -> Result<(), autouser_engine::Error> {
    let began = std::time::Instant::now();
    objects::prepare(cluster, args.tables).await?;
    let setup = began.elapsed();
    let latencies = objects::measure(cluster, args.object_iterations).await?;
    println!("## Object permissions, durable server\n");
    println!(
        "`SELECT` on each of {} tables in one schema (and `USAGE` on it), {} users per side on a warm \
         connection to that database; ms. Baseline: `GRANT SELECT ON ALL TABLES IN SCHEMA` and its \
         `REVOKE`, with the user's creation and lock, in one transaction. Creating the tables took {:.1} s.\n",
        args.tables,
        args.object_iterations,
        setup.as_secs_f64()
    );
    println!("| operation | ours median | ours max | baseline median | baseline max | ratio (median) |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, [ours, baseline]) in
        [("session-start, new user", &latencies.start), ("session-end (keep)", &latencies.end)]
    {
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            ms(ours.median()),
            ms(ours.quantile(1.0)),
            ms(baseline.median()),
            ms(baseline.quantile(1.0)),
            ratio(ours.median().as_secs_f64(), baseline.median().as_secs_f64())
        );
    }
    println!();
    Ok(())
}

/// Session latency at each population of kept users, and the three ratio lines the tooling reads.
async fn scale_table(cluster: &Cluster, args: &Args, major: u32) -> Result<(), String> {
    let sizes = &args.scale_users;
    if sizes.is_empty() || sizes.windows(2).any(|pair| pair[0] >= pair[1]) || args.scale_iterations == 0 {
        return Err(format!(
            "--scale-users must be ascending sizes and --scale-iterations at least 1 (got {sizes:?}, {})",
            args.scale_iterations
        ));
    }
    let began = std::time::Instant::now();
    let scale = scale::measure(cluster, sizes, args.scale_iterations, args.scale_creator_roles).await?;
    let times = &scale.sizes;
    // The value our side used, from the loaded config; "(default)" when the option was not given.
    let creator_roles = match args.scale_creator_roles {
        Some(_) => format!("creator_roles: {}", scale.creator_roles),
        None => format!("creator_roles: {} (default)", scale.creator_roles),
    };
    println!("## Scale, durable server, PostgreSQL {major}, {creator_roles}\n");
    println!(
        "Warm latency (one admin connection per side) with N kept users on the server (started and \
         ended in `keep` through our engine, four connections at a time), {} users per side and \
         operation at each size; then {} cold calls per side, alternating: a new TLS admin connection \
         and a new user's start on it (timed together), then that user's end (the connection's second \
         call). Medians and p99 in ms. The whole run took {:.0} s.\n",
        args.scale_iterations,
        scale::COLD_ITERATIONS,
        began.elapsed().as_secs_f64()
    );
    println!(
        "| kept users | built in s | operation | ours median | ours p99 | baseline median | baseline p99 | ratio (median) |"
    );
    println!("|---:|---:|---|---:|---:|---:|---:|---:|");
    for size in times {
        let [ours, baseline] = &size.sides;
        for (name, ours, baseline) in [
            ("session-start, new user", &ours.new_start, &baseline.new_start),
            ("session-start, kept user", &ours.kept_start, &baseline.kept_start),
            ("session-end (keep)", &ours.end, &baseline.end),
            ("cold session-start, new user (new TLS connection)", &ours.cold_start, &baseline.cold_start),
            ("cold session-end (keep; the connection's second call)", &ours.cold_end, &baseline.cold_end),
        ] {
            println!(
                "| {} | {:.1} | {name} | {} | {} | {} | {} | {} |",
                size.population,
                size.built_in.as_secs_f64(),
                ms(ours.median()),
                ms(ours.p99()),
                ms(baseline.median()),
                ms(baseline.p99()),
                ratio(ours.median().as_secs_f64(), baseline.median().as_secs_f64())
            );
        }
    }
    println!();
    let (first, last) = (&times[0], &times[times.len() - 1]);
    let growth = |of: fn(&scale::SideTimes) -> &Samples| {
        of(&last.sides[0]).median().as_secs_f64() / of(&first.sides[0]).median().as_secs_f64()
    };
    // A start's ratio is the worse of a new user's and a kept user's.
    let start = growth(|t| &t.new_start).max(growth(|t| &t.kept_start));
    let end = growth(|t| &t.end);
    let cold_start = growth(|t| &t.cold_start);
    let sizes = format!("{}/{}", last.population, first.population);
    println!("scale start ratio {sizes}: {start:.2}");
    println!("scale end ratio {sizes}: {end:.2}");
    println!("scale cold start ratio {sizes}: {cold_start:.2}");
    Ok(())
}

/// Bursts of one user: per size, each call's latency and the burst's whole time.
async fn burst_table(cluster: &Cluster, sizes: &[usize]) -> Result<(), autouser_engine::Error> {
    let bursts = burst::measure(cluster, sizes).await?;
    println!(
        "## Bursts of one user, durable server
"
    );
    println!(
        "N sessions of one user started at once, each on its own admin connection opened \
         beforehand (new connections: each one's first start), then all ended at once; every \
         call's latency in ms, and the whole burst's. The first burst of each size creates its user, \
         the second finds it kept. The calls take turns at the user's lock (timeout {} s).\n",
        autouser_engine::pg::LOCK_TIMEOUT.as_secs()
    );
    println!("| sessions | user | start median | start max | all started in | end median | end max | all ended in |");
    println!("|---:|---|---:|---:|---:|---:|---:|---:|");
    for burst in &bursts {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            burst.sessions,
            if burst.user_existed { "kept" } else { "new" },
            ms(burst.start.median()),
            ms(burst.start.quantile(1.0)),
            ms(burst.starts_took),
            ms(burst.end.median()),
            ms(burst.end.quantile(1.0)),
            ms(burst.ends_took)
        );
    }
    println!();
    Ok(())
}

async fn replica_table(primary: &Cluster, standby: &Cluster, iterations: usize) -> Result<(), autouser_engine::Error> {
    let measured = replica::measure(primary, standby, iterations).await?;
    println!("## Sessions on a read replica, durable server\n");
    println!(
        "A hot standby streaming from the server, at idle replication. {iterations} new users per side, \
         alternating; warm admin connections. A replica's call runs on its writer (the primary), \
         then waits until the standby has replayed the commit. Medians and p99 in ms.\n"
    );
    println!("| operation | replica median | replica p99 | primary median | primary p99 | ratio (median) |");
    println!("|---|---:|---:|---:|---:|---:|");
    latency_row("session-start", &measured.replica_start, &measured.primary_start);
    latency_row("session-end (keep)", &measured.replica_end, &measured.primary_end);
    println!();
    println!(
        "The replication itself, the same wait after a one-statement commit on the primary: median {} ms, p99 {} ms.\n",
        ms(measured.replay.median()),
        ms(measured.replay.p99())
    );
    println!("replica start ratio: {:.2}", median_ratio(&measured.replica_start, &measured.primary_start));
    println!("replica end ratio: {:.2}", median_ratio(&measured.replica_end, &measured.primary_end));
    Ok(())
}

/// The reaper on one database: the steady-state run, and runs that change users.
async fn reaper_table(cluster: &Cluster, args: &Args) -> Result<(), String> {
    let changed = (args.reaper_users / 10).max(1);
    let runs = args.reaper_runs.max(1);
    let times = reaper::measure(cluster, args.reaper_users, changed, runs).await?;
    println!("## Reaper, durable server\n");
    println!(
        "`reaper::reap` on one database over a warm admin connection, {} managed users (those of \
         the earlier tables included). The function runs this per database, four databases at a time.\n",
        times.managed_users
    );
    println!("| run | users changed | ms | ms per changed user |");
    println!("|---|---:|---:|---:|");
    println!(
        "| nothing to do (median of {runs}, max {}) | 0 | {} | – |",
        ms(times.nothing_to_do.quantile(1.0)),
        ms(times.nothing_to_do.median())
    );
    for (name, (elapsed, users)) in
        [("closing expired sessions (`keep`)", times.closing), ("locking users left able to log in", times.locking)]
    {
        println!("| {name} | {users} | {} | {} |", ms(elapsed), ms(elapsed / users as u32));
    }
    println!();
    Ok(())
}

fn latency_row(name: &str, ours: &Samples, baseline: &Samples) {
    println!(
        "| {name} | {} | {} | {} | {} | {} |",
        ms(ours.median()),
        ms(ours.p99()),
        ms(baseline.median()),
        ms(baseline.p99()),
        ratio(ours.median().as_secs_f64(), baseline.median().as_secs_f64())
    );
}

/// Round trips per operation, counted by a proxy ([`scratch_postgres::RoundTripCounter`]).
async fn round_trip_table(cluster: &Cluster) -> Result<(), autouser_engine::Error> {
    let counter = scratch_postgres::RoundTripCounter::start(([127, 0, 0, 1], cluster.port()).into()).map_err(|e| {
        autouser_engine::Error::Unreachable { endpoint: "round-trip counter".into(), detail: e.to_string() }
    })?;
    let target = Target::new(cluster, counter.port())?;
    println!("Round trips per operation (counted by a TCP proxy between client and server):\n");
    println!("| operation | ours | baseline |");
    println!("|---|---:|---:|");
    let mut rows = [[0u64; 2]; 4];
    for (n, side) in [Side::Ours, Side::Baseline].into_iter().enumerate() {
        let user = |name: &str| format!("rt-{}-{name}", side.name());
        let connection = target.connect().await?;
        // Warm the connection up: the first read of a user's state prepares the catalog query.
        target.start(side, &connection, &user("warmup")).await?;
        target.end(side, &connection, &user("warmup")).await?;
        let mut count = |row: usize, before: u64| rows[row][n] = counter.round_trips() - before;
        let before = counter.round_trips();
        target.start(side, &connection, &user("new")).await?;
        count(0, before);
        let before = counter.round_trips();
        target.end(side, &connection, &user("new")).await?;
        count(1, before);
        let before = counter.round_trips();
        let cold = target.connect().await?;
        count(2, before);
        let before = counter.round_trips();
        target.start(side, &cold, &user("cold")).await?;
        count(3, before);
    }
    let names = [
        "warm session-start, new user",
        "warm session-end (keep)",
        "connection: TCP, TLS, certificate login",
        "session-start on that new connection",
    ];
    for (name, [ours, baseline]) in names.into_iter().zip(rows) {
        println!("| {name} | {ours} | {baseline} |");
    }
    println!();
    Ok(())
}

async fn lambda_tables(cluster: &Cluster, target_dir: &std::path::Path, invocations: usize) -> Result<(), String> {
    let functions = ["session-start", "session-end", "discovery", "reaper"];
    println!("## Lambda footprint\n");
    println!("| function | x86-64 zip | arm64 zip |");
    println!("|---|---:|---:|");
    for function in functions {
        let size = |arch: &str| {
            let path = target_dir.join(format!("lambda-{arch}")).join(function).join("bootstrap.zip");
            std::fs::metadata(&path)
                .map(|m| format!("{:.2} MB", m.len() as f64 / 1_000_000.0))
                .map_err(|e| format!("{}: {e} (build it with scripts/bench)", path.display()))
        };
        println!("| {function} | {} | {} |", size("x86-64")?, size("arm64")?);
    }
    println!();
    let config_yaml = provisioning::config_text(cluster, cluster.port()).map_err(|e| e.to_string())?;
    let binary = |name: &'static str| lambda::Function {
        name,
        bootstrap: target_dir.join("x86_64-unknown-linux-gnu/release").join(name),
    };
    println!("Init: process start to the first request for an event, 50 runs, x86-64, no network.\n");
    println!("| function | median ms | p99 ms |");
    println!("|---|---:|---:|");
    for name in functions {
        let samples = lambda::init_times(&binary(name), &config_yaml, 50).await?;
        println!("| {name} | {} | {} |", ms(samples.median()), ms(samples.p99()));
    }
    println!();
    println!("Peak RSS (VmHWM) of one container over {invocations} warm invocations, distinct users.\n");
    println!("| function | peak RSS | invocations | mean ms per invocation | CPU ms per invocation |");
    println!("|---|---:|---:|---:|---:|");
    let events: Vec<String> = (0..invocations)
        .map(|i| {
            serde_json::json!({
                "session_id": format!("lambda-{i}"), "user": format!("lambda-user-{i}"), "roles": ["bench"],
                "database": "main", "db_name": "postgres",
            })
            .to_string()
        })
        .collect();
    for name in ["session-start", "session-end"] {
        let footprint = lambda::warm_footprint(&binary(name), &config_yaml, events.clone()).await?;
        let per_invocation = |d: Duration| d.as_secs_f64() * 1000.0 / footprint.invocations as f64;
        println!(
            "| {name} | {:.1} MiB | {} | {:.3} | {:.3} |",
            footprint.peak_rss_kib as f64 / 1024.0,
            footprint.invocations,
            per_invocation(footprint.elapsed),
            per_invocation(footprint.cpu)
        );
    }
    println!();
    Ok(())
}
