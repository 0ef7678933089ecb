//! The daemon's configuration file (TOML).
//!
//! Parsed once into typed structs (`deny_unknown_fields` everywhere) and
//! validated as a whole before anything starts; a reload goes through the
//! same path and an invalid file leaves the running config in place. Every
//! error names the file, the line and the field:
//!
//! ```text
//! scalewise.toml:14:7: scalers[1] "web": min (5) is greater than max (3)
//! scalewise.toml:9:1: scalers[0] "web": unknown field "intervall", expected one of ...
//! ```
//!
//! Loading has two phases. [`Config::load`] / [`Config::parse`] check
//! everything that needs no policy module (names, bounds, sources, secrets,
//! simulations, behaviour); once the modules are loaded,
//! [`Config::check_policies`] checks each scaler's policies and parameters
//! against what the modules' `describe()` says. `docs/config.example.toml`
//! shows every field; [`DEMO_CONFIG`] is the config `scalewise run` uses
//! when given none.

mod location;

/// Deserializers whose errors say what a value should look like.
mod friendly {
    use std::net::SocketAddr;
    use std::path::PathBuf;

    use bytesize::ByteSize;
    use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error};
    use toml::Spanned;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }

    /// A size: bytes as an integer, or text such as `"64 MiB"`.
    pub fn size<'de, D: Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
        match Size::deserialize(d)? {
            Size::Bytes(bytes) => Ok(ByteSize::b(bytes)),
            Size::Text(text) => text.parse().map_err(|e| {
                D::Error::custom(format!(
                    "{text:?} is not a size ({e}); write e.g. \"64 MiB\" or \"512 KiB\""
                ))
            }),
        }
    }

    /// A size as text when the text reads back exactly (`"64.0 MiB"`), else
    /// as bytes (`1376256`, which `"1.3 MiB"` would round): a journal record
    /// replays under exactly the limits it ran under.
    pub fn size_out<S: Serializer>(size: &ByteSize, s: S) -> Result<S::Ok, S::Error> {
        let text = size.to_string();
        if text.parse::<ByteSize>().ok() == Some(*size) {
            text.serialize(s)
        } else {
            size.as_u64().serialize(s)
        }
    }

    /// A file or folder path that is not blank (`""` or spaces would name
    /// the config's own folder, or a file called "   ").
    pub fn path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
        let text = String::deserialize(d)?;
        if text.trim().is_empty() {
            return Err(D::Error::custom(format!(
                "{text:?} is a blank path; give a file or folder name (relative paths are \
                 relative to the config file's folder)"
            )));
        }
        Ok(PathBuf::from(text))
    }

    /// [`path`], keeping where it is in the file.
    pub fn spanned_path<'de, D: Deserializer<'de>>(d: D) -> Result<Spanned<PathBuf>, D::Error> {
        let text = Spanned::<String>::deserialize(d)?;
        let span = text.span();
        let path = path(serde::de::value::StringDeserializer::<D::Error>::new(
            text.into_inner(),
        ))?;
        Ok(Spanned::new(span, path))
    }

    /// [`path`], when given.
    pub fn optional_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
        path(d).map(Some)
    }

    /// A duration: text with a unit, such as `"15s"`, `"5m"` or `"1h 30m"`
    /// (humantime's forms). A number, or text without a unit, is refused
    /// with an example of what to write.
    pub mod duration {
        use std::time::Duration;

        use serde::{Deserializer, Serializer, de::Error};

        struct Visitor;

        impl serde::de::Visitor<'_> for Visitor {
            type Value = Duration;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a duration as text with a unit, e.g. \"15s\"")
            }

            fn visit_str<E: Error>(self, text: &str) -> Result<Duration, E> {
                humantime::parse_duration(text).map_err(|e| {
                    E::custom(format!(
                        "{text:?} is not a duration ({e}); write e.g. \"15s\", \"5m\" or \
                         \"1h 30m\""
                    ))
                })
            }

            fn visit_i64<E: Error>(self, n: i64) -> Result<Duration, E> {
                Err(number(&n.to_string()))
            }

            fn visit_u64<E: Error>(self, n: u64) -> Result<Duration, E> {
                Err(number(&n.to_string()))
            }

            fn visit_f64<E: Error>(self, n: f64) -> Result<Duration, E> {
                // `5.0`, as written (`5` would be looked for elsewhere).
                Err(number(&format!("{n:?}")))
            }
        }

        /// A number where a duration goes: what to write instead.
        fn number<E: Error>(n: &str) -> E {
            E::custom(format!(
                "{n} is not a duration: write it as text with a unit, e.g. \"{n}s\" or \"{n}m\""
            ))
        }

        pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
            humantime_serde::serialize(d, s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
            d.deserialize_any(Visitor)
        }

        /// [`duration`](self), when given.
        pub mod option {
            use std::time::Duration;

            use serde::{Deserializer, Serializer};

            pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
                humantime_serde::option::serialize(d, s)
            }

            pub fn deserialize<'de, D: Deserializer<'de>>(
                d: D,
            ) -> Result<Option<Duration>, D::Error> {
                super::deserialize(d).map(Some)
            }
        }
    }

    /// An IP address and port; host names are not resolved.
    pub fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(|_| {
            D::Error::custom(format!(
                "{text:?} is not an IP address and port such as \"127.0.0.1:9464\" or \
                 \"[::]:9464\" (host names are not resolved)"
            ))
        })
    }
}
mod policies;
mod secret;
mod sections;
mod targets;
#[cfg(test)]
mod tests;
mod trust;
mod validate;

use std::cell::{OnceCell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytesize::ByteSize;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use toml::Spanned;

use location::{Document, Hit, Seg, keys};
pub use policies::{ParamProblem, PolicyCatalog, PolicyUses, param_problems, toml_to_json};
pub use secret::{Refreshed, SECRET_REFRESH, SecretError};
pub use targets::DefaultsNeeded;
pub use trust::{
    OwnedTlsFiles, Rebuilt, TLS_RECHECK, TlsFiles, read_ca_file, read_identity, tls_configured,
    trusting,
};
pub(crate) use validate::quoted_url;
pub use validate::{MAX_REPLICAS, SIMULATOR_SOURCE};

/// The embedded demo config: two simulated services scaled by the bundled
/// policies, with the clock sped up so the story plays in about 3 minutes.
pub const DEMO_CONFIG: &str = include_str!("demo.toml");

/// The name the demo config is reported under in errors.
const DEMO_ORIGIN: &str = "<embedded demo.toml>";

/// One thing wrong with a config file, located in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The config file, as it was named to [`Config::load`] or [`Config::parse`].
    pub file: PathBuf,
    /// 1-based line; 0 when the place is unknown.
    pub line: usize,
    /// 1-based column, in characters; 0 when the place is unknown.
    pub column: usize,
    /// The table the problem is in, e.g. `scalers[1] "web".behavior.scale_up`
    /// (empty at the top level).
    pub path: String,
    /// What is wrong, naming the field.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found, one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// Why a config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read the config file: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML, or a field of the wrong type or name. Reading stops
    /// at the first such problem.
    #[error("{0}")]
    Parse(Problem),
    /// Valid TOML describing an unusable configuration: every problem found.
    #[error("{0}")]
    Invalid(Problems),
}

impl ConfigError {
    /// A fixed label for the host's metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ConfigError::Read { .. } => "read",
            ConfigError::Parse(_) => "parse",
            ConfigError::Invalid(_) => "invalid",
        }
    }

    /// The located problems (none for a read error).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Parse(problem) => std::slice::from_ref(problem),
            ConfigError::Invalid(problems) => &problems.0,
        }
    }
}

/// Where a config came from: the file's name, its folder (relative paths
/// in it are resolved against that), and its text (to locate errors found
/// after parsing, such as a policy parameter's).
#[derive(Clone, Default)]
pub struct Origin {
    path: PathBuf,
    dir: PathBuf,
    /// The text, zstd-compressed: it is read again only to locate problems,
    /// and a fleet's config is megabytes (the fleet bench's 4.9 MB keeps
    /// 138 KB).
    text: Arc<[u8]>,
    text_len: usize,
    /// sha256 of the text, hex.
    digest: String,
}

impl Origin {
    /// The file as it was named.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The absolute folder relative paths were resolved against.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file's text.
    pub fn text(&self) -> String {
        // An `Origin::default()` holds no compressed frame at all.
        if self.text_len == 0 {
            return String::new();
        }
        let bytes = zstd::bulk::decompress(&self.text, self.text_len)
            .expect("the config text compressed at parse decompresses");
        String::from_utf8(bytes).expect("the config text was a str")
    }

