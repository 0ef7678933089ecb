//! What the host gives a policy during one evaluation: the logger import, an
//! empty WASI (virtual clocks, seeded randomness, captured stdio, no files,
//! environment or network), and the memory limiter.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use rand::SeedableRng as _;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::bindings::clocks::monotonic_clock;
use wasmtime_wasi::p2::{DynPollable, OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView};

use super::bindings::{self, types::Level};

/// The tracing target of everything a policy logs or prints.
pub const POLICY_LOG_TARGET: &str = "scalewise::policy";

/// Longest log message kept; longer ones are cut (the WIT promises 4 KiB).
pub(crate) const MAX_LOG_MESSAGE_BYTES: usize = 4096;
/// Log messages kept per evaluation; the rest are counted and reported once.
pub(crate) const MAX_LOG_MESSAGES: u32 = 64;
/// Bytes of stdout and of stderr kept per evaluation.
pub(crate) const MAX_CAPTURED_OUTPUT: usize = 16 * 1024;
/// The seed of every evaluation's randomness: same context, same bytes.
const RANDOM_SEED: u64 = 0x5ca1_e715_e000_0001;
/// Largest single request for random bytes (WASI's default is 64 MiB).
const MAX_RANDOM_BYTES: u64 = 64 * 1024;

// A Store may hold this many instances, tables and memories. A Rust policy
// needs a handful; these stop a component from multiplying them.
const MAX_INSTANCES: usize = 64;
const MAX_TABLES: usize = 64;
const MAX_MEMORIES: usize = 8;
const MAX_TABLE_ELEMENTS: usize = 100_000;
/// WASI handles a policy may hold at once.
const MAX_RESOURCES: usize = 4096;

/// The per-Store state of one evaluation (or of the `describe()` call at load).
pub(crate) struct HostState {
    /// Built on the guest's first WASI call: most evaluations make none,
    /// and building it (seeded generators, stream handles, the socket
    /// policy) is a measurable part of a short evaluation.
    wasi: Option<WasiCtx>,
    table: ResourceTable,
    pub(crate) limiter: Limiter,
    log: PolicyLog,
    clock: VirtualClock,
    stdout: CapturedOutput,
    stderr: CapturedOutput,
}

impl HostState {
    /// State for a call at `now_ms` (the context's time) for `scaler`.
    pub(crate) fn new(module: Arc<str>, scaler: &str, now_ms: i64, max_memory: usize) -> Self {
        HostState {
            wasi: None,
            table: {
                // WASI handles (streams, pollables) a policy holds at once:
                // plenty for any, and a bound on the host memory a guest
                // can pin with them (wasmtime's default is a million).
                let mut table = ResourceTable::new();
                table.set_max_capacity(MAX_RESOURCES);
                table
            },
            limiter: Limiter {
                max_memory,
                total: 0,
                denied: None,
                usage: EvalUsage::default(),
            },
            log: PolicyLog {
                module,
                scaler: scaler.to_string(),
                kept: 0,
                dropped: 0,
            },
            clock: VirtualClock { now_ms },
            stdout: CapturedOutput::new(MAX_CAPTURED_OUTPUT),
            stderr: CapturedOutput::new(MAX_CAPTURED_OUTPUT),
        }
    }

