//! What `shmrt bench` reports: each workload's median (and 99th
//! percentile), the ratios between workloads with their targets
//! ([`RATIOS`]), as a table or as the `--json` document.

use serde::{Serialize, Serializer};

/// One measured workload.
#[derive(Clone, Debug)]
pub(super) struct Workload {
    pub(super) name: &'static str,
    pub(super) unit: &'static str,
    pub(super) median: f64,
    pub(super) p99: Option<f64>,
}

impl Workload {
    pub(super) fn latency(name: &'static str, mut per_op_ns: Vec<f64>) -> Self {
        per_op_ns.sort_by(f64::total_cmp);
        let at = |q: f64| per_op_ns[((per_op_ns.len() - 1) as f64 * q).round() as usize];
        Workload {
            name,
            unit: "ns",
            median: at(0.5),
            p99: Some(at(0.99)),
        }
    }
}

/// What `shmrt bench` reports.
#[derive(Debug)]
pub(super) struct BenchReport {
    pub(super) machine: String,
    pub(super) workloads: Vec<Workload>,
    /// Ratios measured pairwise: for a pair of workloads run in
    /// alternating phases, the median over phases of the ratio within each
    /// phase (keyed by ratio key). A ratio missing here divides the two
    /// workloads' medians.
    pub(super) paired: Vec<(&'static str, f64)>,
    /// What the reader needs to know of a run (input sizes, a quick run).
    pub(super) notes: Vec<String>,
    /// Targets this run can not judge by construction (a quick run spawns
    /// fewer sandboxes than the density target counts), with the reason.
    pub(super) not_measured: Vec<(&'static str, String)>,
}

/// One ratio of the report: `numerator`'s median over `denominator`'s
/// (or the pair's phase-by-phase median, [`BenchReport::paired`]), and
/// its target.
#[derive(Clone, Copy, Debug)]
struct Ratio {
    key: &'static str,
    numerator: &'static str,
    /// A workload's name, or "one" for a count.
    denominator: &'static str,
    /// Met when the ratio is at least the target (else at most).
    at_least: bool,
    target: f64,
}

impl Ratio {
    const fn at_least(key: &'static str, num: &'static str, den: &'static str, t: f64) -> Self {
        Ratio::new(key, num, den, true, t)
    }

    const fn at_most(key: &'static str, num: &'static str, den: &'static str, t: f64) -> Self {
        Ratio::new(key, num, den, false, t)
    }

    const fn new(
        key: &'static str,
        numerator: &'static str,
        denominator: &'static str,
        at_least: bool,
        target: f64,
    ) -> Self {
        Ratio {
            key,
            numerator,
            denominator,
            at_least,
            target,
        }
    }

    /// `>= 2.5` or `<= 1.2`.
    fn target_text(&self) -> String {
        format!(
            "{} {}",
            if self.at_least { ">=" } else { "<=" },
            self.target
        )
    }

    fn met_by(&self, value: f64) -> bool {
        if self.at_least {
            value >= self.target
        } else {
            value <= self.target
        }
    }
}

/// A ratio as one run measured it.
#[derive(Clone, Debug)]
struct MeasuredRatio {
    key: &'static str,
    /// `None`: not measured, for the reason [`BenchReport::not_measured`]
    /// gives.
    value: Option<f64>,
    /// `>= 2.5` or `<= 1.2`.
    target: String,
    /// `None`: this run can not judge it ([`BenchReport::not_measured`]).
    met: Option<bool>,
}

/// Ratio keys, their definitions and targets.
const RATIOS: [Ratio; 22] = [
    Ratio::at_most("guest_rtt_vs_native", "rtt_guest_spin", "rtt_native", 1.2),
    Ratio::at_least(
        "guest_stream_vs_native",
        "stream_guest",
        "stream_native",
        0.8,
    ),
    Ratio::at_least("slot_1mib_vs_copy_call", "copy_call_1mib", "slot_1mib", 2.0),
    Ratio::at_least(
        "slot_stream_1mib_vs_copy_call",
        "copy_call_1mib",
        "slot_stream_1mib",
        2.5,
    ),
    Ratio::at_most(
        "parked_rtt_vs_native_futex",
        "rtt_guest_parked",
        "rtt_native_futex",
        1.5,
    ),
    Ratio::at_most(
        "callback_rtt_vs_copy_call",
        "rtt_guest_callback",
        "copy_call_64b",
        1.5,
    ),
    // Host threads each driving sandboxes of their own do not slow each
    // other down (they share the runtime's engine and epoch ticker).
    Ratio::at_most(
        "callback_rtt_parallel_vs_alone",
        "rtt_guest_callback_parallel",
        "rtt_guest_callback",
        1.25,
    ),
    Ratio::at_most(
        "callback_batch_vs_copy_call",
        "callback_batch_64b",
        "copy_call_64b",
        1.0,
    ),
    Ratio::at_most(
        "fiber_rtt_vs_thread_parked",
        "rtt_guest_fiber",
        "rtt_guest_parked",
        0.1,
    ),
    Ratio::at_least(
        "slot_4kib_callback_vs_copy_call",
        "copy_call_4kib",
        "slot_4kib_callback",
        1.0,
    ),
    Ratio::at_least(
        "slot_64kib_callback_vs_copy_call",
        "copy_call_64kib",
        "slot_64kib_callback",
        1.5,
    ),
    Ratio::at_least(
        "slot_1mib_callback_vs_copy_call",
        "copy_call_1mib",
        "slot_1mib_callback",
        2.5,
    ),
    // The C guest (examples/c-bench-guest) over the Rust one, paired: the
    // protocol is the same code, reached through the SDK's C ABI.
    Ratio::at_most(
        "c_guest_rtt_vs_rust",
        "rtt_guest_callback_c",
        "rtt_guest_callback",
        1.1,
    ),
    Ratio::at_most(
        "c_guest_slot_1mib_vs_rust",
        "slot_1mib_callback_c",
        "slot_1mib_callback",
        1.1,
    ),
    Ratio::at_most(
        "call_64b_vs_callback_rtt",
        "call_64b",
        "rtt_guest_callback",
        1.15,
    ),
    Ratio::at_most(
        "host_call_64b_vs_copy",
        "host_call_64b",
        "copy_host_call_64b",
        1.5,
    ),
    Ratio::at_least(
        "host_call_1mib_vs_copy",
        "copy_host_call_1mib",
        "host_call_1mib",
        2.0,
    ),
    Ratio::at_most(
        "spawn_vs_plain_wasmtime",
        "spawn_sandbox",
        "spawn_plain_wasmtime",
        3.0,
    ),
    // Not ratios: absolute targets, against a workload of value 1.
    Ratio::at_least("density_live", "density_live", "one", 10_000.0),
    Ratio::at_most("idle_rss_per_sandbox", "idle_rss_per_sandbox", "one", 100.0),
    Ratio::at_most("cli_lines_vs_cat", "cli_lines", "cat_lines", 15.0),
    Ratio::at_most("cli_raw_vs_cat", "cli_raw", "cat_raw", 2.0),
];

impl BenchReport {
    fn median(&self, name: &str) -> Option<f64> {
        if name == "one" {
            return Some(1.0);
        }
        self.workloads
            .iter()
            .find(|w| w.name == name)
            .map(|w| w.median)
    }

    /// Why this run does not judge the target of ratio `key`, if it does not.
    fn why_not_measured(&self, key: &str) -> Option<&str> {
        self.not_measured
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, why)| why.as_str())
    }

