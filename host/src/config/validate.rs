//! The static checks: everything about a config that needs no policy module.
//!
//! Each check reports a [`Problem`] located at the offending value and keeps
//! going, so one refused start (or reload) lists everything to fix.

use std::collections::HashMap;
use std::time::Duration;

use bytesize::ByteSize;

use super::location::{Document, Seg, keys};
use super::{
    ApiConfig, ApiReads, AwsAsgTarget, Behavior, Config, EnvLookup, HeaderSetting,
    KubernetesTarget, LeaderElectionConfig, LoadConfig, MetricConfig, Problem, PrometheusConfig,
    RebalanceTarget, ScalerConfig, ScalingRules, Select, SimulationConfig, SourceConfig,
    TargetConfig,
};
use crate::outbound::HttpAuth;

/// The metric source name that means the simulator, not a `[sources]` entry.
pub const SIMULATOR_SOURCE: &str = "simulator";
pub(super) use crate::sources::target::TARGET_SOURCE;
/// Shortest scaler interval: below this a tick cannot finish reliably.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Longest scaler interval.
const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// HPA's limit on a rate limit's period (`periodSeconds` ≤ 1800).
const MAX_RATE_PERIOD: Duration = Duration::from_secs(30 * 60);
/// HPA's limit on a stabilisation window (`stabilizationWindowSeconds` ≤ 3600).
const MAX_STABILIZATION: Duration = Duration::from_secs(3600);
/// Shortest `journal.retention`: a restart restores the last hour of scale
/// events (the policies' context) from the journal.
const MIN_RETENTION: Duration = Duration::from_secs(3600);
/// Longest `runtime.timeout`: an evaluation holds its scaler's tick, and
/// the epoch deadline is a count of ticks that must not overflow.
const MAX_POLICY_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest cooldown: longer ones are surely a unit mistake.
const MAX_COOLDOWN: Duration = Duration::from_secs(24 * 3600);
/// Prometheus refuses range queries returning more points per series.
const MAX_POINTS: u128 = 11_000;
/// Shortest quiet period before a changed file is loaded: less cannot tell
/// a pause in a copy from its end.
const MIN_DEBOUNCE: Duration = Duration::from_millis(10);
/// Longest quiet period: more only delays every reload.
const MAX_DEBOUNCE: Duration = Duration::from_secs(60);
/// Polling faster than this costs more than it gains.
const MIN_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Longest journal commit delay: every tick waits for its record.
const MAX_COMMIT_DELAY: Duration = Duration::from_secs(1);
/// A policy needs at least this much linear memory to do anything.
const MIN_MEMORY: ByteSize = ByteSize::mib(1);
/// A 32-bit Wasm memory holds no more.
const MAX_MEMORY: ByteSize = ByteSize::gib(4);
/// A faster simulated clock would tick scalers faster than they can run
/// (a 15 s interval every 15 ms), and at extreme speeds overflow the
/// journal's millisecond timestamps.
const MAX_CLOCK_SPEED: f64 = 1000.0;

/// Findings that do not stop the daemon, located like problems: a
/// Prometheus query the PromQL parser here cannot read. Prometheus itself
/// (or a compatible store: Thanos, Mimir, VictoriaMetrics' MetricsQL, a
/// newer Prometheus) is the judge of its own language, and this parser may
/// lag it, so such a query still runs; only its freshness check is skipped.
pub(super) fn warnings(config: &Config, doc: &Document<'_>) -> Vec<Problem> {
    let mut warnings = Vec::new();
    for (i, scaler) in config.scalers.iter().enumerate() {
        // A percent of 0 replicas is 0 (as in HPA): scale-up limits that
        // allow only percents keep a scaler at 0 there for good.
        let up = &scaler.get_ref().behavior.scale_up;
        if *scaler.get_ref().min.get_ref() == 0 {
            let stuck = match (&up.limits, up.select) {
                (Some(limits), Select::Max) => limits.iter().all(|l| l.pods.is_none()),
                (Some(limits), Select::Min) => limits.iter().any(|l| l.percent.is_some()),
                // HPA's default limits, 4 pods and 100 %: the smaller is 0.
                (None, Select::Min) => true,
                (_, Select::Max | Select::Disabled) => false,
            };
            if stuck {
                let (field, which) = match up.limits {
                    Some(_) => ("limits", "these scale-up limits allow"),
                    None => (
                        "select",
                        "select = \"min\" over the default scale-up limits (4 pods, 100 %) allows",
                    ),
                };
                warnings.push(doc.value_problem(
                    &keys!["scalers", i, "behavior", "scale_up", field],
                    format!(
                        "with min = 0, {which} nothing from 0 replicas (a percent of 0 is 0, as \
                         in HPA): at 0 the scaler never scales out; add a `pods` limit (with \
                         select = \"max\")"
                    ),
                ));
            }
        }
        for (name, metric) in &scaler.get_ref().metrics {
            let metric = metric.get_ref();
            let is_prometheus = config
                .sources
                .get(&metric.source)
                .is_some_and(|source| matches!(source.get_ref(), SourceConfig::Prometheus(_)));
            if !is_prometheus || metric.query.trim().is_empty() {
                continue;
            }
            if let Err(reason) = promql_parser::parser::parse(&metric.query) {
                let reason = reason.trim().replace('\n', " ");
                warnings.push(doc.value_problem(
                    &keys!["scalers", i, "metrics", name.as_str(), "query"],
                    format!(
                        "query does not parse as PromQL here ({reason}); it is still sent \
                         to {:?}, which has the last word, but its data's age cannot be \
                         checked (max_age)",
                        metric.source
                    ),
                ));
            }
        }
    }
    warnings.sort_by_key(|w| (w.line, w.column));
    warnings
}

/// The largest `runtime.max_replicas`: within what every actuator's API
/// takes (Kubernetes and AWS counts are 32-bit signed), and a simulated
/// service keeps a few bytes per replica.
pub const MAX_REPLICAS: u32 = 1_000_000;

/// Runs every static check; returns every problem found.
pub(super) fn check(config: &Config, doc: &Document<'_>, env: EnvLookup<'_>) -> Vec<Problem> {
    check_with(config, doc, env, Some(config.runtime.max_replicas))
}

/// [`check`] as a reload is checked against the running daemon's
/// restart-only sections: `[simulations]` is one of them too, so a new
/// file's simulations are held to its own `[runtime]` (by [`check`]), not
/// to the running one they will never run under.
pub(super) fn check_running(
    config: &Config,
    doc: &Document<'_>,
    env: EnvLookup<'_>,
) -> Vec<Problem> {
    check_with(config, doc, env, None)
}

