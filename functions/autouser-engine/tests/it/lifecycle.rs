//! Session starts and ends, one at a time: what the database holds afterwards.

use autouser_engine::tokio_postgres::error::SqlState;
use autouser_engine::Error;
use autouser_policy::outcome::EndStatus;
use serde_json::json;

use crate::fixture::{connect, q, set, Fixture};

#[tokio::test]
async fn start_creates_user_in_group_with_policy_roles_and_login() {
    let fx = Fixture::new("lc_start").await;
    let alice = fx.user("alice");
    let out = fx.start(fx.event("s1", &alice, &["keep"])).await.unwrap();
    assert_eq!(out.status, "active");
    assert_eq!(out.db_user, alice);
    assert!(out.created_user);
    let state = fx.state(&alice).await.expect("user exists");
    assert!(state.login);
    assert_eq!(state.member_of, set(&[&fx.group, &fx.reader()]));
}

#[tokio::test]
async fn provisioned_user_can_log_in_until_the_session_ends() {
    let fx = Fixture::new("lc_login").await;
    let alice = fx.user("alice");
    fx.start(fx.event("s1", &alice, &["keep"])).await.unwrap();
    let client = connect(&alice, &fx.db).await.expect("alice logs in with her certificate");
    let who: String = client.query_one("SELECT current_user::text", &[]).await.unwrap().get(0);
    assert_eq!(who, alice);
    drop(client);
    fx.end(fx.event("s1", &alice, &["keep"])).await.unwrap();
    let err = connect(&alice, &fx.db).await.expect_err("a locked user cannot log in");
    assert!(err.to_string().contains("not permitted to log in"), "{err}");
}

#[tokio::test]
async fn trait_templates_add_roles() {
    let fx = Fixture::new("lc_traits").await;
    let alice = fx.user("alice");
    let mut event = fx.event("s1", &alice, &["keep"]);
    event["traits"] = json!({"internal": {"db_roles": [fx.writer()]}});
    let out = fx.start(event).await.unwrap();
    assert_eq!(out.db_roles, vec![fx.reader(), fx.writer()]);
    assert_eq!(fx.state(&alice).await.unwrap().member_of, set(&[&fx.group, &fx.reader(), &fx.writer()]));
}

#[tokio::test]
async fn requested_db_roles_narrow_the_grant() {
    let fx = Fixture::new("lc_narrow").await;
    let alice = fx.user("alice");
    let mut event = fx.event("s1", &alice, &["keep"]);
    event["traits"] = json!({"internal": {"db_roles": [fx.writer()]}});
    event["db_roles"] = json!([fx.writer()]);
    fx.start(event.clone()).await.unwrap();
    assert_eq!(fx.state(&alice).await.unwrap().member_of, set(&[&fx.group, &fx.writer()]));

    let bob = fx.user("bob");
    let mut event = fx.event("s2", &bob, &["keep"]);
    event["db_roles"] = json!([fx.writer()]);
    let err = fx.start(event).await.unwrap_err();
    assert_eq!(err.kind(), "PolicyDenied", "{err}");
    assert!(err.to_string().contains(&fx.writer()), "{err}");
    assert!(fx.state(&bob).await.is_none());
}

#[tokio::test]
async fn remote_user_gets_prefixed_name() {
    let fx = Fixture::new("lc_remote").await;
    let mut event = fx.event("s1", "bob", &["keep"]);
    event["origin_cluster"] = json!("root");
    let out = fx.start(event).await.unwrap();
    assert_eq!(out.db_user, "remote-bob-root");
    assert!(fx.state("remote-bob-root").await.unwrap().login);
    // Same cluster as ours: the plain name.
    let carol = fx.user("carol");
    let mut event = fx.event("s2", &carol, &["keep"]);
    event["origin_cluster"] = json!("local");
    assert_eq!(fx.start(event).await.unwrap().db_user, carol);
    fx.end(json!({"session_id": "s1", "user": "bob", "origin_cluster": "root",
                  "database": "main", "db_name": fx.db}))
        .await
        .unwrap();
    assert!(!fx.state("remote-bob-root").await.unwrap().login);
}

