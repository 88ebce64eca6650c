//! Talking SQL to PostgreSQL: connection URLs with their password kept apart, connections,
//! and the catalog statements the executors share (versions, row counts, database DDL).
//!
//! A database URL from the config carries credentials. [`PgUrl`] splits the password off at
//! parse time so that everything printable (command lines, logs, errors) is built from the
//! URL without it; the password only reaches sqlx's connect options and `PGPASSWORD`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use percent_encoding::{NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection};
use url::Url;
use warden_shared::names::quote_ident;

use crate::error::{AgentError, AgentResult};

/// Shown instead of a password.
pub const REDACTED: &str = "***";

/// URL parameters sqlx understands; the others are for libpq (the client tools) only.
const SQLX_PARAMETERS: &[&str] = &[
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "application_name",
    "options",
];

/// URL parameters that client programs also take from the environment, by variable.
const LIBPQ_ENV_PARAMETERS: [(&str, &str); 6] = [
    ("sslmode", "PGSSLMODE"),
    ("sslrootcert", "PGSSLROOTCERT"),
    ("sslcert", "PGSSLCERT"),
    ("sslkey", "PGSSLKEY"),
    ("connect_timeout", "PGCONNECT_TIMEOUT"),
    ("options", "PGOPTIONS"),
];

/// A `postgres://` URL whose password (from the user info or a `password=` parameter) is
/// held apart from the rest.
#[derive(Clone, PartialEq, Eq)]
pub struct PgUrl {
    /// The URL without any password; safe to put on a command line.
    url: Url,
    password: Option<String>,
}

