//! The reaper on one database: a run with nothing to do over many managed users (what every
//! scheduled run costs in the steady state), a run that closes expired sessions, and one that
//! locks users left able to log in.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use autouser_engine::pg::AdminConnection;
use autouser_engine::reaper::{self, ReapReport};
use autouser_engine::sql::quote_ident;
use autouser_engine::Error;
use scratch_postgres::Cluster;

use crate::provisioning::{Side, Target};
use crate::stats::Samples;

/// What was measured, with how many users each run changed.
pub struct ReaperTimes {
    /// The managed users a run with nothing to do reads: ours, and those earlier benchmarks left.
    pub managed_users: usize,
    pub nothing_to_do: Samples,
    pub closing: (Duration, usize),
    pub locking: (Duration, usize),
}

/// With `managed` users whose sessions ended, `changed` more with an open session, and then
/// `changed` of the ended ones unlocked behind our back: times `runs` runs with nothing to do,
/// the run that closes the open sessions (past `max_session_duration`), and the run that locks
/// the unlocked users.
pub async fn measure(cluster: &Cluster, managed: usize, changed: usize, runs: usize) -> Result<ReaperTimes, Error> {
    let target = Target::new(cluster, cluster.port())?;
    let connection = target.connect().await?;
    let idle = |i: usize| format!("reap-idle-{i}");
    for i in 0..managed {
        target.start(Side::Ours, &connection, &idle(i)).await?;
        target.end(Side::Ours, &connection, &idle(i)).await?;
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("the clock is after 1970").as_secs();

    let mut nothing_to_do = Samples::default();
    let mut managed_users = 0;
    for _ in 0..runs {
        let (elapsed, report) = timed_run(&target, &connection, now).await?;
        expect(&report, managed, 0, 0)?;
        nothing_to_do.push(elapsed);
        managed_users = report.managed_users;
    }

    for i in 0..changed {
        target.start(Side::Ours, &connection, &format!("reap-open-{i}")).await?;
    }
    let expired = now + target.config.max_session_duration.as_secs() + 60;
    let (closing, report) = timed_run(&target, &connection, expired).await?;
    expect(&report, managed + changed, changed, 0)?;

    let unlock: String = (0..changed).map(|i| format!("ALTER ROLE {} LOGIN;", quote_ident(&idle(i)))).collect();
    let superuser = scratch_login::connect(cluster, cluster.superuser(), "postgres").await?;
    superuser.batch_execute(&unlock).await.map_err(|e| Error::Unreachable {
        endpoint: "benchmark server".into(),
        detail: format!("unlocking users for the reaper benchmark: {e}"),
    })?;
    let (locking, report) = timed_run(&target, &connection, now).await?;
    expect(&report, managed + changed, 0, changed)?;

    Ok(ReaperTimes { managed_users, nothing_to_do, closing: (closing, changed), locking: (locking, changed) })
}

async fn timed_run(target: &Target, connection: &AdminConnection, now: u64) -> Result<(Duration, ReapReport), Error> {
    let connect_to = |db_name: String| async move { target.connect_to(&db_name).await };
    let began = Instant::now();
    let report = reaper::reap(connection, "postgres", &target.config, &target.database, now, None, connect_to).await?;
    Ok((began.elapsed(), report))
}

/// A run that did something else than intended measured something else: refuse to report it.
fn expect(report: &ReapReport, at_least: usize, closed: usize, locked: usize) -> Result<(), Error> {
    let as_expected = report.managed_users >= at_least
        && report.closed.len() == closed
        && report.locked.len() == locked
        && report.failed.is_empty()
        && report.left_open.is_empty();
    if as_expected {
        return Ok(());
    }
    Err(Error::Unreachable {
        endpoint: "benchmark server".into(),
        detail: format!(
            "the reaper run did not do what the benchmark set up: {} managed (expected at least {at_least}), \
             {} closed (expected {closed}), {} locked (expected {locked}), failed {:?}, left open {}",
            report.managed_users,
            report.closed.len(),
            report.locked.len(),
            report.failed,
            report.left_open.len()
        ),
    })
}
