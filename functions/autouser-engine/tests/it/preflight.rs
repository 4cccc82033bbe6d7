//! Preflight against a real server: each failing condition in turn, each then fixed by
//! running the SQL that preflight printed.

use autouser_engine::preflight::{self, Report, Status};

use crate::fixture::{major, q, Fixture};

pub(crate) async fn preflight(fx: &Fixture) -> Report {
    let config = fx.config();
    let db = config.databases[0].resolve_static().expect("a static database");
    match fx.admin_client(&config, preflight::admin_database(&db)).await {
        Ok(client) => preflight::check(&client, &config, &db).await.expect("preflight runs").0,
        Err(error) => Report::login_failed(&db, &error),
    }
}

pub(crate) fn finding<'r>(report: &'r Report, check: &str) -> &'r preflight::Finding {
    report.findings.iter().find(|f| f.check == check).unwrap_or_else(|| panic!("no {check} in {report:#?}"))
}

/// Runs the fix of every failing check as a superuser, until preflight passes; returns the
/// fixes it ran. Panics if a failure has no fix or the fixes do not converge.
pub(crate) async fn apply_fixes_until_ready(fx: &Fixture) -> Vec<String> {
    let mut applied = Vec::new();
    for _ in 0..4 {
        let report = preflight(fx).await;
        if report.ready {
            return applied;
        }
        for failure in report.findings.iter().filter(|f| f.status == Status::Fail) {
            let fix = failure.fix.clone().unwrap_or_else(|| panic!("no fix for {failure:?}"));
            fx.sql(&fix).await;
            applied.push(fix);
        }
    }
    panic!("preflight still fails after running {applied:?}:\n{}", preflight(fx).await.to_text());
}

/// A session works after preflight passed.
async fn a_session_starts(fx: &Fixture) {
    let alice = fx.user("alice");
    fx.start(fx.event("s1", &alice, &["keep"])).await.expect("a session starts after preflight passed");
}

#[tokio::test]
async fn a_ready_database_passes_and_bootstrap_creates_the_group() {
    let fx = Fixture::new("pf_ready").await;
    let report = preflight(&fx).await;
    assert!(report.ready, "{}", report.to_text());
    assert_eq!(finding(&report, "managed_group").status, Status::Pass);
    assert!(finding(&report, "managed_group").detail.contains("will create it"), "{}", report.to_text());
    // The policy's templated entry cannot be checked ahead of a person.
    assert_eq!(finding(&report, "db_role:{{internal.db_roles}}").status, Status::Warn);

    let config = fx.config();
    let db = config.databases[0].resolve_static().unwrap();
    let client = fx.admin_client(&config, "postgres").await.unwrap();
    let (_, facts) = preflight::check(&client, &config, &db).await.unwrap();
    let ran = preflight::bootstrap(&client, &config, &facts).await.unwrap();
    assert_eq!(ran[0], format!("CREATE ROLE {} NOLOGIN", q(&fx.group)));
    // Then, on 16+, every creator role of the config in one statement (a report stays small),
    // so that no session pays for preparing one.
    let creators = if major() >= 16 { config.creator_roles } else { 0 };
    assert_eq!(ran.len(), 1 + usize::from(creators > 0), "the group, then the creators: {ran:?}");
    for index in 0..creators {
        assert!(ran[1].contains(&format!("''{}-creator-{index}''", fx.group)), "creator {index}");
    }
    assert!(ran.iter().map(String::len).sum::<usize>() < 8_000, "{ran:?}");
    let (after, facts) = preflight::check(&client, &config, &db).await.unwrap();
    assert!(after.ready && finding(&after, "managed_group").detail.contains("exists"), "{}", after.to_text());
    assert!(preflight::bootstrap(&client, &config, &facts).await.unwrap().is_empty(), "bootstrap is idempotent");
    a_session_starts(&fx).await;
}

