//! Preflight: checks, as the admin, what the first session-start would otherwise find out
//! the hard way, each with the exact SQL (or AWS step) that fixes it.
//!
//! [`read_facts`] asks the server in a few catalog queries; [`evaluate`] turns the facts into
//! findings without I/O; [`connection_failure`] turns a failed login into a finding;
//! [`bootstrap`] creates the managed group, and the object inheritor when the policy hands
//! objects to it, when they are missing.

use std::collections::BTreeSet;

use serde::Serialize;
use tokio_postgres::Client;

use crate::sql::{self, quote_ident};
use crate::Error;
use autouser_policy::config::{Config, DatabaseType, ResolvedDatabase, RDS_IAM_ROLE};
use autouser_policy::plan::{self, ReachedRole, RoleGuard, Step};
use autouser_policy::refusal::Refusal;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    /// Something a session would need is missing: sessions will fail until it is fixed.
    Fail,
    /// Worth a look, but sessions can work.
    Warn,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable name of the check, e.g. `createrole`, `admin_option:reader`.
    pub check: String,
    pub status: Status,
    pub detail: String,
    /// What to run (SQL as a superuser, the RDS master user, or an AWS step).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    fn pass(check: impl Into<String>, detail: impl Into<String>) -> Finding {
        Finding { check: check.into(), status: Status::Pass, detail: detail.into(), fix: None }
    }
    fn fail(check: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding { check: check.into(), status: Status::Fail, detail: detail.into(), fix: Some(fix.into()) }
    }
    fn warn(check: impl Into<String>, detail: impl Into<String>, fix: Option<String>) -> Finding {
        Finding { check: check.into(), status: Status::Warn, detail: detail.into(), fix }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub database: String,
    pub endpoint: String,
    pub admin: String,
    /// Whether every check passed (warnings allowed).
    pub ready: bool,
    pub findings: Vec<Finding>,
}

/// The check of a read replica's entry on the replica: the admin logs in there (its role
/// replicated from the writer), and the endpoint is a standby in recovery, replaying.
pub async fn check_replica(replica: Result<&Client, &Error>, db: &ResolvedDatabase) -> Finding {
    let endpoint = db.endpoint();
    let client = match replica {
        Ok(client) => client,
        Err(error) => {
            return Finding::fail(
                "replica",
                format!("the admin cannot log in to the read replica {endpoint}: {error}"),
                "the admin's role and credentials replicate from the writer: fix the login there (see the \
                 writer's checks), and check the replica's pg_hba.conf",
            );
        }
    };
    let row = client
        .query_one(
            "SELECT pg_catalog.pg_is_in_recovery() AS in_recovery,
                    CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_is_wal_replay_paused()
                         ELSE false END AS paused",
            &[],
        )
        .await;
    match row {
        Err(error) => Finding::fail("replica", format!("reading the replica {endpoint}: {error}"), "retry"),
        Ok(row) if !row.get::<_, bool>("in_recovery") => Finding::fail(
            "replica",
            format!("{endpoint} is not in recovery: it does not receive the writer's changes"),
            "point uri at a standby of the writer, or remove primary: if this endpoint is now the writer",
        ),
        Ok(row) if row.get::<_, bool>("paused") => Finding {
            check: "replica".into(),
            status: Status::Warn,
            detail: format!(
                "{endpoint} is a standby, but its replay is paused: starts answer ReplicaBehind until it resumes"
            ),
            fix: Some("SELECT pg_wal_replay_resume() on the replica".into()),
        },
        Ok(_) => Finding::pass(
            "replica",
            format!("{endpoint} is a standby in recovery: sessions log in there, the admin's changes are made on the writer"),
        ),
    }
}

impl Report {
    pub fn new(db: &ResolvedDatabase, findings: Vec<Finding>) -> Report {
        Report {
            database: db.name.clone(),
            endpoint: db.endpoint(),
            admin: db.admin_user.name.clone(),
            ready: findings.iter().all(|f| f.status != Status::Fail),
            findings,
        }
    }

    /// The report of an admin that could not log in.
    pub fn login_failed(db: &ResolvedDatabase, error: &Error) -> Report {
        Report::new(db, vec![connection_failure(error)])
    }

    /// The report of a read replica's entry: the writer's checks (`writer`, the report on the
    /// writer), then `replicas`, the findings on each replica the sessions may log in to
    /// ([`check_replica`]). Named after the entry, at both endpoints.
    pub fn of_replica(db: &ResolvedDatabase, writer: Report, replicas: Vec<Finding>) -> Report {
        let mut findings = writer.findings;
        findings.extend(replicas);
        let mut report = Report::new(db, findings);
        report.endpoint = format!("{} (sessions), writer {}", db.endpoint(), writer.endpoint);
        report
    }

    /// For people: one line per check, fixes indented below failures and warnings.
    pub fn to_text(&self) -> String {
        let mut text = format!(
            "database {} ({}) as admin {}: {}\n",
            self.database,
            self.endpoint,
            self.admin,
            if self.ready { "ready" } else { "NEEDS ATTENTION" }
        );
        for finding in &self.findings {
            let mark = match finding.status {
                Status::Pass => "ok  ",
                Status::Fail => "FAIL",
                Status::Warn => "warn",
            };
            text.push_str(&format!("  {mark} {}: {}\n", finding.check, finding.detail));
            if let Some(fix) = &finding.fix {
                text.push_str(&format!("       fix: {fix}\n"));
            }
        }
        text
    }
}

/// The database the admin logs in to for checks: its default database, or `postgres`.
pub fn admin_database(db: &ResolvedDatabase) -> &str {
    db.admin_user.default_database.as_deref().unwrap_or("postgres")
}

/// Reads the facts and evaluates them; the facts are returned for [`bootstrap`].
pub async fn check(client: &Client, config: &Config, db: &ResolvedDatabase) -> Result<(Report, ServerFacts), Error> {
    let facts = read_facts(client, config, &roles_to_check(config, db)).await?;
    Ok((Report::new(db, evaluate(config, db, &facts)), facts))
}