impl PgUrl {
    /// Parses a libpq-style URL. The error never contains the URL itself.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut url = Url::parse(text).map_err(|e| format!("not a URL ({e})"))?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(format!(
                "scheme {:?} is not postgres:// or postgresql://",
                url.scheme()
            ));
        }
        let mut password = match url.password() {
            Some(encoded) => Some(decode(encoded)?),
            None => None,
        };
        if url.password().is_some() {
            // Cannot fail: the URL already has a host, or it would have no password.
            let _ = url.set_password(None);
        }
        let query_password = query_value(&url, "password").map(decode).transpose()?;
        if query_password.is_some() {
            retain_query(&mut url, |key| key != "password");
            password = password.or(query_password);
        }
        if !url.path().trim_start_matches('/').is_empty() && query_value(&url, "dbname").is_some() {
            return Err(
                "it names the database twice (in the path and as ?dbname=); keep one".to_owned(),
            );
        }
        let parsed = Self { url, password };
        // sqlx must accept it too, or every connection would fail later.
        parsed
            .connect_options()
            .map_err(|e| format!("not usable as a connection URL ({e})"))?;
        Ok(parsed)
    }

    /// Returns the URL without its password, for `--dbname` of the client tools.
    pub fn without_password(&self) -> &str {
        self.url.as_str()
    }

    /// Returns the password, if the URL had one.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// Returns the URL with `***` where its password was, for `--dump-config`.
    pub fn redacted(&self) -> String {
        let mut shown = self.url.clone();
        // libpq's passphrase of the client key is a credential too.
        edit_query(&mut shown, |key, pair| {
            Some(if key == "sslpassword" {
                format!("{key}={REDACTED}")
            } else {
                pair.to_owned()
            })
        });
        // A URL without a host (Unix socket given as `?host=`) cannot hold user info.
        if self.password.is_some() && shown.set_password(Some(REDACTED)).is_err() {
            shown.query_pairs_mut().append_pair("password", REDACTED);
        }
        shown.into()
    }

    /// Returns the database the URL connects to: its path, else a `dbname=` parameter, else
    /// (as libpq does) the user name.
    pub fn database(&self) -> Option<String> {
        let path = self.url.path().trim_start_matches('/');
        let encoded = if path.is_empty() {
            query_value(&self.url, "dbname").unwrap_or(self.url.username())
        } else {
            path
        };
        (!encoded.is_empty()).then(|| percent_decode_str(encoded).decode_utf8_lossy().into_owned())
    }

    /// Returns the URL of database `name` on the same server, with the same credentials.
    pub fn with_database(&self, name: &str) -> PgUrl {
        let mut url = self.url.clone();
        url.set_path(&format!("/{}", utf8_percent_encode(name, NON_ALPHANUMERIC)));
        // A `dbname=` parameter would win over the path in libpq.
        retain_query(&mut url, |key| key != "dbname");
        PgUrl {
            url,
            password: self.password.clone(),
        }
    }

    /// Replaces every occurrence of the password in `text` by `***`: driver and server
    /// messages are not supposed to echo it, but an error text must never carry it.
    pub fn redact(&self, text: &str) -> String {
        match &self.password {
            Some(password) if !password.is_empty() => {
                let encoded = utf8_percent_encode(password, NON_ALPHANUMERIC).to_string();
                text.replace(password.as_str(), REDACTED)
                    .replace(&encoded, REDACTED)
            }
            _ => text.to_owned(),
        }
    }

    /// Returns the password as is and percent-encoded (as `DATABASE_URL` carries it), when
    /// the URL has a non-empty one.
    pub fn password_forms(&self) -> Vec<String> {
        let Some(password) = self.password.as_deref().filter(|p| !p.is_empty()) else {
            return Vec::new();
        };
        let encoded = utf8_percent_encode(password, NON_ALPHANUMERIC).to_string();
        if encoded == password {
            vec![encoded]
        } else {
            vec![password.to_owned(), encoded]
        }
    }

    /// Returns every text of the URL that gives a credential away, longest first: the
    /// password and its percent-encoding (as `DATABASE_URL` carries it), and libpq's
    /// `sslpassword` (the passphrase of the client key) as written and decoded. For
    /// redacting what a program started with this URL prints.
    pub fn secrets(&self) -> Vec<String> {
        let mut secrets = self.password_forms();
        if let Some(passphrase) = query_value(&self.url, "sslpassword").filter(|v| !v.is_empty()) {
            secrets.push(passphrase.to_owned());
            secrets.push(
                percent_decode_str(passphrase)
                    .decode_utf8_lossy()
                    .into_owned(),
            );
        }
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        secrets
    }

    /// Returns the libpq environment that points a client program at this database:
    /// `PGHOST`, `PGPORT`, `PGDATABASE`, `PGUSER`, `PGPASSWORD`, the TLS and connection
    /// parameters of the URL (`?sslmode=` as `PGSSLMODE`, ...), and `DATABASE_URL`, the whole
    /// URL with its password, for tools that read a URL. Only what the URL says is set.
    pub fn client_env(&self) -> Vec<(&'static str, String)> {
        let decoded = |text: &str| percent_decode_str(text).decode_utf8_lossy().into_owned();
        let mut env = Vec::new();
        let host = match self.url.host_str() {
            // PGHOST takes an IPv6 address without its brackets.
            Some(host) if !host.is_empty() => Some(
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
            ),
            _ => query_value(&self.url, "host").map(decoded),
        };
        if let Some(host) = host {
            env.push(("PGHOST", host));
        }
        let port = match self.url.port() {
            Some(port) => Some(port.to_string()),
            None => query_value(&self.url, "port").map(decoded),
        };
        if let Some(port) = port {
            env.push(("PGPORT", port));
        }
        if let Some(database) = self.database() {
            env.push(("PGDATABASE", database));
        }
        let user = match self.url.username() {
            "" => query_value(&self.url, "user").map(decoded),
            user => Some(decoded(user)),
        };
        if let Some(user) = user {
            env.push(("PGUSER", user));
        }
        if let Some(password) = &self.password {
            env.push(("PGPASSWORD", password.clone()));
        }
        for (parameter, variable) in LIBPQ_ENV_PARAMETERS {
            if let Some(value) = query_value(&self.url, parameter) {
                env.push((variable, decoded(value)));
            }
        }
        env.push(("DATABASE_URL", self.with_password()));
        env
    }

    /// Returns the whole URL, password included: only for a child's environment.
    fn with_password(&self) -> String {
        let mut url = self.url.clone();
        let Some(password) = &self.password else {
            return url.into();
        };
        let encoded = utf8_percent_encode(password, NON_ALPHANUMERIC).to_string();
        // A URL without a host (Unix socket given as `?host=`) cannot hold user info.
        if url.set_password(Some(&encoded)).is_err() {
            let query = match url.query() {
                Some(query) if !query.is_empty() => format!("{query}&password={encoded}"),
                _ => format!("password={encoded}"),
            };
            url.set_query(Some(&query));
        }
        url.into()
    }

    fn connect_options(&self) -> Result<PgConnectOptions, sqlx::Error> {
        // sqlx logs parameters it does not know with their values at warn level, and libpq
        // has some that are secret (sslpassword); those only matter to the client tools.
        let mut url = self.url.clone();
        retain_query(&mut url, |key| SQLX_PARAMETERS.contains(&key));
        let mut options = PgConnectOptions::from_str(url.as_str())?
            .application_name("warden-agent")
            // Statements name databases and tables, which belong in debug output only; slow
            // ones are expected (DROP DATABASE waits for a checkpoint, count(*) scans).
            .log_statements(tracing::log::LevelFilter::Debug)
            .log_slow_statements(tracing::log::LevelFilter::Debug, Duration::from_secs(1));
        if let Some(password) = &self.password {
            options = options.password(password);
        }
        Ok(options)
    }
}

