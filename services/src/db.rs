//! Databases: SQLite (embedded default) and PostgreSQL through one `sqlx::AnyPool`.
//!
//! Queries are written once, in the common SQL subset, with `$1, $2, …` placeholders
//! numbered in order of appearance (SQLite reads `$N` positionally too). Migrations differ
//! per database (types such as BLOB/BYTEA) and live under `migrations/<service>/<db>/`.

use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;
use sqlx::AnyConnection;
use sqlx::{AnyPool, Connection, Executor};
use std::time::Duration;
use thiserror::Error;

/// Which database a URL points at.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `sqlite:` URLs.
    Sqlite,
    /// `postgres:` / `postgresql:` URLs.
    Postgres,
}

impl Backend {
    /// Classifies a URL.
    pub fn of(url: &str) -> Result<Self, DbError> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Self::Postgres)
        } else {
            Err(DbError::UnsupportedUrl)
        }
    }
}

/// A service's migrations, one set per database.
#[derive(Debug)]
pub struct Migrations {
    /// For SQLite.
    pub sqlite: &'static Migrator,
    /// For PostgreSQL.
    pub postgres: &'static Migrator,
}

/// Database failures (never shown to API callers; they see an opaque 5xx).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DbError {
    /// The URL is neither `sqlite:` nor `postgres:`.
    #[error("database URL must start with sqlite: or postgres:")]
    UnsupportedUrl,
    /// Connecting or querying failed.
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The SQLite database file cannot be created.
    #[error("cannot create the database file {0}")]
    Io(String),
    /// The database lacks migrations this build needs (`migrate` was not run).
    #[error("the database is not migrated (missing {missing:?}): run the `migrate` command, in Kubernetes the migration Job, first")]
    NotMigrated {
        /// Versions absent from the database.
        missing: Vec<i64>,
    },
}

/// Opens a pool. For SQLite, every connection gets WAL, a busy timeout and foreign keys.
pub async fn connect(url: &str, max_connections: u32) -> Result<AnyPool, DbError> {
    sqlx::any::install_default_drivers();
    let backend = Backend::of(url)?;
    if backend == Backend::Sqlite {
        create_private_sqlite_file(url)?;
    }
    let pool = AnyPoolOptions::new()
        .max_connections(max_connections.max(1))
        .acquire_timeout(Duration::from_secs(10))
        .after_connect(move |conn: &mut AnyConnection, _| {
            Box::pin(async move {
                if backend == Backend::Sqlite {
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA busy_timeout = 10000").await?;
                    conn.execute("PRAGMA foreign_keys = ON").await?;
                    conn.execute("PRAGMA synchronous = FULL").await?;
                    // Deleted content is overwritten with zeros (in the database file; the WAL
                    // keeps old frames until a checkpoint reuses them).
                    conn.execute("PRAGMA secure_delete = ON").await?;
                }
                Ok(())
            })
        })
        .connect(url)
        .await?;
    Ok(pool)
}

/// Creates a SQLite database file that does not exist yet with mode 0600, so that it — and
/// the `-wal`/`-shm` files SQLite creates with its permissions — is readable by this user
/// only (sqlx would create it 0644).
fn create_private_sqlite_file(url: &str) -> Result<(), DbError> {
    let rest = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    let path = rest.split('?').next().unwrap_or("");
    if path.is_empty() || path.starts_with(':') {
        return Ok(()); // in-memory
    }
    match crate::private_fs::options().write(true).create_new(true).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(DbError::Io(format!("{path}: {e}"))),
    }
}

/// Runs the migrations for the URL's database.
pub async fn migrate(pool: &AnyPool, url: &str, migrations: &Migrations) -> Result<(), DbError> {
    let migrator = match Backend::of(url)? {
        Backend::Sqlite => migrations.sqlite,
        Backend::Postgres => migrations.postgres,
    };
    migrator.run(pool).await?;
    Ok(())
}

/// Checks that every migration of this build has been applied (servers call it at start:
/// migrations run only through the `migrate` command, never on start).
pub async fn require_migrated(
    pool: &AnyPool,
    url: &str,
    migrations: &Migrations,
) -> Result<(), DbError> {
    use sqlx::Row;
    let migrator = match Backend::of(url)? {
        Backend::Sqlite => migrations.sqlite,
        Backend::Postgres => migrations.postgres,
    };
    let applied: Vec<i64> =
        match sqlx::query("SELECT version FROM _sqlx_migrations WHERE success = TRUE")
            .fetch_all(pool)
            .await
        {
            Ok(rows) => rows.iter().filter_map(|r| r.try_get::<i64, _>("version").ok()).collect(),
            // No bookkeeping table: nothing was ever migrated.
            Err(_) => Vec::new(),
        };
    let missing: Vec<i64> =
        migrator.iter().map(|m| m.version).filter(|v| !applied.contains(v)).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(DbError::NotMigrated { missing })
    }
}

/// Liveness of the database (for `/readyz`).
pub async fn ping(pool: &AnyPool) -> Result<(), DbError> {
    let mut conn = pool.acquire().await?;
    conn.ping().await?;
    Ok(())
}

/// The environment variable naming the PostgreSQL server for tests.
pub const TEST_DATABASE_ENV: &str = "CRYPTFLOW_TEST_DATABASE_URL";

/// For tests: a fresh, empty PostgreSQL database on the server named by
/// [`TEST_DATABASE_ENV`], returned as a URL. `Ok(None)` when the variable is unset (the
/// caller skips, saying why); an error when it is set but the server is unreachable, so CI
/// fails rather than silently skipping.
pub async fn fresh_postgres_database(tag: &str) -> Result<Option<String>, DbError> {
    let Ok(base) = std::env::var(TEST_DATABASE_ENV) else {
        eprintln!("skipping PostgreSQL: {TEST_DATABASE_ENV} is not set");
        return Ok(None);
    };
    sqlx::any::install_default_drivers();
    let mut admin = AnyConnection::connect(&base).await?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let name = format!("cf_{}_{}_{}", tag, std::process::id(), nanos % 1_000_000_000);
    admin.execute(format!("CREATE DATABASE {name}").as_str()).await?;
    admin.close().await?;
    let (prefix, _) = base.rsplit_once('/').ok_or(DbError::UnsupportedUrl)?;
    Ok(Some(format!("{prefix}/{name}")))
}

/// For tests: drops a database made by [`fresh_postgres_database`] (no-op for SQLite URLs).
pub async fn drop_test_database(url: &str) -> Result<(), DbError> {
    if Backend::of(url)? != Backend::Postgres {
        return Ok(());
    }
    let Ok(base) = std::env::var(TEST_DATABASE_ENV) else { return Ok(()) };
    let Some((_, name)) = url.rsplit_once('/') else { return Ok(()) };
    if !name.starts_with("cf_") || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Ok(()); // only ever drop what fresh_postgres_database made
    }
    let mut admin = AnyConnection::connect(&base).await?;
    admin.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await?;
    admin.close().await?;
    Ok(())
}
