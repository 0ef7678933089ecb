//! Logging to the host's log.
//!
//! Messages go to the Scalewise host's log, tagged with the module and the
//! scaler. When a policy is unit-tested natively (not as Wasm) they go to
//! standard error instead.

use crate::Level;

/// Writes one message to the host's log at `level`.
pub fn write(level: Level, message: &str) {
    #[cfg(target_family = "wasm")]
    crate::bindings::scalewise::policy::log::log(level, message);
    #[cfg(not(target_family = "wasm"))]
    eprintln!("[{level:?}] {message}");
}

/// Logs at debug level.
pub fn debug(message: &str) {
    write(Level::Debug, message);
}

/// Logs at info level.
pub fn info(message: &str) {
    write(Level::Info, message);
}

/// Logs at warn level.
pub fn warn(message: &str) {
    write(Level::Warn, message);
}

/// Logs at error level.
pub fn error(message: &str) {
    write(Level::Error, message);
}
