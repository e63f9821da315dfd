//! One PostgreSQL server of a local cluster: its files, its process, admin queries.

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::process::{self, RunAs};
use crate::{BoxError, Lsn};

/// The server process of a node, if it runs.
#[derive(Debug)]
pub(super) struct ServerProcess {
    pub(super) pid: u32,
    /// `None` for a server started by another process (a detached cluster attached to).
    pub(super) child: Option<Child>,
}

#[derive(Debug)]
pub(super) struct Node {
    pub(super) name: String,
    pub(super) port: Mutex<u16>,
    pub(super) data_dir: PathBuf,
    pub(super) log: PathBuf,
    pub(super) process: Mutex<Option<ServerProcess>>,
    /// The directory of the server's Unix socket, when the harness connects through
    /// it (clusters whose TCP logins need TLS or a password); `None`: TCP, trust.
    pub(super) socket_dir: Option<PathBuf>,
}

/// How waiting for a freshly spawned server ended.
pub(super) enum Startup {
    Ready,
    /// The port was taken between choosing it and binding it: pick another.
    PortTaken,
}

impl Node {
    pub(super) fn new(cluster_dir: &Path, name: &str, port: u16) -> Self {
        Node {
            name: name.to_owned(),
            port: Mutex::new(port),
            data_dir: cluster_dir.join(name),
            log: cluster_dir.join(format!("{name}.log")),
            process: Mutex::new(None),
            socket_dir: None,
        }
    }

    /// The same node, reached by the harness through a Unix socket in `dir`.
    pub(super) fn with_socket_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.socket_dir = dir;
        self
    }

    pub(super) fn port(&self) -> u16 {
        *lock(&self.port)
    }

    /// The superuser's URL: over TCP on 127.0.0.1, or through the Unix socket (its
    /// directory percent-encoded in the host part, which tokio-postgres and libpq
    /// both read as a socket directory, and which needs no quoting in a shell).
    pub(super) fn url(&self) -> String {
        match &self.socket_dir {
            None => format!("postgres://postgres@127.0.0.1:{}/postgres", self.port()),
            Some(dir) => format!(
                "postgres://postgres@{}:{}/postgres",
                percent_encode(&dir.to_string_lossy()),
                self.port()
            ),
        }
    }

    /// A URL for `user` (and `password`) over TCP on 127.0.0.1, with no options.
    pub(super) fn tcp_url_as(&self, user: &str, password: Option<&str>) -> String {
        let credentials = match password {
            Some(password) => format!("{}:{}", percent_encode(user), percent_encode(password)),
            None => percent_encode(user),
        };
        format!(
            "postgres://{credentials}@127.0.0.1:{}/postgres",
            self.port()
        )
    }

    pub(super) fn pid(&self) -> Option<u32> {
        lock(&self.process).as_ref().map(|p| p.pid)
    }

    /// Spawn the postmaster in its own process group (so freezing it freezes its
    /// backends too, and a Ctrl-C aimed at the test run does not reach it).
    pub(super) fn spawn(&self, bindir: &Path, run_as: RunAs) -> io::Result<()> {
        use std::os::unix::process::CommandExt;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = run_as
            .command(&bindir.join("postgres"))
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-c")
            .arg(format!("port={}", self.port()))
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()?;
        *lock(&self.process) = Some(ServerProcess {
            pid: child.id(),
            child: Some(child),
        });
        Ok(())
    }

    /// Wait until the server accepts connections (a hot standby: once consistent).
    pub(super) async fn wait_ready(&self, timeout: Duration) -> Result<Startup, BoxError> {
        let deadline = Instant::now() + timeout;
        loop {
            let last_error = match self.connect().await {
                Ok(_) => return Ok(Startup::Ready),
                Err(e) => e,
            };
            if let Some(outcome) =
                startup_failed(self.has_exited(), &self.log, deadline, timeout, &last_error)
            {
                return outcome;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn has_exited(&self) -> bool {
        let mut guard = lock(&self.process);
        match guard.as_mut() {
            Some(ServerProcess {
                child: Some(child), ..
            }) => !matches!(child.try_wait(), Ok(None)),
            Some(ServerProcess { pid, child: None }) => process::is_gone(*pid),
            None => true,
        }
    }

    /// Stop the server (fast shutdown by pid) and wait until it is gone. Blocking.
    pub(super) fn stop_blocking(&self) -> bool {
        let taken = lock(&self.process).take();
        match taken {
            None => true,
            Some(ServerProcess { pid, mut child }) => process::stop_server(pid, child.as_mut()),
        }
    }

    /// A fresh admin connection (its driver task runs on the current runtime).
    pub(super) async fn connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) =
            tokio_postgres::connect(&self.url(), tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            // Errors surface through the client; the task only drives the socket.
            let _ = connection.await;
        });
        Ok(client)
    }

    /// First column of the first row of `sql`, as text (`None` for SQL NULL or no row).
    pub(super) async fn query_text(&self, sql: &str) -> Result<Option<String>, BoxError> {
        let client = self.connect().await?;
        let messages = client.simple_query(sql).await?;
        for message in messages {
            if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
                return Ok(row.get(0).map(str::to_owned));
            }
        }
        Ok(None)
    }

    pub(super) async fn query_lsn(&self, sql: &str) -> Result<Option<Lsn>, BoxError> {
        match self.query_text(sql).await? {
            None => Ok(None),
            Some(text) => Ok(Some(text.parse::<Lsn>()?)),
        }
    }

    pub(super) async fn in_recovery(&self) -> Result<bool, BoxError> {
        Ok(self
            .query_text("SELECT pg_is_in_recovery()")
            .await?
            .as_deref()
            == Some("t"))
    }
}