impl fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Percent-decodes like libpq does (no `+` for space).
fn decode(encoded: &str) -> Result<String, String> {
    percent_decode_str(encoded)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| "its password is not valid UTF-8 after percent-decoding".to_owned())
}

fn query_value<'u>(url: &'u Url, key: &str) -> Option<&'u str> {
    url.query()?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// Keeps the query parameters whose key passes `keep`.
fn retain_query(url: &mut Url, keep: impl Fn(&str) -> bool) {
    edit_query(url, |key, pair| keep(key).then(|| pair.to_owned()));
}

/// Rewrites the query parameter by parameter (`edit` gets the key and the raw `key=value`,
/// and returns the replacement or `None` to drop it), keeping the rest byte for byte:
/// rebuilding the query with form encoding would turn spaces into `+`, which libpq keeps
/// literally.
fn edit_query(url: &mut Url, edit: impl Fn(&str, &str) -> Option<String>) {
    let Some(query) = url.query() else { return };
    let edited: Vec<String> = query
        .split('&')
        .filter_map(|pair| edit(pair.split('=').next().unwrap_or_default(), pair))
        .collect();
    let edited = edited.join("&");
    url.set_query((!edited.is_empty()).then_some(edited.as_str()));
}

/// One database reachable over SQL, with a label for messages (`db1/app`, or
/// `"new" on the server of db1/app`).
#[derive(Debug, Clone)]
pub struct PgDatabase {
    /// Shown in errors and logs in place of the URL.
    pub label: String,
    /// The database name on the server.
    pub name: String,
    pub url: PgUrl,
}

impl PgDatabase {
    /// Describes the database at `url`, shown as `label`.
    pub fn new(label: String, url: PgUrl) -> Self {
        let name = url.database().unwrap_or_default();
        Self { label, name, url }
    }

    /// Returns database `name` on the same server, reached with the same credentials.
    pub fn sibling(&self, name: &str) -> PgDatabase {
        PgDatabase {
            label: format!("database {name:?} on the server of {}", self.label),
            name: name.to_owned(),
            url: self.url.with_database(name),
        }
    }

    /// Opens a connection.
    pub async fn connect(&self) -> AgentResult<PgConnection> {
        let options = self
            .url
            .connect_options()
            .map_err(self.sql_error("cannot build connection options for"))?;
        PgConnection::connect_with(&options)
            .await
            .map_err(self.sql_error("cannot connect to"))
    }

    /// Returns a mapper from `sqlx::Error` to an error naming what failed on this database,
    /// with the password redacted from the driver's message.
    pub fn sql_error(&self, what: &str) -> impl FnOnce(sqlx::Error) -> AgentError + '_ {
        let context = format!("{what} {}", self.label);
        move |e| AgentError::Postgres {
            context,
            message: self.url.redact(&e.to_string()),
        }
    }

    /// Executes one statement with the simple query protocol (DDL such as CREATE DATABASE
    /// cannot run in the implicit transaction of a prepared statement on every version).
    pub async fn execute(&self, conn: &mut PgConnection, sql: String) -> AgentResult<()> {
        sqlx::raw_sql(AssertSqlSafe(sql.clone()))
            .execute(conn)
            .await
            .map_err(self.sql_error(&format!("{sql} failed on")))?;
        Ok(())
    }
}

/// `server_version` and `server_version_num` of a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerVersion {
    /// As the server reports it, e.g. "15.18 (Debian 15.18-0+deb12u1)".
    pub text: String,
    /// e.g. 150018.
    pub num: u32,
}

