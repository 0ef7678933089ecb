//! The one place the host runs `unsafe` code: turning compiled policy code
//! into a [`Component`], whether read back from the on-disk cache, handed
//! back by a compiler child process (same layout as a cache file), or just
//! compiled by a throwaway engine ([`compile`]).
//!
//! wasmtime's `Component::deserialize` is `unsafe` because the bytes become
//! executable machine code: they must be exactly what `Component::serialize`
//! wrote, unaltered. This module owns the cache file's format so that the
//! check establishing that (the artifact's sha256, stored beside it when it
//! was written) and the `unsafe` call sit together and nothing else can reach
//! the call.
//!
//! A cache file is `MAGIC`, then the sha256 of the artifact (32 bytes), then
//! the artifact as `Component::serialize` returned it.
#![allow(unsafe_code)]

use sha2::{Digest as _, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Identifies a Scalewise cache file and the version of this layout.
const MAGIC: &[u8; 16] = b"scalewise-cwasm1";
const CHECKSUM_LEN: usize = 32;

/// Why cached bytes were not turned into a component.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(super) enum DecodeError {
    /// Not a cache file of this layout (another version, or truncated
    /// before the artifact).
    #[error("not a Scalewise cache file of this version ({len} bytes)")]
    Format {
        /// The file's length.
        len: usize,
    },
    /// The artifact's sha256 is not the one stored with it: the file was
    /// truncated, corrupted or altered after it was written.
    #[error("the compiled code does not match its checksum (corrupted or altered)")]
    Checksum,
    /// wasmtime refused the artifact (another wasmtime version or engine
    /// settings, despite the folder's engine key).
    #[error("wasmtime refused the compiled code: {0}")]
    Refused(String),
}

impl DecodeError {
    /// A fixed label for this kind of error.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            DecodeError::Format { .. } => "format",
            DecodeError::Checksum => "checksum",
            DecodeError::Refused(_) => "incompatible",
        }
    }
}

/// The cache file's bytes for `artifact` (from `Component::serialize`).
pub(super) fn encode(artifact: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + CHECKSUM_LEN + artifact.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&Sha256::digest(artifact));
    out.extend_from_slice(artifact);
    out
}

/// Checks a cache file's bytes and deserializes the component in it.
///
/// `file` must be held in memory (not a mapping of the file): the checksum
/// is verified on the very bytes wasmtime then copies, so a change to the
/// file after the check cannot reach the engine.
pub(super) fn decode(engine: &Engine, file: &[u8]) -> Result<Component, DecodeError> {
    let header = MAGIC.len() + CHECKSUM_LEN;
    if file.len() <= header || &file[..MAGIC.len()] != MAGIC {
        return Err(DecodeError::Format { len: file.len() });
    }
    let (stored, artifact) = file[MAGIC.len()..].split_at(CHECKSUM_LEN);
    if Sha256::digest(artifact).as_slice() != stored {
        return Err(DecodeError::Checksum);
    }
    // SAFETY: `Component::deserialize` requires bytes produced by
    // `Component::serialize` (or `Engine::precompile_component`) and not
    // altered since. These are either
    // - a cache file: written only by `ModuleCache::put` from
    //   `Component::serialize` of this host's engine, to a temporary file
    //   renamed into place, in a folder the host created owner-only and
    //   refuses to use when others can write to it; named by the sha256 of
    //   the source `.wasm` bytes (which the caller computed from the module
    //   it is loading, so the file is the code of exactly that module)
    //   inside a folder named by the engine's precompile compatibility hash
    //   (so it is for this engine's settings); or
    // - the output of a compiler child (`compiler::compile_in_child`): this
    //   host's own binary, started by the host with the module on its stdin,
    //   writing `encode(precompile_component(..))` to a pipe only the host
    //   reads;
    // and both are
    // - checked just above against the sha256 stored with them when they
    //   were written, on the in-memory copy passed to wasmtime, so a torn,
    //   truncated or bit-rotted file is refused instead of executed.
    // wasmtime itself also checks the artifact's header, its version and
    // the engine's settings, and returns an error when they do not match.
    // What this cannot stop is someone able to write files as this user
    // forging both the artifact and its checksum; such a user can already
    // replace the host's binary.
    unsafe { Component::deserialize(engine, artifact) }
        .map_err(|e| DecodeError::Refused(explain_refusal(format!("{e:#}"))))
}

