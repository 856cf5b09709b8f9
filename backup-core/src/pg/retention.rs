//! Retention: which backups and WAL a repository keeps, why, and deleting the rest without
//! ever breaking a chain or the point-in-time-recovery window.
//!
//! The policy is the product document's, each window configurable ([`RetentionPolicy`]): full
//! backups 30 days, incremental backups 7 days, WAL 7 days (the PITR window), and the first full
//! backup of each calendar month (UTC) 12 months. A backup's age is counted from its start.
//! Above the windows stand rules that never give way:
//! - the newest restorable backup is kept: retention never empties a repository;
//! - the *anchor*, the newest backup consistent before the PITR window begins (`now` − WAL
//!   days), is kept: the window's first moments are restored from it. It is the very backup
//!   `restore --target-time` picks for that moment;
//! - a backup is kept while a kept incremental builds on it, so every kept chain stays whole;
//! - WAL from the anchor's start segment on is kept on every timeline, so every moment of the
//!   window stays restorable; a kept backup older than that (a monthly archive, a full backup
//!   within a full window longer than the WAL one) keeps the segments from its start to its
//!   stop, so it stays consistent, restorable to its end. Timeline history files are never
//!   deleted: they are a few bytes each, and recovery reads the history of every timeline it
//!   may cross. With no backup consistent before the window, the window starts at the oldest
//!   kept backup: WAL older than every kept backup can never be replayed.
//!
//! [`decide`] is the policy alone, a function over plain facts, unit-tested without storage;
//! [`plan`] gathers the facts from a repository and sizes what would go; [`execute`] deletes.
//! Deleting is ordered so that an interrupted run leaves a consistent repository: incrementals
//! before the backups they build on, each backup's manifest before its data (what an
//! interruption leaves is a directory without a manifest, which the next run collects), a WAL
//! segment's summary before the segment, WAL oldest first (no gap opens inside what stays).
//!
//! Leftovers of killed runs (backup directories without a manifest, uploads never committed)
//! are collected once untouched for [`STALE_AFTER`] by the real clock. An explicit `now` moves
//! the policy, never the judgement of what may still be in progress: a backup being taken by
//! another process has no manifest yet, and only its recent writes tell it from debris.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Datelike, Months, TimeDelta, Utc};
use serde::Serialize;

use super::archive::{summary_key, OWED_PREFIX};
use crate::storage::StorageErrorKind;
use super::backup::manifest::{BackupId, BackupKind, Manifest};
use super::wal::{SegmentPos, TimelineId, WalFileName};
use super::{PgRepo, PgRepoError};
use crate::config::Config;

/// How long a directory without a manifest, or an upload never committed, must have been left
/// untouched before it is taken for the debris of a killed run. A running backup writes
/// objects continuously (the largest single object takes minutes, even throttled).
pub const STALE_AFTER: Duration = Duration::from_secs(3600);

/// How long each kind of thing is kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RetentionPolicy {
    pub full_days: u32,
    pub incremental_days: u32,
    /// The point-in-time-recovery window.
    pub wal_days: u32,
    /// 0: no monthly archive.
    pub monthly_months: u32,
}

impl RetentionPolicy {
    /// The configuration's policy for its primary repository (whose own `retention_days`, if
    /// set, is its full-backup window).
    pub fn from_config(c: &Config) -> RetentionPolicy {
        let full_days = c.primary_repo().ok().and_then(|r| r.retention_days).unwrap_or(c.retention_days);
        RetentionPolicy { full_days, ..RetentionPolicy::global(c) }
    }

    fn global(c: &Config) -> RetentionPolicy {
        RetentionPolicy {
            full_days: c.retention_days,
            incremental_days: c.retention_incremental_days,
            wal_days: c.retention_wal_days,
            monthly_months: c.retention_monthly_months,
        }
    }

    /// The configuration's policy for repository `repo`: its own `retention_days`, if set, is
    /// its full-backup window; the rest is global.
    pub fn for_repo(c: &Config, repo: &crate::config::RepoConfig) -> RetentionPolicy {
        RetentionPolicy { full_days: repo.retention_days.unwrap_or(c.retention_days), ..RetentionPolicy::global(c) }
    }
}

impl fmt::Display for RetentionPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "full backups {} days, incremental backups {} days, WAL (PITR window) {} days, ", self.full_days, self.incremental_days, self.wal_days)?;
        match self.monthly_months {
            0 => f.write_str("no monthly archive"),
            m => write!(f, "first full backup of each month {m} months"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Keep,
    Delete,
}

impl Action {
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Keep => "keep",
            Action::Delete => "delete",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemKind {
    Backup,
    Wal,
    /// What no completed backup owns: data of a run that never wrote its manifest, a WAL
    /// summary whose segment is gone.
    Orphan,
}

impl ItemKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ItemKind::Backup => "backup",
            ItemKind::Wal => "wal",
            ItemKind::Orphan => "orphan",
        }
    }
}

/// One line of a plan: a backup, a range of WAL files of one timeline, or an orphan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlanItem {
    pub kind: ItemKind,
    pub name: String,
    pub action: Action,
    pub reason: String,
    /// Bytes stored. For an item to delete, what deleting it frees (its objects as listed,
    /// WAL summaries included); for a kept backup, its manifest's figure.
    pub bytes: u64,
}

/// What [`plan`] decided, and what [`execute`] needs to carry it out.
#[derive(Debug)]
pub struct Plan {
    pub now: DateTime<Utc>,
    pub policy: RetentionPolicy,
    /// `now` − WAL days: every moment from here on stays restorable.
    pub window_start: DateTime<Utc>,
    /// The backup the window's oldest moment is restored from, if one is consistent before it.
    pub anchor: Option<BackupId>,
    pub items: Vec<PlanItem>,
    segment_size: u32,
    /// Every completed backup at planning time.
    facts: HashMap<BackupId, BackupFacts>,
    /// Newest first: an incremental always goes before the backup it builds on.
    backups_to_delete: Vec<BackupId>,
    /// Oldest first.
    wal_to_delete: Vec<WalDeletion>,
    /// `backup/<id>/` prefixes.
    orphan_dirs: Vec<BackupId>,
    /// Keys of WAL summaries whose segment is gone.
    orphan_summaries: Vec<String>,
}

#[derive(Debug)]
struct WalDeletion {
    name: WalFileName,
    /// Its summary's object, if it has one.
    summary: bool,
    bytes: u64,
}

impl Plan {
    /// What carrying out the plan frees.
    pub fn bytes_to_free(&self) -> u64 {
        self.deletions().map(|i| i.bytes).sum()
    }

    pub fn deletions(&self) -> impl Iterator<Item = &PlanItem> {
        self.items.iter().filter(|i| i.action == Action::Delete)
    }
}

/// What [`execute`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ExpireReport {
    /// In the order deleted (incrementals before their parents).
    pub backups_deleted: Vec<BackupId>,
    pub wal_files_deleted: u64,
    /// Directories of backups that never completed, and WAL summaries without their segment.
    pub orphans_deleted: u64,
    pub bytes_freed: u64,
    /// Uploads a killed writer left uncommitted (not counted in `bytes_freed`: no listing
    /// sees them).
    pub uploads_aborted: u64,
    /// Deletions planned but not done, and why (the repository changed since planning).
    pub skipped: Vec<String>,
}

// ---------------------------------------------------------------------------
// The policy, over plain facts
// ---------------------------------------------------------------------------