/// `simulation_max`: the `runtime.max_replicas` simulations are held to,
/// if any.
fn check_with(
    config: &Config,
    doc: &Document<'_>,
    env: EnvLookup<'_>,
    simulation_max: Option<u32>,
) -> Vec<Problem> {
    let mut c = Checker {
        doc,
        problems: Vec::new(),
    };
    c.top_level(config);
    c.api(&config.api, env);
    for (name, source) in &config.sources {
        c.source(name, source.get_ref(), env);
    }
    for (name, simulation) in config.simulations.iter() {
        c.simulation(
            name,
            simulation.get_ref(),
            simulation_max.unwrap_or(u32::MAX),
        );
    }
    c.scalers(config, env);
    for (i, notification) in config.notifications.iter().enumerate() {
        c.notification(config, i, notification.get_ref(), env);
    }
    c.problems
}

struct Checker<'d, 't> {
    doc: &'d Document<'t>,
    problems: Vec<Problem>,
}

/// Shows a duration the way config writes it (`1m 30s`).
fn show(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(d)
}

/// Scaler and simulation names: they appear in URLs, metric labels and
/// `service/metric` queries, so they keep to a safe alphabet.
/// `.` and `..` are refused: a URL path normalises them away
/// (`/v1/scalers/../pause`).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

/// Metric names are identifiers: policies look them up by name.
/// Whether `s` is a Kubernetes name: a DNS subdomain (object names, with
/// `dots`) or label (namespaces) of at most `max` characters.
fn dns_name(s: &str, max: usize, dots: bool) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (dots && c == '.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

pub(super) fn valid_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Lists names for a "defined ones are" hint.
/// The names, or the first [`LISTED`] of them and how many more: a fleet's
/// 5,000 simulations would make a 34 KB message.
fn list<'a>(names: impl IntoIterator<Item = &'a String>) -> String {
    let names: Vec<&str> = names.into_iter().map(String::as_str).collect();
    match names.len() {
        0 => "none".to_owned(),
        n if n <= LISTED => names.join(", "),
        n => format!("{}, and {} more", names[..LISTED].join(", "), n - LISTED),
    }
}

/// How many names [`list`] writes out.
const LISTED: usize = 10;

impl Checker<'_, '_> {
    fn value(&mut self, path: &[Seg], message: impl Into<String>) {
        self.problems.push(self.doc.value_problem(path, message));
    }

    fn key(&mut self, path: &[Seg], message: impl Into<String>) {
        self.problems.push(self.doc.key_problem(path, message));
    }

    /// A float that must be finite and above (or, with `zero_ok`, at least) zero.
    fn positive(&mut self, path: &[Seg], field: &str, value: f64, zero_ok: bool) {
        let ok = value.is_finite() && (value > 0.0 || (zero_ok && value == 0.0));
        if !ok {
            let want = if zero_ok {
                "zero or more"
            } else {
                "above zero"
            };
            self.value(
                path,
                format!("{field} ({value}) must be a finite number {want}"),
            );
        }
    }

    fn nonzero(&mut self, path: &[Seg], field: &str, value: Duration) {
        if value.is_zero() {
            self.value(path, format!("{field} must be longer than 0s"));
        }
    }

    /// Durations are counted in milliseconds of an `i64` or added to
    /// clock instants: past a year they are surely a typo (`500000000y`
    /// wrapped to a negative age: stale at every tick; a lease deadline
    /// that far ahead overflows the clock).
    fn at_most_a_year(&mut self, path: &[Seg], field: &str, value: Duration) {
        const YEAR: Duration = Duration::from_secs(366 * 24 * 3600);
        if value > YEAR {
            self.value(
                path,
                format!("{field} ({}) is longer than a year", show(value)),
            );
        }
    }

    /// `[api]`: a token that can be read and sent in a header.
    fn api(&mut self, api: &ApiConfig, env: EnvLookup<'_>) {
        if api.reads == ApiReads::Token && api.token.is_none() {
            self.value(
                &keys!["api", "reads"],
                "reads: \"token\" needs [api] token (the token reads are asked for)",
            );
        }
        if let Some(tls) = &api.tls
            && let Err(err) = crate::api::tls::load(tls)
        {
            self.value(&keys!["api", "tls"], format!("tls: {err}"));
        }
        let Some(token) = &api.token else { return };
        let here = keys!["api", "token"];
        match token.resolve_with_env(env) {
            Err(err) => self.value(&here, format!("token: {err}")),
            Ok(value) if !value.bytes().all(|b| b.is_ascii_graphic()) => self.value(
                &here,
                "token: the token must be printable ASCII without spaces (it is sent as \
                 `Authorization: Bearer <token>`)",
            ),
            Ok(_) => {}
        }
    }