/// Percent-encode everything but RFC 3986's unreserved characters.
pub(super) fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// After a failed readiness probe of a server starting up: `Some` when waiting
/// is over (it exited, because its port was taken or with the tail of its log as
/// the reason, or `timeout` passed), `None` to probe again.
pub(super) fn startup_failed(
    exited: bool,
    log: &Path,
    deadline: Instant,
    timeout: Duration,
    last_error: &dyn std::fmt::Display,
) -> Option<Result<Startup, BoxError>> {
    if exited {
        let log = std::fs::read_to_string(log).unwrap_or_default();
        // PostgreSQL says "could not bind", MariaDB "Address already in use".
        if log.contains("could not bind") || log.contains("Address already in use") {
            return Some(Ok(Startup::PortTaken));
        }
        return Some(Err(format!(
            "server exited during start-up:\n{}",
            process::tail(&log, 15)
        )
        .into()));
    }
    (Instant::now() >= deadline)
        .then(|| Err(format!("not accepting connections after {timeout:?}: {last_error}").into()))
}

/// Poison-tolerant lock: a panicking test must not stop the cluster from being dropped.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Poll `check` every few milliseconds until it yields `Some`, or fail after `timeout`.
pub(super) async fn poll_until<T, F, Fut>(
    timeout: Duration,
    what: &str,
    mut check: F,
) -> Result<T, BoxError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, BoxError>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(format!("{what}: not reached within {timeout:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_encode_credentials_and_socket_directories() {
        let node = Node::new(Path::new("/dev/shm/rws-abc"), "primary", 5433);
        assert_eq!(node.url(), "postgres://postgres@127.0.0.1:5433/postgres");
        assert_eq!(
            node.tcp_url_as("app", Some("p@ss:w/rd")),
            "postgres://app:p%40ss%3Aw%2Frd@127.0.0.1:5433/postgres"
        );
        assert_eq!(
            node.tcp_url_as("app", None),
            "postgres://app@127.0.0.1:5433/postgres"
        );
        let node = node.with_socket_dir(Some("/dev/shm/rws-abc".into()));
        let url = node.url();
        assert_eq!(
            url,
            "postgres://postgres@%2Fdev%2Fshm%2Frws-abc:5433/postgres"
        );
        let config: tokio_postgres::Config = url.parse().unwrap();
        assert_eq!(
            config.get_hosts(),
            [tokio_postgres::config::Host::Unix(
                "/dev/shm/rws-abc".into()
            )]
        );
        assert_eq!(config.get_ports(), [5433]);
    }
}