    /// Each ratio with its target and whether it was met (`None`: not
    /// measured by this run, see [`Self::not_measured`]). A ratio whose
    /// workloads are missing is left out, unless `not_measured` says why.
    fn ratios(&self) -> Vec<MeasuredRatio> {
        RATIOS
            .iter()
            .filter_map(|r| {
                let value = match self.paired.iter().find(|(k, _)| *k == r.key) {
                    Some(&(_, v)) => Some(v),
                    None => self
                        .median(r.numerator)
                        .zip(self.median(r.denominator))
                        .map(|(n, d)| n / d),
                };
                let why_not = self.why_not_measured(r.key);
                if value.is_none() && why_not.is_none() {
                    return None;
                }
                let met = match (why_not, value) {
                    (None, Some(value)) => Some(r.met_by(value)),
                    _ => None,
                };
                Some(MeasuredRatio {
                    key: r.key,
                    value,
                    target: r.target_text(),
                    met,
                })
            })
            .collect()
    }

    /// The `--json` document: medians and 99th percentiles to 0.1,
    /// ratios to 0.001.
    pub(super) fn json(&self) -> JsonReport<'_> {
        let ratios = self.ratios();
        JsonReport {
            machine: &self.machine,
            workloads: self
                .workloads
                .iter()
                .map(|w| JsonWorkload {
                    name: w.name,
                    unit: w.unit,
                    median: (w.median * 10.0).round() / 10.0,
                    p99: w.p99.map(|p| (p * 10.0).round() / 10.0),
                })
                .collect(),
            ratios: InOrder(
                ratios
                    .iter()
                    .map(|r| (r.key, r.value.map(|v| (v * 1000.0).round() / 1000.0)))
                    .collect(),
            ),
            targets: InOrder(
                ratios
                    .into_iter()
                    .map(|r| {
                        let not_measured = self.why_not_measured(r.key).map(str::to_owned);
                        (
                            r.key,
                            JsonTarget {
                                target: r.target,
                                met: r.met,
                                not_measured,
                            },
                        )
                    })
                    .collect(),
            ),
            notes: &self.notes,
        }
    }

    /// The table.
    pub(super) fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = format!(
            "machine: {}\n\n{:<22} {:>8} {:>14} {:>14}\n",
            self.machine, "workload", "unit", "median", "p99"
        );
        for w in &self.workloads {
            let p99 = w.p99.map_or("-".to_string(), |p| format!("{p:.0}"));
            let _ = writeln!(
                s,
                "{:<22} {:>8} {:>14.0} {:>14}",
                w.name, w.unit, w.median, p99
            );
        }
        for note in &self.notes {
            let _ = writeln!(s, "note: {note}");
        }
        let ratios = self.ratios();
        let width = ratios.iter().map(|r| r.key.len()).max().unwrap_or(0).max(5);
        let _ = writeln!(
            s,
            "\n{:<width$} {:>8} {:>10}  met",
            "ratio", "value", "target"
        );
        for r in ratios {
            let met = match r.met {
                Some(true) => "yes".to_string(),
                Some(false) => "NO".to_string(),
                None => format!(
                    "not measured: {}",
                    self.why_not_measured(r.key).unwrap_or_default()
                ),
            };
            let v = r.value.map_or("-".to_string(), |v| format!("{v:.3}"));
            let (k, t) = (r.key, &r.target);
            let _ = writeln!(s, "{k:<width$} {v:>8} {t:>10}  {met}");
        }
        s
    }
}