    /// Sends what the guest printed to the host log and reports dropped log
    /// messages. Returns the captured stderr (it often explains a trap).
    /// `stderr_in_error`: the call failed and its error carries the stderr,
    /// so it is logged at the debug level only (the scaler logs the error
    /// when the failure starts or changes; a policy panicking on every tick
    /// would otherwise repeat its panic message in the log every tick).
    pub(crate) fn finish(&mut self, stderr_in_error: bool) -> String {
        let out = self.stdout.take();
        let err = self.stderr.take();
        let log = &self.log;
        if !out.is_empty() {
            tracing::info!(
                target: POLICY_LOG_TARGET,
                module = %log.module,
                scaler = %log.scaler,
                stream = "stdout",
                "{}",
                log_safe(out.trim_end())
            );
        }
        if !err.is_empty() && stderr_in_error {
            tracing::debug!(
                target: POLICY_LOG_TARGET,
                module = %log.module,
                scaler = %log.scaler,
                stream = "stderr",
                "{}",
                log_safe(err.trim_end())
            );
        } else if !err.is_empty() {
            tracing::warn!(
                target: POLICY_LOG_TARGET,
                module = %log.module,
                scaler = %log.scaler,
                stream = "stderr",
                "{}",
                log_safe(err.trim_end())
            );
        }
        if log.dropped > 0 {
            tracing::warn!(
                target: POLICY_LOG_TARGET,
                module = %log.module,
                scaler = %log.scaler,
                dropped = log.dropped,
                "The policy logged more than {MAX_LOG_MESSAGES} messages in one evaluation; the rest were dropped."
            );
        }
        err
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let (stdout, stderr, clock) = (&self.stdout, &self.stderr, self.clock);
        WasiCtxView {
            ctx: self
                .wasi
                .get_or_insert_with(|| empty_wasi(stdout, stderr, clock)),
            table: &mut self.table,
        }
    }
}

/// The empty WASI a guest sees: captured stdio, the stopped clock, seeded
/// randomness, no files, environment, arguments or network.
fn empty_wasi(stdout: &CapturedOutput, stderr: &CapturedOutput, clock: VirtualClock) -> WasiCtx {
    WasiCtx::builder()
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .wall_clock(clock)
        .monotonic_clock(clock)
        .secure_random(rand::rngs::StdRng::seed_from_u64(RANDOM_SEED))
        .insecure_random(rand::rngs::StdRng::seed_from_u64(RANDOM_SEED ^ 1))
        .insecure_random_seed(u128::from(RANDOM_SEED))
        .max_random_size(MAX_RANDOM_BYTES)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build()
}

/// Gives the policy its one import, the logger, and an empty WASI whose
/// sleeps return at once (see [`monotonic_clock::Host`] below).
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    bindings::Policy::add_to_linker::<HostState, HasSelf>(linker, |s| s)?;
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    // Replace WASI's monotonic clock: its pollables sleep in real time, which
    // would let a policy block the host thread past any deadline (epoch
    // interruption cannot stop a host call).
    linker.allow_shadowing(true);
    monotonic_clock::add_to_linker::<HostState, HasSelf>(linker, |s| s)?;
    linker.allow_shadowing(false);
    Ok(())
}

/// `HasData` for host traits implemented on [`HostState`] itself.
struct HasSelf;

impl HasData for HasSelf {
    type Data<'a> = &'a mut HostState;
}

/// The logger's per-call bookkeeping.
struct PolicyLog {
    module: Arc<str>,
    scaler: String,
    kept: u32,
    dropped: u32,
}

impl bindings::scalewise::policy::log::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        let log = &mut self.log;
        if log.kept >= MAX_LOG_MESSAGES {
            log.dropped += 1;
            return;
        }
        log.kept += 1;
        let message = truncate(&message, MAX_LOG_MESSAGE_BYTES);
        let message = log_safe(&message);
        let (module, scaler) = (&*log.module, log.scaler.as_str());
        match level {
            Level::Debug => tracing::debug!(
                target: POLICY_LOG_TARGET, module = %module, scaler = %scaler, "{message}"
            ),
            Level::Info => tracing::info!(
                target: POLICY_LOG_TARGET, module = %module, scaler = %scaler, "{message}"
            ),
            Level::Warn => tracing::warn!(
                target: POLICY_LOG_TARGET, module = %module, scaler = %scaler, "{message}"
            ),
            Level::Error => tracing::error!(
                target: POLICY_LOG_TARGET, module = %module, scaler = %scaler, "{message}"
            ),
        }
    }
}

impl bindings::scalewise::policy::types::Host for HostState {}

/// `text` from a policy made safe for one log record: a line break starts
/// an indented continuation line, other control characters (carriage
/// returns, terminal escapes) are written escaped. A policy cannot print a
/// line that reads as one of the host's own (`2026-... INFO scalewise::scale:
/// Scaled: ...`), nor drive the operator's terminal.
pub fn log_safe(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| c == '\n' || needs_escape(c)) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut safe = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\n' => safe.push_str("\n    "),
            c if needs_escape(c) => safe.extend(c.escape_default()),
            c => safe.push(c),
        }
    }
    std::borrow::Cow::Owned(safe)
}

