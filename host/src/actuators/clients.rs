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
//! the life of the daemon (reloads keep it). A client that cannot be built is
//! tried again at the next use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OnceCell;

/// The most time one Kubernetes or AWS request may take.
pub const API_TIMEOUT: Duration = Duration::from_secs(20);

/// A client built once, on first use, and shared.
pub type SharedClient<T> = Arc<OnceCell<T>>;

/// Where an AWS client sends its calls: its region and endpoint as
/// configured (`None`: the SDK's default).
type AwsKey = (Option<String>, Option<String>);

/// The clients of one daemon; cloning shares them.
#[derive(Clone, Default)]
pub struct TargetClients {
    kube: SharedClient<kube::Client>,
    aws: Arc<Mutex<HashMap<AwsKey, SharedClient<aws_sdk_autoscaling::Client>>>>,
}

impl std::fmt::Debug for TargetClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let aws = self.aws.lock().map(|m| m.len()).unwrap_or_default();
        f.debug_struct("TargetClients")
            .field("kube", &self.kube.initialized())
            .field("aws", &aws)
            .finish()
    }
}

impl TargetClients {
    /// The Kubernetes client's cell: every Kubernetes target shares it.
    pub fn kube_cell(&self) -> SharedClient<kube::Client> {
        self.kube.clone()
    }

    /// The Kubernetes client, built now if it is not yet.
    pub async fn kube(&self) -> Result<kube::Client, String> {
        kube_client(&self.kube).await
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
}

/// The client in `cell`, built now from the environment as `kubectl`'s is
/// (`KUBECONFIG`, `~/.kube/config`, else the pod's service account) if it is
/// not yet. A failure leaves the cell empty, to be tried again.
pub async fn kube_client(cell: &OnceCell<kube::Client>) -> Result<kube::Client, String> {
    let client = cell
        .get_or_try_init(|| async {
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
/// yet.
pub async fn aws_client<'a>(
    cell: &'a OnceCell<aws_sdk_autoscaling::Client>,
    region: Option<&str>,
    endpoint: Option<&str>,
) -> &'a aws_sdk_autoscaling::Client {
    cell.get_or_init(|| async {
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
        aws_sdk_autoscaling::Client::new(&loader.load().await)
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
}
