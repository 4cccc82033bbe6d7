//! The read behind `autouser status`: one query per database ([`sql::STATUS`]), read-only,
//! turned into [`DatabaseFacts`] for [`autouser_policy::status::status`].

use crate::pg::AdminConnection;
use crate::sql;
use crate::Error;
use autouser_policy::config::{Config, DatabaseType, ResolvedDatabase, RDS_IAM_ROLE};
use autouser_policy::status::{DatabaseFacts, DatabaseStatus, MemberFacts, StatusRules};

/// The members of `db`'s managed group and the login roles outside it, read over
/// `connection` in one query. Changes nothing.
pub async fn read_facts(
    connection: &AdminConnection,
    config: &Config,
    db: &ResolvedDatabase,
) -> Result<DatabaseFacts, Error> {
    let rows = connection.client().query(sql::STATUS, &[&config.managed_group]).await.map_err(|source| {
        Error::Postgres { action: "reading the managed users' status".into(), endpoint: db.endpoint(), source }
    })?;
    let mut facts = DatabaseFacts { database: db.name.clone(), ..DatabaseFacts::default() };
    for row in &rows {
        facts.unmanaged_logins = row.get("unmanaged_logins");
        let Some(name) = row.get::<_, Option<String>>("name") else {
            continue;
        };
        let roles: Vec<String> = row.get("foreign_grant_roles");
        let grantors: Vec<String> = row.get("foreign_grant_grantors");
        facts.members.push(MemberFacts {
            name,
            can_login: row.get("can_login"),
            comment: row.get("ledger"),
            member_of: row.get::<_, Vec<String>>("member_of").into_iter().collect(),
            foreign_grants: roles.into_iter().zip(grantors).collect(),
        });
    }
    Ok(facts)
}

/// What sessions on `db` give every managed user besides their `db_roles`.
pub fn rules(config: &Config, db: &ResolvedDatabase) -> StatusRules {
    StatusRules {
        managed_group: config.managed_group.clone(),
        platform_roles: match db.db_type {
            DatabaseType::Rds => [RDS_IAM_ROLE.to_string()].into(),
            DatabaseType::SelfHosted => Default::default(),
        },
        max_session_duration: config.max_session_duration,
    }
}

/// The status of `db`, read over `connection`.
pub async fn status(
    connection: &AdminConnection,
    config: &Config,
    db: &ResolvedDatabase,
) -> Result<DatabaseStatus, Error> {
    let facts = read_facts(connection, config, db).await?;
    Ok(autouser_policy::status::status(&facts, &rules(config, db)))
}
