//! The API clients actuators share.
//!
//! One Kubernetes client serves every Kubernetes target (and leader
//! election), and one Auto Scaling client every AWS target of a region and
//! endpoint, as a controller manager shares one client among its
//! controllers. A client per scaler would open its own connections, load
//! its own credentials (an exec plugin run, an STS call for a web identity,
//! an instance metadata call) and keep its own TLS state: with hundreds of
//! targets, hundreds of each.
//!
//! Each client is built on its first use, from the environment, and kept for
//! the life of the daemon (reloads keep it: a changed kubeconfig context or
//! AWS profile takes a restart). A client that cannot be built is
//! tried again at a use [`RETRY_AFTER`] later; the uses meanwhile get the same
//! error at once (one slow failure, an exec plugin timing out, is not paid
//! by every scaler in turn).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OnceCell;
use tokio::time::Instant;

/// The most time one Kubernetes or AWS request may take.
pub const API_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a client that could not be built is not tried again.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);

/// A client built once, on first use, and shared.
pub type SharedClient<T> = Arc<Lazy<T>>;

/// A value built on first use; a failed build is remembered for
/// [`RETRY_AFTER`].
#[derive(Debug)]
pub struct Lazy<T> {
    value: OnceCell<T>,
    /// Held while building; the last failure and when it was.
    building: tokio::sync::Mutex<Option<(Instant, String)>>,
}

impl<T> Default for Lazy<T> {
    fn default() -> Self {
        Lazy {
            value: OnceCell::new(),
            building: tokio::sync::Mutex::new(None),
        }
    }
}

impl<T> Lazy<T> {
    /// One built already (a test's, an embedding program's).
    pub fn ready(value: T) -> Self {
        Lazy {
            value: OnceCell::new_with(Some(value)),
            building: tokio::sync::Mutex::new(None),
        }
    }

    /// Whether it is built.
    pub fn is_built(&self) -> bool {
        self.value.initialized()
    }

    /// The value, if it is built.
    pub fn get(&self) -> Option<&T> {
        self.value.get()
    }

    /// The value, built now by `build` if it is not yet, unless the last
    /// build failed less than [`RETRY_AFTER`] ago: then that failure.
    pub async fn get_or_build<F, Fut>(&self, build: F) -> Result<&T, String>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, String>>,
    {
        if let Some(value) = self.value.get() {
            return Ok(value);
        }
        let mut failed = self.building.lock().await;
        if let Some(value) = self.value.get() {
            return Ok(value);
        }
        if let Some((at, why)) = &*failed
            && at.elapsed() < RETRY_AFTER
        {
            return Err(why.clone());
        }
        match build().await {
            Ok(value) => {
                *failed = None;
                Ok(self.value.get_or_init(|| async { value }).await)
            }
            Err(why) => {
                *failed = Some((Instant::now(), why.clone()));
                Err(why)
            }
        }
    }
}

/// Where an AWS client sends its calls: its region and endpoint as
/// configured (`None`: the SDK's default).
type AwsKey = (Option<String>, Option<String>);

/// The status fields a Kubernetes workload has reported (see
/// [`super::kubernetes::KubernetesActuator`]), shared by the actuators
/// that reach it.
pub type Reported = Arc<Mutex<std::collections::BTreeSet<&'static str>>>;

/// The clients of one daemon; cloning shares them.
#[derive(Clone, Default)]
pub struct TargetClients {
    kube: SharedClient<kube::Client>,
    aws: Arc<Mutex<HashMap<AwsKey, SharedClient<aws_sdk_autoscaling::Client>>>>,
    /// What each Kubernetes workload has reported, by workload: kept across
    /// reloads, as the clients are, so a reload that changes a target's
    /// other settings does not forget it.
    kube_reported: Arc<Mutex<HashMap<String, Reported>>>,
}

impl std::fmt::Debug for TargetClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let aws = self.aws.lock().map(|m| m.len()).unwrap_or_default();
        f.debug_struct("TargetClients")
            .field("kube", &self.kube.is_built())
            .field("aws", &aws)
            .finish()
    }
}

impl TargetClients {
    /// The Kubernetes client's cell: every Kubernetes target shares it.
    pub fn kube_cell(&self) -> SharedClient<kube::Client> {
        self.kube.clone()
    }

    /// Clients whose Kubernetes client is `client` (one already built).
    pub fn with_kube(client: kube::Client) -> TargetClients {
        TargetClients {
            kube: Arc::new(Lazy::ready(client)),
            ..TargetClients::default()
        }
    }

    /// What the Kubernetes workload `key` has reported so far.
    pub fn kube_reported(&self, key: String) -> Reported {
        self.kube_reported
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(key)
            .or_default()
            .clone()
    }

    /// The Kubernetes client, built now if it is not yet.
    pub async fn kube(&self) -> Result<kube::Client, String> {
        kube_client(&self.kube).await
    }

    /// The Kubernetes client's default namespace, if the client is built.
    pub fn kube_namespace(&self) -> Option<String> {
        self.kube.get().map(|c| c.default_namespace().to_owned())
    }

