//! The decision journal against real SQLite files.

#[path = "support/records.rs"]
mod records;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use scalewise::clock::wall_clock_ms;
use scalewise::journal::{self, ActuationRecord, EvaluationOutcome, Journal, Query, TickRecord};
use scalewise::policy::Point;

use records::{synthetic_load, tick_record};

const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);
const MINUTE_MS: i64 = 60_000;
/// A retention under which the fixed, old timestamps of some tests never expire.
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

fn record(scaler: &str, tick: u64, time_ms: i64) -> TickRecord {
    tick_record(scaler, tick, time_ms, &synthetic_load)
}

fn with_id(mut record: TickRecord, id: i64) -> TickRecord {
    record.id = Some(id);
    record
}

fn temp_journal() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    (dir, path)
}

#[tokio::test]
async fn records_read_back_exactly() {
    let (_dir, path) = temp_journal();
    let journal = Journal::open(&path, WEEK).unwrap();
    let now = wall_clock_ms();
    let mut tricky = record("web", 1, now);
    // Values whose shortest decimal form is long, tiny, huge or negative zero.
    tricky.evaluations[0].context.metrics[0].points = [
        0.1 + 0.2,
        1.0 / 3.0,
        5e-324,
        f64::MAX,
        -0.0,
        123_456.789e-7,
        f64::EPSILON,
    ]
    .iter()
    .enumerate()
    .map(|(i, &value)| Point {
        timestamp_ms: now - i as i64,
        value,
    })
    .collect();
    let originals = vec![tricky, record("web", 2, now + 1), record("db", 3, now + 2)];
    let mut ids = Vec::new();
    for original in &originals {
        ids.push(journal.append(original.clone()).await.unwrap());
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    for (original, &id) in originals.iter().zip(&ids) {
        let read = journal.get(id).await.unwrap().expect("the record is there");
        assert_eq!(read, with_id(original.clone(), id));
        // Bit-exact floats (PartialEq would accept -0.0 for 0.0).
        let bits = |r: &TickRecord| -> Vec<u64> {
            r.evaluations
                .iter()
                .flat_map(|e| &e.context.metrics)
                .flat_map(|m| &m.points)
                .map(|p| p.value.to_bits())
                .collect()
        };
        assert_eq!(bits(&read), bits(original));
    }
    let listed = journal.query(Query::latest(10)).await.unwrap();
    let expected: Vec<_> = originals
        .into_iter()
        .zip(ids)
        .rev()
        .map(|(r, id)| with_id(r, id))
        .collect();
    assert_eq!(listed, expected);
    assert_eq!(journal.get(999_999).await.unwrap(), None);
    journal.close().await.unwrap();
}

#[tokio::test]
async fn queries_filter_by_scaler_and_time_newest_first() {
    let (_dir, path) = temp_journal();
    let journal = Journal::open(&path, WEEK).unwrap();
    let base = wall_clock_ms() - 60 * MINUTE_MS;
    // Appended out of time order, to show order comes from time, not id;
    // at equal times the later append (web) comes first.
    for minute in [5, 1, 3, 0, 4, 2] {
        for scaler in ["db", "web"] {
            let time_ms = base + minute * MINUTE_MS;
            journal
                .append(record(scaler, minute as u64, time_ms))
                .await
                .unwrap();
        }
    }
    let minutes = |records: &[TickRecord]| -> Vec<(String, i64)> {
        records
            .iter()
            .map(|r| (r.scaler.clone(), (r.time_ms - base) / MINUTE_MS))
            .collect()
    };
    let web = |m: &[i64]| -> Vec<(String, i64)> { m.iter().map(|&m| ("web".into(), m)).collect() };
    type Case = (&'static str, Query, Vec<(String, i64)>);
    let cases: Vec<Case> = vec![
        (
            "one scaler, all",
            Query::scaler("web", 100),
            web(&[5, 4, 3, 2, 1, 0]),
        ),
        (
            "limit keeps the newest",
            Query::scaler("web", 2),
            web(&[5, 4]),
        ),
        (
            "since is inclusive, until exclusive",
            Query {
                since_ms: Some(base + MINUTE_MS),
                until_ms: Some(base + 4 * MINUTE_MS),
                ..Query::scaler("web", 100)
            },
            web(&[3, 2, 1]),
        ),
        (
            "every scaler in a range",
            Query {
                since_ms: Some(base + 4 * MINUTE_MS),
                ..Query::latest(100)
            },
            vec![
                ("web".into(), 5),
                ("db".into(), 5),
                ("web".into(), 4),
                ("db".into(), 4),
            ],
        ),
        (
            "every scaler, limited",
            Query::latest(3),
            vec![("web".into(), 5), ("db".into(), 5), ("web".into(), 4)],
        ),
        ("unknown scaler", Query::scaler("cache", 100), vec![]),
        ("limit zero", Query::scaler("web", 0), vec![]),
    ];
    for (what, query, expected) in cases {
        let got = journal.query(query).await.unwrap();
        assert_eq!(minutes(&got), expected, "{what}");
    }
    let recent = journal.recent("db", base + 3 * MINUTE_MS).await.unwrap();
    assert_eq!(
        minutes(&recent),
        vec![("db".into(), 3), ("db".into(), 4), ("db".into(), 5)],
        "recent is oldest first"
    );
}

#[tokio::test]
async fn update_actuation_changes_only_the_actuation() {
    let (_dir, path) = temp_journal();
    let journal = Journal::open(&path, WEEK).unwrap();
    let mut original = record("web", 1, wall_clock_ms());
    original.actuation = ActuationRecord::Pending;
    let id = journal.append(original.clone()).await.unwrap();
    let second = record("web", 2, wall_clock_ms());
    let other = journal.append(second.clone()).await.unwrap();
    let done = ActuationRecord::Done {
        detail: "scaled simulator web-svc from 3 to 4".into(),
    };
    journal
        .update_actuation(id, done.clone(), None)
        .await
        .unwrap();
    let read = journal.get(id).await.unwrap().unwrap();
    let mut expected = with_id(original, id);
    expected.actuation = done;
    assert_eq!(read, expected);
    assert_eq!(
        journal.get(other).await.unwrap().unwrap(),
        with_id(second, other),
        "the other record is untouched"
    );
    let missing = journal
        .update_actuation(id + 100, ActuationRecord::None, None)
        .await
        .unwrap_err();
    assert_eq!(missing.kind(), "not_found", "{missing}");
}

#[tokio::test]
async fn retention_deletes_only_expired_records() {
    let (_dir, path) = temp_journal();
    let now = wall_clock_ms();
    let day_ms = 24 * 3600 * 1000;
    // Written with a long retention, so nothing expires yet.
    let journal = Journal::open(&path, 10 * WEEK).unwrap();
    let mut writes = Vec::new();
    // More than one deletion batch (1,000) of expired records.
    for i in 0..2_500u64 {
        let journal = journal.clone();
        let time_ms = now - 8 * day_ms - i as i64;
        writes.push(tokio::spawn(async move {
            journal.append(record("old", i, time_ms)).await.unwrap()
        }));
    }
    let mut fresh = Vec::new();
    for i in 0..5u64 {
        let id = journal
            .append(record("web", i, now - 6 * day_ms + i as i64))
            .await
            .unwrap();
        fresh.push(id);
    }
    for write in writes {
        write.await.unwrap();
    }
    assert_eq!(journal.sweep_now().await.unwrap(), 0, "nothing expired yet");
    journal.close().await.unwrap();

    // Reopened with a week's retention: the sweep at open removes the old
    // ones, but for the scaler's newest evaluating record (the policies'
    // state is restored from it).
    let journal = Journal::open(&path, WEEK).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let newest_old = loop {
        let old = journal.query(Query::scaler("old", 10)).await.unwrap();
        if old.len() == 1 {
            break old[0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "expired records were never deleted ({} left)",
            old.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(newest_old.time_ms, now - 8 * day_ms, "the newest one stays");
    let kept: Vec<i64> = journal
        .query(Query::scaler("web", 100))
        .await
        .unwrap()
        .iter()
        .rev()
        .map(|r| r.id.unwrap())
        .collect();
    assert_eq!(kept, fresh, "records inside the retention stay");

    // And on demand, with a count.
    for i in 0..3u64 {
        journal
            .append(record("old", i, now - 9 * day_ms))
            .await
            .unwrap();
    }
    assert_eq!(journal.sweep_now().await.unwrap(), 3);
    assert_eq!(journal.query(Query::latest(100)).await.unwrap().len(), 6);
}

#[tokio::test]
async fn reopening_keeps_records_pause_flags_and_never_reuses_ids() {
    let (_dir, path) = temp_journal();
    // In the past, so that a 1 ms retention below expires every one of them.
    let now = wall_clock_ms() - 1_000;
    let journal = Journal::open(&path, WEEK).unwrap();
    let mut expected = Vec::new();
    for i in 0..20u64 {
        let r = record(if i % 2 == 0 { "web" } else { "db" }, i, now + i as i64);
        let id = journal.append(r.clone()).await.unwrap();
        expected.push(with_id(r, id));
    }
    journal.set_paused("web", true).await.unwrap();
    journal.set_paused("db", true).await.unwrap();
    journal.set_paused("db", false).await.unwrap();
    assert_eq!(journal.paused("web").await.unwrap(), Some(true));
    journal.close().await.unwrap();

    let journal = Journal::open(&path, WEEK).unwrap();
    let mut all = journal.query(Query::latest(100)).await.unwrap();
    all.reverse();
    assert_eq!(all, expected);
    assert_eq!(journal.paused("web").await.unwrap(), Some(true));
    assert_eq!(journal.paused("db").await.unwrap(), Some(false));
    assert_eq!(journal.paused("cache").await.unwrap(), None);
    let next = journal.append(record("web", 99, now + 99)).await.unwrap();
    assert!(next > expected.last().unwrap().id.unwrap());
    journal.close().await.unwrap();

    // Even after retention emptied the table (but for each scaler's newest
    // evaluating record, which a restart takes the policies' state from),
    // ids keep growing.
    let journal = Journal::open(&path, Duration::from_millis(1)).unwrap();
    journal.sweep_now().await.unwrap();
    let left: Vec<i64> = journal
        .query(Query::latest(100))
        .await
        .unwrap()
        .iter()
        .map(|r| r.id.unwrap())
        .collect();
    assert_eq!(
        left,
        [next, expected[19].id.unwrap()],
        "web's newest, db's newest"
    );
    let after = journal.append(record("web", 100, now)).await.unwrap();
    assert!(after > next, "{after} > {next}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_all_land() {
    let (_dir, path) = temp_journal();
    let journal = Journal::open(&path, WEEK).unwrap();
    let now = wall_clock_ms();
    let tasks: Vec<_> = (0..200u64)
        .map(|task| {
            let journal = journal.clone();
            tokio::spawn(async move {
                let mut appended = Vec::new();
                for tick in 0..20u64 {
                    let r = record(&format!("scaler-{task}"), tick, now + tick as i64 * 15_000);
                    let id = journal.append(r.clone()).await.unwrap();
                    appended.push(with_id(r, id));
                }
                appended
            })
        })
        .collect();
    let mut appended = Vec::new();
    for task in tasks {
        appended.extend(task.await.unwrap());
    }
    let ids: HashSet<i64> = appended.iter().map(|r| r.id.unwrap()).collect();
    assert_eq!(ids.len(), 4_000, "every append got its own id");
    let stored = journal.query(Query::latest(10_000)).await.unwrap();
    assert_eq!(stored.len(), 4_000);
    let stored: BTreeMap<i64, TickRecord> =
        stored.into_iter().map(|r| (r.id.unwrap(), r)).collect();
    for r in &appended {
        assert_eq!(&stored[&r.id.unwrap()], r);
    }
}

#[tokio::test]
async fn recovery_restores_states_ticks_and_pause() {
    let (_dir, path) = temp_journal();
    let journal = Journal::open(&path, WEEK).unwrap();
    let base = wall_clock_ms() - 120 * MINUTE_MS;
    for minute in 0..100i64 {
        let mut r = record("web", minute as u64, base + minute * MINUTE_MS);
        r.desired = r.target.current + u32::from(minute % 10 == 0);
        journal.append(r).await.unwrap();
    }
    // The newest evaluating tick: the first policy decided, the second failed.
    let mut last_evaluated = record("web", 100, base + 100 * MINUTE_MS);
    last_evaluated.evaluations[0].outcome = EvaluationOutcome::Decided {
        decision: scalewise::policy::Decision {
            desired: Some(4),
            reason: "up".into(),
            state: Some(b"tracking-after".to_vec()),
        },
    };
    last_evaluated.evaluations[1].context.state = Some(b"threshold-given".to_vec());
    last_evaluated.evaluations[1].outcome = EvaluationOutcome::Failed {
        kind: "timeout".into(),
        error: "deadline".into(),
    };
    last_evaluated.desired = last_evaluated.target.current + 1;
    last_evaluated.actuation = ActuationRecord::Pending;
    let pending_id = journal.append(last_evaluated.clone()).await.unwrap();
    // Then a tick that could not observe the target (evaluates nothing).
    let mut blind = record("web", 101, base + 101 * MINUTE_MS);
    blind.evaluations.clear();
    blind.desired = blind.target.current;
    blind.actuation = ActuationRecord::ObserveFailed {
        error: "connection refused".into(),
    };
    let blind_id = journal.append(blind).await.unwrap();
    // Another scaler's records must not leak in.
    journal
        .append(record("db", 1, base + 101 * MINUTE_MS))
        .await
        .unwrap();
    journal.set_paused("web", true).await.unwrap();

    let since = base + 60 * MINUTE_MS;
    let recovery = journal.recover("web", since).await.unwrap();
    assert_eq!(recovery.paused, Some(true));
    let last = recovery.last.as_ref().unwrap();
    assert_eq!(last.id, blind_id);
    assert!(matches!(
        last.actuation,
        ActuationRecord::ObserveFailed { .. }
    ));
    let times: Vec<i64> = recovery.ticks.iter().map(|t| t.time_ms).collect();
    let expected_times: Vec<i64> = (60..102).map(|m| base + m * MINUTE_MS).collect();
    assert_eq!(
        times, expected_times,
        "ticks since, oldest first, this scaler only"
    );
    let scale_minutes: Vec<i64> = recovery
        .ticks
        .iter()
        .filter(|t| t.is_scale())
        .map(|t| (t.time_ms - base) / MINUTE_MS)
        .collect();
    assert_eq!(scale_minutes, vec![60, 70, 80, 90, 100]);
    let pending = recovery.ticks.iter().find(|t| t.id == pending_id).unwrap();
    assert_eq!(pending.actuation, ActuationRecord::Pending);
    assert_eq!(pending.recommendation, last_evaluated.recommendation);
    let states: Vec<(usize, &str, Option<&[u8]>)> = recovery
        .policy_states
        .iter()
        .map(|s| (s.index, s.module.as_str(), s.state.as_deref()))
        .collect();
    assert_eq!(
        states,
        vec![
            (0, "target-tracking", Some(&b"tracking-after"[..])),
            (1, "threshold", Some(&b"threshold-given"[..])),
        ]
    );
    assert!(
        recovery
            .policy_states
            .iter()
            .all(|s| s.time_ms == last_evaluated.time_ms)
    );

    let nothing = journal.recover("never-ran", since).await.unwrap();
    assert_eq!(nothing, journal::Recovery::default());
}

#[tokio::test]
async fn export_writes_json_lines_that_read_back() {
    let (_dir, path) = temp_journal();
    let journal = Journal::open(&path, WEEK).unwrap();
    let base = wall_clock_ms() - 1_000 * MINUTE_MS;
    let mut web = Vec::new();
    // More than one export page (500).
    for i in 0..1_203i64 {
        let scaler = if i % 3 == 0 { "db" } else { "web" };
        let r = record(scaler, i as u64, base + i * 1_000);
        let id = journal.append(r.clone()).await.unwrap();
        if scaler == "web" && i >= 100 {
            web.push(with_id(r, id));
        }
    }
    let mut out = Vec::new();
    let count = journal
        .export_jsonl(&mut out, Some("web"), Some(base + 100 * 1_000), None)
        .unwrap();
    assert_eq!(count as usize, web.len());
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.lines().count(), web.len());
    let read: Vec<TickRecord> = journal::read_jsonl(text.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(read, web, "oldest first, exactly as stored");
    let one = journal::parse_record(text.lines().nth(7).unwrap()).unwrap();
    assert_eq!(one, web[7]);
    let pretty = serde_json::to_string_pretty(&web[3]).unwrap();
    assert_eq!(journal::parse_record(&pretty).unwrap(), web[3]);
}

#[tokio::test]
async fn read_only_journal_reads_while_the_writer_writes() {
    let (_dir, path) = temp_journal();
    let journal = Journal::open(&path, WEEK).unwrap();
    let r = record("web", 1, wall_clock_ms());
    let id = journal.append(r.clone()).await.unwrap();
    let reader = Journal::open_read_only(&path).unwrap();
    assert_eq!(reader.get_blocking(id).unwrap(), Some(with_id(r, id)));
    let second = journal
        .append(record("web", 2, wall_clock_ms()))
        .await
        .unwrap();
    assert_eq!(
        reader.query_blocking(&Query::latest(5)).unwrap()[0].id,
        Some(second),
        "sees commits made after it opened"
    );
    let refused = reader
        .append(record("web", 3, wall_clock_ms()))
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), "read_only");
    let missing = Journal::open_read_only(&path.with_file_name("missing.db")).unwrap_err();
    assert_eq!(missing.kind(), "open");
    assert!(missing.to_string().contains("missing.db"), "{missing}");
}

#[tokio::test]
async fn a_second_writer_is_refused_until_the_first_closes() {
    let (_dir, path) = temp_journal();
    let first = Journal::open(&path, WEEK).unwrap();
    // Dated now: the background sweep at open deletes records older than
    // the retention.
    first
        .append(record("web", 1, wall_clock_ms()))
        .await
        .unwrap();
    // Another daemon on the same file (a second handle here: the lock is
    // per open file, so this is what another process sees).
    let err = Journal::open(&path, WEEK).unwrap_err();
    assert_eq!(err.kind(), "in_use");
    let message = err.to_string();
    assert!(
        message.contains(&format!("pid {}", std::process::id())),
        "{message}"
    );
    assert!(message.contains("journal.db.lock"), "{message}");
    // Readers are not writers: the CLI reads while a daemon writes.
    let reader = Journal::open_read_only(&path).unwrap();
    assert_eq!(reader.query_blocking(&Query::latest(10)).unwrap().len(), 1);
    // Another name for the same file finds the same lock.
    let link = path.with_file_name("link.db");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    assert_eq!(Journal::open(&link, WEEK).unwrap_err().kind(), "in_use");
    first.close().await.unwrap();
    let second = Journal::open(&path, WEEK).unwrap();
    second
        .append(record("web", 2, wall_clock_ms()))
        .await
        .unwrap();
    second.close().await.unwrap();
}

#[tokio::test]
async fn closed_journal_refuses_writes() {
    let (_dir, path) = temp_journal();
    let journal = Journal::open(&path, WEEK).unwrap();
    let other = journal.clone();
    journal.close().await.unwrap();
    let err = other
        .append(record("web", 1, wall_clock_ms()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "closed");
    // Reads still work on a closed handle.
    assert!(other.query(Query::latest(1)).await.unwrap().is_empty());
}

#[test]
fn bad_files_are_refused_with_their_path() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![0x5a; 8192]).unwrap();
    let foreign = dir.path().join("foreign.db");
    rusqlite::Connection::open(&foreign)
        .unwrap()
        .execute_batch("CREATE TABLE things (x INTEGER)")
        .unwrap();
    let newer = dir.path().join("newer.db");
    drop(Journal::open(&newer, WEEK).unwrap());
    rusqlite::Connection::open(&newer)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, b"not a folder").unwrap();
    let under_file = blocker.join("journal.db");

    let cases: [(&Path, &str, &str); 4] = [
        (&garbage, "corrupt", "not a database"),
        (&foreign, "not_a_journal", "no Scalewise schema version"),
        (&newer, "newer_schema", "schema version 99"),
        (&under_file, "open", "cannot create the folder"),
    ];
    for (path, kind, words) in cases {
        let err = Journal::open(path, WEEK).unwrap_err();
        assert_eq!(err.kind(), kind, "{err}");
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains(words), "{message}");
    }
    assert_eq!(
        Journal::open_read_only(&newer).unwrap_err().kind(),
        "newer_schema"
    );
}

/// Set in the child process of the kill -9 test: the journal file to write.
const KILL_CHILD_ENV: &str = "SCALEWISE_JOURNAL_KILL_CHILD";

/// Marks the kill -9 child's lines among the test harness's.
const ACK: &str = "journal-ack";

/// The seq-th record the kill -9 child writes.
fn kill_record(seq: u64) -> TickRecord {
    record(
        &format!("scaler-{}", seq % 37),
        seq,
        1_700_000_000_000 + seq as i64,
    )
}

/// Runs only as the child of `acknowledged_records_survive_kill_9`: appends
/// records from many tasks, and prints each id once it is acknowledged (and
/// again once its actuation update is acknowledged), until killed.
#[test]
fn kill_9_child() {
    let Ok(path) = std::env::var(KILL_CHILD_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let journal = Journal::open(Path::new(&path), FOREVER).unwrap();
        let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut appenders = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let journal = journal.clone();
            let next = next.clone();
            appenders.spawn(async move {
                loop {
                    let seq = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let mut r = kill_record(seq);
                    r.actuation = ActuationRecord::Pending;
                    let id = journal.append(r).await.unwrap();
                    println!("{ACK} appended {id} {seq}");
                    let done = ActuationRecord::Done {
                        detail: format!("seq {seq}"),
                    };
                    journal.update_actuation(id, done, None).await.unwrap();
                    println!("{ACK} actuated {id} {seq}");
                }
            });
        }
        // The appenders only stop by failing (or by the parent's SIGKILL).
        let stopped = appenders.join_next().await;
        panic!("an appender stopped: {stopped:?}");
    });
}

