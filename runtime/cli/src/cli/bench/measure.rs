//! How the workloads are measured: batches of calls timed together,
//! per-phase samples of a pair and the median over phases of their
//! ratio, and what a run has measured so far ([`Measured`]).

use std::time::Instant;

use shmrt::SandboxError;

use super::BenchPlan;
use super::report::Workload;

/// The workloads measured so far, in the order the report lists them, and
/// the ratios measured pairwise ([`BenchReport::paired`]).
///
/// [`BenchReport::paired`]: super::report::BenchReport::paired
#[derive(Debug, Default)]
pub(super) struct Measured {
    pub(super) workloads: Vec<Workload>,
    pub(super) paired: Vec<(&'static str, f64)>,
}

impl Measured {
    /// Records the two latency workloads of a pair (`base` first) and,
    /// under `key`, the median over phases of the within-phase ratio
    /// `other` / `base` (guest over native round trips; copy-call over slot
    /// payloads; a callback guest over copy-call).
    pub(super) fn latency_pair(
        &mut self,
        key: Option<&'static str>,
        (base_name, base): (&'static str, Vec<Vec<f64>>),
        (other_name, other): (&'static str, Vec<Vec<f64>>),
    ) {
        if let Some(key) = key {
            self.paired.push((key, median_ratio(&other, &base, median)));
        }
        self.workloads
            .push(Workload::latency(base_name, base.concat()));
        self.workloads
            .push(Workload::latency(other_name, other.concat()));
    }

    /// Records one latency workload from its samples.
    pub(super) fn latency(&mut self, name: &'static str, samples: Vec<f64>) {
        self.workloads.push(Workload::latency(name, samples));
    }
}

/// The median of `samples` (the upper one of an even count); NaN for
/// none. The one median of the bench and its CLI workloads.
pub(super) fn median(samples: &[f64]) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The median over phases of `summary(a[i]) / summary(b[i])`.
pub(super) fn median_ratio(a: &[Vec<f64>], b: &[Vec<f64>], summary: impl Fn(&[f64]) -> f64) -> f64 {
    let r: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(a, b)| summary(a) / summary(b))
        .collect();
    median(&r)
}

/// Times `plan.batches` batches of `plan.batch` calls of `op`, after a
/// warm-up; returns ns per call for each batch.
pub(super) fn batches(plan: BenchPlan, mut op: impl FnMut()) -> Vec<f64> {
    for _ in 0..plan.batch * 20 {
        op();
    }
    (0..plan.batches)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..plan.batch {
                op();
            }
            t.elapsed().as_nanos() as f64 / plan.batch as f64
        })
        .collect()
}

/// Times one payload hand-off per sample; `op` returns the sum the guest
/// computed, checked against `want`. Stops at the first failure.
pub(super) fn payload_samples(
    plan: BenchPlan,
    sandbox: &str,
    want: u64,
    mut op: impl FnMut() -> Result<u64, SandboxError>,
) -> Result<Vec<f64>, SandboxError> {
    let mut failure = None;
    let per_batch = BenchPlan {
        batches: plan.payloads,
        batch: 1,
        ..plan
    };
    let r = batches(per_batch, || {
        if failure.is_some() {
            return;
        }
        match op() {
            Ok(sum) if sum == want => {}
            Ok(sum) => {
                failure = Some(SandboxError::Trap {
                    sandbox: sandbox.into(),
                    message: format!("checksum {sum:x}, want {want:x}"),
                })
            }
            Err(e) => failure = Some(e),
        }
    });
    match failure {
        Some(e) => Err(e),
        None => Ok(r),
    }
}

/// Native and guest samples, one vector per phase.
pub(super) type PerPhase = (Vec<Vec<f64>>, Vec<Vec<f64>>);
