//! The simulator as a metric source: `source = "simulator"`, with a query
//! naming a metric of the scaler's own simulated target (`cpu`) or of
//! another simulated service (`web/cpu`).

use async_trait::async_trait;

use super::{MetricError, MetricQuery, Source};
use crate::policy::Point;
use crate::simulator::{MetricFault, Simulation, SimulatorError};

/// Reads the metrics of simulated services.
#[derive(Debug, Clone)]
pub struct SimulatorSource {
    simulation: Simulation,
    own: Option<String>,
}

impl SimulatorSource {
    /// A source over `simulation`; a query without a service name reads
    /// `own` (the scaler's simulated target, if it has one).
    pub fn new(simulation: Simulation, own: Option<&str>) -> Result<Self, SimulatorError> {
        if let Some(own) = own {
            simulation.service(own)?;
        }
        Ok(SimulatorSource {
            simulation,
            own: own.map(str::to_owned),
        })
    }
}

#[async_trait]
impl Source for SimulatorSource {
    async fn fetch(&self, query: &MetricQuery, now_ms: i64) -> Result<Vec<Point>, MetricError> {
        let (service, metric) = self
            .simulation
            .resolve(&query.query, self.own.as_deref())
            .map_err(|e| MetricError::Query(e.to_string()))?;
        let mut svc = service.lock();
        let mut at_ms = now_ms;
        let mut not_finite = false;
        match svc.metric_fault(metric) {
            None => {}
            Some(MetricFault::Unreachable) => {
                return Err(MetricError::Unreachable(format!(
                    "simulated outage of service `{}`",
                    service.name()
                )));
            }
            Some(MetricFault::Empty) => return Ok(Vec::new()),
            Some(MetricFault::NotFinite) => not_finite = true,
            Some(MetricFault::Stale { age_ms }) => at_ms = now_ms - age_ms,
        }
        let mut points = svc
            .series(
                metric,
                at_ms,
                query.window_ms.unwrap_or(0),
                query.step_ms.max(1),
            )
            .map_err(|e| MetricError::Query(e.to_string()))?;
        if not_finite && let Some(last) = points.last_mut() {
            last.value = f64::NAN;
        }
        Ok(points)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::config::{LoadConfig, SimulationConfig};
    use crate::simulator::{Metric, SimulatedService};
    use crate::sources::check_series;

    const T0: i64 = 1_700_000_000_000;

    fn simulation() -> Simulation {
        let cfg = |base: f64, replicas: u32| SimulationConfig {
            seed: 3,
            capacity_per_replica: 100.0,
            startup_delay: Duration::from_secs(20),
            initial_replicas: replicas,
            base_latency: Duration::from_millis(40),
            load: LoadConfig {
                base,
                diurnal_amplitude: 0.0,
                diurnal_period: Duration::from_secs(3600),
                noise: 0.0,
                spikes: vec![],
                trace: None,
            },
        };
        let svc = |name, base, replicas| {
            SimulatedService::new(name, &cfg(base, replicas), Path::new("."), T0).unwrap()
        };
        Simulation::new([svc("web", 150.0, 3), svc("worker", 90.0, 1)])
    }

    fn instant(query: &str) -> MetricQuery {
        MetricQuery {
            query: query.to_owned(),
            window_ms: None,
            step_ms: 15_000,
        }
    }

    #[tokio::test]
    async fn instant_and_windowed_queries() {
        let source = SimulatorSource::new(simulation(), Some("web")).unwrap();
        let now = T0 + 120_000;
        let cpu = source.fetch(&instant("cpu"), now).await.unwrap();
        assert_eq!(cpu, vec![Point::from((now, 50.0))]);
        let other = source.fetch(&instant("worker/cpu"), now).await.unwrap();
        assert_eq!(other, vec![Point::from((now, 90.0))]);

        let windowed = MetricQuery {
            query: "ready".into(),
            window_ms: Some(60_000),
            step_ms: 15_000,
        };
        let points = source.fetch(&windowed, now).await.unwrap();
        let want: Vec<Point> = (0..5)
            .rev()
            .map(|j| Point::from((now - j * 15_000, 3.0)))
            .collect();
        assert_eq!(points, want);
        assert_eq!(check_series(&points, now, Some(30_000)), Ok(()));
    }

    #[tokio::test]
    async fn the_nasa_launch_spike_overloads_a_service_sized_for_launch_day() {
        // One simulated second plays one recorded minute. Launch day runs at
        // 200-350 requests/minute, which six replicas of 1 req/s carry; the
        // 409 of the minute after the launch are more than they can.
        let cfg: SimulationConfig = toml::from_str(
            r#"
            capacity_per_replica = 1.0
            initial_replicas = 6
            load = { trace = { path = "nasa_jul95_per_minute.csv", speed = 60 } }
            "#,
        )
        .unwrap();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/traces");
        let svc = SimulatedService::new("nasa", &cfg, &dir, T0).unwrap();
        let source = SimulatorSource::new(Simulation::new([svc]), Some("nasa")).unwrap();
        let spike = T0 + 1_072_140_000 / 60;
        let load = source.fetch(&instant("load"), spike).await.unwrap();
        assert!((load[0].value - 409.0 / 60.0).abs() < 1e-9, "{load:?}");
        let cpu = source.fetch(&instant("cpu"), spike).await.unwrap();
        assert_eq!(cpu[0].value, 100.0);
        // The backlog built during the spike drains once it has passed.
        let queue = MetricQuery {
            query: "queue_depth".into(),
            window_ms: Some(30_000),
            step_ms: 1_000,
        };
        let during = source.fetch(&queue, spike + 10_000).await.unwrap();
        assert!(
            during.windows(2).any(|w| w[1].value > w[0].value),
            "{during:?}"
        );
        let after = source
            .fetch(&instant("queue_depth"), spike + 3_600_000)
            .await;
        assert_eq!(after.unwrap()[0].value, 0.0);
    }

    #[tokio::test]
    async fn bad_queries_name_what_is_known() {
        let source = SimulatorSource::new(simulation(), Some("web")).unwrap();
        let err = source.fetch(&instant("memory"), T0).await.unwrap_err();
        assert_eq!(err.kind(), "query");
        assert!(
            err.to_string().contains("known metrics: cpu, load"),
            "{err}"
        );
        let err = source.fetch(&instant("db/cpu"), T0).await.unwrap_err();
        assert!(
            err.to_string().contains("known services: web, worker"),
            "{err}"
        );
        let unowned = SimulatorSource::new(simulation(), None).unwrap();
        let err = unowned.fetch(&instant("cpu"), T0).await.unwrap_err();
        assert!(err.to_string().contains("write `service/cpu`"), "{err}");
        assert!(SimulatorSource::new(simulation(), Some("db")).is_err());
    }

    #[tokio::test]
    async fn injected_faults_fail_as_a_real_source_would() {
        let sim = simulation();
        let source = SimulatorSource::new(sim.clone(), Some("web")).unwrap();
        let web = sim.service("web").unwrap();
        let now = T0 + 300_000;
        let check = |points: Result<Vec<Point>, MetricError>| {
            points.and_then(|p| check_series(&p, now, Some(45_000)))
        };

        web.lock().set_metric_outage(Some(MetricFault::Unreachable));
        let err = source.fetch(&instant("cpu"), now).await.unwrap_err();
        assert_eq!(err.kind(), "unreachable");
        assert!(err.to_string().contains("`web`"), "{err}");
        // Only `web` is out; the worker still answers.
        assert!(source.fetch(&instant("worker/cpu"), now).await.is_ok());
        web.lock().set_metric_outage(None);

        let cases = [
            (MetricFault::Empty, "empty"),
            (MetricFault::NotFinite, "not_finite"),
            (MetricFault::Stale { age_ms: 60_000 }, "stale"),
        ];
        for (fault, kind) in cases {
            web.lock().set_metric_fault(Metric::Cpu, Some(fault));
            let got = check(source.fetch(&instant("cpu"), now).await);
            assert_eq!(got.unwrap_err().kind(), kind, "{fault:?}");
            assert_eq!(check(source.fetch(&instant("load"), now).await), Ok(()));
        }
        web.lock().set_metric_fault(Metric::Cpu, None);
        assert_eq!(check(source.fetch(&instant("cpu"), now).await), Ok(()));
    }
}
