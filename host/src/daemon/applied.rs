//! What a running daemon keeps of the config it applied. A fleet's parsed
//! config is most of a fleet's memory (1.1 KB a scaler with its simulation:
//! 11 MiB for 10,000), and once the scalers are built little of it is read
//! again: what tells a reloaded file's changes apart (a fingerprint per
//! scaler, the sources, the listen address) and what the module gate checks
//! a new module version against (the scalers' policies, grouped by content,
//! with where each is in the file; the text to locate a problem in is kept
//! compressed by the config's origin).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use toml::Spanned;

use crate::config::{Config, Fingerprint, Origin, PolicyUses, SourceConfig};

/// A scaler as applied: enough to tell whether a reloaded file changes it.
#[derive(Debug, Clone, Copy)]
pub(super) struct AppliedScaler {
    /// Its config's fingerprint.
    pub fingerprint: Fingerprint,
    /// Its target's fingerprint: a reload that keeps the target keeps the
    /// actuator, and a change it has in flight.
    pub target: Fingerprint,
    /// What its target is (the claim's key), apart from how it is reached:
    /// a reload that changes only settings (a drain timeout, a token) hands
    /// a change in flight over to the new actuator.
    pub claim: Fingerprint,
    /// Whether the config pauses it.
    pub paused: bool,
}

/// The config applied now, without its parsed scalers and simulations.
#[derive(Debug)]
pub(super) struct Applied {
    /// The file and its text.
    pub origin: Origin,
    /// `[api] listen` as applied (the `--listen` flag overrides the file).
    pub listen: SocketAddr,
    /// The named metric sources.
    pub sources: BTreeMap<String, Spanned<SourceConfig>>,
    /// Each scaler, by name.
    pub scalers: HashMap<Box<str>, AppliedScaler>,
    /// The scalers' policies, for the module gate.
    pub policies: PolicyUses,
    /// The longest simulated history any scaler's metrics need, in ms.
    pub longest_window_ms: i64,
}

impl Applied {
    /// What to keep of `config`.
    pub fn of(config: &Config) -> Applied {
        let scalers = config.scalers.iter().map(|s| {
            let s = s.get_ref();
            let kept = AppliedScaler {
                fingerprint: s.fingerprint(),
                target: Fingerprint::of(s.target.get_ref()),
                claim: Fingerprint::of(&s.target.get_ref().claim().key),
                paused: s.paused,
            };
            (s.name.get_ref().as_str().into(), kept)
        });
        Applied {
            origin: config.origin().clone(),
            listen: config.api.listen,
            sources: config.sources.clone(),
            scalers: scalers.collect(),
            policies: PolicyUses::of(config),
            longest_window_ms: super::longest_window_ms(config),
        }
    }
}
