//! A fake Kubernetes API server, for the Kubernetes actuator's tests.
//!
//! This is a fake, not a real component: no Kubernetes API server can run on
//! the machines the suite runs on (none is packaged in any registry they
//! reach, and there is no container engine). It serves the few endpoints
//! the actuator calls, shaped as the real server's (the `autoscaling/v1`
//! `Scale` of a workload's `/scale` subresource, the workload itself, and
//! `Status` errors), checks what a real server would refuse (the merge-patch
//! content type, a patch that is not a replica count), and records every
//! request so tests can check their shape. Tests set the workloads' ready
//! counts themselves: there is no controller behind it.
//!
//! [`FakeKube::kubeconfig`] writes a kubeconfig that points at it, for
//! `scalewise run` with `KUBECONFIG`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use scalewise::leader::PAUSES_ANNOTATION;
use serde_json::{Value, json};

/// One workload the fake serves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Workload {
    /// `spec.replicas`.
    pub replicas: u32,
    /// `status.readyReplicas`, left out of the object when `None` (as the
    /// API server leaves it out at 0).
    pub ready: Option<u32>,
    /// `status.availableReplicas`, left out when `None`.
    pub available: Option<u32>,
    /// `status.updatedReplicas`, left out when `None`.
    pub updated: Option<u32>,
    /// Every request about it is refused with 403.
    pub forbidden: bool,
    /// Its kind serves no `/scale` (a CustomResourceDefinition without
    /// `subresources.scale`): the subresource answers 404.
    pub no_scale: bool,
}

/// A request the fake received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// GET or PATCH.
    pub method: Method,
    /// The URL path.
    pub path: String,
    /// The Content-Type header, if any.
    pub content_type: Option<String>,
    /// The Authorization header, if any.
    pub authorization: Option<String>,
    /// The body, parsed as JSON (`Null` when empty).
    pub body: Value,
}

/// Workloads by (group, version, namespace, plural, name).
type Key = (String, String, String, String, String);

#[derive(Debug, Default)]
struct Inner {
    workloads: BTreeMap<Key, Workload>,
    seen: Vec<Seen>,
    requests: Vec<(Method, String)>,
    events: Vec<Value>,
    /// `coordination.k8s.io/v1` Leases by (namespace, name), as stored.
    leases: BTreeMap<(String, String), Value>,
    /// The last resourceVersion given out.
    version: u64,
    /// Each workload's resourceVersion: new at every write (a test's
    /// `put` too, as another writer's change would be).
    workload_versions: BTreeMap<Key, u64>,
    /// Every Lease request is answered with this status instead.
    leases_failing: Option<StatusCode>,
    /// Every Lease read is taken and never answered.
    leases_hanging: bool,
    /// Every Lease replace is applied and never answered (a renewal whose
    /// answer is lost).
    lease_writes_unanswered: bool,
    /// A replace that changes the Lease's pause flags is refused with 500
    /// (renewals, which keep them, go through).
    pause_writes_failing: bool,
    /// (group, version, plural) the server does not serve: requests under
    /// them get the 404 of an unknown path.
    unserved: BTreeSet<(String, String, String)>,
}