/// What the policy needs to know of a completed backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupFacts {
    pub id: BackupId,
    pub kind: BackupKind,
    pub parent: Option<BackupId>,
    pub timeline: TimelineId,
    pub start_time: DateTime<Utc>,
    pub stop_time: DateTime<Utc>,
    /// Segment numbers (`XLogSegNo`) of the first and last WAL segment it needs to be
    /// consistent, on its timeline.
    pub start_segno: u64,
    pub stop_segno: u64,
}

impl BackupFacts {
    pub fn of(m: &Manifest, segment_size: u32) -> BackupFacts {
        let segno = |w: &WalFileName, fallback: u64| w.segment().map_or(fallback, |p| p.segno(segment_size));
        let start_segno = segno(&m.start_wal, m.start_lsn.0 / u64::from(segment_size));
        BackupFacts {
            id: m.id.clone(),
            kind: m.kind,
            parent: m.parent.clone(),
            timeline: m.timeline,
            start_time: m.start_time,
            stop_time: m.stop_time,
            start_segno,
            stop_segno: segno(&m.stop_wal, start_segno),
        }
    }
}

/// The policy's verdict on one backup or WAL file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub action: Action,
    pub reason: String,
}

/// The policy's verdicts, in the order of its inputs.
#[derive(Clone, Debug)]
pub struct Decisions {
    pub window_start: DateTime<Utc>,
    pub anchor: Option<BackupId>,
    /// The first segment number kept on every timeline; `None` when there is no backup to
    /// anchor anything (then all WAL is kept).
    pub wal_from: Option<u64>,
    pub backups: Vec<Verdict>,
    pub wal: Vec<Verdict>,
}

const HISTORY_REASON: &str = "timeline history: never expired (a few bytes; recovery reads the history of every timeline it may cross)";

