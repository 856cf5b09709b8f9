//! When the in-database scheduler runs a job: cron expressions evaluated in a named time zone.
//!
//! A [`Schedule`] is a cron expression and an IANA time zone. `croner` parses the expression and
//! finds the wall-clock times it matches; `chrono-tz` turns each wall-clock time into instants.
//! The scheduler only ever sees instants ([`DateTime<Utc>`]), so everything about clocks going
//! forward and back is decided here, once, by the rule below.
//!
//! # Expressions
//!
//! - Standard 5-field cron: `minute hour day-of-month month day-of-week`, with `*`, ranges,
//!   lists, steps (`*/15`, `8-20/2`), month and weekday names (`JAN`, `MON`), and `7` or `SUN`
//!   for Sunday. When both day fields are restricted a day matching either runs (Vixie cron's
//!   rule). croner's extensions (`L`, `W`, `#`) are accepted as croner defines them.
//! - `@hourly`, `@daily` (`@midnight`), `@weekly`, `@monthly`, `@yearly` (`@annually`).
//! - `N seconds` or `every N seconds`, N in 1–86400, for tests and short intervals. These runs
//!   fall on instants that are multiples of N seconds since the Unix epoch, whatever the zone:
//!   predictable, and unaffected by clock changes.
//!
//! Seconds-first 6- and 7-field cron (Quartz) is rejected rather than guessed at: `0 0 2 * * *`
//! means 02:00 to one reader and "minute 0 of hour 0 on the 2nd" to another.
//!
//! # Clock changes (the contract)
//!
//! This follows Vixie cron, stated precisely:
//!
//! - **A clock going forward** skips wall-clock times (in America/New_York on 2026-03-08,
//!   02:00–02:59 do not exist). A job matching a skipped time runs **once**, at the first instant
//!   after the gap (03:00 EDT, 07:00Z): neither zero times nor twice. All skipped times it
//!   matches (`*/15 2 * * *`) collapse into that one run, and so does a run that the first time
//!   after the gap matches anyway (`0 * * * *` runs once at 03:00, not twice). This holds for
//!   every job, whatever its fields (Vixie cron does it for fixed-time jobs only; here a gap
//!   never silently drops a backup).
//! - **A clock going back** repeats wall-clock times (on 2026-11-01, 01:00–01:59 happen in EDT and
//!   again in EST). What a job does there depends on its hour field, as written:
//!   - a job whose hour field does not start with `*` (`2`, `1,13`, `8-20`, `0-23`; also
//!     `@daily`, `@weekly`, ...) runs only in the **first** occurrence: `30 1 * * *` runs at
//!     01:30 EDT (05:30Z) and not at 01:30 EST. A daily job stays daily.
//!   - a job whose hour field starts with `*` (`*`, `*/2`; also `@hourly`) runs by elapsed time,
//!     in **both** occurrences: `0 * * * *` runs at 01:00 EDT (05:00Z) and at 01:00 EST (06:00Z),
//!     so an hourly job keeps running every hour.
//!
//!   Vixie cron also counts a `*` minute field as "by elapsed time"; here only the hour field
//!   does, so `*/15 1 * * *` runs four times that night, not eight.
//! - Runs are strictly increasing instants; two matches that land on the same instant are one
//!   run.
//!
//! Finding the runs assumes that a clock goes back by at most three hours at a time, and that a
//! zone's clock changes are more than three hours apart: the most any zone does today is 2 h
//! (Antarctica/Troll), twice a year. Gaps of any size (Samoa skipped 2011-12-30) need no such
//! assumption.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Offset, SubsecRound, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;
use croner::errors::CronError;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

/// The zone of the product's default schedule.
pub const DEFAULT_TIME_ZONE: &str = "Asia/Ho_Chi_Minh";

/// The longest interval a `N seconds` schedule may have: anything longer is better said in cron.
pub const MAX_INTERVAL_SECONDS: u32 = 86_400;

/// How far back a clock may go at once (see the module docs): how far around an instant the
/// search looks for wall-clock times that a clock going back repeats.
const MAX_CLOCK_CHANGE: TimeDelta = TimeDelta::hours(3);

/// What `longest_interval` looks over: a year and a day, so that every yearly pattern shows.
const INTERVAL_HORIZON: TimeDelta = TimeDelta::days(366);

/// At most this many runs are sampled by `longest_interval` (a minutely job has half a million
/// a year; 20,000 of them are two weeks, enough to see its spacing).
const MAX_INTERVAL_SAMPLES: usize = 20_000;

/// What a job does. Text forms: "full", "incremental", "verify", "cleanup", "health", "copy".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobKind {
    Full,
    Incremental,
    Verify,
    Cleanup,
    Health,
    /// Copy completed backups into another repository (the off-site copy).
    Copy,
    /// Restore the newest backup into a scratch instance and check it (`backup.restore_test()`).
    RestoreTest,
}

impl JobKind {
    pub const ALL: [JobKind; 7] =
        [JobKind::Full, JobKind::Incremental, JobKind::Verify, JobKind::Cleanup, JobKind::Health, JobKind::Copy, JobKind::RestoreTest];

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Full => "full",
            JobKind::Incremental => "incremental",
            JobKind::Verify => "verify",
            JobKind::Cleanup => "cleanup",
            JobKind::Health => "health",
            JobKind::Copy => "copy",
            JobKind::RestoreTest => "restore_test",
        }
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobKind {
    type Err = ScheduleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| ScheduleError::UnknownJobKind { kind: s.to_string() })
    }
}

/// Why a schedule cannot be used. Each message names the expression, zone or variable at fault
/// and what is expected instead.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "bad cron expression '{expr}': {reason}; expected 5 fields: minute hour day-of-month month \
         day-of-week (e.g. '0 2 * * *'), @hourly/@daily/@weekly/@monthly/@yearly, or 'N seconds' \
         (N in 1-86400)"
    )]
    BadExpression { expr: String, reason: String },
    #[error("unknown time zone '{zone}'{}: expected an IANA name such as 'Asia/Ho_Chi_Minh' or 'UTC' (see pg_timezone_names)", did_you_mean(zone))]
    UnknownTimeZone { zone: String },
    #[error("unknown job kind '{kind}': expected one of full, incremental, verify, cleanup, health, copy")]
    UnknownJobKind { kind: String },
    /// A schedule from the environment does not parse; the cause says why.
    #[error("environment variable {variable} does not hold a usable schedule; fix or unset it")]
    BadOverride {
        variable: String,
        #[source]
        source: Box<ScheduleError>,
    },
}

/// `, did you mean 'Asia/Ho_Chi_Minh'?` when only the letter case is wrong: zone names are
/// case-sensitive, and `asia/ho_chi_minh` is the likeliest typo.
fn did_you_mean(zone: &str) -> String {
    chrono_tz::TZ_VARIANTS
        .iter()
        .find(|tz| tz.name().eq_ignore_ascii_case(zone))
        .map(|tz| format!(" (did you mean '{}'?)", tz.name()))
        .unwrap_or_default()
}

