//! What a container's spec makes of a plugin run: the `shmrt run` command
//! line, its flags from the `SHMRT_*` variables of the container's
//! environment, the guest's arguments and environment from the rest.
//!
//! The variables (see docs/run-on-kubernetes.md); each is one flag of
//! `shmrt run`, with the same values:
//!
//! | variable              | flag                 |
//! |-----------------------|----------------------|
//! | `SHMRT_FRAMING`       | `--framing`          |
//! | `SHMRT_CHUNK`         | `--chunk`            |
//! | `SHMRT_EXEC`          | `--exec`             |
//! | `SHMRT_RESTART`       | `--restart`          |
//! | `SHMRT_MAX_RESTARTS`  | `--max-restarts`     |
//! | `SHMRT_TIMEOUT`       | `--timeout`          |
//! | `SHMRT_FUEL`          | `--fuel`             |
//! | `SHMRT_MAX_MEMORY`    | `--max-memory`       |
//! | `SHMRT_CALL`          | `--call`             |
//! | `SHMRT_ATTACH`        | `--attach`           |
//! | `SHMRT_PEER`          | `--peer`             |
//! | `SHMRT_SEGMENT`       | `--segment`          |
//! | `SHMRT_REPLACE_STALE` | `--replace-stale` (`1` or `true`) |
//!
//! `SHMRT_RUN_FLAGS` adds any other flags of `shmrt run`, split at
//! whitespace (`--ring-capacity 1MiB -v`; `-v` logs more of shmrt on the
//! container's stderr). Every other variable is the guest's. Without `SHMRT_MAX_MEMORY`, the container's memory limit (its
//! cgroup's) is the guest's memory budget.

use std::ffi::OsString;

/// A variable that names a flag of `shmrt run` (`None`: a switch whose
/// value says whether it is given).
const FLAG_VARS: &[(&str, &str)] = &[
    ("SHMRT_FRAMING", "--framing"),
    ("SHMRT_CHUNK", "--chunk"),
    ("SHMRT_EXEC", "--exec"),
    ("SHMRT_RESTART", "--restart"),
    ("SHMRT_MAX_RESTARTS", "--max-restarts"),
    ("SHMRT_TIMEOUT", "--timeout"),
    ("SHMRT_FUEL", "--fuel"),
    ("SHMRT_MAX_MEMORY", "--max-memory"),
    ("SHMRT_CALL", "--call"),
    ("SHMRT_ATTACH", "--attach"),
    ("SHMRT_PEER", "--peer"),
    ("SHMRT_SEGMENT", "--segment"),
];

/// The switches among the variables.
const SWITCH_VARS: &[(&str, &str)] = &[("SHMRT_REPLACE_STALE", "--replace-stale")];

/// A plugin run: the `shmrt` command line after the program's name.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    pub args: Vec<OsString>,
}

impl Plan {
    /// The run of `plugin` (the module's path in the container) for a
    /// container whose process has `args` (the first is the entry point,
    /// the module's name) and `envs` (KEY=VALUE); `memory_limit` is the
    /// container's, if it has one.
    pub fn new(
        plugin: &str,
        args: &[String],
        envs: &[String],
        memory_limit: Option<u64>,
    ) -> anyhow::Result<Plan> {
        let mut run: Vec<OsString> = vec!["run".into()];
        let mut guest_env = Vec::new();
        let mut max_memory_given = false;
        for entry in envs {
            let Some((key, value)) = entry.split_once('=') else {
                anyhow::bail!(
                    "the container's environment has `{entry}`, not KEY=VALUE: give each \
                     variable a value"
                );
            };
            if let Some((_, flag)) = FLAG_VARS.iter().find(|(k, _)| *k == key) {
                if value.is_empty() {
                    anyhow::bail!(
                        "{key} is empty: give it a value of `shmrt run {flag}` or leave it out"
                    );
                }
                max_memory_given |= key == "SHMRT_MAX_MEMORY";
                run.push((*flag).into());
                run.push(value.into());
            } else if let Some((_, flag)) = SWITCH_VARS.iter().find(|(k, _)| *k == key) {
                match value {
                    "1" | "true" => run.push((*flag).into()),
                    "" | "0" | "false" => {}
                    other => anyhow::bail!(
                        "{key}={other}: expected 1 or true (to give `shmrt run {flag}`), 0 or false"
                    ),
                }
            } else if key == "SHMRT_RUN_FLAGS" {
                run.extend(value.split_whitespace().map(OsString::from));
            } else {
                guest_env.push(format!("{key}={value}"));
            }
        }
        if !max_memory_given && let Some(limit) = memory_limit {
            run.push("--max-memory".into());
            run.push(limit.to_string().into());
        }
        for e in guest_env {
            run.push("--env".into());
            run.push(e.into());
        }
        run.push(plugin.into());
        // The guest's arguments after its name (shmrt names it with the
        // module's path).
        if args.len() > 1 {
            run.push("--".into());
            run.extend(args[1..].iter().map(OsString::from));
        }
        Ok(Plan { args: run })
    }
}