    fn top_level(&mut self, config: &Config) {
        if let Some(election) = &config.leader_election {
            self.leader_election(election);
        }
        let dir = config.policy_dir.get_ref();
        if !dir.is_dir() {
            let what = if dir.exists() {
                "is not a folder"
            } else {
                "does not exist"
            };
            self.value(
                &keys!["policy_dir"],
                format!("policy_dir {} {what}", dir.display()),
            );
        }

        let limits = &config.runtime;
        if limits.max_memory < MIN_MEMORY {
            self.value(
                &keys!["runtime", "max_memory"],
                format!(
                    "max_memory ({}) is below the minimum of {MIN_MEMORY}",
                    limits.max_memory
                ),
            );
        } else if limits.max_memory > MAX_MEMORY {
            self.value(
                &keys!["runtime", "max_memory"],
                format!(
                    "max_memory ({}) is above the maximum of {MAX_MEMORY} (a 32-bit Wasm memory)",
                    limits.max_memory
                ),
            );
        }
        if limits.max_state_bytes > limits.max_memory {
            self.value(
                &keys!["runtime", "max_state_bytes"],
                format!(
                    "max_state_bytes ({}) is more than max_memory ({}): a policy's state is \
                     built in its memory",
                    limits.max_state_bytes, limits.max_memory
                ),
            );
        }
        self.nonzero(&keys!["runtime", "timeout"], "timeout", limits.timeout);
        if limits.timeout > MAX_POLICY_TIMEOUT {
            self.value(
                &keys!["runtime", "timeout"],
                format!(
                    "timeout ({}) must be at most {}: an evaluation holds its scaler's tick",
                    show(limits.timeout),
                    show(MAX_POLICY_TIMEOUT)
                ),
            );
        }
        if limits.max_replicas == 0 || limits.max_replicas > MAX_REPLICAS {
            self.value(
                &keys!["runtime", "max_replicas"],
                format!(
                    "max_replicas ({}) must be from 1 to {MAX_REPLICAS}",
                    limits.max_replicas
                ),
            );
        }
        if limits.max_wasm_stack.as_u64() < 16 * 1024 {
            self.value(
                &keys!["runtime", "max_wasm_stack"],
                format!(
                    "max_wasm_stack ({}) must be at least 16 KiB",
                    limits.max_wasm_stack
                ),
            );
        } else if limits.max_wasm_stack.as_u64() > crate::runtime::MAX_WASM_STACK {
            self.value(
                &keys!["runtime", "max_wasm_stack"],
                format!(
                    "max_wasm_stack ({}) must be at most 1 MiB (it shares the stack of the thread it runs on)",
                    limits.max_wasm_stack
                ),
            );
        }
        if limits.max_reason_bytes == 0 {
            self.value(
                &keys!["runtime", "max_reason_bytes"],
                "max_reason_bytes must be at least 1",
            );
        }

        let watch = &config.watch;
        if watch.debounce < MIN_DEBOUNCE || watch.debounce > MAX_DEBOUNCE {
            self.value(
                &keys!["watch", "debounce"],
                format!(
                    "debounce ({}) must be between {} and {}",
                    show(watch.debounce),
                    show(MIN_DEBOUNCE),
                    show(MAX_DEBOUNCE)
                ),
            );
        }
        self.at_most_a_year(
            &keys!["watch", "poll_interval"],
            "poll_interval",
            watch.poll_interval,
        );
        if watch.poll_interval < MIN_POLL_INTERVAL {
            self.value(
                &keys!["watch", "poll_interval"],
                format!(
                    "poll_interval ({}) is below the minimum of {}",
                    show(watch.poll_interval),
                    show(MIN_POLL_INTERVAL)
                ),
            );
        }

        if config.journal.path.is_dir() || config.journal.path.as_os_str().is_empty() {
            self.value(
                &keys!["journal", "path"],
                format!(
                    "journal path {} is a folder; give the database file, e.g. \"scalewise.db\"",
                    config.journal.path.display()
                ),
            );
        }
        self.nonzero(
            &keys!["journal", "retention"],
            "retention",
            config.journal.retention,
        );
        // A restart restores the envelope, the policies' hour of scale
        // events and the `target` metrics' windows from the journal: records
        // the sweep deleted are lost to it.
        let longest = config
            .scalers
            .iter()
            .flat_map(|s| {
                let s = s.get_ref();
                let name = s.name.get_ref();
                let envelope = (
                    crate::envelope::memory_needed(&s.behavior),
                    format!(
                        "scaler {name:?}'s longest stabilisation window, rate-limit period or cooldown"
                    ),
                );
                // The target's history is kept a tick longer than its
                // longest window (the newest point).
                let target = s
                    .metrics
                    .iter()
                    .filter(|(_, m)| m.get_ref().source == TARGET_SOURCE)
                    .filter_map(|(metric, m)| Some((m.get_ref().window?, metric)))
                    .max_by_key(|(window, _)| *window)
                    .map(|(window, metric)| {
                        (
                            window.saturating_add(s.interval),
                            format!(
                                "scaler {name:?}'s target metric {metric:?}: its window and one interval"
                            ),
                        )
                    });
                std::iter::once(envelope).chain(target)
            })
            .max_by_key(|(needed, _)| *needed);
        let (needed, why) = match longest {
            Some((needed, why)) if needed > MIN_RETENTION => (needed, why),
            _ => (
                MIN_RETENTION,
                "the hour of scale events a policy's context carries".to_owned(),
            ),
        };
        if !config.journal.retention.is_zero() && config.journal.retention < needed {
            self.value(
                &keys!["journal", "retention"],
                format!(
                    "retention ({}) is shorter than what a restart restores from the journal: {} \
                     ({why})",
                    show(config.journal.retention),
                    show(needed)
                ),
            );
        }
        if config.journal.commit_delay > MAX_COMMIT_DELAY {
            self.value(
                &keys!["journal", "commit_delay"],
                format!(
                    "commit_delay ({}) is above the maximum of {}: every tick waits for its record",
                    show(config.journal.commit_delay),
                    show(MAX_COMMIT_DELAY)
                ),
            );
        }
        self.positive(&keys!["clock", "speed"], "speed", config.clock.speed, false);
        let speed = config.clock.speed;
        if speed.is_finite() && speed > MAX_CLOCK_SPEED {
            self.value(
                &keys!["clock", "speed"],
                format!("speed ({speed:e}) must be at most {MAX_CLOCK_SPEED}"),
            );
        }
        let prometheus: Vec<&String> = config
            .sources
            .iter()
            .filter(|(_, source)| matches!(source.get_ref(), SourceConfig::Prometheus(_)))
            .map(|(name, _)| name)
            .collect();
        if speed.is_finite() && speed > 0.0 && speed != 1.0 && !prometheus.is_empty() {
            // Ticks would be stamped ahead of the wall clock, and Prometheus
            // answers a query about the future with its newest data as if it
            // were then: every metric would look fresh, or fail as stale.
            self.value(
                &keys!["clock", "speed"],
                format!(
                    "speed ({speed}) must be 1 while a Prometheus source is configured \
                     (sources: {}): a faster clock would query Prometheus about times \
                     that have not happened yet",
                    list(prometheus)
                ),
            );
        }
    }

    fn notification(
        &mut self,
        config: &Config,
        i: usize,
        n: &crate::config::NotificationConfig,
        env: EnvLookup<'_>,
    ) {
        let at = |field: &str| keys!["notifications", i, field];
        self.http_url(&at("url"), "url", &n.url);
        if n.events.is_empty() {
            self.value(
                &at("events"),
                "events is empty: give scaled, failed or both",
            );
        }
        let names: Vec<&str> = config
            .scalers
            .iter()
            .map(|s| s.get_ref().name.get_ref().as_str())
            .collect();
        for (j, scaler) in n.scalers.iter().enumerate() {
            if !names.contains(&scaler.as_str()) {
                self.value(
                    &keys!["notifications", i, "scalers", j],
                    format!(
                        "no scaler is named {scaler:?}; scalers: {}",
                        list(config.scalers.iter().map(|s| s.get_ref().name.get_ref()))
                    ),
                );
            }
        }
        if n.timeout.is_zero() {
            self.value(&at("timeout"), "timeout must be longer than 0s");
        }
        self.at_most_a_year(&at("timeout"), "timeout", n.timeout);
        self.http_auth(&keys!["notifications", i], n.http_auth(), None, env);
    }