/// What the server says about the admin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminFacts {
    pub admin: String,
    pub server_version_num: i32,
    pub superuser: bool,
    pub createrole: bool,
    /// The admin inherits the privileges of the roles it is a member of (`rolinherit`).
    pub inherit: bool,
    pub read_only: bool,
    pub in_recovery: bool,
    /// The database preflight is connected to.
    pub database: String,
    /// The admin has the privileges of `pg_signal_backend` (`pg_has_role(…, 'USAGE')`), which
    /// ending a user's connections needs: a start or end that the user holds up with a lock,
    /// and `terminate_connections`.
    pub signal_backend: bool,
}

/// What the server says about one role the admin must manage or grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleFacts {
    pub name: String,
    pub exists: bool,
    pub superuser: bool,
    /// The admin holds it WITH ADMIN OPTION (or is a superuser).
    pub admin_option: bool,
    /// The admin has its privileges (`pg_has_role(…, 'USAGE')`), as `REASSIGN OWNED` to it
    /// needs.
    pub admin_has_privileges: bool,
}

/// The default concurrency limit (reserved concurrency) of each session function,
/// session-start and session-end: `SessionFunctionConcurrency` in template.yaml,
/// `sessionFunctionConcurrency` in the CDK construct. A warm container holds one admin
/// connection per database it served, so this bounds the connections a burst takes.
pub const SESSION_FUNCTION_CONCURRENCY: i32 = 20;

/// Admin connections besides the session functions' that preflight's `connection_limit`
/// leaves room for: the reaper's, discovery's and an operator's `autouser` CLI.
pub const OTHER_ADMIN_CONNECTIONS: i32 = 4;

/// The server's connection slots and the admin's limit ([`sql::CONNECTION_BUDGET`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionFacts {
    /// The admin's `CONNECTION LIMIT` (`rolconnlimit`); -1: none.
    pub admin_limit: i32,
    pub max_connections: i32,
    pub superuser_reserved: i32,
    /// `reserved_connections` (PostgreSQL 16+; 0 before).
    pub reserved: i32,
}

impl ConnectionFacts {
    /// The slots roles other than superusers (and, on 16+, `pg_use_reserved_connections`) may
    /// use: the applications' and the admin's.
    pub fn open_slots(&self) -> i32 {
        (self.max_connections - self.superuser_reserved - self.reserved).max(0)
    }

    /// The most preflight lets the admin take: a quarter of the open slots (at least one).
    pub fn admin_share(&self) -> i32 {
        (self.open_slots() / 4).max(1)
    }

    /// The admin's connections at the session functions' default concurrency: one per warm
    /// container of session-start and of session-end, and the others'.
    pub fn wanted() -> i32 {
        2 * SESSION_FUNCTION_CONCURRENCY + OTHER_ADMIN_CONNECTIONS
    }

    /// The `CONNECTION LIMIT` preflight recommends: [`ConnectionFacts::wanted`], but no more
    /// than [`ConnectionFacts::admin_share`].
    pub fn recommended_limit(&self) -> i32 {
        ConnectionFacts::wanted().min(self.admin_share())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFacts {
    pub admin: AdminFacts,
    /// The admin's `CONNECTION LIMIT` and the server's slots.
    pub connections: ConnectionFacts,
    pub roles: Vec<RoleFacts>,
    /// Login roles outside the managed group (not superusers, not the admin, not built-in),
    /// the first few by name, and how many there are.
    pub unmanaged_logins: Vec<String>,
    pub unmanaged_login_count: i64,
    /// With `creator_roles` on PostgreSQL 16+ and an admin that is not a superuser: the roles
    /// each creator must hold WITH ADMIN OPTION (those of the check that the creators grant),
    /// the creators that exist and are not ready (not settable by the admin, lacking one of
    /// them, or without their function where it can be made), and those that do not exist yet
    /// (the first session of each makes it; bootstrap makes them all).
    pub creator_roles_held: Vec<String>,
    pub creators_not_ready: Vec<String>,
    pub creators_missing: Vec<String>,
    /// The owner of the schema that keeps the creators' functions (named as the managed
    /// group; `None`: there is none), and whether the admin can make the functions there
    /// (`sql::Renderer`).
    pub functions_schema_owner: Option<String>,
    pub creator_functions_makeable: bool,
    /// What the checked roles reach through membership, as a start reads it
    /// ([`sql::REACHED_ROLES`]): a start refuses the roles [`plan::db_role_refusal`] names.
    pub reached_roles: BTreeSet<ReachedRole>,
}

impl ServerFacts {
    fn role(&self, name: &str) -> Option<&RoleFacts> {
        self.roles.iter().find(|r| r.name == name)
    }
}

const ADMIN_FACTS: &str = "\
SELECT current_user::text,
       pg_catalog.current_setting('server_version_num')::int,
       r.rolsuper, r.rolcreaterole, r.rolinherit,
       pg_catalog.current_setting('transaction_read_only') = 'on',
       pg_catalog.pg_is_in_recovery(),
       pg_catalog.current_database()::text,
       pg_catalog.pg_has_role(current_user, 'pg_signal_backend'::name, 'USAGE')
  FROM pg_catalog.pg_roles r WHERE r.rolname = current_user";

/// `$1`: role names. One row per name, whether the role exists or not.
const ROLE_FACTS: &str = "\
SELECT n.name, r.oid IS NOT NULL, COALESCE(r.rolsuper, false),
       r.oid IS NOT NULL AND pg_catalog.pg_has_role(current_user, r.oid, 'MEMBER WITH ADMIN OPTION'),
       r.oid IS NOT NULL AND pg_catalog.pg_has_role(current_user, r.oid, 'USAGE')
  FROM pg_catalog.unnest($1::text[]) AS n(name)
  LEFT JOIN pg_catalog.pg_roles r ON r.rolname = n.name
 ORDER BY n.name";

/// `$1`: the managed group. Login roles a person's session would collide with: not in the
/// group, not superusers, not the admin, not built-in (`pg_*`, `rds*`).
const UNMANAGED_LOGINS: &str = "\
WITH unmanaged AS (
  SELECT r.rolname FROM pg_catalog.pg_roles r
   WHERE r.rolcanlogin AND NOT r.rolsuper AND r.rolname <> current_user
     AND r.rolname::pg_catalog.text !~ '^(pg_|rds)'::pg_catalog.text
     AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m
                       JOIN pg_catalog.pg_roles g ON g.oid = m.roleid
                      WHERE m.member = r.oid AND g.rolname = $1::text))
