//! A read replica's entry through the handler and its pool: the changes on the writer (a
//! primary of this test's own), the answer once the hot standby has replayed them.

use scratch_postgres::{Cluster, PgInstall};
use serde_json::json;

use crate::{invoke, parse_config};
use autouser_lambda::{Function, State};

async fn can_login_on(cluster: &Cluster, user: &str) -> Option<bool> {
    let client = scratch_login::superuser(cluster, "postgres").await;
    let rows = client.query("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1", &[&user]).await.unwrap();
    rows.first().map(|row| row.get(0))
}

#[tokio::test]
async fn a_replica_entry_starts_and_ends_through_the_writer_and_waits_for_the_standby() {
    let install = PgInstall::from_env().expect("a PostgreSQL installation (see scripts/install-deps)");
    let mut primary = Cluster::start(&install).unwrap();
    let mut setup = "CREATE ROLE lrep_admin LOGIN CREATEROLE; GRANT pg_signal_backend TO lrep_admin; \
                     CREATE SCHEMA lrep_grp AUTHORIZATION lrep_admin; CREATE ROLE lrep_reader;"
        .to_string();
    if primary.major() >= 16 {
        setup.push_str("GRANT lrep_reader TO lrep_admin WITH ADMIN OPTION;");
    }
    scratch_login::superuser_sql(&primary, &setup).await;
    let standby = primary.start_standby().expect("a standby of the primary");
    // The standby applies each commit 100 ms late: an answer that did not wait would come first.
    let on_standby = scratch_login::superuser(&standby, "postgres").await;
    on_standby.batch_execute("ALTER SYSTEM SET recovery_min_apply_delay = '100ms'").await.unwrap();
    on_standby.batch_execute("SELECT pg_reload_conf()").await.unwrap();

    let entry = scratch_login::database_yaml(&standby, standby.port(), "main", "lrep_admin").unwrap();
    let entry = format!("{entry}    primary: {{uri: \"localhost:{}\"}}\n", primary.port());
    let config = scratch_login::one_role_config_yaml("lrep_grp", &entry, "devs", "keep", "db_roles: [lrep_reader]");
    let state = State::new(parse_config(&config), crate::no_aws(), "autouser".into());
    let event = |session: &str| json!({"session_id": session, "user": "lrep_alice", "roles": ["devs"], "database": "main", "db_name": "postgres"});

    for session in ["s1", "s2"] {
        let started = invoke(&state, Function::SessionStart, event(session)).await.unwrap();
        assert_eq!(started["status"], "active", "{started}");
        assert_eq!(
            can_login_on(&standby, "lrep_alice").await,
            Some(true),
            "the standby has the user when the start answers"
        );
    }
    let ended = invoke(&state, Function::SessionEnd, event("s1")).await.unwrap();
    assert_eq!(ended["status"], "in_use", "{ended}");
    let ended = invoke(&state, Function::SessionEnd, event("s2")).await.unwrap();
    assert_eq!(ended["status"], "deactivated", "{ended}");
    assert_eq!(ended["replica_replayed"], true, "{ended}");
    assert_eq!(
        can_login_on(&standby, "lrep_alice").await,
        Some(false),
        "the standby has the lock when the end answers"
    );
    assert_eq!(can_login_on(&primary, "lrep_alice").await, Some(false));
    // One connection to each endpoint, kept across the four invocations.
    assert_eq!(state.connections_opened(), 2);
}
