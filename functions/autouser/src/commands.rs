//! `session-start` and `session-end`: load, decide, connect, apply, print.

use std::io::Read;
use std::path::Path;

use autouser_aws::AwsContext;
use autouser_engine::pg::{self, AdminConnection, AdminCredentials, ConnectParams, TlsSettings};
use autouser_engine::{engine, preflight, replica, Error};
use autouser_policy::config::{AuthConfig, Config, DatabaseConfig, Location, ResolvedDatabase};
use autouser_policy::event::SessionEvent;
use autouser_policy::identity;
use autouser_policy::{request, Refusal};
use futures_util::future::join_all;

/// Where AWS configuration comes from: the environment (the CLI), or given (the demo, which
/// points it at a local emulator).
pub enum AwsSetup {
    FromEnvironment,
    Given(Box<autouser_aws::SdkConfig>),
}

impl AwsSetup {
    async fn context(&self) -> AwsContext {
        match self {
            AwsSetup::FromEnvironment => AwsContext::from_env().await,
            AwsSetup::Given(sdk) => AwsContext::new(sdk.as_ref().clone()),
        }
    }
}

/// A failed command: what to print and how to exit.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub exit_code: u8,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        let exit_code = match &error {
            Error::Config(_) => 78,
            Error::Event(_) => 65,
            e if e.is_transient() => 75,
            _ => 1,
        };
        Failure { message: format!("{} [{}]", error, error.kind()), exit_code }
    }
}

impl From<Refusal> for Failure {
    fn from(refusal: Refusal) -> Self {
        Error::from(refusal).into()
    }
}

pub async fn session_start(config: &Path, event: &Path, aws: &AwsSetup) -> Result<Option<String>, Failure> {
    let (config, event) = load(config, event, Purpose::Start, aws).await?;
    let (db, aws) = resolve(&config, &event, aws, Purpose::Start).await?;
    let req = request::prepare_start(&config, &db, &event)?;
    let outcome = match db.writer_database() {
        None => {
            let connection = connect(aws.as_ref(), &db, &req.target.admin_db_name).await?;
            engine::session_start(&connection, &req).await?
        }
        Some(writer_db) => {
            let (writer, replica_connections) = tokio::join!(
                connect(aws.as_ref(), &writer_db, &req.target.admin_db_name),
                connect_replicas(aws.as_ref(), &db, &req.target.admin_db_name)
            );
            let writer = writer?;
            replica::session_start(&writer, &replicas(&db, &replica_connections), &req).await?
        }
    };
    Ok(Some(serde_json::to_string(&outcome).expect("outcomes serialise")))
}

pub async fn session_end(config: &Path, event: &Path, aws: &AwsSetup) -> Result<Option<String>, Failure> {
    let (config, event) = load(config, event, Purpose::End, aws).await?;
    let (db, aws) = resolve(&config, &event, aws, Purpose::End).await?;
    let req = request::prepare_end(&config, &db, &event)?;
    let writer_db = db.writer_database();
    // A read replica's changes are made on its writer, with the writer's other databases.
    let (aws, acted_on) = (aws.as_ref(), writer_db.as_ref().unwrap_or(&db));
    let connection = connect(aws, acted_on, &req.target.admin_db_name).await?;
    let others = engine::ConnectWith(|db_name: String| async move { connect(aws, acted_on, &db_name).await });
    let outcome = match writer_db {
        None => engine::session_end(&connection, &req, &others).await?,
        Some(_) => {
            let replica_connections = connect_replicas(aws, &db, &req.target.admin_db_name).await;
            replica::session_end(&connection, &replicas(&db, &replica_connections), &req, &others).await?
        }
    };
    Ok(Some(serde_json::to_string(&outcome).expect("outcomes serialise")))
}

/// `preflight`: the report on stdout (text or JSON); a failure when a check failed.
pub async fn preflight(config: &Path, database: &str, json: bool, aws: &AwsSetup) -> Result<Option<String>, Failure> {
    let config = Config::load(config).map_err(Error::from)?;
    let db_config =
        config.database(database).ok_or_else(|| Error::UnknownDatabase { database: database.to_string() })?;
    let (db, aws) = resolve_database(&config, db_config, aws, Purpose::Start).await?;
    // A read replica's entry: the checks on its writer, where the admin makes its changes,
    // and the replica's own.
    let writer_db = db.writer_database();
    let acted_on = writer_db.as_ref().unwrap_or(&db);
    let mut report = match connect(aws.as_ref(), acted_on, preflight::admin_database(acted_on)).await {
        Ok(client) => preflight::check(&client, &config, acted_on).await?.0,
        Err(error) => preflight::Report::login_failed(acted_on, &error),
    };
    if writer_db.is_some() {
        let mut findings = Vec::new();
        for replica_db in db.replica_databases() {
            let replica = connect(aws.as_ref(), &replica_db, preflight::admin_database(&replica_db)).await;
            findings.push(preflight::check_replica(replica.as_ref().map(|c| c.client()), &replica_db).await);
        }
        report = preflight::Report::of_replica(&db, report, findings);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report).expect("reports serialise"));
    } else {
        print!("{}", report.to_text());
    }
    if report.ready {
        Ok(None)
    } else {
        let failed = report.findings.iter().filter(|f| f.status == preflight::Status::Fail).count();
        Err(Failure { message: format!("{failed} preflight check(s) failed: run the fixes above"), exit_code: 1 })
    }
}