    /// The sha256 of the file's text (hex): equal digests, equal texts.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    fn new(path: &Path, dir: PathBuf, text: &str) -> Origin {
        let compressed = zstd::bulk::compress(text.as_bytes(), 3)
            .expect("zstd compresses in memory (fails only without memory)");
        Origin {
            path: path.to_path_buf(),
            dir,
            text: compressed.into(),
            text_len: text.len(),
            digest: hex::encode(Sha256::digest(text.as_bytes())),
        }
    }
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Origin")
            .field("path", &self.path)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Looks an environment variable up; tests pass their own.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment, as an [`EnvLookup`].
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl Config {
    /// Reads, parses and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with_policy_dir(path, None)
    }

    /// Reads and parses the config file at `path` with its types checked
    /// but nothing else: for the tools that read one or two settings of a
    /// daemon's config (the journal's path, the API's address) from a
    /// shell that lacks the daemon's secrets, files or folders.
    pub fn load_unvalidated(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse_unvalidated(&text, path)
    }

    /// The `[api]` and `[journal]` of the config at `path`, for the
    /// commands that reach a running daemon or read its journal (`pause`,
    /// `resume`, `status`, `journal`, `replay`). A mistake elsewhere in the
    /// file (an edit a reload refused, say) does not stop them: the two
    /// tables are then read on their own, and the problem comes back as
    /// the third value, to be said. A problem in either table is an error.
    pub fn load_operator_sections(
        path: &Path,
    ) -> Result<(ApiConfig, JournalConfig, Option<String>), ConfigError> {
        let problem = match Config::load_unvalidated(path) {
            Ok(config) => return Ok((config.api, config.journal, None)),
            Err(ConfigError::Parse(problem)) => problem,
            Err(e) => return Err(e),
        };
        // Every top-level key [`Config`] has, the others unread: a
        // misspelt one (`[apii]`, in any form or place) may be the very
        // table asked for, whose defaults would reach another daemon.
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Sections {
            #[serde(default)]
            api: ApiConfig,
            #[serde(default)]
            journal: JournalConfig,
            policy_dir: Option<serde::de::IgnoredAny>,
            runtime: Option<serde::de::IgnoredAny>,
            watch: Option<serde::de::IgnoredAny>,
            clock: Option<serde::de::IgnoredAny>,
            sources: Option<serde::de::IgnoredAny>,
            simulations: Option<serde::de::IgnoredAny>,
            scalers: Option<serde::de::IgnoredAny>,
            leader_election: Option<serde::de::IgnoredAny>,
            notifications: Option<serde::de::IgnoredAny>,
        }
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        // A problem in the two tables themselves is the one to say.
        let Sections {
            mut api,
            mut journal,
            ..
        } = toml::from_str::<Sections>(&text)
            .map_err(|err| ConfigError::Parse(shape_problem(&Document::new(path, &text), &err)))?;
        resolve_operator_paths(&mut api, &mut journal, &base_dir(path));
        Ok((api, journal, Some(problem.to_string())))
    }

    /// [`Config::load`] with `policy_dir`, when given, in place of the
    /// file's, put there before validation: the file's folder need not
    /// exist where the config is checked or backtested.
    pub fn load_with_policy_dir(
        path: &Path,
        policy_dir: Option<&Path>,
    ) -> Result<Config, ConfigError> {
        Config::load_with_overrides(path, policy_dir, |runtime| runtime)
    }

    /// [`Config::load_with_policy_dir`] with the `[runtime]` limits changed
    /// by `runtime` before validation (`check --config`'s limit flags): the
    /// scalers and simulations are checked against the limits they will be
    /// run under. Problems are located at the file's keys.
    pub fn load_with_overrides(
        path: &Path,
        policy_dir: Option<&Path>,
        runtime: impl FnOnce(RuntimeLimits) -> RuntimeLimits,
    ) -> Result<Config, ConfigError> {
        let mut config = Config::load_unvalidated(path)?;
        if let Some(dir) = policy_dir {
            let span = config.policy_dir.span();
            config.policy_dir = Spanned::new(span, dir.to_path_buf());
        }
        config.runtime = runtime(std::mem::take(&mut config.runtime));
        config.validate()?;
        Ok(config)
    }

    /// Parses and validates config `text` read from the file `origin`
    /// (named in errors; relative paths are resolved against its folder).
    /// Secrets are resolved from the process environment.
    pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        Config::parse_with_env(text, origin, &process_env)
    }

    /// [`Config::parse`] with environment variables looked up in `env`.
    pub fn parse_with_env(
        text: &str,
        origin: &Path,
        env: EnvLookup<'_>,
    ) -> Result<Config, ConfigError> {
        let config = Config::parse_unvalidated(text, origin)?;
        config.validate_with_env(env)?;
        Ok(config)
    }

    /// Parses `text` into the typed config and resolves relative paths, but
    /// checks nothing beyond the types. Call [`Config::validate`] before use.
    pub fn parse_unvalidated(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let parsed = {
            let _sharing = ShareParams::start();
            match sections::parse(text) {
                Some(config) => {
                    #[cfg(debug_assertions)]
                    sections::check_against_whole(&config, text);
                    Ok(config)
                }
                None => toml::from_str(text),
            }
        };
        let mut config: Config = parsed.map_err(|err| {
            let doc = Document::new(origin, text);
            ConfigError::Parse(shape_problem(&doc, &err))
        })?;
        // serde grows the list by doubling: up to half of it slack, which
        // for 10,000 scalers is megabytes held as long as the config.
        config.scalers.shrink_to_fit();
        let dir = base_dir(origin);
        config.resolve_paths(&dir);
        config.origin = Origin::new(origin, dir, text);
        Ok(config)
    }

    /// This config's settings: everything but its `[[scalers]]` and
    /// `[simulations]`, which are nearly all of a fleet's config (1.1 KB a
    /// scaler with its simulation). What a running daemon keeps of the
    /// config it started with, to tell which settings read only at start a
    /// reloaded file changes; [`Config::simulations_fingerprint`] stands in
    /// for the simulations.
    pub fn settings(&self) -> Config {
        let Config {
            policy_dir,
            runtime,
            api,
            watch,
            journal,
            clock,
            sources,
            simulations: _,
            scalers: _,
            leader_election,
            notifications,
            origin,
        } = self;
        Config {
            policy_dir: policy_dir.clone(),
            runtime: runtime.clone(),
            api: api.clone(),
            watch: watch.clone(),
            journal: journal.clone(),
            clock: clock.clone(),
            leader_election: leader_election.clone(),
            notifications: notifications.clone(),
            sources: sources.clone(),
            simulations: BTreeMap::new(),
            scalers: Vec::new(),
            origin: origin.clone(),
        }
    }

    /// What `[simulations]` holds, as a [`Fingerprint`].
    pub fn simulations_fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.simulations)
    }

    /// Checks the whole config (everything that needs no policy module),
    /// reading secrets from the process environment. Reports every problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_with_env(&process_env)
    }

    /// [`Config::validate`] with environment variables looked up in `env`.
    pub fn validate_with_env(&self, env: EnvLookup<'_>) -> Result<(), ConfigError> {
        let text = OnceCell::new();
        let doc = Document::of(&self.origin, &text);
        let problems = validate::check(self, &doc, env);
        into_result(problems)
    }

    /// Checks a reloaded config's scalers against the simulated services
    /// the daemon runs (`running` tells whether it has one by that name):
    /// `[simulations]` are read only at start, so a scaler cannot use an
    /// entry this reload adds. Each use is located.
    pub fn check_running_simulations(
        &self,
        running: &dyn Fn(&str) -> bool,
    ) -> Result<(), ConfigError> {
        let added = |name: &str| self.simulations.contains_key(name) && !running(name);
        let message = |name: &str| {
            format!(
                "simulation {name:?} is new in this file, and [simulations] are read only at \
                 start: restart the daemon to use it"
            )
        };
        let text = OnceCell::new();
        let doc = Document::of(&self.origin, &text);
        let mut problems = Vec::new();
        for (i, scaler) in self.scalers.iter().enumerate() {
            let scaler = scaler.get_ref();
            if let Some(service) = scaler.target.get_ref().simulation()
                && added(service)
            {
                problems.push(
                    doc.value_problem(&keys!["scalers", i, "target", "service"], message(service)),
                );
            }
            for (name, metric) in &scaler.metrics {
                let metric = metric.get_ref();
                if metric.source == validate::SIMULATOR_SOURCE
                    && let Some((service, _)) = metric.query.split_once('/')
                    && added(service)
                {
                    problems.push(doc.value_problem(
                        &keys!["scalers", i, "metrics", name.as_str(), "query"],
                        message(service),
                    ));
                }
            }
        }
        into_result(problems)
    }
    /// Checks that every scaler can run against the simulator alone, as
    /// `scalewise simulate` runs them: each target a `[simulations]`
    /// service and each metric read from the simulator. Each other use is
    /// located.
    pub fn check_simulated(&self) -> Result<(), ConfigError> {
        let text = OnceCell::new();
        let doc = Document::of(&self.origin, &text);
        let mut problems = Vec::new();
        for (i, scaler) in self.scalers.iter().enumerate() {
            let scaler = scaler.get_ref();
            let target = scaler.target.get_ref();
            if target.simulation().is_none() {
                problems.push(doc.value_problem(
                    &keys!["scalers", i, "target"],
                    format!(
                        "a {} target cannot be simulated: `scalewise simulate` scales \
                         simulated services only; point the target at a [simulations.<name>] \
                         entry (`target = {{ kind = \"simulator\", service = \"...\" }}`)",
                        target.kind()
                    ),
                ));
            }
            for (name, metric) in &scaler.metrics {
                let source = &metric.get_ref().source;
                if source != validate::SIMULATOR_SOURCE && source != validate::TARGET_SOURCE {
                    problems.push(doc.value_problem(
                        &keys!["scalers", i, "metrics", name.as_str(), "source"],
                        format!(
                            "source {source:?} cannot be simulated: `scalewise simulate` reads \
                             metrics from the simulator (`source = \"simulator\"`, a query \
                             such as `cpu` or `service/p95_latency_ms`) and the target \
                             (`source = \"target\"`)"
                        ),
                    ));
                }
            }
        }
        into_result(problems)
    }

    /// Checks this config as a running daemon would apply it: the sections
    /// that change only at a restart (`policy_dir`, `[runtime]`, `[api]`,
    /// `[journal]`, `[clock]`, `[watch]`, `[leader_election]`) keep
    /// `running`'s values, and the rest must agree with them (`running` may be the daemon's
    /// [`Config::settings`]: its scalers and simulations are not read). A reload must pass both
    /// this and [`Config::validate`]: a scaler's `max` above the running
    /// `runtime.max_replicas`, or a Prometheus source while the running
    /// clock is faster than real time, is refused even when the new file
    /// also raises the limit or slows the clock. Problems say which running
    /// sections they were checked against.
    pub fn validate_against_running(&self, running: &Config) -> Result<(), ConfigError> {
        let mut kept = Vec::new();
        let mut effective = self.clone();
        if effective.policy_dir.get_ref() != running.policy_dir.get_ref() {
            effective.policy_dir = running.policy_dir.clone();
            kept.push("policy_dir");
        }
        let mut keep = |differs: bool, name: &'static str| {
            if differs {
                kept.push(name);
            }
            differs
        };
        if keep(effective.runtime != running.runtime, "[runtime]") {
            effective.runtime = running.runtime.clone();
        }
        if keep(effective.api != running.api, "[api]") {
            effective.api = running.api.clone();
        }
        if keep(effective.journal != running.journal, "[journal]") {
            effective.journal = running.journal.clone();
        }
        if keep(effective.clock != running.clock, "[clock]") {
            effective.clock = running.clock.clone();
        }
        if keep(effective.watch != running.watch, "[watch]") {
            effective.watch = running.watch.clone();
        }
        if keep(
            effective.leader_election != running.leader_election,
            "[leader_election]",
        ) {
            effective.leader_election = running.leader_election.clone();
        }
        if kept.is_empty() {
            return Ok(());
        }
        let text = OnceCell::new();
        let doc = Document::of(&self.origin, &text);
        let mut problems = validate::check_running(&effective, &doc, &process_env);
        for problem in &mut problems {
            problem.message.push_str(&format!(
                " (checked against the running {}, which change only at a restart)",
                kept.join(", ")
            ));
        }
        into_result(problems)
    }

    /// Things in the config worth a warning that do not stop the daemon
    /// (a Prometheus query this build's PromQL parser cannot read), located
    /// like problems. The daemon logs them when it starts.
    pub fn warnings(&self) -> Vec<Problem> {
        let text = OnceCell::new();
        let doc = Document::of(&self.origin, &text);
        validate::warnings(self, &doc)
    }

    /// The embedded demo config ([`DEMO_CONFIG`]) with its policy folder and
    /// journal file set to the given paths (the caller writes the bundled
    /// policies there). Not yet validated: the policy folder must exist.
    pub fn demo(policy_dir: &Path, journal_path: &Path) -> Config {
        let mut config = Config::parse_unvalidated(DEMO_CONFIG, Path::new(DEMO_ORIGIN))
            .expect("the embedded demo config parses (tested)");
        let span = config.policy_dir.span();
        config.policy_dir = Spanned::new(span, policy_dir.to_path_buf());
        config.journal.path = journal_path.to_path_buf();
        config
    }

    /// Where this config came from.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// Makes every path in the config absolute, relative to `dir`.
    fn resolve_paths(&mut self, dir: &Path) {
        let resolve = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = dir.join(&*path);
            }
        };
        resolve(self.policy_dir.get_mut());
        resolve_operator_paths(&mut self.api, &mut self.journal, dir);
        if let Some(cache_dir) = &mut self.runtime.cache_dir {
            resolve(cache_dir);
        }
        for source in self.sources.values_mut() {
            match source.get_mut() {
                SourceConfig::Prometheus(prometheus) => {
                    let files = [
                        &mut prometheus.ca_file,
                        &mut prometheus.client_cert,
                        &mut prometheus.client_key,
                    ];
                    for path in files.into_iter().flatten() {
                        resolve(path);
                    }
                    let secrets = prometheus
                        .bearer_token
                        .iter_mut()
                        .chain(prometheus.basic_auth.iter_mut().map(|b| &mut b.password))
                        .chain(prometheus.headers.values_mut().filter_map(|h| match h {
                            HeaderSetting::Secret(secret) => Some(secret),
                            HeaderSetting::Value(_) => None,
                        }));
                    for secret in secrets {
                        if let Secret::File(path) = secret
                            && !is_blank(path)
                        {
                            resolve(path);
                        }
                    }
                }
            }
        }
        for notification in &mut self.notifications {
            let n = notification.get_mut();
            resolve_auth(
                &resolve,
                &mut n.bearer_token,
                &mut n.headers,
                [&mut n.ca_file, &mut n.client_cert, &mut n.client_key],
            );
        }
        for scaler in &mut self.scalers {
            match scaler.get_mut().target.get_mut() {
                TargetConfig::Rebalance(t) => {
                    resolve_auth(
                        &resolve,
                        &mut t.bearer_token,
                        &mut t.headers,
                        [&mut t.ca_file, &mut t.client_cert, &mut t.client_key],
                    );
                }
                TargetConfig::AwsAsg(t) => {
                    for w in [t.drain_webhook.as_mut(), t.undrain_webhook.as_deref_mut()]
                        .into_iter()
                        .flatten()
                    {
                        resolve_auth(
                            &resolve,
                            &mut w.bearer_token,
                            &mut w.headers,
                            [&mut w.ca_file, &mut w.client_cert, &mut w.client_key],
                        );
                    }
                }
                _ => {}
            }
        }
        for simulation in self.simulations.values_mut() {
            if let Some(trace) = &mut simulation.get_mut().load.trace {
                resolve(&mut trace.path);
            }
        }
    }
}