/// A fake API server on a loopback port, for as long as the test's runtime.
#[derive(Debug, Clone)]
pub struct FakeKube {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

impl FakeKube {
    /// Starts serving on a free loopback port.
    pub async fn start() -> anyhow::Result<FakeKube> {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new()
            .route(
                "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases",
                axum::routing::post(create_lease),
            )
            .route(
                "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}",
                get(get_lease).put(replace_lease),
            )
            .route(
                "/apis/events.k8s.io/v1/namespaces/{ns}/events",
                axum::routing::post(create_event),
            )
            .route(
                "/apis/{group}/{version}/namespaces/{ns}/{plural}/{name}",
                get(object),
            )
            .route(
                "/apis/{group}/{version}/namespaces/{ns}/{plural}/{name}/scale",
                get(scale).patch(scale),
            )
            .fallback(|| async { unknown_path() })
            .with_state(inner.clone())
            .layer(axum::middleware::from_fn_with_state(
                inner.clone(),
                log_request,
            ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(FakeKube { addr, inner })
    }

    /// The Lease `namespace/name` as stored, if any.
    pub fn lease(&self, namespace: &str, name: &str) -> Option<Value> {
        let inner = self.inner.lock().unwrap();
        inner.leases.get(&(namespace.into(), name.into())).cloned()
    }

    /// Deletes the Lease `namespace/name` (as `kubectl delete lease` would).
    pub fn delete_lease(&self, namespace: &str, name: &str) {
        let mut inner = self.inner.lock().unwrap();
        inner.leases.remove(&(namespace.into(), name.into()));
    }

    /// Makes every Lease request fail with `code` (`None`: work again).
    pub fn fail_leases(&self, code: Option<StatusCode>) {
        self.inner.lock().unwrap().leases_failing = code;
    }

    /// Makes every replace of a Lease that changes its pause flags (the
    /// `scalewise.dev/pauses` annotation) fail with 500, while renewals go
    /// through (`false`: take them again).
    pub fn fail_pause_writes(&self, fail: bool) {
        self.inner.lock().unwrap().pause_writes_failing = fail;
    }

    /// Makes every read of a Lease hang: the server takes the request and
    /// never answers (`false`: answer again).
    pub fn hang_leases(&self, hang: bool) {
        self.inner.lock().unwrap().leases_hanging = hang;
    }

    /// Makes every Lease replace apply and then never answer (`false`:
    /// answer again).
    pub fn lose_lease_write_answers(&self, lose: bool) {
        self.inner.lock().unwrap().lease_writes_unanswered = lose;
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds or replaces a workload: `api_version` as in a manifest
    /// (`apps/v1`), `plural` its resource (`deployments`).
    pub fn put(&self, api_version: &str, plural: &str, ns: &str, name: &str, w: Workload) {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let key: Key = (
            group.into(),
            version.into(),
            ns.into(),
            plural.into(),
            name.into(),
        );
        let mut inner = self.inner.lock().unwrap();
        bump(&mut inner, &key);
        inner.workloads.insert(key, w);
    }

    /// Adds an `apps/v1` Deployment `ns/name` with `replicas`, all ready.
    pub fn put_deployment(&self, ns: &str, name: &str, replicas: u32) {
        let w = Workload {
            replicas,
            ready: Some(replicas),
            available: Some(replicas),
            updated: Some(replicas),
            ..Workload::default()
        };
        self.put("apps/v1", "deployments", ns, name, w);
    }

    /// Stops serving the resource `plural` of `api_version`, as a server
    /// without that CustomResourceDefinition (or a misspelt kind).
    pub fn unserve(&self, api_version: &str, plural: &str) {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        self.inner
            .lock()
            .unwrap()
            .unserved
            .insert((group.into(), version.into(), plural.into()));
    }

    /// The workload, as it is now.
    pub fn workload(
        &self,
        api_version: &str,
        plural: &str,
        ns: &str,
        name: &str,
    ) -> Option<Workload> {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        self.inner
            .lock()
            .unwrap()
            .workloads
            .get(&(
                group.into(),
                version.into(),
                ns.into(),
                plural.into(),
                name.into(),
            ))
            .cloned()
    }

    /// The method and path of every request so far, whatever it was about
    /// (workloads, leases, paths the fake does not serve), oldest first.
    pub fn requests(&self) -> Vec<(Method, String)> {
        self.inner.lock().unwrap().requests.clone()
    }

    /// Every `events.k8s.io/v1` Event created so far, oldest first, as
    /// stored (with the name the server generated).
    pub fn events(&self) -> Vec<Value> {
        self.inner.lock().unwrap().events.clone()
    }

    /// Every request about a workload so far, oldest first.
    pub fn seen(&self) -> Vec<Seen> {
        self.inner.lock().unwrap().seen.clone()
    }

    /// A kubeconfig file at `path` whose current context is this server
    /// (plain HTTP, no credentials), with `namespace` as its default.
    pub fn kubeconfig(&self, path: &Path, namespace: &str) -> std::io::Result<()> {
        self.kubeconfig_for_user(path, namespace, "{}")
    }

    /// A kubeconfig as [`FakeKube::kubeconfig`]'s whose user gets a token
    /// from an exec credential plugin, as EKS's and GKE's kubeconfigs do:
    /// `plugin`, an executable, run with no arguments. [`exec_plugin`]
    /// writes one.
    pub fn kubeconfig_with_exec(
        &self,
        path: &Path,
        namespace: &str,
        plugin: &Path,
    ) -> std::io::Result<()> {
        let user = format!(
            "\n    exec:\n      apiVersion: client.authentication.k8s.io/v1beta1\n      \
             command: {}\n      interactiveMode: Never",
            plugin.display()
        );
        self.kubeconfig_for_user(path, namespace, &user)
    }

    fn kubeconfig_for_user(&self, path: &Path, namespace: &str, user: &str) -> std::io::Result<()> {
        std::fs::write(
            path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
                 users:\n- name: fake\n  user: {user}\ncontexts:\n- name: fake\n  context:\n    \
                 cluster: fake\n    user: fake\n    namespace: {namespace}\ncurrent-context: fake\n",
                self.url()
            ),
        )
    }

    /// Runs `binary run` (the `scalewise` binary) on `config` in `dir`, its
    /// Kubernetes client configured, as in production, by a kubeconfig for
    /// this server (default namespace `namespace`) written there and named
    /// by `KUBECONFIG`.
    pub fn run_daemon(
        &self,
        binary: &str,
        dir: &Path,
        namespace: &str,
        config: &str,
    ) -> anyhow::Result<crate::daemon_process::DaemonProcess> {
        let kubeconfig = dir.join("kubeconfig");
        self.kubeconfig(&kubeconfig, namespace)?;
        crate::daemon_process::DaemonProcess::start(binary, dir, config, |c| {
            c.env("KUBECONFIG", &kubeconfig)
                .env_remove("KUBERNETES_SERVICE_HOST")
                .env_remove("KUBERNETES_SERVICE_PORT");
        })
    }

    /// A client for this server, with `namespace` as its default.
    pub fn client(&self, namespace: &str) -> kube::Client {
        let mut config = kube::Config::new(self.url().parse().expect("a valid URL"));
        config.default_namespace = namespace.into();
        kube::Client::try_from(config).expect("a client for the fake")
    }
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    status_with(code, reason, message, json!({}))
}

/// A Status whose `details` name the object, as the real server's do.
fn status_with(code: StatusCode, reason: &str, message: &str, details: Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "details": details,
            "code": code.as_u16(),
        })
        .to_string(),
    )
        .into_response()
}