/// `discover`: the report on stdout (text or JSON); a failure when a database needs attention.
pub async fn discover(
    config: &Path,
    options: &autouser_aws::discovery::DiscoveryOptions,
    json: bool,
    setup: &AwsSetup,
) -> Result<Option<String>, Failure> {
    let config = Config::load(config).map_err(Error::from)?;
    let aws = setup.context().await;
    let progress = crate::progress::Progress::unsized_until_known("checking");
    let report = aws.discover_with_progress(&config, options, &|examined, total| progress.set(examined, total)).await;
    progress.finish();
    if json {
        println!("{}", serde_json::to_string_pretty(&report).expect("reports serialise"));
    } else {
        print!("{}", report.to_text());
    }
    if report.needs_attention() {
        Err(Failure { message: "some databases need attention: run the fixes above".into(), exit_code: 1 })
    } else {
        Ok(None)
    }
}

/// `reap`: on each configured database (or one), close sessions older than
/// `max_session_duration` whose user is not connected, and lock managed users that can log in
/// with no open session. Prints the reports, one per database, as one line of JSON; fails
/// when anything failed.
pub async fn reap(config: &Path, database: Option<&str>, setup: &AwsSetup) -> Result<Option<String>, Failure> {
    let config = Config::load(config).map_err(Error::from)?;
    let databases = selected_databases(&config, database)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut reports = Vec::new();
    let mut failures = 0;
    let progress = crate::progress::Progress::new(databases.len(), "reaping");
    for db_config in databases {
        progress.working_on(&db_config.name);
        let result = reap_database(&config, db_config, setup, now).await;
        progress.done_one();
        match result {
            Ok(report) => {
                failures += report.failed.len();
                reports.push(serde_json::to_value(&report).expect("reports serialise"));
            }
            Err(error) => {
                failures += 1;
                reports.push(serde_json::json!({
                    "database": db_config.name, "kind": error.kind(), "error": error.to_string(),
                }));
            }
        }
    }
    progress.finish();
    println!("{}", serde_json::to_string(&reports).expect("reports serialise"));
    if failures == 0 {
        Ok(None)
    } else {
        Err(Failure { message: format!("{failures} reaper action(s) failed: see the report"), exit_code: 1 })
    }
}

async fn reap_database(
    config: &Config,
    db_config: &DatabaseConfig,
    setup: &AwsSetup,
    now: u64,
) -> Result<autouser_engine::reaper::ReapReport, Error> {
    let (db, aws) = resolve_database(config, db_config, setup, Purpose::End).await?;
    let admin_db_name = preflight::admin_database(&db);
    // A read replica's entry: the reaper acts on its writer, and counts and ends the users'
    // connections on the replica.
    let writer_db = db.writer_database();
    let acted_on = writer_db.as_ref().unwrap_or(&db);
    let connection = connect(aws.as_ref(), acted_on, admin_db_name).await?;
    let replica_connections = connect_replicas(aws.as_ref(), &db, admin_db_name).await;
    let connect_to = |db_name: String| {
        let aws = aws.as_ref();
        async move { connect(aws, acted_on, &db_name).await }
    };
    let replicas = replicas(&db, &replica_connections);
    autouser_engine::reaper::reap(&connection, admin_db_name, config, &db, &replicas, now, None, connect_to).await
}

/// Which call `plan` plans.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum PlannedKind {
    SessionStart,
    SessionEnd,
}