/// JSON text made safe for a terminal: the characters [`log_safe`] escapes
/// that JSON leaves as they are (DEL and the C1 controls, Unicode line
/// separators, bidirectional controls) written as `\uXXXX` escapes. The
/// text means the same JSON: those characters can only be inside strings
/// (serde already escapes the C0 controls there, so a raw line feed is
/// the layout's own).
pub fn json_safe(json: String) -> String {
    let escaped = |c: char| u32::from(c) >= 0x7f && needs_escape(c);
    if !json.chars().any(escaped) {
        return json;
    }
    let mut safe = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if escaped(c) {
            // All of them are in the Basic Multilingual Plane.
            safe.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            safe.push(c);
        }
    }
    safe
}

/// Whether [`log_safe`] writes `c` escaped: control characters but the tab
/// (a line feed is indented instead), the Unicode line and paragraph
/// separators (which some viewers break lines at), and the bidirectional
/// controls (which reorder what a reader sees, "Trojan Source").
pub(crate) fn needs_escape(c: char) -> bool {
    (c.is_control() && c != '\t')
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// The last `max` bytes of `text` or so (cut on a character boundary),
/// marked at the start when something was cut.
pub(crate) fn tail(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    std::borrow::Cow::Owned(format!("[{start} bytes cut] {}", &text[start..]))
}

/// Cuts `text` to at most `max` bytes on a character boundary, marking the cut.
pub(crate) fn truncate(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [{} bytes cut]", &text[..end], text.len() - end).into()
}

/// A clock stopped at the context's time: the wall clock reads `now_ms`, the
/// monotonic clock reads `now_ms` in nanoseconds and never advances.
#[derive(Debug, Clone, Copy)]
struct VirtualClock {
    now_ms: i64,
}

impl VirtualClock {
    fn monotonic_ns(self) -> u64 {
        u64::try_from(self.now_ms)
            .unwrap_or(0)
            .saturating_mul(1_000_000)
    }
}

impl HostWallClock for VirtualClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }

    fn now(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.now_ms).unwrap_or(0))
    }
}

impl HostMonotonicClock for VirtualClock {
    fn resolution(&self) -> u64 {
        1_000_000
    }

    fn now(&self) -> u64 {
        self.monotonic_ns()
    }
}

impl monotonic_clock::Host for HostState {
    fn now(&mut self) -> wasmtime::Result<u64> {
        Ok(self.clock.monotonic_ns())
    }

    fn resolution(&mut self) -> wasmtime::Result<u64> {
        Ok(1_000_000)
    }

    fn subscribe_instant(&mut self, _when: u64) -> wasmtime::Result<Resource<DynPollable>> {
        self.ready_pollable()
    }

    fn subscribe_duration(&mut self, _duration: u64) -> wasmtime::Result<Resource<DynPollable>> {
        self.ready_pollable()
    }
}

impl HostState {
    /// A pollable that is ready at once: virtual time does not pass, so a
    /// sleep ends immediately.
    fn ready_pollable(&mut self) -> wasmtime::Result<Resource<DynPollable>> {
        let ready = self.table.push(Ready)?;
        wasmtime_wasi::p2::subscribe(&mut self.table, ready)
    }
}

/// A pollable that is always ready.
struct Ready;

#[wasmtime_wasi::async_trait]
impl Pollable for Ready {
    async fn ready(&mut self) {}
}

/// Denies memory growth past `max_memory` with an error the runtime maps to
/// `out_of_memory`, and keeps instance/table/memory counts small.
pub(crate) struct Limiter {
    max_memory: usize,
    /// The size of all the instance's memories together: the limit is
    /// theirs, not each one's (a component may hold several).
    total: usize,
    /// The size (all memories together) the guest asked for when it was
    /// refused.
    pub(crate) denied: Option<usize>,
    /// The guest's memory use so far.
    pub(crate) usage: EvalUsage,
}

