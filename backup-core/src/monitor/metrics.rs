//! The Prometheus text exposition format (0.0.4) and the `pg_backup_*` metrics.
//!
//! The writer's shape keeps a scrape valid by construction: a [`Family`] borrows the
//! [`Exposition`] mutably, so its samples cannot be interleaved with another family's; its
//! `# HELP` and `# TYPE` lines are written with its first sample, so a family with nothing to
//! report (no completed backup yet, RPO unknown) is left out rather than reported as 0; a name
//! used twice, or an invalid metric or label name, is a programming error caught by a debug
//! assertion (every name here is a literal, exercised by the tests). A repeated label set within
//! a family is dropped, as Prometheus would reject the duplicate series.
//!
//! Naming follows Prometheus' conventions: base units (`_seconds`, `_bytes`), points in time as
//! `_timestamp_seconds` since the epoch, `_total` only on counters.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;

use super::{epoch_seconds, Snapshot};
use crate::health::Status;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricType {
    /// Only ever goes up (or resets to 0 when its source restarts).
    Counter,
    Gauge,
}

impl MetricType {
    fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
        }
    }
}

/// A sample's value, formatted as Prometheus parses it: integers exactly and without exponent,
/// floats in their shortest round-trip form, `NaN`, `+Inf`, `-Inf`.
#[derive(Clone, Debug, PartialEq)]
pub struct Value(String);

impl From<u64> for Value {
    fn from(v: u64) -> Value {
        Value(v.to_string())
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value(v.to_string())
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value(u8::from(v).to_string())
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Value {
        // Rust's `Display` for f64 never uses an exponent and prints whole numbers without a
        // fraction (`3`, `1796613000.5`, `0.0000001`), all of which Go's ParseFloat reads.
        Value(if v.is_nan() {
            "NaN".into()
        } else if v == f64::INFINITY {
            "+Inf".into()
        } else if v == f64::NEG_INFINITY {
            "-Inf".into()
        } else {
            v.to_string()
        })
    }
}

/// A text exposition being written.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
    families: HashSet<String>,
}

impl Exposition {
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// Start the family `name`; each name once per exposition.
    pub fn family<'a>(&'a mut self, name: &'a str, help: &'a str, kind: MetricType) -> Family<'a> {
        debug_assert!(valid_name(name), "invalid metric name {name:?}");
        let first = self.families.insert(name.to_string());
        debug_assert!(first, "metric family {name} written twice");
        Family { exposition: self, name, help, kind, started: false, label_sets: HashSet::new() }
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// One metric family's samples, written together.
#[derive(Debug)]
pub struct Family<'a> {
    exposition: &'a mut Exposition,
    name: &'a str,
    help: &'a str,
    kind: MetricType,
    started: bool,
    label_sets: HashSet<String>,
}

