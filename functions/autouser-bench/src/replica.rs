//! Sessions on a read replica against sessions on its primary: a hot standby streaming from
//! the benchmark's server, at idle replication. A replica's start is the primary's start on
//! the writer, then the wait until the standby has replayed its commit
//! (`autouser_engine::replica`): what the wait adds is the measure.

use std::time::Instant;

use autouser_engine::replica::{self, Replica};
use autouser_engine::sql::quote_ident;
use autouser_engine::Error;
use scratch_postgres::Cluster;

use crate::provisioning::{self, Target};
use crate::stats::Samples;

/// Starts then ends of new users, `iterations` per side, alternating: on the primary's entry,
/// and on the standby's entry (whose writer is the primary); and the bare replication wait.
pub struct Measured {
    pub primary_start: Samples,
    pub replica_start: Samples,
    pub primary_end: Samples,
    pub replica_end: Samples,
    /// The replication itself: from a one-statement commit on the primary (its WAL position
    /// read after it) until the standby has replayed it, by the same wait.
    pub replay: Samples,
}

pub async fn measure(primary: &Cluster, standby: &Cluster, iterations: usize) -> Result<Measured, Error> {
    let on_primary = Target::new(primary, primary.port())?;
    let on_replica = Target::from_config_text(&provisioning::replica_config_text(standby, primary.port())?)?;
    let primary_connection = on_primary.connect().await?;
    let writer = on_replica.connect_writer().await?;
    let replica_connection = on_replica.connect().await?;
    let replica = Replica {
        client: Ok(replica_connection.client()),
        endpoint: on_replica.database.endpoint(),
        wait: on_replica.database.replica_wait,
    };
    let mut measured = Measured {
        primary_start: Samples::default(),
        replica_start: Samples::default(),
        primary_end: Samples::default(),
        replica_end: Samples::default(),
        replay: Samples::default(),
    };
    for i in 0..iterations {
        // The schema of the creator roles' functions, which the admin owns.
        let comment = format!("COMMENT ON SCHEMA {} IS 'replay {i}'", quote_ident(provisioning::GROUP));
        let lsn = provisioning::commit_and_read_lsn(writer.client(), &comment).await?;
        let began = Instant::now();
        if replica::wait_for_replay(&replica, &lsn).await? != replica::Replay::Done {
            return Err(Error::Unreachable { endpoint: replica.endpoint.clone(), detail: "did not replay".into() });
        }
        measured.replay.push(began.elapsed());
    }
    for i in 0..iterations {
        let user = format!("replica-bench-primary-{i}");
        let began = Instant::now();
        on_primary.start(provisioning::Side::Ours, &primary_connection, &user).await?;
        measured.primary_start.push(began.elapsed());

        let user = format!("replica-bench-replica-{i}");
        let event = provisioning::session_event(&user, &format!("{user}-session"));
        let event = autouser_policy::event::SessionEvent::from_value(event)?;
        let req = autouser_policy::request::prepare_start(&on_replica.config, &on_replica.database, &event)?;
        let began = Instant::now();
        replica::session_start(&writer, std::slice::from_ref(&replica), &req).await?;
        measured.replica_start.push(began.elapsed());
    }
    for i in 0..iterations {
        let user = format!("replica-bench-primary-{i}");
        let began = Instant::now();
        on_primary.end(provisioning::Side::Ours, &primary_connection, &user).await?;
        measured.primary_end.push(began.elapsed());

        let user = format!("replica-bench-replica-{i}");
        let event = provisioning::session_event(&user, &format!("{user}-session"));
        let event = autouser_policy::event::SessionEvent::from_value(event)?;
        let req = autouser_policy::request::prepare_end(&on_replica.config, &on_replica.database, &event)?;
        let began = Instant::now();
        replica::session_end(&writer, std::slice::from_ref(&replica), &req, &autouser_engine::engine::NoOtherDatabases)
            .await?;
        measured.replica_end.push(began.elapsed());
    }
    Ok(measured)
}