/// What one call into a policy used: linear memory, and fuel when metered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EvalUsage {
    /// The largest size the policy's memory reached, in bytes: its initial
    /// size plus every growth that was granted (all its memories together,
    /// when it has several).
    pub memory_bytes: u64,
    /// How many times the memory grew after the instance was created. A
    /// Rust policy linked with `--initial-heap` (see policies/.cargo/
    /// config.toml) grows it only when that heap runs out; each growth
    /// costs the host a re-protection of the pages when the slot is reused.
    pub memory_growths: u32,
    /// Fuel the call burned (instantiation included), when fuel metering
    /// is on (`runtime.fuel` > 0); `None` otherwise.
    pub fuel_consumed: Option<u64>,
}

/// The error a refused memory growth traps with.
#[derive(Debug, thiserror::Error)]
#[error(
    "the policy tried to grow its memory to {desired} bytes; the limit is {limit} bytes (runtime.max_memory)"
)]
pub(crate) struct MemoryLimitExceeded {
    pub(crate) desired: usize,
    pub(crate) limit: usize,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // wasmtime asks here for each memory's initial size too (from 0).
        // A growth past the memory's own maximum is failed by wasmtime
        // before it asks; one granted here that the system then fails
        // stays counted (stricter, not looser).
        let total = (self.total - current.min(self.total)).saturating_add(desired);
        if total > self.max_memory {
            self.denied = Some(total);
            return Err(MemoryLimitExceeded {
                desired: total,
                limit: self.max_memory,
            }
            .into());
        }
        self.total = total;
        if current > 0 {
            self.usage.memory_growths += 1;
        }
        self.usage.memory_bytes = self.usage.memory_bytes.max(total as u64);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

/// A bounded in-memory stdout/stderr: writes past the cap are dropped (and
/// counted) instead of failing, so a chatty policy never traps for it.
#[derive(Clone)]
struct CapturedOutput {
    inner: Arc<Mutex<Captured>>,
}

/// What a stream kept: its first half of the bound and its last half, the
/// middle dropped (a panic's message comes at the end of a flood).
struct Captured {
    head: Vec<u8>,
    tail: std::collections::VecDeque<u8>,
    cap: usize,
    dropped: usize,
}

impl CapturedOutput {
    fn new(cap: usize) -> Self {
        CapturedOutput {
            inner: Arc::new(Mutex::new(Captured {
                head: Vec::new(),
                tail: std::collections::VecDeque::new(),
                cap,
                dropped: 0,
            })),
        }
    }

    fn push(&self, data: &[u8]) {
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let room = (c.cap / 2).saturating_sub(c.head.len());
        let (first, rest) = data.split_at(data.len().min(room));
        c.head.extend_from_slice(first);
        let tail_cap = c.cap - c.cap / 2;
        // Only the last tail_cap bytes of `rest` can stay.
        let skip = rest.len().saturating_sub(tail_cap);
        c.dropped += skip;
        c.tail.extend(&rest[skip..]);
        let excess = c.tail.len().saturating_sub(tail_cap);
        c.tail.drain(..excess);
        c.dropped += excess;
    }

