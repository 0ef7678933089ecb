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

use crate::config::{
    Config, DefaultsNeeded, Fingerprint, Origin, PolicyUses, SourceConfig, TargetConfig,
    TargetDefaults,
};

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
    /// The claim's key without what the target could leave to a default
    /// ([`TargetConfig::loose_key`]); the same as `claim` when it leaves it
    /// out.
    pub loose: Fingerprint,
    /// Whether the config pauses it.
    pub paused: bool,
}

impl AppliedScaler {
    /// The defaults [`AppliedScaler::same_target`] needs to tell whether
    /// `next` is still this scaler's target: one where one of the two names
    /// what the other leaves to its client's default.
    pub fn defaults_to_compare(&self, next: &TargetConfig) -> DefaultsNeeded {
        if Fingerprint::of(&next.claim().key) != self.claim
            && Fingerprint::of(&next.loose_key()) == self.loose
        {
            next.defaultable()
        } else {
            DefaultsNeeded::default()
        }
    }

    /// Whether `next`, from a reloaded config, is the target this scaler
    /// scales: the same as written, or once `defaults` fill in what one of
    /// the two leaves out (a reload that writes out the default namespace
    /// or region). A default not found tells them apart.
    pub fn same_target(&self, next: &TargetConfig, defaults: &TargetDefaults) -> bool {
        if Fingerprint::of(&next.claim().key) == self.claim {
            return true;
        }
        if Fingerprint::of(&next.loose_key()) != self.loose {
            return false;
        }
        // One of the two names it and the other leaves it out.
        let before = match self.claim == self.loose {
            true => Fingerprint::of(&next.loosened().claim_with(defaults).key),
            false => self.claim,
        };
        before == Fingerprint::of(&next.claim_with(defaults).key)
    }
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
                loose: Fingerprint::of(&s.target.get_ref().loose_key()),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn target(text: &str) -> TargetConfig {
        toml::from_str(text).unwrap()
    }

    fn applied(target: &TargetConfig) -> AppliedScaler {
        AppliedScaler {
            fingerprint: Fingerprint::of(&()),
            target: Fingerprint::of(target),
            claim: Fingerprint::of(&target.claim().key),
            loose: Fingerprint::of(&target.loose_key()),
            paused: false,
        }
    }

    #[test]
    fn a_reloaded_target_that_writes_out_its_default_is_the_same_target() {
        let defaults = TargetDefaults {
            namespace: Some("shop".into()),
            region: Some("eu-west-1".into()),
        };
        let unknown = TargetDefaults::default();
        let web = target("kind = \"kubernetes\"\nname = \"web\"");
        let web_in_shop = target("kind = \"kubernetes\"\nname = \"web\"\nnamespace = \"shop\"");
        let web_in_ops = target("kind = \"kubernetes\"\nname = \"web\"\nnamespace = \"ops\"");
        let api_in_shop = target("kind = \"kubernetes\"\nname = \"api\"\nnamespace = \"shop\"");
        let group = target("kind = \"aws-asg\"\ngroup = \"workers\"");
        let group_in = |region: &str| {
            target(&format!(
                "kind = \"aws-asg\"\ngroup = \"workers\"\nregion = \"{region}\"\n\
                 drain_timeout = \"20m\""
            ))
        };
        let namespace = DefaultsNeeded {
            namespace: true,
            region: false,
        };
        let region = DefaultsNeeded {
            namespace: false,
            region: true,
        };

        // Written out, or left out again: the same once the default is known.
        for (before, next, needed) in [
            (&web, &web_in_shop, namespace),
            (&web_in_shop, &web, namespace),
            (&group, &group_in("eu-west-1"), region),
            (&group_in("eu-west-1"), &group, region),
        ] {
            let before = applied(before);
            assert_eq!(before.defaults_to_compare(next), needed, "{next:?}");
            assert!(before.same_target(next, &defaults), "{next:?}");
            assert!(!before.same_target(next, &unknown), "{next:?}");
        }
        // Another namespace or region than the default: another target.
        for (before, next) in [
            (&web, &web_in_ops),
            (&web_in_ops, &web),
            (&group, &group_in("us-east-1")),
            (&group_in("us-east-1"), &group),
        ] {
            assert!(!applied(before).same_target(next, &defaults), "{next:?}");
        }
        // The same as written, or another workload: no default to look up.
        for (before, next, same) in [
            (&web_in_shop, &web_in_shop, true),
            (&group_in("eu-west-1"), &group_in("eu-west-1"), true),
            (&web, &api_in_shop, false),
            (&web_in_shop, &api_in_shop, false),
        ] {
            let before = applied(before);
            assert!(before.defaults_to_compare(next).none(), "{next:?}");
            assert_eq!(before.same_target(next, &unknown), same, "{next:?}");
        }
    }
}