/// Resolves the paths of an outbound endpoint's credentials and TLS files
/// (`ca_file`, `client_cert`, `client_key`; see [`crate::outbound`]) with
/// `resolve`.
fn resolve_auth(
    resolve: &impl Fn(&mut PathBuf),
    bearer_token: &mut Option<Secret>,
    headers: &mut BTreeMap<String, HeaderSetting>,
    tls_files: [&mut Option<PathBuf>; 3],
) {
    for path in tls_files.into_iter().flatten() {
        resolve(path);
    }
    let header_secrets = headers.values_mut().filter_map(|h| match h {
        HeaderSetting::Secret(secret) => Some(secret),
        HeaderSetting::Value(_) => None,
    });
    for secret in bearer_token.iter_mut().chain(header_secrets) {
        if let Secret::File(path) = secret
            && !is_blank(path)
        {
            resolve(path);
        }
    }
}

/// Whether `path` is empty or only spaces (it would name the config's own
/// folder once resolved).
fn is_blank(path: &Path) -> bool {
    path.to_str().is_some_and(|text| text.trim().is_empty())
}

/// The paths of `[api]` and `[journal]` made relative to `dir` (the
/// config file's folder) when they are relative.
fn resolve_operator_paths(api: &mut ApiConfig, journal: &mut JournalConfig, dir: &Path) {
    let resolve = |path: &mut PathBuf| {
        if path.is_relative() {
            *path = dir.join(&*path);
        }
    };
    resolve(&mut journal.path);
    if let Some(Secret::File(path)) = &mut api.token
        && !is_blank(path)
    {
        resolve(path);
    }
    if let Some(tls) = &mut api.tls {
        resolve(&mut tls.cert);
        resolve(&mut tls.key);
    }
}