/// A job's schedule: an expression evaluated in a time zone. See the module docs for the rules.
#[derive(Clone, Debug)]
pub struct Schedule {
    expression: String,
    time_zone: String,
    tz: Tz,
    rule: Rule,
}

#[derive(Clone, Debug)]
enum Rule {
    /// Every `seconds` seconds since the Unix epoch.
    Every { seconds: u32 },
    Cron {
        /// Boxed: a parsed pattern is a few hundred bytes, an interval four.
        cron: Box<Cron>,
        repeated_hour: RepeatedHour,
    },
}

/// What a cron job does in the wall-clock times that a clock going back repeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RepeatedHour {
    /// Hour field fixed (not starting with `*`): run at the first occurrence only.
    FirstOnly,
    /// Hour field starting with `*`: run at both, by elapsed time.
    Both,
}

impl Schedule {
    /// `expr`: standard 5-field cron (minute hour day-of-month month day-of-week; ranges, lists,
    /// steps, names like MON/JAN, 7 = Sunday; also @hourly @daily @weekly @monthly @yearly) or
    /// the seconds form for tests and short intervals: "30 seconds" / "every 30 seconds"
    /// (1..=86400 seconds; runs at instants that are multiples of N seconds since the Unix
    /// epoch, so they are predictable). `time_zone`: an IANA name (e.g. "Asia/Ho_Chi_Minh",
    /// "UTC").
    pub fn parse(expr: &str, time_zone: &str) -> Result<Schedule, ScheduleError> {
        let expression = expr.trim();
        let bad = |reason: String| ScheduleError::BadExpression { expr: expression.to_string(), reason };
        let rule = match parse_interval(expression) {
            Some(interval) => Rule::Every { seconds: interval.map_err(bad)? },
            None => parse_cron(expression).map_err(bad)?,
        };
        let tz = Tz::from_str(time_zone.trim())
            .map_err(|_| ScheduleError::UnknownTimeZone { zone: time_zone.to_string() })?;
        Ok(Schedule { expression: expression.to_string(), time_zone: tz.name().to_string(), tz, rule })
    }

    /// First run strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.rule {
            Rule::Every { seconds } => {
                let n = i64::from(*seconds);
                let next = (after.timestamp().div_euclid(n) + 1).checked_mul(n)?;
                DateTime::from_timestamp(next, 0)
            }
            Rule::Cron { cron, repeated_hour } => self.next_cron_run(cron, *repeated_hour, after),
        }
    }

    /// Runs in (from, to], oldest first, at most `limit` of them (catch-up after downtime).
    pub fn runs_between(&self, from: DateTime<Utc>, to: DateTime<Utc>, limit: usize) -> Vec<DateTime<Utc>> {
        let mut runs = Vec::new();
        let mut last = from;
        while runs.len() < limit {
            match self.next_after(last) {
                Some(run) if run <= to => {
                    runs.push(run);
                    last = run;
                }
                _ => break,
            }
        }
        runs
    }

    /// The instant rendered in the job's zone, e.g. "2026-03-08 03:00:00-04:00" (for
    /// scheduler_status()).
    pub fn in_zone(&self, t: DateTime<Utc>) -> String {
        t.with_timezone(&self.tz).format("%Y-%m-%d %H:%M:%S%:z").to_string()
    }

    /// The longest gap between consecutive runs over the coming year, from the first run after
    /// `from` to the first run a year later (at most 20,000 runs are sampled): what "the last
    /// full backup is younger than its schedule" compares against. `None` when the schedule
    /// has fewer than two runs.
    pub fn longest_interval(&self, from: DateTime<Utc>) -> Option<TimeDelta> {
        if let Rule::Every { seconds } = self.rule {
            return Some(TimeDelta::seconds(i64::from(seconds)));
        }
        let first = self.next_after(from)?;
        let horizon = first.checked_add_signed(INTERVAL_HORIZON)?;
        let mut longest: Option<TimeDelta> = None;
        let mut previous = first;
        for _ in 1..MAX_INTERVAL_SAMPLES {
            let Some(run) = self.next_after(previous) else { break };
            let gap = run - previous;
            longest = Some(longest.map_or(gap, |l| l.max(gap)));
            // The run past the horizon still counts: its gap straddles the year's end.
            if run >= horizon {
                break;
            }
            previous = run;
        }
        longest
    }

    pub fn expression(&self) -> &str {
        &self.expression
    }

    pub fn time_zone(&self) -> &str {
        &self.time_zone
    }

    /// Walks the wall-clock times the pattern matches, turns each into the instants it stands
    /// for (per the module's rule), and keeps the earliest instant after `after`.
    ///
    /// Wall-clock order is instant order except where a clock goes back: there, a wall time
    /// before `after`'s can still lie ahead (at 01:10 EDT, 01:00 EST is 50 minutes away), and a
    /// wall time after the best found can come sooner. So the walk starts early by the size of a
    /// coming clock change and goes on past the best by the size of one just behind it; with no
    /// clock change near, both margins are zero and one match decides.
    fn next_cron_run(&self, cron: &Cron, repeated_hour: RepeatedHour, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let going_back_soon = self.offset_at(after) - self.offset_at(after.checked_add_signed(MAX_CLOCK_CHANGE)?);
        let start = self.wall_clock(after).trunc_subsecs(0) - going_back_soon.max(TimeDelta::zero());

        let mut best: Option<DateTime<Utc>> = None;
        let mut wall = cron.find_next_occurrence(&start, true).ok()?;
        loop {
            for instant in self.instants_of(wall, repeated_hour) {
                if instant > after && best.is_none_or(|b| instant < b) {
                    best = Some(instant);
                }
            }
            let Some(b) = best else {
                wall = cron.find_next_occurrence(&wall, false).ok()?;
                continue;
            };
            let horizon = self.latest_wall_clock_that_can_precede(b)?;
            if wall >= horizon {
                return best;
            }
            match cron.find_next_occurrence(&wall, false) {
                Ok(next) if next <= horizon => wall = next,
                _ => return best,
            }
        }
    }

    /// The latest wall-clock time that can still stand for an instant before `b`: `b`'s own, or
    /// later by as much as a clock went back just before `b`.
    fn latest_wall_clock_that_can_precede(&self, b: DateTime<Utc>) -> Option<NaiveDateTime> {
        let went_back = self.offset_at(b.checked_sub_signed(MAX_CLOCK_CHANGE)?) - self.offset_at(b);
        Some(self.wall_clock(b) + went_back.max(TimeDelta::zero()))
    }

    /// The instants a matching wall-clock time stands for: one normally; the first or both
    /// where a clock going back repeats it; the end of the gap where a clock going forward
    /// skipped it.
    fn instants_of(&self, wall: NaiveDateTime, repeated_hour: RepeatedHour) -> Vec<DateTime<Utc>> {
        use chrono::LocalResult;
        match self.tz.from_local_datetime(&wall) {
            LocalResult::Single(t) => vec![t.with_timezone(&Utc)],
            LocalResult::Ambiguous(first, second) => match repeated_hour {
                RepeatedHour::FirstOnly => vec![first.with_timezone(&Utc)],
                RepeatedHour::Both => vec![first.with_timezone(&Utc), second.with_timezone(&Utc)],
            },
            LocalResult::None => self.end_of_gap(wall).into_iter().collect(),
        }
    }

    /// The first instant after the clock change that skipped `wall`: the earliest instant whose
    /// wall-clock time is past `wall`. Every zone's offset is within ±16 h of UTC, so `wall` read
    /// as UTC ± 16 h brackets it, and the tz database's changes fall on whole seconds.
    fn end_of_gap(&self, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
        let as_utc = wall.and_utc();
        let mut before = as_utc.checked_sub_signed(TimeDelta::hours(16))?;
        let mut after = as_utc.checked_add_signed(TimeDelta::hours(16))?;
        while after - before > TimeDelta::seconds(1) {
            let middle = before + TimeDelta::seconds((after - before).num_seconds() / 2);
            if self.wall_clock(middle) > wall {
                after = middle;
            } else {
                before = middle;
            }
        }
        Some(after)
    }

    fn wall_clock(&self, t: DateTime<Utc>) -> NaiveDateTime {
        t.with_timezone(&self.tz).naive_local()
    }

    /// The zone's offset from UTC at `t` (EDT: -4 h).
    fn offset_at(&self, t: DateTime<Utc>) -> TimeDelta {
        let seconds = self.tz.offset_from_utc_datetime(&t.naive_utc()).fix().local_minus_utc();
        TimeDelta::seconds(i64::from(seconds))
    }
}