impl Family<'_> {
    /// One sample; its label values may be any text.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: impl Into<Value>) -> &mut Self {
        let mut rendered = String::new();
        if !labels.is_empty() {
            rendered.push('{');
            for (i, (name, value)) in labels.iter().enumerate() {
                debug_assert!(valid_name(name) && !name.contains(':') && !name.starts_with("__"), "invalid label name {name:?} in {}", self.name);
                if i > 0 {
                    rendered.push(',');
                }
                let _ = write!(rendered, "{name}=\"{}\"", escape_label_value(value));
            }
            rendered.push('}');
        }
        if !self.label_sets.insert(rendered.clone()) {
            return self;
        }
        let out = &mut self.exposition.out;
        if !self.started {
            self.started = true;
            let _ = writeln!(out, "# HELP {} {}", self.name, escape_help(self.help));
            let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind.as_str());
        }
        let _ = writeln!(out, "{}{rendered} {}", self.name, value.into().0);
        self
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`; label names are the same without `:` (checked by the caller).
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':') && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn status_value(s: Status) -> u64 {
    match s {
        Status::Ok => 0,
        Status::Warning => 1,
        Status::Critical => 2,
    }
}

/// The `pg_backup_*` metrics of `s`.
pub fn render_metrics(s: &Snapshot) -> String {
    use MetricType::{Counter, Gauge};
    let mut e = Exposition::new();

    e.family("pg_backup_up", "1 when the extension answered this scrape", Gauge).sample(&[], 1u64);

    // Two jobs of one kind give two checks of one name: the worse one stands for both.
    let mut worst: BTreeMap<&str, Status> = BTreeMap::new();
    let mut order = Vec::new();
    for c in &s.checks {
        match worst.get_mut(c.name.as_str()) {
            Some(w) => *w = (*w).max(c.status),
            None => {
                worst.insert(&c.name, c.status);
                order.push(c.name.as_str());
            }
        }
    }
    let mut f = e.family("pg_backup_health_status", "Status of each backup.health() check, overall included: 0 ok, 1 warning, 2 critical", Gauge);
    for name in order {
        f.sample(&[("check", name)], status_value(worst[name]));
    }

    let newest = s.newest_completed_by_kind();
    let mut f = e.family("pg_backup_last_success_timestamp_seconds", "When the newest completed backup of each kind finished", Gauge);
    for (kind, b) in &newest {
        if let Some(t) = b.stop_time {
            f.sample(&[("kind", kind)], epoch_seconds(t));
        }
    }
    let mut f = e.family("pg_backup_last_duration_seconds", "How long the newest completed backup of each kind took", Gauge);
    for (kind, b) in &newest {
        if let Some(d) = b.duration() {
            f.sample(&[("kind", kind)], d);
        }
    }
    let mut f = e.family("pg_backup_last_size_bytes", "Bytes of the cluster's files in the newest completed backup of each kind, before compression", Gauge);
    for (kind, b) in &newest {
        if let Some(n) = b.size_bytes {
            f.sample(&[("kind", kind)], n);
        }
    }
    let mut f = e.family("pg_backup_last_stored_bytes", "Bytes the newest completed backup of each kind takes in the repository", Gauge);
    for (kind, b) in &newest {
        if let Some(n) = b.stored_bytes {
            f.sample(&[("kind", kind)], n);
        }
    }

    let mut f = e.family("pg_backup_backups", "Backups in the catalog by kind and status", Gauge);
    for c in &s.counts {
        f.sample(&[("kind", &c.kind), ("status", &c.status)], c.count);
    }

    let w = &s.wal;
    e.family("pg_backup_wal_archived_total", "WAL files archived (pg_stat_archiver.archived_count)", Counter).sample(&[], w.archived_count);
    e.family("pg_backup_wal_archive_failures_total", "Failed attempts to archive a WAL file (pg_stat_archiver.failed_count)", Counter).sample(&[], w.failed_count);
    e.family("pg_backup_wal_archived_bytes_total", "Bytes of WAL archived: archived files times wal_segment_size", Counter).sample(&[], w.archived_count.saturating_mul(w.segment_size));
    e.family("pg_backup_wal_ready_files", "WAL files waiting for archive_command", Gauge).sample(&[], w.ready_count);
    let mut f = e.family("pg_backup_wal_last_archived_timestamp_seconds", "When the last WAL file was archived", Gauge);
    if let Some(t) = w.last_archived_time {
        f.sample(&[], epoch_seconds(t));
    }
    let mut f = e.family("pg_backup_wal_last_failed_timestamp_seconds", "When archiving a WAL file last failed", Gauge);
    if let Some(t) = w.last_failed_time {
        f.sample(&[], epoch_seconds(t));
    }

    let mut f = e.family("pg_backup_rpo_seconds", "Seconds since the last WAL file was archived: the data a lost server would take with it", Gauge);
    if let Some(rpo) = s.rpo_seconds {
        f.sample(&[], rpo);
    }
    let mut f = e.family("pg_backup_rpo_bound_seconds", "archive_timeout, the bound pg_backup_rpo_seconds should stay under", Gauge);
    if let Some(bound) = s.archive_timeout_s.filter(|t| *t > 0) {
        f.sample(&[], bound);
    }

    let mut f = e.family("pg_backup_repository_stored_bytes", "Bytes our backups and WAL take in each repository", Gauge);
    for r in &s.repositories {
        if let Some(n) = r.stored_bytes {
            f.sample(&[("repository", &r.name)], n);
        }
    }
    let mut f = e.family("pg_backup_repository_free_bytes", "Free bytes of each repository's filesystem", Gauge);
    for r in &s.repositories {
        if let Some(n) = r.free_bytes {
            f.sample(&[("repository", &r.name)], n);
        }
    }
    let mut f = e.family("pg_backup_repository_size_bytes", "Size in bytes of each repository's filesystem", Gauge);
    for r in &s.repositories {
        if let Some(n) = r.total_bytes {
            f.sample(&[("repository", &r.name)], n);
        }
    }

    let mut f = e.family("pg_backup_job_next_run_timestamp_seconds", "When each scheduled job runs next", Gauge);
    for j in &s.jobs {
        if let Some(t) = j.next_run {
            f.sample(&[("job", &j.name), ("kind", &j.kind)], epoch_seconds(t));
        }
    }
    let mut f = e.family("pg_backup_job_late", "1 when a scheduled job is due and has not started", Gauge);
    for j in &s.jobs {
        f.sample(&[("job", &j.name), ("kind", &j.kind)], j.late);
    }

    e.family("pg_backup_alerts_firing", "Alerts firing and not yet resolved", Gauge).sample(&[], s.alerts_firing);
    e.finish()
}

#[cfg(test)]
mod tests {
    use super::super::tests::{at, fixture};
    use super::super::*;
    use super::*;

    /// A parsed exposition: families in order, each with its samples.
    #[derive(Debug)]
    struct Parsed {
        families: Vec<ParsedFamily>,
    }

    #[derive(Debug)]
    struct ParsedFamily {
        name: String,
        help: String,
        kind: String,
        samples: Vec<(BTreeMap<String, String>, f64)>,
    }

    impl Parsed {
        fn family(&self, name: &str) -> Option<&ParsedFamily> {
            self.families.iter().find(|f| f.name == name)
        }

        /// The value of the sample of `name` with exactly `labels`.
        fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
            let want: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            self.family(name)?.samples.iter().find(|(l, _)| *l == want).map(|(_, v)| *v)
        }
    }

    /// A strict reading of the text format as this module writes it: `# HELP` then `# TYPE`
    /// before a family's samples, samples named as their family, no family twice, no other
    /// comments, every value a float Prometheus reads.
    fn parse(text: &str) -> Result<Parsed, String> {
        let mut families: Vec<ParsedFamily> = Vec::new();
        let mut help: Option<(String, String)> = None;
        if !text.is_empty() && !text.ends_with('\n') {
            return Err("the exposition does not end with a newline".into());
        }
        for (n, line) in text.lines().enumerate() {
            let err = |m: &str| format!("line {}: {m}: {line:?}", n + 1);
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, text) = rest.split_once(' ').ok_or_else(|| err("HELP without text"))?;
                if !valid_name(name) {
                    return Err(err("invalid metric name"));
                }
                if families.iter().any(|f| f.name == name) {
                    return Err(err("family written twice"));
                }
                help = Some((name.to_string(), unescape(text, false).map_err(|e| err(&e))?));
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').ok_or_else(|| err("TYPE without type"))?;
                let (help_name, help_text) = help.take().ok_or_else(|| err("TYPE without HELP before it"))?;
                if help_name != name {
                    return Err(err("TYPE of another family than HELP"));
                }
                if !["counter", "gauge"].contains(&kind) {
                    return Err(err("unknown type"));
                }
                if kind == "counter" && !name.ends_with("_total") || kind == "gauge" && name.ends_with("_total") {
                    return Err(err("_total is for counters only"));
                }
                families.push(ParsedFamily { name: name.into(), help: help_text, kind: kind.into(), samples: Vec::new() });
            } else if line.starts_with('#') || line.is_empty() {
                return Err(err("unexpected comment or blank line"));
            } else {
                if help.is_some() {
                    return Err(err("sample between HELP and TYPE"));
                }
                let (name, labels, value) = parse_sample(line).map_err(|e| err(&e))?;
                let family = families.last_mut().ok_or_else(|| err("sample before any HELP/TYPE"))?;
                if family.name != name {
                    return Err(err("sample outside its family"));
                }
                if family.samples.iter().any(|(l, _)| *l == labels) {
                    return Err(err("duplicate series"));
                }
                family.samples.push((labels, value));
            }
        }
        if help.is_some() {
            return Err("HELP without TYPE at the end".into());
        }
        if let Some(f) = families.iter().find(|f| f.samples.is_empty()) {
            return Err(format!("family {} has no samples", f.name));
        }
        Ok(Parsed { families })
    }

    fn parse_sample(line: &str) -> Result<(String, BTreeMap<String, String>, f64), String> {
        let name_end = line.find(['{', ' ']).ok_or("no value")?;
        let name = &line[..name_end];
        if !valid_name(name) {
            return Err("invalid metric name".into());
        }
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(after) = rest.strip_prefix('{') {
            rest = after;
            loop {
                if let Some(after) = rest.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let (label, after) = rest.split_once("=\"").ok_or("label without =\"")?;
                if !valid_name(label) || label.contains(':') {
                    return Err(format!("invalid label name {label:?}"));
                }
                // The value ends at the first quote not escaped by a backslash.
                let mut end = None;
                let mut escaped = false;
                for (i, c) in after.char_indices() {
                    match c {
                        _ if escaped => escaped = false,
                        '\\' => escaped = true,
                        '"' => {
                            end = Some(i);
                            break;
                        }
                        _ => {}
                    }
                }
                let end = end.ok_or("unterminated label value")?;
                if labels.insert(label.to_string(), unescape(&after[..end], true)?).is_some() {
                    return Err(format!("label {label} twice"));
                }
                rest = &after[end + 1..];
                rest = rest.strip_prefix(',').unwrap_or(rest);
            }
        }
        let value = rest.strip_prefix(' ').ok_or("no space before the value")?;
        let value = match value {
            "NaN" => f64::NAN,
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v if v.contains(['e', 'E']) => return Err(format!("value with an exponent {v:?}")),
            v => v.parse().map_err(|_| format!("value {v:?} is not a number"))?,
        };
        Ok((name.to_string(), labels, value))
    }

    fn unescape(s: &str, label: bool) -> Result<String, String> {
        let mut out = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('\\') => out.push('\\'),
                    Some('n') => out.push('\n'),
                    Some('"') if label => out.push('"'),
                    other => return Err(format!("bad escape \\{other:?}")),
                },
                '"' if label => return Err("unescaped quote".into()),
                '\n' => return Err("raw newline".into()),
                c => out.push(c),
            }
        }
        Ok(out)
    }

    #[test]
    fn the_fixture_renders_a_valid_exposition_with_its_values() {
        let text = render_metrics(&fixture());
        let p = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let v = |name: &str, labels: &[(&str, &str)]| p.value(name, labels).unwrap_or_else(|| panic!("no {name}{labels:?} in\n{text}"));
        assert_eq!(v("pg_backup_up", &[]), 1.0);
        assert!(text.contains("pg_backup_health_status{check=\"archiving\"} 2\n"), "{text}");
        assert_eq!(v("pg_backup_health_status", &[("check", "overall")]), 2.0);
        assert_eq!(v("pg_backup_health_status", &[("check", "full_backup_age")]), 1.0, "the worse of two checks of one name");
        assert_eq!(v("pg_backup_health_status", &[("check", "scheduler")]), 0.0);
        assert_eq!(v("pg_backup_last_success_timestamp_seconds", &[("kind", "full")]), at("2026-12-07T02:21:00Z").timestamp() as f64);
        assert_eq!(v("pg_backup_last_success_timestamp_seconds", &[("kind", "incremental")]), at("2026-12-06T14:02:00Z").timestamp() as f64, "not the failed one");
        assert_eq!(v("pg_backup_last_duration_seconds", &[("kind", "full")]), 1260.5);
        assert!(text.contains("pg_backup_last_size_bytes{kind=\"full\"} 10100000000\n"), "{text}");
        assert_eq!(v("pg_backup_last_stored_bytes", &[("kind", "incremental")]), 100_000_000.0);
        assert_eq!(v("pg_backup_backups", &[("kind", "incremental"), ("status", "failed")]), 1.0);
        assert_eq!(v("pg_backup_wal_archived_total", &[]), 1000.0);
        assert_eq!(v("pg_backup_wal_archive_failures_total", &[]), 3.0);
        assert_eq!(v("pg_backup_wal_archived_bytes_total", &[]), 1000.0 * 16.0 * 1024.0 * 1024.0);
        assert_eq!(v("pg_backup_wal_ready_files", &[]), 2.0);
        assert!(text.contains("pg_backup_wal_last_archived_timestamp_seconds 1796644757.5\n"), "{text}");
        assert!(p.family("pg_backup_wal_last_failed_timestamp_seconds").is_none(), "never failed: no sample, no family");
        assert_eq!(v("pg_backup_rpo_seconds", &[]), 42.5);
        assert_eq!(v("pg_backup_rpo_bound_seconds", &[]), 60.0);
        assert_eq!(v("pg_backup_repository_free_bytes", &[("repository", "local")]), 400e9);
        assert_eq!(v("pg_backup_repository_size_bytes", &[("repository", "local")]), 1e12);
        assert_eq!(v("pg_backup_repository_stored_bytes", &[("repository", "s3")]), 80e9);
        assert!(p.value("pg_backup_repository_size_bytes", &[("repository", "s3")]).is_none(), "an object store has no size");
        assert_eq!(v("pg_backup_job_next_run_timestamp_seconds", &[("job", "nightly full"), ("kind", "full")]), at("2026-12-07T19:00:00Z").timestamp() as f64);
        assert_eq!(v("pg_backup_job_late", &[("job", "hourly"), ("kind", "incremental")]), 1.0);
        assert_eq!(v("pg_backup_job_late", &[("job", "nightly full"), ("kind", "full")]), 0.0);
        assert_eq!(v("pg_backup_alerts_firing", &[]), 2.0);
        let counters: Vec<&str> = p.families.iter().filter(|f| f.kind == "counter").map(|f| f.name.as_str()).collect();
        assert_eq!(counters, ["pg_backup_wal_archived_total", "pg_backup_wal_archive_failures_total", "pg_backup_wal_archived_bytes_total"]);
        assert!(p.families.iter().all(|f| f.name.starts_with("pg_backup_") && !f.help.is_empty()));
    }

    #[test]
    fn an_empty_snapshot_renders_a_valid_exposition() {
        let text = render_metrics(&Snapshot::default());
        let p = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(p.value("pg_backup_up", &[]), Some(1.0));
        assert_eq!(p.value("pg_backup_wal_archived_total", &[]), Some(0.0));
        for absent in ["pg_backup_rpo_seconds", "pg_backup_rpo_bound_seconds", "pg_backup_last_success_timestamp_seconds", "pg_backup_health_status", "pg_backup_job_late"] {
            assert!(p.family(absent).is_none(), "{absent} in\n{text}");
        }
        let off = Snapshot { archive_timeout_s: Some(0), ..Default::default() };
        assert!(!render_metrics(&off).contains("pg_backup_rpo_bound_seconds"));
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let nasty = "a \"quoted\" C:\\path\nand a second line";
        let mut s = fixture();
        s.jobs[0].name = nasty.into();
        s.repositories[0].name = "ünïcode ✓".into();
        let text = render_metrics(&s);
        assert!(text.contains(r#"job="a \"quoted\" C:\\path\nand a second line""#), "{text}");
        let p = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(p.value("pg_backup_job_late", &[("job", nasty), ("kind", "full")]), Some(0.0));
        assert!(p.value("pg_backup_repository_free_bytes", &[("repository", "ünïcode ✓")]).is_some());

        let mut e = Exposition::new();
        e.family("x_help", "back\\slash\nnewline \"quotes stay\"", MetricType::Gauge).sample(&[], 1u64);
        let text = e.finish();
        assert_eq!(text.lines().next(), Some(r#"# HELP x_help back\\slash\nnewline "quotes stay""#));
        assert_eq!(parse(&text).unwrap().families[0].help, "back\\slash\nnewline \"quotes stay\"");
    }

    #[test]
    fn values_are_formatted_as_prometheus_reads_them() {
        let cases: [(Value, &str); 10] = [
            (0u64.into(), "0"),
            (u64::MAX.into(), "18446744073709551615"),
            ((-5i64).into(), "-5"),
            (true.into(), "1"),
            (3.0.into(), "3"),
            (1e20.into(), "100000000000000000000"),
            (1e-7.into(), "0.0000001"),
            (f64::NAN.into(), "NaN"),
            (f64::INFINITY.into(), "+Inf"),
            (f64::NEG_INFINITY.into(), "-Inf"),
        ];
        for (v, want) in cases {
            assert_eq!(v.0, want);
        }
    }

    #[test]
    fn families_are_written_once_with_samples_together_and_duplicates_dropped() {
        let mut e = Exposition::new();
        e.family("a", "A", MetricType::Gauge).sample(&[("l", "x")], 1u64).sample(&[("l", "y")], 2u64).sample(&[("l", "x")], 3u64);
        e.family("b_total", "B", MetricType::Counter);
        e.family("c", "C", MetricType::Gauge).sample(&[], 1.5);
        let text = e.finish();
        assert_eq!(text, "# HELP a A\n# TYPE a gauge\na{l=\"x\"} 1\na{l=\"y\"} 2\n# HELP c C\n# TYPE c gauge\nc 1.5\n");
    }

    #[test]
    fn names_are_validated() {
        for ok in ["pg_backup_up", "_x", "a:b", "A9"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "9a", "a-b", "a b", "é"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "written twice")]
    fn a_family_twice_is_a_programming_error() {
        let mut e = Exposition::new();
        e.family("a", "A", MetricType::Gauge).sample(&[], 1u64);
        e.family("a", "A", MetricType::Gauge).sample(&[], 1u64);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "invalid label name")]
    fn an_invalid_label_name_is_a_programming_error() {
        Exposition::new().family("a", "A", MetricType::Gauge).sample(&[("bad-label", "x")], 1u64);
    }
}
