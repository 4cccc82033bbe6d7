//! `db_roles` that no policy may hand out, though a trait names them (issue 28): the user we
//! create is the adversary, and a role it is granted is what it can `SET ROLE` to or inherit.
//! Each test names a role whose grant would give the user more than a role's privileges
//! (the server's OS account, another person's user, the power to create and alter roles), or
//! a role that reaches one of those through membership. Every start must be refused with
//! `RefusedDbRole`, naming why, whether the user is new (the one-round-trip start, whose
//! check fails and falls back to the read path) or returns, and leave the database unchanged.
//! Should a start go through, the test runs the attack as the user, over a real connection,
//! and fails saying whether it worked.

use autouser_engine::Error;
use serde_json::json;

use crate::fixture::{connect, major, q, set, Fixture};

/// Starts `user`'s session `session` asking, through the `keep` policy's trait template, for
/// `roles`; expects `RefusedDbRole` on the first of `roles` with a reason containing `why`, and
/// `user` exactly as before. If the start goes through, runs `attack` as `user` and fails.
async fn assert_refused(fx: &Fixture, session: &str, user: &str, roles: &[&str], why: &str, attack: &str) {
    let before = fx.state(user).await;
    let mut event = fx.event(session, user, &["keep"]);
    event["traits"] = json!({"internal": {"db_roles": roles}});
    match fx.start(event).await {
        Err(Error::RefusedDbRole { role, reason }) => {
            assert_eq!(role, roles[0], "{reason}");
            assert!(reason.contains(why), "{role:?} refused with {reason:?}, expected it to say {why:?}");
        }
        Err(other) => panic!("{roles:?}: expected RefusedDbRole, got {other:?}"),
        Ok(started) => {
            let attacked = match connect(user, &fx.db).await {
                Ok(client) => match client.batch_execute(attack).await {
                    Ok(()) => "worked".to_string(),
                    Err(error) => format!("failed: {error:?}"),
                },
                Err(error) => format!("could not log in: {error}"),
            };
            panic!("{roles:?} was granted ({started:?}); as {user}, `{attack}` {attacked}");
        }
    }
    assert_eq!(fx.state(user).await, before, "{user} is unchanged");
}

/// A role the admin may grant (ADMIN OPTION on PostgreSQL 16+, as an operator would give it).
async fn grantable(fx: &Fixture, role: &str) {
    fx.give_admin_option(role).await;
}

const RUN_A_PROGRAM: &str = "COPY (SELECT 1) TO PROGRAM 'true'";

#[tokio::test]
async fn a_predefined_role_is_refused_unless_the_config_allows_it() {
    let fx = Fixture::new("hr_predefined").await;
    grantable(&fx, "pg_execute_server_program").await;
    grantable(&fx, "pg_read_all_data").await;
    let alice = fx.user("alice");
    // A new user (the one-round-trip start) and a returning one (the read path).
    assert_refused(&fx, "s1", &alice, &["pg_execute_server_program"], "predefined", RUN_A_PROGRAM).await;
    fx.start(fx.event("s2", &alice, &["keep"])).await.expect("an honest session");
    fx.end(fx.event("s2", &alice, &["keep"])).await.unwrap();
    assert_refused(&fx, "s3", &alice, &["pg_execute_server_program"], "predefined", RUN_A_PROGRAM).await;
    let bob = fx.user("bob");
    assert_refused(&fx, "s4", &bob, &["pg_read_all_data"], "allowed_predefined_roles", "SELECT 1").await;
}