/// The 404 of a path the server does not serve.
fn unknown_path() -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        "the server could not find the requested resource",
    )
}

fn json_response(value: Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

/// Stores an Event as the real server would: in the path's namespace, with
/// a name generated from `metadata.generateName`, answered 201.
async fn create_event(
    State(inner): State<Arc<Mutex<Inner>>>,
    UrlPath(ns): UrlPath<String>,
    body: Bytes,
) -> Response {
    let Ok(mut event) = serde_json::from_slice::<Value>(&body) else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the body is not JSON",
        );
    };
    if event["metadata"]["namespace"]
        .as_str()
        .is_some_and(|n| n != ns)
    {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the namespace of the provided object does not match the namespace sent on the request",
        );
    }
    let mut inner = inner.lock().unwrap();
    let prefix = event["metadata"]["generateName"]
        .as_str()
        .unwrap_or("event.");
    event["metadata"]["name"] = json!(format!("{prefix}{:05}", inner.events.len()));
    event["metadata"]["namespace"] = json!(ns);
    inner.events.push(event.clone());
    let mut response = json_response(event);
    *response.status_mut() = StatusCode::CREATED;
    response
}

/// Notes the method and path of every request before it is served.
async fn log_request(
    State(inner): State<Arc<Mutex<Inner>>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let entry = (request.method().clone(), request.uri().path().to_owned());
    inner.lock().unwrap().requests.push(entry);
    next.run(request).await
}

type Params = UrlPath<(String, String, String, String, String)>;

fn record(inner: &Mutex<Inner>, method: Method, path: String, headers: &HeaderMap, body: &Bytes) {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = serde_json::from_slice(body).unwrap_or(Value::Null);
    inner.lock().unwrap().seen.push(Seen {
        method,
        path,
        content_type,
        authorization,
        body,
    });
}

/// Gives `key`'s workload a new resourceVersion.
fn bump(inner: &mut Inner, key: &Key) {
    inner.version += 1;
    let version = inner.version;
    inner.workload_versions.insert(key.clone(), version);
}