    /// An outbound endpoint's credentials and trust under the table at
    /// `base`: its bearer token and secret headers readable, its headers
    /// valid, its CA file a PEM file of certificates. `other_auth` names
    /// another setting of the table that sets `Authorization` (a source's
    /// `basic_auth`).
    fn http_auth(
        &mut self,
        base: &[Seg],
        auth: HttpAuth<'_>,
        other_auth: Option<&'static str>,
        env: EnvLookup<'_>,
    ) {
        let at = |field: &str| {
            let mut path = base.to_vec();
            path.push(Seg::from(field));
            path
        };
        if let Some(ca) = auth.tls.ca_file
            && let Err(err) = super::read_ca_file(ca)
        {
            self.value(&at("ca_file"), format!("ca_file: {err}"));
        }
        match (auth.tls.client_cert, auth.tls.client_key) {
            (None, None) => {}
            (Some(cert), Some(key)) => {
                if let Err(err) = super::read_identity(cert, key) {
                    let field = if err.starts_with("client_key") {
                        "client_key"
                    } else {
                        "client_cert"
                    };
                    self.value(&at(field), err);
                }
            }
            (Some(_), None) => self.value(
                &at("client_cert"),
                "client_cert: given without client_key (the certificate's private key)",
            ),
            (None, Some(_)) => self.value(
                &at("client_key"),
                "client_key: given without client_cert (the certificate it belongs to)",
            ),
        }
        if let Some(token) = auth.bearer_token {
            match token.resolve_with_env(env) {
                Err(err) => self.value(&at("bearer_token"), format!("bearer_token: {err}")),
                Ok(value) if http::HeaderValue::from_str(&format!("Bearer {value}")).is_err() => {
                    self.value(
                        &at("bearer_token"),
                        format!(
                            "bearer_token: {} has characters an HTTP header cannot carry (a line \
                             break inside it, say)",
                            token.describe()
                        ),
                    );
                }
                Ok(_) => {}
            }
        }
        let sets_authorization = auth.bearer_token.map(|_| "bearer_token").or(other_auth);
        // Header names ignore case: two spellings of one name would both
        // pass, and one of them be lost when the request is built.
        let mut names: HashMap<String, &str> = HashMap::new();
        for (header, setting) in auth.headers {
            let mut here = at("headers");
            here.push(Seg::from(header));
            if let Some(first) = names.insert(header.to_ascii_lowercase(), header.as_str()) {
                self.key(
                    &here,
                    format!(
                        "header {header:?} is also given as {first:?}: header names ignore case; give it once"
                    ),
                );
                continue;
            }
            self.header(&here, header, setting, sets_authorization, env);
        }
    }

    /// One custom header at `here`: a valid name; a value HTTP allows,
    /// read from its secret if it is one; `Authorization` only as a secret
    /// (it carries a credential) and only where `auth`, the table's own
    /// auth setting, is not given (it would set the header too).
    fn header(
        &mut self,
        here: &[Seg],
        header: &str,
        setting: &HeaderSetting,
        auth: Option<&str>,
        env: EnvLookup<'_>,
    ) {
        let plain = matches!(setting, HeaderSetting::Value(_));
        match http::HeaderName::from_bytes(header.as_bytes()) {
            Err(_) => self.key(here, format!("{header:?} is not a valid header name")),
            Ok(name) if name == http::header::AUTHORIZATION => match auth {
                Some(auth) => self.key(
                    here,
                    format!("{auth} sets Authorization already: give one of the two"),
                ),
                None if plain => self.value(
                    here,
                    r#"give Authorization as a secret, { env = "VAR" } or { file = "path" }, which keeps it out of the config"#,
                ),
                None => {}
            },
            Ok(_) => {}
        }
        match setting.resolve_with_env(env) {
            Err(err) => self.value(here, format!("header {header:?}: {err}")),
            Ok(value) if http::HeaderValue::from_str(&value).is_err() => self.value(
                here,
                format!("the value of header {header:?} has characters HTTP does not allow"),
            ),
            Ok(_) => {}
        }
    }

    /// An http:// or https:// URL with a host, for the field `field` at `path`.
    /// Errors quote it without its path and query (a webhook's secret is
    /// often there, and config errors end up in CI logs).
    fn http_url(&mut self, path: &[Seg], field: &str, url: &str) {
        let parsed = url::Url::parse(url);
        let url = &quoted_url(url);
        match parsed {
            Ok(parsed) if !matches!(parsed.scheme(), "http" | "https") => self.value(
                path,
                format!("{field} {url:?} must start with http:// or https://"),
            ),
            Ok(parsed) if !parsed.has_host() => {
                self.value(path, format!("{field} {url:?} has no host"))
            }
            Ok(_) => {}
            Err(err) => self.value(path, format!("{field} {url:?} is not a URL: {err}")),
        }
    }

    fn source(&mut self, name: &str, source: &SourceConfig, env: EnvLookup<'_>) {
        let at = |field: &str| keys!["sources", name, field];
        if name == SIMULATOR_SOURCE {
            self.key(
                &keys!["sources", name],
                format!("the source name {SIMULATOR_SOURCE:?} is reserved for the simulator"),
            );
        }
        if name == TARGET_SOURCE {
            self.key(
                &keys!["sources", name],
                format!(
                    "the source name {TARGET_SOURCE:?} is reserved for the scaler's own target"
                ),
            );
        }
        let SourceConfig::Prometheus(prometheus) = source;
        let PrometheusConfig {
            url,
            timeout,
            bearer_token,
            basic_auth,
            headers,
            ca_file,
            client_cert,
            client_key,
        } = prometheus;
        self.http_url(&at("url"), "url", url);
        self.nonzero(&at("timeout"), "timeout", *timeout);
        self.at_most_a_year(&at("timeout"), "timeout", *timeout);

        if bearer_token.is_some() && basic_auth.is_some() {
            self.value(
                &at("basic_auth"),
                "give at most one of bearer_token and basic_auth",
            );
        }
        if let Some(auth) = basic_auth {
            if auth.username.is_empty() {
                self.value(
                    &keys!["sources", name, "basic_auth", "username"],
                    "username is empty",
                );
            }
            if let Err(err) = auth.password.resolve_with_env(env) {
                self.value(
                    &keys!["sources", name, "basic_auth", "password"],
                    format!("password: {err}"),
                );
            }
        }
        let auth = HttpAuth {
            bearer_token: bearer_token.as_ref(),
            headers,
            tls: super::TlsFiles {
                ca_file: ca_file.as_deref(),
                client_cert: client_cert.as_deref(),
                client_key: client_key.as_deref(),
            },
        };
        let other = basic_auth.as_ref().map(|_| "basic_auth");
        self.http_auth(&keys!["sources", name], auth, other, env);
    }

