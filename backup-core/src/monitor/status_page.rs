//! The status page: one self-contained, read-only HTML document.
//!
//! No JavaScript and no external assets: the page is served by a database background worker,
//! often reached through an SSH tunnel or from a machine without internet access, and it must
//! work there, under a strict Content-Security-Policy, and when saved to a file and mailed. It
//! refreshes itself every minute with `<meta http-equiv="refresh">`; the chart is inline SVG
//! whose `<title>`s give each bar's details on hover.
//!
//! Every text from the snapshot goes through [`esc`]: backup errors, check messages, job and
//! repository names can hold anything a user or a failing command wrote.

use std::fmt::Write as _;

use chrono::{DateTime, Duration, Utc};

use super::{human_bytes, human_duration, trim_zeros, BackupSummary, JobSummary, RepositoryUsage, Snapshot, PERIOD_DAYS};
use crate::health::Status;

/// Rows of the "recent backups" table.
const RECENT_BACKUPS: usize = 15;
/// Characters of a backup's error shown in the table; the whole of it is in the cell's tooltip.
const ERROR_CHARS: usize = 90;

const STYLE: &str = r#"
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#1f2328;background:#f6f8fa}
main{max-width:1240px;margin:0 auto;padding:18px 20px 28px}
header{display:flex;align-items:center;justify-content:space-between;gap:16px;margin-bottom:14px}
h1{font-size:22px;margin:0;font-weight:650}
h1 .cluster{font-weight:400;color:#57606a}
h2{font-size:15px;margin:0 0 10px;font-weight:650}
section,.card{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:14px 16px}
section{margin-bottom:16px}
.cards{display:grid;grid-template-columns:repeat(4,1fr);gap:16px;margin-bottom:16px}
.card h3{margin:0;font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:#57606a;font-weight:600}
.card .big{font-size:24px;font-weight:650;margin:2px 0}
.cols{display:grid;grid-template-columns:3fr 2fr;gap:16px;margin-bottom:16px;align-items:start}
.cols section{margin-bottom:0}
.muted{color:#57606a}
.small{font-size:12px}
.warn{color:#9a6700}
table{width:100%;border-collapse:collapse}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #eaeef2;vertical-align:top}
td{font-size:13.5px}
tr:last-child td{border-bottom:none}
th{font-size:11.5px;text-transform:uppercase;letter-spacing:.04em;color:#57606a;font-weight:600;white-space:nowrap}
td.num,th.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
td.nowrap{white-space:nowrap}
tr.row-warning td{background:#fff8e1}
tr.row-critical td{background:#ffebe9}
tr.overall td{font-weight:600}
.mono{font-family:ui-monospace,SFMono-Regular,"SF Mono",Menlo,Consolas,"Liberation Mono",monospace;font-size:12.5px}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;line-height:18px;white-space:nowrap;color:#fff;background:#6e7781}
.badge.large{font-size:17px;line-height:26px;padding:3px 16px;border-radius:16px}
.st-ok{background:#1a7f37}
.st-warning{background:#f0b400;color:#3b2600}
.st-critical{background:#cf222e}
.st-running{background:#0969da}
.st-unknown{background:#6e7781}
.bar{display:inline-block;vertical-align:middle;background:#eaeef2;border-radius:4px;height:10px;width:110px;overflow:hidden}
.bar span{display:block;height:100%;background:#0969da}
.empty{padding:28px;text-align:center;color:#57606a;background:#f6f8fa;border-radius:6px}
svg{display:block;width:100%;height:auto}
footer{color:#57606a;font-size:12px;text-align:center}
"#;

/// The status page of `s`.
pub fn render_status_page(s: &Snapshot) -> String {
    let overall = s.overall_status();
    let overall_text = overall.map_or("unknown", Status::as_str);
    let mut h = String::with_capacity(32 * 1024);
    let _ = writeln!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta http-equiv=\"refresh\" content=\"60\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{} · pg_backup_ext · {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>",
        overall_text,
        esc(&s.cluster)
    );
    let _ = writeln!(
        h,
        "<header><div><h1>pg_backup_ext <span class=\"cluster\">{}</span></h1><div class=\"muted small\">generated {} · refreshes every 60 s</div></div><span class=\"badge large {}\" title=\"overall status\">{}</span></header>",
        esc(&s.cluster),
        utc(s.generated_at),
        status_class(overall_text),
        overall_text
    );
    cards(&mut h, s);
    // The chart first: at a glance (and in a 1280×900 screenshot) it shows whether backups
    // happen, grow and slow down; the checks under it say what is wrong.
    let _ = writeln!(h, "<section><h2>Backup size and duration, last {PERIOD_DAYS} days</h2>\n{}</section>", chart(s));
    checks(&mut h, s);
    h.push_str("<div class=\"cols\">\n");
    jobs(&mut h, s);
    repositories(&mut h, &s.repositories);
    h.push_str("</div>\n");
    recent_backups(&mut h, s);
    h.push_str("<footer>read-only view of backup.health(), the catalog and the scheduler · metrics at /metrics</footer>\n</main>\n</body>\n</html>\n");
    h
}

/// RPO, WAL archiving, backups of the period and alerts, at a glance.
fn cards(h: &mut String, s: &Snapshot) {
    let bound = s.archive_timeout_s.filter(|t| *t > 0);
    let (rpo, rpo_class) = match s.rpo_seconds {
        Some(r) if bound.is_some_and(|b| r > b as f64) => (human_duration(r), " warn"),
        Some(r) => (human_duration(r), ""),
        None => ("unknown".to_string(), " muted"),
    };
    let rpo_note = match (s.rpo_seconds, bound) {
        (None, _) => "no WAL archived yet".to_string(),
        (Some(_), Some(b)) => format!("bound {} (archive_timeout)", human_duration(b as f64)),
        (Some(_), None) => "archive_timeout is off: no bound".to_string(),
    };
    let w = &s.wal;
    let last = w.last_archived_time.map_or("never".to_string(), utc);
    let failed_note = match w.last_failed_time {
        Some(t) => format!(", last {}", utc(t)),
        None => String::new(),
    };
    let completed = s.backups.iter().filter(|b| b.status == "completed").count();
    let failed = s.backups.iter().filter(|b| b.status == "failed").count();
    let running = s.backups.iter().filter(|b| b.status == "running").count();
    let mut backups_note = format!("{failed} failed");
    if running > 0 {
        let _ = write!(backups_note, ", {running} running");
    }
    let _ = writeln!(
        h,
        "<div class=\"cards\">\n\
         <div class=\"card\"><h3>Recovery point</h3><div class=\"big{rpo_class}\">{rpo}</div><div class=\"muted small\">since the last WAL archived · {rpo_note}</div></div>\n\
         <div class=\"card\"><h3>WAL archiving</h3><div class=\"big\">{} archived</div><div class=\"muted small\">{} waiting · {} failed{} · last archived {}</div></div>\n\
         <div class=\"card\"><h3>Backups, last {PERIOD_DAYS} days</h3><div class=\"big\">{completed} completed</div><div class=\"{}small\">{backups_note}</div></div>\n\
         <div class=\"card\"><h3>Alerts firing</h3><div class=\"big{}\">{}</div><div class=\"muted small\">not yet resolved</div></div>\n\
         </div>",
        w.archived_count,
        w.ready_count,
        w.failed_count,
        failed_note,
        last,
        if failed > 0 { "warn " } else { "muted " },
        if s.alerts_firing > 0 { " warn" } else { "" },
        s.alerts_firing
    );
}

fn checks(h: &mut String, s: &Snapshot) {
    h.push_str("<section><h2>Health checks</h2>\n");
    if s.checks.is_empty() {
        h.push_str("<div class=\"empty\">no checks: backup.health() returned nothing</div></section>\n");
        return;
    }
    h.push_str("<table><thead><tr><th>Check</th><th>Status</th><th>Value</th><th>Threshold</th><th>Message</th></tr></thead><tbody>\n");
    for c in &s.checks {
        let mut class = format!("row-{}", c.status.as_str());
        if c.name == "overall" {
            class.push_str(" overall");
        }
        let _ = writeln!(
            h,
            "<tr class=\"{class}\"><td class=\"mono nowrap\">{}</td><td>{}</td><td>{}</td><td class=\"muted\">{}</td><td>{}</td></tr>",
            esc(&c.name),
            badge(c.status.as_str()),
            esc(c.value.as_deref().unwrap_or("")),
            esc(c.threshold.as_deref().unwrap_or("")),
            esc(&c.message)
        );
    }
    h.push_str("</tbody></table></section>\n");
}

/// The scheduler's jobs, the soonest first; disabled ones last.
fn jobs(h: &mut String, s: &Snapshot) {
    h.push_str("<section><h2>Next scheduled runs</h2>\n");
    if s.jobs.is_empty() {
        h.push_str("<div class=\"empty\">no scheduled jobs</div></section>\n");
        return;
    }
    let mut jobs: Vec<&JobSummary> = s.jobs.iter().collect();
    jobs.sort_by_key(|j| (!j.enabled, j.next_run.is_none(), j.next_run));
    h.push_str("<table><thead><tr><th>Job</th><th>Kind</th><th>Next run</th><th>Last run</th></tr></thead><tbody>\n");
    for j in jobs {
        let mut name = esc(&j.name);
        if !j.enabled {
            name.push_str(" <span class=\"badge\">disabled</span>");
        }
        if j.late {
            name.push_str(" <span class=\"badge st-critical\">late</span>");
        }
        let next = match (j.next_run, &j.next_run_local) {
            (Some(t), local) => {
                let rel = if t >= s.generated_at { format!("in {}", human_duration(secs(t - s.generated_at))) } else { format!("{} ago", human_duration(secs(s.generated_at - t))) };
                match local {
                    Some(local) => format!("{}<div class=\"muted small\">{} · {rel}</div>", esc(local), utc(t)),
                    None => format!("{}<div class=\"muted small\">{rel}</div>", utc(t)),
                }
            }
            (None, Some(local)) => esc(local),
            (None, None) => "<span class=\"muted\">not scheduled</span>".to_string(),
        };
        let last = match (&j.last_status, j.last_run) {
            (None, None) => "<span class=\"muted\">never</span>".to_string(),
            (status, run) => format!(
                "{}<div class=\"muted small\">{}</div>",
                status.as_deref().map_or(String::new(), badge),
                run.map_or(String::new(), |t| format!("{} ago", human_duration(secs(s.generated_at - t))))
            ),
        };
        let _ = writeln!(h, "<tr><td>{name}</td><td>{}</td><td>{next}</td><td>{last}</td></tr>", esc(&j.kind));
    }
    h.push_str("</tbody></table></section>\n");
}

fn repositories(h: &mut String, repositories: &[RepositoryUsage]) {
    h.push_str("<section><h2>Repositories</h2>\n");
    if repositories.is_empty() {
        h.push_str("<div class=\"empty\">no repositories</div></section>\n");
        return;
    }
    h.push_str("<table><thead><tr><th>Name</th><th class=\"num\">Stored</th><th class=\"num\">Free</th><th>Filesystem used</th></tr></thead><tbody>\n");
    let bytes = |n: Option<u64>| n.map_or("<span class=\"muted\">–</span>".to_string(), human_bytes);
    for r in repositories {
        let usage = match (r.free_bytes, r.total_bytes) {
            (Some(free), Some(total)) if total > 0 => {
                let used = total.saturating_sub(free) as f64 * 100.0 / total as f64;
                format!("<span class=\"bar\"><span style=\"width:{used:.1}%\"></span></span> <span class=\"small\">{used:.0} % of {}</span>", human_bytes(total))
            }
            _ => "<span class=\"muted small\">no filesystem size</span>".to_string(),
        };
        let _ = writeln!(h, "<tr><td class=\"mono\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"nowrap\">{usage}</td></tr>", esc(&r.name), bytes(r.stored_bytes), bytes(r.free_bytes));
    }
    h.push_str("</tbody></table></section>\n");
}

/// The newest backups, newest first (`Snapshot::backups` is oldest first).
fn recent_backups(h: &mut String, s: &Snapshot) {
    let _ = writeln!(h, "<section><h2>Recent backups</h2>");
    if s.backups.is_empty() {
        let _ = writeln!(h, "<div class=\"empty\">no backups in the last {PERIOD_DAYS} days</div></section>");
        return;
    }
    h.push_str("<table><thead><tr><th>Backup</th><th>Kind</th><th>Status</th><th>Started</th><th class=\"num\">Duration</th><th class=\"num\">Size</th><th class=\"num\">Stored</th><th>Error</th></tr></thead><tbody>\n");
    let bytes = |n: Option<u64>| n.map_or(String::new(), human_bytes);
    for b in s.backups.iter().rev().take(RECENT_BACKUPS) {
        let duration = match (b.duration(), b.start_time) {
            (Some(d), _) => human_duration(d),
            (None, Some(start)) if b.status == "running" => format!("<span class=\"muted\">{} so far</span>", human_duration(secs(s.generated_at - start))),
            _ => String::new(),
        };
        let error = match &b.error {
            Some(e) => format!("<span title=\"{}\">{}</span>", esc(e), esc(&truncate(e, ERROR_CHARS))),
            None => String::new(),
        };
        let _ = writeln!(
            h,
            "<tr><td class=\"mono nowrap\">{}</td><td>{}</td><td>{}</td><td class=\"nowrap\">{}</td><td class=\"num\">{duration}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"small\">{error}</td></tr>",
            esc(&b.id),
            esc(&b.kind),
            badge(&b.status),
            b.start_time.map_or(String::new(), short_utc),
            bytes(b.size_bytes),
            bytes(b.stored_bytes)
        );
    }
    h.push_str("</tbody></table>");
    if s.backups.len() > RECENT_BACKUPS {
        let _ = write!(h, "<div class=\"muted small\">{RECENT_BACKUPS} of {} backups in the last {PERIOD_DAYS} days; backup.backups has them all</div>", s.backups.len());
    }
    h.push_str("</section>\n");
}

// --- the chart -------------------------------------------------------------------------------

const W: f64 = 1200.0;
const H: f64 = 330.0;
const LEFT: f64 = 78.0;
const RIGHT: f64 = 72.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const DURATION_COLOUR: &str = "#e8590c";
const FAILED_COLOUR: &str = "#cf222e";

fn kind_colour(kind: &str) -> &'static str {
    match kind {
        "full" => "#2f6fdf",
        "incremental" => "#2aa198",
        _ => "#8250df",
    }
}

/// Stored bytes as solid bars inside paler bars of the size before compression (left axis), the
/// duration as a line per kind (right axis), failed backups as red marks on the time axis.
fn chart(s: &Snapshot) -> String {
    let completed: Vec<(&BackupSummary, DateTime<Utc>)> = s.backups.iter().filter(|b| b.status == "completed").filter_map(|b| Some((b, b.start_time?))).collect();
    let failed: Vec<(&BackupSummary, DateTime<Utc>)> = s.backups.iter().filter(|b| b.status == "failed").filter_map(|b| Some((b, b.start_time?))).collect();
    if completed.is_empty() {
        let text = if s.backups.is_empty() { format!("no backups in the last {PERIOD_DAYS} days") } else { format!("no completed backups in the last {PERIOD_DAYS} days ({} failed)", failed.len()) };
        return format!("<div class=\"empty\">{text}</div>\n");
    }

    // The period ends now; a clock that differs a little from the catalog's does not push a
    // backup off the chart.
    let times = || completed.iter().chain(&failed).map(|(_, t)| *t);
    let end = times().max().map_or(s.generated_at, |t| t.max(s.generated_at));
    let start = times().min().map_or(end, |t| t.min(end - Duration::days(PERIOD_DAYS)));
    let span = (end - start).num_milliseconds().max(1) as f64;
    let (plot_w, plot_h) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let base = TOP + plot_h;
    let x_of = |t: DateTime<Utc>| LEFT + (t - start).num_milliseconds() as f64 / span * plot_w;

    let max_bytes = completed.iter().map(|(b, _)| b.size_bytes.unwrap_or(0).max(b.stored_bytes.unwrap_or(0))).max().unwrap_or(0).max(1) as f64;
    let (byte_step, byte_top) = nice_scale(max_bytes, 5);
    let y_bytes = |n: u64| base - n as f64 / byte_top * plot_h;

    let max_duration = completed.iter().filter_map(|(b, _)| b.duration()).fold(None, |m: Option<f64>, d| Some(m.map_or(d, |m| m.max(d))));
    let (unit, unit_name) = match max_duration.unwrap_or(0.0) {
        d if d <= 180.0 => (1.0, "s"),
        d if d <= 3.0 * 3600.0 => (60.0, "min"),
        _ => (3600.0, "h"),
    };
    let (dur_step, dur_top) = nice_scale(max_duration.unwrap_or(1.0) / unit, 5);
    let y_duration = |d: f64| base - d.max(0.0) / unit / dur_top * plot_h;

    let mut g = String::new();
    let _ = writeln!(g, "<svg viewBox=\"0 0 {W} {H}\" xmlns=\"http://www.w3.org/2000/svg\" role=\"img\" aria-label=\"backup size and duration over the last {PERIOD_DAYS} days\" font-family=\"system-ui,-apple-system,Segoe UI,Roboto,Arial,sans-serif\" font-size=\"12\">");

    // Grid and the left (bytes) and right (duration) axes' labels, one tick per grid line.
    let ticks = (byte_top / byte_step).round() as usize;
    for i in 0..=ticks {
        let v = byte_step * i as f64;
        let y = base - v / byte_top * plot_h;
        let _ = writeln!(g, "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"{}\"/>", W - RIGHT, if i == 0 { "#8c959f" } else { "#eaeef2" });
        let _ = writeln!(g, "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#57606a\">{}</text>", LEFT - 8.0, y + 4.0, human_bytes(v.round() as u64));
    }
    if max_duration.is_some() {
        let ticks = (dur_top / dur_step).round() as usize;
        for i in 0..=ticks {
            let v = dur_step * i as f64;
            let y = base - v / dur_top * plot_h;
            let _ = writeln!(g, "<text x=\"{}\" y=\"{:.1}\" fill=\"{DURATION_COLOUR}\">{} {unit_name}</text>", W - RIGHT + 8.0, y + 4.0, trim_zeros(format!("{v:.2}")));
        }
        let _ = writeln!(g, "<text transform=\"translate({},{:.1}) rotate(90)\" text-anchor=\"middle\" fill=\"{DURATION_COLOUR}\">duration</text>", W - 12.0, TOP + plot_h / 2.0);
    }
    let _ = writeln!(g, "<text transform=\"translate(14,{:.1}) rotate(-90)\" text-anchor=\"middle\" fill=\"#57606a\">size, stored</text>", TOP + plot_h / 2.0);

    // Days on the time axis, at midnight UTC, as many as fit.
    let days = span / 86_400_000.0;
    let step_days = [1, 2, 3, 5, 7, 14, 30, 60, 91, 182, 365].into_iter().find(|d| days / *d as f64 <= 10.0).unwrap_or(730);
    let mut day = start.date_naive().and_hms_opt(0, 0, 0).map(|d| d.and_utc()).unwrap_or(start);
    if day < start {
        day += Duration::days(1);
    }
    while day <= end {
        let x = x_of(day);
        let _ = writeln!(g, "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{TOP}\" y2=\"{:.1}\" stroke=\"#f0f2f4\"/><line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{base:.1}\" y2=\"{:.1}\" stroke=\"#8c959f\"/>", base, base + 5.0);
        let _ = writeln!(g, "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#57606a\">{}</text>", base + 19.0, day.format("%b %d"));
        day += Duration::days(step_days);
    }
    let _ = writeln!(g, "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#57606a\">backup start (UTC)</text>", LEFT + plot_w / 2.0, H - 6.0);

    // Bars: wide enough to see, narrow enough that a month of daily backups do not touch.
    let bar_w = (plot_w / completed.len() as f64 * 0.5).clamp(3.0, 14.0);
    for (b, t) in &completed {
        let x = x_of(*t) - bar_w / 2.0;
        let colour = kind_colour(&b.kind);
        let tip = esc(&format!(
            "{} ({}), started {}\nsize {}, stored {}, took {}",
            b.id,
            b.kind,
            utc(*t),
            b.size_bytes.map_or("unknown".into(), human_bytes),
            b.stored_bytes.map_or("unknown".into(), human_bytes),
            b.duration().map_or("unknown".into(), human_duration)
        ));
        let _ = write!(g, "<g><title>{tip}</title>");
        if let Some(size) = b.size_bytes {
            let y = y_bytes(size);
            let _ = write!(g, "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bar_w:.1}\" height=\"{:.1}\" fill=\"{colour}\" fill-opacity=\"0.28\"/>", base - y);
        }
        if let Some(stored) = b.stored_bytes {
            let y = y_bytes(stored);
            let _ = write!(g, "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bar_w:.1}\" height=\"{:.1}\" fill=\"{colour}\"/>", base - y);
        }
        g.push_str("</g>\n");
    }

    // One duration line per kind, solid for full, dashed for the rest.
    let mut kinds: Vec<&str> = completed.iter().map(|(b, _)| b.kind.as_str()).collect();
    kinds.sort_by_key(|k| (*k != "full", *k != "incremental", *k));
    kinds.dedup();
    for kind in &kinds {
        let points: Vec<(f64, f64)> = completed.iter().filter(|(b, _)| b.kind == *kind).filter_map(|(b, t)| Some((x_of(*t), y_duration(b.duration()?)))).collect();
        let dash = if *kind == "full" { "" } else { " stroke-dasharray=\"5 4\"" };
        if points.len() > 1 {
            let path: Vec<String> = points.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            let _ = writeln!(g, "<polyline points=\"{}\" fill=\"none\" stroke=\"{DURATION_COLOUR}\" stroke-width=\"2\"{dash}/>", path.join(" "));
        }
        for (x, y) in points {
            let _ = writeln!(g, "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3.5\" fill=\"{}\" stroke=\"{DURATION_COLOUR}\" stroke-width=\"2\"/>", if *kind == "full" { DURATION_COLOUR } else { "#fff" });
        }
    }

    for (b, t) in &failed {
        let x = x_of(*t);
        let tip = esc(&format!("{} ({}) failed, started {}: {}", b.id, b.kind, utc(*t), truncate(b.error.as_deref().unwrap_or("no error recorded"), 300)));
        let _ = writeln!(g, "<path d=\"M{:.1},{:.1} l5,-9 l5,9 z\" fill=\"{FAILED_COLOUR}\"><title>{tip}</title></path>", x - 5.0, base - 1.0);
    }

    // The legend, above the plot.
    let mut items: Vec<(String, String)> = kinds.iter().map(|k| (format!("<rect width=\"12\" height=\"12\" y=\"-10\" fill=\"{}\"/>", kind_colour(k)), esc(k))).collect();
    items.push(("<rect width=\"12\" height=\"12\" y=\"-10\" fill=\"#57606a\" fill-opacity=\"0.28\"/><rect width=\"12\" height=\"6\" y=\"-4\" fill=\"#57606a\"/>".into(), "stored (solid) of size (pale)".into()));
    for kind in &kinds {
        let (dash, fill) = if *kind == "full" { ("", DURATION_COLOUR) } else { (" stroke-dasharray=\"5 4\"", "#fff") };
        items.push((format!("<line x1=\"0\" x2=\"22\" y1=\"-4\" y2=\"-4\" stroke=\"{DURATION_COLOUR}\" stroke-width=\"2\"{dash}/><circle cx=\"11\" cy=\"-4\" r=\"3.5\" fill=\"{fill}\" stroke=\"{DURATION_COLOUR}\" stroke-width=\"2\"/>"), format!("duration, {}", esc(kind))));
    }
    if !failed.is_empty() {
        items.push((format!("<path d=\"M0,0 l5,-9 l5,9 z\" fill=\"{FAILED_COLOUR}\"/>"), "failed".into()));
    }
    let mut x = LEFT;
    for (swatch, label) in items {
        let swatch_w = if swatch.starts_with("<line") { 22.0 } else { 12.0 };
        let _ = writeln!(g, "<g transform=\"translate({x:.1},18)\">{swatch}<text x=\"{:.1}\" y=\"0\" fill=\"#1f2328\">{label}</text></g>", swatch_w + 6.0);
        // A rough width of the label: the legend needs no exact text metrics to stay apart.
        x += swatch_w + 6.0 + label.chars().count() as f64 * 6.6 + 22.0;
    }

    g.push_str("</svg>\n");
    g
}

/// A step of 1, 2 or 5 times a power of ten giving at most `ticks` steps up to at least `max`,
/// and the top of the axis (a multiple of the step).
fn nice_scale(max: f64, ticks: usize) -> (f64, f64) {
    // Nothing to scale (every backup took 0 s): an axis up to 1.
    let max = if max.is_finite() && max > 1e-9 { max } else { 1.0 };
    let raw = max / ticks as f64;
    let magnitude = 10f64.powi(raw.log10().floor() as i32);
    let step = [1.0, 2.0, 2.5, 5.0, 10.0].into_iter().map(|m| m * magnitude).find(|s| *s >= raw * (1.0 - 1e-9)).unwrap_or(10.0 * magnitude);
    // Tolerate the last bit of a division that should have been whole.
    let top = ((max / step - 1e-9).ceil() * step).max(step);
    (step, top)
}

// --- text helpers ----------------------------------------------------------------------------

/// HTML-escape text for element content and quoted attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A status as a coloured badge.
fn badge(status: &str) -> String {
    format!("<span class=\"badge {}\">{}</span>", status_class(status), esc(status))
}

/// Health, backup and job-run statuses on one scale of colours.
fn status_class(status: &str) -> &'static str {
    match status {
        "ok" | "completed" | "succeeded" | "success" => "st-ok",
        "warning" | "skipped" | "interrupted" | "missed" => "st-warning",
        "critical" | "failed" | "error" => "st-critical",
        "running" | "started" => "st-running",
        _ => "st-unknown",
    }
}

fn truncate(s: &str, chars: usize) -> String {
    match s.char_indices().nth(chars) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

fn utc(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn short_utc(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M").to_string()
}

fn secs(d: Duration) -> f64 {
    d.num_milliseconds() as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::super::tests::{at, fixture};
    use super::*;
    use crate::health::Check;

    /// The fixture with a month of nightly full and six-hourly incremental backups, and an error
    /// message that tries to run a script.
    pub(crate) fn example() -> Snapshot {
        let mut s = fixture();
        let now = s.generated_at;
        let mut backups = Vec::new();
        for day in (1..=29).rev() {
            let midnight = (now - Duration::days(day)).date_naive().and_hms_opt(2, 0, 0).unwrap().and_utc();
            let growth = (30 - day) as u64;
            let full_s = 1150.0 + (day % 7) as f64 * 35.0 + if day == 9 { 900.0 } else { 0.0 };
            backups.push(BackupSummary {
                id: format!("backup_{}", midnight.format("%Y%m%d_%H%M%S")),
                kind: "full".into(),
                status: "completed".into(),
                start_time: Some(midnight),
                stop_time: Some(midnight + Duration::seconds(full_s as i64)),
                duration_s: Some(full_s),
                size_bytes: Some(9_000_000_000 + growth * 40_000_000),
                stored_bytes: Some(2_700_000_000 + growth * 12_000_000),
                error: None,
            });
            for hour in [8, 14, 20] {
                let t = midnight + Duration::hours(hour - 2);
                let failed = day == 4 && hour == 14;
                backups.push(BackupSummary {
                    id: format!("backup_{}", t.format("%Y%m%d_%H%M%S")),
                    kind: "incremental".into(),
                    status: if failed { "failed" } else { "completed" }.into(),
                    start_time: Some(t),
                    stop_time: Some(t + Duration::seconds(95 + hour * 3)),
                    duration_s: Some(95.0 + hour as f64 * 3.0),
                    size_bytes: if failed { None } else { Some(420_000_000 + hour as u64 * 9_000_000) },
                    stored_bytes: if failed { None } else { Some(110_000_000 + hour as u64 * 3_000_000) },
                    error: failed.then(|| "could not write data/0003.bundle: <script>alert('x')</script> & \"no space left on device\"".into()),
                });
            }
        }
        backups.push(BackupSummary { id: "backup_20261207_110000".into(), kind: "incremental".into(), status: "running".into(), start_time: Some(at("2026-12-07T11:57:00Z")), ..Default::default() });
        s.backups = backups;
        s.checks = vec![
            Check { name: "overall".into(), status: Status::Warning, value: Some("9 check(s)".into()), threshold: None, message: "warning: missed_runs".into() },
            Check { name: "archiving".into(), status: Status::Ok, value: Some("0000000100000003000000A1 at 2026-12-07T11:59:17+00:00".into()), threshold: None, message: "archive_command succeeds".into() },
            Check { name: "archive_backlog".into(), status: Status::Ok, value: Some("0 files waiting".into()), threshold: Some("oldest waiting < 300 s (warning), < 30 min (critical)".into()), message: "no WAL file waits for archive_command".into() },
            Check { name: "full_backup_age".into(), status: Status::Ok, value: Some("backup_20261206_020000, 10.0 h old".into()), threshold: Some("younger than 25.0 h (warning), 49.0 h (critical): job nightly full's longest interval plus 1.0 h".into()), message: "the newest full backup is recent enough for job nightly full".into() },
            Check { name: "last_backup".into(), status: Status::Ok, value: Some("backup_20261207_080000 completed".into()), threshold: Some("completed".into()), message: "the newest backup did not fail".into() },
            Check { name: "missed_runs".into(), status: Status::Warning, value: Some("1".into()), threshold: Some("none in the last 24 h".into()), message: "1 scheduled run(s) in the last 24 h did not run; the newest: job hourly <incremental> due at 2026-12-07T05:00:00+00:00 (skipped: missed: server down); see backup.job_runs".into() },
            Check { name: "scheduler".into(), status: Status::Ok, value: Some("running".into()), threshold: Some("running".into()), message: "the scheduler worker runs".into() },
            Check { name: "repository:local".into(), status: Status::Ok, value: Some("answers".into()), threshold: Some("answers".into()), message: "repository local answers".into() },
            Check { name: "repository_space:local".into(), status: Status::Critical, value: Some("8.0 % free".into()), threshold: Some("> 20 % (warning), > 10 % (critical)".into()), message: "repository local has 8.0 % free (80000000000 of 1000000000000 bytes): expire old backups (retention) or give it room before backups and archiving fail".into() },
        ];
        s.repositories[0].free_bytes = Some(80_000_000_000);
        s.jobs.push(JobSummary { name: "weekly verify".into(), kind: "verify".into(), enabled: false, next_run: Some(at("2026-12-13T03:00:00Z")), next_run_local: Some("2026-12-13 10:00 +07 (Asia/Ho_Chi_Minh)".into()), last_status: Some("failed".into()), last_run: Some(at("2026-12-06T03:00:00Z")), late: false });
        s.jobs[1].last_status = Some("skipped".into());
        s.jobs[1].last_run = Some(at("2026-12-07T05:00:00Z"));
        s
    }

    #[test]
    fn the_page_shows_checks_backups_jobs_and_a_chart() {
        let s = example();
        let page = render_status_page(&s);
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.contains("<meta http-equiv=\"refresh\" content=\"60\">"));
        assert!(page.contains("system 7312345678901234567"));
        assert!(page.contains("<span class=\"badge large st-warning\" title=\"overall status\">warning</span>"), "the overall badge");
        for c in &s.checks {
            assert!(page.contains(&format!(">{}</td>", esc(&c.name))), "check {}", c.name);
        }
        // The newest 15 backups, newest first; the older ones only on the chart.
        let newest = &s.backups[s.backups.len() - 1].id;
        let fifteenth = &s.backups[s.backups.len() - 15].id;
        let sixteenth = &s.backups[s.backups.len() - 16].id;
        assert!(page.find(&format!(">{newest}<")).unwrap() < page.find(&format!(">{fifteenth}<")).unwrap());
        assert!(!page.contains(&format!(">{sixteenth}<")));
        assert!(page.contains("<svg"));
        assert!(page.contains("duration, incremental"));
        assert!(page.contains("nightly full") && page.contains("2026-12-08 02:00 +07 (Asia/Ho_Chi_Minh)"));
        assert!(page.contains(">late</span>"));
        assert!(page.contains(">43 s<") && page.contains("bound 1 min (archive_timeout)"));
        assert!(!page.contains("<script") && !page.contains("src=\"http"), "self-contained, no JavaScript");
    }

    #[test]
    fn every_text_from_the_snapshot_is_escaped() {
        let mut s = example();
        let evil = "<script>alert(\"x\")</script> & 'quoted'";
        s.cluster = evil.into();
        s.checks[1].message = evil.into();
        s.checks[1].name = evil.into();
        s.jobs[0].name = evil.into();
        s.jobs[0].next_run_local = Some(evil.into());
        s.repositories[0].name = evil.into();
        let last = s.backups.len() - 1;
        s.backups[last].id = evil.into();
        s.backups[last].error = Some(evil.into());
        s.backups[last - 1].kind = evil.into();
        let page = render_status_page(&s);
        assert!(!page.contains("<script"), "raw <script> in the page");
        assert!(!page.contains("'quoted'") && !page.contains("alert(\"x\")"));
        assert!(page.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;quoted&#39;"));
        // The fixture's own error message, in the table's tooltip and the chart's.
        assert!(example().backups.iter().any(|b| b.error.as_deref().is_some_and(|e| e.contains("<script>"))));
        assert!(!render_status_page(&example()).contains("<script"));
    }

    #[test]
    fn an_empty_snapshot_renders_a_page_that_says_so() {
        let page = render_status_page(&Snapshot::default());
        assert!(page.contains("no backups in the last 30 days"));
        assert!(!page.contains("<svg"));
        assert!(page.contains(">unknown</span>"), "no checks is not ok");
        assert!(page.contains("no WAL archived yet"));
        assert!(page.contains("no scheduled jobs") && page.contains("no repositories"));
        assert!(page.ends_with("</html>\n"));
        let only_failed = Snapshot { backups: vec![BackupSummary { id: "b".into(), kind: "full".into(), status: "failed".into(), start_time: Some(at("2026-12-07T02:00:00Z")), ..Default::default() }], ..Default::default() };
        assert!(render_status_page(&only_failed).contains("no completed backups in the last 30 days (1 failed)"));
    }

    #[test]
    fn long_errors_are_truncated_on_a_character_boundary() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("ééééé", 3), "ééé…");
        let mut s = fixture();
        s.backups[3].error = Some(format!("{}TAIL", "x".repeat(200)));
        let page = render_status_page(&s);
        assert!(page.contains(&format!(">{}…</span>", "x".repeat(ERROR_CHARS))));
        assert!(page.contains("TAIL\">"), "the whole error in the tooltip");
    }

    #[test]
    fn axis_scales_are_round() {
        let cases = [(3_050_000_000.0, (1e9, 4e9)), (10_100_000_000.0, (2.5e9, 12.5e9)), (21.0, (5.0, 25.0)), (1.0, (0.2, 1.0)), (0.4, (0.1, 0.4)), (0.0, (0.2, 1.0)), (f64::NAN, (0.2, 1.0))];
        for (max, (step, top)) in cases {
            let (s, t) = nice_scale(max, 5);
            assert!((s - step).abs() <= step * 1e-9 && (t - top).abs() <= top * 1e-9, "{max}: {s} {t}");
        }
    }

    #[test]
    fn the_example_page_renders_to_a_file() {
        // For a look in a browser: STATUS_PAGE_EXAMPLE_DIR=/tmp cargo test -p backup-core --lib
        // monitor, then open /tmp/status_page_example.html.
        let pages = [("status_page_example.html", render_status_page(&example())), ("status_page_empty_example.html", render_status_page(&Snapshot::default()))];
        for (_, page) in &pages {
            assert_eq!(page.matches("<section").count(), page.matches("</section>").count());
            assert_eq!(page.matches("<table").count(), page.matches("</table>").count());
        }
        if let Some(dir) = std::env::var_os("STATUS_PAGE_EXAMPLE_DIR") {
            for (name, page) in pages {
                std::fs::write(std::path::Path::new(&dir).join(name), page).unwrap();
            }
        }
    }
}