/// `plan`: what `session-start` or `session-end` would decide and run now, for a reviewer;
/// read in a transaction that is rolled back, so nothing changes. Fails as the call would
/// (the same message and exit code), after printing nothing.
pub async fn plan(
    kind: PlannedKind,
    config: &Path,
    event: &Path,
    json: bool,
    aws: &AwsSetup,
) -> Result<Option<String>, Failure> {
    let purpose = if kind == PlannedKind::SessionStart { Purpose::Start } else { Purpose::End };
    let (config, event) = load(config, event, purpose, aws).await?;
    let (db, aws) = resolve(&config, &event, aws, purpose).await?;
    let review = match kind {
        PlannedKind::SessionStart => {
            let req = request::prepare_start(&config, &db, &event)?;
            // Which roles of the policy matched, for the reviewer: the same evaluation as above.
            let grant = config
                .policy
                .evaluate(&autouser_policy::policy::AccessRequest {
                    role_names: event.start_roles().map_err(Error::from)?,
                    traits: &event.traits,
                    database: &db.name,
                    labels: &db.labels,
                    db_name: &event.db_name,
                    requested_db_roles: event.db_roles.as_deref(),
                })
                .expect("prepare_start evaluated it");
            let connection = connect(aws.as_ref(), writer_or(&db).as_ref(), &req.target.admin_db_name).await?;
            let planned = engine::plan_call(&connection, autouser_engine::dry_run::Call::Start(&req)).await?;
            crate::view::start_review(&req, &grant, &event, &db, planned)
        }
        PlannedKind::SessionEnd => {
            let req = request::prepare_end(&config, &db, &event)?;
            let connection = connect(aws.as_ref(), writer_or(&db).as_ref(), &req.target.admin_db_name).await?;
            let planned = engine::plan_call(&connection, autouser_engine::dry_run::Call::End(&req)).await?;
            crate::view::end_review(&req, planned)
        }
    };
    let review = crate::view::Review {
        read_replica: db
            .writer_database()
            .map(|writer| autouser_policy::status::ReadReplica { replica: db.endpoint(), writer: writer.endpoint() }),
        ..review
    };
    if json {
        Ok(Some(serde_json::to_string(&review).expect("reviews serialise")))
    } else {
        print!("{}", review.to_text());
        Ok(None)
    }
}

/// `status`: who has access now on each configured database (or one), read as its admin in
/// one query per database, changing nothing. Prints a table, or with `json` one object
/// `{"databases": [...]}`; a database that cannot be read is listed with its error, and the
/// command then fails as that error does.
pub async fn status(
    config: &Path,
    database: Option<&str>,
    json: bool,
    setup: &AwsSetup,
) -> Result<Option<String>, Failure> {
    let config = Config::load(config).map_err(Error::from)?;
    let databases = selected_databases(&config, database)?;
    let progress = crate::progress::Progress::new(databases.len(), "reading");
    let mut reports = Vec::new();
    let mut first_error = None;
    for db_config in databases {
        progress.working_on(&db_config.name);
        match status_of(&config, db_config, setup).await {
            Ok(status) => reports.push(crate::view::DatabaseReport::Read(status)),
            Err(error) => {
                reports.push(crate::view::DatabaseReport::Failed {
                    database: db_config.name.clone(),
                    kind: error.kind().to_string(),
                    error: error.to_string(),
                });
                first_error.get_or_insert(error);
            }
        }
        progress.done_one();
    }
    progress.finish();
    if json {
        println!("{}", serde_json::json!({ "databases": reports }));
    } else {
        print!("{}", crate::view::status_text(&reports));
    }
    match first_error {
        None => Ok(None),
        Some(error) => Err(error.into()),
    }
}

async fn status_of(
    config: &Config,
    db_config: &DatabaseConfig,
    setup: &AwsSetup,
) -> Result<autouser_policy::status::DatabaseStatus, Error> {
    let (db, aws) = resolve_database(config, db_config, setup, Purpose::End).await?;
    // A read replica's entry: the writer's catalog, which the replica follows.
    let writer_db = db.writer_database();
    let acted_on = writer_db.as_ref().unwrap_or(&db);
    let connection = connect(aws.as_ref(), acted_on, preflight::admin_database(acted_on)).await?;
    let mut status = autouser_engine::status::status(&connection, config, &db).await?;
    status.read_replica = writer_db
        .map(|writer| autouser_policy::status::ReadReplica { replica: db.endpoint(), writer: writer.endpoint() });
    Ok(status)
}

/// Where the admin makes its changes for `db`: its writer when `db` is a read replica.
fn writer_or(db: &ResolvedDatabase) -> std::borrow::Cow<'_, ResolvedDatabase> {
    match db.writer_database() {
        Some(writer) => std::borrow::Cow::Owned(writer),
        None => std::borrow::Cow::Borrowed(db),
    }
}

/// The configured database named `database`, or all of them.
fn selected_databases<'c>(config: &'c Config, database: Option<&str>) -> Result<Vec<&'c DatabaseConfig>, Error> {
    match database {
        Some(name) => {
            Ok(vec![config.database(name).ok_or_else(|| Error::UnknownDatabase { database: name.to_string() })?])
        }
        None => Ok(config.databases.iter().collect()),
    }
}