/// The absolute folder of `origin`, against which relative paths resolve.
fn base_dir(origin: &Path) -> PathBuf {
    let dir = match origin.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// Sorts problems into file order and turns them into a result.
fn into_result(mut problems: Vec<Problem>) -> Result<(), ConfigError> {
    if problems.is_empty() {
        return Ok(());
    }
    problems.sort_by_key(|p| (p.line, p.column));
    Err(ConfigError::Invalid(Problems(problems)))
}

/// Locates a TOML syntax or serde error and names the field it is about.
fn shape_problem(doc: &Document<'_>, err: &toml::de::Error) -> Problem {
    // serde quotes names in backticks; the rest of our messages use quotes.
    let message = err.message().replace('`', "\"");
    let Some(span) = err.span() else {
        return doc.problem_at(None, &[], message);
    };
    let (mut path, mut hit) = doc.path_at(&span);
    let mut offset = span.start;
    // Errors inside internally tagged tables (`kind = ...`) only carry the
    // table's span; find the key or value the message names inside it.
    if hit == Hit::Table
        && let Some(found) = quoted_name(err.message()).and_then(|name| doc.find_in(&path, name))
    {
        (path, hit, offset) = found;
    }
    match (hit, path.last()) {
        (Hit::Value, Some(Seg::Key(key))) => {
            let message = format!("{key}: {message}");
            doc.problem_at(Some(offset), location::context_of(&path), message)
        }
        (Hit::Key, _) | (Hit::Value, _) => {
            doc.problem_at(Some(offset), location::context_of(&path), message)
        }
        (Hit::Table, _) => doc.problem_at(Some(offset), &path, message),
    }
}

/// The key or value a serde error names: ``unknown field `x` ``,
/// ``unknown variant `x` ``, `invalid value: string "x"`, or a number or
/// boolean of the wrong type (``invalid type: integer `5` ``), or what a
/// [`friendly`] deserializer refused (`"15" is not a duration`). Not a
/// missing field's name: that one is, by definition, not in the text.
fn quoted_name(message: &str) -> Option<&str> {
    let after = |open: &str, close: char| {
        let start = message.find(open)? + open.len();
        let len = message[start..].find(close)?;
        Some(&message[start..start + len])
    };
    after("unknown field `", '`')
        .or_else(|| after("unknown variant `", '`'))
        .or_else(|| after("string \"", '"'))
        .or_else(|| after("integer `", '`'))
        .or_else(|| after("floating point `", '`'))
        .or_else(|| after("boolean `", '`'))
        // The friendly deserializers' own: `"15" is not a duration ...`,
        // `15 is not a duration ...`.
        .or_else(|| {
            let (value, _) = message.split_once(" is not a ")?;
            match value.strip_prefix('"') {
                Some(text) => text.strip_suffix('"'),
                None => value.parse::<f64>().is_ok().then_some(value),
            }
        })
}

/// A digest of part of a config (the first 128 bits of the sha256 of its
/// JSON form): tells whether a reloaded file changed that part without
/// keeping the part itself. Spans play no part, so moving a table within
/// the file changes nothing, while reordering the keys of a table does
/// (the JSON keeps the file's order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 16]);

impl Fingerprint {
    /// The digest's first 64 bits, as the journal keeps a target's
    /// ([`TargetConfig::target_key`]).
    pub fn as_i64(&self) -> i64 {
        let mut first = [0; 8];
        first.copy_from_slice(&self.0[..8]);
        i64::from_le_bytes(first)
    }

    /// The fingerprint of `value`.
    pub fn of(value: &impl Serialize) -> Fingerprint {
        struct Hashing(Sha256);
        impl std::io::Write for Hashing {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.update(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        static UNIQUE: AtomicU64 = AtomicU64::new(0);
        let mut hashing = Hashing(Sha256::new());
        if serde_json::to_writer(&mut hashing, value).is_err() {
            // Not expected (config values are plain data); a fingerprint
            // equal to no other keeps a change from going unseen.
            hashing
                .0
                .update(UNIQUE.fetch_add(1, Ordering::Relaxed).to_le_bytes());
            hashing.0.update(b"unserialisable");
        }
        let digest = hashing.0.finalize();
        let mut first = [0; 16];
        first.copy_from_slice(&digest[..16]);
        Fingerprint(first)
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The folder policy modules (`*.wasm`) are loaded from and watched in.
    /// Relative paths are resolved against the config file's folder.
    #[serde(deserialize_with = "friendly::spanned_path")]
    pub policy_dir: Spanned<PathBuf>,
    /// Limits every policy evaluation runs under.
    #[serde(default)]
    pub runtime: RuntimeLimits,
    /// The HTTP API.
    #[serde(default)]
    pub api: ApiConfig,
    /// Watching the policy folder and this file for changes (hot reload).
    #[serde(default)]
    pub watch: WatchConfig,
    /// The decision journal.
    #[serde(default)]
    pub journal: JournalConfig,
    /// How fast the host's clock runs (only the demo and tests change it).
    #[serde(default)]
    pub clock: ClockConfig,
    /// Named external metric sources (`[sources.<name>]`).
    #[serde(default)]
    pub sources: BTreeMap<String, Spanned<SourceConfig>>,
    /// Simulated services (`[simulations.<name>]`), each usable as a target
    /// (`kind = "simulator"`) and as a metric source (`source = "simulator"`).
    #[serde(default)]
    pub simulations: BTreeMap<String, Spanned<SimulationConfig>>,
    /// The scalers (`[[scalers]]`).
    #[serde(default)]
    pub scalers: Vec<Spanned<ScalerConfig>>,
    /// Leader election among replicas through a Kubernetes Lease
    /// (`[leader_election]`); without it this replica always acts.
    #[serde(default)]
    pub leader_election: Option<LeaderElectionConfig>,
    /// Webhooks told of every change of replicas and failure to make one
    /// (`[[notifications]]`).
    #[serde(default)]
    pub notifications: Vec<Spanned<NotificationConfig>>,
    /// Where the config was read from (set by [`Config::parse`]).
    #[serde(skip)]
    origin: Origin,
}

/// A webhook (`[[notifications]]`): an HTTP POST for each change of
/// replicas the scalers make, or fail to make. See [`crate::notify`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationConfig {
    /// Where to POST (http:// or https://).
    pub url: String,
    /// What to tell: `scaled` (a change made or started), `failed` (the
    /// actuator refused it). Default both.
    #[serde(default = "NotifyEvent::all")]
    pub events: Vec<NotifyEvent>,
    /// Only these scalers' changes (default: every scaler's).
    #[serde(default)]
    pub scalers: Vec<String>,
    /// The body: `json` (the change as a JSON object) or `slack` (`{"text":
    /// ...}`, what Slack's and Mattermost's incoming webhooks take).
    #[serde(default)]
    pub format: NotifyFormat,
    /// Sent as `Authorization: Bearer ...`, read when the config is loaded.
    #[serde(default)]
    pub bearer_token: Option<Secret>,
    /// Extra headers sent with every POST: an API key header, or an
    /// `Authorization` of another scheme than bearer (as a secret).
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderSetting>,
    /// Per attempt; a failed POST is tried three times in all.
    #[serde(default = "default_notify_timeout", with = "friendly::duration")]
    pub timeout: Duration,
    /// Certificates (PEM) to trust for an `https://` URL besides the
    /// system's (a private CA). Relative to the config file's folder.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A certificate (PEM) to present when the server asks for one
    /// (mutual TLS), with `client_key`, its private key. Both are read again
    /// when they change (looked at when the client is used, at most once a
    /// minute). Relative to the config file's folder.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// The private key (PEM) of `client_cert`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

impl NotificationConfig {
    /// Its credentials and trust, for [`crate::outbound`].
    pub fn http_auth(&self) -> crate::outbound::HttpAuth<'_> {
        crate::outbound::HttpAuth {
            bearer_token: self.bearer_token.as_ref(),
            headers: &self.headers,
            tls: crate::config::TlsFiles {
                ca_file: self.ca_file.as_deref(),
                client_cert: self.client_cert.as_deref(),
                client_key: self.client_key.as_deref(),
            },
        }
    }
}

fn default_notify_timeout() -> Duration {
    Duration::from_secs(5)
}

/// What a notification tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NotifyEvent {
    /// A change of replicas was made (or started).
    Scaled,
    /// The actuator failed to make one.
    Failed,
}

impl NotifyEvent {
    fn all() -> Vec<NotifyEvent> {
        vec![NotifyEvent::Scaled, NotifyEvent::Failed]
    }
}

/// The body of a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NotifyFormat {
    /// The change as a JSON object.
    #[default]
    Json,
    /// `{"text": "..."}`, for Slack-style incoming webhooks.
    Slack,
}

/// Leader election (`[leader_election]`): several replicas of the daemon,
/// one Kubernetes Lease; only the replica holding it ticks its scalers, the
/// others serve the API and wait to take over. See [`crate::leader`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaderElectionConfig {
    /// The Lease's name (default `scalewise`).
    #[serde(default = "default_lease_name")]
    pub lease: String,
    /// Its namespace (default: the client configuration's).
    #[serde(default)]
    pub namespace: Option<String>,
    /// This replica's name in the Lease (default: `POD_NAME`, else the
    /// host's name, with the process id).
    #[serde(default)]
    pub identity: Option<String>,
    /// How long a Lease holds without renewal before another replica may
    /// take it (default 15s, as Kubernetes' controllers).
    #[serde(default = "default_lease_duration", with = "friendly::duration")]
    pub lease_duration: Duration,
    /// How long the leader keeps acting without a successful renewal before
    /// it stops (default 10s; shorter than `lease_duration`, so it stops
    /// before another replica may take over).
    #[serde(default = "default_renew_deadline", with = "friendly::duration")]
    pub renew_deadline: Duration,
    /// How often each replica tries to take or renew the Lease (default 2s).
    #[serde(default = "default_retry_period", with = "friendly::duration")]
    pub retry_period: Duration,
}