#[tokio::test]
async fn keep_end_strips_roles_and_sets_nologin() {
    let fx = Fixture::new("lc_keep").await;
    let alice = fx.user("alice");
    fx.start(fx.event("s1", &alice, &["keep"])).await.unwrap();
    let out = fx.end(fx.event("s1", &alice, &["keep"])).await.unwrap();
    assert_eq!(out.status, EndStatus::Deactivated);
    let state = fx.state(&alice).await.unwrap();
    assert!(!state.login);
    assert_eq!(state.member_of, set(&[&fx.group]));
}

#[tokio::test]
async fn best_effort_drop_end_drops_user() {
    let fx = Fixture::new("lc_drop").await;
    let alice = fx.user("alice");
    fx.start(fx.event("s1", &alice, &["drop"])).await.unwrap();
    let out = fx.end(json!({"session_id": "s1", "user": alice, "database": "main", "db_name": fx.db})).await.unwrap();
    assert_eq!(out.status, EndStatus::Dropped);
    assert!(fx.state(&alice).await.is_none());
}

#[tokio::test]
async fn end_with_dependent_objects_falls_back_to_keep() {
    let fx = Fixture::new("lc_depend").await;
    let alice = fx.user("alice");
    fx.start(fx.event("s1", &alice, &["drop"])).await.unwrap();
    let client = crate::fixture::connect("postgres", &fx.db).await.unwrap();
    client
        .batch_execute(&format!("CREATE TABLE public.notes (x int); GRANT SELECT ON public.notes TO {}", q(&alice)))
        .await
        .unwrap();
    let out = fx.end(fx.event("s1", &alice, &["drop"])).await.unwrap();
    assert_eq!(out.status, EndStatus::Deactivated);
    assert!(out.reason.unwrap().contains("depend"));
    let state = fx.state(&alice).await.expect("the user is kept");
    assert!(!state.login);
    assert_eq!(state.member_of, set(&[&fx.group]));
}

#[tokio::test]
async fn end_applies_the_mode_recorded_at_start() {
    let fx = Fixture::new("lc_mode").await;
    let alice = fx.user("alice");
    fx.start(fx.event("s1", &alice, &["keep"])).await.unwrap();
    // The policy changes while the session is open: keep becomes best_effort_drop.
    let fx = fx.with_roles(&format!(
        r#"
  - kind: role
    version: v7
    metadata: {{name: keep}}
    spec:
      options: {{create_db_user_mode: best_effort_drop}}
      allow: {{db_labels: {{"*": "*"}}, db_names: ["*"], db_roles: ["{}_reader"]}}
"#,
        "lc_mode"
    ));
    let out = fx.end(fx.event("s1", &alice, &["keep"])).await.unwrap();
    assert_eq!(out.status, EndStatus::Deactivated);
    assert!(fx.state(&alice).await.is_some());
}

#[tokio::test]
async fn overlapping_sessions_keep_the_user_until_the_last_end() {
    let fx = Fixture::new("lc_overlap").await;
    let alice = fx.user("alice");
    fx.start(fx.event("s1", &alice, &["keep"])).await.unwrap();
    let second = fx.start(fx.event("s2", &alice, &["keep"])).await.unwrap();
    assert_eq!(second.open_sessions, 2);
    let out = fx.end(fx.event("s1", &alice, &["keep"])).await.unwrap();
    assert_eq!(out.status, EndStatus::InUse);
    assert_eq!(out.open_sessions, 1);
    let state = fx.state(&alice).await.unwrap();
    assert!(state.login);
    assert_eq!(state.member_of, set(&[&fx.group, &fx.reader()]));
    let out = fx.end(fx.event("s2", &alice, &["keep"])).await.unwrap();
    assert_eq!(out.status, EndStatus::Deactivated);
    assert!(!fx.state(&alice).await.unwrap().login);
}