/// Reads the server's version.
pub async fn server_version(
    db: &PgDatabase,
    conn: &mut PgConnection,
) -> AgentResult<ServerVersion> {
    let (text, num): (String, i32) = sqlx::query_as(
        "SELECT current_setting('server_version'), current_setting('server_version_num')::int4",
    )
    .fetch_one(conn)
    .await
    .map_err(db.sql_error("cannot read the server version of"))?;
    Ok(ServerVersion {
        text,
        num: u32::try_from(num).unwrap_or_default(),
    })
}

/// Lists the tables whose rows a dump carries: ordinary tables and partitions (relkind
/// `r`; a partitioned parent holds no rows itself), outside the system schemas, and not
/// members of an extension (pg_dump does not dump those as tables).
pub async fn list_tables(
    db: &PgDatabase,
    conn: &mut PgConnection,
) -> AgentResult<Vec<(String, String)>> {
    sqlx::query_as(
        "SELECT n.nspname::text, c.relname::text \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind = 'r' \
           AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
           AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%' \
           AND NOT EXISTS (SELECT 1 FROM pg_depend d \
                           WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid \
                             AND d.deptype = 'e') \
         ORDER BY 1, 2",
    )
    .fetch_all(conn)
    .await
    .map_err(db.sql_error("cannot list the tables of"))
}

/// Takes ACCESS SHARE locks on `tables` until the transaction ends, as pg_dump does for
/// its own session: a TRUNCATE or a rewriting ALTER TABLE, which are not MVCC-safe, cannot
/// commit meanwhile, so counting rows in the transaction's snapshot later stays exact. Without
/// ONLY, inheritance children are locked too.
pub async fn lock_tables(
    db: &PgDatabase,
    conn: &mut PgConnection,
    tables: &[(String, String)],
) -> AgentResult<()> {
    if tables.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = tables
        .iter()
        .map(|(schema, table)| format!("{}.{}", quote_ident(schema), quote_ident(table)))
        .collect();
    let sql = format!("LOCK TABLE {} IN ACCESS SHARE MODE", names.join(", "));
    sqlx::query(AssertSqlSafe(sql))
        .execute(conn)
        .await
        .map_err(db.sql_error("cannot lock the tables of"))?;
    Ok(())
}

/// Counts the rows of one table exactly.
pub async fn count_rows(
    db: &PgDatabase,
    conn: &mut PgConnection,
    schema: &str,
    table: &str,
) -> AgentResult<u64> {
    let qualified = format!("{}.{}", quote_ident(schema), quote_ident(table));
    let count: i64 = sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {qualified}")))
        .fetch_one(conn)
        .await
        .map_err(db.sql_error(&format!("cannot count the rows of {qualified} in")))?;
    Ok(u64::try_from(count).unwrap_or_default())
}

/// Returns whether a database of this name exists on the server.
pub async fn database_exists(
    db: &PgDatabase,
    conn: &mut PgConnection,
    name: &str,
) -> AgentResult<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(conn)
        .await
        .map_err(db.sql_error("cannot list the databases of"))
}

/// Ends every other session connected to database `name`.
pub async fn terminate_backends(
    db: &PgDatabase,
    conn: &mut PgConnection,
    name: &str,
) -> AgentResult<()> {
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(name)
    .execute(conn)
    .await
    .map_err(db.sql_error(&format!("cannot end the sessions on {name:?} of")))?;
    Ok(())
}

/// Drops database `name` if it exists, ending its sessions first (DROP DATABASE then
/// waits up to 5 s for them to go, on every server version).
pub async fn drop_database(
    db: &PgDatabase,
    conn: &mut PgConnection,
    name: &str,
) -> AgentResult<()> {
    terminate_backends(db, conn, name).await?;
    db.execute(
        conn,
        format!("DROP DATABASE IF EXISTS {}", quote_ident(name)),
    )
    .await
}

/// Sets whether database `name` accepts connections.
pub async fn allow_connections(
    db: &PgDatabase,
    conn: &mut PgConnection,
    name: &str,
    allow: bool,
) -> AgentResult<()> {
    db.execute(
        conn,
        format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS {allow}",
            quote_ident(name)
        ),
    )
    .await
}