fn default_lease_name() -> String {
    "scalewise".into()
}

fn default_lease_duration() -> Duration {
    Duration::from_secs(15)
}

fn default_renew_deadline() -> Duration {
    Duration::from_secs(10)
}

fn default_retry_period() -> Duration {
    Duration::from_secs(2)
}

/// Limits for one policy evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeLimits {
    /// Linear memory a policy may use per evaluation.
    #[serde(
        deserialize_with = "friendly::size",
        serialize_with = "friendly::size_out"
    )]
    pub max_memory: ByteSize,
    /// Wall-clock deadline for one evaluation (enforced by epoch interruption).
    #[serde(with = "friendly::duration")]
    pub timeout: Duration,
    /// Fuel (Wasm instructions, roughly) per evaluation; 0 disables fuel
    /// metering. Fuel makes the limit deterministic, at a cost per call.
    pub fuel: u64,
    /// Decisions asking for more replicas than this are refused as invalid.
    pub max_replicas: u32,
    /// Largest policy state kept between evaluations.
    #[serde(
        deserialize_with = "friendly::size",
        serialize_with = "friendly::size_out"
    )]
    pub max_state_bytes: ByteSize,
    /// Largest reason string accepted in a decision.
    pub max_reason_bytes: usize,
    /// Wasm stack a policy may use.
    #[serde(
        deserialize_with = "friendly::size",
        serialize_with = "friendly::size_out"
    )]
    pub max_wasm_stack: ByteSize,
    /// Where compiled policy code is cached on disk, by content hash, so a
    /// restart or a flip back to an earlier module skips compiling. `None`:
    /// the daemon uses `scalewise-cache` next to the journal; the runtime
    /// alone (e.g. `scalewise check`) caches nothing.
    #[serde(
        default,
        deserialize_with = "friendly::optional_path",
        skip_serializing_if = "Option::is_none"
    )]
    pub cache_dir: Option<PathBuf>,
}

impl Default for RuntimeLimits {
    fn default() -> Self {
        RuntimeLimits {
            max_memory: ByteSize::mib(64),
            timeout: Duration::from_millis(100),
            fuel: 0,
            max_replicas: 100_000,
            max_state_bytes: ByteSize::kib(64),
            max_reason_bytes: 1024,
            max_wasm_stack: ByteSize::kib(512),
            cache_dir: None,
        }
    }
}

/// The HTTP API.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address to listen on; loopback by default.
    #[serde(deserialize_with = "friendly::socket_addr")]
    pub listen: SocketAddr,
    /// The bearer token the API's write endpoints (pause, resume) ask
    /// for. Without one they answer only requests from loopback.
    pub token: Option<Secret>,
    /// Who may read `/v1/...` (scalers, decisions with each policy's
    /// context and parameters, policies, config): `open` (anyone who
    /// reaches the API) or `token` (the same bearer token as writes).
    /// `/`, `/healthz`, `/readyz` and `/metrics` stay open.
    pub reads: ApiReads,
    /// Serve HTTPS with this certificate and key instead of plain HTTP.
    pub tls: Option<ApiTls>,
}

/// `[api] tls`: PEM files, relative to the config file's folder. Read at
/// start (and `check`), and again when they change, so a rotated
/// certificate (cert-manager renewing a Secret) applies without a restart.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiTls {
    /// The certificate chain, the server's own certificate first.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Who may read the API's `/v1/...` endpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiReads {
    /// Anyone who reaches the API.
    #[default]
    Open,
    /// Requests with the `[api] token`.
    Token,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            token: None,
            reads: ApiReads::Open,
            tls: None,
        }
    }
}

/// How the daemon notices changes to the policy folder and the config file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchConfig {
    /// Watch at all; when off, modules and config change only at restart
    /// (SIGHUP still reloads the config).
    pub enabled: bool,
    /// A changed file is loaded once it has been quiet (size and mtime
    /// stable, no write events) this long, so a file still being written is
    /// never loaded.
    #[serde(with = "friendly::duration")]
    pub debounce: Duration,
    /// `auto` (native events, polling when they cannot be set up), `native`
    /// or `poll`.
    pub mode: WatchMode,
    /// How often polling looks at the files (`mode = "poll"`, or `auto`
    /// after falling back).
    #[serde(with = "friendly::duration")]
    pub poll_interval: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            enabled: true,
            debounce: Duration::from_millis(200),
            mode: WatchMode::Auto,
            poll_interval: Duration::from_secs(2),
        }
    }
}

/// Where file change events come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WatchMode {
    /// Native events (inotify, FSEvents, ...), or polling when they cannot
    /// be set up (e.g. the inotify watch limit is reached).
    #[default]
    Auto,
    /// Native events only; the daemon refuses to start without them.
    Native,
    /// Polling only (network file systems, where native events never come).
    Poll,
}

/// The decision journal.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalConfig {
    /// The SQLite database file. Relative to the config file's folder.
    #[serde(deserialize_with = "friendly::path")]
    pub path: PathBuf,
    /// Records older than this are deleted.
    #[serde(with = "friendly::duration")]
    pub retention: Duration,
    /// How long the writer waits after a write arrives for others to share
    /// its transaction (and its fsync). `0s` commits each write at once.
    #[serde(with = "friendly::duration")]
    pub commit_delay: Duration,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            path: PathBuf::from("scalewise-journal.db"),
            retention: Duration::from_secs(7 * 24 * 3600),
            commit_delay: Duration::from_millis(10),
        }
    }
}

/// The host clock.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClockConfig {
    /// How many times faster than real time the clock runs. 1 in production.
    pub speed: f64,
}

impl Default for ClockConfig {
    fn default() -> Self {
        ClockConfig { speed: 1.0 }
    }
}

/// A named metric source.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SourceConfig {
    /// A Prometheus server's HTTP API.
    Prometheus(PrometheusConfig),
}

/// A Prometheus server.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusConfig {
    /// Base URL, e.g. `http://prometheus:9090`.
    pub url: String,
    /// Per-request timeout.
    #[serde(default = "default_prometheus_timeout", with = "friendly::duration")]
    pub timeout: Duration,
    /// Bearer token sent as `Authorization: Bearer ...`.
    #[serde(default)]
    pub bearer_token: Option<Secret>,
    /// HTTP basic auth.
    #[serde(default)]
    pub basic_auth: Option<BasicAuth>,
    /// Extra headers sent with every request (e.g. `X-Scope-OrgID`), each
    /// text or a secret.
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderSetting>,
    /// Certificates (PEM) to trust for an `https://` URL besides the
    /// system's: a private CA (OpenShift's service CA in front of Thanos,
    /// say). Relative to the config file's folder.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A certificate (PEM) to present when the server asks for one
    /// (mutual TLS), with `client_key`, its private key. Both are read again
    /// when they change (looked at when the client is used, at most once a
    /// minute). Relative to the config file's folder.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// The private key (PEM) of `client_cert`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

impl PrometheusConfig {
    /// The source's TLS files.
    pub fn tls_files(&self) -> TlsFiles<'_> {
        TlsFiles {
            ca_file: self.ca_file.as_deref(),
            client_cert: self.client_cert.as_deref(),
            client_key: self.client_key.as_deref(),
        }
    }
}

fn default_prometheus_timeout() -> Duration {
    Duration::from_secs(5)
}

/// HTTP basic auth credentials.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    /// User name.
    pub username: String,
    /// Password.
    pub password: Secret,
}

