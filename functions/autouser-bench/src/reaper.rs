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
///
/// The earlier sections leave users as their options made them: the cold starts' sessions stay
/// open, the baseline's users stay able to log in. So a first run, past the end of every
/// session, closes and locks what they left, and the runs measured meet only the state this
/// section builds, whatever the options.
pub async fn measure(cluster: &Cluster, managed: usize, changed: usize, runs: usize) -> Result<ReaperTimes, String> {
    let setup = |step: &str, e: Error| format!("reaper benchmark, {step}: {e}");
    let target = Target::new(cluster, cluster.port()).map_err(|e| setup("config", e))?;
    let connection = target.connect().await.map_err(|e| setup("admin connection", e))?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("the clock is after 1970").as_secs();
    let past_every_session = now + target.config.max_session_duration.as_secs() + 60;
    let (_, settled) =
        timed_run(&target, &connection, past_every_session).await.map_err(|e| setup("settling earlier sections", e))?;
    if !settled.failed.is_empty() {
        return Err(format!("reaper benchmark, settling earlier sections: failed {:?}", settled.failed));
    }
    let idle = |i: usize| format!("reap-idle-{i}");
    for i in 0..managed {
        target.start(Side::Ours, &connection, &idle(i)).await.map_err(|e| setup("starting idle users", e))?;
        target.end(Side::Ours, &connection, &idle(i)).await.map_err(|e| setup("ending idle users", e))?;
    }

    let mut nothing_to_do = Samples::default();
    let mut managed_users = 0;
    for _ in 0..runs {
        let (elapsed, report) = timed_run(&target, &connection, now).await.map_err(|e| setup("run", e))?;
        expect(&report, managed, 0, 0)?;
        nothing_to_do.push(elapsed);
        managed_users = report.managed_users;
    }

    for i in 0..changed {
        target
            .start(Side::Ours, &connection, &format!("reap-open-{i}"))
            .await
            .map_err(|e| setup("opening sessions", e))?;
    }
    let (closing, report) =
        timed_run(&target, &connection, past_every_session).await.map_err(|e| setup("closing run", e))?;
    expect(&report, managed + changed, changed, 0)?;

    let unlock: String = (0..changed).map(|i| format!("ALTER ROLE {} LOGIN;", quote_ident(&idle(i)))).collect();
    let superuser =
        scratch_login::connect(cluster, cluster.superuser(), "postgres").await.map_err(|e| setup("superuser", e))?;
    superuser.batch_execute(&unlock).await.map_err(|e| format!("reaper benchmark, unlocking users: {e}"))?;
    let (locking, report) = timed_run(&target, &connection, now).await.map_err(|e| setup("locking run", e))?;
    expect(&report, managed + changed, 0, changed)?;

    Ok(ReaperTimes { managed_users, nothing_to_do, closing: (closing, changed), locking: (locking, changed) })
}

async fn timed_run(target: &Target, connection: &AdminConnection, now: u64) -> Result<(Duration, ReapReport), Error> {
    let connect_to = |db_name: String| async move { target.connect_to(&db_name).await };
    let began = Instant::now();
    let report =
        reaper::reap(connection, "postgres", &target.config, &target.database, &[], now, None, connect_to).await?;
    Ok((began.elapsed(), report))
}

/// A run that did something else than intended measured something else: refuse to report it.
fn expect(report: &ReapReport, at_least: usize, closed: usize, locked: usize) -> Result<(), String> {
    let as_expected = report.managed_users >= at_least
        && report.closed.len() == closed
        && report.locked.len() == locked
        && report.failed.is_empty()
        && report.left_open.is_empty();
    if as_expected {
        return Ok(());
    }
    Err(format!(
        "reaper benchmark: a run did not do what the benchmark set up, so it measured something else: \
         {} managed (expected at least {at_least}), {} closed (expected {closed}), {} locked (expected {locked}), \
         failed {:?}, left open {}",
        report.managed_users,
        report.closed.len(),
        report.locked.len(),
        report.failed,
        report.left_open.len()
    ))
}
