//! Two scalers of one target once what the targets leave out is filled in:
//! a Kubernetes target without `namespace` is in the client's default
//! namespace, an AWS target without `region` in the SDK's default region.
//! Checking the config's text alone ([`super::validate`]) takes them for
//! different targets; the daemon finds the defaults at start and reload
//! ([`crate::daemon`]) and refuses the pair here, at its place in the file.

use std::cell::OnceCell;
use std::collections::HashMap;

use super::location::{Document, keys};
use super::{Config, ConfigError, TargetConfig, TargetDefaults, into_result};

/// Which defaults the check needs: the namespace when some Kubernetes
/// target leaves it out and another one of the same name gives it; the
/// region likewise for AWS groups. Finding a default can take time (an
/// instance metadata call for the region), so only then.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DefaultsNeeded {
    /// The Kubernetes client's namespace.
    pub namespace: bool,
    /// The AWS SDK's region.
    pub region: bool,
}

impl DefaultsNeeded {
    /// What either needs.
    pub fn or(self, other: DefaultsNeeded) -> DefaultsNeeded {
        DefaultsNeeded {
            namespace: self.namespace || other.namespace,
            region: self.region || other.region,
        }
    }

    /// Whether nothing is needed.
    pub fn none(self) -> bool {
        self == DefaultsNeeded::default()
    }
}

impl TargetConfig {
    /// What the journal keeps of this target to tell a scaler's targets
    /// apart across a restart: the claim's key without what the target
    /// could leave to a default ([`TargetConfig::loose_key`]), as a digest.
    /// A target moved to another namespace or region only is taken for the
    /// same one (its journal's ticks are kept, as they were before targets
    /// were told apart).
    /// Credentials written in a shard coordinator's URL are not part of
    /// what the target is (rotating them moves nothing), nor digested into
    /// every row.
    pub fn target_key(&self) -> super::Fingerprint {
        // The claim's key leaves credentials out already.
        super::Fingerprint::of(&self.loose_key())
    }

    /// The key a version before AWS endpoints were compared as URLs wrote
    /// for this target (the endpoint as written): a journal written then is
    /// of the same target after an upgrade. [`TargetConfig::target_key`]
    /// for every other target.
    pub fn earlier_target_key(&self) -> super::Fingerprint {
        match self {
            TargetConfig::AwsAsg(asg) => super::Fingerprint::of(&format!(
                "aws-asg\0{}\0\0{}",
                asg.endpoint.as_deref().unwrap_or_default(),
                asg.group
            )),
            _ => self.target_key(),
        }
    }

    /// [`TargetConfig::claim`]'s key with what the target could leave to a
    /// default (a namespace, a region) left out, named or not: two targets
    /// with the same loose key are one, or differ only there.
    pub fn loose_key(&self) -> String {
        self.loosened().claim().key
    }

    /// This target with what it could leave to a default left out.
    pub fn loosened(&self) -> TargetConfig {
        let mut loose = self.clone();
        match &mut loose {
            TargetConfig::Kubernetes(t) => t.namespace = None,
            TargetConfig::AwsAsg(t) => t.region = None,
            TargetConfig::Simulator { .. } | TargetConfig::Rebalance(_) => {}
        }
        loose
    }

    /// The default this kind of target may leave out.
    pub fn defaultable(&self) -> DefaultsNeeded {
        DefaultsNeeded {
            namespace: matches!(self, TargetConfig::Kubernetes(_)),
            region: matches!(self, TargetConfig::AwsAsg(_)),
        }
    }
}

impl Config {
    /// The defaults [`Config::check_resolved_targets`] needs to know.
    pub fn defaults_needed(&self) -> DefaultsNeeded {
        // By what stays when the left-out field is ignored: (given, left out).
        let mut k8s: HashMap<(&str, &str, &str), (bool, bool)> = HashMap::new();
        let mut asg: HashMap<(String, &str), (bool, bool)> = HashMap::new();
        for scaler in &self.scalers {
            match scaler.get_ref().target.get_ref() {
                TargetConfig::Kubernetes(t) => {
                    let seen = k8s.entry((&t.api_version, &t.object, &t.name)).or_default();
                    match t.namespace {
                        Some(_) => seen.0 = true,
                        None => seen.1 = true,
                    }
                }
                TargetConfig::AwsAsg(t) => {
                    let endpoint = t.endpoint.as_deref().map(super::url_key);
                    let seen = asg
                        .entry((endpoint.unwrap_or_default(), &t.group))
                        .or_default();
                    match t.region {
                        Some(_) => seen.0 = true,
                        None => seen.1 = true,
                    }
                }
                TargetConfig::Simulator { .. } | TargetConfig::Rebalance(_) => {}
            }
        }
        DefaultsNeeded {
            namespace: k8s.values().any(|&(given, left_out)| given && left_out),
            region: asg.values().any(|&(given, left_out)| given && left_out),
        }
    }