#[tokio::test]
async fn acknowledged_records_survive_kill_9() {
    let (_dir, path) = temp_journal();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "kill_9_child", "--nocapture", "--test-threads=1"])
        .env(KILL_CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut appended = BTreeMap::new();
    let mut actuated = HashSet::new();
    let parse = |line: &str, appended: &mut BTreeMap<i64, u64>, actuated: &mut HashSet<i64>| {
        // The test harness may print its own words before ours on a line.
        let Some(start) = line.find(ACK) else {
            return;
        };
        let mut words = line[start + ACK.len()..].split_whitespace();
        let (Some(what), Some(id), Some(seq)) = (words.next(), words.next(), words.next()) else {
            return;
        };
        let (id, seq): (i64, u64) = (id.parse().unwrap(), seq.parse().unwrap());
        match what {
            "appended" => {
                appended.insert(id, seq);
            }
            "actuated" => {
                actuated.insert(id);
            }
            _ => {}
        }
    };
    // Let it get well into its stride, then kill it mid-stream.
    while appended.len() < 1_500 {
        let line = lines.next().expect("the child stopped early").unwrap();
        parse(&line, &mut appended, &mut actuated);
    }
    child.kill().unwrap(); // SIGKILL
    // Whatever it printed before dying was acknowledged too.
    for line in lines {
        parse(&line.unwrap(), &mut appended, &mut actuated);
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child was killed: {status:?}");

    let journal = Journal::open(&path, FOREVER).unwrap();
    let mut pending = 0;
    for (&id, &seq) in &appended {
        let stored = journal
            .get(id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("acknowledged record {id} (seq {seq}) was lost"));
        let done = ActuationRecord::Done {
            detail: format!("seq {seq}"),
        };
        let mut expected = with_id(kill_record(seq), id);
        if actuated.contains(&id) {
            expected.actuation = done;
        } else {
            // Killed between append and update: either is possible, and a
            // pending record is the visible trace of an interrupted actuation.
            if stored.actuation == ActuationRecord::Pending {
                pending += 1;
            }
            expected.actuation = stored.actuation.clone();
            assert!(
                matches!(stored.actuation, ActuationRecord::Pending) || stored.actuation == done,
                "{:?}",
                stored.actuation
            );
        }
        assert_eq!(stored, expected, "record {id} is intact");
    }
    assert!(actuated.iter().all(|id| appended.contains_key(id)));
    eprintln!(
        "{} acknowledged records survived kill -9 ({} actuations, {pending} left pending)",
        appended.len(),
        actuated.len()
    );
}