fn when(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// Where a WAL file sits in the stream; `None` for a timeline history file.
fn position(name: &WalFileName) -> Option<SegmentPos> {
    match name {
        WalFileName::Segment(p) | WalFileName::Partial(p) | WalFileName::BackupHistory(p, _) => Some(*p),
        WalFileName::History(_) => None,
    }
}

/// The retention policy over `backups` (completed ones, any order) and the archived WAL
/// `wal`, at `now`. Pure: no storage, no clock.
pub fn decide(backups: &[BackupFacts], wal: &[WalFileName], segment_size: u32, policy: &RetentionPolicy, now: DateTime<Utc>) -> Decisions {
    // Id order is start order, and the order `restore` searches in: the anchor chosen here is
    // the backup a restore to the window's first moment picks.
    let mut order: Vec<&BackupFacts> = backups.iter().collect();
    order.sort_by(|a, b| a.id.cmp(&b.id));
    let days = |n: u32| TimeDelta::days(i64::from(n));
    let full_cut = now - days(policy.full_days);
    let incremental_cut = now - days(policy.incremental_days);
    let window_start = now - days(policy.wal_days);
    let monthly_cut = match policy.monthly_months {
        0 => None,
        m => Some(now.checked_sub_months(Months::new(m)).unwrap_or(DateTime::<Utc>::MIN_UTC)),
    };

    // An incremental missing an ancestor cannot be restored: never the newest or the anchor.
    let mut intact: HashSet<&BackupId> = HashSet::new();
    for b in &order {
        if b.parent.as_ref().is_none_or(|p| intact.contains(p)) {
            intact.insert(&b.id);
        }
    }

    let mut kept: BTreeMap<&BackupId, Vec<String>> = BTreeMap::new();
    let mut keep = |id, why: String| kept.entry(id).or_default().push(why);
    for b in &order {
        let (cut, n, what) = match b.kind {
            BackupKind::Full => (full_cut, policy.full_days, "full"),
            BackupKind::Incremental => (incremental_cut, policy.incremental_days, "incremental"),
        };
        if b.start_time >= cut {
            keep(&b.id, format!("within the {n}-day {what} backup window"));
        }
    }
    let mut monthly_expired: HashMap<&BackupId, String> = HashMap::new();
    if let Some(cut) = monthly_cut {
        let mut months = HashSet::new();
        for b in order.iter().filter(|b| b.kind == BackupKind::Full) {
            let month = (b.start_time.year(), b.start_time.month());
            if !months.insert(month) {
                continue;
            }
            let until = b.start_time.checked_add_months(Months::new(policy.monthly_months)).unwrap_or(DateTime::<Utc>::MAX_UTC);
            let what = format!("first full backup of {:04}-{:02}", month.0, month.1);
            if b.start_time >= cut {
                keep(&b.id, format!("{what}: monthly archive, kept until {}", when(until)));
            } else {
                monthly_expired.insert(&b.id, format!("{what}, but its {}-month archive ended {}", policy.monthly_months, when(until)));
            }
        }
    }
    if let Some(newest) = order.iter().rev().find(|b| intact.contains(&b.id)) {
        keep(&newest.id, "newest restorable backup: retention never empties the repository".into());
    }
    let anchor = order.iter().rev().find(|b| intact.contains(&b.id) && b.stop_time <= window_start).copied();
    if let Some(a) = anchor {
        keep(&a.id, format!("anchor of the {}-day PITR window: the window's oldest moment ({}) is restored from it", policy.wal_days, when(window_start)));
    }
    // Closure: a parent is older than its child, so newest first settles every chain.
    let present: HashSet<&BackupId> = order.iter().map(|b| &b.id).collect();
    for b in order.iter().rev() {
        if let Some(p) = b.parent.as_ref().filter(|p| present.contains(p)) {
            if kept.contains_key(&b.id) {
                kept.entry(p).or_default().push(format!("incremental {} builds on it", b.id));
            }
        }
    }

    let verdict_of = |b: &BackupFacts| -> Verdict {
        let broken = if intact.contains(&b.id) { "" } else { " (an ancestor is missing: it cannot be restored)" };
        if let Some(reasons) = kept.get(&b.id) {
            return Verdict { action: Action::Keep, reason: format!("{}{broken}", reasons.join("; ")) };
        }
        let (n, what) = match b.kind {
            BackupKind::Full => (policy.full_days, "full"),
            BackupKind::Incremental => (policy.incremental_days, "incremental"),
        };
        let mut reason = format!("{what} backup started {}, before the {n}-day {what} backup window", when(b.start_time));
        if let Some(m) = monthly_expired.get(&b.id) {
            reason.push_str(&format!("; {m}"));
        }
        if order.iter().any(|o| o.parent.as_ref() == Some(&b.id)) {
            reason.push_str("; no kept backup builds on it");
        }
        reason.push_str(broken);
        Verdict { action: Action::Delete, reason }
    };

    // WAL. From the anchor on (and from any kept backup after it that starts lower, on another
    // timeline), everything; before that, each kept backup's own range.
    let keeps: Vec<&BackupFacts> = order.iter().copied().filter(|b| kept.contains_key(&b.id)).collect();
    let window_backups: Vec<&BackupFacts> = match anchor {
        Some(a) => keeps.iter().copied().filter(|b| b.id >= a.id).collect(),
        None => keeps.clone(),
    };
    let first = window_backups.iter().min_by_key(|b| b.start_segno);
    let wal_from = first.map(|b| b.start_segno);
    let window_reason = first.map(|b| {
        let from = WalFileName::Segment(SegmentPos::from_segno(b.timeline, b.start_segno, segment_size));
        match anchor {
            Some(a) => format!("PITR window: every moment from {} on stays restorable (from {a}, WAL from {from} on, every timeline)", when(window_start), a = a.id),
            None => format!("PITR window: no backup is consistent before {}, so the window starts at the oldest kept backup, {} (WAL from {from} on, every timeline)", when(window_start), b.id),
        }
    });
    let wal_verdicts = wal
        .iter()
        .map(|name| {
            let Some(pos) = position(name) else {
                return Verdict { action: Action::Keep, reason: HISTORY_REASON.into() };
            };
            let segno = pos.segno(segment_size);
            let (Some(from), Some(window_reason)) = (wal_from, &window_reason) else {
                return Verdict { action: Action::Keep, reason: "no completed backup yet: all WAL is kept".into() };
            };
            if segno >= from {
                return Verdict { action: Action::Keep, reason: window_reason.clone() };
            }
            if let Some(b) = keeps.iter().find(|b| b.timeline == pos.timeline && (b.start_segno..=b.stop_segno).contains(&segno)) {
                return Verdict { action: Action::Keep, reason: format!("makes backup {} consistent (its start to stop segments)", b.id) };
            }
            let from = WalFileName::Segment(SegmentPos::from_segno(first.expect("wal_from is set").timeline, from, segment_size));
            Verdict { action: Action::Delete, reason: format!("before the PITR window (WAL from {from} on is kept) and needed by no kept backup") }
        })
        .collect();

    Decisions {
        window_start,
        anchor: anchor.map(|a| a.id.clone()),
        wal_from,
        backups: backups.iter().map(verdict_of).collect(),
        wal: wal_verdicts,
    }
}

/// One plan item per history file, and per run of WAL files of one timeline that are
/// contiguous and share their verdict. `files`: name and bytes, any order.
pub fn group_wal(files: &[(WalFileName, u64)], verdicts: &[Verdict], segment_size: u32) -> Vec<PlanItem> {
    struct Run {
        timeline: TimelineId,
        first: String,
        last: String,
        files: u64,
        last_segno: u64,
    }
    fn close(items: &mut [PlanItem], run: Option<Run>) {
        if let (Some(run), Some(item)) = (run, items.last_mut()) {
            if run.files > 1 {
                item.name = format!("{}..{} ({} files)", run.first, run.last, run.files);
            }
        }
    }
    let mut order: Vec<usize> = (0..files.len()).collect();
    // History files first on their timeline; then by position, then by name.
    order.sort_by_key(|i| {
        let name = &files[*i].0;
        (name.timeline(), position(name).map(|p| p.segno(segment_size)), name.to_string())
    });
    let mut items: Vec<PlanItem> = Vec::new();
    let mut run: Option<Run> = None;
    for i in order {
        let ((name, bytes), v) = (&files[i], &verdicts[i]);
        let segno = position(name).map(|p| p.segno(segment_size));
        if let (Some(r), Some(s), Some(item)) = (run.as_mut(), segno, items.last_mut()) {
            if r.timeline == name.timeline() && s <= r.last_segno + 1 && item.action == v.action && item.reason == v.reason {
                r.last = name.to_string();
                r.files += 1;
                r.last_segno = s;
                item.bytes += bytes;
                continue;
            }
        }
        close(&mut items, run.take());
        items.push(PlanItem { kind: ItemKind::Wal, name: name.to_string(), action: v.action, reason: v.reason.clone(), bytes: *bytes });
        run = segno.map(|s| Run { timeline: name.timeline(), first: name.to_string(), last: name.to_string(), files: 1, last_segno: s });
    }
    close(&mut items, run);
    items
}

// ---------------------------------------------------------------------------
// The repository: facts in, deletions out
// ---------------------------------------------------------------------------

/// Decide what goes, from the repository as it is now. `running`: a backup being taken now
/// (its objects are never orphans). Reads every manifest and lists the WAL archive, its
/// summaries and the data of backups it would delete (for their exact sizes).
pub fn plan(repo: &PgRepo, policy: &RetentionPolicy, now: DateTime<Utc>, running: Option<&BackupId>) -> Result<Plan, PgRepoError> {
    let seg = repo.cluster().wal_segment_size;
    let objects = repo.objects();
    let (storage, ctx) = (objects.storage(), objects.ctx());
    let inventory = repo.backups().inventory()?;
    let archived = repo.wal().list()?;
    let facts: Vec<BackupFacts> = inventory.completed.iter().map(|m| BackupFacts::of(m, seg)).collect();
    let names: Vec<WalFileName> = archived.iter().map(|w| w.name.clone()).collect();
    let mut d = decide(&facts, &names, seg, policy, now);
    // WAL owed to a best-effort repository waits here until it is copied there.
    let mut owed: HashMap<String, String> = HashMap::new();
    for note in storage.list_all(&ctx, OWED_PREFIX)? {
        if let Some((owed_to, file)) = note.key.trim_start_matches(OWED_PREFIX).split_once('/') {
            owed.insert(file.to_string(), owed_to.to_string());
        }
    }
    for (name, v) in names.iter().zip(d.wal.iter_mut()) {
        if let Some(owed_to) = owed.get(&name.to_string()).filter(|_| v.action == Action::Delete) {
            *v = Verdict { action: Action::Keep, reason: format!("owed to repository {owed_to}, which has not caught up yet") };
        }
    }

    let mut items = Vec::new();
    let mut backups_to_delete = Vec::new();
    for (m, v) in inventory.completed.iter().zip(&d.backups) {
        let bytes = match v.action {
            Action::Keep => m.stats.stored_bytes,
            Action::Delete => {
                backups_to_delete.push(m.id.clone());
                storage.list_all(&ctx, &m.id.prefix())?.iter().map(|o| o.size).sum()
            }
        };
        items.push(PlanItem { kind: ItemKind::Backup, name: m.id.to_string(), action: v.action, reason: v.reason.clone(), bytes });
    }
    backups_to_delete.sort_by(|a, b| b.cmp(a));

    // A segment's summary lives beside it and goes with it.
    let mut summaries: BTreeMap<String, (String, u64)> = BTreeMap::new();
    for o in storage.list_all(&ctx, "wal-summary/")? {
        if let Some(file) = o.key.rsplit('/').next() {
            summaries.insert(file.to_string(), (o.key.clone(), o.size));
        }
    }
    let mut files = Vec::with_capacity(archived.len());
    let mut wal_to_delete = Vec::new();
    for (w, v) in archived.iter().zip(&d.wal) {
        let summary = summaries.remove(&w.name.to_string()).filter(|(key, _)| *key == summary_key(&w.name));
        let bytes = w.stored_bytes + summary.as_ref().map_or(0, |s| s.1);
        if v.action == Action::Delete {
            wal_to_delete.push(WalDeletion { name: w.name.clone(), summary: summary.is_some(), bytes });
        }
        files.push((w.name.clone(), bytes));
    }
    wal_to_delete.sort_by_key(|w| (position(&w.name).map(|p| p.segno(seg)), w.name.timeline()));
    items.extend(group_wal(&files, &d.wal, seg));

    // What no completed backup owns.
    let mut orphan_summaries = Vec::new();
    let mut orphan_summary_bytes = 0;
    for (file, (key, size)) in &summaries {
        // Only below the window: above it, a summary may be ahead of its segment's listing.
        let below = WalFileName::parse(file).ok().and_then(|n| position(&n)).is_some_and(|p| d.wal_from.is_some_and(|from| p.segno(seg) < from));
        if below {
            orphan_summaries.push(key.clone());
            orphan_summary_bytes += size;
        }
    }
    if !orphan_summaries.is_empty() {
        let name = match orphan_summaries.len() {
            1 => format!("WAL summary without its segment ({})", orphan_summaries[0]),
            n => format!("{n} WAL summaries without their segment ({}, …)", orphan_summaries[0]),
        };
        items.push(PlanItem {
            kind: ItemKind::Orphan,
            name,
            action: Action::Delete,
            reason: "the segment they describe is no longer archived (an earlier expiry was interrupted)".into(),
            bytes: orphan_summary_bytes,
        });
    }
    let mut orphan_dirs = Vec::new();
    for name in &inventory.incomplete {
        let prefix = format!("backup/{name}/");
        let listed = storage.list_all(&ctx, &prefix)?;
        let bytes = listed.iter().map(|o| o.size).sum();
        let (action, reason) = match name.parse::<BackupId>() {
            Err(_) => (Action::Keep, "not a backup id: left alone".to_string()),
            Ok(id) if Some(&id) == running => (Action::Keep, "the backup being taken now".to_string()),
            Ok(id) => match recent_write(&listed) {
                Some(ago) => (
                    Action::Keep,
                    format!("no manifest, but written {} min ago: perhaps a backup in progress; collected once untouched for {} min", ago.as_secs() / 60, STALE_AFTER.as_secs() / 60),
                ),
                None => {
                    orphan_dirs.push(id);
                    (Action::Delete, format!("left by a backup that never completed (no manifest; untouched for {} min or more)", STALE_AFTER.as_secs() / 60))
                }
            },
        };
        items.push(PlanItem { kind: ItemKind::Orphan, name: prefix, action, reason, bytes });
    }

    Ok(Plan {
        now,
        policy: policy.clone(),
        window_start: d.window_start,
        anchor: d.anchor,
        items,
        segment_size: seg,
        facts: facts.into_iter().map(|f| (f.id.clone(), f)).collect(),
        backups_to_delete,
        wal_to_delete,
        orphan_dirs,
        orphan_summaries,
    })
}

/// How long ago the newest of `objects` was written, if within [`STALE_AFTER`]. An object
/// whose store gives no time counts as old.
fn recent_write(objects: &[crate::storage::ObjectMeta]) -> Option<Duration> {
    let now = SystemTime::now();
    objects
        .iter()
        .filter_map(|o| o.modified)
        .map(|m| now.duration_since(m).unwrap_or(Duration::ZERO))
        .min()
        .filter(|ago| *ago < STALE_AFTER)
}

/// Carry out `plan`: backups (incrementals first, each manifest first), then WAL (oldest
/// first, each summary first), then orphans, then uploads never committed. A backup that
/// completed since planning is untouched, and so is every backup it builds on.
fn is_locked(e: &PgRepoError) -> bool {
    matches!(e, PgRepoError::Repo(r) if r.storage_error().is_some_and(|s| s.kind() == StorageErrorKind::Locked))
}

pub fn execute(repo: &PgRepo, plan: &Plan) -> Result<ExpireReport, PgRepoError> {
    let objects = repo.objects();
    let (storage, ctx) = (objects.storage(), objects.ctx());
    let backups = repo.backups();
    let mut report = ExpireReport::default();

    // Backups completed since planning and the chains they build on: those stay, and so does
    // their WAL.
    let mut protected: HashMap<BackupId, BackupId> = HashMap::new();
    for id in backups.completed_ids()?.into_iter().filter(|id| !plan.facts.contains_key(id)) {
        let manifest = match backups.read_manifest(&id) {
            Ok(m) => m,
            Err(PgRepoError::UnknownBackup { .. }) => continue,
            Err(e) => return Err(e),
        };
        let mut parent = manifest.parent;
        while let Some(p) = parent {
            parent = plan.facts.get(&p).and_then(|f| f.parent.clone());
            protected.insert(p, id.clone());
        }
    }
    for id in &plan.backups_to_delete {
        if let Some(by) = protected.get(id) {
            report.skipped.push(format!("backup {id}: kept, backup {by} completed since planning and builds on it"));
            continue;
        }
        match backups.delete_one(id) {
            Ok(bytes) => {
                report.backups_deleted.push(id.clone());
                report.bytes_freed += bytes;
            }
            Err(PgRepoError::UnknownBackup { .. }) => report.skipped.push(format!("backup {id}: already gone")),
            // Its manifest goes first and is locked as long as its data: the backup is intact.
            Err(e) if is_locked(&e) => report.skipped.push(format!("backup {id}: kept, its objects are under an object lock that has not expired")),
            Err(e) => return Err(e),
        }
    }

    let needed = |name: &WalFileName| {
        let pos = position(name).expect("only positioned files are deleted");
        protected.keys().filter_map(|id| plan.facts.get(id)).any(|f| f.timeline == pos.timeline && (f.start_segno..=f.stop_segno).contains(&pos.segno(plan.segment_size)))
    };
    let (mut wal_kept, mut wal_locked) = (0, 0);
    for w in &plan.wal_to_delete {
        if needed(&w.name) {
            wal_kept += 1;
            continue;
        }
        // The summary first: a summary without its segment would be found by no later run's
        // listing of the archive; a segment without its summary is still expired next time.
        let deleted = (|| {
            if w.summary {
                storage.delete(&ctx, &summary_key(&w.name))?;
            }
            storage.delete(&ctx, &w.name.object_key())
        })();
        match deleted {
            Ok(()) => {
                report.wal_files_deleted += 1;
                report.bytes_freed += w.bytes;
            }
            Err(e) if e.kind() == StorageErrorKind::Locked => wal_locked += 1,
            Err(e) => return Err(e.into()),
        }
    }
    if wal_kept > 0 {
        report.skipped.push(format!("{wal_kept} WAL file(s): kept, backups kept since planning need them"));
    }
    if wal_locked > 0 {
        report.skipped.push(format!("{wal_locked} WAL file(s): kept, under an object lock that has not expired"));
    }

    let mut orphans_locked = 0;
    for key in &plan.orphan_summaries {
        let size = storage.head(&ctx, key)?.map_or(0, |m| m.size);
        match storage.delete(&ctx, key) {
            Ok(()) => {
                report.orphans_deleted += 1;
                report.bytes_freed += size;
            }
            Err(e) if e.kind() == StorageErrorKind::Locked => orphans_locked += 1,
            Err(e) => return Err(e.into()),
        }
    }
    for id in &plan.orphan_dirs {
        // Looked at again: it may have completed, or been written to, since planning.
        if storage.exists(&ctx, &id.manifest_key())? {
            report.skipped.push(format!("backup/{id}/: kept, it completed since planning"));
            continue;
        }
        let listed = storage.list_all(&ctx, &id.prefix())?;
        if recent_write(&listed).is_some() {
            report.skipped.push(format!("backup/{id}/: kept, written to since planning"));
            continue;
        }
        let mut locked = false;
        for o in &listed {
            match storage.delete(&ctx, &o.key) {
                Ok(()) => report.bytes_freed += o.size,
                Err(e) if e.kind() == StorageErrorKind::Locked => locked = true,
                Err(e) => return Err(e.into()),
            }
        }
        if locked {
            orphans_locked += 1;
        } else {
            report.orphans_deleted += 1;
        }
    }
    if orphans_locked > 0 {
        report.skipped.push(format!("{orphans_locked} leftover(s): kept, under an object lock that has not expired"));
    }
    // Killed writers' uploads anywhere (an orphan directory's included).
    report.uploads_aborted = storage.abort_stale_uploads(&ctx, "", STALE_AFTER)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::backup::manifest::BackupStats;
    use crate::pg::cluster::ClusterIdentity;
    use crate::pg::wal::{Lsn, SystemId};
    use crate::repo::{Encryption, Repository};
    use crate::storage::{LocalStorage, PutMode, Storage};

    const SEG: u32 = 16 << 20;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn policy(full_days: u32, incremental_days: u32, wal_days: u32, monthly_months: u32) -> RetentionPolicy {
        RetentionPolicy { full_days, incremental_days, wal_days, monthly_months }
    }

    /// A backup started at `start` (RFC 3339), ending an hour later, on `timeline`, needing
    /// segments `segs`.
    fn backup(start: &str, parent: Option<&BackupFacts>, timeline: u32, segs: (u64, u64)) -> BackupFacts {
        let start_time = t(start);
        BackupFacts {
            id: BackupId::at(start_time),
            kind: if parent.is_some() { BackupKind::Incremental } else { BackupKind::Full },
            parent: parent.map(|p| p.id.clone()),
            timeline: TimelineId(timeline),
            start_time,
            stop_time: start_time + TimeDelta::hours(1),
            start_segno: segs.0,
            stop_segno: segs.1,
        }
    }

    fn seg(timeline: u32, segno: u64) -> WalFileName {
        WalFileName::Segment(SegmentPos::from_segno(TimelineId(timeline), segno, SEG))
    }

    fn segs(timeline: u32, range: std::ops::RangeInclusive<u64>) -> Vec<WalFileName> {
        range.map(|n| seg(timeline, n)).collect()
    }

    /// Ids (and reasons) of the backups with `action`.
    fn backups_with(backups: &[BackupFacts], d: &Decisions, action: Action) -> Vec<(BackupId, String)> {
        backups.iter().zip(&d.backups).filter(|(_, v)| v.action == action).map(|(b, v)| (b.id.clone(), v.reason.clone())).collect()
    }

    fn ids(v: &[(BackupId, String)]) -> Vec<BackupId> {
        v.iter().map(|(id, _)| id.clone()).collect()
    }

    fn reason_of<'d>(backups: &[BackupFacts], d: &'d Decisions, b: &BackupFacts) -> &'d str {
        &d.backups[backups.iter().position(|x| x.id == b.id).unwrap()].reason
    }

    /// The WAL files with `action`, by name.
    fn wal_with(wal: &[WalFileName], d: &Decisions, action: Action) -> Vec<String> {
        wal.iter().zip(&d.wal).filter(|(_, v)| v.action == action).map(|(w, _)| w.to_string()).collect()
    }

    /// Invariants whatever the history: no kept backup loses an ancestor; the newest
    /// restorable backup is kept; every kept backup keeps its WAL range.
    fn assert_sound(backups: &[BackupFacts], wal: &[WalFileName], d: &Decisions) {
        let kept: HashSet<&BackupId> = backups.iter().zip(&d.backups).filter(|(_, v)| v.action == Action::Keep).map(|(b, _)| &b.id).collect();
        for b in backups.iter().filter(|b| kept.contains(&b.id)) {
            if let Some(p) = &b.parent {
                assert!(kept.contains(p) || !backups.iter().any(|x| &x.id == p), "{} kept without its parent {p}", b.id);
            }
            for (w, v) in wal.iter().zip(&d.wal) {
                if let Some(pos) = position(w).filter(|p| p.timeline == b.timeline) {
                    if (b.start_segno..=b.stop_segno).contains(&pos.segno(SEG)) {
                        assert_eq!(v.action, Action::Keep, "{w} is needed by kept backup {}", b.id);
                    }
                }
            }
        }
        if let Some(newest) = backups.iter().max_by_key(|b| &b.id) {
            assert!(kept.contains(&newest.id), "the newest backup {} must be kept", newest.id);
        }
        for (w, v) in wal.iter().zip(&d.wal) {
            if matches!(w, WalFileName::History(_)) {
                assert_eq!(v.action, Action::Keep, "{w}: history files are never deleted");
            }
        }
    }

    #[test]
    fn fulls_in_and_out_of_the_window_and_the_monthly_archive() {
        let now = t("2026-12-15T12:00:00Z");
        let history = [
            backup("2025-11-03T01:00:00Z", None, 1, (10, 11)), // first of 2025-11: more than 12 months ago
            backup("2025-12-20T01:00:00Z", None, 1, (20, 21)), // first of 2025-12: archive until 2026-12-20
            backup("2025-12-27T01:00:00Z", None, 1, (30, 31)), // second of 2025-12
            backup("2026-06-01T01:00:00Z", None, 1, (40, 41)), // first of 2026-06
            backup("2026-06-08T01:00:00Z", None, 1, (50, 51)),
            backup("2026-11-10T01:00:00Z", None, 1, (60, 61)), // first of 2026-11, and older than 30 days
            backup("2026-11-20T01:00:00Z", None, 1, (70, 71)), // within 30 days
            backup("2026-12-05T01:00:00Z", None, 1, (80, 81)), // the anchor: newest before 2026-12-08 12:00
            backup("2026-12-10T01:00:00Z", None, 1, (90, 91)),
        ];
        let wal = segs(1, 5..=95);
        let d = decide(&history, &wal, SEG, &policy(30, 7, 7, 12), now);
        assert_sound(&history, &wal, &d);
        let deleted = backups_with(&history, &d, Action::Delete);
        assert_eq!(ids(&deleted), [&history[0], &history[2], &history[4]].map(|b| b.id.clone()));
        assert!(deleted[0].1.contains("first full backup of 2025-11, but its 12-month archive ended 2026-11-03"), "{}", deleted[0].1);
        assert!(deleted[1].1.contains("before the 30-day full backup window"), "{}", deleted[1].1);
        assert!(reason_of(&history, &d, &history[1]).contains("first full backup of 2025-12: monthly archive, kept until 2026-12-20"));
        assert!(reason_of(&history, &d, &history[3]).contains("first full backup of 2026-06"));
        assert!(reason_of(&history, &d, &history[5]).starts_with("first full backup of 2026-11"));
        assert!(reason_of(&history, &d, &history[6]).contains("within the 30-day full backup window"));
        assert_eq!(d.anchor.as_ref(), Some(&history[7].id));
        assert!(reason_of(&history, &d, &history[7]).contains("anchor of the 7-day PITR window"));
        assert!(reason_of(&history, &d, &history[8]).contains("newest restorable backup"));

        // WAL: everything from the anchor's start on; before it, each kept backup's range.
        assert_eq!(d.wal_from, Some(80));
        let mut kept: Vec<u64> = vec![20, 21, 40, 41, 60, 61, 70, 71];
        kept.extend(80..=95);
        let expected: Vec<String> = kept.iter().map(|n| seg(1, *n).to_string()).collect();
        assert_eq!(wal_with(&wal, &d, Action::Keep), expected);

        // Without the monthly archive, the monthly firsts go (but not the window's fulls).
        let d = decide(&history, &wal, SEG, &policy(30, 7, 7, 0), now);
        assert_eq!(ids(&backups_with(&history, &d, Action::Delete)), history[..6].iter().map(|b| b.id.clone()).collect::<Vec<_>>());
        assert_eq!(d.wal_from, Some(80));
        assert_eq!(wal_with(&wal, &d, Action::Keep).len(), 2 + 16);
    }

    #[test]
    fn an_expired_incremental_stays_while_a_kept_one_builds_on_it() {
        let now = t("2026-12-01T00:00:00Z");
        let f1 = backup("2026-11-11T00:00:00Z", None, 1, (10, 11)); // -20 days
        let i1 = backup("2026-11-12T00:00:00Z", Some(&f1), 1, (20, 21));
        let i2 = backup("2026-11-13T00:00:00Z", Some(&i1), 1, (30, 31)); // the anchor (window: 10 days)
        let f2 = backup("2026-11-22T00:00:00Z", None, 1, (40, 41)); // -9 days
        let i3 = backup("2026-11-22T12:00:00Z", Some(&f2), 1, (50, 51)); // out of the 7 days, I5 builds on it
        let i4 = backup("2026-11-23T00:00:00Z", Some(&f2), 1, (60, 61)); // out of the 7 days, alone
        let i5 = backup("2026-11-28T00:00:00Z", Some(&i3), 1, (70, 71));
        let history = [f1.clone(), i1.clone(), i2.clone(), f2.clone(), i3.clone(), i4.clone(), i5.clone()];
        let wal = segs(1, 1..=75);
        let d = decide(&history, &wal, SEG, &policy(30, 7, 10, 0), now);
        assert_sound(&history, &wal, &d);
        let deleted = backups_with(&history, &d, Action::Delete);
        assert_eq!(ids(&deleted), std::slice::from_ref(&i4.id));
        assert!(deleted[0].1.contains("before the 7-day incremental backup window"), "{}", deleted[0].1);
        assert_eq!(reason_of(&history, &d, &i3), format!("incremental {} builds on it", i5.id));
        assert!(reason_of(&history, &d, &i1).contains(&format!("incremental {} builds on it", i2.id)));
        assert!(reason_of(&history, &d, &f2).contains("within the 30-day full backup window"));
        assert!(reason_of(&history, &d, &f2).contains(&format!("incremental {} builds on it", i3.id)));
        assert_eq!(d.anchor.as_ref(), Some(&i2.id));

        // WAL before the anchor's start: only the kept backups' own ranges.
        assert_eq!(d.wal_from, Some(30));
        let kept = wal_with(&wal, &d, Action::Keep);
        let mut expected: Vec<String> = [10, 11, 20, 21].iter().map(|n| seg(1, *n).to_string()).collect();
        expected.extend((30..=75).map(|n| seg(1, n).to_string()));
        assert_eq!(kept, expected);

        // The plan's lines: one per contiguous run sharing a verdict.
        let files: Vec<(WalFileName, u64)> = wal.iter().map(|w| (w.clone(), 100)).collect();
        let items = group_wal(&files, &d.wal, SEG);
        let lines: Vec<(&str, &str, u64)> = items.iter().map(|i| (i.action.as_str(), i.name.as_str(), i.bytes)).collect();
        assert_eq!(
            lines,
            [
                ("delete", "000000010000000000000001..000000010000000000000009 (9 files)", 900),
                ("keep", "00000001000000000000000A..00000001000000000000000B (2 files)", 200),
                ("delete", "00000001000000000000000C..000000010000000000000013 (8 files)", 800),
                ("keep", "000000010000000000000014..000000010000000000000015 (2 files)", 200),
                ("delete", "000000010000000000000016..00000001000000000000001D (8 files)", 800),
                ("keep", "00000001000000000000001E..00000001000000000000004B (46 files)", 4600),
            ]
        );
    }

    #[test]
    fn the_newest_backup_and_its_chain_outlive_every_window() {
        let f = backup("2025-01-10T00:00:00Z", None, 1, (10, 11));
        let i = backup("2025-01-11T00:00:00Z", Some(&f), 1, (20, 21));
        let older = backup("2025-01-05T00:00:00Z", None, 1, (5, 6));
        let history = [older.clone(), f.clone(), i.clone()];
        let wal = segs(1, 5..=25);
        let d = decide(&history, &wal, SEG, &policy(30, 7, 7, 12), t("2026-06-01T00:00:00Z"));
        assert_sound(&history, &wal, &d);
        assert_eq!(ids(&backups_with(&history, &d, Action::Delete)), std::slice::from_ref(&older.id));
        assert!(reason_of(&history, &d, &i).contains("newest restorable backup") && reason_of(&history, &d, &i).contains("anchor"));
        assert_eq!(reason_of(&history, &d, &f), format!("incremental {} builds on it", i.id));
        // The window from the incremental's start on; the full backup kept for it keeps its
        // own range (it stays consistent on its own: verify checks it).
        let kept: Vec<String> = segs(1, 10..=11).iter().chain(&segs(1, 20..=25)).map(ToString::to_string).collect();
        assert_eq!(wal_with(&wal, &d, Action::Keep), kept);
    }

    #[test]
    fn a_broken_chain_is_never_the_newest_nor_the_anchor() {
        let f = backup("2026-11-01T00:00:00Z", None, 1, (10, 11));
        let mut orphaned = backup("2026-11-02T00:00:00Z", Some(&f), 1, (20, 21));
        orphaned.parent = Some("backup_20261031_000000".parse().unwrap());
        let history = [f.clone(), orphaned.clone()];
        let wal = segs(1, 10..=25);
        let d = decide(&history, &wal, SEG, &policy(3, 3, 3, 0), t("2026-12-01T00:00:00Z"));
        assert_eq!(d.anchor.as_ref(), Some(&f.id));
        assert!(reason_of(&history, &d, &f).contains("newest restorable backup"));
        let deleted = backups_with(&history, &d, Action::Delete);
        assert_eq!(ids(&deleted), [orphaned.id.clone()]);
        assert!(deleted[0].1.contains("cannot be restored"), "{}", deleted[0].1);
    }

    #[test]
    fn a_backup_after_a_promotion_keeps_its_timeline_and_the_history() {
        let now = t("2026-12-01T00:00:00Z");
        // Timeline 1 up to segment 30, promoted there; timeline 2 from 30 on.
        let f1 = backup("2026-11-11T00:00:00Z", None, 1, (10, 11)); // within 30 days, before the window
        let gone = backup("2026-10-01T00:00:00Z", None, 1, (3, 4));
        let f2 = backup("2026-11-21T00:00:00Z", None, 2, (40, 41)); // the anchor
        let i2 = backup("2026-11-28T00:00:00Z", Some(&f2), 2, (45, 46));
        let history = [gone.clone(), f1.clone(), f2.clone(), i2.clone()];
        let mut wal = segs(1, 1..=29);
        wal.push(WalFileName::Partial(SegmentPos::from_segno(TimelineId(1), 30, SEG)));
        wal.push(WalFileName::History(TimelineId(2)));
        wal.push(WalFileName::BackupHistory(SegmentPos::from_segno(TimelineId(1), 10, SEG), 0x28));
        wal.push(WalFileName::BackupHistory(SegmentPos::from_segno(TimelineId(2), 40, SEG), 0x60));
        wal.extend(segs(2, 30..=50));
        let d = decide(&history, &wal, SEG, &policy(30, 7, 7, 0), now);
        assert_sound(&history, &wal, &d);
        assert_eq!(ids(&backups_with(&history, &d, Action::Delete)), std::slice::from_ref(&gone.id));
        assert_eq!(d.anchor.as_ref(), Some(&f2.id));
        let mut expected = vec!["00000001000000000000000A".to_string(), "00000001000000000000000A.00000028.backup".into(), "00000001000000000000000B".into()];
        expected.push("00000002.history".into());
        expected.push("000000020000000000000028.00000060.backup".into());
        expected.extend(segs(2, 40..=50).iter().map(ToString::to_string));
        let mut kept = wal_with(&wal, &d, Action::Keep);
        kept.sort();
        expected.sort();
        assert_eq!(kept, expected);
        let history_verdict = &d.wal[wal.iter().position(|w| matches!(w, WalFileName::History(_))).unwrap()];
        assert_eq!(history_verdict.reason, HISTORY_REASON);

        // The anchor on timeline 1, a newer backup on timeline 2 forked below the anchor's
        // start (a point-in-time restore went back): the window starts at the lower one.
        let a1 = backup("2026-11-20T00:00:00Z", None, 1, (25, 26));
        let b2 = backup("2026-11-27T00:00:00Z", None, 2, (22, 23));
        let history = [a1.clone(), b2.clone()];
        let mut wal = segs(1, 1..=28);
        wal.push(WalFileName::History(TimelineId(2)));
        wal.extend(segs(2, 20..=24));
        let d = decide(&history, &wal, SEG, &policy(30, 7, 7, 0), now);
        assert_sound(&history, &wal, &d);
        assert_eq!(d.anchor.as_ref(), Some(&a1.id));
        assert_eq!(d.wal_from, Some(22));
        let deleted: Vec<String> = segs(1, 1..=21).iter().chain(&segs(2, 20..=21)).map(ToString::to_string).collect();
        assert_eq!(wal_with(&wal, &d, Action::Delete), deleted);
    }

    #[test]
    fn nothing_goes_while_everything_is_inside_the_windows() {
        let now = t("2026-12-01T00:00:00Z");
        let f = backup("2026-11-26T00:00:00Z", None, 1, (10, 11));
        let i1 = backup("2026-11-27T00:00:00Z", Some(&f), 1, (15, 16));
        let i2 = backup("2026-11-29T00:00:00Z", Some(&i1), 1, (20, 21));
        let history = [f.clone(), i1, i2];
        let mut wal = segs(1, 10..=30);
        wal.push(WalFileName::BackupHistory(SegmentPos::from_segno(TimelineId(1), 10, SEG), 0x28));
        let d = decide(&history, &wal, SEG, &policy(30, 7, 7, 12), now);
        assert_sound(&history, &wal, &d);
        assert!(d.backups.iter().chain(&d.wal).all(|v| v.action == Action::Keep), "{d:#?}");
        assert_eq!(d.anchor, None, "no backup is consistent before the window");
        assert!(d.wal[0].reason.contains(&format!("the oldest kept backup, {}", f.id)), "{}", d.wal[0].reason);

        // No backup at all: nothing anchors anything, all WAL stays.
        let d = decide(&[], &wal, SEG, &policy(1, 1, 1, 0), now);
        assert!(d.wal.iter().all(|v| v.action == Action::Keep));
    }

    // -----------------------------------------------------------------------
    // plan and execute on a repository
    // -----------------------------------------------------------------------

    fn manifest(f: &BackupFacts) -> Manifest {
        let wal = |n| Manifest::wal_name(f.timeline, Lsn(n * u64::from(SEG) + 40), SEG, false);
        Manifest {
            format: 2,
            id: f.id.clone(),
            kind: f.kind,
            parent: f.parent.clone(),
            chain_depth: u32::from(f.parent.is_some()),
            system_identifier: SystemId(42),
            pg_version: 15,
            timeline: f.timeline,
            start_lsn: Lsn(f.start_segno * u64::from(SEG) + 40),
            stop_lsn: Lsn(f.stop_segno * u64::from(SEG) + 40),
            start_wal: wal(f.start_segno),
            stop_wal: wal(f.stop_segno),
            start_time: f.start_time,
            stop_time: f.stop_time,
            stop_next_xid: None,
            label: String::new(),
            backup_label: String::new(),
            tablespace_map: None,
            tablespaces: Vec::new(),
            directories: Vec::new(),
            files: Vec::new(),
            page_checksum_failures: Vec::new(),
            stats: BackupStats { stored_bytes: 1000, ..Default::default() },
            data_checksums: None,
            incremental: None,
        }
    }

    /// Set the modification time of every file under `dir` two hours back.
    fn age(dir: &std::path::Path) {
        let old = SystemTime::now() - Duration::from_secs(7200);
        let secs = old.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as libc::time_t;
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str())).unwrap();
                let times = [libc::timespec { tv_sec: secs, tv_nsec: 0 }, libc::timespec { tv_sec: secs, tv_nsec: 0 }];
                // SAFETY: a valid C path and two timespecs, as utimensat expects.
                assert_eq!(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) }, 0);
            }
        }
    }

    fn total_bytes(store: &LocalStorage) -> u64 {
        store.list_all(&crate::storage::Ctx::background(), "").unwrap().iter().map(|o| o.size).sum()
    }

    #[test]
    fn plan_and_execute_on_a_repository() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let store = LocalStorage::new(&root);
        let cluster = ClusterIdentity { system_id: SystemId(42), pg_version: 15, wal_segment_size: SEG };
        PgRepo::init(&store, &cluster, Encryption::None).unwrap();
        let objects = Repository::open_with(Box::new(LocalStorage::new(&root)), None, crate::codec::Compression::None).unwrap();
        let repo = PgRepo::from_repository(objects).unwrap();
        let ctx = crate::storage::Ctx::background();

        let f1 = backup("2026-10-01T00:00:00Z", None, 1, (2, 3));
        let i1 = backup("2026-10-02T00:00:00Z", Some(&f1), 1, (4, 5));
        let f2 = backup("2026-11-20T00:00:00Z", None, 1, (8, 9)); // the anchor
        for b in [&f1, &i1, &f2] {
            store.put(&ctx, &format!("{}data/000001", b.id.prefix()), &[7u8; 5000], PutMode::IfAbsent).unwrap();
            repo.backups().write_manifest(&manifest(b)).unwrap();
        }
        for n in 1..=10 {
            let name = seg(1, n);
            store.put(&ctx, &name.object_key(), &[1u8; 300], PutMode::IfAbsent).unwrap();
            store.put(&ctx, &summary_key(&name), &[2u8; 30], PutMode::IfAbsent).unwrap();
        }
        let history = b"1\t0/5000000\tno recovery target specified\n";
        store.put(&ctx, &WalFileName::History(TimelineId(2)).object_key(), history, PutMode::IfAbsent).unwrap();
        // Debris: a killed run's data, a summary whose segment an interrupted run removed.
        store.put(&ctx, "backup/backup_20261005_000000/data/000001", &[3u8; 700], PutMode::IfAbsent).unwrap();
        store.put(&ctx, &summary_key(&seg(1, 0)), &[2u8; 30], PutMode::IfAbsent).unwrap();
        age(&root);
        // A directory being written right now, and one of the backup named as running.
        store.put(&ctx, "backup/backup_20261201_000000/data/000001", &[3u8; 100], PutMode::IfAbsent).unwrap();
        store.put(&ctx, "backup/backup_20261201_000500/data/000001", &[3u8; 100], PutMode::IfAbsent).unwrap();
        let running: BackupId = "backup_20261201_000500".parse().unwrap();

        let now = t("2026-12-01T00:00:00Z");
        let before = total_bytes(&store);
        let plan = plan(&repo, &policy(30, 7, 7, 0), now, Some(&running)).unwrap();
        let lines: Vec<(&str, &str, &str, u64)> = plan.items.iter().map(|i| (i.action.as_str(), i.kind.as_str(), i.name.as_str(), i.bytes)).collect();
        assert_eq!(
            lines,
            [
                ("delete", "backup", f1.id.as_str(), 5000 + store.head(&ctx, &f1.id.manifest_key()).unwrap().unwrap().size),
                ("delete", "backup", i1.id.as_str(), 5000 + store.head(&ctx, &i1.id.manifest_key()).unwrap().unwrap().size),
                ("keep", "backup", f2.id.as_str(), 1000),
                ("delete", "wal", "000000010000000000000001..000000010000000000000007 (7 files)", 7 * 330),
                ("keep", "wal", "000000010000000000000008..00000001000000000000000A (3 files)", 3 * 330),
                ("keep", "wal", "00000002.history", history.len() as u64),
                ("delete", "orphan", "WAL summary without its segment (wal-summary/0000000100000000/000000010000000000000000)", 30),
                ("delete", "orphan", "backup/backup_20261005_000000/", 700),
                ("keep", "orphan", "backup/backup_20261201_000000/", 100),
                ("keep", "orphan", "backup/backup_20261201_000500/", 100),
            ]
        );
        assert_eq!(plan.anchor.as_ref(), Some(&f2.id));
        assert!(plan.items[8].reason.contains("perhaps a backup in progress"), "{}", plan.items[8].reason);
        assert_eq!(plan.items[9].reason, "the backup being taken now");
        let to_free = plan.bytes_to_free();

        // A backup completed since planning, on a backup the plan deletes: it stays, and so
        // do its ancestors and their WAL.
        let late = backup("2026-11-30T00:00:00Z", Some(&i1), 1, (9, 9));
        repo.backups().write_manifest(&manifest(&late)).unwrap();
        let late_bytes = store.head(&ctx, &late.id.manifest_key()).unwrap().unwrap().size;
        let report = execute(&repo, &plan).unwrap();
        assert!(report.backups_deleted.is_empty(), "{report:?}");
        assert_eq!(report.skipped.len(), 3, "{report:?}");
        assert!(report.skipped[0].contains(&format!("backup {} completed since planning", late.id)), "{report:?}");
        assert!(report.skipped[2].starts_with("4 WAL file(s): kept"), "{report:?}");
        assert_eq!((report.wal_files_deleted, report.orphans_deleted), (3, 2));
        let backup_bytes = plan.items[0].bytes + plan.items[1].bytes;
        assert_eq!(report.bytes_freed, to_free - backup_bytes - 4 * 330);
        assert_eq!(total_bytes(&store), before + late_bytes - report.bytes_freed, "what is freed is what the listing lost");
        assert!(!store.exists(&ctx, &summary_key(&seg(1, 7))).unwrap() && !store.exists(&ctx, &seg(1, 7).object_key()).unwrap());
        assert!(store.exists(&ctx, &summary_key(&seg(1, 8))).unwrap() && store.exists(&ctx, &seg(1, 5).object_key()).unwrap());

        // The late backup gone, and a deletion of i1 interrupted after its manifest (as
        // delete_one goes): the next run deletes the rest of the chain and collects i1's data.
        repo.backups().delete_one(&late.id).unwrap();
        store.delete(&ctx, &i1.id.manifest_key()).unwrap();
        let plan = super::plan(&repo, &policy(30, 7, 7, 0), now, Some(&running)).unwrap();
        let gone: Vec<(&str, &str)> = plan.deletions().map(|i| (i.kind.as_str(), i.name.as_str())).collect();
        let i1_dir = format!("backup/{}/", i1.id);
        assert_eq!(gone, [("backup", f1.id.as_str()), ("wal", "000000010000000000000002..000000010000000000000005 (4 files)"), ("orphan", i1_dir.as_str())]);
        let report = execute(&repo, &plan).unwrap();
        assert_eq!(report.backups_deleted, std::slice::from_ref(&f1.id), "{report:?}");
        assert_eq!((report.wal_files_deleted, report.orphans_deleted, report.skipped.len()), (4, 1, 0), "{report:?}");
        assert!(store.list_all(&ctx, &i1.id.prefix()).unwrap().is_empty());
        let plan = super::plan(&repo, &policy(30, 7, 7, 0), now, Some(&running)).unwrap();
        assert_eq!(plan.bytes_to_free(), 0, "nothing left to do: {plan:#?}");
        assert_eq!(plan.anchor.as_ref(), Some(&f2.id));
    }

    /// Under an object lock nothing can be deleted before its date: expiry keeps going, skips
    /// what is locked and says so. And WAL owed to a best-effort repository stays.
    #[test]
    fn locked_objects_are_skipped_and_owed_wal_is_kept() {
        use crate::storage::unreliable::{Fault, Op, UnreliableStorage};
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let store = LocalStorage::new(&root);
        let cluster = ClusterIdentity { system_id: SystemId(42), pg_version: 15, wal_segment_size: SEG };
        PgRepo::init(&store, &cluster, Encryption::None).unwrap();
        let unreliable = std::sync::Arc::new(UnreliableStorage::new(Box::new(LocalStorage::new(&root))));
        let objects = Repository::open_with(Box::new(unreliable.clone()), None, crate::codec::Compression::None).unwrap();
        let repo = PgRepo::from_repository(objects).unwrap();
        let ctx = crate::storage::Ctx::background();
        let f1 = backup("2026-10-01T00:00:00Z", None, 1, (2, 3));
        let f2 = backup("2026-11-20T00:00:00Z", None, 1, (8, 9));
        for b in [&f1, &f2] {
            store.put(&ctx, &format!("{}data/000001", b.id.prefix()), &[7u8; 500], PutMode::IfAbsent).unwrap();
            repo.backups().write_manifest(&manifest(b)).unwrap();
        }
        for n in 1..=10 {
            store.put(&ctx, &seg(1, n).object_key(), &[1u8; 300], PutMode::IfAbsent).unwrap();
        }
        store.put(&ctx, &super::super::archive::owed_key("offsite", &seg(1, 4)), b"{}", PutMode::IfAbsent).unwrap();
        let now = t("2026-12-01T00:00:00Z");
        let plan = plan(&repo, &policy(30, 7, 7, 0), now, None).unwrap();
        let owed = plan.items.iter().find(|i| i.name.contains("000000010000000000000004")).expect("segment 4 listed");
        assert_eq!(owed.action, Action::Keep, "{owed:?}");
        assert!(owed.reason.contains("owed to repository offsite"), "{owed:?}");

        for locked in ["backup/", "wal/"] {
            unreliable.inject(Fault::always(Op::Delete, locked, StorageErrorKind::Locked));
        }
        let report = execute(&repo, &plan).unwrap();
        assert!(report.backups_deleted.is_empty() && report.wal_files_deleted == 0, "{report:?}");
        assert!(report.skipped.iter().any(|s| s.contains(&format!("backup {}: kept", f1.id)) && s.contains("object lock")), "{report:?}");
        assert!(report.skipped.iter().any(|s| s.contains("WAL file(s): kept, under an object lock")), "{report:?}");
        assert!(repo.backups().read_manifest(&f1.id).is_ok(), "the locked backup is still whole");

        unreliable.heal();
        let report = execute(&repo, &plan).unwrap();
        assert_eq!(report.backups_deleted, std::slice::from_ref(&f1.id), "{report:?}");
        assert!(store.exists(&ctx, &seg(1, 4).object_key()).unwrap(), "owed WAL was deleted");
        assert!(!store.exists(&ctx, &seg(1, 3).object_key()).unwrap(), "expired WAL was kept");
    }
}