/// `Some` when `expr` is the seconds form ("30 seconds", "every 30 seconds"), with its interval
/// or why it is unusable; `None` when it is something else (cron, presumably).
fn parse_interval(expr: &str) -> Option<Result<u32, String>> {
    let lower = expr.to_ascii_lowercase();
    let words: Vec<&str> = lower.split_whitespace().collect();
    let words = match words.as_slice() {
        ["every", rest @ ..] => rest,
        all => all,
    };
    let [count, "second" | "seconds"] = words else { return None };
    Some(match count.parse::<u64>() {
        Ok(n) if (1..=u64::from(MAX_INTERVAL_SECONDS)).contains(&n) => Ok(n as u32),
        Ok(n) => Err(format!("an interval of {n} seconds is out of range 1-{MAX_INTERVAL_SECONDS}")),
        Err(_) => Err(format!("'{count}' is not a whole number of seconds")),
    })
}

/// One of the five cron fields: its name, range and the names it accepts.
struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    /// Value names, the first standing for `min` (JAN = 1, SUN = 0).
    names: &'static [&'static str],
    /// Letters croner gives a meaning in this field (`L`, `W`, `#`); left for it to check.
    modifiers: &'static [char],
}

const FIELDS: [Field; 5] = [
    Field { name: "minute", min: 0, max: 59, names: &[], modifiers: &[] },
    Field { name: "hour", min: 0, max: 23, names: &[], modifiers: &[] },
    Field { name: "day-of-month", min: 1, max: 31, names: &[], modifiers: &['L', 'W'] },
    Field {
        name: "month",
        min: 1,
        max: 12,
        names: &["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"],
        modifiers: &[],
    },
    Field {
        name: "day-of-week",
        min: 0,
        max: 7,
        names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
        modifiers: &['L', '#'],
    },
];

fn parse_cron(expr: &str) -> Result<Rule, String> {
    let pattern = expand_nickname(expr)?;
    let fields: Vec<&str> = pattern.split_whitespace().collect();
    match fields.len() {
        5 => {}
        0 => return Err("it is empty".to_string()),
        6 | 7 => {
            return Err(format!(
                "it has {} fields, and seconds-first (Quartz) cron is not supported; drop the seconds \
                 field, or use 'N seconds' for intervals under a minute",
                fields.len()
            ))
        }
        n => return Err(format!("it has {n} fields")),
    }
    for (field, text) in FIELDS.iter().zip(&fields) {
        check_field(field, text)?;
    }
    let cron = croner_parser().parse(&pattern).map_err(|e| explain_croner_error(&fields, e))?;
    // croner would search to the year 5000 for a run of "0 0 30 2 *"; say so now instead.
    let reference = NaiveDate::from_ymd_opt(2000, 1, 1).and_then(|d| d.and_hms_opt(0, 0, 0)).expect("a valid date");
    if cron.find_next_occurrence(&reference, false).is_err() {
        return Err("it matches no day of any year (a day-of-month that its months do not have?)".to_string());
    }
    let repeated_hour = if fields[1].starts_with('*') { RepeatedHour::Both } else { RepeatedHour::FirstOnly };
    Ok(Rule::Cron { cron: Box::new(cron), repeated_hour })
}

/// croner without its extensions to the field count: seconds and years stay out, so a
/// 6-field expression cannot be mistaken for one with seconds.
fn croner_parser() -> CronParser {
    CronParser::builder().seconds(Seconds::Disallowed).year(Year::Disallowed).build()
}

fn expand_nickname(expr: &str) -> Result<String, String> {
    if !expr.starts_with('@') {
        return Ok(expr.to_string());
    }
    Ok(match expr.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        "@reboot" => return Err("@reboot is not a time; the scheduler runs jobs by time only".to_string()),
        other => return Err(format!("'{other}' is not one of @hourly, @daily, @weekly, @monthly, @yearly")),
    }
    .to_string())
}

/// Catches what croner would reject with a vague message ("Number out of bounds.") or accept
/// wrongly: it replaces names everywhere in the pattern, so `0 2 MON * *` would run on the 1st.
fn check_field(field: &Field, text: &str) -> Result<(), String> {
    let name = field.name;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => (range, Some(step)),
            None => (part, None),
        };
        if step.is_some_and(|s| s.parse::<u32>() == Ok(0)) {
            return Err(format!("{name} step 0 in '{part}' never advances; a step is 1 or more"));
        }
        if range == "*" {
            continue;
        }
        let bounds: Vec<&str> = range.split('-').collect();
        let mut values = Vec::with_capacity(bounds.len());
        for (i, token) in bounds.iter().enumerate() {
            // `5#2` (second Friday) and `5L`: the weekday is what needs checking here.
            let token = token.split('#').next().unwrap_or(token);
            match value_of(field, token, i > 0) {
                Some(v) if (field.min..=field.max).contains(&v) => values.push(v),
                Some(v) => return Err(format!("{name} {v} is out of range {}-{}", field.min, field.max)),
                None if token.chars().any(|c| field.modifiers.contains(&c.to_ascii_uppercase())) => {}
                None => return Err(format!("{name} '{token}' is not {}", what_a_value_is(field))),
            }
        }
        if let [from, to] = values[..] {
            if from > to {
                return Err(format!(
                    "{name} range '{range}' runs backwards; ranges do not wrap around, so list both ends \
                     instead (e.g. '22-23,0-2')"
                ));
            }
        }
    }
    Ok(())
}