SELECT ARRAY(SELECT rolname::text FROM unmanaged ORDER BY 1 LIMIT 10), (SELECT count(*) FROM unmanaged)";

/// The roles preflight asks about on `db`: the managed group, `rds_iam` on RDS, every literal
/// role the policy could grant, and the object inheritor when the policy hands objects to it.
pub fn roles_to_check(config: &Config, db: &ResolvedDatabase) -> BTreeSet<String> {
    let mut roles = config.policy.grantable_roles(&db.labels).literal;
    roles.insert(config.managed_group.clone());
    if config.policy.reassigns_objects(&db.labels) {
        roles.insert(config.object_inheritor.clone());
    }
    if db.db_type == DatabaseType::Rds {
        roles.insert(RDS_IAM_ROLE.to_string());
    }
    roles
}

pub async fn read_facts(client: &Client, config: &Config, roles: &BTreeSet<String>) -> Result<ServerFacts, Error> {
    let failed = |source| Error::Postgres { action: "preflight".into(), endpoint: String::new(), source };
    let row = client.query_one(ADMIN_FACTS, &[]).await.map_err(failed)?;
    let admin = AdminFacts {
        admin: row.get(0),
        server_version_num: row.get(1),
        superuser: row.get(2),
        createrole: row.get(3),
        inherit: row.get(4),
        read_only: row.get(5),
        in_recovery: row.get(6),
        database: row.get(7),
        signal_backend: row.get(8),
    };
    let row = client.query_one(sql::CONNECTION_BUDGET, &[]).await.map_err(failed)?;
    let connections = ConnectionFacts {
        admin_limit: row.get("admin_limit"),
        max_connections: row.get("max_connections"),
        superuser_reserved: row.get("superuser_reserved"),
        reserved: row.get("reserved"),
    };
    let names: Vec<&str> = roles.iter().map(String::as_str).collect();
    let roles = client
        .query(ROLE_FACTS, &[&names])
        .await
        .map_err(failed)?
        .iter()
        .map(|row| RoleFacts {
            name: row.get(0),
            exists: row.get(1),
            superuser: row.get(2),
            admin_option: row.get(3),
            admin_has_privileges: row.get(4),
        })
        .collect();
    let row = client.query_one(UNMANAGED_LOGINS, &[&config.managed_group]).await.map_err(failed)?;
    let reached_roles: BTreeSet<ReachedRole> = client
        .query(sql::REACHED_ROLES, &[&names, &config.managed_group])
        .await
        .map_err(failed)?
        .iter()
        .map(|row| ReachedRole { wanted: row.get(0), role: row.get(1), facts: sql::role_facts(row.get(2)) })
        .collect();
    let uses_creators = config.creator_roles > 0 && admin.server_version_num >= 160000 && !admin.superuser;
    // The managed group and what sessions may be granted: not the object inheritor (the
    // admin's, it takes its privileges), nor a role a start refuses, which nobody grants.
    let creator_roles_held: Vec<String> = if uses_creators {
        names
            .iter()
            .filter(|r| {
                **r == config.managed_group || plan::db_role_refusal(role_guard(config), r, &reached_roles).is_none()
            })
            .map(|r| r.to_string())
            .collect()
    } else {
        Vec::new()
    };
    let (creators_not_ready, creators_missing, functions_schema_owner, creator_functions_makeable) = if uses_creators {
        let creators = config.creator_role_names();
        let row = client
            .query_one(sql::CREATORS_NOT_READY, &[&creators, &creator_roles_held, &config.managed_group])
            .await
            .map_err(failed)?;
        (row.get("not_ready"), row.get("missing"), row.get("schema_owner"), row.get("functions_makeable"))
    } else {
        (Vec::new(), Vec::new(), None, true)
    };
    Ok(ServerFacts {
        reached_roles,
        admin,
        connections,
        roles,
        unmanaged_logins: row.get(0),
        unmanaged_login_count: row.get(1),
        creator_roles_held,
        creators_not_ready,
        creators_missing,
        functions_schema_owner,
        creator_functions_makeable,
    })
}

/// What a start checks wanted roles against, besides the catalog ([`plan::db_role_refusal`]).
fn role_guard(config: &Config) -> RoleGuard<'_> {
    RoleGuard {
        managed_group: &config.managed_group,
        object_inheritor: &config.object_inheritor,
        allowed_predefined: &config.allowed_predefined_roles,
    }
}