/// The memory limit of this process's cgroup (v2 `memory.max`, or v1
/// `memory.limit_in_bytes`), as the container's root filesystem shows it;
/// `None` when there is none or it cannot be read.
pub fn cgroup_memory_limit() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mut candidates = Vec::new();
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers.is_empty() {
            candidates.push(format!("/sys/fs/cgroup{path}/memory.max"));
            candidates.push("/sys/fs/cgroup/memory.max".into());
        } else if controllers.split(',').any(|c| c == "memory") {
            candidates.push(format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"));
            candidates.push("/sys/fs/cgroup/memory/memory.limit_in_bytes".into());
        }
    }
    candidates
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| parse_limit(&text))
}

/// A cgroup memory limit file's value: `max` (v2) and the v1 "no limit"
/// (the largest page-aligned i64) are none.
fn parse_limit(text: &str) -> Option<u64> {
    let n: u64 = text.trim().parse().ok()?;
    (n < 1 << 62).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[OsString]) -> Vec<&str> {
        args.iter().map(|a| a.to_str().unwrap()).collect()
    }

    #[test]
    fn variables_become_flags_and_the_rest_goes_to_the_guest() {
        let plan = Plan::new(
            "/proc/self/fd/3",
            &["upper.wasm".into(), "a".into(), "--b".into()],
            &[
                "PATH=/bin".into(),
                "SHMRT_FRAMING=raw".into(),
                "SHMRT_EXEC=thread".into(),
                "SHMRT_REPLACE_STALE=1".into(),
                "SHMRT_RUN_FLAGS=--ring-capacity 1MiB  -v".into(),
                "GREETING=a=b".into(),
            ],
            Some(64 << 20),
        )
        .unwrap();
        assert_eq!(
            strings(&plan.args),
            [
                "run",
                "--framing",
                "raw",
                "--exec",
                "thread",
                "--replace-stale",
                "--ring-capacity",
                "1MiB",
                "-v",
                "--max-memory",
                "67108864",
                "--env",
                "PATH=/bin",
                "--env",
                "GREETING=a=b",
                "/proc/self/fd/3",
                "--",
                "a",
                "--b",
            ]
        );
    }

    #[test]
    fn an_explicit_memory_budget_wins_over_the_cgroup_limit() {
        let plan = Plan::new(
            "m.wasm",
            &["m.wasm".into()],
            &["SHMRT_MAX_MEMORY=8MiB".into()],
            Some(1 << 30),
        )
        .unwrap();
        assert_eq!(
            strings(&plan.args),
            ["run", "--max-memory", "8MiB", "m.wasm"]
        );
    }

    #[test]
    fn attach_names_the_segment() {
        let plan = Plan::new(
            "m.wasm",
            &[],
            &["SHMRT_ATTACH=/shared/seg".into(), "SHMRT_PEER=1".into()],
            None,
        )
        .unwrap();
        assert_eq!(
            strings(&plan.args),
            ["run", "--attach", "/shared/seg", "--peer", "1", "m.wasm"]
        );
    }

    #[test]
    fn bad_variables_are_named() {
        let e = Plan::new("m", &[], &["SHMRT_FRAMING=".into()], None).unwrap_err();
        assert!(e.to_string().contains("SHMRT_FRAMING is empty"), "{e}");
        let e = Plan::new("m", &[], &["SHMRT_REPLACE_STALE=yes".into()], None).unwrap_err();
        assert!(e.to_string().contains("SHMRT_REPLACE_STALE=yes"), "{e}");
        let e = Plan::new("m", &[], &["NOVALUE".into()], None).unwrap_err();
        assert!(e.to_string().contains("`NOVALUE`"), "{e}");
    }

    #[test]
    fn cgroup_limits_without_a_limit_are_none() {
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("9223372036854771712\n"), None);
        assert_eq!(parse_limit("67108864\n"), Some(64 << 20));
    }
}
