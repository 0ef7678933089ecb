//! What can go wrong when the runtime starts, loads a module, or evaluates one.
//!
//! Each error has a `kind()` (or `as_str()`) with a fixed, small set of
//! labels, for metrics and the journal; the full text is in `Display`.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The runtime (its wasmtime engine) could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// wasmtime refused the engine configuration derived from the limits.
    #[error("cannot configure the Wasm engine: {0}")]
    Engine(String),
    /// The limits themselves make no sense (e.g. a zero timeout).
    #[error("invalid runtime limits: {0}")]
    Limits(String),
}

impl RuntimeError {
    /// A fixed label for this kind of error.
    pub fn kind(&self) -> &'static str {
        match self {
            RuntimeError::Engine(_) => "engine",
            RuntimeError::Limits(_) => "limits",
        }
    }
}

/// Why a policy module could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The module file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The bytes are not a Wasm component (not Wasm at all, or a core module).
    #[error("not a Wasm component: {0}")]
    NotAComponent(String),
    /// wasmtime could not validate or compile the component.
    #[error("the component does not compile: {0}")]
    Compile(String),
    /// The component implements another version of the policy contract.
    #[error(
        "the module exports scalewise:policy/evaluator@{} but this host implements @{expected}; \
         rebuild it against scalewise:policy@{expected} (the SDK version that matches this host)",
        found.join(", @")
    )]
    WrongWitVersion {
        /// The versions of `scalewise:policy/evaluator` the module exports.
        found: Vec<String>,
        /// The version this host implements.
        expected: &'static str,
    },
    /// The component does not export the policy interface at all.
    #[error(
        "the module does not export scalewise:policy/evaluator@{expected} (its exports: {}); \
         is it a Scalewise policy?",
        if exports.is_empty() { "none".to_string() } else { exports.join(", ") }
    )]
    MissingExport {
        /// Everything the component does export.
        exports: Vec<String>,
        /// The interface version this host implements.
        expected: &'static str,
    },
    /// The policy interface is exported but its functions do not have the
    /// contract's types.
    #[error("the module's scalewise:policy/evaluator export does not match the contract: {0}")]
    BadExport(String),
    /// The component imports something the host does not give policies.
    #[error(
        "the module imports what the host does not give policies ({}): {message}; \
         a policy may import only scalewise:policy/log and WASI 0.2",
        if imports.is_empty() { "see below".to_string() } else { imports.join(", ") }
    )]
    UnsupportedImports {
        /// The imports the host does not provide (best effort; the message
        /// from wasmtime names the first one precisely).
        imports: Vec<String>,
        /// wasmtime's explanation.
        message: String,
    },
    /// Instantiating the module or calling its `describe()` failed.
    #[error("describe() failed ({}): {message}", kind.as_str())]
    DescribeFailed {
        /// How it failed.
        kind: EvalErrorKind,
        /// The full error.
        message: String,
    },
    /// `describe()` answered something the host cannot accept.
    #[error("describe() returned invalid info: {0}")]
    InvalidInfo(String),
}

impl LoadError {
    /// A fixed label for this kind of error.
    pub fn kind(&self) -> &'static str {
        match self {
            LoadError::Io { .. } => "io",
            LoadError::NotAComponent(_) => "not_a_component",
            LoadError::Compile(_) => "compile",
            LoadError::WrongWitVersion { .. } => "wrong_wit_version",
            LoadError::MissingExport { .. } => "missing_export",
            LoadError::BadExport(_) => "bad_export",
            LoadError::UnsupportedImports { .. } => "unsupported_imports",
            LoadError::DescribeFailed { .. } => "describe_failed",
            LoadError::InvalidInfo(_) => "invalid_info",
        }
    }
}

/// How one evaluation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalErrorKind {
    /// The policy returned `err(..)`.
    PolicyError,
    /// The guest trapped (panic, `unreachable`, out-of-bounds access, exit, ...).
    Trap,
    /// The evaluation ran past the runtime's `timeout`.
    Timeout,
    /// The evaluation used all of its fuel.
    OutOfFuel,
    /// The guest tried to grow its memory past `max_memory`.
    OutOfMemory,
    /// The guest exhausted its Wasm stack (`max_wasm_stack`).
    StackOverflow,
    /// The policy answered something the host refuses (too many replicas,
    /// too long a reason, too large a state).
    InvalidDecision,
    /// The host could not give the context to the policy (parameters not a
    /// JSON object, a non-finite sample).
    InvalidContext,
    /// The module could not be instantiated for this call.
    Instantiate,
}

impl EvalErrorKind {
    /// Whether the module itself misbehaved (trapped, ran past a limit,
    /// answered what the contract forbids, could not be instantiated), as
    /// opposed to a policy error it returned or a context the host refused.
    pub fn is_fault(self) -> bool {
        !matches!(
            self,
            EvalErrorKind::PolicyError | EvalErrorKind::InvalidContext
        )
    }

    /// The fixed snake_case label (metrics, journal, JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            EvalErrorKind::PolicyError => "policy_error",
            EvalErrorKind::Trap => "trap",
            EvalErrorKind::Timeout => "timeout",
            EvalErrorKind::OutOfFuel => "out_of_fuel",
            EvalErrorKind::OutOfMemory => "out_of_memory",
            EvalErrorKind::StackOverflow => "stack_overflow",
            EvalErrorKind::InvalidDecision => "invalid_decision",
            EvalErrorKind::InvalidContext => "invalid_context",
            EvalErrorKind::Instantiate => "instantiate",
        }
    }

    /// Every kind, for metrics that pre-register their labels.
    pub const ALL: [EvalErrorKind; 9] = [
        EvalErrorKind::PolicyError,
        EvalErrorKind::Trap,
        EvalErrorKind::Timeout,
        EvalErrorKind::OutOfFuel,
        EvalErrorKind::OutOfMemory,
        EvalErrorKind::StackOverflow,
        EvalErrorKind::InvalidDecision,
        EvalErrorKind::InvalidContext,
        EvalErrorKind::Instantiate,
    ];
}

impl fmt::Display for EvalErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One evaluation failed; the module stays usable for the next one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct EvalError {
    /// How it failed.
    pub kind: EvalErrorKind,
    /// What happened, with the guest's message and backtrace when there is one.
    pub message: String,
}

impl EvalError {
    /// An error of `kind` with `message`.
    pub fn new(kind: EvalErrorKind, message: impl Into<String>) -> Self {
        EvalError {
            kind,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eval_error_kind_labels_match_serde_names() {
        for kind in EvalErrorKind::ALL {
            let json = serde_json::to_value(kind).unwrap();
            assert_eq!(json, serde_json::Value::String(kind.as_str().into()));
        }
    }

    #[test]
    fn wrong_version_names_both_versions() {
        let err = LoadError::WrongWitVersion {
            found: vec!["0.2.0".into()],
            expected: "0.1.0",
        };
        let text = err.to_string();
        assert!(text.contains("evaluator@0.2.0"), "{text}");
        assert!(text.contains("@0.1.0"), "{text}");
        assert_eq!(err.kind(), "wrong_wit_version");
    }

    #[test]
    fn missing_export_lists_what_is_there() {
        let none = LoadError::MissingExport {
            exports: vec![],
            expected: "0.1.0",
        };
        assert!(none.to_string().contains("its exports: none"), "{none}");
        let some = LoadError::MissingExport {
            exports: vec!["wasi:cli/run@0.2.0".into()],
            expected: "0.1.0",
        };
        assert!(some.to_string().contains("wasi:cli/run@0.2.0"), "{some}");
    }
}