#[tokio::test]
async fn sessions_on_two_databases_share_one_ledger() {
    let fx = Fixture::new("lc_twodb").await;
    fx.sql("CREATE DATABASE lc_twodb_other").await;
    let alice = fx.user("alice");
    fx.start(fx.event("s1", &alice, &["keep"])).await.unwrap();
    let mut other = fx.event("s2", &alice, &["keep"]);
    other["db_name"] = json!("lc_twodb_other");
    assert_eq!(fx.start(other.clone()).await.unwrap().open_sessions, 2);
    assert_eq!(fx.end(fx.event("s1", &alice, &["keep"])).await.unwrap().status, EndStatus::InUse);
    assert!(fx.state(&alice).await.unwrap().login);
    assert_eq!(fx.end(other).await.unwrap().status, EndStatus::Deactivated);
    assert!(!fx.state(&alice).await.unwrap().login);
}

#[tokio::test]
async fn overlapping_session_with_other_roles_is_refused() {
    let fx = Fixture::new("lc_mismatch").await;
    let alice = fx.user("alice");
    fx.start(fx.event("s1", &alice, &["keep"])).await.unwrap();
    let mut event = fx.event("s2", &alice, &["keep"]);
    event["traits"] = json!({"internal": {"db_roles": [fx.writer()]}});
    let err = fx.start(event).await.unwrap_err();
    assert!(matches!(err, Error::RolesMismatch { .. }), "{err}");
    assert_eq!(fx.state(&alice).await.unwrap().member_of, set(&[&fx.group, &fx.reader()]));
}

#[tokio::test]
async fn duplicate_start_and_end_are_noops() {
    let fx = Fixture::new("lc_dup").await;
    let alice = fx.user("alice");
    fx.start(fx.event("s1", &alice, &["keep"])).await.unwrap();
    let before = fx.state(&alice).await.unwrap();
    let again = fx.start(fx.event("s1", &alice, &["keep"])).await.unwrap();
    assert!(again.already_active);
    assert_eq!(again.open_sessions, 1);
    assert_eq!(fx.state(&alice).await.unwrap(), before, "a duplicate start writes nothing");
    assert_eq!(fx.end(fx.event("s1", &alice, &["keep"])).await.unwrap().status, EndStatus::Deactivated);
    let after_end = fx.state(&alice).await.unwrap();
    assert_eq!(fx.end(fx.event("s1", &alice, &["keep"])).await.unwrap().status, EndStatus::Noop);
    assert_eq!(fx.state(&alice).await.unwrap(), after_end, "a duplicate end writes nothing");
}

/// The end creates no user: it is recorded in the managed group's comment (the group is
/// created for it on a fresh server), so that a later start of the session is refused.
#[tokio::test]
async fn end_for_unknown_session_creates_no_user_and_is_recorded_in_the_group() {
    let fx = Fixture::new("lc_unknown").await;
    let ghost = fx.user("ghost");
    let out = fx.end(fx.event("s9", &ghost, &["keep"])).await.unwrap();
    assert_eq!(out.status, EndStatus::Noop);
    assert!(fx.state(&ghost).await.is_none());
    let row = fx
        .superuser
        .query_one(
            "SELECT shobj_description(oid, 'pg_authid'), rolcanlogin FROM pg_roles WHERE rolname = $1",
            &[&fx.group],
        )
        .await
        .unwrap();
    let comment: String = row.get(0);
    let mut lines = comment.lines();
    assert_eq!(lines.next(), Some(autouser_policy::ledger::ENDED_SESSIONS_HEADER), "{comment}");
    let line = lines.next().expect("one ended session");
    assert!(line.starts_with(&format!("{}\t\"s9\"\t", serde_json::to_string(&ghost).unwrap())), "{comment}");
    assert_eq!(lines.next(), None, "{comment}");
    assert!(!row.get::<_, bool>(1), "the group cannot log in");
}

#[tokio::test]
async fn start_redelivered_after_its_end_is_refused() {
    let fx = Fixture::new("lc_late").await;
    let alice = fx.user("alice");
    fx.start(fx.event("s1", &alice, &["keep"])).await.unwrap();
    fx.end(fx.event("s1", &alice, &["keep"])).await.unwrap();
    let err = fx.start(fx.event("s1", &alice, &["keep"])).await.unwrap_err();
    assert_eq!(err.kind(), "SessionAlreadyEnded");
    assert!(!fx.state(&alice).await.unwrap().login);
}