#[tokio::test]
async fn an_allowed_predefined_role_is_granted() {
    let mut fx = Fixture::new("hr_allowed").await;
    fx.extra_yaml = "allowed_predefined_roles: [pg_read_all_data]\n".into();
    grantable(&fx, "pg_read_all_data").await;
    grantable(&fx, "pg_execute_server_program").await;
    let alice = fx.user("alice");
    let mut event = fx.event("s1", &alice, &["keep"]);
    event["traits"] = json!({"internal": {"db_roles": ["pg_read_all_data"]}});
    fx.start(event.clone()).await.expect("an allowed predefined role is granted");
    assert_eq!(fx.state(&alice).await.unwrap().member_of, set(&[&fx.group, &fx.reader(), "pg_read_all_data"]));
    fx.end(event.clone()).await.unwrap();
    event["session_id"] = json!("s2");
    fx.start(event).await.expect("and granted again on the read path");
    // Listing one does not allow the others.
    let bob = fx.user("bob");
    assert_refused(&fx, "s3", &bob, &["pg_execute_server_program"], "predefined", RUN_A_PROGRAM).await;
}

#[tokio::test]
async fn another_managed_users_role_is_refused() {
    let fx = Fixture::new("hr_other_user").await;
    let (alice, bob) = (fx.user("alice"), fx.user("bob"));
    fx.start(fx.event("s1", &bob, &["keep"])).await.unwrap();
    let attack = format!("SET ROLE {}", q(&bob));
    assert_refused(&fx, "s2", &alice, &[&bob], "managed group", &attack).await;
    // Also once bob's session ended and he is locked.
    fx.end(fx.event("s1", &bob, &["keep"])).await.unwrap();
    assert_refused(&fx, "s3", &alice, &[&bob], "managed group", &attack).await;
}

#[tokio::test]
async fn a_role_with_createrole_createdb_replication_or_bypassrls_is_refused() {
    let fx = Fixture::new("hr_attributes").await;
    let alice = fx.user("alice");
    for (attribute, why) in [
        ("CREATEROLE", "CREATEROLE"),
        ("CREATEDB", "CREATEDB"),
        ("REPLICATION", "REPLICATION"),
        ("BYPASSRLS", "BYPASSRLS"),
    ] {
        let role = format!("{}_{}", fx.ns, attribute.to_lowercase());
        fx.sql(&format!("CREATE ROLE {} NOLOGIN {attribute}", q(&role))).await;
        grantable(&fx, &role).await;
        let attack = format!("SET ROLE {}; CREATE ROLE {}", q(&role), q(&format!("{}_evil", fx.ns)));
        assert_refused(&fx, attribute, &alice, &[&role], why, &attack).await;
    }
}

#[tokio::test]
async fn a_creator_role_is_refused() {
    if major() < 16 {
        return; // Creator roles exist on PostgreSQL 16+ only.
    }
    let mut fx = Fixture::new("hr_creator").await;
    fx.extra_yaml = "creator_roles: 4\n".into();
    let config = fx.config();
    let alice = fx.user("alice");
    // Another user's creator (alice's own would be circular, which PostgreSQL refuses).
    let bob = (0..)
        .map(|i| fx.user(&format!("bob{i}")))
        .find(|bob| config.creator_role_for(bob) != config.creator_role_for(&alice))
        .unwrap();
    let creator = config.creator_role_for(&bob).unwrap();
    fx.start(fx.event("s1", &bob, &["keep"])).await.expect("bob's start prepares his creator");
    let attack = format!("SET ROLE {}; CREATE ROLE {}", q(&creator), q(&fx.user("evil")));
    assert_refused(&fx, "s2", &alice, &[&creator], "creator", &attack).await;
}

