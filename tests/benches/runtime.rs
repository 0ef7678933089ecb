//! The runtime benchmark: one evaluation with a 1,000-point window, Wasm vs
//! the same logic native; the per-evaluation instantiate cost; module load
//! (compile) time. Goals: Wasm ≤ 3× native, ≥ 100,000 evaluations/s on one
//! core.
//!
//! `cargo bench -p scalewise-tests --bench runtime`
//!
//! The HPA formula runs in the `bench-hpa` fixture (Wasm) and in
//! [`native_hpa`] (the same logic, native). `target-tracking` is measured
//! too; until the real policy lands it is a placeholder that does no math.
//! The `lowering` group shows where most of the time goes: handing the
//! window to the guest as a list of records.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use scalewise::config::RuntimeLimits;
use scalewise::policy::{Context, Decision};
use scalewise::runtime::{PolicyModule, Runtime};
use scalewise_tests::{artifacts, context};
use serde::Deserialize;
use serde_json::json;

const POINTS: usize = 1_000;

/// The HPA replica formula over the window mean, natively: what
/// `policies/fixtures/bench-hpa` computes.
fn native_hpa(ctx: &Context) -> Result<Decision, String> {
    #[derive(Deserialize)]
    struct Params {
        metric: String,
        target: f64,
        #[serde(default = "tolerance")]
        tolerance: f64,
    }
    fn tolerance() -> f64 {
        0.1
    }
    let p = Params::deserialize(&ctx.parameters).map_err(|e| format!("invalid parameters: {e}"))?;
    let metric = ctx
        .metrics
        .iter()
        .find(|m| m.name == p.metric)
        .ok_or_else(|| format!("no metric named {:?}", p.metric))?;
    if metric.points.is_empty() {
        return Ok(hold("no samples".into()));
    }
    let mean = metric.points.iter().map(|pt| pt.value).sum::<f64>() / metric.points.len() as f64;
    let ratio = mean / p.target;
    if (ratio - 1.0).abs() <= p.tolerance {
        return Ok(hold(format!("{mean:.2} within tolerance of {}", p.target)));
    }
    let desired = (f64::from(ctx.target.current) * ratio).ceil() as u32;
    Ok(Decision {
        desired: Some(desired),
        reason: format!(
            "{mean:.2} vs target {}: {} -> {desired}",
            p.target, ctx.target.current
        ),
        state: None,
    })
}

fn hold(reason: String) -> Decision {
    Decision {
        desired: None,
        reason,
        state: None,
    }
}

fn load(rt: &Runtime, path: &str) -> PolicyModule {
    rt.load_file(Path::new(path)).expect("module loads")
}

fn bench_ctx() -> Context {
    context(
        1_700_000_000_000,
        json!({"metric": "cpu", "target": 50.0}),
        POINTS,
    )
}

fn evaluate(c: &mut Criterion, rt: &Runtime, fuel_rt: &Runtime) {
    let ctx = bench_ctx();
    let hpa = load(rt, artifacts::BENCH_HPA);
    let hpa_fuel = load(fuel_rt, artifacts::BENCH_HPA);
    let tt = load(rt, artifacts::TARGET_TRACKING);
    assert_eq!(
        hpa.evaluate(&ctx).unwrap(),
        native_hpa(&ctx).unwrap(),
        "the Wasm and native logic agree"
    );

    let mut g = c.benchmark_group("evaluate-1000-points");
    g.bench_function("native", |b| b.iter(|| native_hpa(black_box(&ctx))));
    g.bench_function("wasm", |b| b.iter(|| hpa.evaluate(black_box(&ctx))));
    g.bench_function("wasm-fuel", |b| {
        b.iter(|| hpa_fuel.evaluate(black_box(&ctx)))
    });
    g.bench_function("wasm-target-tracking", |b| {
        b.iter(|| tt.evaluate(black_box(&ctx)))
    });
    g.finish();

    let mut g = c.benchmark_group("instantiate");
    g.bench_function(BenchmarkId::new("fresh-store", "bench-hpa"), |b| {
        b.iter(|| hpa.instantiate_check())
    });
    g.finish();
}

fn load_time(c: &mut Criterion, rt: &Runtime) {
    let bytes = std::fs::read(artifacts::BENCH_HPA).unwrap();
    let mut g = c.benchmark_group("load");
    g.sample_size(10);
    g.bench_function("compile+describe/bench-hpa", |b| {
        b.iter(|| rt.load("bench-hpa", black_box(&bytes)).unwrap())
    });
    g.finish();
}

/// What passing 1,000 samples to a guest costs by WIT shape: a list of
/// records (the contract's `list<point>`; wasmtime lowers it field by field)
/// against two lists of primitives (lowered with one copy each). A guest
/// that does nothing, so only the lowering is measured.
struct Lowering {
    store: wasmtime::Store<()>,
    records: wasmtime::component::TypedFunc<(Vec<(i64, f64)>,), ()>,
    columns: wasmtime::component::TypedFunc<(Vec<i64>, Vec<f64>), ()>,
}