/// A secret, read from the environment or a file, never written in config
/// and never logged. It serializes as where it is read from (for telling
/// a changed config apart), never as its value.
///
/// A value written in its place (`token = "abc"`) is refused without being
/// quoted: the error ends up in logs, the API's config status and CI output.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Secret {
    /// The value of an environment variable.
    Env(String),
    /// The contents of a file (trailing newline removed).
    /// A blank path is refused where the secret is read (and located at
    /// its field there: a source's table is read whole, so a deserialize
    /// error would point at its header).
    File(PathBuf),
}

/// A header's value: as written in the config, or a [`Secret`]
/// (`{ env = "VAR" }`, `{ file = "path" }`), read when the config is
/// loaded and never logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderSetting {
    /// The value as written.
    Value(String),
    /// A secret holds the value.
    Secret(Secret),
}

impl HeaderSetting {
    /// The value: as written, or read from the secret.
    pub fn resolve(&self) -> Result<String, SecretError> {
        self.resolve_with_env(&process_env)
    }

    /// [`HeaderSetting::resolve`] with environment variables looked up in
    /// `env`.
    pub fn resolve_with_env(&self, env: EnvLookup<'_>) -> Result<String, SecretError> {
        match self {
            HeaderSetting::Value(value) => Ok(value.clone()),
            HeaderSetting::Secret(secret) => secret.resolve_with_env(env),
        }
    }
}

impl From<&str> for HeaderSetting {
    fn from(value: &str) -> Self {
        HeaderSetting::Value(value.to_owned())
    }
}

impl Serialize for HeaderSetting {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            HeaderSetting::Value(value) => s.serialize_str(value),
            HeaderSetting::Secret(secret) => secret.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for HeaderSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Setting;
        impl<'de> serde::de::Visitor<'de> for Setting {
            type Value = HeaderSetting;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a string, or a secret: { env = "VAR" } or { file = "path" }"#)
            }

            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<HeaderSetting, E> {
                Ok(HeaderSetting::Value(value.to_owned()))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<HeaderSetting, A::Error> {
                Secret::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(HeaderSetting::Secret)
            }
        }
        d.deserialize_any(Setting)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        const HOW: &str =
            r#"a secret is not written in the config: give { env = "VAR" } or { file = "path" }"#;
        struct Where;
        impl<'de> serde::de::Visitor<'de> for Where {
            type Value = Secret;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"{ env = "VAR" } or { file = "path" }"#)
            }

            // Whatever was written in its place, never quoted.
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Secret, E> {
                Err(E::custom(HOW))
            }

            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Secret, E> {
                Err(E::custom(HOW))
            }

            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Secret, E> {
                Err(E::custom(HOW))
            }

            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Secret, E> {
                Err(E::custom(HOW))
            }

            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Secret, E> {
                Err(E::custom(HOW))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
                Err(A::Error::custom(HOW))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Secret, A::Error> {
                const FIELDS: &[&str] = &["env", "file"];
                let Some(key) = map.next_key::<String>()? else {
                    return Err(A::Error::custom(
                        r#"an empty secret: give { env = "VAR" } or { file = "path" }"#,
                    ));
                };
                let secret = match key.as_str() {
                    "env" => Secret::Env(map.next_value()?),
                    "file" => Secret::File(map.next_value()?),
                    _ => return Err(A::Error::unknown_field(&key, FIELDS)),
                };
                if let Some(more) = map.next_key::<String>()? {
                    return Err(if FIELDS.contains(&more.as_str()) {
                        A::Error::custom(
                            "a secret is read from one place: `env` or `file`, not both",
                        )
                    } else {
                        A::Error::unknown_field(&more, FIELDS)
                    });
                }
                Ok(secret)
            }
        }
        d.deserialize_any(Where)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::Env(var) => write!(f, "Secret(env {var})"),
            Secret::File(path) => write!(f, "Secret(file {})", path.display()),
        }
    }
}

/// A simulated service: load, capacity, start-up delay, and the metrics a
/// real service would have, derived from load and ready replicas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulationConfig {
    /// Seed for the noise; the same seed gives the same run.
    #[serde(default)]
    pub seed: u64,
    /// Requests per second one ready replica serves at 100% CPU.
    pub capacity_per_replica: f64,
    /// Time from asking for a replica to it being ready.
    #[serde(default, with = "friendly::duration")]
    pub startup_delay: Duration,
    /// Replicas at start.
    pub initial_replicas: u32,
    /// Latency of a request on an idle replica.
    #[serde(default = "default_base_latency", with = "friendly::duration")]
    pub base_latency: Duration,
    /// The load curve.
    pub load: LoadConfig,
}

fn default_base_latency() -> Duration {
    Duration::from_millis(50)
}

/// Offered load in requests per second, as a curve or a recorded trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadConfig {
    /// Mean load of the synthetic curve (requests/s).
    #[serde(default)]
    pub base: f64,
    /// Amplitude of the daily wave around `base` (requests/s).
    #[serde(default)]
    pub diurnal_amplitude: f64,
    /// Period of the wave (a day by default; shorter in demos).
    #[serde(default = "default_diurnal_period", with = "friendly::duration")]
    pub diurnal_period: Duration,
    /// Relative noise (standard deviation as a fraction of the load).
    #[serde(default)]
    pub noise: f64,
    /// Temporary surges on top of the curve.
    #[serde(default)]
    pub spikes: Vec<SpikeConfig>,
    /// A recorded trace (`timestamp_s,requests` CSV) instead of the curve.
    #[serde(default)]
    pub trace: Option<TraceConfig>,
}

fn default_diurnal_period() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// A temporary surge of load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpikeConfig {
    /// When it starts, from the simulation's start.
    #[serde(with = "friendly::duration")]
    pub at: Duration,
    /// How long it lasts.
    #[serde(with = "friendly::duration")]
    pub duration: Duration,
    /// Extra requests per second during the spike.
    pub extra: f64,
}

/// Load replayed from a recorded trace file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceConfig {
    /// A `timestamp_s,requests` CSV file (see shared traces); relative to the config file.
    #[serde(deserialize_with = "friendly::path")]
    pub path: PathBuf,
    /// Multiplies every rate (to fit the trace to the service's capacity).
    #[serde(default = "one")]
    pub scale: f64,
    /// Plays the trace this many times faster than recorded.
    #[serde(default = "one")]
    pub speed: f64,
    /// Skip this much of the trace's start.
    #[serde(default, with = "friendly::duration")]
    pub offset: Duration,
}

fn one() -> f64 {
    1.0
}

/// Enforce decisions, or only record them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Decisions change the target.
    #[default]
    Enforce,
    /// Decisions are journaled; the target is never changed.
    DryRun,
}

/// One scaler: a target, its metrics, its policies and its envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalerConfig {
    /// Unique name.
    pub name: Spanned<String>,
    /// Time between ticks.
    #[serde(with = "friendly::duration")]
    pub interval: Duration,
    /// Lower bound on replicas.
    pub min: Spanned<u32>,
    /// Upper bound on replicas.
    pub max: Spanned<u32>,
    /// Enforce or dry-run.
    #[serde(default)]
    pub mode: Mode,
    /// Start paused (the API can pause and resume at run time too).
    #[serde(default)]
    pub paused: bool,
    /// What is scaled.
    pub target: Spanned<TargetConfig>,
    /// Named metrics (`[scalers.metrics.<name>]`), in file order.
    #[serde(default)]
    pub metrics: IndexMap<String, Spanned<MetricConfig>>,
    /// The policies consulted every tick; scale-out wins.
    pub policies: Vec<Spanned<PolicyRef>>,
    /// The envelope's HPA-style behaviour.
    #[serde(default)]
    pub behavior: Behavior,
}

impl ScalerConfig {
    /// What this scaler's config holds, as a [`Fingerprint`]: a running
    /// daemon keeps this, not the config, to tell which scalers a reloaded
    /// file changes.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(self)
    }
}

/// The thing a scaler scales.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum TargetConfig {
    /// A simulated service from `[simulations]`.
    Simulator {
        /// The `[simulations.<name>]` entry.
        service: String,
    },
    /// An AWS Auto Scaling group.
    AwsAsg(AwsAsgTarget),
    /// A Kubernetes workload, through its scale subresource.
    Kubernetes(KubernetesTarget),
    /// Sharded stateful workers, through their shard coordinator.
    Rebalance(RebalanceTarget),
}