#[tokio::test]
async fn the_object_inheritor_and_superuser_roles_are_refused() {
    let mut fx = Fixture::new("hr_inheritor").await;
    let heir = format!("{}_heir", fx.ns);
    fx.extra_yaml = format!("object_inheritor: {heir:?}\n");
    fx.sql(&format!("CREATE ROLE {} NOLOGIN", q(&heir))).await;
    grantable(&fx, &heir).await;
    let alice = fx.user("alice");
    assert_refused(&fx, "s1", &alice, &[&heir], "inheritor", &format!("SET ROLE {}", q(&heir))).await;
    assert_refused(&fx, "s2", &alice, &["postgres"], "superuser", "SET ROLE postgres").await;
    // A role that is a member of the inheritor.
    let heirs_friend = format!("{}_heirs_friend", fx.ns);
    fx.sql(&format!("CREATE ROLE {friend} NOLOGIN; GRANT {} TO {friend}", q(&heir), friend = q(&heirs_friend))).await;
    grantable(&fx, &heirs_friend).await;
    assert_refused(&fx, "s3", &alice, &[&heirs_friend], "inheritor", &format!("SET ROLE {}", q(&heir))).await;
}

/// A role that reaches a refused one through membership, directly or through another role:
/// granting it gives what that one gives.
#[tokio::test]
async fn a_role_that_is_a_member_of_a_refused_role_is_refused() {
    let fx = Fixture::new("hr_nested").await;
    let (alice, bob) = (fx.user("alice"), fx.user("bob"));
    fx.start(fx.event("s1", &bob, &["keep"])).await.unwrap();
    let maker = format!("{}_maker", fx.ns);
    let super_role = format!("{}_super", fx.ns);
    fx.sql(&format!(
        "CREATE ROLE {maker} NOLOGIN CREATEROLE; CREATE ROLE {super_role} NOLOGIN SUPERUSER",
        maker = q(&maker),
        super_role = q(&super_role)
    ))
    .await;
    let cases: Vec<(&str, String, &str, String)> = vec![
        ("program", "pg_execute_server_program".into(), "predefined", RUN_A_PROGRAM.into()),
        ("user", bob.clone(), "managed group", format!("SET ROLE {}", q(&bob))),
        ("maker", maker.clone(), "CREATEROLE", format!("SET ROLE {}; CREATE ROLE {}", q(&maker), q(&fx.user("evil")))),
        ("super", super_role.clone(), "superuser", format!("SET ROLE {}", q(&super_role))),
    ];
    for (name, target, why, attack) in cases {
        // Directly, and two levels down.
        let direct = format!("{}_via_{name}", fx.ns);
        let deeper = format!("{}_via_via_{name}", fx.ns);
        fx.sql(&format!(
            "CREATE ROLE {direct} NOLOGIN; GRANT {target} TO {direct}; CREATE ROLE {deeper} NOLOGIN; \
             GRANT {direct} TO {deeper}",
            direct = q(&direct),
            deeper = q(&deeper),
            target = q(&target),
        ))
        .await;
        for role in [&direct, &deeper] {
            grantable(&fx, role).await;
            assert_refused(&fx, &format!("{name}-{role}"), &alice, &[role], why, &attack).await;
            let reason = refusal_reason(&fx, &alice, role).await;
            assert!(reason.contains(&format!("{target:?}")), "{reason} names {target:?}");
        }
    }
}

/// The reason `user`'s start asking for `role` is refused with.
async fn refusal_reason(fx: &Fixture, user: &str, role: &str) -> String {
    let mut event = fx.event("reason", user, &["keep"]);
    event["traits"] = json!({"internal": {"db_roles": [role]}});
    match fx.start(event).await {
        Err(Error::RefusedDbRole { reason, .. }) => reason.to_string(),
        other => panic!("{role}: {other:?}"),
    }
}

