//! `e2e-rss-probe REPORT PROGRAM [ARGS...]`: run PROGRAM as a child, pass its stdio
//! and exit status through, and write `<exit code or -1> <signal or 0> <peak RSS KiB>`
//! to REPORT.
//!
//! Why a separate process: Linux charges a child's `ru_maxrss` with the resident
//! size of the process image it replaced at `exec`, i.e. with the RSS of whatever
//! forked it. Forked from the test process (which holds whole WAL segments in
//! memory, for several tests at once) the figure says nothing about the program;
//! forked from this tiny probe it is the program's own peak plus a megabyte or two.

use std::process::{exit, Command};

fn main() {
    let mut args = std::env::args_os().skip(1);
    let (Some(report), Some(program)) = (args.next(), args.next()) else {
        eprintln!("usage: e2e-rss-probe REPORT PROGRAM [ARGS...]");
        exit(2);
    };
    let child = Command::new(&program).args(args).spawn().unwrap_or_else(|e| {
        eprintln!("e2e-rss-probe: cannot start {}: {e}", program.to_string_lossy());
        exit(127);
    });
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data; pid is our own child, reaped exactly once.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            eprintln!("e2e-rss-probe: wait4: {}", std::io::Error::last_os_error());
            exit(127);
        }
    }
    let (code, signal) =
        if libc::WIFEXITED(status) { (libc::WEXITSTATUS(status), 0) } else { (-1, libc::WTERMSIG(status)) };
    if let Err(e) = std::fs::write(&report, format!("{code} {signal} {}\n", usage.ru_maxrss)) {
        eprintln!("e2e-rss-probe: cannot write report: {e}");
        exit(127);
    }
    exit(if signal != 0 { 128 + signal } else { code });
}