    /// The cell of the Auto Scaling client for `region` and `endpoint`: every
    /// AWS target that names the same two (or leaves them out alike) shares
    /// it.
    pub fn aws_cell(
        &self,
        region: Option<&str>,
        endpoint: Option<&str>,
    ) -> SharedClient<aws_sdk_autoscaling::Client> {
        let key = (region.map(str::to_owned), endpoint.map(str::to_owned));
        let mut clients = self.aws.lock().unwrap_or_else(|e| e.into_inner());
        clients.entry(key).or_default().clone()
    }

    /// The region a built AWS client of targets that leave `region` out
    /// calls, if one is built: the SDK's default as it was found then.
    pub fn aws_default_region(&self) -> Option<String> {
        let clients = self.aws.lock().unwrap_or_else(|e| e.into_inner());
        clients
            .iter()
            .filter(|((region, _), _)| region.is_none())
            .find_map(|(_, cell)| Some(cell.get()?.config().region()?.to_string()))
    }
}

/// The client in `cell`, built now from the environment as `kubectl`'s is
/// (`KUBECONFIG`, `~/.kube/config`, else the pod's service account) if it is
/// not yet. A failure leaves the cell empty, to be tried again after
/// [`RETRY_AFTER`].
pub async fn kube_client(cell: &Lazy<kube::Client>) -> Result<kube::Client, String> {
    let client = cell
        .get_or_build(|| async {
            let mut config = kube::Config::infer().await.map_err(|e| {
                format!(
                    "no Kubernetes client configuration (KUBECONFIG, ~/.kube/config or a \
                     service account): {e}"
                )
            })?;
            config.read_timeout = Some(API_TIMEOUT);
            kube::Client::try_from(config)
                .map_err(|e| format!("cannot build the Kubernetes client: {e}"))
        })
        .await?;
    Ok(client.clone())
}

/// The client in `cell`, loaded now from the environment (credentials chain,
/// region) with `region` and `endpoint` over the SDK's defaults if it is not
/// yet. Without a region from anywhere (the instance metadata service not
/// answering yet, at a boot) nothing is kept, and the next call tries again.
pub async fn aws_client<'a>(
    cell: &'a Lazy<aws_sdk_autoscaling::Client>,
    region: Option<&str>,
    endpoint: Option<&str>,
) -> Result<&'a aws_sdk_autoscaling::Client, String> {
    cell.get_or_build(|| async {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .operation_timeout(API_TIMEOUT)
                    .build(),
            );
        if let Some(region) = region {
            loader = loader.region(aws_config::Region::new(region.to_owned()));
        }
        if let Some(endpoint) = endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let config = loader.load().await;
        if config.region().is_none() {
            return Err(
                "no AWS region: set the target's `region`, AWS_REGION, or a region in \
                        the AWS profile (on EC2 the instance metadata service gives it)"
                    .to_owned(),
            );
        }
        Ok(aws_sdk_autoscaling::Client::new(&config))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_reached_alike_share_a_client() {
        let clients = TargetClients::default();
        let a = clients.aws_cell(Some("eu-west-1"), None);
        let b = clients.clone().aws_cell(Some("eu-west-1"), None);
        assert!(Arc::ptr_eq(&a, &b));
        // Another region, another endpoint, or the default region: another.
        for (region, endpoint) in [
            (Some("us-east-1"), None),
            (Some("eu-west-1"), Some("http://localhost:5000")),
            (None, None),
        ] {
            assert!(!Arc::ptr_eq(&a, &clients.aws_cell(region, endpoint)));
        }
        assert!(Arc::ptr_eq(
            &clients.kube_cell(),
            &clients.clone().kube_cell()
        ));
        // Another daemon's clients are its own.
        let other = TargetClients::default();
        assert!(!Arc::ptr_eq(&a, &other.aws_cell(Some("eu-west-1"), None)));
        assert!(!Arc::ptr_eq(&clients.kube_cell(), &other.kube_cell()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_build_is_not_tried_again_for_a_while() {
        let lazy: Lazy<u32> = Lazy::default();
        let tries = std::sync::atomic::AtomicU32::new(0);
        let build = |answer: Result<u32, String>| {
            let tries = &tries;
            move || async move {
                tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                answer
            }
        };
        assert_eq!(
            lazy.get_or_build(build(Err("down".into()))).await,
            Err("down".into())
        );
        // Within RETRY_AFTER: the same failure, no new try.
        assert_eq!(lazy.get_or_build(build(Ok(7))).await, Err("down".into()));
        assert_eq!(tries.load(std::sync::atomic::Ordering::SeqCst), 1);
        tokio::time::advance(RETRY_AFTER).await;
        assert_eq!(lazy.get_or_build(build(Ok(7))).await, Ok(&7));
        assert_eq!(lazy.get_or_build(build(Ok(8))).await, Ok(&7), "kept");
        assert_eq!(tries.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert!(Lazy::ready(3).is_built());
    }
}