/// The one-round-trip start's own check ([`sql::db_roles_check`]), run alone as the admin: it
/// fails on what the plan refuses, and passes on what it grants.
#[tokio::test]
async fn the_one_round_trip_check_fails_on_what_the_plan_refuses() {
    use autouser_engine::sql;
    use autouser_policy::plan::RoleGuard;
    let mut fx = Fixture::new("hr_check").await;
    let heir = format!("{}_heir", fx.ns);
    fx.extra_yaml = format!("object_inheritor: {heir:?}\n");
    fx.sql(&format!("CREATE ROLE {} NOLOGIN", q(&heir))).await;
    let bob = fx.user("bob");
    fx.start(fx.event("s1", &bob, &["keep"])).await.unwrap();
    let via = format!("{}_via", fx.ns);
    fx.sql(&format!("CREATE ROLE {via} NOLOGIN; GRANT pg_execute_server_program TO {via}", via = q(&via))).await;
    let config = fx.config();
    let connection = fx.admin_client(&config, &fx.db).await.unwrap();
    let allowed = set(&["pg_read_all_data"]);
    let guard = RoleGuard {
        managed_group: &fx.group,
        object_inheritor: &config.object_inheritor,
        allowed_predefined: &allowed,
    };
    let check = |roles: &[&str]| sql::db_roles_check(&roles.iter().map(|r| r.to_string()).collect::<Vec<_>>(), guard);
    // As a DO block, and as a call of the function a connection makes of it.
    connection.client().batch_execute(&sql::make_check_functions()).await.unwrap();
    for functions in [false, true] {
        for refused in [bob.as_str(), via.as_str(), "pg_monitor", "postgres", &config.object_inheritor, &fx.group] {
            let error = connection
                .client()
                .batch_execute(&check(&[&fx.reader(), refused]).render(functions))
                .await
                .expect_err(&format!("{refused} is refused"));
            assert_eq!(
                error.code(),
                Some(&autouser_engine::tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
                "{refused} (functions: {functions}): {error:?}"
            );
        }
        let granted = [fx.reader(), fx.writer(), "pg_read_all_data".to_string(), fx.user("nobody")];
        let granted: Vec<&str> = granted.iter().map(String::as_str).collect();
        connection.client().batch_execute(&check(&granted).render(functions)).await.unwrap();
        connection.client().batch_execute(&check(&[]).render(functions)).await.unwrap();
    }
}

/// Preflight lists the policy's literal roles that a start would refuse, and why.
#[tokio::test]
async fn preflight_warns_about_the_literal_roles_a_start_refuses() {
    let fx = Fixture::new("hr_preflight").await;
    let via = format!("{}_via", fx.ns);
    let maker = format!("{}_maker", fx.ns);
    fx.sql(&format!(
        "CREATE ROLE {via} NOLOGIN; GRANT pg_execute_server_program TO {via}; CREATE ROLE {maker} NOLOGIN CREATEROLE",
        via = q(&via),
        maker = q(&maker)
    ))
    .await;
    for role in [&via, &maker] {
        grantable(&fx, role).await;
    }
    grantable(&fx, "pg_read_all_data").await;
    let reader = fx.reader();
    let mut fx = fx.with_roles(&format!(
        r#"
  - kind: role
    version: v7
    metadata: {{name: keep}}
    spec:
      options: {{create_db_user_mode: keep}}
      allow:
        db_labels: {{"*": "*"}}
        db_names: ["*"]
        db_roles: ["{reader}", "{via}", "{maker}", "pg_read_all_data", "pg_monitor"]
"#
    ));
    fx.extra_yaml = "allowed_predefined_roles: [pg_read_all_data]\n".into();
    let report = crate::preflight::preflight(&fx).await;
    let finding = |role: &str| crate::preflight::finding(&report, &format!("db_role:{role}")).clone();
    use autouser_engine::preflight::Status;
    for (role, why) in [
        (via.as_str(), "member of \"pg_execute_server_program\""),
        (maker.as_str(), "WITH CREATEROLE"),
        ("pg_monitor", "allowed_predefined_roles"),
    ] {
        let found = finding(role);
        assert_eq!(found.status, Status::Warn, "{found:?}");
        assert!(found.detail.contains("never grants") && found.detail.contains(why), "{found:?}");
    }
    assert_eq!(finding(&fx.reader()).status, Status::Pass, "{}", report.to_text());
    assert_eq!(finding("pg_read_all_data").status, Status::Pass, "{}", report.to_text());
}
