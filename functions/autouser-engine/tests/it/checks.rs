//! The checks a transaction runs (the user is new, the roles it grants are allowed, the
//! session has not ended, the ledger is unchanged, the user's lock) are functions in the admin
//! connection's temporary schema, made in its first call and called from then on: a `DO`
//! block's queries are planned at every run, a function's once per connection. Where they
//! cannot be made, or are gone, the same checks run as `DO` blocks, and no call fails.

use crate::fixture::{cluster, connect, function_calls, q, Fixture};

/// A connection's first call makes the check functions; its later starts and ends call them.
/// They live in the connection's temporary schema, which no other session can reach.
#[tokio::test]
async fn a_connection_makes_its_checks_once_and_calls_them() {
    let fx = Fixture::new("ck_made").await;
    let config = fx.config();
    fx.sql(&format!("ALTER ROLE {} SET track_functions = 'pl'", q(&fx.admin))).await;
    let in_db = connect(cluster().superuser(), &fx.db).await.unwrap();
    let connection = fx.admin_client(&config, &fx.db).await.unwrap();
    let (alice, bob) = (fx.user("alice"), fx.user("bob"));
    fx.start_on(&connection, fx.event("s1", &alice, &["keep"])).await.unwrap();
    fx.end_on(&connection, fx.event("s1", &alice, &["keep"])).await.unwrap();
    let schemas: Vec<String> = in_db
        .query(
            "SELECT DISTINCT pronamespace::regnamespace::text FROM pg_proc WHERE proname LIKE 'autouser\\_%\\_v1'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(schemas.len(), 1, "{schemas:?}");
    assert!(schemas[0].starts_with("pg_temp_"), "{schemas:?}");

    // A new user's start (one round trip): the new-user check, the lock and the roles check.
    fx.start_on(&connection, fx.event("s2", &bob, &["keep"])).await.unwrap();
    for name in ["autouser_new_user_check_v1", "autouser_lock_user_v1", "autouser_db_roles_check_v1"] {
        assert!(function_calls(&in_db, &connection, name, 0).await > 0, "{name} was called");
    }
    // A kept user's start and an end: the ledger's guard.
    fx.start_on(&connection, fx.event("s3", &alice, &["keep"])).await.unwrap();
    fx.end_on(&connection, fx.event("s3", &alice, &["keep"])).await.unwrap();
    assert!(function_calls(&in_db, &connection, "autouser_guard_v1", 1).await > 1, "the guard was called");
    assert!(connect(&bob, &fx.db).await.is_ok(), "bob logs in");
    assert!(connect(&alice, &fx.db).await.is_err(), "alice is locked");

    // Nobody else reaches them: not the user, which names the admin's temporary schema.
    let other = connect(&bob, &fx.db).await.unwrap();
    let call = format!("SELECT {}.autouser_guard_v1('x', NULL)", schemas[0]);
    assert!(other.simple_query(&call).await.is_err(), "another session cannot call them");
}

/// Checks gone from the server session (`DISCARD TEMP`, or a pooler in transaction mode): a
/// new user's one-round-trip start that calls one fails whole and takes the read path, whose
/// `READ_STATE` says they are gone, so its checks run as `DO` blocks; the next call makes them
/// again. Without `TEMP` on the database they are never made. No call fails either way.
#[tokio::test]
async fn checks_gone_or_never_made_run_as_do_blocks_and_no_call_fails() {
    let mut fx = Fixture::new("ck_gone").await;
    fx.default_database = Some(fx.db.clone());
    let config = fx.config();
    let connection = fx.admin_client(&config, &fx.db).await.unwrap();
    let (alice, bob, carol) = (fx.user("alice"), fx.user("bob"), fx.user("carol"));
    fx.start_on(&connection, fx.event("s1", &alice, &["keep"])).await.unwrap();
    connection.simple_query("DISCARD TEMP").await.unwrap();
    let started = fx.start_on(&connection, fx.event("s2", &bob, &["keep"])).await.expect("a new user's start");
    assert!(started.created_user);
    fx.end_on(&connection, fx.event("s1", &alice, &["keep"])).await.expect("an end");
    fx.start_on(&connection, fx.event("s3", &alice, &["keep"])).await.expect("a kept user's start");
    let made = connection
        .simple_query("SELECT 1 FROM pg_catalog.pg_proc WHERE proname = 'autouser_guard_v1'")
        .await
        .unwrap()
        .iter()
        .filter(|message| matches!(message, autouser_engine::tokio_postgres::SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(made, 1, "made again");

    fx.sql(&format!("REVOKE TEMP ON DATABASE {} FROM PUBLIC", q(&fx.db))).await;
    let connection = fx.admin_client(&config, &fx.db).await.unwrap();
    fx.start_on(&connection, fx.event("s4", &carol, &["keep"])).await.expect("a start without TEMP");
    fx.end_on(&connection, fx.event("s4", &carol, &["keep"])).await.expect("an end without TEMP");
    fx.start_on(&connection, fx.event("s5", &carol, &["keep"])).await.expect("a kept user's start without TEMP");
    assert!(connect(&carol, &fx.db).await.is_ok(), "carol logs in");
}