/// The findings for `db` given what the server said. Pure.
pub fn evaluate(config: &Config, db: &ResolvedDatabase, facts: &ServerFacts) -> Vec<Finding> {
    let admin = &facts.admin.admin;
    let admin_sql = quote_ident(admin);
    let needs_admin_option = facts.admin.server_version_num >= 160000 && !facts.admin.superuser;
    let grant_with_admin = |role: &str| format!("GRANT {} TO {admin_sql} WITH ADMIN OPTION;", quote_ident(role));
    let mut findings = vec![Finding::pass("login", format!("admin {admin:?} logged in"))];

    if facts.admin.read_only || facts.admin.in_recovery {
        let what = if facts.admin.in_recovery { "a standby (in recovery)" } else { "read-only" };
        findings.push(Finding::fail(
            "writable",
            format!("{} is {what}: sessions cannot create or change users there", db.endpoint()),
            "point the config at the primary (for Aurora, the cluster's writer endpoint)",
        ));
    } else {
        findings.push(Finding::pass("writable", "the endpoint takes writes"));
    }

    if facts.admin.superuser || facts.admin.createrole {
        findings.push(Finding::pass("createrole", "the admin can create roles"));
    } else {
        findings.push(Finding::fail(
            "createrole",
            format!("admin {admin:?} cannot create roles"),
            format!("ALTER ROLE {admin_sql} CREATEROLE;"),
        ));
    }

    // A warning: sessions work, but a user can then hold up its own start or end. Bootstrap
    // cannot fix it (the admin cannot grant itself a predefined role).
    if facts.admin.superuser || facts.admin.signal_backend {
        findings.push(Finding::pass("signal_backend", "the admin can end a managed user's connections"));
    } else {
        findings.push(Finding::warn(
            "signal_backend",
            format!(
                "admin {admin:?} lacks the privileges of pg_signal_backend, so it cannot end a user's connections: \
                 a start or end that the user holds up with a lock (an open transaction on its own role) fails, \
                 and terminate_connections leaves ended users connected"
            ),
            Some(format!("GRANT pg_signal_backend TO {admin_sql};")),
        ));
    }

    findings.push(connection_limit_finding(facts));

    if db.db_type == DatabaseType::Rds {
        match facts.role(RDS_IAM_ROLE) {
            Some(rds_iam) if !rds_iam.exists => findings.push(Finding::fail(
                "rds_iam",
                "role rds_iam does not exist: this is not an RDS or Aurora PostgreSQL server",
                "set `type: self-hosted` for this database",
            )),
            Some(rds_iam) if !rds_iam.admin_option && needs_admin_option => findings.push(Finding::fail(
                "rds_iam",
                format!("admin {admin:?} does not hold rds_iam WITH ADMIN OPTION, so it cannot grant it to users"),
                grant_with_admin(RDS_IAM_ROLE),
            )),
            Some(rds_iam) if !rds_iam.admin_option => findings.push(Finding::warn(
                "rds_iam",
                format!(
                    "admin {admin:?} does not hold rds_iam WITH ADMIN OPTION: CREATEROLE suffices before \
                     PostgreSQL 16, but sessions will fail after an upgrade to 16 or later"
                ),
                Some(grant_with_admin(RDS_IAM_ROLE)),
            )),
            _ => findings.push(Finding::pass("rds_iam", "the admin holds rds_iam WITH ADMIN OPTION")),
        }
    }

    let group = &config.managed_group;
    match facts.role(group) {
        Some(facts_of) if facts_of.exists && needs_admin_option && !facts_of.admin_option => {
            findings.push(Finding::fail(
                "managed_group",
                format!("admin {admin:?} lacks ADMIN OPTION on the managed group {group:?} (PostgreSQL 16+)"),
                grant_with_admin(group),
            ))
        }
        Some(facts_of) if facts_of.exists => {
            findings.push(Finding::pass("managed_group", format!("{group:?} exists and the admin can grant it")))
        }
        _ if facts.admin.superuser || facts.admin.createrole => findings.push(Finding::pass(
            "managed_group",
            format!("{group:?} does not exist yet; the admin will create it (discovery or the first session)"),
        )),
        _ => findings.push(Finding::fail(
            "managed_group",
            format!("{group:?} does not exist and the admin cannot create it"),
            format!("CREATE ROLE {} NOLOGIN; {}", quote_ident(group), grant_with_admin(group)),
        )),
    }

    if config.policy.reassigns_objects(&db.labels) {
        findings.push(object_inheritor_finding(config, facts));
    }

    let grantable = config.policy.grantable_roles(&db.labels);
    for role in &grantable.literal {
        let check = format!("db_role:{role}");
        let Some(role_facts) = facts.role(role).filter(|r| r.exists) else {
            findings.push(Finding::fail(
                check,
                format!("the policy can grant {role:?}, which does not exist: create it, or remove it from the policy"),
                format!("CREATE ROLE {} NOLOGIN;", quote_ident(role)),
            ));
            continue;
        };
        if let Some(Refusal::RefusedDbRole { reason, .. }) =
            plan::db_role_refusal(role_guard(config), role, &facts.reached_roles)
        {
            findings.push(Finding::warn(
                check,
                format!("pg-autouser never grants {role:?}, so sessions asking for it fail: {reason}"),
                Some("remove it from the policy".into()),
            ));
            continue;
        }
        if needs_admin_option && !role_facts.admin_option {
            findings.push(Finding::fail(
                check,
                format!("admin {admin:?} lacks ADMIN OPTION on {role:?}, so it cannot grant it (PostgreSQL 16+)"),
                grant_with_admin(role),
            ));
        } else {
            findings.push(Finding::pass(check, format!("the admin can grant {role:?}")));
        }
    }
    if config.creator_roles > 0 {
        findings.push(creator_roles_finding(config, facts));
        if facts.admin.server_version_num >= 160000 && !facts.admin.superuser {
            findings.push(creator_functions_finding(config, facts));
        }
    }
    if facts.unmanaged_login_count > 0 {
        findings.push(Finding::warn(
            "unmanaged_users",
            format!(
                "{} login role(s) are not in {group:?} (for example {}): pg-autouser never touches them, and \
                 refuses the session of a person whose database user name is one of them (UserConflict)",
                facts.unmanaged_login_count,
                facts.unmanaged_logins.join(", ")
            ),
            Some(format!("to hand one over to pg-autouser: GRANT {} TO <role>;", quote_ident(group))),
        ));
    }
    for entry in &grantable.templated {
        findings.push(Finding::warn(
            format!("db_role:{entry}"),
            "depends on each person's traits, so it cannot be checked ahead of a session",
            None,
        ));
    }
    findings
}

/// `creator_functions`: a warning when the admin cannot make the creators' functions in this
/// database: the schema named as the managed group is missing and the admin may not create
/// it, or it belongs to another role. The creators' statements then run after `SET ROLE`,
/// whose check walks every creator's users on PostgreSQL 16+: correct, but at the cost
/// `creator_roles` is there to avoid.
fn creator_functions_finding(config: &Config, facts: &ServerFacts) -> Finding {
    const CHECK: &str = "creator_functions";
    let (schema, admin) = (quote_ident(&config.managed_group), quote_ident(&facts.admin.admin));
    if facts.creator_functions_makeable {
        let place = match &facts.functions_schema_owner {
            Some(_) => format!("in the admin's schema {:?}", config.managed_group),
            None => format!("in the schema {:?}, which the first session creates", config.managed_group),
        };
        return Finding::pass(CHECK, format!("the admin runs each creator's statements through its function {place}"));
    }
    let (problem, fix) = match &facts.functions_schema_owner {
        Some(owner) => (
            format!("the schema {:?} belongs to {owner:?}, not to the admin", config.managed_group),
            format!("ALTER SCHEMA {schema} OWNER TO {admin};"),
        ),
        None => (
            format!(
                "there is no schema {:?}, and the admin may not create one in database {:?}",
                config.managed_group, facts.admin.database
            ),
            format!("CREATE SCHEMA {schema} AUTHORIZATION {admin};"),
        ),
    };
    Finding::warn(
        CHECK,
        format!(
            "{problem}: the admin runs each creator's statements through a function there, and without it they \
             run after SET ROLE, whose check walks every creator's users (slower with every user kept)"
        ),
        Some(fix),
    )
}

