//! `autouser plan`: the decision and the exact statements of a call, changing nothing, and
//! failing as the call would.

use serde_json::Value;

use crate::{autouser, setup, setup_with_mode, stderr, stdout_json, superuser_sql};

fn event(user: &str, session: &str) -> String {
    format!(
        r#"{{"session_id": "{session}", "user": "{user}", "roles": ["devs"], "database": "main", "db_name": "postgres"}}"#
    )
}

/// The user's `rolcanlogin` and direct memberships, or `None` when it does not exist.
async fn role(user: &str) -> Option<(bool, Vec<String>)> {
    let client = scratch_login::superuser(crate::cluster(), "postgres").await;
    let rows = client
        .query(
            "SELECT r.rolcanlogin, ARRAY(SELECT m.roleid::regrole::text FROM pg_auth_members m WHERE m.member = r.oid ORDER BY 1)
               FROM pg_roles r WHERE r.rolname = $1",
            &[&user],
        )
        .await
        .unwrap();
    rows.first().map(|row| (row.get(0), row.get(1)))
}

fn statements(plan: &Value, key: &str) -> Vec<String> {
    plan[key].as_array().unwrap_or_else(|| panic!("{plan}")).iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn a_plan_of_a_new_users_start_lists_its_creation_and_grants_and_creates_nothing() {
    let (_dir, config) = setup_with_mode("pl_new", "keep").await;
    let config = config.display().to_string();
    let event = event("pl_new_alice", "s1");
    let plan =
        stdout_json(&autouser(&["plan", "session-start", "--config", &config, "--event", "-", "--json"], Some(&event)));
    assert_eq!(plan["call"], "session-start");
    assert_eq!(plan["db_user"], "pl_new_alice");
    assert_eq!(plan["decision"]["action"], "apply", "{plan}");
    assert_eq!(plan["decision"]["mode"], "keep");
    assert_eq!(plan["decision"]["db_roles"], serde_json::json!(["pl_new_reader"]));
    assert!(plan["decision"]["why"].to_string().contains("devs"), "the matched role is named: {plan}");
    let sql = statements(&plan, "statements");
    assert_eq!(sql.first().map(String::as_str), Some("BEGIN ISOLATION LEVEL READ COMMITTED"), "{sql:?}");
    assert!(sql.contains(&r#"CREATE ROLE "pl_new_alice" LOGIN"#.to_string()), "{sql:?}");
    assert!(sql.contains(&r#"GRANT "pl_new_grp", "pl_new_reader" TO "pl_new_alice""#.to_string()), "{sql:?}");
    // The ledger is written in the same transaction: the new user's comment records session s1.
    let comment = sql
        .iter()
        .find_map(|s| s.strip_prefix(r#"COMMENT ON ROLE "pl_new_alice" IS '"#)?.strip_suffix('\''))
        .unwrap_or_else(|| panic!("no ledger write in {sql:?}"));
    let ledger: Value = serde_json::from_str(&comment.replace("''", "'")).unwrap_or_else(|e| panic!("{comment}: {e}"));
    assert_eq!(ledger["managed_by"], "pg-autouser", "{ledger}");
    assert_eq!(ledger["identity"]["user"], "pl_new_alice", "{ledger}");
    let session = &ledger["sessions"]["s1"];
    assert_eq!(session["mode"], "keep", "{ledger}");
    assert_eq!(session["db_roles"], serde_json::json!(["pl_new_reader"]), "{ledger}");
    assert_eq!(sql.last().map(String::as_str), Some("COMMIT"));
    assert_eq!(role("pl_new_alice").await, None, "the plan created the user");

    let text = autouser(&["plan", "session-start", "--config", &config, "--event", "-"], Some(&event));
    assert!(text.status.success(), "{}", stderr(&text));
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("decision: apply"), "{text}");
    assert!(text.contains(r#"  CREATE ROLE "pl_new_alice" LOGIN;"#), "{text}");
    assert!(text.contains("nothing was changed"), "{text}");
    assert_eq!(role("pl_new_alice").await, None);

    // The real start does what the plan said.
    let started = stdout_json(&autouser(&["session-start", "--config", &config, "--event", "-"], Some(&event)));
    assert_eq!(started["created_user"], true);
    let again =
        stdout_json(&autouser(&["plan", "session-start", "--config", &config, "--event", "-", "--json"], Some(&event)));
    assert_eq!(again["decision"]["action"], "already_active", "{again}");
    assert_eq!(again["statements"], serde_json::json!([]));
}

#[tokio::test]
async fn a_plan_of_a_refused_start_fails_as_the_start_does() {
    let (_dir, config) = setup("pl_refused").await;
    let config = config.display().to_string();
    superuser_sql("CREATE ROLE pl_refused_bob LOGIN").await;
    let event = event("pl_refused_bob", "s1");
    let plan = autouser(&["plan", "session-start", "--config", &config, "--event", "-"], Some(&event));
    let start = autouser(&["session-start", "--config", &config, "--event", "-"], Some(&event));
    assert_eq!(start.status.code(), Some(1));
    assert_eq!(plan.status.code(), start.status.code());
    assert!(stderr(&plan).contains("[UserConflict]"), "{}", stderr(&plan));
    assert_eq!(stderr(&plan), stderr(&start));
    assert!(plan.stdout.is_empty());

    // A policy refusal too: a role the policy does not know.
    let ops = r#"{"session_id": "s2", "user": "pl_refused_carol", "roles": ["ops"], "database": "main", "db_name": "postgres"}"#;
    let plan = autouser(&["plan", "session-start", "--config", &config, "--event", "-", "--json"], Some(ops));
    let start = autouser(&["session-start", "--config", &config, "--event", "-"], Some(ops));
    assert_eq!(plan.status.code(), Some(1));
    assert_eq!(stderr(&plan), stderr(&start));
    // A malformed event exits 65 as the call does.
    let bad = autouser(&["plan", "session-end", "--config", &config, "--event", "-"], Some("{not json"));
    assert_eq!(bad.status.code(), Some(65));
}

#[tokio::test]
async fn a_plan_of_an_end_lists_the_lock_and_the_revokes_and_changes_nothing() {
    let (_dir, config) = setup_with_mode("pl_end", "keep").await;
    let config = config.display().to_string();
    let event = event("pl_end_alice", "s1");
    stdout_json(&autouser(&["session-start", "--config", &config, "--event", "-"], Some(&event)));
    let before = role("pl_end_alice").await;
    let plan =
        stdout_json(&autouser(&["plan", "session-end", "--config", &config, "--event", "-", "--json"], Some(&event)));
    assert_eq!(plan["decision"]["action"], "deactivate", "{plan}");
    assert_eq!(plan["decision"]["mode"], "keep");
    let sql = statements(&plan, "statements");
    assert!(sql.contains(&r#"ALTER ROLE "pl_end_alice" WITH NOLOGIN"#.to_string()), "{sql:?}");
    assert!(sql.contains(&r#"REVOKE "pl_end_reader" FROM "pl_end_alice""#.to_string()), "{sql:?}");
    assert_eq!(role("pl_end_alice").await, before, "the plan changed the user");
    assert_eq!(before, Some((true, vec!["pl_end_grp".to_string(), "pl_end_reader".to_string()])));
    let status = stdout_json(&autouser(&["status", "--config", &config, "--json"], None));
    assert_eq!(status["databases"][0]["users"][0]["open_sessions"][0]["session_id"], "s1", "{status}");

    let ended = stdout_json(&autouser(&["session-end", "--config", &config, "--event", "-"], Some(&event)));
    assert_eq!(ended["status"], "deactivated");
    let noop =
        stdout_json(&autouser(&["plan", "session-end", "--config", &config, "--event", "-", "--json"], Some(&event)));
    assert_eq!(noop["decision"]["action"], "noop", "{noop}");
    assert_eq!(noop["statements"], serde_json::json!([]));
}

#[tokio::test]
async fn a_plan_of_a_drop_lists_the_drop_and_its_keep_fallback() {
    let (_dir, config) = setup("pl_drop").await;
    let config = config.display().to_string();
    let event = event("pl_drop_alice", "s1");
    stdout_json(&autouser(&["session-start", "--config", &config, "--event", "-"], Some(&event)));
    let output = autouser(&["plan", "session-end", "--config", &config, "--event", "-", "--json"], Some(&event));
    let plan = stdout_json(&output);
    assert_eq!(plan["decision"]["action"], "drop", "{plan}");
    let sql = statements(&plan, "statements");
    assert!(sql.contains(&r#"DROP ROLE "pl_drop_alice""#.to_string()), "{sql:?}");
    assert!(sql.contains(&"SAVEPOINT autouser_drop".to_string()), "{sql:?}");
    let fallback = statements(&plan, "fallback_statements");
    assert_eq!(fallback.first().map(String::as_str), Some("ROLLBACK TO SAVEPOINT autouser_drop"), "{fallback:?}");
    assert!(fallback.contains(&r#"REVOKE "pl_drop_reader" FROM "pl_drop_alice""#.to_string()), "{fallback:?}");
    assert!(role("pl_drop_alice").await.is_some(), "the plan dropped the user");
    assert_eq!(
        stdout_json(&autouser(&["session-end", "--config", &config, "--event", "-"], Some(&event)))["status"],
        "dropped"
    );
}

#[tokio::test]
async fn a_plan_of_a_reassigning_drop_names_where_the_objects_go() {
    let ns = "pl_reassign";
    let (_dir, config) = setup_with_mode(ns, "best_effort_reassign_and_drop").await;
    let config = config.display().to_string();
    let event = event("pl_reassign_alice", "s1");
    stdout_json(&autouser(&["session-start", "--config", &config, "--event", "-"], Some(&event)));
    let plan =
        stdout_json(&autouser(&["plan", "session-end", "--config", &config, "--event", "-", "--json"], Some(&event)));
    assert_eq!(plan["decision"]["action"], "drop", "{plan}");
    assert_eq!(plan["decision"]["mode"], "best_effort_reassign_and_drop");
    let sql = statements(&plan, "statements");
    assert!(sql.iter().any(|s| s.starts_with(r#"REASSIGN OWNED BY "pl_reassign_alice" TO "#)), "{sql:?}");
    assert!(sql.iter().any(|s| s.starts_with(r#"DROP OWNED BY "pl_reassign_alice""#)), "{sql:?}");
    assert!(plan["notes"].to_string().contains("object inheritor"), "{plan}");
    assert!(role("pl_reassign_alice").await.is_some());
}

#[tokio::test]
async fn a_plan_of_a_start_with_object_permissions_lists_the_object_grants() {
    let ns = "pl_obj";
    let (dir, config) = setup_with_mode(ns, "keep").await;
    superuser_sql(
        "CREATE TABLE public.pl_obj_orders (id int); \
         GRANT SELECT ON public.pl_obj_orders TO pl_obj_admin WITH GRANT OPTION",
    )
    .await;
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "db_roles: [pl_obj_reader]",
        "db_roles: [pl_obj_reader]\n        db_permissions:\n          - match: {object_kind: table, schema: public, name: \"pl_obj_*\"}\n            permissions: [SELECT]",
    );
    let config = crate::write_config(dir.path(), "objects.yaml", &text);
    let event = event("pl_obj_alice", "s1");
    let plan =
        stdout_json(&autouser(&["plan", "session-start", "--config", &config, "--event", "-", "--json"], Some(&event)));
    let summary = &plan["decision"]["db_permissions"];
    assert_eq!(summary[0]["object_kind"], "table", "{plan}");
    assert_eq!(summary[0]["privileges"]["SELECT"], 1, "{plan}");
    let sql = statements(&plan, "statements");
    assert!(
        sql.contains(&r#"GRANT SELECT ON TABLE "public"."pl_obj_orders" TO "pl_obj_alice""#.to_string()),
        "{sql:?}"
    );
    assert_eq!(role("pl_obj_alice").await, None);
}