/// The workload's metadata: its name, namespace, a uid of its own (as every
/// real object has) and its resourceVersion.
fn workload_meta(inner: &Inner, key: &Key) -> Value {
    let (_, _, ns, plural, name) = key;
    json!({
        "name": name,
        "namespace": ns,
        "uid": format!("uid-{ns}-{plural}-{name}"),
        "resourceVersion": inner.workload_versions.get(key).copied().unwrap_or(0).to_string(),
    })
}

/// Looks the workload up, or the error a real server would give.
fn find(inner: &Inner, key: &Key) -> Result<Workload, Box<Response>> {
    let (group, version, _, plural, name) = key;
    if inner
        .unserved
        .contains(&(group.clone(), version.clone(), plural.clone()))
    {
        return Err(Box::new(unknown_path()));
    }
    match inner.workloads.get(key) {
        None => Err(Box::new(status_with(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("{plural}.{group} {name:?} not found"),
            json!({ "name": name, "group": group, "kind": plural }),
        ))),
        Some(w) if w.forbidden => Err(Box::new(status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            &format!(
                "{plural} {name:?} is forbidden: User \"system:serviceaccount:default:scalewise\" \
                 cannot get resource \"{plural}\""
            ),
        ))),
        Some(w) => Ok(w.clone()),
    }
}

async fn object(
    State(inner): State<Arc<Mutex<Inner>>>,
    UrlPath(key): Params,
    method: Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&inner, method, uri.path().to_owned(), &headers, &body);
    let guard = inner.lock().unwrap();
    let w = match find(&guard, &key) {
        Ok(w) => w,
        Err(e) => return *e,
    };
    let (group, version, _, _, _) = &key;
    let mut status = json!({ "replicas": w.replicas });
    for (field, count) in [
        ("readyReplicas", w.ready),
        ("availableReplicas", w.available),
        ("updatedReplicas", w.updated),
    ] {
        if let Some(n) = count {
            status[field] = json!(n);
        }
    }
    json_response(json!({
        "apiVersion": format!("{group}/{version}"),
        "kind": "Workload",
        "metadata": workload_meta(&guard, &key),
        "spec": { "replicas": w.replicas },
        "status": status,
    }))
}

async fn scale(
    State(inner): State<Arc<Mutex<Inner>>>,
    UrlPath(key): Params,
    method: Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(
        &inner,
        method.clone(),
        uri.path().to_owned(),
        &headers,
        &body,
    );
    let mut guard = inner.lock().unwrap();
    let mut w = match find(&guard, &key) {
        Ok(w) => w,
        Err(e) => return *e,
    };
    if w.no_scale {
        return unknown_path();
    }
    if method == Method::PATCH {
        let merge = headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v == "application/merge-patch+json");
        if !merge {
            return status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format",
            );
        }
        let patch: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let Some(replicas) = patch["spec"]["replicas"].as_u64() else {
            return status(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                "spec.replicas: Required value",
            );
        };
        // A resourceVersion in the patch is a precondition, as the real
        // server treats it.
        if let Some(expected) = patch["metadata"]["resourceVersion"].as_str()
            && workload_meta(&guard, &key)["resourceVersion"] != expected
        {
            let (_, _, _, plural, name) = &key;
            return status(
                StatusCode::CONFLICT,
                "Conflict",
                &format!(
                    "Operation cannot be fulfilled on {plural} {name:?}: the object has been \
                     modified; please apply your changes to the latest version and try again"
                ),
            );
        }
        w.replicas = replicas as u32;
        guard.workloads.insert(key.clone(), w.clone());
        bump(&mut guard, &key);
    }
    let (_, _, _, _, name) = &key;
    json_response(json!({
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": workload_meta(&guard, &key),
        "spec": { "replicas": w.replicas },
        "status": { "replicas": w.replicas, "selector": format!("app={name}") },
    }))
}

type LeaseParams = UrlPath<(String, String)>;

fn lease_failing(inner: &Inner) -> Option<Response> {
    inner
        .leases_failing
        .map(|code| status(code, "InternalError", "leases are failing on purpose"))
}