/// A number, or a name the field accepts. `SUN` ending a range is 7, so `MON-SUN` is the week.
fn value_of(field: &Field, token: &str, ends_range: bool) -> Option<u32> {
    if let Ok(n) = token.parse::<u32>() {
        return Some(n);
    }
    let index = field.names.iter().position(|n| n.eq_ignore_ascii_case(token))? as u32;
    Some(if ends_range && index == 0 && field.name == "day-of-week" { 7 } else { field.min + index })
}

fn what_a_value_is(field: &Field) -> String {
    match field.names {
        [] => format!("a number {}-{}", field.min, field.max),
        names => format!("a number {}-{} or a name {}-{}", field.min, field.max, names[0], names[names.len() - 1]),
    }
}

/// croner's message, with the field it is about when one field alone is to blame.
fn explain_croner_error(fields: &[&str], error: CronError) -> String {
    let message = |e: CronError| match e {
        CronError::ComponentError(m) | CronError::InvalidPattern(m) | CronError::IllegalCharacters(m) => m,
        other => other.to_string(),
    };
    for (i, field) in FIELDS.iter().enumerate() {
        let mut probe = ["*"; 5];
        probe[i] = fields[i];
        if let Err(e) = croner_parser().parse(&probe.join(" ")) {
            return format!("{} field '{}': {}", field.name, fields[i], message(e));
        }
    }
    message(error)
}

/// A job of the product's default schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobSpec {
    pub name: String,
    pub kind: JobKind,
    pub cron: String,
    pub time_zone: String,
}