#[tokio::test]
async fn missing_createrole_is_fixed_by_the_printed_sql() {
    let fx = Fixture::new("pf_createrole").await;
    fx.sql(&format!("ALTER ROLE {} NOCREATEROLE", q(&fx.admin))).await;
    let report = preflight(&fx).await;
    assert_eq!(finding(&report, "createrole").status, Status::Fail);
    assert_eq!(finding(&report, "managed_group").status, Status::Fail, "nobody could create the group");
    let fixes = apply_fixes_until_ready(&fx).await;
    assert!(fixes.contains(&format!("ALTER ROLE {} CREATEROLE;", q(&fx.admin))), "{fixes:?}");
    a_session_starts(&fx).await;
}

#[tokio::test]
async fn missing_admin_option_on_a_policy_role_is_fixed_by_the_printed_sql() {
    let fx = Fixture::new("pf_adminopt").await;
    if major() >= 16 {
        fx.sql(&format!("REVOKE ADMIN OPTION FOR {} FROM {}", q(&fx.reader()), q(&fx.admin))).await;
    }
    let report = preflight(&fx).await;
    let check = format!("db_role:{}", fx.reader());
    if major() < 16 {
        // Before PostgreSQL 16, CREATEROLE alone may grant any non-superuser role.
        assert_eq!(finding(&report, &check).status, Status::Pass);
        return;
    }
    assert_eq!(finding(&report, &check).status, Status::Fail, "{}", report.to_text());
    let fixes = apply_fixes_until_ready(&fx).await;
    assert_eq!(fixes, [format!("GRANT {} TO {} WITH ADMIN OPTION;", q(&fx.reader()), q(&fx.admin))]);
    a_session_starts(&fx).await;
}

#[tokio::test]
async fn a_policy_role_that_does_not_exist_is_created_by_the_printed_sql() {
    let fx = Fixture::new("pf_norole").await;
    let ghost = fx.user("ghost");
    let fx = fx.with_roles(&format!(
        r#"
  - kind: role
    version: v7
    metadata: {{name: keep}}
    spec:
      options: {{create_db_user_mode: keep}}
      allow: {{db_labels: {{env: test}}, db_names: ["*"], db_roles: ["{ghost}"]}}
"#
    ));
    let report = preflight(&fx).await;
    assert_eq!(finding(&report, &format!("db_role:{ghost}")).status, Status::Fail);
    let fixes = apply_fixes_until_ready(&fx).await;
    assert_eq!(fixes[0], format!("CREATE ROLE {} NOLOGIN;", q(&ghost)));
    // On 16+ the superuser created it, so the admin then needs ADMIN OPTION on it too.
    assert_eq!(fixes.len(), if major() >= 16 { 2 } else { 1 }, "{fixes:?}");
    a_session_starts(&fx).await;
}

#[tokio::test]
async fn a_group_created_by_someone_else_needs_admin_option_on_16_and_later() {
    let fx = Fixture::new("pf_group").await;
    fx.sql(&format!("CREATE ROLE {} NOLOGIN", q(&fx.group))).await;
    let report = preflight(&fx).await;
    if major() < 16 {
        assert_eq!(finding(&report, "managed_group").status, Status::Pass);
        return;
    }
    assert_eq!(finding(&report, "managed_group").status, Status::Fail, "{}", report.to_text());
    let fixes = apply_fixes_until_ready(&fx).await;
    assert_eq!(fixes, [format!("GRANT {} TO {} WITH ADMIN OPTION;", q(&fx.group), q(&fx.admin))]);
    a_session_starts(&fx).await;
}