    fn simulation(&mut self, name: &str, simulation: &SimulationConfig, max_replicas: u32) {
        let at = |field: &str| keys!["simulations", name, field];
        if !valid_name(name) {
            self.key(
                &keys!["simulations", name],
                format!(
                    "simulation name {name:?} must be non-empty, not \".\" or \"..\", and use only a-z, 0-9, '-', '_' and '.'"
                ),
            );
        }
        self.positive(
            &at("capacity_per_replica"),
            "capacity_per_replica",
            simulation.capacity_per_replica,
            false,
        );
        self.at_most_a_year(
            &at("startup_delay"),
            "startup_delay",
            simulation.startup_delay,
        );
        if simulation.base_latency.as_secs_f64() * 1000.0 > crate::simulator::MAX_LATENCY_MS {
            self.value(
                &at("base_latency"),
                format!(
                    "base_latency ({}) must be at most 1m, the most latency a simulation reports",
                    show(simulation.base_latency)
                ),
            );
        }
        if simulation.initial_replicas > max_replicas {
            self.value(
                &at("initial_replicas"),
                format!(
                    "initial_replicas ({}) is above runtime.max_replicas ({max_replicas})",
                    simulation.initial_replicas
                ),
            );
        }
        self.load(name, &simulation.load);
    }

    fn load(&mut self, simulation: &str, load: &LoadConfig) {
        let at = |field: &str| keys!["simulations", simulation, "load", field];
        self.positive(&at("base"), "base", load.base, true);
        self.positive(
            &at("diurnal_amplitude"),
            "diurnal_amplitude",
            load.diurnal_amplitude,
            true,
        );
        // Only where the wave plays: none without an amplitude, or under a
        // trace (which replaces it).
        if load.diurnal_amplitude != 0.0
            && load.trace.is_none()
            && load.diurnal_period < Duration::from_secs(60)
        {
            self.value(
                &at("diurnal_period"),
                format!(
                    "diurnal_period ({}) must be at least 1m: the simulator samples the wave once a second",
                    show(load.diurnal_period)
                ),
            );
        }
        self.at_most_a_year(&at("diurnal_period"), "diurnal_period", load.diurnal_period);
        self.positive(&at("noise"), "noise", load.noise, true);
        for (i, spike) in load.spikes.iter().enumerate() {
            let here = |field: &str| keys!["simulations", simulation, "load", "spikes", i, field];
            self.nonzero(&here("duration"), "duration", spike.duration);
            self.at_most_a_year(&here("duration"), "duration", spike.duration);
            self.at_most_a_year(&here("at"), "at", spike.at);
            for (field, value) in [("at", spike.at), ("duration", spike.duration)] {
                if value.subsec_nanos() != 0 {
                    self.value(
                        &here(field),
                        format!(
                            "{field} ({}) must be whole seconds: the simulator steps once a second",
                            show(value)
                        ),
                    );
                }
            }
            self.positive(&here("extra"), "extra", spike.extra, false);
        }
        if let Some(trace) = &load.trace {
            let here = |field: &str| keys!["simulations", simulation, "load", "trace", field];
            if !trace.path.is_file() {
                let what = if trace.path.exists() {
                    "is not a file"
                } else {
                    "does not exist"
                };
                self.value(
                    &here("path"),
                    format!("trace file {} {what}", trace.path.display()),
                );
            }
            self.at_most_a_year(&here("offset"), "offset", trace.offset);
            self.positive(&here("scale"), "scale", trace.scale, false);
            self.positive(&here("speed"), "speed", trace.speed, false);
            for (field, value) in [
                ("base", load.base),
                ("diurnal_amplitude", load.diurnal_amplitude),
            ] {
                if value != 0.0 {
                    self.value(
                        &at(field),
                        format!(
                            "{field} does not apply with a trace, which replaces the synthetic \
                             curve; remove it (spikes and noise still apply on top of a trace)"
                        ),
                    );
                }
            }
        }
    }

    fn scalers(&mut self, config: &Config, env: EnvLookup<'_>) {
        let mut names: HashMap<&str, usize> = HashMap::new();
        // Which scaler drives each target: two would fight.
        let mut owners: HashMap<String, usize> = HashMap::new();
        for (i, scaler) in config.scalers.iter().enumerate() {
            let scaler = scaler.get_ref();
            let name = scaler.name.get_ref().as_str();
            if !valid_name(name) {
                self.value(
                    &keys!["scalers", i, "name"],
                    format!(
                        "name {name:?} must be non-empty, not \".\" or \"..\", and use only a-z, 0-9, '-', '_' and '.'"
                    ),
                );
            } else if let Some(first) = names.insert(name, i) {
                // Keep the first as the owner of the name.
                names.insert(name, first);
                self.value(
                    &keys!["scalers", i, "name"],
                    format!("name {name:?} is already used by scalers[{first}]"),
                );
            }
            let target = scaler.target.get_ref();
            let unknown_simulation = target
                .simulation()
                .filter(|s| !config.simulations.contains_key(*s));
            if let Some(simulation) = unknown_simulation {
                self.value(
                    &keys!["scalers", i, "target", "service"],
                    format!(
                        "target service {simulation:?} is not a [simulations] entry; defined: {}",
                        list(config.simulations.keys())
                    ),
                );
            } else {
                let claim = target.claim();
                if let Some(&first) = owners.get(&claim.key) {
                    self.value(
                        &keys!["scalers", i, "target", claim.field],
                        format!(
                            "{} is already scaled by scalers[{first}]; two scalers on one target would fight",
                            claim.what
                        ),
                    );
                } else {
                    owners.insert(claim.key, i);
                }
            }
            match target {
                TargetConfig::AwsAsg(asg) => self.aws_asg(i, asg, env),
                TargetConfig::Rebalance(workers) => {
                    self.rebalance(i, workers, scaler.interval, env)
                }
                TargetConfig::Kubernetes(k8s) => self.kubernetes(i, k8s),
                TargetConfig::Simulator { .. } => {}
            }
            self.scaler(config, i, scaler);
        }
    }

