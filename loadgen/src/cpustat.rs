//! CPU time per thread of this process, from `/proc/self/task/*/stat`.
//!
//! The report must say whether loadgen or the broker ran out of CPU first
//! ("never the bottleneck itself"). In embedded mode the broker's shard
//! threads live in this process, so one snapshot before and one after the
//! run give each thread's busy share — loadgen executors, broker shards and
//! helpers alike. A remote broker's threads are not visible; the report then
//! shows loadgen's side only.

use std::collections::BTreeMap;

use serde::Serialize;

/// Linux reports thread times in USER_HZ ticks, 100 per second on every
/// mainstream architecture (reading `sysconf(_SC_CLK_TCK)` would need
/// `unsafe`, which the workspace denies).
const TICKS_PER_S: f64 = 100.0;

/// CPU ticks used so far, by thread id, with each thread's name.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    threads: BTreeMap<u32, (String, u64)>,
}

/// One thread's share of a CPU over an interval.
#[derive(Debug, Clone, Serialize)]
pub struct ThreadCpu {
    pub tid: u32,
    pub name: String,
    /// 100 = one core fully busy.
    pub busy_percent: f64,
}

impl Snapshot {
    /// Reads every thread's times; threads that vanish meanwhile are skipped.
    pub fn take() -> Snapshot {
        Snapshot::read("/proc/self/task")
    }

    /// The threads of another process (a broker that `scaling` started).
    pub fn of_process(pid: u32) -> Snapshot {
        Snapshot::read(&format!("/proc/{pid}/task"))
    }

    fn read(tasks: &str) -> Snapshot {
        let mut threads = BTreeMap::new();
        let Ok(tasks) = std::fs::read_dir(tasks) else {
            return Snapshot { threads };
        };
        for task in tasks.flatten() {
            let Some(tid) = task.file_name().to_str().and_then(|name| name.parse().ok()) else {
                continue;
            };
            if let Some(entry) =
                std::fs::read_to_string(task.path().join("stat")).ok().and_then(|stat| parse_stat(&stat))
            {
                threads.insert(tid, entry);
            }
        }
        Snapshot { threads }
    }

    /// The CPU seconds each thread used between `earlier` and `self`, with
    /// its name, in thread-id order.
    pub fn seconds_since(&self, earlier: &Snapshot) -> Vec<(String, f64)> {
        self.threads
            .iter()
            .map(|(tid, (name, ticks))| {
                let before = earlier.threads.get(tid).map_or(0, |(_, ticks)| *ticks);
                (name.clone(), ticks.saturating_sub(before) as f64 / TICKS_PER_S)
            })
            .collect()
    }

    /// Each thread's busy share between `earlier` and `self`, busiest first;
    /// threads that used less than 1% are left out.
    pub fn busy_since(&self, earlier: &Snapshot, seconds: f64) -> Vec<ThreadCpu> {
        let mut busy: Vec<ThreadCpu> = self
            .threads
            .iter()
            .map(|(tid, (name, ticks))| {
                let before = earlier.threads.get(tid).map_or(0, |(_, ticks)| *ticks);
                let busy_percent = (ticks.saturating_sub(before)) as f64 / TICKS_PER_S / seconds.max(1e-9) * 100.0;
                ThreadCpu { tid: *tid, name: name.clone(), busy_percent }
            })
            .filter(|thread| thread.busy_percent >= 1.0)
            .collect();
        // Busy threads may share a name (io_uring workers are all called
        // "iou-wrk-<pid>"): tell those apart by thread id.
        let names: Vec<String> = busy.iter().map(|thread| thread.name.clone()).collect();
        for thread in &mut busy {
            if names.iter().filter(|name| **name == thread.name).count() > 1 {
                thread.name = format!("{}[{}]", thread.name, thread.tid);
            }
        }
        busy.sort_by(|a, b| b.busy_percent.total_cmp(&a.busy_percent));
        busy
    }
}