/// `creator_roles`: whether the creators that exist are ready. One that is not (a role added
/// to the policy since, a function missing) is prepared by the first session that needs it (as
/// the admin, at the cost of one walk of the admin's memberships), or by bootstrap; the fix
/// prepares them now, as a superuser. Creators that do not exist yet are made by the first
/// session of each, or by bootstrap: nothing to fix.
fn creator_roles_finding(config: &Config, facts: &ServerFacts) -> Finding {
    const CHECK: &str = "creator_roles";
    let count = config.creator_roles;
    if facts.admin.server_version_num < 160000 {
        return Finding::pass(
            CHECK,
            format!("{count} creator roles are set, and unused before PostgreSQL 16: the admin creates the users"),
        );
    }
    if facts.admin.superuser {
        return Finding::pass(
            CHECK,
            "the admin is a superuser, whose role statements check no memberships: creator roles are unused",
        );
    }
    let existing = count as usize - facts.creators_missing.len();
    if facts.creators_not_ready.is_empty() {
        return Finding::pass(
            CHECK,
            format!(
                "{existing} of the {count} creator roles exist, each ready: the admin may SET ROLE to it, and it holds \
                 ADMIN OPTION on {:?}; the first session of each of the others makes it (discovery's bootstrap makes \
                 them all)",
                facts.creator_roles_held
            ),
        );
    }
    let admin = quote_ident(&facts.admin.admin);
    let held: Vec<String> = facts.creator_roles_held.iter().map(|role| quote_ident(role)).collect();
    let fix: Vec<String> = facts
        .creators_not_ready
        .iter()
        .map(|creator| {
            let creator = quote_ident(creator);
            format!(
                "GRANT {creator} TO {admin} WITH INHERIT FALSE, SET TRUE; GRANT {} TO {creator} WITH ADMIN OPTION;",
                held.join(", ")
            )
        })
        .collect();
    Finding::warn(
        CHECK,
        format!(
            "{} of the {existing} creator roles that exist are not ready (for example {:?}): the next session of each \
             prepares it, which costs that session a walk of every user the admin created; discovery's bootstrap \
             prepares them all (their functions included), or run the fix",
            facts.creators_not_ready.len(),
            facts.creators_not_ready[0]
        ),
        Some(fix.join("\n")),
    )
}

/// What `best_effort_reassign_and_drop` needs: the admin takes each ending user's privileges
/// (CREATEROLE before PostgreSQL 16; from 16, the ADMIN OPTION it gets on the users it creates),
/// and has the object inheritor's, which `REASSIGN OWNED` to it needs; both need `INHERIT`.
fn object_inheritor_finding(config: &Config, facts: &ServerFacts) -> Finding {
    const CHECK: &str = "object_inheritor";
    let (admin, inheritor) = (&facts.admin.admin, &config.object_inheritor);
    let (admin_sql, inheritor_sql) = (quote_ident(admin), quote_ident(inheritor));
    let may_create = facts.admin.superuser || facts.admin.createrole;
    if !facts.admin.inherit && !facts.admin.superuser {
        return Finding::fail(
            CHECK,
            format!(
                "admin {admin:?} is NOINHERIT, so it cannot use the privileges of the users whose objects it hands \
                 to {inheritor:?}, nor the inheritor's"
            ),
            format!("ALTER ROLE {admin_sql} INHERIT;"),
        );
    }
    match facts.role(inheritor) {
        Some(role) if role.exists && (role.admin_has_privileges || facts.admin.superuser) => {
            Finding::pass(CHECK, format!("{inheritor:?} exists and the admin can hand dropped users' objects to it"))
        }
        Some(role) if role.exists => Finding::fail(
            CHECK,
            format!(
                "admin {admin:?} does not have the privileges of the object inheritor {inheritor:?}, which \
                 REASSIGN OWNED needs: ends lock users who own objects instead of dropping them"
            ),
            format!("GRANT {inheritor_sql} TO {admin_sql};"),
        ),
        _ if may_create => Finding::pass(
            CHECK,
            format!("{inheritor:?} does not exist yet; the admin will create it (bootstrap or the first end)"),
        ),
        _ => Finding::fail(
            CHECK,
            format!("the object inheritor {inheritor:?} does not exist and the admin cannot create it"),
            format!("CREATE ROLE {inheritor_sql} NOLOGIN; GRANT {inheritor_sql} TO {admin_sql};"),
        ),
    }
}

