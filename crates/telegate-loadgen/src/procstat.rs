//! CPU time and resident memory of a process, from /proc.

use procfs::process::Process;

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ProcSample {
    /// User plus system CPU time, seconds.
    pub cpu_s: f64,
    pub rss_bytes: u64,
}

impl ProcSample {
    pub fn read(pid: i32) -> Option<Self> {
        let p = Process::new(pid).ok()?;
        let stat = p.stat().ok()?;
        let ticks = procfs::ticks_per_second() as f64;
        Some(Self {
            cpu_s: (stat.utime + stat.stime) as f64 / ticks,
            rss_bytes: stat.rss * procfs::page_size(),
        })
    }
}
