//! The reaper function over the handler's databases: `main` is reaped, `down` cannot be
//! reached. Sessions are started through the session-start handler; audit events go to
//! moto's EventBridge.

use std::time::{SystemTime, UNIX_EPOCH};

use autouser_lambda::audit::Auditor;
use autouser_lambda::reaper::Reaper;
use autouser_lambda::Function;
use scratch_aws::Moto;
use serde_json::json;

use crate::audit::{bus_into_queue, drain};
use crate::{can_login, cluster, config_yaml, connect_as, invoke, no_aws, parse_config, session, state_of, superuser};

const THIRTEEN_HOURS: u64 = 13 * 3600;

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test]
async fn the_reaper_closes_lost_sessions_locks_idle_users_and_audits_both() {
    let queue = bus_into_queue("reaper-audit").await;
    let yaml = config_yaml("lp").await;
    let state = state_of(&yaml);
    let sdk = Moto::global().sdk_config(None).await;
    let auditor = Auditor::to_bus(&sdk, "reaper-audit".into(), "reaper-audit.audit".into());
    let reaper = Reaper::new(parse_config(&yaml), no_aws(), auditor);

    // alice's session-end is lost; bob's too, but bob is still connected.
    for user in ["alice", "bob"] {
        let started = invoke(&state, Function::SessionStart, session("lp", "s1", user)).await.unwrap();
        assert_eq!(started["status"], "active");
    }
    let bob = connect_as("lp_bob").await.expect("bob logs in");
    // carol: ours and able to log in with no open session (ended, then `ALTER ROLE … LOGIN`);
    // mallory: not in the group; erin: in the group and able to log in, but with no ledger of
    // ours (Teleport itself provisioned it).
    assert_eq!(invoke(&state, Function::SessionStart, session("lp", "s0", "carol")).await.unwrap()["status"], "active");
    assert_eq!(
        invoke(&state, Function::SessionEnd, session("lp", "s0", "carol")).await.unwrap()["status"],
        "deactivated"
    );
    superuser()
        .await
        .batch_execute(
            "ALTER ROLE lp_carol LOGIN; CREATE ROLE lp_mallory LOGIN;
             SET ROLE lp_admin; CREATE ROLE lp_erin LOGIN IN ROLE lp_grp; RESET ROLE",
        )
        .await
        .unwrap();

    let summary = reaper.run_at(now() + THIRTEEN_HOURS).await.expect("main was reaped");
    assert_eq!(
        (&summary["closed"], &summary["locked"], &summary["left_open"], &summary["failed"]),
        (&json!(1), &json!(1), &json!(1), &json!(1)),
        "{summary:#}"
    );
    let main = &summary["databases"][0];
    assert_eq!(main["database"], "main");
    assert_eq!(main["closed"][0]["db_user"], "lp_alice");
    assert_eq!(main["closed"][0]["status"], "deactivated");
    assert_eq!(main["locked"], json!(["lp_carol"]));
    assert_eq!(main["left_open"][0]["db_user"], "lp_bob");
    assert_eq!((&main["unowned_logins"], &summary["unowned_logins"]), (&json!(["lp_erin"]), &json!(1)));
    let down = &summary["databases"][1];
    assert_eq!((&down["database"], &down["kind"]), (&json!("down"), &json!("DatabaseUnreachable")), "{down}");

    assert_eq!(can_login("lp_alice").await, Some(false));
    assert_eq!(can_login("lp_carol").await, Some(false));
    assert_eq!(can_login("lp_bob").await, Some(true), "a connected user's session stays open");
    assert_eq!(can_login("lp_mallory").await, Some(true), "a role that is not ours is untouched");
    assert_eq!(can_login("lp_erin").await, Some(true), "a group member whose ledger is not ours is untouched");

    let events = drain(&queue).await;
    let audited: Vec<(&str, &str)> =
        events.iter().map(|e| (e["detail-type"].as_str().unwrap(), e["detail"]["db_user"].as_str().unwrap())).collect();
    assert_eq!(audited, [("Database User Deactivated", "lp_alice"), ("Database User Deactivated", "lp_carol")]);
    assert!(events.iter().all(|e| e["detail"]["function"] == "reaper"), "{events:#?}");
    assert_eq!(events[0]["detail"]["session_id"], "s1");
    assert_eq!(events[0]["detail"]["mode"], "keep");
    assert!(events[0]["detail"]["reason"].as_str().unwrap().contains("max_session_duration"), "{events:#?}");

    // Once bob has gone, the next run closes his session, and a run after that finds nothing.
    drop(bob);
    let mut summary = json!(null);
    for _ in 0..100 {
        summary = reaper.run_at(now() + THIRTEEN_HOURS).await.unwrap();
        if summary["closed"] == 1 {
            break;
        }
        // The backend of a closed client leaves pg_stat_activity a moment later.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(summary["databases"][0]["closed"][0]["db_user"], "lp_bob", "{summary:#}");
    assert_eq!(can_login("lp_bob").await, Some(false));
    let again = reaper.run_at(now() + THIRTEEN_HOURS).await.unwrap();
    assert_eq!((&again["closed"], &again["locked"], &again["failed"]), (&json!(0), &json!(0), &json!(1)), "{again:#}");
}

/// No database reached: the invocation fails, so that the Errors alarm and the retries see it.
#[tokio::test]
async fn a_run_that_reaches_no_database_fails() {
    let mut config = parse_config(&config_yaml("lq").await);
    config.databases.retain(|db| db.name == "down");
    let reaper = Reaper::new(config, no_aws(), Auditor::log_only());
    let error = reaper.run_at(now()).await.unwrap_err();
    assert_eq!(error.kind, "DependencyUnavailable");
    assert!(error.message.contains("no database could be reaped: down:"), "{}", error.message);
}

/// A database that hangs (it accepts the connection and never answers) holds one of the run's
/// slots until the connect timeout, not the whole run: the databases after it are reaped
/// meanwhile. The hanging server lets go as soon as it sees all of them reached; if they
/// waited for it instead, it would hold on until the reaper's connect timeout gave up.
#[tokio::test]
async fn a_hanging_database_does_not_hold_up_the_others() {
    use std::io::Read;
    use std::sync::Arc;

    let upstream = std::net::SocketAddr::from(([127, 0, 0, 1], cluster().port()));
    let proxies: Arc<Vec<scratch_postgres::RoundTripCounter>> =
        Arc::new((0..3).map(|_| scratch_postgres::RoundTripCounter::start(upstream).unwrap()).collect());
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let hanging = std::thread::spawn({
        let proxies = proxies.clone();
        move || {
            let (mut stream, _) = silent.accept().unwrap();
            stream.set_read_timeout(Some(std::time::Duration::from_millis(20))).unwrap();
            let mut buffer = [0u8; 512];
            loop {
                if proxies.iter().all(|proxy| proxy.round_trips() > 0) {
                    return "let go once the others were reached";
                }
                if matches!(stream.read(&mut buffer), Ok(0)) {
                    return "held until the reaper gave up on it";
                }
            }
        }
    });

    let admin = "lh_admin";
    let mut entries = scratch_login::database_yaml(cluster(), silent_port, "hanging", admin).unwrap();
    for (n, proxy) in proxies.iter().enumerate() {
        entries.push_str(&scratch_login::database_yaml(cluster(), proxy.port(), &format!("via_{n}"), admin).unwrap());
    }
    let yaml = config_yaml("lh").await.replacen("databases:\n", &format!("databases:\n{entries}"), 1);
    let reaper = Reaper::new(parse_config(&yaml), no_aws(), Auditor::log_only()).with_concurrency(2);
    let summary = reaper.run_at(now()).await.unwrap();

    assert_eq!(hanging.join().unwrap(), "let go once the others were reached");
    let databases: Vec<&str> =
        summary["databases"].as_array().unwrap().iter().map(|db| db["database"].as_str().unwrap()).collect();
    assert_eq!(databases, ["hanging", "via_0", "via_1", "via_2", "main", "down"], "in the config's order");
    assert_eq!(summary["databases"][0]["kind"], "DatabaseUnreachable", "{summary:#}");
    for reached in &summary["databases"].as_array().unwrap()[1..5] {
        assert!(reached["managed_users"].is_number(), "{reached}");
    }
}

/// An invocation whose deadline has come starts no database: each is deferred to the next
/// run, which is no failure of this one.
#[tokio::test]
async fn a_run_out_of_time_defers_its_databases_without_failing() {
    let yaml = config_yaml("lz").await;
    let state = state_of(&yaml);
    invoke(&state, Function::SessionStart, session("lz", "s1", "alice")).await.unwrap();
    let reaper = Reaper::new(parse_config(&yaml), no_aws(), Auditor::log_only());

    let mut context = lambda_runtime::Context::default();
    context.deadline = now() * 1000;
    let summary = reaper.handle(lambda_runtime::LambdaEvent::new(json!({}), context)).await.unwrap();
    assert_eq!((&summary["closed"], &summary["deferred_databases"]), (&json!(0), &json!(2)), "{summary:#}");
    assert_eq!(summary["databases"][0], json!({"database": "main", "deferred": true}));
    assert_eq!(can_login("lz_alice").await, Some(true), "nothing was done");

    let summary = reaper.run_at(now() + THIRTEEN_HOURS).await.unwrap();
    assert_eq!((&summary["closed"], &summary["deferred_databases"]), (&json!(1), &json!(0)), "{summary:#}");
    assert_eq!(can_login("lz_alice").await, Some(false));
}
