//! Bursts of one user: N sessions of the same user started at once, each on its own admin
//! connection opened beforehand (a burst of invocations finding warm Lambda containers), then
//! all ended at once. Starts and ends of one user take turns at the user's lock, so the slowest call of a
//! burst waits for the others: this measures how large a burst stays within the lock timeout.

use std::time::{Duration, Instant};

use autouser_engine::pg::AdminConnection;
use autouser_engine::Error;
use futures_util::future::join_all;
use scratch_postgres::Cluster;

use crate::provisioning::Target;
use crate::stats::Samples;

/// What one burst of `sessions` sessions of one user measured.
pub struct Burst {
    pub sessions: usize,
    /// Whether the user existed before the burst (locked by an earlier burst's ends).
    pub user_existed: bool,
    pub start: Samples,
    pub end: Samples,
    /// From the first start sent to the last answered.
    pub starts_took: Duration,
    pub ends_took: Duration,
}

/// Two bursts per size in `sizes`, of a user of its own (`burst-<size>`): the first creates
/// the user, the second finds it kept.
pub async fn measure(cluster: &Cluster, sizes: &[usize]) -> Result<Vec<Burst>, Error> {
    let target = Target::new(cluster, cluster.port())?;
    let mut bursts = Vec::new();
    for (&sessions, user_existed) in sizes.iter().flat_map(|size| [(size, false), (size, true)]) {
        let user = format!("burst-{sessions}");
        let round = if user_existed { "again" } else { "first" };
        let connections: Vec<AdminConnection> =
            join_all((0..sessions).map(|_| target.connect())).await.into_iter().collect::<Result<_, _>>()?;
        let timed = |end: bool| {
            let (target, user, connections) = (&target, &user, &connections);
            async move {
                let began = Instant::now();
                let calls = connections.iter().enumerate().map(|(i, connection)| async move {
                    let session = format!("{user}-{round}-s{i}");
                    let call = Instant::now();
                    if end {
                        target.end_session(connection, user, &session).await?;
                    } else {
                        target.start_session(connection, user, &session).await?;
                    }
                    Ok::<Duration, Error>(call.elapsed())
                });
                let mut samples = Samples::default();
                for latency in join_all(calls).await {
                    samples.push(latency?);
                }
                Ok::<(Samples, Duration), Error>((samples, began.elapsed()))
            }
        };
        let (start, starts_took) = timed(false).await?;
        let (end, ends_took) = timed(true).await?;
        bursts.push(Burst { sessions, user_existed, start, end, starts_took, ends_took });
    }
    Ok(bursts)
}
