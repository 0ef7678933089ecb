//! The simulator as an actuator (`kind = "simulator"`): a change is done at
//! once, and the new replicas then take the service's start-up delay to
//! become ready, as pods of a Deployment do.

use async_trait::async_trait;

use super::{Actuation, Actuator, ActuatorError, Observed};
use crate::simulator::{ActuatorFault, SharedService, Simulation, SimulatorError};

/// Scales one simulated service.
#[derive(Debug, Clone)]
pub struct SimulatorActuator {
    service: SharedService,
}

impl SimulatorActuator {
    /// The actuator of `service`.
    pub fn new(service: SharedService) -> Self {
        SimulatorActuator { service }
    }

    /// The actuator of the service `name` of `simulation`.
    pub fn for_service(simulation: &Simulation, name: &str) -> Result<Self, SimulatorError> {
        Ok(Self::new(simulation.service(name)?))
    }

    fn outage(&self) -> ActuatorError {
        ActuatorError::Failed(format!(
            "simulated outage of service `{}`",
            self.service.name()
        ))
    }
}

#[async_trait]
impl Actuator for SimulatorActuator {
    fn kind(&self) -> &'static str {
        "simulator"
    }

    fn target_name(&self) -> String {
        self.service.name().to_owned()
    }

    async fn observe(&self, now_ms: i64) -> Result<Observed, ActuatorError> {
        let mut svc = self.service.lock();
        if svc.actuator_fault() == Some(ActuatorFault::Unreachable) {
            return Err(self.outage());
        }
        let (current, ready) = svc.replicas(now_ms);
        Ok(Observed::new(current, ready, None))
    }

    async fn scale(
        &self,
        now_ms: i64,
        current: u32,
        desired: u32,
    ) -> Result<Actuation, ActuatorError> {
        let mut svc = self.service.lock();
        match svc.actuator_fault() {
            None => {}
            Some(ActuatorFault::Unreachable) => return Err(self.outage()),
            Some(ActuatorFault::ScaleFails) => {
                return Err(ActuatorError::Failed(format!(
                    "simulated failure to scale service `{}` to {desired}",
                    self.service.name()
                )));
            }
        }
        svc.set_replicas(now_ms, desired);
        let detail = if desired > current {
            let delay = humantime::format_duration(std::time::Duration::from_millis(
                svc.params().startup_delay_ms.max(0) as u64,
            ));
            format!(
                "asked simulated service `{}` for {desired} replicas (was {current}); \
                 new ones are ready after {delay}",
                self.service.name()
            )
        } else {
            format!(
                "asked simulated service `{}` for {desired} replicas (was {current})",
                self.service.name()
            )
        };
        Ok(Actuation::Done { detail })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::config::{LoadConfig, SimulationConfig};
    use crate::simulator::SimulatedService;

    const T0: i64 = 1_700_000_000_000;

    fn actuator() -> (SimulatorActuator, SharedService) {
        let cfg = SimulationConfig {
            seed: 0,
            capacity_per_replica: 10.0,
            startup_delay: Duration::from_secs(45),
            initial_replicas: 2,
            base_latency: Duration::from_millis(40),
            load: LoadConfig {
                base: 10.0,
                diurnal_amplitude: 0.0,
                diurnal_period: Duration::from_secs(3600),
                noise: 0.0,
                spikes: vec![],
                trace: None,
            },
        };
        let svc = SimulatedService::new("api", &cfg, Path::new("."), T0).unwrap();
        let sim = Simulation::new([svc]);
        let actuator = SimulatorActuator::for_service(&sim, "api").unwrap();
        (actuator, sim.service("api").unwrap())
    }

    fn observed(current: u32, ready: u32) -> Observed {
        Observed::new(current, ready, None)
    }

    #[tokio::test]
    async fn a_scale_is_done_at_once_and_ready_after_the_delay() {
        let (act, _) = actuator();
        assert_eq!(
            (act.kind(), act.target_name().as_str()),
            ("simulator", "api")
        );
        assert_eq!(act.observe(T0).await, Ok(observed(2, 2)));

        let done = act.scale(T0 + 1_000, 2, 4).await.unwrap();
        let Actuation::Done { detail } = done else {
            panic!("{done:?}")
        };
        assert_eq!(
            detail,
            "asked simulated service `api` for 4 replicas (was 2); new ones are ready after 45s"
        );
        assert_eq!(act.observe(T0 + 1_000).await, Ok(observed(4, 2)));
        assert_eq!(act.observe(T0 + 45_999).await, Ok(observed(4, 2)));
        assert_eq!(act.observe(T0 + 46_000).await, Ok(observed(4, 4)));

        act.scale(T0 + 50_000, 4, 1).await.unwrap();
        assert_eq!(act.observe(T0 + 50_000).await, Ok(observed(1, 1)));
    }

    #[tokio::test]
    async fn injected_faults_fail_observe_or_scale() {
        let (act, svc) = actuator();
        svc.lock()
            .set_actuator_fault(Some(ActuatorFault::ScaleFails));
        assert_eq!(act.observe(T0).await, Ok(observed(2, 2)));
        let err = act.scale(T0, 2, 3).await.unwrap_err();
        assert_eq!(err.kind(), "failed");
        assert_eq!(act.observe(T0).await, Ok(observed(2, 2)), "nothing changed");

        svc.lock()
            .set_actuator_fault(Some(ActuatorFault::Unreachable));
        assert!(act.observe(T0).await.is_err());
        assert!(act.scale(T0, 2, 3).await.is_err());

        svc.lock().set_actuator_fault(None);
        assert!(act.scale(T0, 2, 3).await.is_ok());
        assert_eq!(act.observe(T0).await, Ok(observed(3, 2)));
    }
}