/// Function-call interrupts taken so far per CPU (`/proc/interrupts`; `CAL`
/// on x86). The kernel sends one to each CPU that runs a thread of a
/// process when that process calls `membarrier(PRIVATE_EXPEDITED)`, as
/// glommio does each time an executor goes to sleep, so per CPU they show
/// how often the other executors interrupt it.
pub fn function_call_interrupts() -> Option<BTreeMap<usize, u64>> {
    parse_function_call_interrupts(&std::fs::read_to_string("/proc/interrupts").ok()?)
}

fn parse_function_call_interrupts(text: &str) -> Option<BTreeMap<usize, u64>> {
    let mut lines = text.lines();
    let cpus: Vec<usize> =
        lines.next()?.split_whitespace().map(|cpu| cpu.strip_prefix("CPU")?.parse().ok()).collect::<Option<_>>()?;
    let line = lines.find(|line| line.trim_end().ends_with("Function call interrupts"))?;
    let counts = line.split_whitespace().skip(1).map_while(|count| count.parse::<u64>().ok());
    let per_cpu: BTreeMap<usize, u64> = cpus.iter().copied().zip(counts).collect();
    (per_cpu.len() == cpus.len()).then_some(per_cpu)
}

/// The name and utime + stime of one `stat` line. The name is in
/// parentheses and may itself contain spaces or parentheses, so the fields
/// are counted from the last `)`.
fn parse_stat(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_owned();
    // After the name come fields 3 (state), 4, ...; utime is 14, stime 15.
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_names_parse() {
        let line = "4242 (shard (0) x) S 1 1 1 0 -1 4194560 100 0 0 0 250 30 0 0 20 0 3 0 100 0 0";
        assert_eq!(parse_stat(line), Some(("shard (0) x".to_string(), 280)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn function_call_interrupts_are_read_per_cpu() {
        let x86 = "           CPU0       CPU2       \n  0:         29          0   IO-APIC   2-edge      timer\n\
                   CAL:   13443129   11390099   Function call interrupts\nTLB:   5   6   TLB shootdowns\n";
        assert_eq!(parse_function_call_interrupts(x86), Some(BTreeMap::from([(0, 13443129), (2, 11390099)])));
        let arm = "  CPU0 CPU1\nIPI0: 10 20 Rescheduling interrupts\nIPI1: 30 40 Function call interrupts\n";
        assert_eq!(parse_function_call_interrupts(arm), Some(BTreeMap::from([(0, 30), (1, 40)])));
        assert_eq!(parse_function_call_interrupts("CPU0 CPU1\nCAL: 1 Function call interrupts\n"), None);
        assert_eq!(parse_function_call_interrupts("no header\n"), None);
        // This machine's, where the line exists (every x86 and arm64 kernel).
        if let Some(counts) = function_call_interrupts() {
            assert_eq!(
                counts.len(),
                std::fs::read_to_string("/proc/interrupts").unwrap().lines().next().unwrap().split_whitespace().count()
            );
        }
    }

    #[test]
    fn this_thread_is_visible() {
        let snapshot = Snapshot::take();
        assert!(!snapshot.threads.is_empty());
        let later =
            Snapshot { threads: snapshot.threads.iter().map(|(tid, (n, t))| (*tid, (n.clone(), t + 50))).collect() };
        let busy = later.busy_since(&snapshot, 1.0);
        assert!(busy.iter().all(|thread| (thread.busy_percent - 50.0).abs() < 1e-9));
        let seconds = later.seconds_since(&snapshot);
        assert_eq!(seconds.len(), snapshot.threads.len());
        assert!(seconds.iter().all(|(_, seconds)| *seconds == 0.5));
        // This process seen from outside is the same set of threads.
        let outside = Snapshot::of_process(std::process::id());
        assert!(snapshot.threads.keys().any(|tid| outside.threads.contains_key(tid)));
    }
}