    /// Refuses two scalers of one target once `defaults` fill in what
    /// targets leave out: each later one is named at its place, with the
    /// scaler it collides with. (Two that collide as written are refused
    /// when the config is read.)
    pub fn check_resolved_targets(&self, defaults: &TargetDefaults) -> Result<(), ConfigError> {
        let text = OnceCell::new();
        let doc = Document::of(&self.origin, &text);
        let mut owners: HashMap<String, usize> = HashMap::new();
        let mut problems = Vec::new();
        for (i, scaler) in self.scalers.iter().enumerate() {
            let target = scaler.get_ref().target.get_ref();
            let claim = target.claim_with(defaults);
            let Some(&first) = owners.get(&claim.key) else {
                owners.insert(claim.key, i);
                continue;
            };
            let filled = left_to_default(target, defaults)
                .and_then(|(field, value, whose)| Some(format!(" ({field} {:?}, {whose})", value?)))
                .unwrap_or_default();
            let first_filled =
                left_to_default(self.scalers[first].get_ref().target.get_ref(), defaults)
                    .map(|(field, ..)| format!(" (its {field} left to the default)"))
                    .unwrap_or_default();
            problems.push(doc.value_problem(
                &keys!["scalers", i, "target", claim.field],
                format!(
                    "{}{filled} is already scaled by scalers[{first}]{first_filled}; two scalers \
                     on one target would fight",
                    claim.what,
                ),
            ));
        }
        into_result(problems)
    }
}

/// What `target` leaves to its client's default, if anything: the field,
/// the default `defaults` know for it, and whose default it is.
fn left_to_default<'a>(
    target: &TargetConfig,
    defaults: &'a TargetDefaults,
) -> Option<(&'static str, Option<&'a String>, &'static str)> {
    match target {
        TargetConfig::Kubernetes(t) if t.namespace.is_none() => Some((
            "namespace",
            defaults.namespace.as_ref(),
            "the Kubernetes client's default",
        )),
        TargetConfig::AwsAsg(t) if t.region.is_none() => {
            Some(("region", defaults.region.as_ref(), "the AWS SDK's default"))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"policy_dir = "policies"

[[scalers]]
name = "named"
interval = "15s"
min = 1
max = 5
target = { kind = "kubernetes", name = "web", namespace = "shop" }
policies = [{ module = "p" }]

[[scalers]]
name = "defaulted"
interval = "15s"
min = 1
max = 5
target = { kind = "kubernetes", name = "web" }
policies = [{ module = "p" }]

[[scalers]]
name = "group"
interval = "15s"
min = 1
max = 5
target = { kind = "aws-asg", group = "workers" }
policies = [{ module = "p" }]

[[scalers]]
name = "group-in-region"
interval = "15s"
min = 1
max = 5
target = { kind = "aws-asg", group = "workers", region = "eu-west-1" }
policies = [{ module = "p" }]
"#;

    /// `text` as the file `scalewise.toml` of a folder that has the
    /// policy folder it names.
    fn parse(text: &str) -> (Config, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("policies")).unwrap();
        let config = Config::parse(text, &dir.path().join("scalewise.toml")).unwrap();
        (config, dir)
    }

    #[test]
    fn defaults_are_looked_up_only_where_they_could_collide() {
        let (config, _dir) = parse(CONFIG);
        assert_eq!(
            config.defaults_needed(),
            DefaultsNeeded {
                namespace: true,
                region: true
            }
        );
        let apart = CONFIG
            .replace("name = \"web\" }", "name = \"api\" }")
            .replace("group = \"workers\" }", "group = \"jobs\" }");
        let (apart, _dir) = parse(&apart);
        assert_eq!(apart.defaults_needed(), DefaultsNeeded::default());
    }

    #[test]
    fn a_target_that_leaves_out_the_default_it_names_is_refused_at_its_place() {
        let (config, _dir) = parse(CONFIG);
        let defaults = TargetDefaults {
            namespace: Some("shop".into()),
            region: Some("eu-west-1".into()),
        };
        let err = config
            .check_resolved_targets(&defaults)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("scalewise.toml:16")
                && err.contains(
                    "Deployment \"web\" (namespace \"shop\", the Kubernetes client's default) \
                     is already scaled by scalers[0]"
                ),
            "{err}"
        );
        assert!(
            err.contains("scalewise.toml:32")
                && err.contains(
                    "Auto Scaling group \"workers\" is already scaled by scalers[2] (its region \
                     left to the default)"
                ),
            "{err}"
        );
        // Other defaults: different targets.
        let elsewhere = TargetDefaults {
            namespace: Some("default".into()),
            region: Some("us-east-1".into()),
        };
        config.check_resolved_targets(&elsewhere).unwrap();
        // Defaults unknown (no client configuration): nothing to say.
        config
            .check_resolved_targets(&TargetDefaults::default())
            .unwrap();
    }
}