/// `connection_limit`: whether the admin's `CONNECTION LIMIT` keeps a burst of sessions from
/// taking the applications' connection slots. Each warm Lambda container holds one admin
/// connection, so a burst of cold session-starts (and ends) opens up to the session functions'
/// concurrency limits' worth; the limit caps them whatever the concurrency, and a login it
/// refuses (53300) is retried, then fails as `TooManyConnections`, a transient error.
fn connection_limit_finding(facts: &ServerFacts) -> Finding {
    const CHECK: &str = "connection_limit";
    let budget = &facts.connections;
    let (admin, limit) = (&facts.admin.admin, budget.admin_limit);
    let (open, share, wanted, recommended) =
        (budget.open_slots(), budget.admin_share(), ConnectionFacts::wanted(), budget.recommended_limit());
    let slots = format!(
        "{open} slots open to the applications and the admin (max_connections {} less {} reserved for superusers{})",
        budget.max_connections,
        budget.superuser_reserved,
        if budget.reserved > 0 { format!(" and {} by reserved_connections", budget.reserved) } else { String::new() }
    );
    let sizing = format!(
        "the recommended limit, {recommended}, is the lesser of the {wanted} connections the session functions \
         hold at their default concurrency limit ({SESSION_FUNCTION_CONCURRENCY} each for session-start and \
         session-end, one per warm container, and {OTHER_ADMIN_CONNECTIONS} for the reaper, discovery and the CLI) \
         and a quarter ({share}) of the {slots}{}",
        if recommended < wanted {
            format!(
                "; lower SessionFunctionConcurrency to {} to match, so that containers seldom wait for a slot",
                ((recommended - OTHER_ADMIN_CONNECTIONS) / 2).max(1)
            )
        } else {
            String::new()
        }
    );
    let fix = Some(format!("ALTER ROLE {} CONNECTION LIMIT {recommended};", quote_ident(admin)));
    if facts.admin.superuser {
        return Finding::warn(
            CHECK,
            format!(
                "admin {admin:?} is a superuser, whose CONNECTION LIMIT PostgreSQL does not enforce and who may take \
                 the slots reserved for superusers: only the session functions' concurrency limit bounds the \
                 connections a burst of sessions opens (of {slots})"
            ),
            Some(
                "log in as an admin that is not a superuser (CREATEROLE suffices), or lower SessionFunctionConcurrency"
                    .into(),
            ),
        );
    }
    if limit < 0 {
        return Finding::warn(
            CHECK,
            format!(
                "admin {admin:?} has no CONNECTION LIMIT, so a burst of session-starts from cold Lambda containers \
                 (one admin connection each) can take the connection slots of the database's applications; \
                 {sizing}"
            ),
            fix,
        );
    }
    if limit > share {
        return Finding::warn(
            CHECK,
            format!(
                "admin {admin:?} has CONNECTION LIMIT {limit}, more than a quarter of the {slots}, so a burst of \
                 sessions can take the applications' slots; {sizing}"
            ),
            fix,
        );
    }
    let short = if limit < wanted {
        format!(
            "; fewer than the {wanted} connections the session functions hold at their default concurrency limit, \
             so in a burst some logins wait for a slot, are retried, and fail as TooManyConnections (transient) when \
             none frees"
        )
    } else {
        String::new()
    };
    Finding::pass(CHECK, format!("admin {admin:?} has CONNECTION LIMIT {limit} of the {slots}{short}"))
}

/// The finding for an admin that could not log in (or whose database could not be resolved).
pub fn connection_failure(error: &Error) -> Finding {
    let fix = match error {
        Error::MissingConnect { admin, db_name } => {
            Some(format!("GRANT CONNECT ON DATABASE {} TO {};", quote_ident(db_name), quote_ident(admin)))
        }
        Error::IamAuthDisabled { resource, .. } => Some(format!(
            "enable IAM database authentication on {resource}: aws rds modify-db-instance (or modify-db-cluster) \
             --enable-iam-database-authentication --apply-immediately"
        )),
        Error::NotManaged { tag, .. } => Some(format!("tag the resource {tag}=<admin user>")),
        Error::AdminAuthFailed { .. } => Some(
            "check the admin's credentials; on RDS, that the admin holds rds_iam and the function may \
             rds-db:connect as it; self-hosted, pg_hba.conf (hostssl … cert) and the certificate's CN"
                .into(),
        ),
        Error::Unreachable { .. } => Some("check the endpoint, security groups and routes from the function".into()),
        Error::TooManyConnections { .. } => Some(
            "retry when connections free up; to make room, raise max_connections, lower the session functions' \
             concurrency limit (SessionFunctionConcurrency), or raise the admin's CONNECTION LIMIT if it ran out"
                .into(),
        ),
        _ => None,
    };
    Finding { check: "login".into(), status: Status::Fail, detail: error.to_string(), fix }
}

/// Creates what can be created safely ahead of the first session: the managed group, and the
/// object inheritor (with the admin given its privileges) when the policy hands objects to it.
/// Returns the statements it ran.
pub async fn bootstrap(client: &Client, config: &Config, facts: &ServerFacts) -> Result<Vec<String>, Error> {
    if !(facts.admin.superuser || facts.admin.createrole) || facts.admin.read_only {
        return Ok(Vec::new());
    }
    let missing = |role: &str| !facts.role(role).is_some_and(|r| r.exists);
    let mut ran = Vec::new();
    if missing(&config.managed_group) {
        let steps = [Step::CreateGroup { group: config.managed_group.clone() }];
        ran.extend(create(client, &steps, "creating the managed group").await?);
    }
    // Only what preflight asked about: the inheritor is among the facts when the policy uses it.
    if facts.role(&config.object_inheritor).is_some() && missing(&config.object_inheritor) {
        let steps = [
            Step::CreateGroup { group: config.object_inheritor.clone() },
            Step::GrantRoles { roles: vec![config.object_inheritor.clone()], user: facts.admin.admin.clone() },
        ];
        ran.extend(create(client, &steps, "creating the object inheritor").await?);
    }
    // The missing ones too: made here, they cost no session its preparation. One statement
    // for them all, so that the report (discovery's event) stays small.
    let creators: Vec<String> = facts.creators_not_ready.iter().chain(&facts.creators_missing).cloned().collect();
    if !creators.is_empty() {
        let statement = sql::prepare_creators(&creators, &facts.creator_roles_held, &config.managed_group);
        ran.extend(run_in_a_transaction(client, vec![statement], "preparing the creator roles").await?);
    }
    Ok(ran)
}

/// Runs `steps` in one transaction; nothing when the role was created meanwhile (by a
/// session: what we wanted). The statements it ran.
async fn create(client: &Client, steps: &[Step], action: &str) -> Result<Vec<String>, Error> {
    run_in_a_transaction(client, steps.iter().map(sql::render).collect(), action).await
}