/// wasmtime's reason for refusing compiled code, with the common case said
/// in the operator's terms: a module whose memory starts larger than
/// `runtime.max_memory` (the instance pool's slot size). Other reasons are
/// passed through as they are.
pub(super) fn explain_refusal(message: String) -> String {
    let number = |text: &str| -> Option<u64> {
        let digits: String = text
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        match digits.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => digits.parse().ok(),
        }
    };
    let sizes = message
        .split_once("minimum byte size of ")
        .and_then(|(_, rest)| {
            let (min, rest) = rest.split_once(" which exceeds the limit of ")?;
            Some((number(min)?, number(rest)?))
        });
    match sizes {
        Some((min, limit)) => format!(
            "the module's memory starts at {} ({min} bytes), more than the memory limit of {} \
             (runtime.max_memory, or --max-memory)",
            bytesize::ByteSize::b(min),
            bytesize::ByteSize::b(limit)
        ),
        None => message,
    }
}

/// Compiles the `.wasm` `bytes` in a throwaway engine built from `settings`
/// and returns the artifact. An engine keeps Cranelift's per-thread
/// compilation contexts as long as it lives (~6 MiB for one module on two
/// cores), so the daemon's long-lived engine never compiles. Errors are
/// wasmtime's, as text.
pub(super) fn precompile(settings: &wasmtime::Config, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let compiler = Engine::new(settings).map_err(|e| format!("{e:#}"))?;
    compiler
        .precompile_component(bytes)
        .map_err(|e| format!("{e:#}"))
}

/// Compiles the `.wasm` `bytes` for `engine` in this process ([`precompile`]
/// with `settings`, the settings `engine` was built with less the instance
/// pool). Returns the component and the compiled artifact (for the on-disk
/// cache).
pub(super) fn compile(
    engine: &Engine,
    settings: &wasmtime::Config,
    bytes: &[u8],
) -> Result<(Component, Vec<u8>), String> {
    let artifact = precompile(settings, bytes)?;
    // SAFETY: `artifact` is what `precompile_component` returned just above,
    // unaltered and never out of this function. wasmtime checks that the
    // compiling engine's settings match `engine`'s and refuses it otherwise.
    let component = unsafe { Component::deserialize(engine, &artifact) }.map_err(|e| {
        format!(
            "wasmtime refused the code it compiled: {}",
            explain_refusal(format!("{e:#}"))
        )
    })?;
    Ok((component, artifact))
}

/// The artifact inside a file [`decode`] accepted (what [`encode`] wrapped).
pub(super) fn artifact_of(file: &[u8]) -> &[u8] {
    file.get(MAGIC.len() + CHECKSUM_LEN..).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memory_larger_than_the_limit_is_said_in_sizes() {
        let wasmtime_says = "module memory does not fit in pooling allocator requirements\n\n\
            Caused by:\n    memory index 0 has a minimum byte size of 1376256 which exceeds \
            the limit of 0x100000 bytes";
        let said = explain_refusal(wasmtime_says.to_string());
        assert!(said.contains("starts at 1.3 MiB (1376256 bytes)"), "{said}");
        assert!(said.contains("memory limit of 1.0 MiB"), "{said}");
        assert!(said.contains("runtime.max_memory"), "{said}");
        assert_eq!(explain_refusal("other".into()), "other");
    }

    fn engine() -> Engine {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        Engine::new(&config).unwrap()
    }

    /// The smallest component there is: the header of an empty one.
    fn artifact(engine: &Engine) -> Vec<u8> {
        let component = Component::new(engine, b"\0asm\x0d\0\x01\0").unwrap();
        component.serialize().unwrap()
    }

    #[test]
    fn round_trip() {
        let engine = engine();
        let file = encode(&artifact(&engine));
        decode(&engine, &file).unwrap();
    }

    #[test]
    fn damaged_files_are_refused_before_wasmtime_sees_them() {
        let engine = engine();
        let good = encode(&artifact(&engine));
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        let mut bad_sum = good.clone();
        bad_sum[MAGIC.len()] ^= 1;
        let mut other_magic = good.clone();
        other_magic[0] = b'S';
        let cases: [(&str, &[u8], &str); 6] = [
            ("empty", &[], "format"),
            ("header only", &good[..MAGIC.len() + CHECKSUM_LEN], "format"),
            ("truncated", &good[..good.len() - 10], "checksum"),
            ("one bit flipped", &flipped, "checksum"),
            ("checksum altered", &bad_sum, "checksum"),
            ("other layout", &other_magic, "format"),
        ];
        for (name, bytes, kind) in cases {
            let err = decode(&engine, bytes)
                .err()
                .unwrap_or_else(|| panic!("{name}"));
            assert_eq!(err.kind(), kind, "{name}: {err}");
        }
    }

    #[test]
    fn another_engines_code_is_refused_by_wasmtime() {
        let theirs = {
            let mut config = wasmtime::Config::new();
            config.wasm_component_model(true).consume_fuel(true);
            Engine::new(&config).unwrap()
        };
        let file = encode(&artifact(&theirs));
        let err = decode(&engine(), &file).unwrap_err();
        assert_eq!(err.kind(), "incompatible", "{err}");
    }
}
