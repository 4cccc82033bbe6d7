//! The cost of a session as the admin's managed users grow (issue 18): on one durable server, a
//! population of kept users (each started and ended in `keep`, as a few thousand engineers
//! leave it within months) is built up to each size in turn, and at each size warm
//! session-starts of new users, warm session-starts of kept users and warm session-ends are
//! timed, ours and the baseline's, then cold calls: a new TLS connection, a new user's start and
//! its end on it.
//!
//! From PostgreSQL 16 every role statement of a CREATEROLE admin walks the roles it created
//! (BENCHMARKS.md, "What dominates at scale"); the ratio of ours at the largest size to ours at
//! the smallest is what the run ends with.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use autouser_engine::pg::AdminConnection;
use autouser_engine::preflight;
use futures_util::future::join_all;
use scratch_postgres::Cluster;

use crate::provisioning::{baseline_restart_sql, batch, Side, Target};
use crate::stats::Samples;

/// Connections that build the population, each starting and ending users one after another.
const POPULATION_CONCURRENCY: usize = 4;

/// Cold calls per side at each size: a new connection, a new user's start and its end.
pub const COLD_ITERATIONS: usize = 20;

/// One side's latencies at one size.
#[derive(Default)]
pub struct SideTimes {
    pub new_start: Samples,
    pub kept_start: Samples,
    pub end: Samples,
    /// A new TLS admin connection and a new user's start on it, together.
    pub cold_start: Samples,
    /// That user's end, the new connection's second call.
    pub cold_end: Samples,
}

/// Both sides' latencies with `population` kept users on the server.
pub struct SizeTimes {
    pub population: usize,
    pub sides: [SideTimes; 2],
    /// How long growing the population to this size took.
    pub built_in: std::time::Duration,
}

/// A whole scale run: the `creator_roles` our side's config ended up with, and each size's
/// latencies.
pub struct ScaleTimes {
    pub creator_roles: u32,
    pub sizes: Vec<SizeTimes>,
}

/// For each size of `sizes` (ascending), the population grown to it, then `iterations` new
/// users per side started (timed), ended (timed), started again as kept users (timed) and
/// ended again, then [`COLD_ITERATIONS`] cold calls per side, alternating: a new connection
/// and a new user's start on it (timed together), then its end (timed). Our side runs with
/// the config's `creator_roles` set to `creator_roles`, or, without it, with the config's
/// default; the baseline's statements are the admin's own, whatever it is.
pub async fn measure(
    cluster: &Cluster,
    sizes: &[usize],
    iterations: usize,
    creator_roles: Option<u32>,
) -> Result<ScaleTimes, String> {
    let failed = |step: &str, e: autouser_engine::Error| format!("scale benchmark, {step}: {e}");
    let mut config = crate::provisioning::config_text(cluster, cluster.port()).map_err(|e| failed("config", e))?;
    if let Some(creator_roles) = creator_roles {
        config.push_str(&format!("creator_roles: {creator_roles}\n"));
    }
    let target = Target::from_config_text(&config).map_err(|e| failed("config", e))?;
    let sides = [Side::Ours, Side::Baseline];
    // As discovery does on a deployment: preflight, then bootstrap, which prepares every
    // creator role, so that no measured start pays for preparing one.
    let admin = target.connect().await.map_err(|e| failed("admin connection", e))?;
    let (_, facts) =
        preflight::check(admin.client(), &target.config, &target.database).await.map_err(|e| failed("preflight", e))?;
    preflight::bootstrap(admin.client(), &target.config, &facts).await.map_err(|e| failed("bootstrap", e))?;
    let mut population = 0;
    let mut results = Vec::new();
    for &size in sizes {
        let began = Instant::now();
        grow_population(&target, population, size).await?;
        let built_in = began.elapsed();
        population = size;
        // New connections at each size, as a warm Lambda container has (the pool renews its
        // connections every 10 minutes): a connection prepares the catalog query once, with
        // a plan for the catalog's size at that moment, which it keeps.
        let mut clients = Vec::new();
        for _ in sides {
            clients.push(target.connect().await.map_err(|e| failed("admin connection", e))?);
        }
        let mut times = [SideTimes::default(), SideTimes::default()];
        for (n, side) in sides.into_iter().enumerate() {
            let client = &clients[n];
            let user = |i: usize| format!("scale-{size}-{}-{i}", side.name());
            for i in 0..iterations {
                let began = Instant::now();
                target.start(side, client, &user(i)).await.map_err(|e| failed("new user's start", e))?;
                times[n].new_start.push(began.elapsed());
            }
            for i in 0..iterations {
                let began = Instant::now();
                target.end(side, client, &user(i)).await.map_err(|e| failed("end", e))?;
                times[n].end.push(began.elapsed());
            }
            for i in 0..iterations {
                let began = Instant::now();
                restart(&target, side, client, &user(i)).await?;
                times[n].kept_start.push(began.elapsed());
                end_restarted(&target, side, client, &user(i)).await?;
            }
        }
        // Cold calls, as a new Lambda container's first two: the two sides alternate, so that
        // both see the same server state.
        for i in 0..COLD_ITERATIONS {
            for (n, side) in sides.into_iter().enumerate() {
                let user = format!("scale-{size}-{}-cold-{i}", side.name());
                let began = Instant::now();
                let client = target.connect().await.map_err(|e| failed("cold connection", e))?;
                target.start(side, &client, &user).await.map_err(|e| failed("cold start", e))?;
                times[n].cold_start.push(began.elapsed());
                let began = Instant::now();
                target.end(side, &client, &user).await.map_err(|e| failed("cold end", e))?;
                times[n].cold_end.push(began.elapsed());
            }
        }
        results.push(SizeTimes { population: size, sides: times, built_in });
    }
    Ok(ScaleTimes { creator_roles: target.config.creator_roles, sizes: results })
}

