//! What a running daemon keeps of the config it applied. A fleet's parsed
//! config is most of a fleet's memory (1.1 KB a scaler with its simulation:
//! 11 MiB for 10,000), and once the scalers are built little of it is read
//! again: what tells a reloaded file's changes apart (a fingerprint per
//! scaler, the sources, the listen address) and, when a new version of a
//! module the scalers use arrives, the scalers' policies — parsed again for
//! that from the applied text, which the config's origin keeps compressed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;

use toml::Spanned;

use crate::config::{Config, ConfigError, Fingerprint, Origin, SourceConfig};

/// A scaler as applied: enough to tell whether a reloaded file changes it.
#[derive(Debug, Clone, Copy)]
pub(super) struct AppliedScaler {
    /// Its config's fingerprint.
    pub fingerprint: Fingerprint,
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
    pub scalers: HashMap<String, AppliedScaler>,
    /// The modules any scaler consults.
    pub modules: BTreeSet<String>,
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
                paused: s.paused,
            };
            (s.name.get_ref().clone(), kept)
        });
        let modules = config
            .scalers
            .iter()
            .flat_map(|s| &s.get_ref().policies)
            .map(|p| p.get_ref().module.get_ref().clone());
        Applied {
            origin: config.origin().clone(),
            listen: config.api.listen,
            sources: config.sources.clone(),
            scalers: scalers.collect(),
            modules: modules.collect(),
            longest_window_ms: super::longest_window_ms(config),
        }
    }

    /// The applied config parsed again from its text (not validated: it
    /// was when it was applied, and the text has not changed since).
    pub fn reparse(&self) -> Result<Config, ConfigError> {
        Config::parse_unvalidated(&self.origin.text(), self.origin.path())
    }
}