/// The event's database, resolved; and the AWS context when the database needs AWS.
async fn resolve(
    config: &Config,
    event: &SessionEvent,
    setup: &AwsSetup,
    purpose: Purpose,
) -> Result<(ResolvedDatabase, Option<AwsContext>), Error> {
    resolve_database(config, request::database(config, event)?, setup, purpose).await
}

/// What a database is resolved for: ends (and the reaper) still reach an RDS database whose
/// admin tag was removed, through its `fallback_admin_user`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Start,
    End,
}

/// `db`, resolved; and the AWS context when the database needs AWS (an RDS lookup, an IAM
/// token, a secret). Databases that need none never load AWS configuration.
async fn resolve_database(
    config: &Config,
    db: &DatabaseConfig,
    setup: &AwsSetup,
    purpose: Purpose,
) -> Result<(ResolvedDatabase, Option<AwsContext>), Error> {
    let needs_aws = matches!(db.location, Location::Rds(_))
        || !matches!(db.auth, AuthConfig::CertFiles { .. } | AuthConfig::PasswordEnv { .. });
    if !needs_aws {
        let resolved = db.resolve_static().expect("static databases with local auth resolve statically");
        return Ok((resolved, None));
    }
    let aws = setup.context().await;
    let resolved = match purpose {
        Purpose::Start => aws.resolve_database(config, db).await?,
        Purpose::End => aws.resolve_database_for_end(config, db).await?,
    };
    Ok((resolved, Some(aws)))
}

/// The config and the event, its identity token verified (`identity:`): the event returned
/// names the person, roles and traits the token does. The token is dropped here.
/// A `jwks_uri`'s keys are fetched over HTTPS, trusting the system's roots (`SSL_CERT_FILE`).
/// Keys kept in SSM or S3 are read through `setup`'s AWS configuration.
async fn load(
    config: &Path,
    event: &Path,
    purpose: Purpose,
    setup: &AwsSetup,
) -> Result<(Config, SessionEvent), Failure> {
    let config = Config::load(config).map_err(Error::from)?;
    let text = if event == Path::new("-") {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map_err(|e| Failure {
            message: format!("cannot read the event from standard input: {e}"),
            exit_code: 65,
        })?;
        text
    } else {
        std::fs::read_to_string(event).map_err(|e| Failure {
            message: format!("cannot read event file {}: {e}", event.display()),
            exit_code: 65,
        })?
    };
    let event = SessionEvent::from_json(&text).map_err(Error::from)?;
    let purpose = match purpose {
        Purpose::Start => identity::Purpose::Start,
        Purpose::End => identity::Purpose::End,
    };
    let keys_in_aws = config.identity.as_ref().is_some_and(|identity| {
        identity.issuers.iter().any(|issuer| {
            matches!(issuer.keys, identity::KeySource::SsmParameter(_) | identity::KeySource::S3Object(_))
        })
    });
    let aws = if keys_in_aws { Some(setup.context().await) } else { None };
    let (event, _) = autouser_aws::jwks::JwksCache::new()
        .authenticate(aws.as_ref(), config.identity.as_ref(), event, purpose)
        .await
        .map_err(Refusal::from)?;
    Ok((config, event))
}

/// The admin's connections to every replica a session on `db` may log in to
/// ([`ResolvedDatabase::replica_databases`]), or why each failed; none for an entry that is
/// not a replica's. A replica the admin cannot reach does not stop a call on the writer.
async fn connect_replicas(
    aws: Option<&AwsContext>,
    db: &ResolvedDatabase,
    dbname: &str,
) -> Vec<Result<AdminConnection, Error>> {
    join_all(db.replica_databases().iter().map(|replica| connect(aws, replica, dbname))).await
}

/// The replicas of `db` over their `connections` (from [`connect_replicas`]).
fn replicas<'a>(db: &ResolvedDatabase, connections: &'a [Result<AdminConnection, Error>]) -> Vec<replica::Replica<'a>> {
    db.replica_databases()
        .iter()
        .zip(connections)
        .map(|(replica, connection)| replica::Replica::of(connection.as_ref(), replica))
        .collect()
}

async fn connect(aws: Option<&AwsContext>, db: &ResolvedDatabase, dbname: &str) -> Result<AdminConnection, Error> {
    if let Some(aws) = aws {
        return aws.connect_admin(db, dbname).await;
    }
    let credentials = AdminCredentials::from_local_config(&db.auth)?;
    let tls = TlsSettings::from_config(&db.tls)?;
    pg::connect_admin(&ConnectParams::admin_of(db, dbname, &tls, &credentials)).await
}