#[tokio::test]
async fn rds_iam_without_admin_option_is_fixed_by_the_printed_sql() {
    let mut fx = Fixture::new("pf_rdsiam").await;
    fx.db_type = "rds";
    fx.sql("DO $$ BEGIN CREATE ROLE rds_iam; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$")
        .await;
    let report = preflight(&fx).await;
    let rds_iam = finding(&report, "rds_iam");
    let fix = format!("GRANT {} TO {} WITH ADMIN OPTION;", q("rds_iam"), q(&fx.admin));
    if major() < 16 {
        // CREATEROLE suffices before 16: a warning that an upgrade would break sessions.
        assert_eq!(rds_iam.status, Status::Warn, "{}", report.to_text());
        assert_eq!(rds_iam.fix.as_deref(), Some(fix.as_str()));
        assert!(report.ready);
        fx.sql(&fix).await;
        assert_eq!(finding(&preflight(&fx).await, "rds_iam").status, Status::Pass);
    } else {
        assert_eq!(rds_iam.status, Status::Fail, "{}", report.to_text());
        assert_eq!(apply_fixes_until_ready(&fx).await, [fix]);
    }
    a_session_starts(&fx).await;
}

/// Without `pg_signal_backend` a user can hold up its own end (`hostile.rs`): a warning whose
/// fix, run as a superuser, makes it pass.
#[tokio::test]
async fn missing_pg_signal_backend_is_a_warning_fixed_by_the_printed_grant() {
    let fx = Fixture::new("pf_signal").await;
    let report = preflight(&fx).await;
    let signal = finding(&report, "signal_backend");
    assert_eq!(signal.status, Status::Warn, "{}", report.to_text());
    assert!(report.ready, "sessions work meanwhile: {}", report.to_text());
    let fix = format!("GRANT pg_signal_backend TO {};", q(&fx.admin));
    assert_eq!(signal.fix.as_deref(), Some(fix.as_str()));
    fx.sql(&fix).await;
    let after = preflight(&fx).await;
    assert_eq!(finding(&after, "signal_backend").status, Status::Pass, "{}", after.to_text());
    // Held through another role, as the README's admin setup may do it, it counts too.
    fx.sql(&format!("REVOKE pg_signal_backend FROM {}", q(&fx.admin))).await;
    let via = format!("{}_signallers", fx.ns);
    fx.sql(&format!(
        "CREATE ROLE {via} NOLOGIN; GRANT pg_signal_backend TO {via}; GRANT {via} TO {admin}",
        via = q(&via),
        admin = q(&fx.admin)
    ))
    .await;
    assert_eq!(finding(&preflight(&fx).await, "signal_backend").status, Status::Pass);
    a_session_starts(&fx).await;
}

/// An admin without a CONNECTION LIMIT can let a burst of sessions take the applications'
/// connection slots: a warning whose printed fix sets the recommended limit (the session
/// functions' connections at their default concurrency, at most a quarter of the slots open to
/// ordinary roles). With it the check passes; a limit above that quarter is a warning again.
#[tokio::test]
async fn no_connection_limit_is_a_warning_fixed_by_the_printed_alter_role() {
    let fx = Fixture::new("pf_connlimit").await;
    let report = preflight(&fx).await;
    let limit = finding(&report, "connection_limit");
    assert_eq!(limit.status, Status::Warn, "{}", report.to_text());
    assert!(limit.detail.contains("no CONNECTION LIMIT"), "{}", report.to_text());
    assert!(report.ready, "sessions work meanwhile: {}", report.to_text());

    let row = fx
        .superuser
        .query_one(
            "SELECT current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int
                    - COALESCE(current_setting('reserved_connections', true), '0')::int",
            &[],
        )
        .await
        .unwrap();
    let open_slots: i32 = row.get(0);
    let wanted = 2 * preflight::SESSION_FUNCTION_CONCURRENCY + preflight::OTHER_ADMIN_CONNECTIONS;
    let recommended = wanted.min(open_slots / 4);
    let fix = format!("ALTER ROLE {} CONNECTION LIMIT {recommended};", q(&fx.admin));
    assert_eq!(limit.fix.as_deref(), Some(fix.as_str()), "{}", report.to_text());
    assert!(limit.detail.contains(&format!("{open_slots} slots open")), "{}", report.to_text());

    fx.sql(&fix).await;
    let after = preflight(&fx).await;
    let limit = finding(&after, "connection_limit");
    assert_eq!(limit.status, Status::Pass, "{}", after.to_text());
    assert!(limit.detail.contains(&format!("CONNECTION LIMIT {recommended} of the")), "{}", after.to_text());

    fx.sql(&format!("ALTER ROLE {} CONNECTION LIMIT {}", q(&fx.admin), open_slots / 4 + 1)).await;
    let above = preflight(&fx).await;
    assert_eq!(finding(&above, "connection_limit").status, Status::Warn, "{}", above.to_text());
    assert_eq!(finding(&above, "connection_limit").fix.as_deref(), Some(fix.as_str()));
    fx.sql(&fix).await;
    a_session_starts(&fx).await;
}