impl TargetConfig {
    /// The actuator kind, as policies see it in `target.kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            TargetConfig::Simulator { .. } => "simulator",
            TargetConfig::AwsAsg(_) => "aws-asg",
            TargetConfig::Kubernetes(_) => "kubernetes",
            TargetConfig::Rebalance(_) => "rebalance",
        }
    }

    /// What this target is, for telling two scalers of one target apart:
    /// the same `key` is the same thing in the world.
    pub fn claim(&self) -> TargetClaim {
        self.claim_with(&TargetDefaults::default())
    }

    /// [`TargetConfig::claim`] with what a target leaves out filled in from
    /// `defaults` (the Kubernetes client's namespace, the AWS SDK's region).
    pub fn claim_with(&self, defaults: &TargetDefaults) -> TargetClaim {
        match self {
            TargetConfig::Simulator { service } => TargetClaim {
                key: format!("simulator\0{service}"),
                field: "service",
                what: format!("target service {service:?}"),
            },
            TargetConfig::AwsAsg(asg) => TargetClaim {
                key: format!(
                    "aws-asg\0{}\0{}\0{}",
                    asg.endpoint.as_deref().map(url_key).unwrap_or_default(),
                    asg.region
                        .as_deref()
                        .or(defaults.region.as_deref())
                        .unwrap_or_default(),
                    asg.group
                ),
                field: "group",
                what: format!("Auto Scaling group {:?}", asg.group),
            },
            TargetConfig::Kubernetes(k8s) => TargetClaim {
                key: format!(
                    "kubernetes\0{}\0{}\0{}\0{}",
                    k8s.api_version,
                    k8s.object,
                    k8s.namespace
                        .as_deref()
                        .or(defaults.namespace.as_deref())
                        .unwrap_or_default(),
                    k8s.name
                ),
                field: "name",
                what: format!("{} {:?}", k8s.object, k8s.name),
            },
            TargetConfig::Rebalance(workers) => TargetClaim {
                key: format!("rebalance\0{}", url_key(&workers.endpoint)),
                field: "endpoint",
                what: format!(
                    "shard coordinator {:?}",
                    validate::without_userinfo(&workers.endpoint)
                ),
            },
        }
    }

    /// The `[simulations.<name>]` entry this target is, if it is simulated.
    pub fn simulation(&self) -> Option<&str> {
        match self {
            TargetConfig::Simulator { service } => Some(service),
            TargetConfig::AwsAsg(_) | TargetConfig::Kubernetes(_) | TargetConfig::Rebalance(_) => {
                None
            }
        }
    }
}

/// Where the problems of `[sources.<name>]` are located: the start of their
/// path (`sources.prom`, `sources."prom.eu"`).
pub fn source_path(name: &str) -> String {
    format!("sources.{}", location::key_segment(name))
}

/// `url` as a URL compares, for a target's claim: `HTTP://Coord:80/` is
/// `http://coord`; credentials written in it are not part of what it is
/// (two scalers on one coordinator were let through when one wrote them,
/// and a reload rotating them moved the scaler).
fn url_key(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            // Never fails for a URL with a host to log in to.
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            String::from(parsed).trim_end_matches('/').to_owned()
        }
        Err(_) => validate::without_userinfo(url)
            .trim_end_matches('/')
            .to_owned(),
    }
}

/// What targets leave out and their clients fill in, as found in the
/// environment at start or reload ([`Config::defaults_needed`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetDefaults {
    /// The Kubernetes client's default namespace.
    pub namespace: Option<String>,
    /// The AWS SDK's default region.
    pub region: Option<String>,
}

/// What a target is in the world ([`TargetConfig::claim`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetClaim {
    /// Equal for two configs of one target.
    pub key: String,
    /// The target's field that names it, where a conflict is reported.
    pub field: &'static str,
    /// The target in words (`Auto Scaling group "web"`).
    pub what: String,
}

/// An AWS Auto Scaling group (`kind = "aws-asg"`); see
/// [`crate::actuators::aws_asg`] for how it scales in. Credentials come from
/// the AWS SDK's usual chain (environment, profile, web identity, instance
/// role); none are written in the config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsAsgTarget {
    /// The group's name.
    pub group: String,
    /// The AWS region (default: the SDK's, e.g. `AWS_REGION`).
    #[serde(default)]
    pub region: Option<String>,
    /// The Auto Scaling API's URL (default: the SDK's, which honours
    /// `AWS_ENDPOINT_URL`): a VPC endpoint, or a test server.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Protect the group's instances from scale-in, so that only Scalewise
    /// picks victims (default true).
    #[serde(default = "yes")]
    pub protect_instances: bool,
    /// POSTed `{"group", "instance_id", "availability_zone"}` for each
    /// victim every tick until it answers 200 (drained); 202 means draining.
    /// A URL, or a table with the URL and its credentials.
    #[serde(default, deserialize_with = "drain_webhook")]
    pub drain_webhook: Option<DrainWebhook>,
    /// POSTed the same body for each victim the drain webhook was asked
    /// about that is then given up and stays in service (its termination
    /// refused, the scale-in given up), so it takes work again; asked every
    /// tick until it answers 2xx, for at most 10 minutes. Needs
    /// `drain_webhook`. The same forms.
    #[serde(default, deserialize_with = "undrain_webhook")]
    pub undrain_webhook: Option<Box<DrainWebhook>>,
    /// The least time between choosing a victim and terminating it.
    #[serde(default, with = "friendly::duration")]
    pub drain_delay: Duration,
    /// The most time a drain may take; then the victim is terminated anyway.
    #[serde(default = "default_drain_timeout", with = "friendly::duration")]
    pub drain_timeout: Duration,
}

fn yes() -> bool {
    true
}

/// An AWS target's drain webhook: `drain_webhook = "https://..."`, or
/// `drain_webhook = { url = "https://...", bearer_token = ..., headers =
/// ..., ca_file = ... }` when it wants credentials or a private CA.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainWebhook {
    /// Where to POST (http:// or https://).
    pub url: String,
    /// Sent as `Authorization: Bearer ...`.
    #[serde(default)]
    pub bearer_token: Option<Secret>,
    /// Extra headers sent with every POST, each text or a secret.
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderSetting>,
    /// Certificates (PEM) to trust for an `https://` URL besides the
    /// system's. Relative to the config file's folder.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A certificate (PEM) to present when the server asks for one
    /// (mutual TLS), with `client_key`, its private key. Both are read again
    /// when they change (looked at when the client is used, at most once a
    /// minute). Relative to the config file's folder.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// The private key (PEM) of `client_cert`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

impl DrainWebhook {
    /// Its credentials and trust, for [`crate::outbound`].
    pub fn http_auth(&self) -> crate::outbound::HttpAuth<'_> {
        crate::outbound::HttpAuth {
            bearer_token: self.bearer_token.as_ref(),
            headers: &self.headers,
            tls: crate::config::TlsFiles {
                ca_file: self.ca_file.as_deref(),
                client_cert: self.client_cert.as_deref(),
                client_key: self.client_key.as_deref(),
            },
        }
    }

    /// A webhook at `url` with no credentials.
    pub fn at(url: impl Into<String>) -> DrainWebhook {
        DrainWebhook {
            url: url.into(),
            ..DrainWebhook::default()
        }
    }
}

/// `undrain_webhook`: as `drain_webhook`, boxed (few targets have one).
fn undrain_webhook<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Box<DrainWebhook>>, D::Error> {
    Ok(drain_webhook(d)?.map(Box::new))
}

/// `drain_webhook`: a URL, or a [`DrainWebhook`] table.
fn drain_webhook<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<DrainWebhook>, D::Error> {
    struct Webhook;
    impl<'de> serde::de::Visitor<'de> for Webhook {
        type Value = DrainWebhook;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(r#"a URL, or a table: { url = "https://...", bearer_token = ..., headers = ..., ca_file = ... }"#)
        }

        fn visit_str<E: serde::de::Error>(self, url: &str) -> Result<DrainWebhook, E> {
            Ok(DrainWebhook::at(url))
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<DrainWebhook, A::Error> {
            DrainWebhook::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }
    }
    d.deserialize_any(Webhook).map(Some)
}

/// A Kubernetes workload (`kind = "kubernetes"`), scaled through its scale
/// subresource as the HorizontalPodAutoscaler does; see
/// [`crate::actuators::kubernetes`]. The client is configured from the
/// environment (`KUBECONFIG`, `~/.kube/config`, or the pod's service account).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesTarget {
    /// The object's API group and version (default `apps/v1`).
    #[serde(default = "default_api_version")]
    pub api_version: String,
    /// The object's kind (default `Deployment`): `StatefulSet`, `ReplicaSet`,
    /// or a custom resource's kind.
    #[serde(default = "default_object")]
    pub object: String,
    /// The object's name.
    pub name: String,
    /// Its namespace (default: the client configuration's).
    #[serde(default)]
    pub namespace: Option<String>,
    /// The resource's plural name, for a kind whose plural is not its
    /// lowercase name plus "s" (default: derived from `object`).
    #[serde(default)]
    pub plural: Option<String>,
    /// Record each change of replicas, and each failure to make one, as a
    /// Kubernetes Event on the workload (`SuccessfulRescale`,
    /// `FailedRescale`, as the HorizontalPodAutoscaler does), so `kubectl
    /// describe` and `kubectl events` show them (default true).
    #[serde(default = "yes")]
    pub events: bool,
}