/// Renames database `from` to `to`.
pub async fn rename_database(
    db: &PgDatabase,
    conn: &mut PgConnection,
    from: &str,
    to: &str,
) -> AgentResult<()> {
    db.execute(
        conn,
        format!(
            "ALTER DATABASE {} RENAME TO {}",
            quote_ident(from),
            quote_ident(to)
        ),
    )
    .await
}

/// Owner and connection flag of a database, read before it is replaced.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub owner: String,
    pub allow_connections: bool,
}

/// Reads the owner and `datallowconn` of database `name`.
pub async fn database_settings(
    db: &PgDatabase,
    conn: &mut PgConnection,
    name: &str,
) -> AgentResult<DatabaseSettings> {
    let (owner, allow_connections): (String, bool) = sqlx::query_as(
        "SELECT pg_get_userbyid(datdba)::text, datallowconn FROM pg_database WHERE datname = $1",
    )
    .bind(name)
    .fetch_optional(conn)
    .await
    .map_err(db.sql_error("cannot read the databases of"))?
    .ok_or_else(|| AgentError::Postgres {
        context: format!("cannot replace {}", db.label),
        message: format!("database {name:?} does not exist on its server"),
    })?;
    Ok(DatabaseSettings {
        owner,
        allow_connections,
    })
}

/// Sets the owner of database `name`.
pub async fn set_owner(
    db: &PgDatabase,
    conn: &mut PgConnection,
    name: &str,
    owner: &str,
) -> AgentResult<()> {
    db.execute(
        conn,
        format!(
            "ALTER DATABASE {} OWNER TO {}",
            quote_ident(name),
            quote_ident(owner)
        ),
    )
    .await
}