/// Stores `lease` under a new resourceVersion and answers it with `code`.
fn store_lease(
    inner: &mut Inner,
    key: (String, String),
    mut lease: Value,
    code: StatusCode,
) -> Response {
    inner.version += 1;
    lease["metadata"]["resourceVersion"] = json!(inner.version.to_string());
    lease["metadata"]["name"] = json!(key.1);
    lease["metadata"]["namespace"] = json!(key.0);
    inner.leases.insert(key, lease.clone());
    let mut response = json_response(lease);
    *response.status_mut() = code;
    response
}

async fn get_lease(
    State(inner): State<Arc<Mutex<Inner>>>,
    UrlPath((ns, name)): LeaseParams,
) -> Response {
    let hanging = inner.lock().unwrap().leases_hanging;
    if hanging {
        std::future::pending::<()>().await;
    }
    let inner = inner.lock().unwrap();
    if let Some(failure) = lease_failing(&inner) {
        return failure;
    }
    match inner.leases.get(&(ns, name.clone())) {
        Some(lease) => json_response(lease.clone()),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("leases.coordination.k8s.io {name:?} not found"),
        ),
    }
}

/// The Lease a create or replace sends, or the answer refusing it (leases
/// failing on purpose, a body that is not JSON).
fn lease_write(inner: &Inner, body: &Bytes) -> Result<Value, Box<Response>> {
    if let Some(failure) = lease_failing(inner) {
        return Err(Box::new(failure));
    }
    serde_json::from_slice(body).map_err(|_| {
        Box::new(status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the body is not JSON",
        ))
    })
}

async fn create_lease(
    State(inner): State<Arc<Mutex<Inner>>>,
    UrlPath(ns): UrlPath<String>,
    body: Bytes,
) -> Response {
    let mut inner = inner.lock().unwrap();
    let lease = match lease_write(&inner, &body) {
        Ok(lease) => lease,
        Err(refused) => return *refused,
    };
    let name = lease["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let key = (ns, name.clone());
    if inner.leases.contains_key(&key) {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            &format!("leases.coordination.k8s.io {name:?} already exists"),
        );
    }
    store_lease(&mut inner, key, lease, StatusCode::CREATED)
}

/// A replace succeeds only against the stored resourceVersion, as the real
/// server's optimistic concurrency does.
async fn replace_lease(
    State(shared): State<Arc<Mutex<Inner>>>,
    UrlPath((ns, name)): LeaseParams,
    body: Bytes,
) -> Response {
    let (answer, unanswered) = {
        let mut inner = shared.lock().unwrap();
        let unanswered = inner.lease_writes_unanswered;
        (replace_lease_in(&mut inner, ns, name, body), unanswered)
    };
    if unanswered {
        std::future::pending::<()>().await;
    }
    answer
}

fn replace_lease_in(inner: &mut Inner, ns: String, name: String, body: Bytes) -> Response {
    let lease = match lease_write(inner, &body) {
        Ok(lease) => lease,
        Err(refused) => return *refused,
    };
    let key = (ns, name.clone());
    let Some(stored) = inner.leases.get(&key) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("leases.coordination.k8s.io {name:?} not found"),
        );
    };
    let pauses = |lease: &Value| lease["metadata"]["annotations"][PAUSES_ANNOTATION].clone();
    if inner.pause_writes_failing && pauses(&lease) != pauses(stored) {
        return status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "pause flag writes are failing on purpose",
        );
    }
    if lease["metadata"]["resourceVersion"] != stored["metadata"]["resourceVersion"] {
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            &format!(
                "Operation cannot be fulfilled on leases.coordination.k8s.io {name:?}: the object \
                 has been modified; please apply your changes to the latest version and try again"
            ),
        );
    }
    store_lease(inner, key, lease, StatusCode::OK)
}

/// Writes at `path` an exec credential plugin (a shell script) that answers
/// `token` and adds a line to `runs` each time it is run.
pub fn exec_plugin(path: &Path, runs: &Path, token: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(
        path,
        format!(
            "#!/bin/sh\necho run >> '{}'\n\
             echo '{{\"apiVersion\":\"client.authentication.k8s.io/v1beta1\",\
             \"kind\":\"ExecCredential\",\"status\":{{\"token\":\"{token}\"}}}}'\n",
            runs.display()
        ),
    )?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
}
