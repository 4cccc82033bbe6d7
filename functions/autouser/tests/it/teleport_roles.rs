//! A roles file copied from `tctl get roles` (the fixture in `tests/teleport-roles`, in tctl's
//! output shape) starts sessions with exactly the roles Teleport would give.

use std::path::Path;

use crate::{autouser, cluster, stderr, stdout_json, superuser_sql, write_config};

const FIXTURE: &str = include_str!("../../../../tests/teleport-roles/tctl-get-roles.yaml");

/// A config with `roles_file: roles.yaml` (the fixture, copied as is) and database `main`
/// labelled as a staging database of the data team.
async fn setup(ns: &str, dir: &Path) -> String {
    let cluster = cluster();
    let admin = format!("{ns}_admin");
    // The fixture's roles name these database roles; `auditor` and `admin_x` exist so that
    // not granting them is a decision, not a missing role.
    let granted = ["reader", "writer", "alice_ro", "auditor", "admin_x"];
    let mut sql = format!("CREATE ROLE \"{admin}\" LOGIN CREATEROLE;");
    for role in granted {
        // Both tests create them on the shared cluster.
        sql.push_str(&format!(
            "DO $$ BEGIN CREATE ROLE \"{role}\"; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;"
        ));
        if cluster.major() >= 16 {
            sql.push_str(&format!("GRANT \"{role}\" TO \"{admin}\" WITH ADMIN OPTION;"));
        }
    }
    superuser_sql(&sql).await;
    let main = scratch_login::database_yaml(cluster, cluster.port(), "main", &admin).unwrap();
    std::fs::write(dir.join("roles.yaml"), FIXTURE).unwrap();
    let config = format!(
        "managed_group: {ns}_grp\ndatabases:\n{main}    labels: {{env: staging, team: data}}\nroles_file: roles.yaml\n"
    );
    write_config(dir, "config.yaml", &config)
}

async fn member_roles(user: &str) -> Vec<String> {
    let client = scratch_login::connect(cluster(), "postgres", "postgres").await.unwrap();
    let rows = client
        .query(
            "SELECT g.rolname::text FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid \
             JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = $1 ORDER BY 1",
            &[&user],
        )
        .await
        .unwrap();
    rows.iter().map(|row| row.get(0)).collect()
}

#[tokio::test]
async fn a_roles_file_copied_from_tctl_starts_sessions_with_the_roles_teleport_gives() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup("cli_tctl", dir.path()).await;
    let event = r#"{"session_id": "t1", "user": "cli_tctl_alice",
        "roles": ["access", "auto-db-users", "db-staging", "editor"],
        "traits": {"internal": {"db_roles": ["auditor"], "db_names": ["app"], "logins": ["alice"]},
                   "external": {"groups": ["db-writer", "devs", "db-admin_x"], "email": ["alice@example.com"]}},
        "database": "main", "db_name": "app"}"#;
    let started = stdout_json(&autouser(&["session-start", "--config", &config, "--event", "-"], Some(event)));
    // Teleport: `access` does not provision, so its {{internal.db_roles}} gives no auditor;
    // regexp.replace maps db-writer to writer and drops devs; ^admin_.*$ denies admin_x;
    // db-staging matches env ^(dev|staging)$ and the db_name from internal.db_names, and
    // gives alice_ro from email.local; its best_effort_drop is the strongest mode.
    assert_eq!(started["status"], "active", "{started}");
    assert_eq!(started["mode"], "best_effort_drop", "{started}");
    assert_eq!(started["db_roles"], serde_json::json!(["alice_ro", "reader", "writer"]), "{started}");
    assert_eq!(member_roles("cli_tctl_alice").await, ["alice_ro", "cli_tctl_grp", "reader", "writer"]);

    let ended = stdout_json(&autouser(&["session-end", "--config", &config, "--event", "-"], Some(event)));
    assert_eq!(ended["status"], "dropped", "{ended}");
}

#[tokio::test]
async fn a_template_that_expands_to_a_superuser_role_refuses_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup("cli_tctl_su", dir.path()).await;
    // `postgres` is the cluster's superuser; regexp.replace would make it a database role.
    let event = r#"{"session_id": "t2", "user": "cli_tctl_su_mallory", "roles": ["auto-db-users"],
        "traits": {"external": {"groups": ["db-postgres"]}}, "database": "main", "db_name": "app"}"#;
    let refused = autouser(&["session-start", "--config", &config, "--event", "-"], Some(event));
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("\"postgres\"") && stderr(&refused).contains("superuser role"),
        "{}",
        stderr(&refused)
    );
    assert!(member_roles("cli_tctl_su_mallory").await.is_empty());
}
