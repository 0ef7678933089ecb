//! Write [Scalewise](https://example.invalid/scalewise) autoscaling policies in Rust.
//!
//! A policy is a type that implements [`Policy`] and is exported with
//! [`export_policy!`]. The crate is built for `wasm32-wasip2` and the resulting
//! `.wasm` file is dropped into the Scalewise policy folder.
//!
//! ```no_run
//! use scalewise_sdk::prelude::*;
//!
//! struct Double;
//!
//! impl Policy for Double {
//!     fn describe() -> Info {
//!         Info::new("double", "0.1.0", "Doubles the replica count while load is above 1.")
//!             .parameter(Parameter::required("metric", ParameterKind::Metric, "Load metric."))
//!     }
//!
//!     fn evaluate(ctx: Context) -> Result<Decision, String> {
//!         #[derive(serde::Deserialize)]
//!         struct Params { metric: String }
//!         let p: Params = ctx.params()?;
//!         match ctx.metric(&p.metric).and_then(Metric::latest) {
//!             Some(load) if load > 1.0 => Ok(Decision::scale_to(
//!                 ctx.target.current * 2,
//!                 format!("load {load:.2} > 1"),
//!             )),
//!             _ => Ok(Decision::hold("load within bounds")),
//!         }
//!     }
//! }
//!
//! scalewise_sdk::export_policy!(Double);
//! ```
//!
//! The policy's logic is plain Rust: test it natively with `cargo test` by
//! building contexts with [`testing::ContextBuilder`] and calling
//! `Double::evaluate(ctx)` directly; no Wasm is involved.
#![deny(missing_docs)]

extern crate self as scalewise_sdk;

pub use serde;
pub use serde_json;
pub use wit_bindgen;

mod helpers;
pub mod log;
pub mod testing;

/// The bindings generated from the Scalewise WIT package. Policy authors use
/// the re-exports at the crate root instead.
#[doc(hidden)]
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "policy",
        pub_export_macro: true,
        export_macro_name: "export_policy",
        default_bindings_module: "scalewise_sdk::bindings",
        runtime_path: "scalewise_sdk::wit_bindgen::rt",
        additional_derives: [Clone, PartialEq],
    });
}

/// Exports a type implementing [`Policy`] as the module's policy:
/// `scalewise_sdk::export_policy!(MyPolicy);`
pub use bindings::export_policy;
pub use bindings::exports::scalewise::policy::evaluator::Guest as Policy;
pub use bindings::scalewise::policy::types::{
    Action, Context, Decision, Info, Level, Metric, Parameter, ParameterKind, Point, ScaleEvent,
    Target,
};
pub use helpers::{duration_ms, parse_duration};

/// The version of the WIT package (`scalewise:policy`) this SDK implements.
pub const WIT_VERSION: &str = "0.1.0";

/// Everything a policy usually needs, for `use scalewise_sdk::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Action, Context, Decision, Info, Level, Metric, Parameter, ParameterKind, Point, Policy,
        ScaleEvent, Target,
    };
}
