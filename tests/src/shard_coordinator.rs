//! A shard coordinator for the `rebalance` actuator's tests: **a fake**.
//!
//! The coordinator API is the interface Scalewise asks a sharded stream
//! processor to expose (README, "Scaling stateful workers"); there is no
//! stock system that speaks it to run here. This server plays one: workers
//! that become ready some polls after they are started, and shards that move
//! a few at a time towards the assignment it was given, released by their
//! old owner before the new one takes them. It refuses what a real
//! coordinator must refuse — an assignment that leaves a shard out or names
//! an unknown worker, stopping a worker that still owns shards — and records
//! each refusal as a violation, so a test can assert there were none.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, put};
use serde_json::{Value, json};

use crate::https::Secured;

/// One worker's state.
#[derive(Debug, Clone)]
pub struct FakeWorker {
    /// Polls of `GET /workers` left before it is ready.
    pub polls_until_ready: u32,
    /// The shards it owns.
    pub owned: BTreeSet<String>,
}

/// The whole fake system.
#[derive(Debug, Default)]
pub struct World {
    /// Every shard.
    pub shards: Vec<String>,
    /// Workers by id.
    pub workers: BTreeMap<String, FakeWorker>,
    /// The assignment last PUT.
    pub assignment: Option<BTreeMap<String, Vec<String>>>,
    /// Shard moves completed per `GET /workers` (0 = none ever).
    pub moves_per_poll: usize,
    /// Polls a started worker takes to become ready.
    pub ready_after_polls: u32,
    /// Shard moves completed so far.
    pub moves: usize,
    /// Workers stopped, in order.
    pub stopped: Vec<String>,
    /// Requests refused because Scalewise asked for something unsafe.
    pub violations: Vec<String>,
    /// Answer every request with this status instead (a failing coordinator).
    pub fail_with: Option<u16>,
    /// Workers `POST /workers` still starts before it answers 503 (`None`:
    /// no limit).
    pub starts_left: Option<u32>,
    /// Workers `DELETE /workers/{id}` still stops before it answers 503
    /// (`None`: no limit).
    pub stops_left: Option<u32>,
    next_id: u32,
}

impl World {
    /// `shards` shards `s00`, `s01`, ... spread round-robin over `workers`
    /// ready workers `w-1`, `w-2`, ...
    pub fn new(shards: usize, workers: usize) -> World {
        let mut world = World {
            shards: (0..shards).map(|i| format!("s{i:02}")).collect(),
            moves_per_poll: 2,
            ready_after_polls: 2,
            ..World::default()
        };
        for _ in 0..workers {
            let id = world.new_id();
            world.workers.insert(
                id,
                FakeWorker {
                    polls_until_ready: 0,
                    owned: BTreeSet::new(),
                },
            );
        }
        let ids: Vec<String> = world.workers.keys().cloned().collect();
        for (i, shard) in world.shards.clone().into_iter().enumerate() {
            if !ids.is_empty() {
                world
                    .workers
                    .get_mut(&ids[i % ids.len()])
                    .unwrap()
                    .owned
                    .insert(shard);
            }
        }
        world
    }

    fn new_id(&mut self) -> String {
        self.next_id += 1;
        format!("w-{}", self.next_id)
    }

    /// The owner of each shard; panics if one has two.
    pub fn owners(&self) -> BTreeMap<String, String> {
        let mut owners = BTreeMap::new();
        for (id, w) in &self.workers {
            for s in &w.owned {
                if let Some(other) = owners.insert(s.clone(), id.clone()) {
                    panic!("shard {s} is owned by both {other} and {id}");
                }
            }
        }
        owners
    }

    /// Shard counts by worker.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        self.workers
            .iter()
            .map(|(id, w)| (id.clone(), w.owned.len()))
            .collect()
    }

    /// One step of the world: workers get closer to ready, and up to
    /// `moves_per_poll` shards move to the worker the assignment names
    /// (only to a ready one; the old owner releases first).
    fn step(&mut self) {
        for w in self.workers.values_mut() {
            w.polls_until_ready = w.polls_until_ready.saturating_sub(1);
        }
        let Some(assignment) = self.assignment.clone() else {
            return;
        };
        let mut budget = self.moves_per_poll;
        for (to, shards) in &assignment {
            for shard in shards {
                if budget == 0 {
                    return;
                }
                let ready = self
                    .workers
                    .get(to)
                    .is_some_and(|w| w.polls_until_ready == 0);
                let owner = self.owners().get(shard).cloned();
                if !ready || owner.as_deref() == Some(to.as_str()) {
                    continue;
                }
                if let Some(from) = owner {
                    self.workers.get_mut(&from).unwrap().owned.remove(shard);
                }
                self.workers
                    .get_mut(to)
                    .unwrap()
                    .owned
                    .insert(shard.clone());
                self.moves += 1;
                budget -= 1;
            }
        }
    }

    fn check(&self, assignment: &BTreeMap<String, Vec<String>>) -> Result<(), String> {
        let mut seen = BTreeSet::new();
        for (worker, shards) in assignment {
            if !self.workers.contains_key(worker) {
                return Err(format!("unknown worker {worker}"));
            }
            for s in shards {
                if !self.shards.contains(s) {
                    return Err(format!("unknown shard {s}"));
                }
                if !seen.insert(s) {
                    return Err(format!("shard {s} is assigned twice"));
                }
            }
        }
        match self.shards.iter().find(|s| !seen.contains(s)) {
            Some(missing) => Err(format!("shard {missing} is assigned to no worker")),
            None => Ok(()),
        }
    }
}