/// The product document's schedule, in Asia/Ho_Chi_Minh: full "0 2 * * *", incremental
/// "0 8-20 * * *", verify "0 3 * * 0", cleanup "0 4 1 * *", health "0 */6 * * *"; names = the
/// kind names. `env` looks up environment variables: BACKUP_FULL_SCHEDULE and
/// BACKUP_INCREMENTAL_SCHEDULE override the full/incremental cron expressions (validated: a bad
/// one is an error naming the variable). Each returned spec parses.
pub fn default_jobs(env: &dyn Fn(&str) -> Option<String>) -> Result<Vec<JobSpec>, ScheduleError> {
    let defaults = [
        (JobKind::Full, "0 2 * * *", Some("BACKUP_FULL_SCHEDULE")),
        (JobKind::Incremental, "0 8-20 * * *", Some("BACKUP_INCREMENTAL_SCHEDULE")),
        (JobKind::Verify, "0 3 * * 0", None),
        (JobKind::Cleanup, "0 4 1 * *", None),
        (JobKind::Health, "0 */6 * * *", None),
        // Weekly, after Sunday's verify: a backup nobody has restored is a hope.
        (JobKind::RestoreTest, "0 5 * * 0", None),
    ];
    defaults
        .into_iter()
        .map(|(kind, default, variable)| {
            let cron = match variable.and_then(|v| env(v).map(|value| (v, value))) {
                Some((variable, value)) => {
                    let schedule = Schedule::parse(&value, DEFAULT_TIME_ZONE).map_err(|e| {
                        ScheduleError::BadOverride { variable: variable.to_string(), source: Box::new(e) }
                    })?;
                    schedule.expression().to_string()
                }
                None => default.to_string(),
            };
            Ok(JobSpec { name: kind.as_str().to_string(), kind, cron, time_zone: DEFAULT_TIME_ZONE.to_string() })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::LocalResult;

    const NEW_YORK: &str = "America/New_York";

    fn utc(text: &str) -> DateTime<Utc> {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn schedule(expr: &str, zone: &str) -> Schedule {
        Schedule::parse(expr, zone).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs in (from, to] as `2026-03-08T07:00:00Z` strings, so expectations read as written.
    fn runs(expr: &str, zone: &str, from: &str, to: &str) -> Vec<String> {
        schedule(expr, zone)
            .runs_between(utc(from), utc(to), 1000)
            .iter()
            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .collect()
    }

    fn next_runs(s: &Schedule, from: &str, count: usize) -> Vec<String> {
        s.runs_between(utc(from), DateTime::<Utc>::MAX_UTC, count)
            .iter()
            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .collect()
    }

    fn reason(expr: &str) -> String {
        match Schedule::parse(expr, "UTC") {
            Err(ScheduleError::BadExpression { expr: e, reason }) => {
                assert_eq!(e, expr.trim());
                reason
            }
            other => panic!("{expr}: expected BadExpression, got {other:?}"),
        }
    }

    // America/New_York, 2026: 2026-03-08 02:00 EST (-5) -> 03:00 EDT (-4) at 07:00Z;
    // 2026-11-01 02:00 EDT (-4) -> 01:00 EST (-5) at 06:00Z.

    #[test]
    fn spring_forward_runs_a_skipped_fixed_time_once_at_the_end_of_the_gap() {
        assert_eq!(
            runs("30 2 * * *", NEW_YORK, "2026-03-06T12:00:00Z", "2026-03-10T12:00:00Z"),
            [
                "2026-03-07T07:30:00Z", // 02:30 EST
                "2026-03-08T07:00:00Z", // 02:30 does not exist: 03:00 EDT
                "2026-03-09T06:30:00Z", // 02:30 EDT
                "2026-03-10T06:30:00Z",
            ]
        );
        let s = schedule("30 2 * * *", NEW_YORK);
        assert_eq!(s.in_zone(utc("2026-03-08T07:00:00Z")), "2026-03-08 03:00:00-04:00");
        assert_eq!(s.next_after(utc("2026-03-08T06:59:59Z")), Some(utc("2026-03-08T07:00:00Z")));
        assert_eq!(s.next_after(utc("2026-03-08T07:00:00Z")), Some(utc("2026-03-09T06:30:00Z")));
    }

    #[test]
    fn fall_back_leaves_a_time_after_the_repeated_hour_alone() {
        assert_eq!(
            runs("30 2 * * *", NEW_YORK, "2026-10-30T12:00:00Z", "2026-11-03T12:00:00Z"),
            [
                "2026-10-31T06:30:00Z", // 02:30 EDT
                "2026-11-01T07:30:00Z", // 02:30 EST, once: 02:xx is not repeated
                "2026-11-02T07:30:00Z",
                "2026-11-03T07:30:00Z",
            ]
        );
    }

    #[test]
    fn fall_back_runs_a_fixed_hour_at_its_first_occurrence_only() {
        assert_eq!(
            runs("30 1 * * *", NEW_YORK, "2026-10-31T00:00:00Z", "2026-11-02T12:00:00Z"),
            [
                "2026-10-31T05:30:00Z", // 01:30 EDT
                "2026-11-01T05:30:00Z", // 01:30 EDT; not again at 01:30 EST (06:30Z)
                "2026-11-02T06:30:00Z", // 01:30 EST
            ]
        );
        let s = schedule("30 1 * * *", NEW_YORK);
        // From inside the repeated hour's second pass, 01:30 EST is not a run either.
        assert_eq!(s.next_after(utc("2026-11-01T06:10:00Z")), Some(utc("2026-11-02T06:30:00Z")));
        // A wildcard minute does not make a fixed hour repeat.
        assert_eq!(
            runs("*/20 1 * * *", NEW_YORK, "2026-11-01T04:00:00Z", "2026-11-01T12:00:00Z"),
            ["2026-11-01T05:00:00Z", "2026-11-01T05:20:00Z", "2026-11-01T05:40:00Z"]
        );
    }

    #[test]
    fn hourly_across_both_nights_runs_every_elapsed_hour() {
        let s = schedule("0 * * * *", NEW_YORK);
        assert_eq!(
            runs("0 * * * *", NEW_YORK, "2026-03-08T04:00:00Z", "2026-03-08T09:00:00Z"),
            [
                "2026-03-08T05:00:00Z", // 00:00 EST
                "2026-03-08T06:00:00Z", // 01:00 EST
                "2026-03-08T07:00:00Z", // 02:00 skipped, collapsed into 03:00 EDT: one run
                "2026-03-08T08:00:00Z", // 04:00 EDT
                "2026-03-08T09:00:00Z",
            ]
        );
        assert_eq!(s.in_zone(utc("2026-03-08T06:00:00Z")), "2026-03-08 01:00:00-05:00");
        assert_eq!(s.in_zone(utc("2026-03-08T07:00:00Z")), "2026-03-08 03:00:00-04:00");
        assert_eq!(
            runs("0 * * * *", NEW_YORK, "2026-11-01T03:00:00Z", "2026-11-01T08:00:00Z"),
            [
                "2026-11-01T04:00:00Z", // 00:00 EDT
                "2026-11-01T05:00:00Z", // 01:00 EDT
                "2026-11-01T06:00:00Z", // 01:00 EST: the hour field is '*', so both
                "2026-11-01T07:00:00Z", // 02:00 EST
                "2026-11-01T08:00:00Z", // 03:00 EST
            ]
        );
        assert_eq!(s.in_zone(utc("2026-11-01T05:00:00Z")), "2026-11-01 01:00:00-04:00");
        assert_eq!(s.in_zone(utc("2026-11-01T06:00:00Z")), "2026-11-01 01:00:00-05:00");
        // From inside the first pass of the repeated hour, the second pass is still ahead.
        assert_eq!(s.next_after(utc("2026-11-01T05:10:00Z")), Some(utc("2026-11-01T06:00:00Z")));
        assert_eq!(s.next_after(utc("2026-11-01T04:30:00Z")), Some(utc("2026-11-01T05:00:00Z")));
        // A wall time after the first match found can still come sooner: from 01:10 EDT, 01:00
        // (EST, 06:00Z) is ahead but 01:20 EDT comes first.
        let every_20 = schedule("*/20 * * * *", NEW_YORK);
        assert_eq!(every_20.next_after(utc("2026-11-01T05:10:00Z")), Some(utc("2026-11-01T05:20:00Z")));
        assert_eq!(
            runs("*/20 * * * *", NEW_YORK, "2026-11-01T04:50:00Z", "2026-11-01T07:00:00Z"),
            [
                "2026-11-01T05:00:00Z", // 01:00 EDT
                "2026-11-01T05:20:00Z",
                "2026-11-01T05:40:00Z",
                "2026-11-01T06:00:00Z", // 01:00 EST
                "2026-11-01T06:20:00Z",
                "2026-11-01T06:40:00Z",
                "2026-11-01T07:00:00Z", // 02:00 EST
            ]
        );
    }

    #[test]
    fn skipped_times_collapse_into_one_run() {
        assert_eq!(
            runs("*/15 2 * * *", NEW_YORK, "2026-03-07T00:00:00Z", "2026-03-09T12:00:00Z"),
            [
                "2026-03-07T07:00:00Z", // 02:00 EST
                "2026-03-07T07:15:00Z",
                "2026-03-07T07:30:00Z",
                "2026-03-07T07:45:00Z",
                "2026-03-08T07:00:00Z", // 02:00, 02:15, 02:30, 02:45 skipped: one run at 03:00 EDT
                "2026-03-09T06:00:00Z", // 02:00 EDT
                "2026-03-09T06:15:00Z",
                "2026-03-09T06:30:00Z",
                "2026-03-09T06:45:00Z",
            ]
        );
        assert_eq!(
            runs("30 * * * *", NEW_YORK, "2026-03-08T05:00:00Z", "2026-03-08T08:00:00Z"),
            [
                "2026-03-08T05:30:00Z", // 00:30 EST
                "2026-03-08T06:30:00Z", // 01:30 EST
                "2026-03-08T07:00:00Z", // 02:30 skipped: 03:00 EDT
                "2026-03-08T07:30:00Z", // 03:30 EDT
            ]
        );
        assert_eq!(
            runs("30 * * * *", NEW_YORK, "2026-11-01T04:00:00Z", "2026-11-01T07:45:00Z"),
            [
                "2026-11-01T04:30:00Z", // 00:30 EDT
                "2026-11-01T05:30:00Z", // 01:30 EDT
                "2026-11-01T06:30:00Z", // 01:30 EST
                "2026-11-01T07:30:00Z", // 02:30 EST
            ]
        );
    }

    /// The rule restated minute by minute, independently of `next_cron_run`'s walk: an instant
    /// is a run when its wall-clock time matches (unless it is the second pass of a repeated
    /// time and the hour field is fixed), or when it ends a gap in which a skipped minute
    /// matches.
    fn runs_by_brute_force(expr: &str, zone: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let tz: Tz = zone.parse().unwrap();
        let cron = croner_parser().parse(expr).unwrap();
        let both = expr.split_whitespace().nth(1).unwrap().starts_with('*');
        let matches = |wall: NaiveDateTime| cron.is_time_matching(&wall).unwrap();
        let mut out = Vec::new();
        let mut t = from + TimeDelta::minutes(1);
        while t <= to {
            let wall = t.with_timezone(&tz).naive_local();
            let previous_wall = (t - TimeDelta::minutes(1)).with_timezone(&tz).naive_local();
            let second_pass = matches!(tz.from_local_datetime(&wall), LocalResult::Ambiguous(first, _) if first.with_timezone(&Utc) != t);
            let mut run = matches(wall) && (both || !second_pass);
            let mut skipped = previous_wall + TimeDelta::minutes(1);
            while skipped < wall {
                run |= matches(skipped);
                skipped += TimeDelta::minutes(1);
            }
            if run {
                out.push(t);
            }
            t += TimeDelta::minutes(1);
        }
        out
    }

    #[test]
    fn agrees_with_the_rule_restated_minute_by_minute_around_clock_changes() {
        let windows = [
            (NEW_YORK, "2026-03-07T00:00:00Z", "2026-03-10T00:00:00Z"),
            (NEW_YORK, "2026-10-31T00:00:00Z", "2026-11-03T00:00:00Z"),
            // Half-hour changes: 2026-04-05 02:00 -> 01:30, 2026-10-04 02:00 -> 02:30.
            ("Australia/Lord_Howe", "2026-04-03T12:00:00Z", "2026-04-06T12:00:00Z"),
            ("Australia/Lord_Howe", "2026-10-02T12:00:00Z", "2026-10-05T12:00:00Z"),
            // Two-hour changes: 2026-03-29 01:00Z, 2026-10-25 01:00Z.
            ("Antarctica/Troll", "2026-03-28T00:00:00Z", "2026-03-31T00:00:00Z"),
            ("Antarctica/Troll", "2026-10-24T00:00:00Z", "2026-10-27T00:00:00Z"),
        ];
        let exprs = [
            "0 * * * *",
            "*/20 * * * *",
            "30 1 * * *",
            "45 2 * * *",
            "*/15 2 * * *",
            "10 1-3 * * *",
            "5 */2 * * *",
            "0 0 * * *",
            "* 1 * * *",
        ];
        for (zone, from, to) in windows {
            for expr in exprs {
                let expected = runs_by_brute_force(expr, zone, utc(from), utc(to));
                let got = schedule(expr, zone).runs_between(utc(from), utc(to), 10_000);
                assert_eq!(got, expected, "{expr} in {zone}, ({from}, {to}]");
            }
        }
    }

    #[test]
    fn runs_are_strictly_increasing_over_a_year() {
        for zone in [NEW_YORK, "Australia/Lord_Howe", "Europe/London", DEFAULT_TIME_ZONE] {
            for expr in ["0 * * * *", "30 2 * * *", "30 1 * * *", "*/15 2 * * *", "0 */6 * * *"] {
                let s = schedule(expr, zone);
                let all = s.runs_between(utc("2026-01-01T00:00:00Z"), utc("2027-01-01T00:00:00Z"), 100_000);
                assert!(all.windows(2).all(|w| w[0] < w[1]), "{expr} in {zone}");
            }
        }
    }

    #[test]
    fn the_default_schedule_in_vietnam() {
        // Asia/Ho_Chi_Minh is UTC+7 all year; 2026-12-01T00:00Z is 07:00 local, a Tuesday.
        let jobs = default_jobs(&|_| None).unwrap();
        let by_kind = |kind: JobKind| {
            let job = jobs.iter().find(|j| j.kind == kind).unwrap();
            next_runs(&schedule(&job.cron, &job.time_zone), "2026-12-01T00:00:00Z", 10)
        };
        // 02:00 local is 19:00Z the day before.
        assert_eq!(
            by_kind(JobKind::Full),
            [
                "2026-12-01T19:00:00Z",
                "2026-12-02T19:00:00Z",
                "2026-12-03T19:00:00Z",
                "2026-12-04T19:00:00Z",
                "2026-12-05T19:00:00Z",
                "2026-12-06T19:00:00Z",
                "2026-12-07T19:00:00Z",
                "2026-12-08T19:00:00Z",
                "2026-12-09T19:00:00Z",
                "2026-12-10T19:00:00Z",
            ]
        );
        // 08:00-17:00 local on 12-01.
        assert_eq!(
            by_kind(JobKind::Incremental),
            [
                "2026-12-01T01:00:00Z",
                "2026-12-01T02:00:00Z",
                "2026-12-01T03:00:00Z",
                "2026-12-01T04:00:00Z",
                "2026-12-01T05:00:00Z",
                "2026-12-01T06:00:00Z",
                "2026-12-01T07:00:00Z",
                "2026-12-01T08:00:00Z",
                "2026-12-01T09:00:00Z",
                "2026-12-01T10:00:00Z",
            ]
        );
        // Sundays 03:00 local (12-06, 12-13, ...) are Saturdays 20:00Z.
        assert_eq!(
            by_kind(JobKind::Verify),
            [
                "2026-12-05T20:00:00Z",
                "2026-12-12T20:00:00Z",
                "2026-12-19T20:00:00Z",
                "2026-12-26T20:00:00Z",
                "2027-01-02T20:00:00Z",
                "2027-01-09T20:00:00Z",
                "2027-01-16T20:00:00Z",
                "2027-01-23T20:00:00Z",
                "2027-01-30T20:00:00Z",
                "2027-02-06T20:00:00Z",
            ]
        );
        // The 1st at 04:00 local is 21:00Z on the last day of the month before; 12-01 04:00
        // local has passed.
        assert_eq!(
            by_kind(JobKind::Cleanup),
            [
                "2026-12-31T21:00:00Z",
                "2027-01-31T21:00:00Z",
                "2027-02-28T21:00:00Z",
                "2027-03-31T21:00:00Z",
                "2027-04-30T21:00:00Z",
                "2027-05-31T21:00:00Z",
                "2027-06-30T21:00:00Z",
                "2027-07-31T21:00:00Z",
                "2027-08-31T21:00:00Z",
                "2027-09-30T21:00:00Z",
            ]
        );
        // 00, 06, 12, 18 local are 17, 23, 05, 11 Z.
        assert_eq!(
            by_kind(JobKind::Health),
            [
                "2026-12-01T05:00:00Z",
                "2026-12-01T11:00:00Z",
                "2026-12-01T17:00:00Z",
                "2026-12-01T23:00:00Z",
                "2026-12-02T05:00:00Z",
                "2026-12-02T11:00:00Z",
                "2026-12-02T17:00:00Z",
                "2026-12-02T23:00:00Z",
                "2026-12-03T05:00:00Z",
                "2026-12-03T11:00:00Z",
            ]
        );
        let full = schedule("0 2 * * *", DEFAULT_TIME_ZONE);
        assert_eq!(full.in_zone(utc("2026-12-01T19:00:00Z")), "2026-12-02 02:00:00+07:00");
    }

    #[test]
    fn seconds_form_runs_on_multiples_since_the_epoch() {
        // 2026-12-01T00:00:00Z is 1796083200 s: a multiple of 30, and 2 past a multiple of 7.
        let s = schedule("30 seconds", DEFAULT_TIME_ZONE);
        assert_eq!(s.next_after(utc("2026-12-01T00:00:10Z")), Some(utc("2026-12-01T00:00:30Z")));
        assert_eq!(s.next_after(utc("2026-12-01T00:00:30Z")), Some(utc("2026-12-01T00:01:00Z")));
        assert_eq!(s.next_after(utc("2026-12-01T00:00:29.999Z")), Some(utc("2026-12-01T00:00:30Z")));
        assert_eq!(
            next_runs(&schedule("every 7 seconds", "UTC"), "2026-12-01T00:00:00Z", 3),
            ["2026-12-01T00:00:05Z", "2026-12-01T00:00:12Z", "2026-12-01T00:00:19Z"]
        );
        assert_eq!(
            next_runs(&schedule("Every 86400 Seconds", NEW_YORK), "2026-12-01T00:00:00Z", 2),
            ["2026-12-02T00:00:00Z", "2026-12-03T00:00:00Z"]
        );
        assert_eq!(
            schedule("1 second", "UTC").next_after(utc("2026-12-01T00:00:00Z")),
            Some(utc("2026-12-01T00:00:01Z"))
        );
        assert_eq!(s.expression(), "30 seconds");
        assert_eq!(s.time_zone(), DEFAULT_TIME_ZONE);
    }

    #[test]
    fn runs_between_is_bounded_by_its_limit_and_its_window() {
        let s = schedule("30 seconds", "UTC");
        let (from, to) = (utc("2026-12-01T00:00:00Z"), utc("2026-12-01T00:05:00Z"));
        assert_eq!(
            s.runs_between(from, to, 3),
            [utc("2026-12-01T00:00:30Z"), utc("2026-12-01T00:01:00Z"), utc("2026-12-01T00:01:30Z")]
        );
        assert_eq!(s.runs_between(from, to, 100).len(), 10);
        assert_eq!(
            s.runs_between(from, utc("2026-12-01T00:01:00Z"), 100).last(),
            Some(&utc("2026-12-01T00:01:00Z")),
            "`to` is included"
        );
        assert!(s.runs_between(from, to, 0).is_empty());
        assert!(s.runs_between(to, from, 10).is_empty());
        // Catch-up after a day down: the hourly incrementals missed, oldest first, capped.
        let missed = schedule("0 8-20 * * *", DEFAULT_TIME_ZONE).runs_between(
            utc("2026-12-01T00:00:00Z"),
            utc("2026-12-02T00:00:00Z"),
            5,
        );
        assert_eq!(
            missed,
            [
                utc("2026-12-01T01:00:00Z"),
                utc("2026-12-01T02:00:00Z"),
                utc("2026-12-01T03:00:00Z"),
                utc("2026-12-01T04:00:00Z"),
                utc("2026-12-01T05:00:00Z")
            ]
        );
    }

    #[test]
    fn longest_interval() {
        let from = utc("2026-12-01T00:00:00Z");
        let longest = |expr: &str, zone: &str| schedule(expr, zone).longest_interval(from);
        assert_eq!(longest("0 2 * * *", DEFAULT_TIME_ZONE), Some(TimeDelta::hours(24)));
        // 20:00 to 08:00 the next morning.
        assert_eq!(longest("0 8-20 * * *", DEFAULT_TIME_ZONE), Some(TimeDelta::hours(12)));
        // 31-day months: 2027-01-01 -> 2027-02-01.
        assert_eq!(longest("0 4 1 * *", DEFAULT_TIME_ZONE), Some(TimeDelta::days(31)));
        assert_eq!(longest("0 3 * * 0", DEFAULT_TIME_ZONE), Some(TimeDelta::days(7)));
        assert_eq!(longest("0 */6 * * *", DEFAULT_TIME_ZONE), Some(TimeDelta::hours(6)));
        assert_eq!(longest("30 seconds", DEFAULT_TIME_ZONE), Some(TimeDelta::seconds(30)));
        // The night clocks go back is 25 h long: 2027-11-06 02:00 EDT -> 2027-11-07 02:00 EST.
        assert_eq!(longest("0 2 * * *", NEW_YORK), Some(TimeDelta::hours(25)));
        // Every four years, found though it is more than a year away.
        assert_eq!(longest("0 0 29 2 *", "UTC"), Some(TimeDelta::days(366 + 365 * 3)));
        // Minutely: sampled, not walked for a year.
        assert_eq!(longest("* * * * *", NEW_YORK), Some(TimeDelta::minutes(1)));
    }

    #[test]
    fn cron_syntax_that_is_accepted() {
        let sunday = |expr: &str| next_runs(&schedule(expr, "UTC"), "2026-12-01T00:00:00Z", 2);
        let sundays = ["2026-12-06T03:00:00Z", "2026-12-13T03:00:00Z"];
        assert_eq!(sunday("0 3 * * 0"), sundays);
        assert_eq!(sunday("0 3 * * 7"), sundays, "7 is Sunday too");
        assert_eq!(sunday("0 3 * * sun"), sundays);
        assert_eq!(sunday("0 3 * DEC SUN"), sundays);
        assert_eq!(next_runs(&schedule("0 9 * * MON-SUN", "UTC"), "2026-12-01T00:00:00Z", 1), ["2026-12-01T09:00:00Z"]);
        assert_eq!(
            next_runs(&schedule("15,45 9-17/4 * * 1-5", "UTC"), "2026-12-01T00:00:00Z", 3),
            ["2026-12-01T09:15:00Z", "2026-12-01T09:45:00Z", "2026-12-01T13:15:00Z"]
        );
        // Both day fields restricted: either matches (12-01 is a Tuesday, 12-04 a Friday).
        assert_eq!(
            next_runs(&schedule("0 0 1,15 * 5", "UTC"), "2026-11-30T12:00:00Z", 3),
            ["2026-12-01T00:00:00Z", "2026-12-04T00:00:00Z", "2026-12-11T00:00:00Z"]
        );
        for (nickname, next) in [
            ("@hourly", "2026-12-01T01:00:00Z"),
            ("@daily", "2026-12-02T00:00:00Z"),
            ("@midnight", "2026-12-02T00:00:00Z"),
            ("@weekly", "2026-12-06T00:00:00Z"),
            ("@monthly", "2027-01-01T00:00:00Z"),
            ("@yearly", "2027-01-01T00:00:00Z"),
            ("@annually", "2027-01-01T00:00:00Z"),
        ] {
            assert_eq!(next_runs(&schedule(nickname, "UTC"), "2026-12-01T00:00:00Z", 1), [next], "{nickname}");
        }
        let s = schedule("  0 2 * * *  ", " UTC ");
        assert_eq!((s.expression(), s.time_zone()), ("0 2 * * *", "UTC"));
    }

    #[test]
    fn bad_expressions_say_what_is_wrong_and_what_is_expected() {
        assert_eq!(
            Schedule::parse("61 * * * *", "UTC").unwrap_err().to_string(),
            "bad cron expression '61 * * * *': minute 61 is out of range 0-59; expected 5 fields: minute hour \
             day-of-month month day-of-week (e.g. '0 2 * * *'), @hourly/@daily/@weekly/@monthly/@yearly, or \
             'N seconds' (N in 1-86400)"
        );
        for (expr, expected) in [
            ("0 24 * * *", "hour 24 is out of range 0-23"),
            ("0 0 32 * *", "day-of-month 32 is out of range 1-31"),
            ("0 0 0 * *", "day-of-month 0 is out of range 1-31"),
            ("0 0 * 13 *", "month 13 is out of range 1-12"),
            ("0 0 * * 8", "day-of-week 8 is out of range 0-7"),
            ("0 0-30 * * *", "hour 30 is out of range 0-23"),
            ("* * * *", "it has 4 fields"),
            ("0 0 * * * * *", "it has 7 fields, and seconds-first (Quartz) cron is not supported"),
            ("0 0 2 * * *", "it has 6 fields, and seconds-first (Quartz) cron is not supported"),
            ("", "it is empty"),
            ("every day at noon", "it has 4 fields"),
            ("a b c d e", "minute 'a' is not a number 0-59"),
            ("0 2 MON * *", "day-of-month 'MON' is not a number 1-31"),
            ("0 2 * * JAN", "day-of-week 'JAN' is not a number 0-7 or a name SUN-SAT"),
            ("0 2 * FOO *", "month 'FOO' is not a number 1-12 or a name JAN-DEC"),
            ("*/0 * * * *", "minute step 0 in '*/0' never advances"),
            ("0 20-8 * * *", "hour range '20-8' runs backwards"),
            ("0 0 * * FRI-MON", "day-of-week range 'FRI-MON' runs backwards"),
            ("0 0 30 2 *", "it matches no day of any year"),
            ("0 0 31 4,6,9,11 *", "it matches no day of any year"),
            ("@reboot", "@reboot is not a time"),
            ("@fortnightly", "'@fortnightly' is not one of @hourly"),
            ("0 seconds", "an interval of 0 seconds is out of range 1-86400"),
            ("86401 seconds", "an interval of 86401 seconds is out of range 1-86400"),
            ("every -5 seconds", "'-5' is not a whole number of seconds"),
            ("x seconds", "'x' is not a whole number of seconds"),
        ] {
            let got = reason(expr);
            assert!(got.starts_with(expected), "{expr:?}: got {got:?}, expected it to start with {expected:?}");
        }
        // What only croner checks still names the field.
        assert!(reason("0 0 * * 5#9").starts_with("day-of-week field '5#9': "), "{}", reason("0 0 * * 5#9"));
        assert!(reason("1/5 * * * *").starts_with("minute field '1/5': "), "{}", reason("1/5 * * * *"));
    }

    #[test]
    fn unknown_time_zones() {
        for zone in ["Mars/Olympus_Mons", "", "EST5EDT6"] {
            assert!(
                matches!(Schedule::parse("0 2 * * *", zone), Err(ScheduleError::UnknownTimeZone { zone: z }) if z == zone)
            );
        }
        let message = Schedule::parse("0 2 * * *", "asia/ho_chi_minh").unwrap_err().to_string();
        assert_eq!(
            message,
            "unknown time zone 'asia/ho_chi_minh' (did you mean 'Asia/Ho_Chi_Minh'?): expected an IANA name such as \
             'Asia/Ho_Chi_Minh' or 'UTC' (see pg_timezone_names)"
        );
        // The expression is checked first: its error is the one to fix first.
        assert!(matches!(Schedule::parse("61 * * * *", "Nowhere"), Err(ScheduleError::BadExpression { .. })));
    }

    #[test]
    fn default_jobs_follow_the_product_document() {
        let jobs = default_jobs(&|_| None).unwrap();
        let expected = [
            ("full", JobKind::Full, "0 2 * * *"),
            ("incremental", JobKind::Incremental, "0 8-20 * * *"),
            ("verify", JobKind::Verify, "0 3 * * 0"),
            ("cleanup", JobKind::Cleanup, "0 4 1 * *"),
            ("health", JobKind::Health, "0 */6 * * *"),
            ("restore_test", JobKind::RestoreTest, "0 5 * * 0"),
        ];
        assert_eq!(jobs.len(), expected.len());
        for (job, (name, kind, cron)) in jobs.iter().zip(expected) {
            assert_eq!(
                (job.name.as_str(), job.kind, job.cron.as_str(), job.time_zone.as_str()),
                (name, kind, cron, "Asia/Ho_Chi_Minh")
            );
            Schedule::parse(&job.cron, &job.time_zone).unwrap();
        }
    }

    #[test]
    fn default_jobs_take_overrides_from_the_environment() {
        let env = |name: &str| match name {
            "BACKUP_FULL_SCHEDULE" => Some("0 1 * * 6".to_string()),
            "BACKUP_INCREMENTAL_SCHEDULE" => Some(" 30 9-17 * * MON-FRI ".to_string()),
            "BACKUP_VERIFY_SCHEDULE" => Some("not consulted".to_string()),
            _ => None,
        };
        let jobs = default_jobs(&env).unwrap();
        let crons: Vec<&str> = jobs.iter().map(|j| j.cron.as_str()).collect();
        assert_eq!(crons, ["0 1 * * 6", "30 9-17 * * MON-FRI", "0 3 * * 0", "0 4 1 * *", "0 */6 * * *", "0 5 * * 0"]);
    }

    #[test]
    fn a_bad_override_names_its_variable_and_keeps_the_cause() {
        let env = |name: &str| (name == "BACKUP_INCREMENTAL_SCHEDULE").then(|| "0 25 * * *".to_string());
        let error = default_jobs(&env).unwrap_err();
        assert_eq!(
            error.to_string(),
            "environment variable BACKUP_INCREMENTAL_SCHEDULE does not hold a usable schedule; fix or unset it"
        );
        let cause = std::error::Error::source(&error).expect("a cause").to_string();
        assert!(cause.starts_with("bad cron expression '0 25 * * *': hour 25 is out of range 0-23"), "{cause}");
        assert!(
            matches!(error, ScheduleError::BadOverride { variable, .. } if variable == "BACKUP_INCREMENTAL_SCHEDULE")
        );
    }

    #[test]
    fn job_kinds_read_back_what_they_write() {
        for kind in JobKind::ALL {
            assert_eq!(kind.as_str().parse::<JobKind>().unwrap(), kind);
            assert_eq!(kind.to_string(), kind.as_str());
        }
        assert_eq!(
            "snapshot".parse::<JobKind>().unwrap_err().to_string(),
            "unknown job kind 'snapshot': expected one of full, incremental, verify, cleanup, health, copy"
        );
        assert!("Full".parse::<JobKind>().is_err(), "text forms are lower case, as stored");
    }
}