impl Lowering {
    fn new(rt: &Runtime) -> Self {
        let wat = r#"(component
          (core module $m
            (memory (export "mem") 4)
            ;; Every allocation at the same place: the data is never read.
            (func (export "realloc") (param i32 i32 i32 i32) (result i32) i32.const 1024)
            (func (export "records") (param i32 i32))
            (func (export "columns") (param i32 i32 i32 i32)))
          (core instance $i (instantiate $m))
          (func (export "records") (param "points" (list (tuple s64 f64)))
            (canon lift (core func $i "records")
              (memory (core memory $i "mem")) (realloc (core func $i "realloc"))))
          (func (export "columns") (param "timestamps" (list s64)) (param "values" (list f64))
            (canon lift (core func $i "columns")
              (memory (core memory $i "mem")) (realloc (core func $i "realloc")))))"#;
        let engine = rt.engine();
        let component =
            wasmtime::component::Component::new(engine, wat::parse_str(wat).unwrap()).unwrap();
        let linker = wasmtime::component::Linker::<()>::new(engine);
        let mut store = wasmtime::Store::new(engine, ());
        store.set_epoch_deadline(u64::MAX / 2);
        let instance = linker.instantiate(&mut store, &component).unwrap();
        let records = instance.get_typed_func(&mut store, "records").unwrap();
        let columns = instance.get_typed_func(&mut store, "columns").unwrap();
        Lowering {
            store,
            records,
            columns,
        }
    }
}

fn lowering(c: &mut Criterion, rt: &Runtime) {
    let mut l = Lowering::new(rt);
    let points: Vec<(i64, f64)> = (0..POINTS).map(|i| (i as i64 * 1000, i as f64)).collect();
    let (ts, vs): (Vec<i64>, Vec<f64>) = points.iter().copied().unzip();
    let mut g = c.benchmark_group("lowering-1000-points");
    g.bench_function("list-of-records", |b| {
        b.iter(|| l.records.call(&mut l.store, (points.clone(),)).unwrap())
    });
    g.bench_function("two-primitive-lists", |b| {
        b.iter(|| {
            l.columns
                .call(&mut l.store, (ts.clone(), vs.clone()))
                .unwrap()
        })
    });
    g.finish();
}

/// Median time per call over `rounds` rounds of `calls` calls.
fn median_per_call(rounds: usize, calls: u32, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..calls {
                f();
            }
            start.elapsed() / calls
        })
        .collect();
    times.sort();
    times[rounds / 2]
}

/// The figures the issue asks for, in one place.
fn summary(rt: &Runtime, fuel_rt: &Runtime) {
    let ctx = bench_ctx();
    let hpa = load(rt, artifacts::BENCH_HPA);
    let hpa_fuel = load(fuel_rt, artifacts::BENCH_HPA);
    let (rounds, calls) = (31, 2_000);
    let native = median_per_call(rounds, calls, || {
        black_box(native_hpa(black_box(&ctx)).unwrap());
    });
    let wasm = median_per_call(rounds, calls, || {
        black_box(hpa.evaluate(black_box(&ctx)).unwrap());
    });
    let fuel = median_per_call(rounds, calls, || {
        black_box(hpa_fuel.evaluate(black_box(&ctx)).unwrap());
    });
    let small_ctx = context(
        1_700_000_000_000,
        json!({"metric": "cpu", "target": 50.0}),
        1,
    );
    let small = median_per_call(rounds, calls, || {
        black_box(hpa.evaluate(black_box(&small_ctx)).unwrap());
    });
    let inst = median_per_call(rounds, calls, || hpa.instantiate_check().unwrap());
    let mut l = Lowering::new(rt);
    let points: Vec<(i64, f64)> = (0..POINTS).map(|i| (i as i64, i as f64)).collect();
    let (ts, vs): (Vec<i64>, Vec<f64>) = points.iter().copied().unzip();
    let records = median_per_call(rounds, calls, || {
        l.records.call(&mut l.store, (points.clone(),)).unwrap()
    });
    let columns = median_per_call(rounds, calls, || {
        l.columns
            .call(&mut l.store, (ts.clone(), vs.clone()))
            .unwrap()
    });
    let bytes = std::fs::read(artifacts::BENCH_HPA).unwrap();
    let compile = median_per_call(5, 1, || {
        black_box(rt.load("bench-hpa", &bytes).unwrap());
    });
    let ratio = wasm.as_secs_f64() / native.as_secs_f64();
    let per_sec = 1.0 / wasm.as_secs_f64();
    println!();
    println!(
        "summary: one evaluation, {POINTS}-point window, one thread (median of {rounds} rounds of {calls} calls)"
    );
    println!("  native HPA logic          {native:>10.2?}");
    println!(
        "  Wasm (bench-hpa)          {wasm:>10.2?}   {ratio:.2}x native (goal <= 3x)   {per_sec:.0} evaluations/s (goal >= 100000)"
    );
    println!(
        "  Wasm with fuel            {fuel:>10.2?}   {:.2}x native",
        fuel.as_secs_f64() / native.as_secs_f64()
    );
    println!("  Wasm, 1-point window      {small:>10.2?}   (fixed cost of one evaluation)");
    println!("  instantiate (fresh Store) {inst:>10.2?}");
    println!("  lowering {POINTS} points as list<record>       {records:>10.2?}");
    println!("  lowering {POINTS} points as two primitive lists {columns:>10.2?}");
    println!(
        "  load (compile+describe)   {compile:>10.2?}   ({} KB module)",
        bytes.len() / 1024
    );
    println!("  pooling allocator         {}", rt.is_pooling());
}

fn main() {
    let rt = Runtime::new(RuntimeLimits::default()).unwrap();
    let fuel_rt = Runtime::new(RuntimeLimits {
        fuel: 100_000_000,
        ..RuntimeLimits::default()
    })
    .unwrap();
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    evaluate(&mut c, &rt, &fuel_rt);
    lowering(&mut c, &rt);
    load_time(&mut c, &rt);
    c.final_summary();
    summary(&rt, &fuel_rt);
}