type Shared = Arc<Mutex<World>>;
type Answer = (StatusCode, Json<Value>);

fn failing(world: &World) -> Option<Answer> {
    world.fail_with.map(|code| {
        (
            StatusCode::from_u16(code).unwrap(),
            Json(json!({ "error": "the coordinator is failing on purpose" })),
        )
    })
}

async fn list(State(world): State<Shared>) -> Answer {
    let mut world = world.lock().unwrap();
    if let Some(answer) = failing(&world) {
        return answer;
    }
    world.step();
    let workers: Vec<Value> = world
        .workers
        .iter()
        .map(|(id, w)| json!({ "id": id, "ready": w.polls_until_ready == 0, "shards": w.owned }))
        .collect();
    (
        StatusCode::OK,
        Json(json!({ "shards": world.shards, "workers": workers })),
    )
}

async fn start(State(world): State<Shared>) -> Answer {
    let mut world = world.lock().unwrap();
    if let Some(answer) = failing(&world) {
        return answer;
    }
    match &mut world.starts_left {
        Some(0) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "error": "no capacity for another worker" })),
            );
        }
        Some(n) => *n -= 1,
        None => {}
    }
    let id = world.new_id();
    let polls = world.ready_after_polls;
    world.workers.insert(
        id.clone(),
        FakeWorker {
            polls_until_ready: polls,
            owned: BTreeSet::new(),
        },
    );
    (StatusCode::CREATED, Json(json!({ "id": id })))
}

async fn assign(State(world): State<Shared>, Json(body): Json<Value>) -> Answer {
    let mut world = world.lock().unwrap();
    if let Some(answer) = failing(&world) {
        return answer;
    }
    let parsed: Result<BTreeMap<String, Vec<String>>, _> =
        serde_json::from_value(body["assignment"].clone());
    let checked = parsed.map_err(|e| e.to_string()).and_then(|a| {
        world.check(&a)?;
        Ok(a)
    });
    match checked {
        Ok(assignment) => {
            world.assignment = Some(assignment);
            (StatusCode::ACCEPTED, Json(json!({})))
        }
        Err(e) => {
            world.violations.push(format!("PUT /assignment: {e}"));
            (StatusCode::BAD_REQUEST, Json(json!({ "error": e })))
        }
    }
}

async fn stop(State(world): State<Shared>, Path(id): Path<String>) -> Answer {
    let mut world = world.lock().unwrap();
    if let Some(answer) = failing(&world) {
        return answer;
    }
    let owned = match world.workers.get(&id) {
        None => {
            return (
                StatusCode::NOT_FOUND,
                Json(json!({ "error": "no such worker" })),
            );
        }
        Some(w) => w.owned.len(),
    };
    if owned > 0 {
        let e = format!("worker {id} still owns {owned} shard(s)");
        world.violations.push(format!("DELETE /workers/{id}: {e}"));
        return (StatusCode::CONFLICT, Json(json!({ "error": e })));
    }
    match world.stops_left.as_mut() {
        Some(0) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "error": "no more stops for now" })),
            );
        }
        Some(left) => *left -= 1,
        None => {}
    }
    world.workers.remove(&id);
    if let Some(a) = world.assignment.as_mut() {
        a.remove(&id);
    }
    world.stopped.push(id);
    (StatusCode::OK, Json(json!({})))
}

/// A running fake coordinator on a loopback port.
#[derive(Debug)]
pub struct ShardCoordinator {
    endpoint: String,
    /// The world it serves; tests change and inspect it.
    pub world: Shared,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Its HTTPS side and token, when [`start_secured`](Self::start_secured).
    pub secured: Option<Secured>,
}

impl ShardCoordinator {
    fn app(world: &Shared) -> axum::Router {
        axum::Router::new()
            .route("/api/workers", get(list).post(start))
            .route("/api/workers/{id}", delete(stop))
            .route("/api/assignment", put(assign))
            .with_state(world.clone())
    }

    /// Serves `world` on a free loopback port (within a Tokio runtime).
    pub async fn start(world: World) -> ShardCoordinator {
        let world = Arc::new(Mutex::new(world));
        let app = Self::app(&world);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        ShardCoordinator {
            endpoint: format!("http://{addr}/api"),
            world,
            task: Some(task),
            secured: None,
        }
    }

    /// Serves `world` over HTTPS with a certificate no system trusts,
    /// answering only requests with the bearer token ([`crate::https`]).
    pub async fn start_secured(world: World) -> ShardCoordinator {
        let world = Arc::new(Mutex::new(world));
        let secured = crate::https::serve(Self::app(&world)).await.unwrap();
        ShardCoordinator {
            endpoint: secured.url("/api"),
            world,
            task: None,
            secured: Some(secured),
        }
    }

    /// The coordinator API's base URL.
    pub fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    /// Runs `f` on the world.
    pub fn with<T>(&self, f: impl FnOnce(&mut World) -> T) -> T {
        f(&mut self.world.lock().unwrap())
    }
}

impl Drop for ShardCoordinator {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}
