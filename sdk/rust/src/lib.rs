//! Write [Scalewise](https://example.invalid/scalewise) autoscaling policies in Rust.
//!
//! A policy is a type that implements [`Policy`] and is exported with
//! [`export_policy!`]. The crate is built for `wasm32-wasip2` and the resulting
//! `.wasm` file is dropped into the Scalewise policy folder.
//!
//! ```no_run
//! use scalewise_sdk::prelude::*;
//!
//! /// Declared once: feeds `describe()` and reading the values.
//! const PARAMS: &[ParamSpec] = &[
//!     ParamSpec::required("metric", ParameterKind::Metric, "Load metric."),
//!     ParamSpec::optional("limit", ParameterKind::Number, "1.0", "Double above this."),
//! ];
//!
//! #[derive(serde::Deserialize)]
//! struct Params {
//!     metric: String,
//!     limit: f64,
//! }
//!
//! struct Double;
//!
//! impl Policy for Double {
//!     fn describe() -> Info {
//!         Info::new("double", "0.1.0", "Doubles the replica count while load is high.")
//!             .with_params(PARAMS)
//!     }
//!
//!     fn evaluate(ctx: Context) -> Result<Decision, String> {
//!         let p: Params = ctx.params_checked(PARAMS)?;
//!         let load = ctx.metric_value(&p.metric, Aggregate::Latest, None)?;
//!         let current = ctx.target.current;
//!         if load > p.limit {
//!             let reason = format!("load {} > {}", format_number(load), format_number(p.limit));
//!             Ok(Decision::scale_to(current * 2, reason))
//!         } else {
//!             Ok(Decision::hold("load within bounds"))
//!         }
//!     }
//! }
//!
//! scalewise_sdk::export_policy!(Double);
//! ```
//!
//! The policy's logic is plain Rust: test it natively with `cargo test` by
//! building contexts with [`testing::ContextBuilder`] and calling
//! `Double::evaluate(ctx)` directly; no Wasm is involved. Parameters are
//! declared with [`params::ParamSpec`], metric values are read with
//! [`Context::metric_value`] and an [`Aggregate`]. The crate's README walks
//! through writing, testing and building a policy.
#![deny(missing_docs)]

extern crate self as scalewise_sdk;

pub use serde;
pub use serde_json;
pub use wit_bindgen;

mod aggregate;
mod helpers;
pub mod log;
pub mod params;
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
        export_macro_name: "export_wasm",
        default_bindings_module: "scalewise_sdk::bindings",
        runtime_path: "scalewise_sdk::wit_bindgen::rt",
        additional_derives: [Clone, PartialEq],
    });
}

/// Exports a type implementing [`Policy`] as the module's policy:
/// `scalewise_sdk::export_policy!(MyPolicy);`
///
/// It exports Wasm symbols only when building for Wasm. In a native build
/// (`cargo test`, a benchmark linking several policies) it only names the
/// policy's entry points in a hidden public function, so a policy crate with
/// `crate-type = ["cdylib", "rlib"]` links natively, several policies can
/// live in one native binary without clashing export names, and the policy
/// type does not look unused to the compiler.
#[macro_export]
macro_rules! export_policy {
    ($policy:ident) => {
        #[cfg(target_family = "wasm")]
        $crate::bindings::export_wasm!($policy);

        /// The policy's entry points, for native builds and tests.
        #[cfg(not(target_family = "wasm"))]
        #[doc(hidden)]
        pub fn __scalewise_policy_entry_points() -> (
            fn() -> $crate::Info,
            fn($crate::Context) -> ::core::result::Result<$crate::Decision, ::std::string::String>,
        ) {
            (
                <$policy as $crate::Policy>::describe,
                <$policy as $crate::Policy>::evaluate,
            )
        }
    };
}
pub use aggregate::{AGGREGATE_NAMES, Aggregate};
pub use bindings::exports::scalewise::policy::evaluator::Guest as Policy;
pub use bindings::scalewise::policy::types::{
    Action, Context, Decision, Info, Level, Metric, Parameter, ParameterKind, ScaleEvent, Target,
};
pub use helpers::{Held, Point, Window, duration_ms, format_number, parse_duration, replicas};
pub use params::{DurationMs, ParamSpec};

/// The version of the WIT package (`scalewise:policy`) this SDK implements.
pub const WIT_VERSION: &str = "0.1.0";

/// Everything a policy usually needs, for `use scalewise_sdk::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Action, Aggregate, Context, Decision, DurationMs, Held, Info, Level, Metric, ParamSpec,
        Parameter, ParameterKind, Point, Policy, ScaleEvent, Target, Window, format_number,
        replicas,
    };
}

/// The README's examples, compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
