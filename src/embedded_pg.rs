//! A private PostgreSQL, run from the machine's own binaries when no database URL is given.
//!
//! The cluster lives in `<data-dir>/postgres`, listens only on a Unix socket in `<data-dir>/run`
//! (no TCP port), logs to `<data-dir>/postgres.log`, and is kept across restarts. It runs in its
//! own process group, so a Ctrl-C meant for the server does not stop the database under in-flight
//! appends; the server stops it after its own shutdown, and the kernel stops it (fast shutdown)
//! if the server dies first. PostgreSQL refuses to run as root: run as root, it runs as the
//! unprivileged `postgres` system user.

use std::{
    os::unix::fs::{PermissionsExt, chown},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use sqlx::{ConnectOptions, Connection, postgres::PgConnectOptions};
use tokio::process::{Child, Command};
use tracing::{info, warn};

use crate::error::{ServerError as Error, ServerResult as Result};

/// The role and database the server uses in its private cluster: not a superuser (it may
/// create databases and roles, the latter for the projection sandbox).
const ROLE: &str = "highwater";
/// The cluster's superuser, used only to create `ROLE`. Clusters initialised before this role
/// existed have `ROLE` itself as their superuser (a warning says so at start).
const BOOTSTRAP_ROLE: &str = "highwater_admin";
const DATABASE: &str = "highwater";
/// Names the socket file (`.s.PGSQL.5432`); no TCP port is opened.
const SOCKET_PORT: u16 = 5432;
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

const INSTALL_HINT: &str = "install the PostgreSQL server (Debian/Ubuntu: apt-get install \
    postgresql; Fedora: dnf install postgresql-server; macOS: brew install postgresql), pass \
    --postgres-bin-dir, or set DATABASE_URL to use an existing server";

/// A running private PostgreSQL.
pub struct EmbeddedPostgres {
    child: Option<Child>,
    socket_dir: PathBuf,
    data_dir: PathBuf,
}

/// The unprivileged account PostgreSQL runs as when the server runs as root.
#[derive(Debug, Clone)]
struct SystemUser {
    name: String,
    uid: u32,
    gid: u32,
}

impl EmbeddedPostgres {
    /// Initialises the cluster on first use, starts it and waits until it accepts connections.
    pub async fn start(data_dir: &Path, bin_dir: Option<&Path>) -> Result<Self> {
        let bin_dir = find_binaries(bin_dir)?;
        std::fs::create_dir_all(data_dir).map_err(|e| startup(data_dir, "cannot create", e))?;
        let data_dir =
            std::fs::canonicalize(data_dir).map_err(|e| startup(data_dir, "cannot resolve", e))?;
        let cluster_dir = data_dir.join("postgres");
        let socket_dir = data_dir.join("run");
        let log_file = data_dir.join("postgres.log");
        check_socket_path(&socket_dir)?;
        std::fs::create_dir_all(&socket_dir)
            .map_err(|e| startup(&socket_dir, "cannot create", e))?;
        std::fs::set_permissions(&socket_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| startup(&socket_dir, "cannot set permissions of", e))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_file)
            .map_err(|e| startup(&log_file, "cannot open", e))?;

        let run_as = if unsafe { libc::geteuid() } == 0 {
            Some(postgres_user()?)
        } else {
            None
        };
        if let Some(user) = &run_as {
            check_reachable(&data_dir, user)?;
            for path in [&data_dir, &socket_dir, &log_file] {
                chown(path, Some(user.uid), Some(user.gid))
                    .map_err(|e| startup(path, "cannot chown", e))?;
            }
            info!(user = %user.name, "running as root: PostgreSQL runs as the unprivileged system user");
        }

        if !cluster_dir.join("PG_VERSION").exists() {
            info!(cluster = %cluster_dir.display(), "initialising a private PostgreSQL cluster");
            let mut initdb = Command::new(bin_dir.join("initdb"));
            initdb
                .arg("--pgdata")
                .arg(&cluster_dir)
                .args([
                    "--username",
                    BOOTSTRAP_ROLE,
                    "--auth",
                    "trust",
                    "--encoding",
                    "UTF8",
                    "--locale",
                    "C",
                ])
                .stdin(Stdio::null());
            as_user(&mut initdb, run_as.as_ref());
            let output = initdb
                .output()
                .await
                .map_err(|e| startup(&bin_dir.join("initdb"), "cannot run", e))?;
            if !output.status.success() {
                return Err(Error::Startup(format!(
                    "initdb failed ({}): {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                )));
            }
        }

        let mut postgres = Command::new(bin_dir.join("postgres"));
        postgres
            .arg("-D")
            .arg(&cluster_dir)
            .arg("-c")
            .arg("listen_addresses=")
            .arg("-c")
            .arg(format!("unix_socket_directories={}", socket_dir.display()))
            .arg("-c")
            .arg(format!("port={SOCKET_PORT}"))
            .stdin(Stdio::null())
            .stdout(
                log.try_clone()
                    .map_err(|e| startup(&log_file, "cannot open", e))?,
            )
            .stderr(log)
            // Ctrl-C in a terminal signals the whole foreground group; PostgreSQL must outlive the
            // server's own graceful shutdown, so it gets a group of its own.
            .process_group(0);
        as_user(&mut postgres, run_as.as_ref());
        // SAFETY: prctl is async-signal-safe; the closure touches no memory of the parent.
        unsafe {
            postgres.pre_exec(|| {
                // If the server dies without stopping it, PostgreSQL gets a fast shutdown.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = postgres
            .spawn()
            .map_err(|e| startup(&bin_dir.join("postgres"), "cannot run", e))?;
        let mut embedded = Self {
            child: Some(child),
            socket_dir,
            data_dir,
        };
        embedded.wait_until_ready(&log_file).await?;
        embedded.ensure_server_role().await?;
        embedded.restrict_template().await?;
        info!(
            data_dir = %embedded.data_dir.display(),
            socket_dir = %embedded.socket_dir.display(),
            binaries = %bin_dir.display(),
            "private PostgreSQL is running"
        );
        Ok(embedded)
    }

    /// How to connect to the server's database in this cluster (created on first connect).
    pub fn connect_options(&self) -> PgConnectOptions {
        PgConnectOptions::new()
            .socket(&self.socket_dir)
            .port(SOCKET_PORT)
            .username(ROLE)
            .database(DATABASE)
    }

    /// The socket folder, for clients such as psql (`psql -h <dir> -U highwater`).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    fn bootstrap_options(&self) -> PgConnectOptions {
        self.connect_options()
            .username(BOOTSTRAP_ROLE)
            .database("postgres")
    }

    /// Takes the advisory lock functions from every role but the server's, in the server's
    /// database, once migrated: the migrations cannot, as the server's role is no superuser
    /// (migrations/0019_sandbox_advisory_locks.sql). A cluster whose superuser is the server's role
    /// has had it done by the migration.
    pub async fn restrict_advisory_locks(&self) -> highwater_core::error::Result<()> {
        let options = self.bootstrap_options().database(DATABASE);
        let Ok(mut admin) = options.connect().await else {
            return Ok(());
        };
        let sql = highwater_core::store::database::restrict_sandbox_functions_sql(ROLE)
            .expect("the server's role is a plain name");
        // Plain SQL calling nothing the server's role owns: this runs as the superuser.
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut admin)
            .await?;
        let _ = admin.close().await;
        Ok(())
    }

    /// The same in `template1`, so that every database made in this cluster from now on (the
    /// server's own on first start; a test's) starts with them restricted.
    async fn restrict_template(&self) -> Result<()> {
        let options = self.bootstrap_options().database("template1");
        let Ok(mut admin) = options.connect().await else {
            return Ok(());
        };
        let sql = highwater_core::store::database::restrict_sandbox_functions_sql(ROLE)
            .expect("the server's role is a plain name");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut admin)
            .await
            .map_err(|error| Error::Startup(format!("cannot prepare template1: {error}")))?;
        let _ = admin.close().await;
        Ok(())
    }

    /// Creates the server's role (no superuser) on first start.
    async fn ensure_server_role(&self) -> Result<()> {
        let Ok(mut admin) = self.bootstrap_options().connect().await else {
            warn!(
                data_dir = %self.data_dir.display(),
                "this private cluster predates the server's non-superuser role, so the server runs \
                 as its superuser; start with a new --data-dir to get the safer layout"
            );
            return Ok(());
        };
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1)")
                .bind(ROLE)
                .fetch_one(&mut admin)
                .await?;
        if !exists {
            // ROLE is a constant identifier.
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE ROLE {ROLE} LOGIN CREATEDB CREATEROLE"
            )))
            .execute(&mut admin)
            .await?;
            info!(role = ROLE, "created the server's database role");
        }
        let _ = admin.close().await;
        Ok(())
    }

    async fn wait_until_ready(&mut self, log_file: &Path) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let options = self.bootstrap_options();
        let older = self.connect_options().database("postgres");
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(Error::Startup(format!(
                    "PostgreSQL exited at start ({status}); its log {} ends with:\n{}",
                    log_file.display(),
                    tail(log_file, 15)
                )));
            }
            if let Ok(connection) = options.connect().await {
                let _ = connection.close().await;
                return Ok(());
            }
            if let Ok(connection) = older.connect().await {
                let _ = connection.close().await;
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Startup(format!(
                    "PostgreSQL did not accept connections within {}s; see {}",
                    START_TIMEOUT.as_secs(),
                    log_file.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Fast shutdown: active sessions are rolled back, committed work is flushed.
    pub async fn stop(mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        signal(&child, libc::SIGINT);
        match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
            Ok(Ok(status)) => {
                info!(%status, "private PostgreSQL stopped");
                Ok(())
            }
            Ok(Err(error)) => Err(Error::Stop(format!("waiting for PostgreSQL: {error}"))),
            Err(_) => {
                warn!("PostgreSQL did not stop in time; sending SIGQUIT");
                signal(&child, libc::SIGQUIT);
                let _ = child.wait().await;
                Ok(())
            }
        }
    }
}

impl Drop for EmbeddedPostgres {
    /// A server that stops without `stop` (an error path) still shuts its database down.
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            signal(child, libc::SIGINT);
        }
    }
}

