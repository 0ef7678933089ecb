//! Reading [`Secret`]s: credentials named in config, kept out of it.
//!
//! The value is read when the config is validated (so a missing variable or
//! unreadable file stops the daemon before it starts) and again by whoever
//! needs it; it is never part of an error message or a log line.

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{EnvLookup, Secret, process_env};

/// How long a secret read from a file is used before whoever sends it
/// reads the file again, so that rotated credentials (Kubernetes projected
/// tokens, renewed passwords) are picked up without a restart.
pub const SECRET_REFRESH: Duration = Duration::from_secs(60);

/// A value made from a secret (a header carrying it, say), read again
/// once [`SECRET_REFRESH`] has passed when the secret is a file, so rotated
/// credentials apply without a restart. When the new read fails, the last
/// good value stays in use and the failure is logged.
pub struct Refreshed<T> {
    from_file: bool,
    current: Mutex<(T, Instant)>,
}

impl<T> std::fmt::Debug for Refreshed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the value.
        f.write_str("Refreshed")
    }
}

impl<T: Clone> Refreshed<T> {
    /// `value`, just read from `secret`.
    pub fn new(value: T, secret: &Secret) -> Self {
        Refreshed {
            from_file: matches!(secret, Secret::File(_)),
            current: Mutex::new((value, Instant::now())),
        }
    }

    /// The value; when due, `read` again first. `what` names it in the log
    /// (never the value).
    ///
    /// The read happens outside the lock, by the one caller that found it
    /// due: the others (every API request, every outbound call) go on with
    /// the value they have rather than queue behind a file read.
    pub fn get<E: std::fmt::Display>(&self, what: &str, read: impl FnOnce() -> Result<T, E>) -> T {
        let lock = || self.current.lock().unwrap_or_else(PoisonError::into_inner);
        {
            let mut current = lock();
            if !self.from_file || current.1.elapsed() < SECRET_REFRESH {
                return current.0.clone();
            }
            // Not due again for the others while this one reads.
            current.1 = Instant::now();
        }
        match read() {
            Ok(value) => {
                let mut current = lock();
                current.0 = value;
                current.0.clone()
            }
            Err(error) => {
                tracing::warn!(
                    what,
                    %error,
                    "A secret could not be read again; the previous value stays in use."
                );
                lock().0.clone()
            }
        }
    }

    /// Makes the next [`get`](Self::get) read again (tests of rotation).
    #[cfg(test)]
    pub(crate) fn expire(&self) {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        current.1 = Instant::now() - SECRET_REFRESH;
    }
}

/// Why a secret could not be read. Names where it was looked for, never
/// the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The environment variable is not set (or is not valid UTF-8).
    #[error("environment variable {0:?} is not set")]
    EnvNotSet(String),
    /// The file could not be read.
    #[error("cannot read secret file {}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The variable's name is blank (`env = ""`).
    #[error(
        "env: {0:?} is a blank variable name; give the environment variable that holds the secret"
    )]
    BlankName(String),
    /// The file's path is blank (`file = ""`).
    #[error(
        "file: {0:?} is a blank path; give the secret file's name (relative paths are relative to the config file's folder)"
    )]
    BlankPath(String),
    /// The variable or file holds nothing (an empty credential is always a
    /// mistake, and servers answer it with a confusing 401).
    #[error("{0} is empty")]
    Empty(String),
}

impl SecretError {
    /// A fixed label for the host's metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            SecretError::EnvNotSet(_) => "env_not_set",
            SecretError::File { .. } => "file_unreadable",
            SecretError::Empty(_) => "empty",
            SecretError::BlankPath(_) => "blank_path",
            SecretError::BlankName(_) => "blank_name",
        }
    }
}

impl Secret {
    /// Where the secret is read from, in words (never its value):
    /// `environment variable "TOKEN"`, `secret file /run/token`.
    pub fn describe(&self) -> String {
        match self {
            Secret::Env(name) => format!("environment variable {name:?}"),
            Secret::File(path) => format!("secret file {}", path.display()),
        }
    }

    /// Reads the secret from the process environment or its file; a
    /// trailing newline is removed.
    pub fn resolve(&self) -> Result<String, SecretError> {
        self.resolve_with_env(&process_env)
    }