#[tokio::test]
async fn restart_revokes_roles_left_over_from_earlier_sessions() {
    let fx = Fixture::new("lc_leftover").await;
    let alice = fx.user("alice");
    fx.start(fx.event("s1", &alice, &["keep"])).await.unwrap();
    // An extra role appears on the user, granted by hand by the superuser.
    fx.sql(&format!("GRANT {} TO {}", q(&fx.writer()), q(&alice))).await;
    let out = fx.end(fx.event("s1", &alice, &["keep"])).await.unwrap();
    assert_eq!(out.status, EndStatus::Deactivated);
    assert!(!fx.state(&alice).await.unwrap().login);
    if crate::fixture::major() >= 16 {
        // Only its grantor may revoke it. The end locks the user and says what is left;
        // the next start refuses rather than grant more than the policy allows.
        let fix = format!("REVOKE {} FROM {} GRANTED BY \"postgres\"", q(&fx.writer()), q(&alice));
        assert!(out.reason.as_deref().unwrap_or_default().contains(&fix), "{out:?}");
        let err = fx.start(fx.event("s2", &alice, &["keep"])).await.unwrap_err();
        assert!(matches!(err, Error::ForeignGrant { .. }) && err.to_string().contains(&fix), "{err}");
        assert!(!fx.state(&alice).await.unwrap().login);
        fx.sql(&fix).await;
    } else {
        assert_eq!(out.reason, None);
    }
    // A leftover role the admin can revoke (it granted it): the next start strips it.
    let admin = crate::fixture::connect(&fx.admin, &fx.db).await.unwrap();
    admin.batch_execute(&format!("GRANT {} TO {}", q(&fx.writer()), q(&alice))).await.unwrap();
    fx.start(fx.event("s2", &alice, &["keep"])).await.unwrap();
    assert_eq!(fx.state(&alice).await.unwrap().member_of, set(&[&fx.group, &fx.reader()]));
}

#[tokio::test]
async fn existing_managed_user_without_ledger_is_adopted() {
    let fx = Fixture::new("lc_adopt").await;
    let alice = fx.user("alice");
    fx.sql(&format!(
        "CREATE ROLE {g}; CREATE ROLE {a} NOLOGIN IN ROLE {g}; COMMENT ON ROLE {a} IS 'made by hand'",
        g = q(&fx.group),
        a = q(&alice)
    ))
    .await;
    fx.give_admin_option(&fx.group).await;
    fx.give_admin_option(&alice).await;
    let out = fx.start(fx.event("s1", &alice, &["keep"])).await.unwrap();
    assert!(!out.created_user, "the existing role is used: {out:?}");
    let state = fx.state(&alice).await.unwrap();
    assert!(state.login);
    assert_eq!(state.member_of, set(&[&fx.group, &fx.reader()]));
    // Adopted: the operator's comment is replaced by a ledger of ours, which owns the role
    // for this person and records the session, so that its end locks the user again.
    let comment = state.comment.expect("a comment");
    let ledger = autouser_policy::ledger::Ledger::from_comment(&alice, Some(&comment)).unwrap();
    assert_eq!(ledger.managed_by, autouser_policy::ledger::MANAGED_BY, "{comment}");
    assert_eq!(ledger.sessions.keys().collect::<Vec<_>>(), ["s1"], "{comment}");
    assert_eq!(ledger.identity.map(|who| who.user), Some(alice.clone()), "{comment}");
    assert_eq!(fx.end(fx.event("s1", &alice, &["keep"])).await.unwrap().status, EndStatus::Deactivated);
    assert!(!fx.state(&alice).await.unwrap().login, "the adopted user is locked at the end");
}