fn signal(child: &Child, signal: libc::c_int) {
    if let Some(pid) = child.id() {
        // SAFETY: plain syscall on our own child's pid.
        unsafe { libc::kill(pid as libc::pid_t, signal) };
    }
}

fn as_user(command: &mut Command, user: Option<&SystemUser>) {
    if let Some(user) = user {
        command
            .uid(user.uid)
            .gid(user.gid)
            .env("HOME", "/tmp")
            .env("USER", &user.name);
    }
}

fn startup(path: &Path, what: &str, error: std::io::Error) -> Error {
    Error::Startup(format!("{what} {}: {error}", path.display()))
}

/// Finds a folder holding both `initdb` and `postgres`.
fn find_binaries(explicit: Option<&Path>) -> Result<PathBuf> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(dir) = explicit {
        return if has_server(dir) {
            Ok(dir.to_path_buf())
        } else {
            Err(Error::Startup(format!(
                "no PostgreSQL server binaries (initdb, postgres) in {}; {INSTALL_HINT}",
                dir.display()
            )))
        };
    }
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    let from_pg_config = std::process::Command::new("pg_config")
        .arg("--bindir")
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()));
    let mut packaged: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry
                .file_name()
                .to_string_lossy()
                .split('.')
                .next()?
                .parse()
                .ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    packaged.sort_by_key(|(version, _)| std::cmp::Reverse(*version));

    on_path
        .into_iter()
        .chain(from_pg_config)
        .chain(packaged.into_iter().map(|(_, dir)| dir))
        .find(|dir| has_server(dir))
        .ok_or_else(|| {
            Error::Startup(format!(
                "no PostgreSQL server binaries (initdb, postgres) found on PATH, through \
                 `pg_config --bindir` or under /usr/lib/postgresql/*/bin; {INSTALL_HINT}"
            ))
        })
}