/// Runs `statements` in one transaction; nothing when a role was created meanwhile (by a
/// session: what we wanted). The statements it ran.
async fn run_in_a_transaction(client: &Client, statements: Vec<String>, action: &str) -> Result<Vec<String>, Error> {
    match client.batch_execute(&format!("BEGIN; {}; COMMIT", statements.join("; "))).await {
        Ok(()) => Ok(statements),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => {
            let _ = client.batch_execute(sql::ROLLBACK).await;
            Ok(Vec::new())
        }
        Err(source) => {
            let _ = client.batch_execute(sql::ROLLBACK).await;
            Err(Error::Postgres { action: action.into(), endpoint: String::new(), source })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(db_roles: &str) -> Config {
        let text = format!(
            r#"
databases:
  - {{name: main, type: rds, uri: "db:5432", labels: {{env: prod}}, admin_user: {{name: admin}},
     auth: {{method: password, password_env: PW}}, tls: {{mode: verify-full, ca_file: /ca.pem}}}}
roles:
  - kind: role
    version: v7
    metadata: {{name: devs}}
    spec:
      options: {{create_db_user_mode: keep}}
      allow: {{db_labels: {{env: prod}}, db_names: ["*"], db_roles: {db_roles}}}
"#
        );
        Config::parse(&text, std::path::Path::new("/")).unwrap()
    }

    fn facts(version: i32, roles: &[(&str, bool, bool, bool)]) -> ServerFacts {
        ServerFacts {
            admin: AdminFacts {
                admin: "admin".into(),
                server_version_num: version,
                superuser: false,
                createrole: true,
                inherit: true,
                read_only: false,
                in_recovery: false,
                database: "app".into(),
                signal_backend: true,
            },
            connections: ConnectionFacts { admin_limit: 44, max_connections: 400, superuser_reserved: 3, reserved: 0 },
            roles: roles
                .iter()
                .map(|(name, superuser, admin_has_privileges, admin_option)| RoleFacts {
                    name: name.to_string(),
                    exists: true,
                    superuser: *superuser,
                    admin_option: *admin_option,
                    admin_has_privileges: *admin_has_privileges,
                })
                .collect(),
            unmanaged_logins: Vec::new(),
            unmanaged_login_count: 0,
            creator_roles_held: Vec::new(),
            creators_not_ready: Vec::new(),
            creators_missing: Vec::new(),
            functions_schema_owner: None,
            creator_functions_makeable: true,
            reached_roles: roles
                .iter()
                .filter(|(_, superuser, _, _)| *superuser)
                .map(|(name, ..)| ReachedRole {
                    wanted: name.to_string(),
                    role: name.to_string(),
                    facts: BTreeSet::from([plan::RoleFact::Superuser]),
                })
                .collect(),
        }
    }

    fn status_of(findings: &[Finding], check: &str) -> Status {
        findings.iter().find(|f| f.check == check).unwrap_or_else(|| panic!("no {check}")).status
    }

    #[test]
    fn rds_superuser_in_the_policy_is_never_granted_whatever_the_admin_holds() {
        // RDS makes rds_superuser WITH CREATEROLE and CREATEDB: refused like any such role.
        let config = config("[rds_superuser]");
        let db = config.databases[0].resolve_static().unwrap();
        let mut server = facts(160000, &[("rds_iam", false, true, true), ("rds_superuser", false, true, true)]);
        server.reached_roles.insert(ReachedRole {
            wanted: "rds_superuser".into(),
            role: "rds_superuser".into(),
            facts: BTreeSet::from([plan::RoleFact::CreateRole, plan::RoleFact::CreateDb]),
        });
        let findings = evaluate(&config, &db, &server);
        let finding = findings.iter().find(|f| f.check == "db_role:rds_superuser").unwrap();
        assert_eq!(finding.status, Status::Warn);
        assert!(finding.detail.contains("never grants") && finding.detail.contains("CREATEROLE"), "{finding:?}");
        assert_eq!(finding.fix.as_deref(), Some("remove it from the policy"));
    }

    #[test]
    fn roles_a_start_refuses_are_a_warning_naming_why() {
        let config = config("[app, pg_read_all_data, pg_monitor]");
        let db = config.databases[0].resolve_static().unwrap();
        let mut server = facts(160000, &[("rds_iam", false, true, true), ("app", false, true, true)]);
        server
            .roles
            .extend(facts(160000, &[("pg_read_all_data", false, true, true), ("pg_monitor", false, true, true)]).roles);
        let reach = |wanted: &str, role: &str, fact| ReachedRole {
            wanted: wanted.into(),
            role: role.into(),
            facts: BTreeSet::from([fact]),
        };
        server.reached_roles.insert(reach("app", "pg_execute_server_program", plan::RoleFact::Predefined));
        server.reached_roles.insert(reach("pg_read_all_data", "pg_read_all_data", plan::RoleFact::Predefined));
        server.reached_roles.insert(reach("pg_monitor", "pg_monitor", plan::RoleFact::Predefined));
        let findings = evaluate(&config, &db, &server);
        let app = findings.iter().find(|f| f.check == "db_role:app").unwrap();
        assert_eq!(app.status, Status::Warn);
        assert!(app.detail.contains("member of \"pg_execute_server_program\""), "{app:?}");
        assert_eq!(status_of(&findings, "db_role:pg_read_all_data"), Status::Warn);
        // Allowed by the config: the admin can grant it.
        let mut config = config;
        config.allowed_predefined_roles.insert("pg_read_all_data".into());
        let findings = evaluate(&config, &db, &server);
        assert_eq!(status_of(&findings, "db_role:pg_read_all_data"), Status::Pass);
        assert_eq!(status_of(&findings, "db_role:pg_monitor"), Status::Warn);
    }

    #[test]
    fn superuser_roles_in_the_policy_are_a_warning() {
        let config = config("[boss]");
        let db = config.databases[0].resolve_static().unwrap();
        let findings =
            evaluate(&config, &db, &facts(150000, &[("rds_iam", false, true, true), ("boss", true, false, false)]));
        assert_eq!(status_of(&findings, "db_role:boss"), Status::Warn);
        assert_eq!(status_of(&findings, "rds_iam"), Status::Pass);
    }

    #[test]
    fn unmanaged_login_roles_are_a_warning_naming_them() {
        let config = config("[]");
        let db = config.databases[0].resolve_static().unwrap();
        let mut with_bob = facts(170000, &[("rds_iam", false, true, true)]);
        with_bob.unmanaged_logins = vec!["bob".into(), "carol".into()];
        with_bob.unmanaged_login_count = 12;
        let findings = evaluate(&config, &db, &with_bob);
        let warning = findings.iter().find(|f| f.check == "unmanaged_users").unwrap();
        assert_eq!(warning.status, Status::Warn);
        assert!(warning.detail.starts_with("12 login role(s)") && warning.detail.contains("bob, carol"), "{warning:?}");
        assert!(Report::new(&db, findings).ready, "a warning does not block");
        let findings = evaluate(&config, &db, &facts(170000, &[("rds_iam", false, true, true)]));
        assert!(findings.iter().all(|f| f.check != "unmanaged_users"));
    }

    #[test]
    fn an_admin_without_pg_signal_backend_is_a_warning_with_the_grant() {
        let config = config("[]");
        let db = config.databases[0].resolve_static().unwrap();
        let mut server = facts(170000, &[("rds_iam", false, true, true)]);
        assert_eq!(status_of(&evaluate(&config, &db, &server), "signal_backend"), Status::Pass);
        server.admin.signal_backend = false;
        server.admin.admin = "team \"admin\"".into();
        let findings = evaluate(&config, &db, &server);
        let warning = findings.iter().find(|f| f.check == "signal_backend").unwrap();
        assert_eq!(warning.status, Status::Warn);
        assert!(warning.detail.contains("pg_signal_backend"), "{warning:?}");
        assert_eq!(warning.fix.as_deref(), Some("GRANT pg_signal_backend TO \"team \"\"admin\"\"\";"));
        assert!(Report::new(&db, findings).ready, "sessions work meanwhile");
        // A superuser has every role's privileges.
        server.admin.superuser = true;
        assert_eq!(status_of(&evaluate(&config, &db, &server), "signal_backend"), Status::Pass);
    }

    /// No CONNECTION LIMIT is a warning whose fix sets the recommended one: the session
    /// functions' connections at their default concurrency, at most a quarter of the slots open
    /// to ordinary roles; a limit within that quarter passes, one above it is a warning again.
    #[test]
    fn the_admin_s_connection_limit_is_checked_against_the_server_s_slots() {
        let config = config("[]");
        let db = config.databases[0].resolve_static().unwrap();
        let mut server = facts(170000, &[("rds_iam", false, true, true)]);
        let finding = |server: &ServerFacts| {
            evaluate(&config, &db, server).into_iter().find(|f| f.check == "connection_limit").unwrap()
        };
        assert_eq!(finding(&server).status, Status::Pass, "{:?}", finding(&server));

        server.connections.admin_limit = -1;
        let unlimited = finding(&server);
        assert_eq!(unlimited.status, Status::Warn);
        assert_eq!(unlimited.fix.as_deref(), Some("ALTER ROLE \"admin\" CONNECTION LIMIT 44;"));
        assert!(unlimited.detail.contains("no CONNECTION LIMIT"), "{unlimited:?}");
        assert!(unlimited.detail.contains("397 slots"), "{unlimited:?}");
        assert!(Report::new(&db, evaluate(&config, &db, &server)).ready, "sessions work meanwhile");

        // A small server: a quarter of its open slots, and the concurrency that fits it.
        server.connections =
            ConnectionFacts { admin_limit: -1, max_connections: 100, superuser_reserved: 3, reserved: 5 };
        let small = finding(&server);
        assert_eq!(small.fix.as_deref(), Some("ALTER ROLE \"admin\" CONNECTION LIMIT 23;"), "{small:?}");
        assert!(small.detail.contains("lower SessionFunctionConcurrency to 9"), "{small:?}");
        assert!(small.detail.contains("5 by reserved_connections"), "{small:?}");
        server.connections.admin_limit = 23;
        assert_eq!(finding(&server).status, Status::Pass);
        server.connections.admin_limit = 10;
        let low = finding(&server);
        assert_eq!(low.status, Status::Pass);
        assert!(low.detail.contains("TooManyConnections"), "{low:?}");
        server.connections.admin_limit = 30;
        assert_eq!(finding(&server).status, Status::Warn, "above a quarter of the slots");

        // A superuser's limit is not enforced.
        server.admin.superuser = true;
        server.connections.admin_limit = 10;
        let superuser = finding(&server);
        assert_eq!(superuser.status, Status::Warn);
        assert!(superuser.detail.contains("does not enforce"), "{superuser:?}");
    }

    /// `SESSION_FUNCTION_CONCURRENCY` is the default the deployment templates set.
    #[test]
    fn the_recommended_limit_follows_the_templates_default_concurrency() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let template = std::fs::read_to_string(root.join("template.yaml")).unwrap();
        let parameter = template.split("  SessionFunctionConcurrency:\n").nth(1).expect("the template's parameter");
        let default = parameter.lines().find_map(|line| line.trim().strip_prefix("Default: ")).unwrap();
        assert_eq!(default, SESSION_FUNCTION_CONCURRENCY.to_string());
        let construct = std::fs::read_to_string(root.join("infra/lib/index.ts")).unwrap();
        let wanted = format!("DEFAULT_SESSION_FUNCTION_CONCURRENCY = {SESSION_FUNCTION_CONCURRENCY};");
        assert!(construct.contains(&wanted), "infra/lib/index.ts has no {wanted}");
    }

    #[test]
    fn a_standby_fails_the_writable_check_and_needs_the_writer() {
        let config = config("[]");
        let db = config.databases[0].resolve_static().unwrap();
        let mut standby = facts(170000, &[("rds_iam", false, true, true)]);
        standby.admin.in_recovery = true;
        let findings = evaluate(&config, &db, &standby);
        let writable = findings.iter().find(|f| f.check == "writable").unwrap();
        assert_eq!(writable.status, Status::Fail);
        assert!(writable.detail.contains("standby"), "{writable:?}");
        assert!(!Report::new(&db, findings).ready);
    }
}