/// `shmrt bench --json`: `{"machine", "workloads", "ratios", "targets",
/// "notes"}`, ratios and targets keyed by ratio key in [`RATIOS`] order.
#[derive(Debug, Serialize)]
pub(super) struct JsonReport<'a> {
    machine: &'a str,
    workloads: Vec<JsonWorkload>,
    /// `null` for a ratio this run did not measure (its target's
    /// `not_measured` says why).
    ratios: InOrder<Option<f64>>,
    targets: InOrder<JsonTarget>,
    notes: &'a [String],
}

#[derive(Debug, Serialize)]
struct JsonWorkload {
    name: &'static str,
    unit: &'static str,
    median: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    p99: Option<f64>,
}

#[derive(Debug, Serialize)]
struct JsonTarget {
    /// `>= 2.5` or `<= 1.2`.
    target: String,
    /// `null` when the run can not judge it (`not_measured` says why).
    met: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    not_measured: Option<String>,
}

/// A JSON object whose keys keep this order.
#[derive(Debug)]
struct InOrder<V>(Vec<(&'static str, V)>);

impl<V: Serialize> Serialize for InOrder<V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

/// The CPU's model, the CPUs this process may use, the OS and the
/// architecture.
pub(super) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "{cpu}, {cores} cores, {} {}",
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `--json` document's keys, their order and the rounding: a
    /// workload without a p99 has no `p99` key; a ratio whose workloads
    /// are missing is left out, unless the run says why (then it is null).
    #[test]
    fn the_json_report_keeps_its_shape() {
        let report = BenchReport {
            machine: "m".into(),
            workloads: vec![
                Workload {
                    name: "rtt_native",
                    unit: "ns",
                    median: 100.04,
                    p99: Some(150.06),
                },
                Workload {
                    name: "rtt_guest_spin",
                    unit: "ns",
                    median: 110.0,
                    p99: None,
                },
            ],
            paired: vec![("slot_1mib_vs_copy_call", 2.7184)],
            notes: vec!["n".into()],
            not_measured: vec![
                ("slot_1mib_vs_copy_call", "why".into()),
                ("c_guest_rtt_vs_rust", "no zig".into()),
            ],
        };
        let json = serde_json::to_string(&report.json()).unwrap();
        assert_eq!(
            json,
            concat!(
                r#"{"machine":"m","workloads":["#,
                r#"{"name":"rtt_native","unit":"ns","median":100.0,"p99":150.1},"#,
                r#"{"name":"rtt_guest_spin","unit":"ns","median":110.0}],"#,
                r#""ratios":{"guest_rtt_vs_native":1.1,"slot_1mib_vs_copy_call":2.718,"#,
                r#""c_guest_rtt_vs_rust":null},"#,
                r#""targets":{"guest_rtt_vs_native":{"target":"<= 1.2","met":true},"#,
                r#""slot_1mib_vs_copy_call":{"target":">= 2","met":null,"not_measured":"why"},"#,
                r#""c_guest_rtt_vs_rust":{"target":"<= 1.1","met":null,"not_measured":"no zig"}},"#,
                r#""notes":["n"]}"#
            )
        );
    }
}