/// A kept user's next session (`<user>-again`): ours through the engine, the baseline's by its
/// own SQL for a user that exists.
async fn restart(target: &Target, side: Side, client: &AdminConnection, user: &str) -> Result<(), String> {
    let result = match side {
        Side::Ours => target.start_session(client, user, &format!("{user}-again")).await,
        Side::Baseline => batch(client.client(), &baseline_restart_sql(user)).await,
    };
    result.map_err(|e| format!("scale benchmark, kept user's start: {e}"))
}

/// The end of the session [`restart`] opened.
async fn end_restarted(target: &Target, side: Side, client: &AdminConnection, user: &str) -> Result<(), String> {
    let result = match side {
        Side::Ours => target.end_session(client, user, &format!("{user}-again")).await,
        Side::Baseline => target.end(side, client, user).await,
    };
    result.map_err(|e| format!("scale benchmark, kept user's end: {e}"))
}

/// Starts and ends users `scale-kept-<from>` to `scale-kept-<to - 1>` through our engine, on
/// [`POPULATION_CONCURRENCY`] connections: the kept users of a `keep` deployment.
async fn grow_population(target: &Target, from: usize, to: usize) -> Result<(), String> {
    let mut clients = Vec::new();
    for _ in 0..POPULATION_CONCURRENCY {
        clients.push(target.connect().await.map_err(|e| format!("scale benchmark, population connection: {e}"))?);
    }
    let next = AtomicUsize::new(from);
    let outcomes = join_all(clients.iter().map(|client| {
        let next = &next;
        async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= to {
                    return Ok(());
                }
                let user = format!("scale-kept-{i}");
                target.start(Side::Ours, client, &user).await.map_err(|e| format!("{user}'s start: {e}"))?;
                target.end(Side::Ours, client, &user).await.map_err(|e| format!("{user}'s end: {e}"))?;
            }
        }
    }))
    .await;
    outcomes
        .into_iter()
        .collect::<Result<Vec<()>, String>>()
        .map_err(|e| format!("scale benchmark, population: {e}"))?;
    Ok(())
}
