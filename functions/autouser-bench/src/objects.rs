//! Object permissions at scale: `SELECT` on every table of a schema of many tables, granted at
//! session-start and revoked at session-end, ours against a hand-written baseline
//! (`GRANT … ON ALL TABLES IN SCHEMA`, which PostgreSQL expands server-side in one statement).

use std::time::Instant;

use autouser_engine::pg::AdminConnection;
use autouser_engine::sql::quote_ident;
use autouser_engine::{engine, Error};
use autouser_policy::event::SessionEvent;
use autouser_policy::request;
use scratch_postgres::Cluster;

use crate::provisioning::{self, Side, Target, ADMIN, GROUP};
use crate::stats::Samples;

pub const DATABASE: &str = "bench_objects";
const SCHEMA: &str = "wide";

/// Creates database [`DATABASE`] with `tables` empty tables in schema `wide`, which the admin
/// may grant `SELECT` on, as an application owner would set it up.
pub async fn prepare(cluster: &Cluster, tables: usize) -> Result<(), Error> {
    let failed = |e: autouser_engine::tokio_postgres::Error| Error::Unreachable {
        endpoint: "benchmark server".into(),
        detail: format!("creating the object benchmark's tables: {e}"),
    };
    let superuser = scratch_login::connect(cluster, cluster.superuser(), "postgres").await?;
    superuser.batch_execute(&format!("CREATE DATABASE {DATABASE}")).await.map_err(failed)?;
    let owner = scratch_login::connect(cluster, cluster.superuser(), DATABASE).await?;
    owner
        .batch_execute(&format!(
            "CREATE SCHEMA {SCHEMA};
             DO $$ BEGIN
               FOR i IN 1..{tables} LOOP EXECUTE format('CREATE TABLE {SCHEMA}.%I (id int)', 't' || i); END LOOP;
             END $$;
             GRANT USAGE ON SCHEMA {SCHEMA} TO {ADMIN} WITH GRANT OPTION;
             GRANT SELECT ON ALL TABLES IN SCHEMA {SCHEMA} TO {ADMIN} WITH GRANT OPTION"
        ))
        .await
        .map_err(failed)
}

fn target(cluster: &Cluster) -> Result<Target, Error> {
    let grants =
        format!("db_permissions: [{{match: {{object_kind: table, schema: {SCHEMA}}}, permissions: [SELECT]}}]");
    Target::from_config_text(&provisioning::config_with_grants(cluster, cluster.port(), &grants)?)
}

/// Start and end latencies per side, `[ours, baseline]`, each a new user on a warm connection.
pub struct ObjectLatencies {
    pub start: [Samples; 2],
    pub end: [Samples; 2],
}

pub async fn measure(cluster: &Cluster, iterations: usize) -> Result<ObjectLatencies, Error> {
    let target = target(cluster)?;
    let connections = [target.connect_to(DATABASE).await?, target.connect_to(DATABASE).await?];
    let mut latencies = ObjectLatencies { start: Default::default(), end: Default::default() };
    for i in 0..iterations {
        for (n, side) in [Side::Ours, Side::Baseline].into_iter().enumerate() {
            let user = format!("objects-{}-{i}", side.name());
            let began = Instant::now();
            start(&target, side, &connections[n], &user).await?;
            latencies.start[n].push(began.elapsed());
            let began = Instant::now();
            end(&target, side, &connections[n], &user).await?;
            latencies.end[n].push(began.elapsed());
        }
    }
    Ok(latencies)
}

fn event(user: &str) -> Result<SessionEvent, Error> {
    Ok(SessionEvent::from_value(serde_json::json!({
        "session_id": format!("{user}-session"), "user": user, "roles": ["bench"],
        "database": "main", "db_name": DATABASE,
    }))?)
}

async fn start(target: &Target, side: Side, connection: &AdminConnection, user: &str) -> Result<(), Error> {
    match side {
        Side::Ours => {
            let req = request::prepare_start(&target.config, &target.database, &event(user)?)?;
            let outcome = engine::session_start(connection, &req).await?;
            assert_eq!(outcome.db_permissions.len(), 1, "one schema of tables");
            Ok(())
        }
        Side::Baseline => {
            let user = quote_ident(user);
            let sql = format!(
                "BEGIN; CREATE ROLE {user} LOGIN IN ROLE {group}; GRANT USAGE ON SCHEMA {SCHEMA} TO {user};
                 GRANT SELECT ON ALL TABLES IN SCHEMA {SCHEMA} TO {user}; COMMIT",
                group = quote_ident(GROUP)
            );
            provisioning::batch(connection.client(), &sql).await
        }
    }
}

async fn end(target: &Target, side: Side, connection: &AdminConnection, user: &str) -> Result<(), Error> {
    match side {
        Side::Ours => {
            let req = request::prepare_end(&target.config, &target.database, &event(user)?)?;
            engine::session_end(connection, &req, &engine::NoOtherDatabases).await.map(drop)
        }
        Side::Baseline => {
            let user = quote_ident(user);
            let sql = format!(
                "BEGIN; REVOKE ALL ON ALL TABLES IN SCHEMA {SCHEMA} FROM {user}; REVOKE USAGE ON SCHEMA {SCHEMA} FROM {user};
                 ALTER ROLE {user} NOLOGIN; COMMIT"
            );
            provisioning::batch(connection.client(), &sql).await
        }
    }
}