    /// [`Secret::resolve`] with environment variables looked up in `env`.
    pub fn resolve_with_env(&self, env: EnvLookup<'_>) -> Result<String, SecretError> {
        let value = match self {
            Secret::Env(name) if name.trim().is_empty() => {
                return Err(SecretError::BlankName(name.clone()));
            }
            Secret::Env(name) => env(name).ok_or_else(|| SecretError::EnvNotSet(name.clone()))?,
            Secret::File(path) if super::is_blank(path) => {
                return Err(SecretError::BlankPath(path.display().to_string()));
            }
            Secret::File(path) => {
                std::fs::read_to_string(path).map_err(|source| SecretError::File {
                    path: path.clone(),
                    source,
                })?
            }
        };
        // Files written by `echo` or editors end with a newline that is not
        // part of the credential; so do variables filled from such a file
        // (a Kubernetes Secret made with `echo` and read by `secretKeyRef`).
        let mut value = value;
        if value.ends_with('\n') {
            value.pop();
            if value.ends_with('\r') {
                value.pop();
            }
        }
        if value.is_empty() {
            return Err(SecretError::Empty(self.describe()));
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    /// While one caller reads a due secret again, the others get the value
    /// in use at once instead of waiting for the read.
    #[test]
    fn a_read_again_holds_no_other_caller_up() {
        use std::sync::mpsc;
        let secret = super::Secret::File("token".into());
        let refreshed = super::Refreshed::new("old".to_owned(), &secret);
        refreshed.expire();
        let (reading, read_started) = mpsc::channel();
        let (finish, may_finish) = mpsc::channel::<()>();
        std::thread::scope(|s| {
            let refreshed = &refreshed;
            let reader = s.spawn(move || {
                refreshed.get("test", || {
                    reading.send(()).unwrap();
                    may_finish.recv().unwrap();
                    Ok::<_, String>("new".to_owned())
                })
            });
            read_started.recv().unwrap();
            let (got, meanwhile) = mpsc::channel();
            s.spawn(move || {
                let value = refreshed.get("test", || -> Result<String, String> {
                    panic!("read twice")
                });
                let _ = got.send(value);
            });
            // Only a failure waits this long.
            let meanwhile = meanwhile.recv_timeout(std::time::Duration::from_secs(10));
            finish.send(()).unwrap();
            assert_eq!(meanwhile.as_deref(), Ok("old"), "held up by the read");
            assert_eq!(reader.join().unwrap(), "new");
        });
        assert_eq!(refreshed.get("test", || Err::<String, _>("not due")), "new");
    }

    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("s3cr3t".into()),
            "BLANK" => Some(String::new()),
            "ECHOED" => Some("pw\n".into()),
            "NEWLINE" => Some("\r\n".into()),
            _ => None,
        }
    }

    #[test]
    fn secrets_resolve_from_env_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let cases: Vec<(Secret, Result<&str, &str>)> = vec![
            (Secret::Env("TOKEN".into()), Ok("s3cr3t")),
            (Secret::Env("NOPE".into()), Err("env_not_set")),
            (Secret::Env("BLANK".into()), Err("empty")),
            // A variable filled from a file made with `echo`.
            (Secret::Env("ECHOED".into()), Ok("pw")),
            (Secret::Env("NEWLINE".into()), Err("empty")),
            (Secret::File(write("a", "pw\n")), Ok("pw")),
            (Secret::File(write("b", "pw\r\n")), Ok("pw")),
            (Secret::File(write("c", "pw")), Ok("pw")),
            // Only one trailing newline is part of the file's format.
            (Secret::File(write("d", "pw\n\n")), Ok("pw\n")),
            (Secret::File(write("e", "\n")), Err("empty")),
            (
                Secret::File(dir.path().join("missing")),
                Err("file_unreadable"),
            ),
        ];
        for (secret, expected) in cases {
            let got = secret.resolve_with_env(&env);
            match (got, expected) {
                (Ok(value), Ok(want)) => assert_eq!(value, want, "{secret:?}"),
                (Err(err), Err(kind)) => {
                    assert_eq!(err.kind(), kind, "{secret:?}");
                    assert!(!err.to_string().contains("s3cr3t"));
                }
                (got, want) => panic!("{secret:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn errors_name_the_place_not_the_value() {
        let missing = Secret::File("/nonexistent/scalewise/pw".into());
        let err = missing.resolve_with_env(&env).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot read secret file /nonexistent/scalewise/pw:"),
            "{err}"
        );
        let err = Secret::Env("NOPE".into())
            .resolve_with_env(&env)
            .unwrap_err();
        assert_eq!(err.to_string(), "environment variable \"NOPE\" is not set");
    }
}