#[tokio::test]
async fn missing_connect_is_a_login_failure_fixed_by_the_printed_grant() {
    let mut fx = Fixture::new("pf_connect").await;
    fx.default_database = Some(fx.db.clone());
    fx.sql(&format!("REVOKE CONNECT ON DATABASE {} FROM PUBLIC", q(&fx.db))).await;
    let report = preflight(&fx).await;
    assert!(!report.ready);
    assert_eq!(finding(&report, "login").status, Status::Fail, "{}", report.to_text());
    let fixes = apply_fixes_until_ready(&fx).await;
    assert_eq!(fixes, [format!("GRANT CONNECT ON DATABASE {} TO {};", q(&fx.db), q(&fx.admin))]);
    a_session_starts(&fx).await;
}

#[tokio::test]
async fn a_read_only_endpoint_fails_the_writable_check() {
    let mut fx = Fixture::new("pf_readonly").await;
    fx.default_database = Some(fx.db.clone());
    fx.sql(&format!("ALTER DATABASE {} SET default_transaction_read_only = on", q(&fx.db))).await;
    let report = preflight(&fx).await;
    let writable = finding(&report, "writable");
    assert_eq!(writable.status, Status::Fail, "{}", report.to_text());
    assert!(writable.fix.as_deref().unwrap().contains("writer"), "{writable:?}");
    fx.sql(&format!("ALTER DATABASE {} RESET default_transaction_read_only", q(&fx.db))).await;
    assert!(preflight(&fx).await.ready);
}

/// `creator_roles`: the creators are made as users need them. Preflight names those that
/// exist and are not ready (here one that lost ADMIN OPTION on the reader role); bootstrap
/// prepares them, and so does the printed fix, run as a superuser. On 15 they are unused.
#[tokio::test]
async fn preflight_checks_the_creator_roles_and_bootstrap_or_the_fix_prepares_them() {
    for (ns, by_bootstrap) in [("pf_creators_boot", true), ("pf_creators_fix", false)] {
        let mut fx = Fixture::new(ns).await;
        fx.extra_yaml = "creator_roles: 3\n".into();
        // The group exists (a first session), so the creators can be given it.
        let first = fx.user("first");
        fx.start(fx.event("s0", &first, &["keep"])).await.unwrap();
        let report = preflight(&fx).await;
        let creators = finding(&report, "creator_roles");
        if major() < 16 {
            assert_eq!(creators.status, Status::Pass, "{}", report.to_text());
            assert!(creators.detail.contains("unused before PostgreSQL 16"), "{}", report.to_text());
            return;
        }
        assert_eq!(creators.status, Status::Pass, "{}", report.to_text());
        assert!(creators.detail.starts_with("1 of the 3 creator roles exist, each ready"), "{}", report.to_text());
        let creator = fx.config().creator_role_for(&first).expect("a creator");
        fx.sql(&format!("REVOKE {} FROM {} GRANTED BY {} CASCADE", q(&fx.reader()), q(&creator), q(&fx.admin))).await;

        let report = preflight(&fx).await;
        let creators = finding(&report, "creator_roles");
        assert_eq!(creators.status, Status::Warn, "{}", report.to_text());
        assert!(report.ready, "sessions work meanwhile: {}", report.to_text());
        assert!(
            creators.detail.starts_with("1 of the 1 creator roles that exist are not ready"),
            "{}",
            report.to_text()
        );
        if by_bootstrap {
            let config = fx.config();
            let db = config.databases[0].resolve_static().unwrap();
            let client = fx.admin_client(&config, "postgres").await.unwrap();
            let (_, facts) = preflight::check(&client, &config, &db).await.unwrap();
            // The one not ready, and the two that do not exist yet, in one statement.
            let ran = preflight::bootstrap(&client, &config, &facts).await.unwrap();
            assert_eq!(ran.len(), 1, "{ran:?}");
            for index in 0..3 {
                assert!(ran[0].contains(&format!("''{}-creator-{index}''", fx.group)), "{ran:?}");
            }
        } else {
            let fix = creators.fix.clone().expect("a fix");
            assert!(fix.contains(&format!("GRANT {} TO {}", q(&creator), q(&fx.admin))), "{fix}");
            fx.sql(&fix).await;
        }
        let after = preflight(&fx).await;
        assert_eq!(finding(&after, "creator_roles").status, Status::Pass, "{}", after.to_text());
        a_session_starts(&fx).await;
        let bob = fx.user("bob");
        fx.start(fx.event("s2", &bob, &["keep"])).await.expect("a session of a user of another creator");
        fx.end(fx.event("s2", &bob, &["keep"])).await.expect("and its end");
        fx.start(fx.event("s3", &first, &["keep"])).await.expect("a session of the creator's own user");
    }
}