/// The `postgres` account from the system's user database.
fn postgres_user() -> Result<SystemUser> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            Some(SystemUser {
                name: fields.first()?.to_string(),
                uid: fields.get(2)?.parse().ok()?,
                gid: fields.get(3)?.parse().ok()?,
            })
        })
        .find(|user| user.name == "postgres")
        .ok_or_else(|| {
            Error::Startup(
                "running as root, the private PostgreSQL needs an unprivileged `postgres` system \
                 user (PostgreSQL refuses to run as root); create one (useradd --system postgres), \
                 run highwater as a normal user, or set DATABASE_URL"
                    .into(),
            )
        })
}

/// The `postgres` user must be able to walk down to the data folder.
fn check_reachable(data_dir: &Path, user: &SystemUser) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    for ancestor in data_dir.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(ancestor) else {
            continue;
        };
        let mode = meta.mode();
        let reachable = mode & 0o001 != 0
            || (meta.uid() == user.uid && mode & 0o100 != 0)
            || (meta.gid() == user.gid && mode & 0o010 != 0);
        if !reachable {
            return Err(Error::Startup(format!(
                "the private PostgreSQL runs as the `{}` user, which cannot enter {}; choose a \
                 --data-dir it can reach (such as /var/lib/highwater) or set DATABASE_URL",
                user.name,
                ancestor.display()
            )));
        }
    }
    Ok(())
}

/// Unix socket paths are limited to 107 bytes.
fn check_socket_path(socket_dir: &Path) -> Result<()> {
    let socket = socket_dir.join(format!(".s.PGSQL.{SOCKET_PORT}"));
    if socket.as_os_str().len() > 107 {
        return Err(Error::Startup(format!(
            "the socket path {} is over the 107-byte limit of Unix sockets; choose a shorter \
             --data-dir",
            socket.display()
        )));
    }
    Ok(())
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