/// Sharded stateful workers (`kind = "rebalance"`), scaled through their
/// shard coordinator: shards move to new workers once they are ready, and
/// off a worker before it is stopped; see [`crate::actuators::rebalance`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RebalanceTarget {
    /// The shard coordinator API's base URL (`GET {endpoint}/workers`, ...).
    pub endpoint: String,
    /// The most time a change (starting workers, moving shards, stopping
    /// workers) may take before it is given up (default 10m).
    #[serde(default = "default_rebalance_timeout", with = "friendly::duration")]
    pub timeout: Duration,
    /// Sent to the coordinator as `Authorization: Bearer ...`.
    #[serde(default)]
    pub bearer_token: Option<Secret>,
    /// Extra headers sent with every request, each text or a secret.
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderSetting>,
    /// Certificates (PEM) to trust for an `https://` endpoint besides the
    /// system's. Relative to the config file's folder.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A certificate (PEM) to present when the server asks for one
    /// (mutual TLS), with `client_key`, its private key. Both are read again
    /// when they change (looked at when the client is used, at most once a
    /// minute). Relative to the config file's folder.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// The private key (PEM) of `client_cert`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

impl RebalanceTarget {
    /// The coordinator's credentials and trust, for [`crate::outbound`].
    pub fn http_auth(&self) -> crate::outbound::HttpAuth<'_> {
        crate::outbound::HttpAuth {
            bearer_token: self.bearer_token.as_ref(),
            headers: &self.headers,
            tls: crate::config::TlsFiles {
                ca_file: self.ca_file.as_deref(),
                client_cert: self.client_cert.as_deref(),
                client_key: self.client_key.as_deref(),
            },
        }
    }

    /// The coordinator at `endpoint`, with the default timeout and no
    /// credentials.
    pub fn at(endpoint: impl Into<String>) -> RebalanceTarget {
        RebalanceTarget {
            endpoint: endpoint.into(),
            timeout: default_rebalance_timeout(),
            bearer_token: None,
            headers: BTreeMap::new(),
            ca_file: None,
            client_cert: None,
            client_key: None,
        }
    }
}

fn default_rebalance_timeout() -> Duration {
    Duration::from_secs(600)
}

fn default_api_version() -> String {
    "apps/v1".into()
}

fn default_object() -> String {
    "Deployment".into()
}

fn default_drain_timeout() -> Duration {
    Duration::from_secs(300)
}

/// One metric of a scaler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricConfig {
    /// `simulator`, or the name of a `[sources.<name>]` entry.
    pub source: String,
    /// The source's query (PromQL; for the simulator a metric name such as
    /// `cpu`, or `service/metric` for another simulated service).
    pub query: String,
    /// Deliver the series over this window instead of the latest value.
    #[serde(default, with = "friendly::duration::option")]
    pub window: Option<Duration>,
    /// Resolution of the windowed series (default: the scaler's interval).
    #[serde(default, with = "friendly::duration::option")]
    pub step: Option<Duration>,
    /// The newest sample may be at most this old (default: 3 × interval).
    #[serde(default, with = "friendly::duration::option")]
    pub max_age: Option<Duration>,
}

/// A policy module a scaler consults, with its parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRef {
    /// The module's name: its file name in the policy folder without `.wasm`.
    pub module: Spanned<String>,
    /// Parameters passed to the policy (checked against its `describe()`).
    /// Policies given the same table in one config share one copy.
    #[serde(default, deserialize_with = "shared_params")]
    pub params: Option<Spanned<Arc<toml::Table>>>,
}

thread_local! {
    /// The parameter tables the parse running on this thread has read so
    /// far, by their TOML text; `None` outside [`Config::parse_unvalidated`].
    static PARAMS_READ: RefCell<Option<HashMap<String, Arc<toml::Table>>>> =
        const { RefCell::new(None) };
}

/// Parameter sharing for the length of one parse (ended on drop, errors and
/// panics included).
struct ShareParams;

impl ShareParams {
    fn start() -> ShareParams {
        PARAMS_READ.set(Some(HashMap::new()));
        ShareParams
    }
}

impl Drop for ShareParams {
    fn drop(&mut self) {
        PARAMS_READ.set(None);
    }
}

/// Reads a policy's `params`, handing back the table an earlier policy of
/// the same parse was given when the content is the same. A fleet written
/// from a template repeats the same few tables thousands of times, and the
/// parsed config is held until every scaler is built: ~500 bytes a scaler
/// for a two-key table. Done while parsing, so each duplicate is freed at
/// once and its memory reused by what is parsed next, rather than left as
/// holes among the config's other allocations.
fn shared_params<'de, D>(deserializer: D) -> Result<Option<Spanned<Arc<toml::Table>>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let params = Spanned::<toml::Table>::deserialize(deserializer)?;
    let span = params.span();
    let table = params.into_inner();
    let shared = PARAMS_READ.with_borrow_mut(|read| {
        // The TOML text as the key: tables are not hashable, and equal text
        // is equal content. A table that does not serialise is not shared.
        match (read, toml::to_string(&table)) {
            (Some(read), Ok(key)) => read.entry(key).or_insert_with(|| Arc::new(table)).clone(),
            _ => Arc::new(table),
        }
    });
    Ok(Some(Spanned::new(span, shared)))
}

/// HPA `behavior`: how fast and after how much evidence to scale each way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Behavior {
    /// Rules for scaling up.
    #[serde(default = "ScalingRules::default_up")]
    pub scale_up: ScalingRules,
    /// Rules for scaling down.
    #[serde(default = "ScalingRules::default_down")]
    pub scale_down: ScalingRules,
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior {
            scale_up: ScalingRules::default_up(),
            scale_down: ScalingRules::default_down(),
        }
    }
}

/// Rules for one direction, as HPA's `HPAScalingRules` plus a cooldown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalingRules {
    /// Recommendations over this window are considered (up: the lowest
    /// wins; down: the highest wins).
    #[serde(default, with = "friendly::duration::option")]
    pub stabilization_window: Option<Duration>,
    /// Which rate limit applies when several are given.
    #[serde(default)]
    pub select: Select,
    /// Rate limits: at most this many pods or percent per period. Shared:
    /// the scalers left on HPA's defaults hold one copy of them.
    #[serde(default)]
    pub limits: Option<Arc<[RateLimit]>>,
    /// After any scale event, no change in this direction for this long.
    #[serde(default, with = "friendly::duration")]
    pub cooldown: Duration,
}

impl ScalingRules {
    /// HPA's scale-up default: no stabilisation; max(4 pods, 100%) per 15 s.
    pub fn default_up() -> Self {
        static LIMITS: LazyLock<Arc<[RateLimit]>> = LazyLock::new(|| {
            Arc::new([
                RateLimit::pods(4, Duration::from_secs(15)),
                RateLimit::percent(100, Duration::from_secs(15)),
            ])
        });
        ScalingRules {
            stabilization_window: Some(Duration::ZERO),
            select: Select::Max,
            limits: Some(Arc::clone(&LIMITS)),
            cooldown: Duration::ZERO,
        }
    }

    /// HPA's scale-down default: 300 s stabilisation; 100% per 15 s.
    pub fn default_down() -> Self {
        static LIMITS: LazyLock<Arc<[RateLimit]>> =
            LazyLock::new(|| Arc::new([RateLimit::percent(100, Duration::from_secs(15))]));
        ScalingRules {
            stabilization_window: Some(Duration::from_secs(300)),
            select: Select::Max,
            limits: Some(Arc::clone(&LIMITS)),
            cooldown: Duration::ZERO,
        }
    }
}

/// HPA `selectPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Select {
    /// The limit allowing the largest change applies.
    #[default]
    Max,
    /// The limit allowing the smallest change applies.
    Min,
    /// No change in this direction at all.
    Disabled,
}

/// One rate limit (HPA `HPAScalingPolicy`): `pods = N` or `percent = N`, per `period`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// At most this many replicas per period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<u32>,
    /// At most this percentage of the replicas at the period's start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u32>,
    /// The period the limit is measured over.
    #[serde(with = "friendly::duration")]
    pub period: Duration,
}

impl RateLimit {
    /// At most `n` pods per `period`.
    pub fn pods(n: u32, period: Duration) -> Self {
        RateLimit {
            pods: Some(n),
            percent: None,
            period,
        }
    }

    /// At most `n` percent per `period`.
    pub fn percent(n: u32, period: Duration) -> Self {
        RateLimit {
            pods: None,
            percent: Some(n),
            period,
        }
    }
}