    fn kubernetes(&mut self, i: usize, k8s: &KubernetesTarget) {
        let at = |field: &str| keys!["scalers", i, "target", field];
        let dns = dns_name;
        if !dns(&k8s.name, 253, true) {
            self.value(
                &at("name"),
                format!(
                    "name {:?} is not a Kubernetes object name (lowercase letters, digits, '-' and '.', at most 253)",
                    k8s.name
                ),
            );
        }
        if let Some(ns) = &k8s.namespace
            && !dns(ns, 63, false)
        {
            self.value(
                &at("namespace"),
                format!(
                    "namespace {ns:?} is not a Kubernetes namespace name (lowercase letters, digits and '-', at most 63)"
                ),
            );
        }
        let version = k8s.api_version.rsplit('/').next().unwrap_or_default();
        if k8s.api_version.matches('/').count() > 1
            || !version.starts_with('v')
            || !k8s
                .api_version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '/'))
        {
            self.value(
                &at("api_version"),
                format!(
                    "api_version {:?} is not an API version such as \"apps/v1\" or \"v1\"",
                    k8s.api_version
                ),
            );
        }
        if !k8s.object.starts_with(|c: char| c.is_ascii_uppercase())
            || !k8s.object.chars().all(|c| c.is_ascii_alphanumeric())
        {
            self.value(
                &at("object"),
                format!(
                    "object {:?} is not a Kubernetes kind such as \"Deployment\" or \"StatefulSet\"",
                    k8s.object
                ),
            );
        }
        if let Some(plural) = &k8s.plural
            && !dns(plural, 63, false)
        {
            self.value(
                &at("plural"),
                format!("plural {plural:?} is not a resource name such as \"deployments\""),
            );
        }
    }

    fn leader_election(&mut self, election: &LeaderElectionConfig) {
        let at = |field: &str| keys!["leader_election", field];
        if !dns_name(&election.lease, 253, true) {
            self.value(
                &at("lease"),
                format!("lease {:?} is not a Kubernetes object name", election.lease),
            );
        }
        if let Some(ns) = &election.namespace
            && !dns_name(ns, 63, false)
        {
            self.value(
                &at("namespace"),
                format!("namespace {ns:?} is not a Kubernetes namespace name"),
            );
        }
        if let Some(identity) = &election.identity
            && (identity.trim().is_empty() || identity.chars().any(char::is_control))
        {
            self.value(
                &at("identity"),
                format!("identity {identity:?} must be printable and not blank"),
            );
        }
        self.at_most_a_year(
            &at("lease_duration"),
            "lease_duration",
            election.lease_duration,
        );
        if election.lease_duration < MIN_INTERVAL {
            self.value(
                &at("lease_duration"),
                format!(
                    "lease_duration ({}) must be at least 1s",
                    show(election.lease_duration)
                ),
            );
        }
        if election.renew_deadline >= election.lease_duration {
            self.value(
                &at("renew_deadline"),
                format!(
                    "renew_deadline ({}) must be shorter than lease_duration ({}): a leader that \
                     cannot renew must stop before another replica may take over",
                    show(election.renew_deadline),
                    show(election.lease_duration)
                ),
            );
        }
        if election.retry_period.is_zero() || election.retry_period >= election.renew_deadline {
            self.value(
                &at("retry_period"),
                format!(
                    "retry_period ({}) must be above zero and shorter than renew_deadline ({})",
                    show(election.retry_period),
                    show(election.renew_deadline)
                ),
            );
        }
    }

    fn rebalance(
        &mut self,
        i: usize,
        workers: &RebalanceTarget,
        interval: Duration,
        env: EnvLookup<'_>,
    ) {
        let at = |field: &str| keys!["scalers", i, "target", field];
        self.http_url(&at("endpoint"), "endpoint", &workers.endpoint);
        self.http_auth(
            &keys!["scalers", i, "target"],
            workers.http_auth(),
            None,
            env,
        );
        self.at_most_a_year(&at("timeout"), "timeout", workers.timeout);
        if workers.timeout < MIN_INTERVAL {
            self.value(
                &at("timeout"),
                format!("timeout ({}) must be at least 1s", show(workers.timeout)),
            );
        } else if interval <= MAX_INTERVAL && workers.timeout < interval * 2 {
            // (An interval out of range is refused at its own place, and
            // one too long to double overflowed here.) A change is looked at once a tick: a shorter timeout gives a
            // scale-out up before a new worker could be seen ready.
            self.value(
                &at("timeout"),
                format!(
                    "timeout ({}) must be at least twice the scaler's interval ({}): a change \
                     is looked at once a tick",
                    show(workers.timeout),
                    show(interval)
                ),
            );
        }
    }

    fn aws_asg(&mut self, i: usize, asg: &AwsAsgTarget, env: EnvLookup<'_>) {
        let at = |field: &str| keys!["scalers", i, "target", field];
        let group = asg.group.as_str();
        if group.trim().is_empty() || group.len() > 255 || group.chars().any(char::is_control) {
            self.value(
                &at("group"),
                format!("group {group:?} must be an Auto Scaling group's name: 1 to 255 printable characters"),
            );
        }
        if let Some(region) = &asg.region
            && (region.is_empty()
                || !region
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
        {
            self.value(
                &at("region"),
                format!("region {region:?} is not an AWS region name such as \"eu-west-1\""),
            );
        }
        if let Some(endpoint) = &asg.endpoint {
            self.http_url(&at("endpoint"), "endpoint", endpoint);
        }
        for (field, webhook) in [
            ("drain_webhook", asg.drain_webhook.as_ref()),
            ("undrain_webhook", asg.undrain_webhook.as_deref()),
        ] {
            let Some(webhook) = webhook else { continue };
            let base = keys!["scalers", i, "target", field];
            // The URL's own key when the webhook is a table; the nearest
            // written place (the string itself) otherwise.
            self.http_url(
                &keys!["scalers", i, "target", field, "url"],
                field,
                &webhook.url,
            );
            self.http_auth(&base, webhook.http_auth(), None, env);
        }
        if asg.undrain_webhook.is_some() && asg.drain_webhook.is_none() {
            self.value(
                &at("undrain_webhook"),
                "undrain_webhook without drain_webhook: nothing is drained to undo; add the \
                 drain_webhook it undoes, or remove it"
                    .to_owned(),
            );
        }
        self.at_most_a_year(&at("drain_delay"), "drain_delay", asg.drain_delay);
        self.at_most_a_year(&at("drain_timeout"), "drain_timeout", asg.drain_timeout);
        if asg.drain_timeout < asg.drain_delay {
            self.value(
                &at("drain_timeout"),
                format!(
                    "drain_timeout ({}) is shorter than drain_delay ({}); a drain lasts at least drain_delay",
                    humantime::format_duration(asg.drain_timeout),
                    humantime::format_duration(asg.drain_delay)
                ),
            );
        }
    }

    fn scaler(&mut self, config: &Config, i: usize, scaler: &ScalerConfig) {
        let at = |field: &str| keys!["scalers", i, field];
        if scaler.interval < MIN_INTERVAL || scaler.interval > MAX_INTERVAL {
            self.value(
                &at("interval"),
                format!(
                    "interval ({}) must be between 1s and 24h",
                    show(scaler.interval)
                ),
            );
        }
        let (min, max) = (*scaler.min.get_ref(), *scaler.max.get_ref());
        if max == 0 {
            self.value(&at("max"), "max must be at least 1");
        }
        if min > max {
            self.value(
                &at("min"),
                format!("min ({min}) is greater than max ({max})"),
            );
        }
        if max > config.runtime.max_replicas {
            self.value(
                &at("max"),
                format!(
                    "max ({max}) is above runtime.max_replicas ({})",
                    config.runtime.max_replicas
                ),
            );
        }
        for (name, metric) in &scaler.metrics {
            self.metric(config, i, scaler, name, metric.get_ref());
        }
        if scaler.policies.is_empty() {
            self.value(&at("policies"), "a scaler needs at least one policy");
        }
        for (p, policy) in scaler.policies.iter().enumerate() {
            if policy.get_ref().module.get_ref().is_empty() {
                self.value(
                    &keys!["scalers", i, "policies", p, "module"],
                    "module name is empty",
                );
            }
        }
        self.behavior(i, &scaler.behavior);
    }

    fn metric(
        &mut self,
        config: &Config,
        i: usize,
        scaler: &ScalerConfig,
        name: &str,
        metric: &MetricConfig,
    ) {
        let at = |field: &str| keys!["scalers", i, "metrics", name, field];
        if !valid_identifier(name) {
            self.key(
                &keys!["scalers", i, "metrics", name],
                format!(
                    "metric name {name:?} must be an identifier (a letter or '_', then letters, digits or '_')"
                ),
            );
        }
        let query = metric.query.as_str();
        if query.trim().is_empty() {
            self.value(&at("query"), "query is empty");
        }
        if metric.source == SIMULATOR_SOURCE {
            match query.split_once('/') {
                Some((service, series)) => {
                    if !config.simulations.contains_key(service) {
                        self.value(
                            &at("query"),
                            format!(
                                "query {query:?} names simulation {service:?}, which is not defined; defined: {}",
                                list(config.simulations.keys())
                            ),
                        );
                    }
                    if series.parse::<crate::simulator::Metric>().is_err() {
                        self.value(
                            &at("query"),
                            format!(
                                "query {query:?}: {series:?} is not a simulator metric; known: {}",
                                crate::simulator::Metric::names()
                            ),
                        );
                    }
                }
                None if scaler.target.get_ref().simulation().is_none() => self.value(
                    &at("query"),
                    format!(
                        "query {query:?} needs a simulated target; name the simulation as \"service/{query}\""
                    ),
                ),
                None if !query.is_empty() && query.parse::<crate::simulator::Metric>().is_err() => {
                    self.value(
                        &at("query"),
                        format!(
                            "query {query:?} is not a simulator metric; known: {}",
                            crate::simulator::Metric::names()
                        ),
                    )
                }
                None => {}
            }
        } else if metric.source == TARGET_SOURCE {
            let kind = scaler.target.get_ref().kind();
            let names = crate::sources::target::names_for(kind);
            if !query.is_empty() && !names.contains(&query) {
                self.value(
                    &at("query"),
                    format!(
                        "query {query:?} is not something a {kind} target reports; known: {}",
                        names.join(", ")
                    ),
                );
            }
        } else if !config.sources.contains_key(&metric.source) {
            self.value(
                &at("source"),
                format!(
                    "source {:?} is not defined; use {SIMULATOR_SOURCE:?}, {TARGET_SOURCE:?} or one of the [sources]: {}",
                    metric.source,
                    list(config.sources.keys())
                ),
            );
        }

        if let Some(window) = metric.window {
            self.nonzero(&at("window"), "window", window);
            self.at_most_a_year(&at("window"), "window", window);
            if metric.step.is_none() && window < scaler.interval {
                // A target metric has no step to set: one point per tick.
                let remedy = if metric.source == TARGET_SOURCE {
                    "lengthen the window"
                } else {
                    "set a step or lengthen the window"
                };
                self.value(
                    &at("window"),
                    format!(
                        "window ({}) is shorter than its step, which is the scaler's interval \
                         ({}) when none is set: the window would hold one point; {remedy}",
                        show(window),
                        show(scaler.interval)
                    ),
                );
            }
        }
        if metric.step.is_some() && metric.source == TARGET_SOURCE {
            // Ignored there, and the point count below would have divided
            // the window by it.
            self.value(
                &at("step"),
                "step has no effect on a `target` metric: it holds one point per tick (the scaler's interval); remove it",
            );
        }
        if let Some(step) = metric.step {
            self.nonzero(&at("step"), "step", step);
            self.at_most_a_year(&at("step"), "step", step);
            // Series are stepped in whole milliseconds: 500us would be 0
            // (failing every tick) and 1500us silently 1ms.
            if step.subsec_nanos() % 1_000_000 != 0 {
                self.value(
                    &at("step"),
                    format!("step ({}) must be whole milliseconds", show(step)),
                );
            }
            match metric.window {
                None => self.value(&at("step"), "step is set without a window"),
                Some(window) if step > window => self.value(
                    &at("step"),
                    format!(
                        "step ({}) is longer than window ({})",
                        show(step),
                        show(window)
                    ),
                ),
                Some(_) => {}
            }
        }
        if let Some(window) = metric.window {
            let step = match metric.step {
                Some(step) if metric.source != TARGET_SOURCE => step,
                _ => scaler.interval,
            };
            if !step.is_zero() && window.as_millis() / step.as_millis().max(1) > MAX_POINTS {
                let field = if metric.step.is_some() {
                    "step"
                } else {
                    "window"
                };
                let message = if metric.source == TARGET_SOURCE {
                    // Kept in memory, a point per tick, and handed to the
                    // policies at every tick.
                    format!(
                        "window ({}) at the scaler's interval ({}) gives more than {MAX_POINTS} points, a target metric's limit; shorten the window or lengthen the interval",
                        show(window),
                        show(step)
                    )
                } else {
                    format!(
                        "window ({}) at step ({}) gives more than {MAX_POINTS} points, Prometheus's limit; raise step",
                        show(window),
                        show(step)
                    )
                };
                self.value(&at(field), message);
            }
            // Prometheus takes a range's start and end in whole seconds and
            // puts its points at start + k * step. The range ends at the
            // tick's second and spans the window's whole steps, its start
            // rounded up to a second (the span rounded down): its grid ends
            // at the tick's time only if that span is a whole number of
            // steps (5s at 1500ms gave a series a point short, its newest a
            // second old; 30s at 1500ms is fine). As `range_of` does.
            let (window_ms, step_ms) = (window.as_millis(), step.as_millis());
            let span_ms = window_ms / step_ms.max(1) * step_ms;
            if config.sources.contains_key(&metric.source)
                && step_ms > 0
                && !(span_ms / 1000 * 1000).is_multiple_of(step_ms)
            {
                let field = if metric.step.is_some() {
                    "step"
                } else {
                    "window"
                };
                self.value(
                    &at(field),
                    format!(
                        "window ({}) at step ({}{}) would give points that do not end at the tick's time: a Prometheus range query starts and ends on whole seconds; use a step of whole seconds or one that divides a second, or a window of whole steps that is whole seconds",
                        show(window),
                        show(step),
                        if metric.step.is_some() {
                            ""
                        } else {
                            ", the scaler's interval"
                        }
                    ),
                );
            }
        }
        if let Some(max_age) = metric.max_age {
            self.nonzero(&at("max_age"), "max_age", max_age);
            self.at_most_a_year(&at("max_age"), "max_age", max_age);
        }
    }

    fn behavior(&mut self, i: usize, behavior: &Behavior) {
        self.rules(i, "scale_up", &behavior.scale_up);
        self.rules(i, "scale_down", &behavior.scale_down);
    }

    fn rules(&mut self, i: usize, direction: &str, rules: &ScalingRules) {
        let at = |field: &str| keys!["scalers", i, "behavior", direction, field];
        if let Some(window) = rules.stabilization_window
            && window > MAX_STABILIZATION
        {
            self.value(
                &at("stabilization_window"),
                format!(
                    "stabilization_window ({}) is longer than {}",
                    show(window),
                    show(MAX_STABILIZATION)
                ),
            );
        }
        if rules.cooldown > MAX_COOLDOWN {
            self.value(
                &at("cooldown"),
                format!("cooldown ({}) is longer than 24h", show(rules.cooldown)),
            );
        }
        let Some(limits) = &rules.limits else { return };
        if limits.is_empty() && rules.select != super::Select::Disabled {
            self.value(
                &at("limits"),
                "limits is empty; give at least one, or leave it out for HPA's default",
            );
        }
        for (l, limit) in limits.iter().enumerate() {
            let here = keys!["scalers", i, "behavior", direction, "limits", l];
            let field = |f: &str| keys!["scalers", i, "behavior", direction, "limits", l, f];
            match (limit.pods, limit.percent) {
                (Some(_), Some(_)) | (None, None) => {
                    self.value(&here, "give exactly one of pods or percent")
                }
                (Some(0), None) => self.value(&field("pods"), "pods must be at least 1"),
                (None, Some(0)) => self.value(&field("percent"), "percent must be at least 1"),
                _ => {}
            }
            if limit.period.is_zero() || limit.period > MAX_RATE_PERIOD {
                self.value(
                    &field("period"),
                    format!(
                        "period ({}) must be longer than 0s and at most {} (HPA's limit)",
                        show(limit.period),
                        show(MAX_RATE_PERIOD)
                    ),
                );
            }
        }
    }
}

