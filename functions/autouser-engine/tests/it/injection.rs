//! Hostile values in user names, role names and traits: they stay data, never SQL.

use serde_json::json;

use crate::fixture::{q, set, Fixture};

const HOSTILE: &[&str] = &[
    "o'brien",
    "\"; DROP ROLE postgres; --",
    "a;b",
    "back\\slash",
    "$$dollar$$",
    "ünïcødé 用户",
    "x') OR 1=1 --",
    "E'\\x41'",
];

#[tokio::test]
async fn hostile_user_names_become_exactly_those_roles() {
    let fx = Fixture::new("ij_users").await;
    for (i, name) in HOSTILE.iter().enumerate() {
        let user = format!("iju_{name}");
        let session = format!("s{i}");
        let out = fx.start(fx.event(&session, &user, &["keep"])).await.unwrap();
        assert_eq!(out.db_user, user);
        let state = fx.state(&user).await.unwrap_or_else(|| panic!("role {user:?} exists"));
        assert!(state.login);
        assert_eq!(state.member_of, set(&[&fx.group, &fx.reader()]));
        fx.end(fx.event(&session, &user, &["keep"])).await.unwrap();
        assert!(!fx.state(&user).await.unwrap().login);
    }
    // The superuser is still there and still a superuser.
    let row = fx.superuser.query_one("SELECT rolsuper FROM pg_roles WHERE rolname = 'postgres'", &[]).await.unwrap();
    assert!(row.get::<_, bool>(0));
}

#[tokio::test]
async fn hostile_role_names_from_traits_are_granted_literally_or_refused() {
    let fx = Fixture::new("ij_roles").await;
    for (i, name) in HOSTILE.iter().enumerate() {
        let role = format!("ijr_{name}");
        fx.sql(&format!("CREATE ROLE {}", q(&role))).await;
        fx.give_admin_option(&role).await;
        let user = fx.user(&format!("u{i}"));
        let mut event = fx.event(&format!("s{i}"), &user, &["keep"]);
        event["traits"] = json!({"internal": {"db_roles": [role]}});
        fx.start(event).await.unwrap();
        assert_eq!(fx.state(&user).await.unwrap().member_of, set(&[&fx.group, &fx.reader(), &role]));
    }
    // A trait naming a role that does not exist, shaped as an injection, is just unknown.
    let user = fx.user("evil");
    let mut event = fx.event("evil", &user, &["keep"]);
    event["traits"] = json!({"internal": {"db_roles": [format!("{}\" TO PUBLIC; --", fx.reader())]}});
    let err = fx.start(event).await.unwrap_err();
    assert_eq!(err.kind(), "UnknownDbRole", "{err}");
    assert!(fx.state(&user).await.is_none());
}

#[tokio::test]
async fn templates_and_globs_inside_trait_values_stay_literal() {
    let fx = Fixture::new("ij_tmpl").await;
    let user = fx.user("alice");
    let mut event = fx.event("s1", &user, &["keep"]);
    event["traits"] = json!({"internal": {"db_roles": ["*", "{{internal.db_roles}}"]}});
    let err = fx.start(event).await.unwrap_err();
    assert_eq!(err.kind(), "UnknownDbRole", "{err}");
    assert!(fx.state(&user).await.is_none());
}

#[tokio::test]
async fn sixty_four_byte_trait_values_are_refused() {
    let fx = Fixture::new("ij_long").await;
    let user = fx.user("alice");
    let mut event = fx.event("s1", &user, &["keep"]);
    event["traits"] = json!({"internal": {"db_roles": ["r".repeat(64)]}});
    let err = fx.start(event).await.unwrap_err();
    assert_eq!(err.kind(), "PolicyDenied", "{err}");
    assert!(fx.state(&user).await.is_none());
}