    /// Everything captured so far, as text, with a note of what was dropped.
    fn take(&self) -> String {
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut bytes = std::mem::take(&mut c.head);
        if c.dropped > 0 {
            bytes.extend_from_slice(format!("\n… [{} bytes dropped] …\n", c.dropped).as_bytes());
        }
        bytes.extend(c.tail.drain(..));
        c.dropped = 0;
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl IsTerminal for CapturedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CapturedOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for CapturedOutput {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for CapturedOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The memory limit is the instance's, all its memories together: two
    /// memories of 40 MiB do not both fit under 64 MiB.
    #[test]
    fn the_memory_limit_counts_every_memory() {
        use wasmtime::ResourceLimiter as _;
        const MIB: usize = 1 << 20;
        let mut limiter = HostState::new("m".into(), "s", 0, 64 * MIB).limiter;
        assert!(limiter.memory_growing(0, 40 * MIB, None).unwrap());
        assert!(limiter.memory_growing(0, 20 * MIB, None).unwrap());
        // The first memory growing by 4 MiB reaches the limit exactly.
        assert!(limiter.memory_growing(40 * MIB, 44 * MIB, None).unwrap());
        let refused = limiter.memory_growing(0, MIB, None).unwrap_err();
        assert!(
            refused.to_string().contains(&format!("{}", 65 * MIB)),
            "{refused}"
        );
        assert_eq!(limiter.denied, Some(65 * MIB));
        assert_eq!(limiter.usage.memory_bytes, 64 * MIB as u64);
        assert_eq!(limiter.usage.memory_growths, 1);
    }

    #[test]
    fn policy_text_cannot_forge_a_log_line_or_drive_the_terminal() {
        assert!(matches!(
            log_safe("plain text"),
            std::borrow::Cow::Borrowed(_)
        ));
        let forged = "boom\n2026-12-05T09:00:00Z  INFO scalewise::scale: Scaled: 3 → 95\r\x1b[2J";
        let safe = log_safe(forged);
        for line in safe.lines().skip(1) {
            assert!(line.starts_with("    "), "{line:?}");
        }
        assert!(!safe.contains('\r') && !safe.contains('\x1b'), "{safe:?}");
        assert!(safe.contains("\\r\\u{1b}[2J"), "{safe:?}");
        assert_eq!(log_safe("tab\tkept"), "tab\tkept");
        // Line breaks for some viewers, and text that reads backwards.
        assert_eq!(
            log_safe("a\u{2028}b\u{202e}c\u{2069}"),
            "a\\u{2028}b\\u{202e}c\\u{2069}"
        );
        assert_eq!(log_safe("3 → 95 ✓"), "3 → 95 ✓");
    }

    #[test]
    fn json_for_a_terminal_escapes_what_json_leaves_raw() {
        let value = serde_json::json!({"reason": "up\u{202e}side\u{2028}\u{9b}2J\n→ ok"});
        let text = json_safe(serde_json::to_string_pretty(&value).unwrap());
        assert!(text.contains(r"up\u202eside\u2028\u009b2J\n→ ok"), "{text}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).unwrap(),
            value
        );
        assert_eq!(json_safe("{\n  \"a\": 1\n}".into()), "{\n  \"a\": 1\n}");
    }

    #[test]
    fn tail_keeps_the_end_on_char_boundaries() {
        assert_eq!(tail("short", 10), "short");
        let text = format!("{}panicked at src/lib.rs: boom", "é".repeat(100));
        let kept = tail(&text, 40);
        assert!(kept.ends_with("panicked at src/lib.rs: boom"), "{kept}");
        assert!(
            kept.starts_with('[') && kept.contains(" bytes cut] "),
            "{kept}"
        );
    }

    #[test]
    fn truncate_keeps_char_boundaries() {
        let cases = [
            ("short", 10, "short"),
            ("abcdef", 3, "abc… [3 bytes cut]"),
            ("ééé", 3, "é… [4 bytes cut]"),
        ];
        for (text, max, want) in cases {
            assert_eq!(truncate(text, max), want, "{text:?} at {max}");
        }
    }

    #[test]
    fn captured_output_is_bounded() {
        // The first and the last half of the bound; the middle dropped.
        let out = CapturedOutput::new(4);
        out.push(b"ab");
        out.push(b"cdef");
        assert_eq!(out.take(), "ab\n… [2 bytes dropped] …\nef");
        assert_eq!(out.take(), "");
        out.push(b"a");
        out.push(b"bcdefghij");
        out.push(b"k");
        assert_eq!(out.take(), "ab\n… [7 bytes dropped] …\njk");
        out.push(b"abc");
        assert_eq!(out.take(), "abc", "nothing dropped, nothing said");
    }

    #[test]
    fn virtual_clock_reads_the_context_time() {
        let c = VirtualClock { now_ms: 1_500 };
        assert_eq!(HostWallClock::now(&c), Duration::from_millis(1_500));
        assert_eq!(HostMonotonicClock::now(&c), 1_500_000_000);
        let before_epoch = VirtualClock { now_ms: -5 };
        assert_eq!(HostMonotonicClock::now(&before_epoch), 0);
    }
}