/// `url` without the user and password before an `@` in its authority
/// (`https://…@host/path`), for summaries that show the rest.
pub(super) fn without_userinfo(url: &str) -> std::borrow::Cow<'_, str> {
    let start = url.find("://").map_or(0, |at| at + 3);
    match userinfo_end(&url[start..]) {
        Some(at) => format!("{}…{}", &url[..start], &url[start + at..]).into(),
        None => url.into(),
    }
}

/// Where the user info of `rest` (a URL after its `scheme://`) ends: the
/// last `@` before any `?` or `#`. A password may hold a `/` that a careful
/// URL would have escaped (base64 ones do), so the `@` is looked for past
/// the first `/` too: the price is a URL with an `@` in its path quoted as
/// `…@` the rest, never a password quoted.
fn userinfo_end(rest: &str) -> Option<usize> {
    let before_query = rest.find(['?', '#']).unwrap_or(rest.len());
    rest[..before_query].rfind('@')
}

/// `url` as a config error quotes it, whether or not it parses: cut after
/// the host when a path or query beyond `/` follows
/// (`https://hooks.example/…`: a webhook's secret is often there), and
/// without the user and password before an `@` (`https://…@host`).
/// Without `://`, cut at the first `/`, `?` or `#`.
pub(crate) fn quoted_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(at) => url.split_at(at + 3),
        None => ("", url),
    };
    let (hidden, rest) = match userinfo_end(rest) {
        Some(at) => ("…@", &rest[at + 1..]),
        None => ("", rest),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = format!("{hidden}{authority}");
    let tail = if tail.is_empty() || tail == "/" {
        tail
    } else {
        "/…"
    };
    format!("{scheme}{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_quoted_without_their_secrets() {
        for (url, quoted) in [
            (
                "https://hooks.example/services/T0/B0/XXXX",
                "https://hooks.example/…",
            ),
            ("https://hooks.example/", "https://hooks.example/"),
            ("https://hooks.example", "https://hooks.example"),
            ("https://hooks.example?key=XXXX", "https://hooks.example/…"),
            // Not a URL: still cut.
            ("https//hooks.example/services/XXXX", "https/…"),
            (
                "https://hooks.example:99999/services/XXXX",
                "https://hooks.example:99999/…",
            ),
            ("hxxps://user:pw@host/x", "hxxps://…@host/…"),
            ("https://user:pw@host", "https://…@host"),
            ("", ""),
        ] {
            assert_eq!(quoted_url(url), quoted, "{url}");
        }
        assert_eq!(
            without_userinfo("https://u:p@coord:8443/api?x=1"),
            "https://…@coord:8443/api?x=1"
        );
        // A password with a `/` (base64) is never quoted, even in part.
        assert_eq!(
            quoted_url("https://admin:Ab3/xYz+q@prom.internal/api"),
            "https://…@prom.internal/…"
        );
        assert_eq!(
            without_userinfo("https://admin:Ab3/xYz+q@coord/api"),
            "https://…@coord/api"
        );
        assert_eq!(
            without_userinfo("https://coord/api?who=a@b"),
            "https://coord/api?who=a@b"
        );
    }

    #[test]
    fn long_lists_of_names_are_cut() {
        let names: Vec<String> = (0..5_000).map(|i| format!("svc-{i:05}")).collect();
        let listed = list(&names);
        assert!(listed.starts_with("svc-00000, svc-00001"), "{listed}");
        assert!(listed.ends_with("svc-00009, and 4990 more"), "{listed}");
        assert_eq!(list(&names[..2]), "svc-00000, svc-00001");
        assert_eq!(list(&[]), "none");
    }
}
