//! Admin connections kept open across warm invocations: one per database, admin database and
//! admin identity, at most [`MAX_POOLED_CONNECTIONS`] (the least recently used goes first). A
//! Lambda container runs one invocation at a time, so one connection each is enough; a dead
//! or old connection is replaced (with a fresh IAM token, if IAM).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use autouser_aws::AwsContext;
use autouser_engine::pg::AdminConnection;
use autouser_engine::Error;
use autouser_policy::config::ResolvedDatabase;
use tokio::sync::Mutex;

/// Connections older than this are replaced: it bounds how long a rotated credential or a
/// moved endpoint goes unnoticed.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(10 * 60);

/// Connections a container keeps. Sessions with object permissions log in to the session's
/// own database, so a cluster of many databases would otherwise leave one admin connection
/// per database name in every warm container, against the server's `max_connections`.
pub const MAX_POOLED_CONNECTIONS: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    database: String,
    host: String,
    port: u16,
    dbname: String,
    admin: String,
}

struct Pooled {
    connection: Arc<AdminConnection>,
    opened: Instant,
    last_used: Instant,
}

impl Pooled {
    fn usable(&self) -> bool {
        !self.connection.is_closed() && self.opened.elapsed() < MAX_CONNECTION_AGE
    }
}

#[derive(Default)]
pub struct Pool {
    connections: Mutex<HashMap<Key, Pooled>>,
    opened: AtomicUsize,
}

impl Pool {
    /// Runs `work` on the admin connection for `db`/`dbname`, reusing a live one. If the
    /// connection turns out dead during `work` (the server restarted while the container was
    /// idle), `work` runs once more on a new connection: the engine is idempotent. A
    /// session-end whose COMMIT was in flight when the connection died
    /// ([`Error::EndUnconfirmed`]) is returned as it is: its caller reruns it with
    /// `engine::confirm_end`, which reports what the first run did.
    pub async fn with_admin<T, F, Fut>(
        &self,
        aws: &AwsContext,
        db: &ResolvedDatabase,
        dbname: &str,
        work: F,
    ) -> Result<T, Error>
    where
        F: Fn(Arc<AdminConnection>) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let (connection, reused) = self.connection(aws, db, dbname).await?;
        match work(connection.clone()).await {
            Err(error) if reused && connection.is_closed() && !matches!(error, Error::EndUnconfirmed { .. }) => {
                tracing::info!(database = %db.name, "pooled admin connection was dead; reconnecting");
                let (connection, _) = self.connection(aws, db, dbname).await?;
                work(connection).await
            }
            result => result,
        }
    }

    /// The other databases of `db`'s server, through this pool's connections (so that they
    /// too are kept across invocations): see [`autouser_engine::engine::OtherDatabases`].
    pub fn other_databases<'a>(&'a self, aws: &'a AwsContext, db: &'a ResolvedDatabase) -> PooledDatabases<'a> {
        PooledDatabases { pool: self, aws, db }
    }

    /// The admin's connections to every replica a session on `db` may log in to
    /// ([`ResolvedDatabase::replica_databases`]), each with the replica it reaches, or why the
    /// admin could not log in; none for an entry that is not a replica's. A replica the admin
    /// cannot reach does not stop a call on the writer.
    pub async fn replica_connections(
        &self,
        aws: &AwsContext,
        db: &ResolvedDatabase,
        dbname: &str,
    ) -> Vec<ReplicaConnection> {
        let mut connections = Vec::new();
        for replica in db.replica_databases() {
            let connection = self.with_admin(aws, &replica, dbname, |connection| async { Ok(connection) }).await;
            connections.push(ReplicaConnection { replica, connection });
        }
        connections
    }

    /// A live connection, and whether it was reused.
    async fn connection(
        &self,
        aws: &AwsContext,
        db: &ResolvedDatabase,
        dbname: &str,
    ) -> Result<(Arc<AdminConnection>, bool), Error> {
        let key = Key {
            database: db.name.clone(),
            host: db.host.clone(),
            port: db.port,
            dbname: dbname.to_string(),
            admin: db.admin_user.name.clone(),
        };
        let mut connections = self.connections.lock().await;
        if let Some(pooled) = connections.get_mut(&key) {
            if pooled.usable() {
                pooled.last_used = Instant::now();
                return Ok((pooled.connection.clone(), true));
            }
        }
        // Dropping the last reference to a connection closes it.
        connections.retain(|_, pooled| pooled.usable());
        while connections.len() >= MAX_POOLED_CONNECTIONS {
            let Some(oldest) = connections.iter().min_by_key(|(_, pooled)| pooled.last_used).map(|(k, _)| k.clone())
            else {
                break;
            };
            connections.remove(&oldest);
        }
        let connection = Arc::new(aws.connect_admin(db, dbname).await?);
        self.opened.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        connections.insert(key, Pooled { connection: connection.clone(), opened: now, last_used: now });
        Ok((connection, false))
    }

    /// Connections opened since the container started.
    pub fn opened(&self) -> usize {
        self.opened.load(Ordering::Relaxed)
    }
}

/// A replica of an entry, and the admin's connection to it, or why the admin could not log in
/// ([`Pool::replica_connections`]).
pub struct ReplicaConnection {
    pub replica: ResolvedDatabase,
    pub connection: Result<Arc<AdminConnection>, Error>,
}

/// The engine's view of `connections`.
pub fn replicas(connections: &[ReplicaConnection]) -> Vec<autouser_engine::replica::Replica<'_>> {
    connections.iter().map(|c| autouser_engine::replica::Replica::of(c.connection.as_deref(), &c.replica)).collect()
}

/// See [`Pool::other_databases`].
pub struct PooledDatabases<'a> {
    pool: &'a Pool,
    aws: &'a AwsContext,
    db: &'a ResolvedDatabase,
}

impl autouser_engine::engine::OtherDatabases for PooledDatabases<'_> {
    fn connect<'a>(
        &'a self,
        db_name: &'a str,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Arc<AdminConnection>, Error>> + Send + 'a>> {
        Box::pin(
            async move { self.pool.connection(self.aws, self.db, db_name).await.map(|(connection, _)| connection) },
        )
    }
}