#[tokio::test]
async fn rds_databases_also_get_rds_iam() {
    let mut fx = Fixture::new("lc_rds").await;
    fx.db_type = "rds";
    fx.sql("DO $$ BEGIN CREATE ROLE rds_iam; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$")
        .await;
    fx.give_admin_option("rds_iam").await;
    let alice = fx.user("alice");
    let out = fx.start(fx.event("s1", &alice, &["keep"])).await.unwrap();
    assert!(out.base_roles.contains(&"rds_iam".to_string()));
    assert_eq!(fx.state(&alice).await.unwrap().member_of, set(&[&fx.group, &fx.reader(), "rds_iam"]));
    fx.end(fx.event("s1", &alice, &["keep"])).await.unwrap();
    assert_eq!(fx.state(&alice).await.unwrap().member_of, set(&[&fx.group]));
}

#[tokio::test]
async fn password_admin_from_environment_works() {
    let mut fx = Fixture::new("lc_passwd").await;
    // Setting a variable would race with other test threads reading the environment, so the
    // password is one cargo already puts there for every test process.
    let password = env!("CARGO_MANIFEST_DIR");
    assert_eq!(std::env::var("CARGO_MANIFEST_DIR").as_deref(), Ok(password));
    fx.sql(&format!(
        "DO $$ BEGIN CREATE ROLE {pl}; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$; \
         GRANT {pl} TO {a}; ALTER ROLE {a} PASSWORD {pw}",
        pl = q(scratch_postgres::PASSWORD_LOGIN_GROUP),
        a = q(&fx.admin),
        pw = autouser_engine::sql::quote_literal(password),
    ))
    .await;
    fx.auth_yaml = Some("{method: password, password_env: CARGO_MANIFEST_DIR}".into());
    let alice = fx.user("alice");
    fx.start(fx.event("s1", &alice, &["keep"])).await.unwrap();
    assert!(fx.state(&alice).await.unwrap().login);
}

/// `NOLOGIN` stops new logins only: by default a connection opened during the session keeps
/// working after its end. With `terminate_connections`, the end closes it.
#[tokio::test]
async fn open_connections_outlive_the_end_unless_terminate_connections_is_on() {
    let mut fx = Fixture::new("lc_terminate").await;
    fx.sql(&format!("GRANT pg_signal_backend TO {}", q(&fx.admin))).await;
    let alice = fx.user("alice");

    fx.start(fx.event("s1", &alice, &["keep"])).await.unwrap();
    let open = connect(&alice, &fx.db).await.unwrap();
    let out = fx.end(fx.event("s1", &alice, &["keep"])).await.unwrap();
    assert_eq!(out.terminated_connections, None, "the option is off by default");
    open.batch_execute("SELECT 1").await.expect("the connection outlives the session");
    assert!(connect(&alice, &fx.db).await.is_err(), "but no new login is possible");
    drop(open);

    fx.extra_yaml = "terminate_connections: true".to_string();
    fx.start(fx.event("s2", &alice, &["keep"])).await.unwrap();
    let open = connect(&alice, &fx.db).await.unwrap();
    let out = fx.end(fx.event("s2", &alice, &["keep"])).await.unwrap();
    assert_eq!(out.terminated_connections, Some(1), "{out:?}");
    let err = open.batch_execute("SELECT 1").await.expect_err("the connection was ended");
    // Either the server's goodbye (57P01, admin_shutdown) or the closed socket comes first.
    assert!(err.is_closed() || err.code() == Some(&SqlState::ADMIN_SHUTDOWN), "{err:?}");
}

/// Without `pg_signal_backend`, the end still succeeds and says what to grant.
#[tokio::test]
async fn terminate_connections_without_the_privilege_names_the_grant() {
    let mut fx = Fixture::new("lc_terminate_denied").await;
    fx.extra_yaml = "terminate_connections: true".to_string();
    let alice = fx.user("alice");
    fx.start(fx.event("s1", &alice, &["keep"])).await.unwrap();
    let _open = connect(&alice, &fx.db).await.unwrap();
    let out = fx.end(fx.event("s1", &alice, &["keep"])).await.unwrap();
    assert_eq!(out.status, EndStatus::Deactivated);
    assert_eq!(out.terminated_connections, None);
    let reason = out.reason.unwrap_or_default();
    assert!(reason.contains("GRANT pg_signal_backend TO"), "{reason}");
}
