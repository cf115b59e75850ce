//! Reading /proc: CPU ticks of a process, its resident memory, our open-files limit.
//!
//! utime+stime (fields 14 and 15 of /proc/PID/stat) count in clock ticks; their length
//! comes from `getconf CLK_TCK` (sysconf without unsafe code), 100 on every Linux we run.

use std::sync::OnceLock;

/// Resident memory of a process, KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// VmRSS: resident now.
    pub rss_kib: u64,
    /// VmHWM: the most ever resident since the process started.
    pub hwm_kib: u64,
}

/// Clock ticks per second for the tick counts below.
pub fn ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse::<f64>().ok())
            .filter(|ticks| *ticks > 0.0)
            .unwrap_or(100.0)
    })
}

/// utime+stime of `pid` (None: this process), in clock ticks.
pub fn cpu_ticks(pid: Option<u32>) -> Option<u64> {
    parse_stat_ticks(&std::fs::read_to_string(proc_path(pid, "stat")).ok()?)
}

/// CPU time every process on the machine spent, in clock ticks, from /proc/stat: user,
/// nice, system, irq, softirq and steal of all cores (guest time is inside user).
pub fn machine_busy_ticks() -> Option<u64> {
    parse_machine_busy(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// Resident memory of `pid`.
pub fn memory(pid: u32) -> Option<Memory> {
    parse_status(&std::fs::read_to_string(proc_path(Some(pid), "status")).ok()?)
}

/// This process's soft limit on open files.
pub fn open_files_limit() -> Option<u64> {
    parse_limits(&std::fs::read_to_string("/proc/self/limits").ok()?)
}

fn proc_path(pid: Option<u32>, file: &str) -> String {
    match pid {
        Some(pid) => format!("/proc/{pid}/{file}"),
        None => format!("/proc/self/{file}"),
    }
}

fn parse_stat_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn parse_machine_busy(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|n| n.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal ...
    let at = |i: usize| fields.get(i).copied().unwrap_or(0);
    Some(at(0) + at(1) + at(2) + at(5) + at(6) + at(7))
}

fn parse_status(status: &str) -> Option<Memory> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    Some(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

fn parse_limits(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    match soft {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    }
}

/// CPUs of the whole machine: the `cpuN` lines of /proc/stat (affinity does not apply).
pub fn machine_cpus() -> Option<usize> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let count = stat
        .lines()
        .filter(|line| {
            line.starts_with("cpu") && line.as_bytes().get(3).is_some_and(u8::is_ascii_digit)
        })
        .count();
    (count > 0).then_some(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_ticks_skip_odd_command_names() {
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 1146 0 0 0 37 12 0 0 20 0";
        assert_eq!(parse_stat_ticks(stat), Some(49));
    }

    #[test]
    fn status_memory() {
        let status = "Name:\therald\nVmHWM:\t   51200 kB\nVmRSS:\t   40960 kB\nThreads:\t3\n";
        let want = Memory {
            rss_kib: 40960,
            hwm_kib: 51200,
        };
        assert_eq!(parse_status(status), Some(want));
    }

    #[test]
    fn machine_busy_leaves_out_idle_and_iowait() {
        let stat = "cpu  100 5 20 9000 40 1 2 3 0 0\ncpu0 50 0 10 4500 20 0 1 1 0 0\n";
        assert_eq!(parse_machine_busy(stat), Some(131));
    }

    #[test]
    fn open_files_soft_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            19000                20000                files\n";
        assert_eq!(parse_limits(limits), Some(19000));
    }

    #[test]
    fn reads_this_process() {
        assert!(cpu_ticks(None).is_some());
        assert!(memory(std::process::id()).is_some_and(|m| m.rss_kib > 0));
        assert!(ticks_per_second() > 0.0);
    }
}
