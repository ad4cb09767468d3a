//! The machine a run happened on, recorded beside every result: CPUs usable by this process,
//! CPU model, kernel and memory, read from /proc (Linux). Anything unreadable is `unknown`.

use std::fs;

/// What a result is only meaningful with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// CPUs this process may run on (as `nproc` prints).
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub memory_kib: Option<u64>,
}

impl Machine {
    pub fn probe() -> Machine {
        let read = |path: &str| fs::read_to_string(path).unwrap_or_default();
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: cpu_model(&read("/proc/cpuinfo")).unwrap_or_else(|| "unknown".to_string()),
            kernel: Some(read("/proc/sys/kernel/osrelease").trim().to_string())
                .filter(|k| !k.is_empty())
                .unwrap_or_else(|| "unknown".to_string()),
            memory_kib: mem_total_kib(&read("/proc/meminfo")),
        }
    }
}

/// The first `model name` of /proc/cpuinfo.
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_string())
    })
}

/// `MemTotal` of /proc/meminfo, in KiB.
pub fn mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix("MemTotal:")?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuinfo_and_meminfo_fields() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nprocessor\t: 1\nmodel name\t: AMD EPYC 7B13\n";
        assert_eq!(cpu_model(cpuinfo), Some("AMD EPYC 7B13".to_string()));
        assert_eq!(cpu_model("processor : 0\n"), None);
        let meminfo = "MemTotal:       24596416 kB\nMemFree:         1234 kB\n";
        assert_eq!(mem_total_kib(meminfo), Some(24_596_416));
        assert_eq!(mem_total_kib(""), None);
    }

    #[test]
    fn probe_sees_at_least_one_cpu() {
        let machine = Machine::probe();
        assert!(machine.nproc >= 1);
        assert!(!machine.kernel.is_empty());
    }
}