/// Creates an empty database `name` from template0 (a clean target for pg_restore).
pub async fn create_database(
    db: &PgDatabase,
    conn: &mut PgConnection,
    name: &str,
) -> AgentResult<()> {
    db.execute(
        conn,
        format!("CREATE DATABASE {} TEMPLATE template0", quote_ident(name)),
    )
    .await
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn password_is_split_off() {
        let url = PgUrl::parse("postgres://warden:s%40cret@10.0.0.5:5432/app?sslmode=require")
            .expect("valid");
        assert_eq!(url.password(), Some("s@cret"));
        assert_eq!(
            url.without_password(),
            "postgres://warden@10.0.0.5:5432/app?sslmode=require"
        );
        assert_eq!(
            url.redacted(),
            "postgres://warden:***@10.0.0.5:5432/app?sslmode=require"
        );
        assert_eq!(format!("{url:?}"), url.redacted());
        assert_eq!(url.database().as_deref(), Some("app"));
    }

    #[test]
    fn password_parameter_is_split_off_and_other_parameters_kept_verbatim() {
        let url = PgUrl::parse(
            "postgresql://warden@db/app?application_name=a%20b&password=pw&sslmode=verify-full",
        )
        .expect("valid");
        assert_eq!(url.password(), Some("pw"));
        assert_eq!(
            url.without_password(),
            "postgresql://warden@db/app?application_name=a%20b&sslmode=verify-full"
        );
        assert!(!url.redacted().contains("pw&"));
        assert!(
            url.redacted().ends_with("sslmode=verify-full"),
            "{}",
            url.redacted()
        );
        let socket = PgUrl::parse("postgres:///app?host=/tmp&password=pw").expect("valid");
        assert_eq!(socket.redacted(), "postgres:///app?host=/tmp&password=***");
    }

    #[test]
    fn libpq_only_parameters_reach_the_tools_but_not_sqlx_or_the_screen() {
        let url = PgUrl::parse(
            "postgres://u@h/db?sslkey=/k&sslpassword=keypass&connect_timeout=5&sslmode=require",
        )
        .expect("valid");
        assert!(url.without_password().contains("connect_timeout=5"));
        assert!(url.redacted().contains("sslpassword=***&connect_timeout=5"));
        assert!(!url.redacted().contains("keypass"));
        let options = url.connect_options().expect("sqlx accepts it");
        assert!(matches!(
            options.get_ssl_mode(),
            sqlx::postgres::PgSslMode::Require
        ));
    }

    #[test]
    fn url_without_password_is_unchanged() {
        let text = "postgres://postgres@127.0.0.1:5433/app";
        let url = PgUrl::parse(text).expect("valid");
        assert_eq!(url.password(), None);
        assert_eq!(url.without_password(), text);
        assert_eq!(url.redacted(), text);
    }

    #[test]
    fn other_database_on_same_server() {
        let url = PgUrl::parse("postgres://u:pw@h:5432/app?sslmode=disable").expect("valid");
        let other = url.with_database("we\"ird db ü/?#");
        assert_eq!(other.password(), Some("pw"));
        assert_eq!(other.database().as_deref(), Some("we\"ird db ü/?#"));
        assert!(!other.without_password().contains("dbname"));
        assert!(other.without_password().ends_with("?sslmode=disable"));
        let options = other.connect_options().expect("sqlx accepts it");
        assert_eq!(options.get_database(), Some("we\"ird db ü/?#"));
    }

    #[test]
    fn client_env_points_libpq_at_the_database() {
        let url = PgUrl::parse(
            "postgres://war%20den:p%40ss@[::1]:6543/my%20app?sslmode=require&application_name=x",
        )
        .expect("valid");
        let env: BTreeMap<&str, String> = url.client_env().into_iter().collect();
        assert_eq!(env["PGHOST"], "::1");
        assert_eq!(env["PGPORT"], "6543");
        assert_eq!(env["PGDATABASE"], "my app");
        assert_eq!(env["PGUSER"], "war den");
        assert_eq!(env["PGPASSWORD"], "p@ss");
        assert_eq!(env["PGSSLMODE"], "require");
        assert_eq!(
            env["DATABASE_URL"],
            "postgres://war%20den:p%40ss@[::1]:6543/my%20app?sslmode=require&application_name=x"
        );
        let reparsed = PgUrl::parse(&env["DATABASE_URL"]).expect("a URL again");
        assert_eq!(reparsed, url);

        // A Unix socket and no password.
        let socket = PgUrl::parse("postgresql:///app?host=%2Fvar%2Frun%2Fpostgresql&user=app")
            .expect("valid");
        let env: BTreeMap<&str, String> = socket.client_env().into_iter().collect();
        assert_eq!(env["PGHOST"], "/var/run/postgresql");
        assert_eq!(env["PGUSER"], "app");
        assert_eq!(env["PGDATABASE"], "app");
        assert!(!env.contains_key("PGPASSWORD") && !env.contains_key("PGPORT"));
        let with_password =
            PgUrl::parse("postgresql:///app?host=%2Ftmp&password=s%26cret").expect("valid");
        let env: BTreeMap<&str, String> = with_password.client_env().into_iter().collect();
        assert_eq!(env["PGPASSWORD"], "s&cret");
        let reparsed = PgUrl::parse(&env["DATABASE_URL"]).expect("a URL again");
        assert_eq!(reparsed.password(), Some("s&cret"));
    }

    #[test]
    fn a_database_named_twice_is_refused() {
        // libpq lets ?dbname= win over the path; a replace must never guess which one is meant.
        let error = PgUrl::parse("postgres://h/app?dbname=billing").expect_err("ambiguous");
        assert!(error.contains("names the database twice"), "{error}");
        assert!(PgUrl::parse("postgres://h/?dbname=billing").is_ok());
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_them() {
        for bad in [
            "mysql://u:secret@h/db",
            "not a url secret",
            "postgres://u:secret@h:99999/db",
        ] {
            let err = PgUrl::parse(bad).expect_err(bad);
            assert!(!err.contains("secret"), "{err}");
        }
    }

    #[test]
    fn secrets_are_the_password_encoded_and_not_and_the_key_passphrase() {
        let url = PgUrl::parse("postgres://u:p%40ss%20w@h/db?sslpassword=k%2Fey&sslmode=require")
            .expect("valid");
        assert_eq!(url.secrets(), ["p%40ss%20w", "p@ss w", "k%2Fey", "k/ey"]);
        let plain = PgUrl::parse("postgres://u:secret@h/db").expect("valid");
        assert_eq!(plain.secrets(), ["secret"]);
        let none = PgUrl::parse("postgres://u@h/db").expect("valid");
        assert!(none.secrets().is_empty());
    }

    #[test]
    fn redact_replaces_plain_and_encoded_password() {
        let url = PgUrl::parse("postgres://u:p%20w@h/db").expect("valid");
        assert_eq!(
            url.redact("auth failed: p w / p%20w"),
            "auth failed: *** / ***"
        );
    }
}