/// `creator_roles`: a creator is never given a role a start refuses (here a superuser role,
/// which only a superuser could hand on): bootstrap prepares the creators all the same, and
/// they are then ready.
#[tokio::test]
async fn creators_are_not_prepared_with_a_role_a_start_refuses() {
    if major() < 16 {
        return;
    }
    let mut fx = Fixture::new("pf_creators_refused").await;
    fx.extra_yaml = "creator_roles: 2\n".into();
    let first = fx.user("first");
    fx.start(fx.event("s0", &first, &["keep"])).await.unwrap();
    // The creator that exists loses ADMIN OPTION on the reader, so bootstrap has one to prepare.
    let creator = fx.config().creator_role_for(&first).expect("a creator");
    fx.sql(&format!("REVOKE {} FROM {} GRANTED BY {} CASCADE", q(&fx.reader()), q(&creator), q(&fx.admin))).await;
    let boss = format!("{}_boss", fx.ns);
    fx.sql(&format!("CREATE ROLE {} NOLOGIN SUPERUSER", q(&boss))).await;
    let reader = fx.reader();
    let fx = fx.with_roles(&format!(
        r#"
  - kind: role
    version: v7
    metadata: {{name: keep}}
    spec:
      options: {{create_db_user_mode: keep}}
      allow: {{db_labels: {{env: test}}, db_names: ["*"], db_roles: ["{reader}", "{boss}"]}}
"#
    ));
    let config = fx.config();
    let db = config.databases[0].resolve_static().unwrap();
    let client = fx.admin_client(&config, "postgres").await.unwrap();
    let (report, facts) = preflight::check(&client, &config, &db).await.unwrap();
    assert_eq!(finding(&report, &format!("db_role:{boss}")).status, Status::Warn, "{}", report.to_text());
    assert!(facts.creator_roles_held.contains(&reader), "{:?}", facts.creator_roles_held);
    assert!(!facts.creator_roles_held.contains(&boss), "{:?}", facts.creator_roles_held);
    let ran = preflight::bootstrap(&client, &config, &facts).await.expect("bootstrap prepares the creators");
    assert!(!ran.is_empty() && ran.iter().all(|statement| !statement.contains(&boss)), "{ran:?}");
    let after = preflight(&fx).await;
    assert_eq!(finding(&after, "creator_roles").status, Status::Pass, "{}", after.to_text());
}
