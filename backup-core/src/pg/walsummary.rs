//! Block-reference summaries of PostgreSQL 15 WAL segments, for block-level incremental backups.
//!
//! When `archive_command` pushes a segment we also decode it and keep, beside it, the set of
//! relation blocks its records name ([`summarize_segment`]). An incremental backup later unions
//! the summaries of the segments between its parent's start and its own start
//! ([`changed_between`]) and copies exactly those blocks of each relation file the union
//! vouches for; every other relation file is copied or scanned whole.
//!
//! Why block references are enough: every change to a WAL-logged relation page is replayed from
//! a record that names the page (`XLogRecordBlockHeader`). The exceptions, which change relation
//! files without naming blocks, are what [`ChangedBlocks::is_vouched`] refuses:
//! - `XLOG_SMGR_CREATE` and `XLOG_SMGR_TRUNCATE`: a fork appears, or shrinks;
//! - transaction commit and abort records that unlink relations (`DROP`, the old file of a
//!   `TRUNCATE`, a `CREATE` rolled back). PostgreSQL flags them `XLR_SPECIAL_REL_UPDATE` too, so
//!   they must be understood rather than treated as unknown (which would refuse everything
//!   after any `DROP TABLE`); we list the relations so that a file number reused later is never
//!   taken for the old relation;
//! - `XLOG_DBASE_CREATE_FILE_COPY` copies a whole database directory at file level;
//!   `XLOG_DBASE_CREATE_WAL_LOG` and `XLOG_DBASE_DROP` create or remove one. We refuse the
//!   whole database for all three: a database dropped and re-created under the same OID would
//!   otherwise look untouched;
//! - `XLOG_PARAMETER_CHANGE` to `wal_level = minimal`: from then on new relation files are
//!   filled without WAL (`COPY` into a table created in the same transaction, index builds),
//!   so nothing can be vouched for;
//! - any other record flagged `XLR_SPECIAL_REL_UPDATE` ("modifies relation files in ways not
//!   covered by block references"), e.g. from an extension's custom resource manager: we cannot
//!   tell which relation, so again nothing is vouched for;
//! - the free space map is never vouched for: it is updated without WAL (PostgreSQL's own
//!   incremental backup skips it for the same reason).
//!
//! Records that change files *outside* relation storage need no flag, because those files are
//! always copied whole: `RM_RELMAP_ID` (`pg_filenode.map`), the SLRUs (`pg_xact`,
//! `pg_multixact`, `pg_commit_ts`), `XLOG_HEAP2_REWRITE` (`pg_logical/mappings`), two-phase
//! state files, `RM_TBLSPC_ID` (a tablespace directory and its symlink: the relation files in it
//! are created by `XLOG_SMGR_CREATE` records).
//!
//! The consumer must take each file's *length* from the data directory it copies, not from the
//! parent: a dropped relation leaves an empty first segment until the next checkpoint, and
//! relation extension writes zero pages that no record names yet. Unlogged relations' main
//! forks are created without WAL; base backups leave them out anyway.
//!
//! A summary covers the records that *start* in its segment. A record that starts in one
//! segment and ends in the next is kept as raw bytes ([`PendingRecord`], the segment's `tail`);
//! the next segment keeps the first bytes of that continuation ([`Continuation`], its `head`);
//! [`changed_between`] stitches the two, checks the record's CRC across the seam and decodes it.
//!
//! Layouts follow PostgreSQL 15 (`access/xlogrecord.h`, `access/xlog_internal.h`,
//! `xlogreader.c`), in the server's native byte order: summaries are made on the server's host
//! by `archive_command`, and [`xlog_page_magic`] refuses WAL of another version.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::wal::{xlog_page_magic, LongPageHeader, Lsn, SegmentPos, SystemId, TimelineId, WalFileName, LONG_PAGE_HEADER_LEN};

/// Version of [`SegmentSummary::to_bytes`]; bump it when the meaning of a field changes.
pub const SUMMARY_FORMAT: u32 = 1;

/// Blocks per relation segment file (`RELSEG_SIZE` of a default build: 1 GB of 8 kB pages).
pub const RELSEG_BLOCKS: u32 = 131_072;

/// `pg_default` and `pg_global`.
pub const DEFAULT_TABLESPACE: u32 = 1663;
pub const GLOBAL_TABLESPACE: u32 = 1664;

/// How much of a split record's beginning, and of a segment's leading continuation, a summary
/// keeps. The part we decode, the record header and its block headers, is under 1 kB (33 block
/// headers of at most 27 bytes); the rest only matters for the small records whose main data we
/// read (smgr, dbase, restore points), which fit whole.
const PIECE_CAP: usize = 8192;

const XLOG_BLCKSZ: usize = 8192;
/// Relation page size, needed to infer the hole of an uncompressed full-page image.
const BLCKSZ: u32 = 8192;
const SHORT_PAGE_HEADER_LEN: usize = 24;

const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
const XLP_LONG_HEADER: u16 = 0x0002;
const XLP_FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;
const XLP_ALL_FLAGS: u16 = 0x000F;

/// `SizeOfXLogRecord`; `xl_crc` is its last field.
const RECORD_HEADER_LEN: usize = 24;
const CRC_OFFSET: usize = 20;
/// PostgreSQL 15 allocates a record in one palloc: it cannot reach 1 GB.
const MAX_RECORD_LEN: u32 = 0x3FFF_FFFF;

const XLR_RMGR_INFO_MASK: u8 = 0xF0;
const XLR_SPECIAL_REL_UPDATE: u8 = 0x01;

const XLR_MAX_BLOCK_ID: u8 = 32;
const XLR_BLOCK_ID_DATA_SHORT: u8 = 255;
const XLR_BLOCK_ID_DATA_LONG: u8 = 254;
const XLR_BLOCK_ID_ORIGIN: u8 = 253;
const XLR_BLOCK_ID_TOPLEVEL_XID: u8 = 252;

const BKPBLOCK_FORK_MASK: u8 = 0x0F;
const BKPBLOCK_HAS_IMAGE: u8 = 0x10;
const BKPBLOCK_HAS_DATA: u8 = 0x20;
const BKPBLOCK_SAME_REL: u8 = 0x80;

const BKPIMAGE_HAS_HOLE: u8 = 0x01;
/// PostgreSQL 15 names the method; 14 had a single `BKPIMAGE_IS_COMPRESSED` at 0x02, which 15
/// reuses for `BKPIMAGE_APPLY`.
const BKPIMAGE_COMPRESSED: u8 = 0x04 | 0x08 | 0x10;

const RM_XLOG_ID: u8 = 0;
const RM_XACT_ID: u8 = 1;
const RM_SMGR_ID: u8 = 2;
const RM_DBASE_ID: u8 = 4;
/// `RM_LOGICALMSG_ID`, the last built-in resource manager of PostgreSQL 15.
const RM_MAX_BUILTIN_ID: u8 = 21;
/// PostgreSQL 15 lets extensions register resource managers 128..=255.
const RM_MIN_CUSTOM_ID: u8 = 128;

const XLOG_SWITCH: u8 = 0x40;
const XLOG_PARAMETER_CHANGE: u8 = 0x60;
const XLOG_RESTORE_POINT: u8 = 0x70;
const XLOG_SMGR_CREATE: u8 = 0x10;
const XLOG_SMGR_TRUNCATE: u8 = 0x20;
const XLOG_DBASE_CREATE_FILE_COPY: u8 = 0x00;
const XLOG_DBASE_CREATE_WAL_LOG: u8 = 0x10;
const XLOG_DBASE_DROP: u8 = 0x20;
const XLOG_XACT_COMMIT: u8 = 0x00;
const XLOG_XACT_ABORT: u8 = 0x20;
const XLOG_XACT_COMMIT_PREPARED: u8 = 0x30;
const XLOG_XACT_ABORT_PREPARED: u8 = 0x40;
const XLOG_XACT_OPMASK: u8 = 0x70;
const XLOG_XACT_HAS_INFO: u8 = 0x80;
const XACT_XINFO_HAS_DBINFO: u32 = 1 << 0;
const XACT_XINFO_HAS_SUBXACTS: u32 = 1 << 1;
const XACT_XINFO_HAS_RELFILENODES: u32 = 1 << 2;

/// `offsetof(xl_parameter_change, wal_level)`: after five `int`s.
const PARAMETER_CHANGE_WAL_LEVEL: usize = 20;
const WAL_LEVEL_MINIMAL: i32 = 0;
/// `MAXFNAMELEN`, the size of `xl_restore_point.rp_name`.
const RESTORE_POINT_NAME_LEN: usize = 64;
/// Seconds from the Unix epoch to PostgreSQL's (2000-01-01 00:00 UTC).
const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;

// ---------------------------------------------------------------------------------------------
// Relations and forks
// ---------------------------------------------------------------------------------------------

/// A relation's physical identity (`RelFileNode`): tablespace, database (0 for shared
/// relations) and file number. Printed as PostgreSQL prints it, `1663/5/16384`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelFileNode {
    pub spc: u32,
    pub db: u32,
    pub rel: u32,
}

impl fmt::Display for RelFileNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.spc, self.db, self.rel)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("'{0}' is not a relation file node (expected tablespace/database/relation, e.g. 1663/5/16384)")]
pub struct BadRelFileNode(String);

impl FromStr for RelFileNode {
    type Err = BadRelFileNode;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split('/').map(str::parse::<u32>);
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(Ok(spc)), Some(Ok(db)), Some(Ok(rel)), None) => Ok(RelFileNode { spc, db, rel }),
            _ => Err(BadRelFileNode(s.to_string())),
        }
    }
}

crate::serde_as_string!(RelFileNode);

/// A relation fork (`ForkNumber`); each is a separate file (`16384`, `16384_fsm`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fork {
    Main = 0,
    Fsm = 1,
    Vm = 2,
    Init = 3,
}

impl Fork {
    pub fn from_number(n: u8) -> Option<Fork> {
        match n {
            0 => Some(Fork::Main),
            1 => Some(Fork::Fsm),
            2 => Some(Fork::Vm),
            3 => Some(Fork::Init),
            _ => None,
        }
    }

    pub fn number(self) -> u8 {
        self as u8
    }

    /// The name pg_waldump prints (`forkNames[]`).
    pub fn name(self) -> &'static str {
        match self {
            Fork::Main => "main",
            Fork::Fsm => "fsm",
            Fork::Vm => "vm",
            Fork::Init => "init",
        }
    }

    /// What follows the relation number in the file name.
    pub fn file_suffix(self) -> &'static str {
        match self {
            Fork::Main => "",
            Fork::Fsm => "_fsm",
            Fork::Vm => "_vm",
            Fork::Init => "_init",
        }
    }
}

impl fmt::Display for Fork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One file of a relation in a data directory: the fork and the 1 GB segment of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelationFile {
    pub rel: RelFileNode,
    pub fork: Fork,
    pub segno: u32,
}

impl RelationFile {
    /// Recognise a relation file from its path relative to the data directory:
    /// `base/<db>/<rel>[_fsm|_vm|_init][.<seg>]`, `global/<rel>...` and
    /// `pg_tblspc/<spc>/PG_15_<catversion>/<db>/<rel>...`. Anything else (`pg_filenode.map`,
    /// `PG_VERSION`, temporary relations `t3_16384`, other versions' tablespace directories) is
    /// not a relation file and gets `None`: the caller copies such files whole.
    pub fn parse(path: &str) -> Option<RelationFile> {
        let parts: Vec<&str> = path.split('/').collect();
        let (spc, db, file) = match parts.as_slice() {
            ["base", db, file] => (DEFAULT_TABLESPACE, oid(db)?, *file),
            ["global", file] => (GLOBAL_TABLESPACE, 0, *file),
            ["pg_tblspc", spc, version, db, file] => {
                let catversion = version.strip_prefix("PG_15_")?;
                if catversion.is_empty() || !catversion.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                (oid(spc)?, oid(db)?, *file)
            }
            _ => return None,
        };
        let (stem, segno) = match file.split_once('.') {
            // Segment 0 has no suffix; PostgreSQL never writes `.0`.
            Some((stem, seg)) => (stem, oid(seg)?),
            None => (file, 0),
        };
        let (number, fork) = match stem.split_once('_') {
            None => (stem, Fork::Main),
            Some((number, "fsm")) => (number, Fork::Fsm),
            Some((number, "vm")) => (number, Fork::Vm),
            Some((number, "init")) => (number, Fork::Init),
            Some(_) => return None,
        };
        Some(RelationFile { rel: RelFileNode { spc, db, rel: oid(number)? }, fork, segno })
    }

    /// The relation-wide block numbers this file holds, `[first, end)`; WAL names blocks
    /// relation-wide.
    pub fn block_span(&self) -> (u64, u64) {
        let first = u64::from(self.segno) * u64::from(RELSEG_BLOCKS);
        (first, first + u64::from(RELSEG_BLOCKS))
    }
}

/// An OID as PostgreSQL writes it in a path: decimal, no leading zero, not 0.
fn oid(s: &str) -> Option<u32> {
    if s.is_empty() || s.starts_with('0') || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// What a summary records
// ---------------------------------------------------------------------------------------------

/// Consecutive blocks `[start, end)` of one fork named by records of one segment, with the
/// offsets (from the segment start) of the first and the last record naming any of them.
///
/// Adjacent blocks always merge into one run, so `first`/`last` bound the run as a whole: a
/// range boundary that falls inside a segment may count a few blocks whose records lie just
/// outside the range. Counting too much only copies a block the parent already had; counting
/// too little would lose a change, which the bounds never do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "[u32; 4]", into = "[u32; 4]")]
pub struct BlockRun {
    pub start: u32,
    pub end: u32,
    pub first: u32,
    pub last: u32,
}

impl TryFrom<[u32; 4]> for BlockRun {
    type Error = String;
    fn try_from([start, end, first, last]: [u32; 4]) -> Result<Self, Self::Error> {
        if start >= end || first > last {
            return Err(format!("block run [{start}, {end}) at offsets {first}..{last} is empty or reversed"));
        }
        Ok(BlockRun { start, end, first, last })
    }
}

impl From<BlockRun> for [u32; 4] {
    fn from(r: BlockRun) -> [u32; 4] {
        [r.start, r.end, r.first, r.last]
    }
}

/// Consecutive block numbers `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlockRange {
    pub start: u32,
    pub end: u32,
}

impl BlockRange {
    pub fn len(&self) -> u32 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start >= self.end
    }

    pub fn contains(&self, block: u32) -> bool {
        self.start <= block && block < self.end
    }
}

/// A relation fork created or truncated without block references.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelationEvent {
    pub rel: RelFileNode,
    /// Start of the record.
    pub lsn: Lsn,
    pub change: RelationChange,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RelationChange {
    /// `XLOG_SMGR_CREATE`.
    Created { fork: Fork },
    /// `XLOG_SMGR_TRUNCATE` to `blocks` blocks; `flags` says which forks (`SMGR_TRUNCATE_HEAP`
    /// 1, `_VM` 2, `_FSM` 4).
    Truncated { blocks: u32, flags: u32 },
    /// Unlinked at the end of a transaction (commit of DROP/TRUNCATE, abort of a CREATE), all
    /// forks. Its number may be reused by a later relation.
    Dropped,
}

/// A database directory created or removed at file level.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseEvent {
    pub spc: u32,
    pub db: u32,
    pub lsn: Lsn,
    pub change: DatabaseChange,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DatabaseChange {
    /// `CREATE DATABASE ... STRATEGY file_copy`: a directory copy nothing in WAL describes.
    CopiedFrom {
        src_spc: u32,
        src_db: u32,
    },
    /// `CREATE DATABASE ... STRATEGY wal_log`: the blocks follow as records, but the files are
    /// new to any earlier backup.
    Created,
    Dropped,
}

/// Something after which no relation can be vouched for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterEvent {
    pub lsn: Lsn,
    pub change: ClusterChange,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ClusterChange {
    /// The server restarted with `wal_level = minimal`.
    WalLevelMinimal,
    /// A record we do not know says it changes relation files beyond its block references.
    UnknownRelationUpdate { rmid: u8, info: u8 },
    /// A record split across segments whose main data was beyond the bytes we keep of it.
    Unreadable { detail: String },
}

/// A named restore point (`pg_create_restore_point`), a `recovery_target_name`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestorePoint {
    pub name: String,
    /// Start of the record: where pg_waldump lists it.
    pub lsn: Lsn,
    /// End of the record, aligned: what `pg_create_restore_point()` returns.
    pub end: Lsn,
    pub time: DateTime<Utc>,
}

/// Why decoding a segment stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WalEnd {
    /// Every record starting in the segment was read (the last may continue in the next).
    SegmentEnd,
    /// An `XLOG_SWITCH` record: the rest of the segment is unused.
    Switch { lsn: Lsn },
    /// The next record starts at or after the `stop_at` asked for.
    StopAt { lsn: Lsn },
    /// No valid record at `lsn`: the end of the written WAL of a partial segment, or damage.
    Invalid { lsn: Lsn, reason: String },
}

/// The first bytes of the record a segment starts in the middle of (`xlp_rem_len` of its first
/// page), for [`changed_between`] to finish a previous segment's [`PendingRecord`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Continuation {
    /// `xlp_rem_len` of the first page: bytes of the record still to come. 0: the segment
    /// starts with a record.
    pub rem_len: u32,
    /// How many of them this segment holds.
    pub len: u32,
    /// The first of them, at most 8 kB.
    #[serde(with = "base64_bytes")]
    pub bytes: Vec<u8>,
    /// CRC-32C register over all `len` bytes, started from 0 (so that a split record's CRC can be finished from parts).
    pub crc: u32,
    /// `XLP_FIRST_IS_OVERWRITE_CONTRECORD`: after a crash the rest of that record was never
    /// written; WAL went on with other records, and the broken one never took effect.
    pub aborted: bool,
}

/// The beginning of a record that starts in this segment and ends in a later one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRecord {
    pub lsn: Lsn,
    /// `xl_tot_len`.
    pub total_len: u32,
    /// How many of its bytes this segment holds.
    pub len: u32,
    /// The first of them, at most 8 kB.
    #[serde(with = "base64_bytes")]
    pub bytes: Vec<u8>,
    /// CRC-32C register (pre-inverted, not finished) over the record's bytes after its header,
    /// as far as this segment holds them.
    pub crc: u32,
}

/// Per fork, the blocks a segment's records name.
pub type SegmentBlocks = BTreeMap<(RelFileNode, Fork), Vec<BlockRun>>;

/// What one WAL segment says about relation blocks. Made by [`summarize_segment`], stored
/// beside the segment, unioned by [`changed_between`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentSummary {
    pub timeline: TimelineId,
    /// The segment's first LSN.
    pub start: Lsn,
    pub segment_size: u32,
    /// From the segment's long page header; `None` when not even the first page is valid WAL.
    pub system_id: Option<SystemId>,
    /// Every record starting before this LSN (and in this segment) is in the summary. The
    /// segment's end unless [`WalEnd::StopAt`] or [`WalEnd::Invalid`].
    pub covered_end: Lsn,
    /// End of the last complete record decoded (or of the leading continuation, or the
    /// segment start): the WAL found valid ends here.
    pub valid_end: Lsn,
    pub end: WalEnd,
    /// Start of the first record starting in the segment, and that record's `xl_prev`, which
    /// must be the start of the last record before it: how [`changed_between`] checks that two
    /// summaries belong to one WAL history.
    pub first_record: Option<Lsn>,
    pub first_prev: Option<Lsn>,
    /// Start of the last record starting in the segment (the pending one, if any).
    pub last_record: Option<Lsn>,
    /// Complete records decoded.
    pub records: u64,
    /// Records abandoned half-written by a crash (`XLP_FIRST_IS_OVERWRITE_CONTRECORD`).
    pub aborted: Vec<Lsn>,
    #[serde(with = "block_map")]
    pub blocks: SegmentBlocks,
    pub unsafe_relations: Vec<RelationEvent>,
    pub unsafe_databases: Vec<DatabaseEvent>,
    pub unsafe_cluster: Vec<ClusterEvent>,
    pub restore_points: Vec<RestorePoint>,
    pub head: Continuation,
    pub tail: Option<PendingRecord>,
}

impl SegmentSummary {
    /// The first LSN after the segment.
    pub fn end_lsn(&self) -> Lsn {
        Lsn(self.start.0 + u64::from(self.segment_size))
    }

    /// The summary leaves out records that start in the segment (WAL still being written, or
    /// `stop_at`).
    pub fn is_partial(&self) -> bool {
        self.covered_end < self.end_lsn()
    }

    /// Where the continuation the segment starts with ends: the end of a record stitched
    /// from the previous segment.
    fn head_end(&self) -> Lsn {
        // Page headers interleave with the continuation: walk them.
        let mut pos = LONG_PAGE_HEADER_LEN as u64;
        let mut left = u64::from(self.head.len);
        loop {
            let room = XLOG_BLCKSZ as u64 - pos % XLOG_BLCKSZ as u64;
            if left <= room {
                return Lsn(self.start.0 + pos + left);
            }
            left -= room;
            pos += room + SHORT_PAGE_HEADER_LEN as u64;
        }
    }

    pub fn file_name(&self) -> WalFileName {
        WalFileName::Segment(segment_pos(self.timeline, self.start, self.segment_size))
    }

    /// Compact JSON; the repository codec compresses it.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&StoredSummary { format: SUMMARY_FORMAT, summary: self }).expect("a summary serializes to JSON")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<SegmentSummary, SummaryError> {
        // Read the version first, so that a newer format is reported as such rather than as
        // whatever field it happens to fail on.
        #[derive(Deserialize)]
        struct Version {
            format: u32,
        }
        #[derive(Deserialize)]
        struct Stored {
            summary: SegmentSummary,
        }
        let version: Version = serde_json::from_slice(bytes).map_err(SummaryError::Json)?;
        if version.format != SUMMARY_FORMAT {
            return Err(SummaryError::Format { found: version.format, known: SUMMARY_FORMAT });
        }
        let stored: Stored = serde_json::from_slice(bytes).map_err(SummaryError::Json)?;
        Ok(stored.summary)
    }
}

#[derive(Serialize)]
struct StoredSummary<'a> {
    format: u32,
    summary: &'a SegmentSummary,
}

#[derive(Debug, thiserror::Error)]
pub enum SummaryError {
    #[error("WAL segment size {0} is not a power of two between 1 MB and 1 GB")]
    SegmentSize(u32),
    #[error("{start} is not the start of a WAL segment of {size} bytes")]
    Misaligned { start: Lsn, size: u32 },
    #[error("{len} bytes given for WAL segment {segment}, more than its size {size}")]
    TooLong { segment: WalFileName, len: usize, size: u32 },
    #[error("WAL segment {segment} is not PostgreSQL 15 WAL (page magic {magic:#06X}); summaries are made for PostgreSQL 15 only")]
    NotPg15 { segment: WalFileName, magic: u16 },
    #[error("WAL segment {segment}: its header says segments of {found} bytes, not {expected}; pass the cluster's wal_segment_size")]
    SegmentSizeMismatch { segment: WalFileName, found: u32, expected: u32 },
    #[error("WAL segment {segment}: WAL pages of {found} bytes; only 8192-byte pages are supported")]
    PageSize { segment: WalFileName, found: u32 },
    #[error("WAL segment {segment}: page at {lsn} is from timeline {found}, later than the file's timeline; was the file renamed?")]
    LaterTimeline { segment: WalFileName, lsn: Lsn, found: u32 },
    #[error("WAL segment {segment}: record at {lsn} passes its CRC check but cannot be decoded ({reason}); no summary can vouch for this segment, take a full backup")]
    Malformed { segment: WalFileName, lsn: Lsn, reason: String },
    #[error("WAL summary is not valid JSON")]
    Json(#[source] serde_json::Error),
    #[error("WAL summary format {found} is newer than this program ({known}); upgrade wal-archiver / pg_backup_ext")]
    Format { found: u32, known: u32 },
}

// ---------------------------------------------------------------------------------------------
// Summarizing one segment
// ---------------------------------------------------------------------------------------------

/// Summarize one WAL segment.
///
/// `bytes` is the segment file (a shorter buffer is treated as the segment's beginning: pages
/// not wholly present end the WAL). `stop_at`: only records starting before it count, for a
/// segment read from `pg_wal` while the server still writes it; the summary is then partial.
///
/// Damage or the end of written WAL is not an error: the summary records where valid WAL
/// ended ([`SegmentSummary::end`]) and [`changed_between`] refuses to vouch beyond it. Errors
/// are for a file that is not this cluster's PostgreSQL 15 WAL at all, or a record that passes
/// its CRC check and still does not decode (a bug on one side or the other).
pub fn summarize_segment(
    bytes: &[u8],
    timeline: TimelineId,
    segment_start: Lsn,
    segment_size: u32,
    stop_at: Option<Lsn>,
) -> Result<SegmentSummary, SummaryError> {
    if !segment_size.is_power_of_two() || !(1 << 20..=1 << 30).contains(&segment_size) {
        return Err(SummaryError::SegmentSize(segment_size));
    }
    if !segment_start.0.is_multiple_of(u64::from(segment_size)) {
        return Err(SummaryError::Misaligned { start: segment_start, size: segment_size });
    }
    let segment = WalFileName::Segment(segment_pos(timeline, segment_start, segment_size));
    if bytes.len() > segment_size as usize {
        return Err(SummaryError::TooLong { segment, len: bytes.len(), size: segment_size });
    }
    let pages = Pages::scan(bytes, timeline, segment_start, segment_size, &segment)?;
    Summarizer::new(&pages, timeline, segment, stop_at).run()
}

fn segment_pos(timeline: TimelineId, start: Lsn, size: u32) -> SegmentPos {
    SegmentPos::from_segno(timeline, start.0 / u64::from(size), size)
}

/// A page header we checked. Pages are checked up front: valid WAL ends at the first page whose
/// header is not this segment's, and every page after it is ignored.
#[derive(Clone, Copy)]
struct PageHeader {
    info: u16,
    rem_len: u32,
    len: usize,
}

struct Pages<'a> {
    bytes: &'a [u8],
    start: u64,
    size: usize,
    /// Headers of the valid pages, `[0, valid.len())`.
    valid: Vec<PageHeader>,
    /// Why the page after them is not valid.
    invalid: String,
    system_id: Option<SystemId>,
}

impl<'a> Pages<'a> {
    fn scan(bytes: &'a [u8], timeline: TimelineId, start: Lsn, size: u32, segment: &WalFileName) -> Result<Pages<'a>, SummaryError> {
        let magic15 = xlog_page_magic(15).expect("PostgreSQL 15 has a page magic");
        let mut pages = Pages { bytes, start: start.0, size: size as usize, valid: Vec::new(), invalid: String::new(), system_id: None };
        let mut last_tli = 0;
        for index in 0..pages.size / XLOG_BLCKSZ {
            let lsn = Lsn(start.0 + (index * XLOG_BLCKSZ) as u64);
            let Some(page) = bytes.get(index * XLOG_BLCKSZ..(index + 1) * XLOG_BLCKSZ) else {
                pages.invalid = format!("the file ends before the page at {lsn}");
                break;
            };
            let magic = u16_at(page, 0);
            let info = u16_at(page, 2);
            let tli = u32_at(page, 4);
            let addr = u64_at(page, 8);
            if magic != magic15 {
                // Recycled segments keep our own magic and zero-filled ones have none: any
                // other magic on the first page is WAL of another major version.
                if index == 0 && magic != 0 {
                    return Err(SummaryError::NotPg15 { segment: segment.clone(), magic });
                }
                pages.invalid = format!("no WAL page header at {lsn} (magic {magic:#06X})");
                break;
            }
            if addr != lsn.0 {
                pages.invalid = format!("the page at {lsn} says it is at {}: left over from a recycled segment, or WAL not written yet", Lsn(addr));
                break;
            }
            if info & !XLP_ALL_FLAGS != 0 || (info & XLP_LONG_HEADER != 0) != (index == 0) {
                pages.invalid = format!("invalid page flags {info:#06X} at {lsn}");
                break;
            }
            if tli > timeline.0 {
                return Err(SummaryError::LaterTimeline { segment: segment.clone(), lsn, found: tli });
            }
            // The first segment of a new timeline begins with a copy of the old one's WAL, so
            // earlier timelines are fine; going back is not.
            if tli < last_tli {
                pages.invalid = format!("page at {lsn} goes back from timeline {last_tli} to {tli}");
                break;
            }
            last_tli = tli;
            let mut len = SHORT_PAGE_HEADER_LEN;
            if index == 0 {
                let long = LongPageHeader::parse(page).expect("a whole page holds a long header");
                if long.segment_size != size {
                    return Err(SummaryError::SegmentSizeMismatch { segment: segment.clone(), found: long.segment_size, expected: size });
                }
                if long.block_size as usize != XLOG_BLCKSZ {
                    return Err(SummaryError::PageSize { segment: segment.clone(), found: long.block_size });
                }
                pages.system_id = Some(long.system_id);
                len = LONG_PAGE_HEADER_LEN;
            }
            pages.valid.push(PageHeader { info, rem_len: u32_at(page, 16), len });
        }
        Ok(pages)
    }

    fn lsn(&self, offset: usize) -> Lsn {
        Lsn(self.start + offset as u64)
    }

    /// Read the record of `total` bytes starting at `pos` (on a valid page) into `out`, across
    /// page headers, checking each continuation page as xlogreader.c does.
    fn read_record(&self, pos: usize, total: usize, out: &mut Vec<u8>) -> Read {
        out.clear();
        let mut page = pos / XLOG_BLCKSZ;
        let take = total.min((page + 1) * XLOG_BLCKSZ - pos);
        out.extend_from_slice(&self.bytes[pos..pos + take]);
        let mut end = pos + take;
        while out.len() < total {
            page += 1;
            if page * XLOG_BLCKSZ >= self.size {
                return Read::Spans;
            }
            let at = self.lsn(page * XLOG_BLCKSZ);
            let Some(header) = self.valid.get(page) else {
                return Read::Invalid(format!("the record continues onto an invalid page ({})", self.invalid));
            };
            if header.info & XLP_FIRST_IS_OVERWRITE_CONTRECORD != 0 {
                return Read::Aborted { resume: page * XLOG_BLCKSZ + header.len };
            }
            if header.info & XLP_FIRST_IS_CONTRECORD == 0 {
                return Read::Invalid(format!("the record continues onto the page at {at}, which has no contrecord flag"));
            }
            if header.rem_len as usize != total - out.len() {
                return Read::Invalid(format!("the page at {at} continues {} bytes of a record, not {}", header.rem_len, total - out.len()));
            }
            let data = page * XLOG_BLCKSZ + header.len;
            let take = (total - out.len()).min(XLOG_BLCKSZ - header.len);
            out.extend_from_slice(&self.bytes[data..data + take]);
            end = data + take;
        }
        Read::Complete { end }
    }
}

enum Read {
    /// The whole record is in `out`; it ends at offset `end`.
    Complete {
        end: usize,
    },
    /// The record runs past the segment end; `out` holds this segment's part.
    Spans,
    /// A page on the way says the record was abandoned; records go on at `resume`.
    Aborted {
        resume: usize,
    },
    Invalid(String),
}

struct Summarizer<'p, 'a> {
    pages: &'p Pages<'a>,
    segment: WalFileName,
    stop_at: Option<Lsn>,
    summary: SegmentSummary,
    /// Per fork, per block: offsets of the first and last record naming it.
    blocks: HashMap<(RelFileNode, Fork), BTreeMap<u32, (u32, u32)>>,
}

impl<'p, 'a> Summarizer<'p, 'a> {
    fn new(pages: &'p Pages<'a>, timeline: TimelineId, segment: WalFileName, stop_at: Option<Lsn>) -> Self {
        let start = Lsn(pages.start);
        let summary = SegmentSummary {
            timeline,
            start,
            segment_size: pages.size as u32,
            system_id: pages.system_id,
            covered_end: start,
            valid_end: start,
            end: WalEnd::SegmentEnd,
            first_record: None,
            first_prev: None,
            last_record: None,
            records: 0,
            aborted: Vec::new(),
            blocks: BTreeMap::new(),
            unsafe_relations: Vec::new(),
            unsafe_databases: Vec::new(),
            unsafe_cluster: Vec::new(),
            restore_points: Vec::new(),
            head: Continuation::default(),
            tail: None,
        };
        Summarizer { pages, segment, stop_at, summary, blocks: HashMap::new() }
    }

    fn run(mut self) -> Result<SegmentSummary, SummaryError> {
        let end = match self.read_head() {
            Ok(first) => self.read_records(first)?,
            Err(end) => end,
        };
        let (covered, end) = end;
        self.summary.covered_end = self.pages.lsn(covered);
        self.summary.end = end;
        self.summary.blocks = self.blocks.into_iter().map(|(key, blocks)| (key, runs(blocks))).collect();
        Ok(self.summary)
    }

    /// Take in the continuation of the record the segment starts inside, if any; return where
    /// the first record of our own starts, or how the WAL ended before it.
    fn read_head(&mut self) -> Result<usize, (usize, WalEnd)> {
        let pages = self.pages;
        let Some(first) = pages.valid.first() else {
            return Err((0, WalEnd::Invalid { lsn: pages.lsn(0), reason: pages.invalid.clone() }));
        };
        let mut pos = first.len;
        let head = &mut self.summary.head;
        if first.info & XLP_FIRST_IS_OVERWRITE_CONTRECORD != 0 {
            head.aborted = true;
            return Ok(pos);
        }
        if first.info & XLP_FIRST_IS_CONTRECORD == 0 {
            return Ok(pos);
        }
        let rem_len = first.rem_len as usize;
        if rem_len == 0 {
            return Err((0, WalEnd::Invalid { lsn: pages.lsn(pos), reason: "the first page continues a record of 0 bytes".into() }));
        }
        head.rem_len = first.rem_len;
        let mut crc = 0;
        let mut got = 0;
        let mut page = 0;
        loop {
            let take = (rem_len - got).min(XLOG_BLCKSZ - (pos % XLOG_BLCKSZ));
            let piece = &pages.bytes[pos..pos + take];
            crc = crc32c_update(crc, piece);
            let keep = take.min(PIECE_CAP - head.bytes.len());
            head.bytes.extend_from_slice(&piece[..keep]);
            got += take;
            pos += take;
            if got == rem_len {
                break;
            }
            page += 1;
            if page * XLOG_BLCKSZ >= pages.size {
                break;
            }
            let at = pages.lsn(page * XLOG_BLCKSZ);
            let Some(header) = pages.valid.get(page) else {
                head.len = got as u32;
                head.crc = crc;
                return Err((0, WalEnd::Invalid { lsn: at, reason: pages.invalid.clone() }));
            };
            if header.info & XLP_FIRST_IS_OVERWRITE_CONTRECORD != 0 {
                head.aborted = true;
                pos = page * XLOG_BLCKSZ + header.len;
                break;
            }
            if header.info & XLP_FIRST_IS_CONTRECORD == 0 || header.rem_len as usize != rem_len - got {
                head.len = got as u32;
                head.crc = crc;
                let reason = format!("the page at {at} does not continue the record the segment starts in");
                return Err((0, WalEnd::Invalid { lsn: at, reason }));
            }
            pos = page * XLOG_BLCKSZ + header.len;
        }
        head.len = got as u32;
        head.crc = crc;
        self.summary.valid_end = pages.lsn(pos);
        Ok(align8(pos))
    }

    /// Decode records from `pos` on; return how far the summary covers and why it stopped.
    fn read_records(&mut self, mut pos: usize) -> Result<(usize, WalEnd), SummaryError> {
        let pages = self.pages;
        let mut record = Vec::new();
        let mut prev: Option<Lsn> = None;
        loop {
            if pos.is_multiple_of(XLOG_BLCKSZ) {
                if pos >= pages.size {
                    return Ok((pos, WalEnd::SegmentEnd));
                }
                let Some(header) = pages.valid.get(pos / XLOG_BLCKSZ) else {
                    return Ok((pos, WalEnd::Invalid { lsn: pages.lsn(pos), reason: pages.invalid.clone() }));
                };
                // The previous record ended exactly at the page boundary, so nothing may
                // continue onto this page.
                if header.info & XLP_FIRST_IS_CONTRECORD != 0 {
                    let reason = "the page continues a record, but the previous record ended before it".to_string();
                    return Ok((pos, WalEnd::Invalid { lsn: pages.lsn(pos), reason }));
                }
                pos += header.len;
            }
            let lsn = pages.lsn(pos);
            let invalid = move |reason: String| -> Result<(usize, WalEnd), SummaryError> { Ok((pos, WalEnd::Invalid { lsn, reason })) };
            // Asked to stop here: whether WAL goes on does not matter.
            if self.stop_at.is_some_and(|stop| lsn >= stop) {
                return Ok((pos, WalEnd::StopAt { lsn }));
            }
            if pos / XLOG_BLCKSZ >= pages.valid.len() {
                return invalid(pages.invalid.clone());
            }
            // xl_tot_len is 8-aligned and so always on this page; the rest of the header may
            // not be.
            let total = u32_at(pages.bytes, pos);
            if total == 0 {
                return invalid("record length 0: the end of the written WAL".into());
            }
            if total < RECORD_HEADER_LEN as u32 || total > MAX_RECORD_LEN {
                return invalid(format!("invalid record length {total}"));
            }
            // Check the header before trusting its length to read further.
            let header_here = pos % XLOG_BLCKSZ + RECORD_HEADER_LEN <= XLOG_BLCKSZ;
            if header_here {
                if let Err(reason) = check_header(&pages.bytes[pos..pos + RECORD_HEADER_LEN], prev) {
                    return invalid(reason);
                }
            }
            match pages.read_record(pos, total as usize, &mut record) {
                Read::Invalid(reason) => return invalid(reason),
                Read::Aborted { resume } => {
                    // xl_prev of what follows points past the abandoned record, so `prev`
                    // stays.
                    self.summary.aborted.push(lsn);
                    pos = resume;
                }
                Read::Spans => {
                    if !header_here && record.len() >= RECORD_HEADER_LEN {
                        if let Err(reason) = check_header(&record[..RECORD_HEADER_LEN], prev) {
                            return invalid(reason);
                        }
                    }
                    self.saw_record(lsn, &record);
                    let crc = match record.get(RECORD_HEADER_LEN..) {
                        Some(data) => crc32c_update(CRC_INIT, data),
                        None => CRC_INIT,
                    };
                    self.summary.tail = Some(PendingRecord {
                        lsn,
                        total_len: total,
                        len: record.len() as u32,
                        bytes: record[..record.len().min(PIECE_CAP)].to_vec(),
                        crc,
                    });
                    return Ok((pages.size, WalEnd::SegmentEnd));
                }
                Read::Complete { end } => {
                    if !header_here {
                        if let Err(reason) = check_header(&record[..RECORD_HEADER_LEN], prev) {
                            return invalid(reason);
                        }
                    }
                    if !record_crc_ok(&record) {
                        return invalid("CRC mismatch".into());
                    }
                    let end_lsn = pages.lsn(end);
                    let effects = decode_record(&record)
                        .and_then(|decoded| Effects::of(&decoded, lsn, end_lsn))
                        .map_err(|reason| SummaryError::Malformed { segment: self.segment.clone(), lsn, reason })?;
                    let switch = effects.switch;
                    self.saw_record(lsn, &record);
                    self.add(pos as u32, effects);
                    self.summary.records += 1;
                    self.summary.valid_end = end_lsn;
                    prev = Some(lsn);
                    if switch {
                        return Ok((pages.size, WalEnd::Switch { lsn }));
                    }
                    pos = align8(end);
                }
            }
        }
    }

    fn saw_record(&mut self, lsn: Lsn, record: &[u8]) {
        if self.summary.first_record.is_none() {
            self.summary.first_record = Some(lsn);
            self.summary.first_prev = record.get(..RECORD_HEADER_LEN).map(|h| Lsn(RecordHeader::parse(h).prev));
        }
        self.summary.last_record = Some(lsn);
    }

    fn add(&mut self, offset: u32, effects: Effects) {
        for (rel, fork, block) in effects.blocks {
            self.blocks.entry((rel, fork)).or_default().entry(block).and_modify(|(_, last)| *last = offset).or_insert((offset, offset));
        }
        self.summary.unsafe_relations.extend(effects.relations);
        self.summary.unsafe_databases.extend(effects.databases);
        self.summary.unsafe_cluster.extend(effects.cluster);
        self.summary.restore_points.extend(effects.restore_point);
    }
}

/// Merge a fork's blocks into runs of consecutive block numbers.
fn runs(blocks: BTreeMap<u32, (u32, u32)>) -> Vec<BlockRun> {
    let mut runs: Vec<BlockRun> = Vec::new();
    for (block, (first, last)) in blocks {
        match runs.last_mut() {
            Some(run) if run.end == block => {
                run.end = block + 1;
                run.first = run.first.min(first);
                run.last = run.last.max(last);
            }
            _ => runs.push(BlockRun { start: block, end: block + 1, first, last }),
        }
    }
    runs
}

fn align8(offset: usize) -> usize {
    (offset + 7) & !7
}

// ---------------------------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------------------------

/// `XLogRecord`.
#[derive(Clone, Copy, Debug)]
struct RecordHeader {
    total_len: u32,
    prev: u64,
    info: u8,
    rmid: u8,
}

impl RecordHeader {
    fn parse(h: &[u8]) -> RecordHeader {
        RecordHeader { total_len: u32_at(h, 0), prev: u64_at(h, 8), info: h[16], rmid: h[17] }
    }
}

/// What `ValidXLogRecordHeader` checks besides the length: a known resource manager, and the
/// back link to the record before (when we read that one).
fn check_header(header: &[u8], prev: Option<Lsn>) -> Result<(), String> {
    let h = RecordHeader::parse(header);
    if h.rmid > RM_MAX_BUILTIN_ID && h.rmid < RM_MIN_CUSTOM_ID {
        return Err(format!("invalid resource manager id {}", h.rmid));
    }
    match prev {
        Some(prev) if h.prev != prev.0 => Err(format!("xl_prev {} does not point to the previous record at {prev}", Lsn(h.prev))),
        _ => Ok(()),
    }
}

/// `ValidXLogRecord`: the CRC covers the record after its header, then the header up to
/// `xl_crc`.
fn record_crc_ok(record: &[u8]) -> bool {
    let crc = crc32c_update(CRC_INIT, &record[RECORD_HEADER_LEN..]);
    let crc = crc32c_update(crc, &record[..CRC_OFFSET]);
    !crc == u32_at(record, CRC_OFFSET)
}

/// A relation block a record names.
type BlockRef = (RelFileNode, Fork, u32);

/// The parts of a record a summary needs.
struct DecodedRecord<'r> {
    header: RecordHeader,
    blocks: Vec<BlockRef>,
    /// As much of the main data as we have: all of it, except for a record stitched across
    /// segments, of which we keep only the beginning.
    main_data: &'r [u8],
    main_len: usize,
}

/// Walk the block headers of a record as `DecodeXLogRecord` does. `record` may be a prefix of
/// the record (what a summary keeps of a split one): the block headers must be in it, the main
/// data need not.
fn decode_record(record: &[u8]) -> Result<DecodedRecord<'_>, String> {
    let header = RecordHeader::parse(&record[..RECORD_HEADER_LEN]);
    let total = header.total_len as usize;
    let mut cursor = Cursor { bytes: record, pos: RECORD_HEADER_LEN, end: total };
    // Block data and main data follow all the headers; their lengths add up to what is left.
    let mut data_total = 0usize;
    let mut main_len = 0usize;
    let mut blocks = Vec::new();
    let mut last_rel: Option<RelFileNode> = None;
    let mut last_id: Option<u8> = None;
    while cursor.remaining() > data_total {
        let id = cursor.u8()?;
        match id {
            XLR_BLOCK_ID_DATA_SHORT => {
                main_len = usize::from(cursor.u8()?);
                data_total += main_len;
                break; // by convention the main data header is the last one
            }
            XLR_BLOCK_ID_DATA_LONG => {
                main_len = cursor.u32()? as usize;
                data_total += main_len;
                break;
            }
            XLR_BLOCK_ID_ORIGIN => {
                cursor.skip(2)?;
            }
            XLR_BLOCK_ID_TOPLEVEL_XID => {
                cursor.skip(4)?;
            }
            id if id <= XLR_MAX_BLOCK_ID => {
                if last_id.is_some_and(|last| id <= last) {
                    return Err(format!("out-of-order block id {id}"));
                }
                last_id = Some(id);
                let fork_flags = cursor.u8()?;
                let data_len = cursor.u16()?;
                if (fork_flags & BKPBLOCK_HAS_DATA != 0) != (data_len != 0) {
                    return Err(format!("block {id}: BKPBLOCK_HAS_DATA disagrees with data length {data_len}"));
                }
                data_total += usize::from(data_len);
                if fork_flags & BKPBLOCK_HAS_IMAGE != 0 {
                    let image_len = cursor.u16()?;
                    let hole_offset = cursor.u16()?;
                    let bimg_info = cursor.u8()?;
                    check_image(id, image_len, hole_offset, bimg_info, &mut cursor)?;
                    data_total += usize::from(image_len);
                }
                let rel = if fork_flags & BKPBLOCK_SAME_REL != 0 {
                    last_rel.ok_or_else(|| format!("block {id}: BKPBLOCK_SAME_REL without a previous relation"))?
                } else {
                    RelFileNode { spc: cursor.u32()?, db: cursor.u32()?, rel: cursor.u32()? }
                };
                last_rel = Some(rel);
                let block = cursor.u32()?;
                if block == u32::MAX {
                    return Err(format!("block {id}: InvalidBlockNumber"));
                }
                let fork = Fork::from_number(fork_flags & BKPBLOCK_FORK_MASK)
                    .ok_or_else(|| format!("block {id}: invalid fork number {}", fork_flags & BKPBLOCK_FORK_MASK))?;
                blocks.push((rel, fork, block));
            }
            id => return Err(format!("invalid block id {id}")),
        }
    }
    if cursor.remaining() != data_total {
        return Err(format!("headers announce {data_total} bytes of data, the record has {}", cursor.remaining()));
    }
    // The main data is the very last thing in the record.
    let main_data = record.get(total - main_len..record.len().min(total)).unwrap_or(&[]);
    Ok(DecodedRecord { header, blocks, main_data, main_len })
}

/// The consistency checks of `DecodeXLogRecord` on a full-page image header, which also read
/// the `hole_length` that only compressed images with a hole carry.
fn check_image(id: u8, image_len: u16, hole_offset: u16, bimg_info: u8, cursor: &mut Cursor<'_>) -> Result<(), String> {
    let has_hole = bimg_info & BKPIMAGE_HAS_HOLE != 0;
    let compressed = bimg_info & BKPIMAGE_COMPRESSED != 0;
    let hole_len = match (compressed, has_hole) {
        (true, true) => u32::from(cursor.u16()?),
        (true, false) => 0,
        (false, _) => BLCKSZ.saturating_sub(u32::from(image_len)),
    };
    let full = u32::from(image_len) == BLCKSZ;
    let hole_consistent = if has_hole { hole_offset != 0 && hole_len != 0 && !full } else { hole_offset == 0 && hole_len == 0 };
    // A compressed image is shorter than a page; an uncompressed one without a hole is a page.
    let length_consistent = !(compressed && full) && (has_hole || compressed || full);
    if !(hole_consistent && length_consistent) {
        return Err(format!("block {id}: inconsistent page image (length {image_len}, hole at {hole_offset} of {hole_len}, info {bimg_info:#04X})"));
    }
    Ok(())
}

/// Reads header fields within `[pos, end)` of a record of which `bytes` may hold only a prefix.
struct Cursor<'r> {
    bytes: &'r [u8],
    pos: usize,
    end: usize,
}

impl<'r> Cursor<'r> {
    fn remaining(&self) -> usize {
        self.end - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'r [u8], String> {
        if self.remaining() < n {
            return Err("record too short for its headers".into());
        }
        let field = self
            .bytes
            .get(self.pos..self.pos + n)
            .ok_or_else(|| format!("block headers run past the {} bytes kept of the record", self.bytes.len()))?;
        self.pos += n;
        Ok(field)
    }

    fn skip(&mut self, n: usize) -> Result<(), String> {
        self.take(n).map(|_| ())
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16_at(self.take(2)?, 0))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32_at(self.take(4)?, 0))
    }
}

/// What one record means for a summary.
#[derive(Clone, Debug, Default)]
struct Effects {
    blocks: Vec<BlockRef>,
    relations: Vec<RelationEvent>,
    databases: Vec<DatabaseEvent>,
    cluster: Vec<ClusterEvent>,
    restore_point: Option<RestorePoint>,
    switch: bool,
}

/// Why a record's main data does not say what its type promises.
enum Problem {
    Short { what: &'static str, need: usize },
    Invalid(String),
}

impl Effects {
    /// `lsn` and `end` are where the record starts and ends. An error means the record's main
    /// data does not fit its type.
    fn of(record: &DecodedRecord<'_>, lsn: Lsn, end: Lsn) -> Result<Effects, String> {
        let mut effects = Effects { blocks: record.blocks.clone(), ..Effects::default() };
        match effects.interpret(record, lsn, end) {
            Ok(()) => Ok(effects),
            // Only a record split across segments can have main data out of reach: we keep
            // its first 16 kB or so. Whatever it did, we cannot vouch for it.
            Err(Problem::Short { what, .. }) if record.main_data.len() < record.main_len => {
                let detail = format!("the main data of the {what} record at {lsn} lies beyond the bytes kept of it");
                effects.cluster.push(ClusterEvent { lsn, change: ClusterChange::Unreadable { detail } });
                Ok(effects)
            }
            Err(Problem::Short { what, need }) => Err(format!("{what} record with {} bytes of main data, expected at least {need}", record.main_len)),
            Err(Problem::Invalid(reason)) => Err(reason),
        }
    }

    fn interpret(&mut self, record: &DecodedRecord<'_>, lsn: Lsn, end: Lsn) -> Result<(), Problem> {
        let data = record.main_data;
        let rmid = record.header.rmid;
        let info = record.header.info & XLR_RMGR_INFO_MASK;
        let need = |what: &'static str, len: usize| if data.len() < len { Err(Problem::Short { what, need: len }) } else { Ok(()) };
        let rel_at = |o: usize| RelFileNode { spc: u32_at(data, o), db: u32_at(data, o + 4), rel: u32_at(data, o + 8) };
        match (rmid, info) {
            (RM_SMGR_ID, XLOG_SMGR_CREATE) => {
                // xl_smgr_create { RelFileNode rnode; ForkNumber forkNum; }
                need("smgr create", 16)?;
                let fork_number = u32_at(data, 12);
                let fork = u8::try_from(fork_number)
                    .ok()
                    .and_then(Fork::from_number)
                    .ok_or_else(|| Problem::Invalid(format!("smgr create of invalid fork {fork_number}")))?;
                self.relations.push(RelationEvent { rel: rel_at(0), lsn, change: RelationChange::Created { fork } });
            }
            (RM_SMGR_ID, XLOG_SMGR_TRUNCATE) => {
                // xl_smgr_truncate { BlockNumber blkno; RelFileNode rnode; int flags; }
                need("smgr truncate", 20)?;
                let change = RelationChange::Truncated { blocks: u32_at(data, 0), flags: u32_at(data, 16) };
                self.relations.push(RelationEvent { rel: rel_at(4), lsn, change });
            }
            (RM_DBASE_ID, XLOG_DBASE_CREATE_FILE_COPY) => {
                // xl_dbase_create_file_copy_rec { db_id, tablespace_id, src_db_id, src_tablespace_id }
                need("dbase create (file copy)", 16)?;
                let change = DatabaseChange::CopiedFrom { src_spc: u32_at(data, 12), src_db: u32_at(data, 8) };
                self.databases.push(DatabaseEvent { spc: u32_at(data, 4), db: u32_at(data, 0), lsn, change });
            }
            (RM_DBASE_ID, XLOG_DBASE_CREATE_WAL_LOG) => {
                // xl_dbase_create_wal_log_rec { db_id, tablespace_id }
                need("dbase create (wal log)", 8)?;
                self.databases.push(DatabaseEvent { spc: u32_at(data, 4), db: u32_at(data, 0), lsn, change: DatabaseChange::Created });
            }
            (RM_DBASE_ID, XLOG_DBASE_DROP) => {
                // xl_dbase_drop_rec { db_id; int ntablespaces; Oid tablespace_ids[] }
                need("dbase drop", 8)?;
                let db = u32_at(data, 0);
                let count = u32_at(data, 4) as usize;
                need("dbase drop", 8 + 4 * count)?;
                for i in 0..count {
                    let spc = u32_at(data, 8 + 4 * i);
                    self.databases.push(DatabaseEvent { spc, db, lsn, change: DatabaseChange::Dropped });
                }
            }
            (RM_XACT_ID, _)
                if matches!(info & XLOG_XACT_OPMASK, XLOG_XACT_COMMIT | XLOG_XACT_ABORT | XLOG_XACT_COMMIT_PREPARED | XLOG_XACT_ABORT_PREPARED) =>
            {
                // These carry XLR_SPECIAL_REL_UPDATE whenever they unlink relation files.
                // xl_xact_commit / xl_xact_abort { TimestampTz xact_time; }, then with
                // XLOG_XACT_HAS_INFO an xinfo word and the parts it announces, packed in this
                // order: dbinfo (2 OIDs), subxacts (count, xids), relfilenodes (count, nodes), ...
                let what = "transaction end";
                let mut o = 8;
                let mut xinfo = 0;
                if info & XLOG_XACT_HAS_INFO != 0 {
                    need(what, o + 4)?;
                    xinfo = u32_at(data, o);
                    o += 4;
                }
                if xinfo & XACT_XINFO_HAS_DBINFO != 0 {
                    o += 8;
                }
                if xinfo & XACT_XINFO_HAS_SUBXACTS != 0 {
                    need(what, o + 4)?;
                    o += 4 + 4 * u32_at(data, o) as usize;
                }
                if xinfo & XACT_XINFO_HAS_RELFILENODES != 0 {
                    need(what, o + 4)?;
                    let count = u32_at(data, o) as usize;
                    o += 4;
                    need(what, o + 12 * count)?;
                    for i in 0..count {
                        self.relations.push(RelationEvent { rel: rel_at(o + 12 * i), lsn, change: RelationChange::Dropped });
                    }
                }
            }
            (RM_XLOG_ID, XLOG_RESTORE_POINT) => {
                // xl_restore_point { TimestampTz rp_time; char rp_name[MAXFNAMELEN]; }
                need("restore point", 8 + RESTORE_POINT_NAME_LEN)?;
                let micros = i64::from_ne_bytes(data[..8].try_into().expect("8 bytes"));
                let time = PG_EPOCH_UNIX_SECS
                    .checked_mul(1_000_000)
                    .and_then(|epoch| epoch.checked_add(micros))
                    .and_then(DateTime::from_timestamp_micros)
                    .ok_or_else(|| Problem::Invalid(format!("restore point time {micros} is out of range")))?;
                let name = &data[8..8 + RESTORE_POINT_NAME_LEN];
                let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
                // pg_create_restore_point() returns XLogInsert's end position: 8-aligned.
                let end = Lsn((end.0 + 7) & !7);
                self.restore_point = Some(RestorePoint { name: String::from_utf8_lossy(name).into_owned(), lsn, end, time });
            }
            (RM_XLOG_ID, XLOG_PARAMETER_CHANGE) => {
                need("parameter change", PARAMETER_CHANGE_WAL_LEVEL + 4)?;
                if u32_at(data, PARAMETER_CHANGE_WAL_LEVEL) as i32 == WAL_LEVEL_MINIMAL {
                    self.cluster.push(ClusterEvent { lsn, change: ClusterChange::WalLevelMinimal });
                }
            }
            (RM_XLOG_ID, XLOG_SWITCH) => self.switch = true,
            _ if record.header.info & XLR_SPECIAL_REL_UPDATE != 0 => {
                self.cluster.push(ClusterEvent { lsn, change: ClusterChange::UnknownRelationUpdate { rmid, info: record.header.info } });
            }
            _ => {}
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Union over a range
// ---------------------------------------------------------------------------------------------

/// The relation blocks changed by the records starting in `[from, to)`, from consecutive
/// segment summaries. Everything an incremental backup needs to know of the WAL between its
/// parent's start and its own.
#[derive(Clone, Debug, Default)]
pub struct ChangedBlocks {
    pub from: Lsn,
    pub to: Lsn,
    blocks: BTreeMap<(RelFileNode, Fork), Vec<BlockRange>>,
    unsafe_relations: Vec<RelationEvent>,
    unsafe_databases: Vec<DatabaseEvent>,
    unsafe_cluster: Vec<ClusterEvent>,
    restore_points: Vec<RestorePoint>,
    refused_relations: BTreeSet<RelFileNode>,
    refused_databases: BTreeSet<u32>,
}

impl ChangedBlocks {
    /// The changed blocks of a fork, as sorted, disjoint ranges. Meaningful only if
    /// [`ChangedBlocks::is_vouched`].
    pub fn blocks(&self, rel: RelFileNode, fork: Fork) -> &[BlockRange] {
        self.blocks.get(&(rel, fork)).map_or(&[], Vec::as_slice)
    }

    /// The changed blocks of one relation file, numbered within that file.
    pub fn blocks_in_file(&self, file: &RelationFile) -> impl Iterator<Item = u32> + '_ {
        let (first, end) = file.block_span();
        self.blocks(file.rel, file.fork).iter().flat_map(move |range| {
            let start = u64::from(range.start).max(first);
            let stop = u64::from(range.end).min(end);
            (start..stop.max(start)).map(move |block| (block - first) as u32)
        })
    }

    /// Every fork with changed blocks.
    pub fn relations(&self) -> impl Iterator<Item = (RelFileNode, Fork, &[BlockRange])> {
        self.blocks.iter().map(|((rel, fork), ranges)| (*rel, *fork, ranges.as_slice()))
    }

    /// Whether the blocks listed for this fork are *all* its changes in the range, so that its
    /// other blocks may be taken from the parent backup. Not so for the free space map (not
    /// WAL-logged), a relation created or truncated in the range, anything in a database
    /// created or dropped in it, and anything at all after `wal_level = minimal` or a relation
    /// change we do not understand.
    pub fn is_vouched(&self, rel: RelFileNode, fork: Fork) -> bool {
        fork != Fork::Fsm && self.unsafe_cluster.is_empty() && !self.refused_relations.contains(&rel) && !self.refused_databases.contains(&rel.db)
    }

    pub fn restore_points(&self) -> &[RestorePoint] {
        &self.restore_points
    }

    pub fn unsafe_relations(&self) -> &[RelationEvent] {
        &self.unsafe_relations
    }

    pub fn unsafe_databases(&self) -> &[DatabaseEvent] {
        &self.unsafe_databases
    }

    pub fn unsafe_cluster(&self) -> &[ClusterEvent] {
        &self.unsafe_cluster
    }

    fn in_range(&self, lsn: Lsn) -> bool {
        self.from <= lsn && lsn < self.to
    }

    fn add_record(&mut self, lsn: Lsn, effects: Effects) {
        if !self.in_range(lsn) {
            return;
        }
        for (rel, fork, block) in effects.blocks {
            self.blocks.entry((rel, fork)).or_default().push(BlockRange { start: block, end: block + 1 });
        }
        self.add_events(effects.relations, effects.databases, effects.cluster, effects.restore_point);
    }

    fn add_segment(&mut self, s: &SegmentSummary) {
        let (from, to) = (self.from, self.to);
        for (key, runs) in &s.blocks {
            // A run may hold changes in the range if its first record is before the end and its
            // last one at or after the start.
            let ranges = runs
                .iter()
                .filter(|r| s.start.0 + u64::from(r.first) < to.0 && s.start.0 + u64::from(r.last) >= from.0)
                .map(|r| BlockRange { start: r.start, end: r.end });
            self.blocks.entry(*key).or_default().extend(ranges);
        }
        let keep = |lsn: Lsn| from <= lsn && lsn < to;
        self.add_events(
            s.unsafe_relations.iter().filter(|e| keep(e.lsn)).cloned(),
            s.unsafe_databases.iter().filter(|e| keep(e.lsn)).cloned(),
            s.unsafe_cluster.iter().filter(|e| keep(e.lsn)).cloned(),
            s.restore_points.iter().filter(|r| keep(r.lsn)).cloned(),
        );
    }

    fn add_events(
        &mut self,
        relations: impl IntoIterator<Item = RelationEvent>,
        databases: impl IntoIterator<Item = DatabaseEvent>,
        cluster: impl IntoIterator<Item = ClusterEvent>,
        restore_points: impl IntoIterator<Item = RestorePoint>,
    ) {
        for event in relations {
            self.refused_relations.insert(event.rel);
            self.unsafe_relations.push(event);
        }
        for event in databases {
            self.refused_databases.insert(event.db);
            self.unsafe_databases.push(event);
        }
        self.unsafe_cluster.extend(cluster);
        self.restore_points.extend(restore_points);
    }

    /// Sort and merge each fork's ranges, and order events by LSN.
    fn finish(mut self) -> ChangedBlocks {
        for ranges in self.blocks.values_mut() {
            ranges.sort_unstable();
            let mut merged: Vec<BlockRange> = Vec::with_capacity(ranges.len());
            for range in ranges.drain(..) {
                match merged.last_mut() {
                    Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
                    _ => merged.push(range),
                }
            }
            *ranges = merged;
        }
        self.blocks.retain(|_, ranges| !ranges.is_empty());
        self.unsafe_relations.sort_by_key(|e| e.lsn);
        self.unsafe_databases.sort_by_key(|e| e.lsn);
        self.unsafe_cluster.sort_by_key(|e| e.lsn);
        self.restore_points.sort_by_key(|r| r.lsn);
        self
    }
}

/// Why summaries cannot say what changed in a range. The remedy is the same in every case:
/// summarize the missing segments again from the archive, or back the relations up fully.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SummaryGap {
    #[error("WAL range {from}..{to} is reversed")]
    Reversed { from: Lsn, to: Lsn },
    #[error("no WAL summary covers {lsn}{}; summarize that segment from the archive", segment.as_ref().map(|s| format!(" (segment {s})")).unwrap_or_default())]
    Missing { lsn: Lsn, segment: Option<WalFileName> },
    #[error("WAL summaries are not consecutive: segment {next} does not follow {previous}")]
    NotConsecutive { previous: WalFileName, next: WalFileName },
    #[error("the summary of segment {segment} covers WAL only up to {covered} ({why}), short of {needed}")]
    Partial { segment: WalFileName, covered: Lsn, why: String, needed: Lsn },
    #[error("the record at {lsn} continues into segment {segment}, whose summary is not given")]
    Unstitched { lsn: Lsn, segment: WalFileName },
    #[error("segment {segment} does not continue the WAL of {previous}: {detail}; are they from different timelines or clusters?")]
    Discontinuous { previous: WalFileName, segment: WalFileName, detail: String },
    #[error("the record at {lsn}, split across segments, {detail}; the archived segments are damaged or do not belong together")]
    BadSplitRecord { lsn: Lsn, detail: String },
}

/// Union the summaries of consecutive segments over the records starting in `[from, to)`.
///
/// `summaries` must be consecutive and in order; extra ones before or after the range are
/// ignored. Errors when they do not cover the range, do not belong to one WAL history (the
/// `xl_prev` of each segment's first record, the continuation lengths at each seam), or a record
/// split across segments cannot be completed and checked.
pub fn changed_between(summaries: &[SegmentSummary], from: Lsn, to: Lsn) -> Result<ChangedBlocks, SummaryGap> {
    if from > to {
        return Err(SummaryGap::Reversed { from, to });
    }
    let mut out = ChangedBlocks { from, to, ..ChangedBlocks::default() };
    if from == to {
        return Ok(out);
    }
    let Some(first) = summaries.iter().position(|s| s.start <= from && from < s.end_lsn()) else {
        let segment = summaries.first().map(|s| WalFileName::Segment(segment_pos(s.timeline, from, s.segment_size)));
        return Err(SummaryGap::Missing { lsn: from, segment });
    };
    let mut pending: Option<Stitch> = None;
    let mut last_record: Option<Lsn> = None;
    let mut previous: Option<&SegmentSummary> = None;
    for s in &summaries[first..] {
        if let Some(p) = previous {
            if s.start != p.end_lsn() || s.segment_size != p.segment_size || s.timeline < p.timeline {
                return Err(SummaryGap::NotConsecutive { previous: p.file_name(), next: s.file_name() });
            }
        }
        // The record continuing from the previous segment, then this segment's own records.
        let mut switched_into = false;
        match (pending.take(), previous) {
            (Some(stitch), Some(p)) => match stitch.extend(p, s)? {
                Stitched::Continues(stitch) => pending = Some(stitch),
                Stitched::Aborted => {}
                Stitched::Done { lsn, effects } => {
                    // A switch record that spilled into this segment owns all of it.
                    switched_into = effects.switch;
                    out.add_record(lsn, effects);
                }
            },
            (None, Some(p)) if s.head.rem_len != 0 && !s.head.aborted => {
                let detail = "it starts inside a record, but the previous segment ends between records".to_string();
                return Err(SummaryGap::Discontinuous { previous: p.file_name(), segment: s.file_name(), detail });
            }
            _ => {}
        }
        if let (Some(p), Some(expected), Some(prev), false) = (previous, last_record, s.first_prev, s.head.aborted) {
            if prev != expected {
                let detail = format!("its first record points back to {prev}, but the last record before it starts at {expected}");
                return Err(SummaryGap::Discontinuous { previous: p.file_name(), segment: s.file_name(), detail });
            }
        }
        out.add_segment(s);
        if let Some(tail) = &s.tail {
            pending = Some(Stitch::new(tail));
        }
        last_record = s.last_record.or(last_record);
        previous = Some(s);

        let covered = if switched_into { s.end_lsn() } else { s.covered_end };
        let needs_next = pending.as_ref().is_some_and(|p| p.lsn < to);
        if !needs_next && to <= covered {
            return Ok(out.finish());
        }
        if covered < s.end_lsn() {
            let why = match &s.end {
                WalEnd::Invalid { reason, .. } => reason.clone(),
                WalEnd::StopAt { lsn } => format!("summarized only up to {lsn}"),
                other => format!("{other:?}"),
            };
            let needed = if needs_next { s.end_lsn() } else { to };
            return Err(SummaryGap::Partial { segment: s.file_name(), covered, why, needed });
        }
    }
    let p = previous.expect("the loop saw the segment holding `from`");
    let next = WalFileName::Segment(segment_pos(p.timeline, p.end_lsn(), p.segment_size));
    match pending {
        Some(stitch) if stitch.lsn < to => Err(SummaryGap::Unstitched { lsn: stitch.lsn, segment: next }),
        _ => Err(SummaryGap::Missing { lsn: p.end_lsn(), segment: Some(next) }),
    }
}

/// A record being put back together from the segments it spans.
struct Stitch {
    lsn: Lsn,
    total: u64,
    /// Bytes of it seen so far, in all segments.
    have: u64,
    /// Its first bytes, as long as they are contiguous from the start (at most 8 kB).
    bytes: Vec<u8>,
    /// CRC-32C register over its bytes after the header, so far.
    crc: u32,
}

enum Stitched {
    Continues(Stitch),
    /// The rest of the record was never written (crash); it never took effect.
    Aborted,
    Done {
        lsn: Lsn,
        effects: Effects,
    },
}

impl Stitch {
    fn new(tail: &PendingRecord) -> Stitch {
        Stitch { lsn: tail.lsn, total: u64::from(tail.total_len), have: u64::from(tail.len), bytes: tail.bytes.clone(), crc: tail.crc }
    }

    /// Add the part of the record that segment `s` (following `p`) starts with.
    fn extend(mut self, p: &SegmentSummary, s: &SegmentSummary) -> Result<Stitched, SummaryGap> {
        let head = &s.head;
        if head.aborted {
            return Ok(Stitched::Aborted);
        }
        let discontinuous = |detail: String| SummaryGap::Discontinuous { previous: p.file_name(), segment: s.file_name(), detail };
        let remaining = self.total - self.have;
        if u64::from(head.rem_len) != remaining {
            return Err(discontinuous(format!(
                "it continues a record with {} bytes to go, but the record at {} has {remaining} left",
                head.rem_len, self.lsn
            )));
        }
        let len = u64::from(head.len);
        // The CRC covers the record after its 24-byte header; if the header itself was cut by
        // the previous segment's end, the first bytes here finish it and stay out of the CRC.
        let header_rest = (RECORD_HEADER_LEN as u64).saturating_sub(self.have).min(len) as usize;
        let Some(header_piece) = head.bytes.get(..header_rest) else {
            return Err(discontinuous("its leading continuation is shorter than it claims".into()));
        };
        let data_len = len - header_rest as u64;
        let data_crc = head.crc ^ crc32c_shift(crc32c_update(0, header_piece), data_len);
        self.crc = crc32c_combine(self.crc, data_crc, data_len);
        if self.bytes.len() as u64 == self.have {
            let room = PIECE_CAP.saturating_sub(self.bytes.len());
            self.bytes.extend_from_slice(&head.bytes[..head.bytes.len().min(room)]);
        }
        self.have += len;
        if self.have < self.total {
            if s.is_partial() {
                let why = format!("its WAL ends inside the record at {} that fills it", self.lsn);
                return Err(SummaryGap::Partial { segment: s.file_name(), covered: s.covered_end, why, needed: s.end_lsn() });
            }
            return Ok(Stitched::Continues(self));
        }
        let bad = |detail: String| SummaryGap::BadSplitRecord { lsn: self.lsn, detail };
        if self.bytes.len() < RECORD_HEADER_LEN {
            return Err(bad("is shorter than a record header".into()));
        }
        let crc = !crc32c_update(self.crc, &self.bytes[..CRC_OFFSET]);
        if crc != u32_at(&self.bytes, CRC_OFFSET) {
            return Err(bad("fails its CRC check once stitched".into()));
        }
        let end = s.head_end();
        let effects = decode_record(&self.bytes)
            .and_then(|decoded| Effects::of(&decoded, self.lsn, end))
            .map_err(|reason| bad(format!("cannot be decoded ({reason})")))?;
        Ok(Stitched::Done { lsn: self.lsn, effects })
    }
}

// ---------------------------------------------------------------------------------------------
// CRC-32C (Castagnoli), as PostgreSQL computes it for WAL records
// ---------------------------------------------------------------------------------------------

/// Reflected polynomial 0x1EDC6F41.
const CRC32C_POLY: u32 = 0x82F6_3B78;
/// `INIT_CRC32C`; `FIN_CRC32C` inverts again.
const CRC_INIT: u32 = 0xFFFF_FFFF;

/// Slice-by-8 tables: summarizing reads every byte of every segment.
static CRC_TABLES: [[u32; 256]; 8] = crc_tables();

const fn crc_tables() -> [[u32; 256]; 8] {
    let mut tables = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ CRC32C_POLY } else { crc >> 1 };
            bit += 1;
        }
        tables[0][i] = crc;
        i += 1;
    }
    let mut i = 0;
    while i < 256 {
        let mut t = 1;
        while t < 8 {
            let prev = tables[t - 1][i];
            tables[t][i] = (prev >> 8) ^ tables[0][(prev & 0xFF) as usize];
            t += 1;
        }
        i += 1;
    }
    tables
}

/// Feed `data` to a CRC-32C register (no pre- or post-inversion here).
fn crc32c_update(mut crc: u32, data: &[u8]) -> u32 {
    let t = &CRC_TABLES;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let lo = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) ^ crc;
        let hi = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
        crc = t[7][(lo & 0xFF) as usize]
            ^ t[6][((lo >> 8) & 0xFF) as usize]
            ^ t[5][((lo >> 16) & 0xFF) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][(hi & 0xFF) as usize]
            ^ t[2][((hi >> 8) & 0xFF) as usize]
            ^ t[1][((hi >> 16) & 0xFF) as usize]
            ^ t[0][(hi >> 24) as usize];
    }
    for &b in chunks.remainder() {
        crc = t[0][((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc
}

/// `a * b mod P` over GF(2), in the reflected representation (bit 31 is x^0).
fn gf2_mul_mod(a: u32, mut b: u32) -> u32 {
    let mut product = 0;
    let mut bit = 1u32 << 31;
    while bit != 0 {
        if a & bit != 0 {
            product ^= b;
        }
        b = if b & 1 != 0 { (b >> 1) ^ CRC32C_POLY } else { b >> 1 };
        bit >>= 1;
    }
    product
}

/// The register after feeding `n` zero bytes to `crc`: multiplication by x^(8n) mod P.
fn crc32c_shift(crc: u32, mut n: u64) -> u32 {
    let mut power = 1u32 << 31; // x^0
    let mut square = 1u32 << 23; // x^8
    while n != 0 {
        if n & 1 != 0 {
            power = gf2_mul_mod(power, square);
        }
        square = gf2_mul_mod(square, square);
        n >>= 1;
    }
    gf2_mul_mod(power, crc)
}

/// The register after feeding `crc` a piece of `len` bytes whose own register, started from 0,
/// is `piece_crc`. The register is linear in its input, so a record's CRC can be finished from
/// per-segment parts without the whole record at hand.
fn crc32c_combine(crc: u32, piece_crc: u32, len: u64) -> u32 {
    crc32c_shift(crc, len) ^ piece_crc
}

// ---------------------------------------------------------------------------------------------
// Byte access and serde helpers
// ---------------------------------------------------------------------------------------------

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_ne_bytes(b[o..o + 2].try_into().expect("2 bytes"))
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_ne_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_ne_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// A fork map serializes as a list: JSON object keys must be strings.
mod block_map {
    use super::*;
    use serde::{Deserializer, Serializer};

    #[derive(Serialize)]
    struct EntryRef<'a> {
        rel: RelFileNode,
        fork: Fork,
        runs: &'a [BlockRun],
    }

    #[derive(Deserialize)]
    struct Entry {
        rel: RelFileNode,
        fork: Fork,
        runs: Vec<BlockRun>,
    }

    pub fn serialize<S: Serializer>(map: &SegmentBlocks, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter().map(|((rel, fork), runs)| EntryRef { rel: *rel, fork: *fork, runs }))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SegmentBlocks, D::Error> {
        let entries = Vec::<Entry>::deserialize(d)?;
        Ok(entries.into_iter().map(|e| ((e.rel, e.fork), e.runs)).collect())
    }
}

mod base64_bytes {
    use super::*;
    use serde::{de::Error, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        B64.decode(String::deserialize(d)?).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: usize = 1 << 20;
    const PAGE: u64 = XLOG_BLCKSZ as u64;
    const SYSID: u64 = 7_312_345_678_901_234_567;
    const RM_HEAP_ID: u8 = 10;
    const XLOG_NOOP: u8 = 0x20;
    const TL: TimelineId = TimelineId(1);

    fn rel(n: u32) -> RelFileNode {
        RelFileNode { spc: DEFAULT_TABLESPACE, db: 5, rel: n }
    }

    /// Lays records out in WAL pages as the server does: page headers at every page start,
    /// `XLP_FIRST_IS_CONTRECORD` and `xlp_rem_len` where a record continues, records 8-aligned.
    /// Pages never written stay zero, which reads as the end of WAL.
    struct WalWriter {
        base: u64,
        buf: Vec<u8>,
        insert: u64,
        prev: u64,
        overwrite_pages: BTreeSet<u64>,
    }

    impl WalWriter {
        fn new(base: u64) -> WalWriter {
            WalWriter { base, buf: Vec::new(), insert: base, prev: 0, overwrite_pages: BTreeSet::new() }
        }

        fn header_len(page: u64) -> u64 {
            if page.is_multiple_of(SEG as u64) {
                LONG_PAGE_HEADER_LEN as u64
            } else {
                SHORT_PAGE_HEADER_LEN as u64
            }
        }

        fn at(&mut self, lsn: u64, len: usize) -> &mut [u8] {
            let o = (lsn - self.base) as usize;
            if self.buf.len() < o + len {
                self.buf.resize((o + len).div_ceil(SEG) * SEG, 0);
            }
            &mut self.buf[o..o + len]
        }

        fn page_header(&mut self, page: u64, rem_len: Option<u32>) {
            let long = page.is_multiple_of(SEG as u64);
            let mut info = 0u16;
            if long {
                info |= XLP_LONG_HEADER;
            }
            if rem_len.is_some() {
                info |= XLP_FIRST_IS_CONTRECORD;
            }
            if self.overwrite_pages.contains(&page) {
                info = (info & !XLP_FIRST_IS_CONTRECORD) | XLP_FIRST_IS_OVERWRITE_CONTRECORD;
            }
            let h = self.at(page, Self::header_len(page) as usize);
            h[0..2].copy_from_slice(&0xD110u16.to_ne_bytes());
            h[2..4].copy_from_slice(&info.to_ne_bytes());
            h[4..8].copy_from_slice(&1u32.to_ne_bytes());
            h[8..16].copy_from_slice(&page.to_ne_bytes());
            h[16..20].copy_from_slice(&rem_len.unwrap_or(0).to_ne_bytes());
            if long {
                h[24..32].copy_from_slice(&SYSID.to_ne_bytes());
                h[32..36].copy_from_slice(&(SEG as u32).to_ne_bytes());
                h[36..40].copy_from_slice(&(XLOG_BLCKSZ as u32).to_ne_bytes());
            }
        }

        /// Where the next record will start.
        fn next_start(&self) -> u64 {
            if self.insert.is_multiple_of(PAGE) {
                self.insert + Self::header_len(self.insert)
            } else {
                self.insert
            }
        }

        /// Append a record; returns its start and end.
        fn append(&mut self, rmid: u8, info: u8, body: &[u8]) -> (Lsn, Lsn) {
            let record = make_record(rmid, info, self.prev, body);
            self.append_raw(&record)
        }

        fn append_raw(&mut self, record: &[u8]) -> (Lsn, Lsn) {
            let start = self.next_start();
            let mut done = 0;
            while done < record.len() {
                if self.insert.is_multiple_of(PAGE) {
                    let rem = (done > 0).then_some((record.len() - done) as u32);
                    self.page_header(self.insert, rem);
                    self.insert += Self::header_len(self.insert);
                }
                let n = (PAGE - self.insert % PAGE).min((record.len() - done) as u64) as usize;
                let insert = self.insert;
                self.at(insert, n).copy_from_slice(&record[done..done + n]);
                done += n;
                self.insert += n as u64;
            }
            let end = self.insert;
            self.insert = (self.insert + 7) & !7;
            self.prev = start;
            (Lsn(start), Lsn(end))
        }

        /// Append filler records so that the next record starts exactly at `target` (at least
        /// 32 bytes of record space away).
        fn pad_to(&mut self, target: u64) {
            let mut space = 0;
            let mut pos = self.insert;
            while pos < target {
                let page = pos - pos % PAGE;
                let from = pos.max(page + Self::header_len(page));
                let to = target.min(page + PAGE);
                space += to.saturating_sub(from);
                pos = page + PAGE;
            }
            assert!(space == 0 || space >= 32, "cannot pad {space} bytes");
            if space > 0 {
                let n = space as usize - RECORD_HEADER_LEN;
                let body = if n - 2 <= 255 { Body::default().main(&vec![0; n - 2]) } else { Body::default().main(&vec![0; n - 5]) };
                self.append(RM_XLOG_ID, XLOG_NOOP, &body.bytes());
            }
            assert_eq!(self.next_start(), target);
        }

        /// Fill the pages after an XLOG_SWITCH with headers, as the server does.
        fn finish_switch(&mut self) {
            let seg_end = self.insert - self.insert % SEG as u64 + SEG as u64;
            let mut page = self.insert.div_ceil(PAGE) * PAGE;
            while page < seg_end {
                self.page_header(page, None);
                page += PAGE;
            }
            self.insert = seg_end;
        }

        fn segment(&mut self, index: usize) -> Vec<u8> {
            let start = self.base + (index * SEG) as u64;
            self.at(start, SEG).to_vec()
        }

        fn summary(&mut self, index: usize) -> SegmentSummary {
            let bytes = self.segment(index);
            summarize_segment(&bytes, TL, Lsn(self.base + (index * SEG) as u64), SEG as u32, None).unwrap()
        }
    }

    fn make_record(rmid: u8, info: u8, prev: u64, body: &[u8]) -> Vec<u8> {
        let mut r = Vec::with_capacity(RECORD_HEADER_LEN + body.len());
        r.extend_from_slice(&((RECORD_HEADER_LEN + body.len()) as u32).to_ne_bytes());
        r.extend_from_slice(&777u32.to_ne_bytes());
        r.extend_from_slice(&prev.to_ne_bytes());
        r.extend_from_slice(&[info, rmid, 0, 0, 0, 0, 0, 0]);
        r.extend_from_slice(body);
        let crc = !crc32c_update(crc32c_update(CRC_INIT, &r[RECORD_HEADER_LEN..]), &r[..CRC_OFFSET]);
        r[CRC_OFFSET..RECORD_HEADER_LEN].copy_from_slice(&crc.to_ne_bytes());
        r
    }

    /// The part of a record after its header: block headers, main data header, block data,
    /// main data.
    #[derive(Default)]
    struct Body {
        headers: Vec<u8>,
        data: Vec<u8>,
        main: Vec<u8>,
    }

    impl Body {
        fn block_header(&mut self, id: u8, mut flags: u8, rel: Option<RelFileNode>, data: usize) {
            if data > 0 {
                flags |= BKPBLOCK_HAS_DATA;
            }
            if rel.is_none() {
                flags |= BKPBLOCK_SAME_REL;
            }
            self.headers.push(id);
            self.headers.push(flags);
            self.headers.extend_from_slice(&(data as u16).to_ne_bytes());
        }

        fn rel_and_block(&mut self, rel: Option<RelFileNode>, block: u32) {
            if let Some(r) = rel {
                for v in [r.spc, r.db, r.rel] {
                    self.headers.extend_from_slice(&v.to_ne_bytes());
                }
            }
            self.headers.extend_from_slice(&block.to_ne_bytes());
        }

        /// A block reference; `rel: None` is BKPBLOCK_SAME_REL.
        fn block(mut self, id: u8, fork: Fork, rel: Option<RelFileNode>, block: u32, data: usize) -> Self {
            self.block_header(id, fork.number(), rel, data);
            self.rel_and_block(rel, block);
            self.data.extend(std::iter::repeat_n(0xAB, data));
            self
        }

        #[allow(clippy::too_many_arguments)]
        fn image(
            mut self,
            id: u8,
            fork: Fork,
            rel: Option<RelFileNode>,
            block: u32,
            len: u16,
            hole_offset: u16,
            bimg_info: u8,
            hole_len: Option<u16>,
        ) -> Self {
            self.block_header(id, fork.number() | BKPBLOCK_HAS_IMAGE, rel, 0);
            self.headers.extend_from_slice(&len.to_ne_bytes());
            self.headers.extend_from_slice(&hole_offset.to_ne_bytes());
            self.headers.push(bimg_info);
            if let Some(h) = hole_len {
                self.headers.extend_from_slice(&h.to_ne_bytes());
            }
            self.rel_and_block(rel, block);
            self.data.extend(std::iter::repeat_n(0xCD, usize::from(len)));
            self
        }

        fn origin(mut self, origin: u16) -> Self {
            self.headers.push(XLR_BLOCK_ID_ORIGIN);
            self.headers.extend_from_slice(&origin.to_ne_bytes());
            self
        }

        fn toplevel_xid(mut self, xid: u32) -> Self {
            self.headers.push(XLR_BLOCK_ID_TOPLEVEL_XID);
            self.headers.extend_from_slice(&xid.to_ne_bytes());
            self
        }

        fn main(mut self, main: &[u8]) -> Self {
            self.main = main.to_vec();
            self
        }

        fn bytes(&self) -> Vec<u8> {
            let mut v = self.headers.clone();
            if self.main.len() > 255 {
                v.push(XLR_BLOCK_ID_DATA_LONG);
                v.extend_from_slice(&(self.main.len() as u32).to_ne_bytes());
            } else if !self.main.is_empty() {
                v.push(XLR_BLOCK_ID_DATA_SHORT);
                v.push(self.main.len() as u8);
            }
            v.extend_from_slice(&self.data);
            v.extend_from_slice(&self.main);
            v
        }
    }

    fn heap(w: &mut WalWriter, body: Body) -> (Lsn, Lsn) {
        w.append(RM_HEAP_ID, 0x00, &body.bytes())
    }

    fn block_set(blocks: &SegmentBlocks) -> BTreeSet<(RelFileNode, Fork, u32)> {
        blocks.iter().flat_map(|((r, f), runs)| runs.iter().flat_map(move |run| (run.start..run.end).map(move |b| (*r, *f, b)))).collect()
    }

    fn changed_set(c: &ChangedBlocks) -> BTreeSet<(RelFileNode, Fork, u32)> {
        c.relations().flat_map(|(r, f, ranges)| ranges.iter().flat_map(move |x| (x.start..x.end).map(move |b| (r, f, b)))).collect()
    }

    fn set(items: &[(RelFileNode, Fork, u32)]) -> BTreeSet<(RelFileNode, Fork, u32)> {
        items.iter().copied().collect()
    }

    #[test]
    fn crc32c_matches_the_standard_and_combines() {
        assert_eq!(!crc32c_update(CRC_INIT, b"123456789"), 0xE306_9283);
        let data: Vec<u8> = (0..70_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let whole = crc32c_update(CRC_INIT, &data);
        for split in [0, 1, 7, 8, 9, 4096, 69_999, 70_000] {
            let (a, b) = data.split_at(split);
            let combined = crc32c_combine(crc32c_update(CRC_INIT, a), crc32c_update(0, b), b.len() as u64);
            assert_eq!(combined, whole, "split at {split}");
        }
        assert_eq!(crc32c_shift(0x1234_5678, 3), crc32c_update(0x1234_5678, &[0, 0, 0]));
    }

    #[test]
    fn block_references_of_every_shape() {
        let mut w = WalWriter::new(0x0100_0000);
        // Two blocks of one relation, the second with BKPBLOCK_SAME_REL; short main data.
        let a = heap(&mut w, Body::default().block(0, Fork::Main, Some(rel(16384)), 7, 10).block(1, Fork::Main, None, 8, 0).main(b"hello"));
        // A compressed image with a hole (hole_length follows), an LZ4 image without one, an
        // uncompressed image with a hole (block id 1 skipped), replication origin and top-level
        // xid, long main data.
        let body = Body::default()
            .image(0, Fork::Vm, Some(rel(16390)), 3, 100, 200, BKPIMAGE_HAS_HOLE | 0x04, Some(3000))
            .image(2, Fork::Main, None, 4, 700, 0, 0x08, None)
            .image(3, Fork::Fsm, Some(rel(16384)), 0, 8192 - 4000, 300, BKPIMAGE_HAS_HOLE, None)
            .origin(3)
            .toplevel_xid(999)
            .main(&[1; 300]);
        let b = heap(&mut w, body);
        // A record of 20 kB spanning three pages.
        let c = heap(&mut w, Body::default().block(0, Fork::Init, Some(rel(16400)), 99, 0).main(&[2; 20_000]));
        assert!(c.1 .0 - c.0 .0 > 2 * PAGE, "record C spans pages");
        let s = w.summary(0);
        assert_eq!(s.records, 3);
        assert_eq!(s.system_id, Some(SystemId(SYSID)));
        assert_eq!(s.first_record, Some(a.0));
        assert_eq!(s.last_record, Some(c.0));
        assert_eq!(s.valid_end, c.1);
        assert_eq!(s.covered_end, Lsn((c.1 .0 + 7) & !7));
        assert!(s.is_partial());
        assert!(matches!(&s.end, WalEnd::Invalid { reason, .. } if reason.contains("record length 0")), "{:?}", s.end);
        assert_eq!(
            block_set(&s.blocks),
            set(&[
                (rel(16384), Fork::Main, 7),
                (rel(16384), Fork::Main, 8),
                (rel(16390), Fork::Vm, 3),
                (rel(16390), Fork::Main, 4),
                (rel(16384), Fork::Fsm, 0),
                (rel(16400), Fork::Init, 99),
            ])
        );
        // Blocks 7 and 8 merged into one run, bounded by record A alone.
        let off = |l: Lsn| (l.0 - s.start.0) as u32;
        assert_eq!(s.blocks[&(rel(16384), Fork::Main)], vec![BlockRun { start: 7, end: 9, first: off(a.0), last: off(a.0) }]);
        assert_eq!(s.blocks[&(rel(16390), Fork::Vm)][0].first, off(b.0));
    }

    #[test]
    fn malformed_records_that_pass_their_crc_are_errors() {
        let mut w = WalWriter::new(0x0100_0000);
        // An uncompressed image without a hole must be a whole page.
        heap(&mut w, Body::default().image(0, Fork::Main, Some(rel(1)), 0, 100, 0, 0, None));
        let err = summarize_segment(&w.segment(0), TL, Lsn(0x0100_0000), SEG as u32, None).unwrap_err();
        assert!(matches!(&err, SummaryError::Malformed { reason, .. } if reason.contains("inconsistent page image")), "{err}");

        let mut w = WalWriter::new(0x0100_0000);
        heap(&mut w, Body::default().block(0, Fork::Main, None, 0, 0));
        let err = summarize_segment(&w.segment(0), TL, Lsn(0x0100_0000), SEG as u32, None).unwrap_err();
        assert!(err.to_string().contains("SAME_REL without a previous relation"), "{err}");
    }

    #[test]
    fn crc_mismatch_or_broken_back_link_ends_the_wal() {
        let mut w = WalWriter::new(0x0100_0000);
        heap(&mut w, Body::default().block(0, Fork::Main, Some(rel(1)), 1, 4));
        let second = heap(&mut w, Body::default().block(0, Fork::Main, Some(rel(1)), 2, 4));
        let third = heap(&mut w, Body::default().block(0, Fork::Main, Some(rel(1)), 3, 4));
        let mut bytes = w.segment(0);
        let o = (third.1 .0 - 1 - w.base) as usize;
        bytes[o] ^= 0xFF;
        let s = summarize_segment(&bytes, TL, Lsn(w.base), SEG as u32, None).unwrap();
        assert_eq!(s.records, 2);
        assert_eq!(s.end, WalEnd::Invalid { lsn: third.0, reason: "CRC mismatch".into() });
        assert_eq!(s.valid_end, second.1);
        assert_eq!(s.covered_end, third.0);
        assert_eq!(block_set(&s.blocks), set(&[(rel(1), Fork::Main, 1), (rel(1), Fork::Main, 2)]));

        // A record with a valid CRC whose xl_prev does not point back: left over from an
        // older WAL generation.
        let mut w2 = WalWriter::new(0x0100_0000);
        heap(&mut w2, Body::default().block(0, Fork::Main, Some(rel(1)), 1, 4));
        w2.prev = 0x1234_5678;
        let stray = heap(&mut w2, Body::default().block(0, Fork::Main, Some(rel(1)), 2, 4));
        let s = w2.summary(0);
        assert_eq!(s.records, 1);
        assert!(matches!(&s.end, WalEnd::Invalid { lsn, reason } if *lsn == stray.0 && reason.contains("xl_prev")), "{:?}", s.end);
    }

    #[test]
    fn a_recycled_page_ends_the_wal() {
        let mut w = WalWriter::new(0x0100_0000);
        heap(&mut w, Body::default().block(0, Fork::Main, Some(rel(1)), 1, 0));
        w.pad_to(0x0100_0000 + PAGE - 64);
        let spanning = heap(&mut w, Body::default().block(0, Fork::Main, Some(rel(1)), 2, 0).main(&[0; 200]));
        let mut bytes = w.segment(0);
        // The second page is left over from the segment's previous life.
        let page = &mut bytes[XLOG_BLCKSZ..XLOG_BLCKSZ + 16];
        page[8..16].copy_from_slice(&0x0050_2000u64.to_ne_bytes());
        let s = summarize_segment(&bytes, TL, Lsn(w.base), SEG as u32, None).unwrap();
        assert_eq!(s.records, 2); // the record and the filler
        assert!(matches!(&s.end, WalEnd::Invalid { lsn, reason } if *lsn == spanning.0 && reason.contains("recycled")), "{:?}", s.end);
        assert_eq!(block_set(&s.blocks), set(&[(rel(1), Fork::Main, 1)]));
    }

    #[test]
    fn a_record_split_across_segments_is_stitched() {
        let base = 0x0100_0000;
        let seg1 = base + SEG as u64;
        // Split after its header, and split inside its header.
        for before_end in [200u64, 16] {
            let mut w = WalWriter::new(base);
            let early = heap(&mut w, Body::default().block(0, Fork::Main, Some(rel(1)), 1, 0));
            w.pad_to(seg1 - before_end);
            let split = heap(&mut w, Body::default().block(0, Fork::Main, Some(rel(2)), 20, 30).block(1, Fork::Vm, None, 0, 0).main(&[9; 500]));
            let after = heap(&mut w, Body::default().block(0, Fork::Main, Some(rel(3)), 30, 0));
            let (s0, s1) = (w.summary(0), w.summary(1));

            let tail = s0.tail.as_ref().expect("the record continues into the next segment");
            assert_eq!(tail.lsn, split.0);
            assert_eq!(u64::from(tail.len), before_end);
            assert_eq!(s0.covered_end, s0.end_lsn());
            assert_eq!(s0.last_record, Some(split.0));
            assert!(!block_set(&s0.blocks).contains(&(rel(2), Fork::Main, 20)));
            assert_eq!(s1.head.rem_len, tail.total_len - tail.len);
            assert_eq!(s1.first_record, Some(after.0));
            assert_eq!(s1.first_prev, Some(split.0));

            let all = changed_between(&[s0.clone(), s1.clone()], early.0, s1.covered_end).unwrap();
            assert_eq!(changed_set(&all), set(&[(rel(1), Fork::Main, 1), (rel(2), Fork::Main, 20), (rel(2), Fork::Vm, 0), (rel(3), Fork::Main, 30)]));
            // Up to the split record: no need for the next segment.
            let before = changed_between(std::slice::from_ref(&s0), early.0, split.0).unwrap();
            assert_eq!(changed_set(&before), set(&[(rel(1), Fork::Main, 1)]));
            // Including it without the next segment is a gap.
            let err = changed_between(std::slice::from_ref(&s0), early.0, after.0).unwrap_err();
            assert!(matches!(err, SummaryGap::Unstitched { lsn, .. } if lsn == split.0), "{err}");
            // Only the split record.
            let only = changed_between(&[s0.clone(), s1.clone()], split.0, after.0).unwrap();
            assert_eq!(changed_set(&only), set(&[(rel(2), Fork::Main, 20), (rel(2), Fork::Vm, 0)]));

            // Damage in the continuation shows only once stitched.
            let mut bytes = w.segment(1);
            bytes[LONG_PAGE_HEADER_LEN + 40] ^= 1;
            let damaged = summarize_segment(&bytes, TL, Lsn(seg1), SEG as u32, None).unwrap();
            let err = changed_between(&[s0.clone(), damaged], early.0, s1.covered_end).unwrap_err();
            assert!(matches!(&err, SummaryGap::BadSplitRecord { detail, .. } if detail.contains("CRC")), "{err}");
        }
    }

    #[test]
    fn a_record_longer_than_a_segment_is_stitched_across_three() {
        let base = 0x0100_0000;
        let mut w = WalWriter::new(base);
        let first = heap(&mut w, Body::default().block(0, Fork::Main, Some(rel(1)), 1, 0));
        let giant = heap(&mut w, Body::default().block(0, Fork::Main, Some(rel(2)), 5, 0).main(&vec![7; 2 * SEG + 1000]));
        let after = heap(&mut w, Body::default().block(0, Fork::Main, Some(rel(3)), 6, 0));
        assert!(after.0 .0 > base + 2 * SEG as u64);
        let summaries: Vec<SegmentSummary> = (0..3).map(|i| w.summary(i)).collect();
        assert_eq!(summaries[1].first_record, None);
        assert_eq!(summaries[1].covered_end, summaries[1].end_lsn());
        assert_eq!(summaries[2].first_prev, Some(giant.0));
        let all = changed_between(&summaries, first.0, summaries[2].covered_end).unwrap();
        assert_eq!(changed_set(&all), set(&[(rel(1), Fork::Main, 1), (rel(2), Fork::Main, 5), (rel(3), Fork::Main, 6)]));
        // The middle segment alone cannot finish the record.
        let err = changed_between(&summaries[..2], first.0, summaries[1].end_lsn()).unwrap_err();
        assert!(matches!(err, SummaryGap::Unstitched { lsn, .. } if lsn == giant.0), "{err}");
        // A gap in the middle.
        let err = changed_between(&[summaries[0].clone(), summaries[2].clone()], first.0, after.1).unwrap_err();
        assert!(matches!(err, SummaryGap::NotConsecutive { .. }), "{err}");
    }

    #[test]
    fn range_boundaries_select_records() {
        let mut w = WalWriter::new(0x0100_0000);
        let a = heap(&mut w, Body::default().block(0, Fork::Main, Some(rel(1)), 10, 0));
        let b = heap(&mut w, Body::default().block(0, Fork::Main, Some(rel(2)), 20, 0));
        let c = heap(&mut w, Body::default().block(0, Fork::Main, Some(rel(3)), 30, 0));
        let s = w.summary(0);
        let pick = |from: Lsn, to: Lsn| changed_set(&changed_between(std::slice::from_ref(&s), from, to).unwrap());
        assert_eq!(pick(a.0, b.0), set(&[(rel(1), Fork::Main, 10)]));
        assert_eq!(pick(b.0, c.0), set(&[(rel(2), Fork::Main, 20)]));
        assert_eq!(pick(b.0, s.covered_end), set(&[(rel(2), Fork::Main, 20), (rel(3), Fork::Main, 30)]));
        assert!(pick(b.0, b.0).is_empty());
        // Beyond the end of valid WAL the summary cannot answer.
        let err = changed_between(std::slice::from_ref(&s), a.0, s.end_lsn()).unwrap_err();
        assert!(matches!(err, SummaryGap::Partial { covered, .. } if covered == s.covered_end), "{err}");
        assert!(matches!(changed_between(std::slice::from_ref(&s), c.0, a.0), Err(SummaryGap::Reversed { .. })));
        assert!(matches!(changed_between(std::slice::from_ref(&s), Lsn(0x0500_0000), Lsn(0x0500_0100)), Err(SummaryGap::Missing { .. })));
    }

    #[test]
    fn stop_at_makes_a_partial_summary() {
        let mut w = WalWriter::new(0x0100_0000);
        let a = heap(&mut w, Body::default().block(0, Fork::Main, Some(rel(1)), 10, 0));
        let b = heap(&mut w, Body::default().block(0, Fork::Main, Some(rel(2)), 20, 0));
        let s = summarize_segment(&w.segment(0), TL, Lsn(w.base), SEG as u32, Some(b.0)).unwrap();
        assert_eq!(s.records, 1);
        assert_eq!(s.end, WalEnd::StopAt { lsn: b.0 });
        assert_eq!(s.covered_end, b.0);
        assert!(s.is_partial());
        assert_eq!(changed_set(&changed_between(std::slice::from_ref(&s), a.0, b.0).unwrap()), set(&[(rel(1), Fork::Main, 10)]));
        assert!(matches!(changed_between(&[s], a.0, b.1), Err(SummaryGap::Partial { .. })));
    }

    #[test]
    fn restore_points_are_found() {
        let mut w = WalWriter::new(0x0100_0000);
        heap(&mut w, Body::default().block(0, Fork::Main, Some(rel(1)), 10, 0));
        let micros: i64 = 771_234_567_891_234; // since 2000-01-01
        let mut main = micros.to_ne_bytes().to_vec();
        let mut name = [0u8; RESTORE_POINT_NAME_LEN];
        name[..3].copy_from_slice(b"rp1");
        main.extend_from_slice(&name);
        let rp = w.append(RM_XLOG_ID, XLOG_RESTORE_POINT, &Body::default().main(&main).bytes());
        let s = w.summary(0);
        let expected =
            RestorePoint { name: "rp1".into(), lsn: rp.0, end: Lsn((rp.1 .0 + 7) & !7), time: "2024-06-09T07:49:27.891234Z".parse().unwrap() };
        assert_eq!(s.restore_points, vec![expected.clone()]);
        let all = changed_between(std::slice::from_ref(&s), s.first_record.unwrap(), s.covered_end).unwrap();
        assert_eq!(all.restore_points(), &[expected]);
        assert!(changed_between(std::slice::from_ref(&s), rp.1, s.covered_end).unwrap().restore_points().is_empty());
    }

    #[test]
    fn relation_changes_without_block_references_are_unsafe() {
        let mut w = WalWriter::new(0x0100_0000);
        let start = heap(&mut w, Body::default().block(0, Fork::Main, Some(rel(1)), 10, 0).block(1, Fork::Fsm, None, 0, 0));
        let main_of = |words: &[u32]| words.iter().flat_map(|v| v.to_ne_bytes()).collect::<Vec<u8>>();
        let special = |info: u8| info | XLR_SPECIAL_REL_UPDATE;
        let create = w.append(RM_SMGR_ID, special(XLOG_SMGR_CREATE), &Body::default().main(&main_of(&[1663, 5, 2000, 0])).bytes());
        let truncate = w.append(RM_SMGR_ID, special(XLOG_SMGR_TRUNCATE), &Body::default().main(&main_of(&[4, 1663, 5, 2001, 7])).bytes());
        let copy = w.append(RM_DBASE_ID, special(XLOG_DBASE_CREATE_FILE_COPY), &Body::default().main(&main_of(&[16500, 1663, 1, 1663])).bytes());
        let wal_log = w.append(RM_DBASE_ID, special(XLOG_DBASE_CREATE_WAL_LOG), &Body::default().main(&main_of(&[16501, 1663])).bytes());
        let drop = w.append(RM_DBASE_ID, special(XLOG_DBASE_DROP), &Body::default().main(&main_of(&[16502, 2, 1663, 17000])).bytes());
        let quiet_end = Lsn(w.next_start());
        let minimal = w.append(RM_XLOG_ID, XLOG_PARAMETER_CHANGE, &Body::default().main(&main_of(&[100, 8, 10, 0, 64, 0, 0])).bytes());
        let custom = w.append(200, special(0x30), &Body::default().main(b"x").bytes());
        let s = w.summary(0);

        assert_eq!(
            s.unsafe_relations,
            vec![
                RelationEvent { rel: rel(2000), lsn: create.0, change: RelationChange::Created { fork: Fork::Main } },
                RelationEvent { rel: rel(2001), lsn: truncate.0, change: RelationChange::Truncated { blocks: 4, flags: 7 } },
            ]
        );
        assert_eq!(
            s.unsafe_databases,
            vec![
                DatabaseEvent { spc: 1663, db: 16500, lsn: copy.0, change: DatabaseChange::CopiedFrom { src_spc: 1663, src_db: 1 } },
                DatabaseEvent { spc: 1663, db: 16501, lsn: wal_log.0, change: DatabaseChange::Created },
                DatabaseEvent { spc: 1663, db: 16502, lsn: drop.0, change: DatabaseChange::Dropped },
                DatabaseEvent { spc: 17000, db: 16502, lsn: drop.0, change: DatabaseChange::Dropped },
            ]
        );
        assert_eq!(
            s.unsafe_cluster,
            vec![
                ClusterEvent { lsn: minimal.0, change: ClusterChange::WalLevelMinimal },
                ClusterEvent { lsn: custom.0, change: ClusterChange::UnknownRelationUpdate { rmid: 200, info: 0x31 } },
            ]
        );

        let before_minimal = changed_between(std::slice::from_ref(&s), start.0, quiet_end).unwrap();
        assert!(before_minimal.is_vouched(rel(1), Fork::Main));
        assert!(!before_minimal.is_vouched(rel(1), Fork::Fsm), "the FSM is never vouched for");
        assert!(!before_minimal.is_vouched(rel(2000), Fork::Main));
        assert!(!before_minimal.is_vouched(rel(2001), Fork::Vm));
        assert!(!before_minimal.is_vouched(RelFileNode { spc: 17000, db: 16502, rel: 3 }, Fork::Main));
        assert!(!before_minimal.is_vouched(RelFileNode { spc: 1663, db: 16500, rel: 3 }, Fork::Main));
        assert!(before_minimal.is_vouched(RelFileNode { spc: 1663, db: 1, rel: 3 }, Fork::Main));
        // Only what is in the range counts.
        let before_create = changed_between(std::slice::from_ref(&s), start.0, create.0).unwrap();
        assert!(before_create.is_vouched(rel(2000), Fork::Main));
        let with_minimal = changed_between(std::slice::from_ref(&s), start.0, s.covered_end).unwrap();
        assert!(!with_minimal.is_vouched(rel(1), Fork::Main));
    }

    /// Main data of a commit record: dbinfo, two subtransactions, `rels` dropped, and one
    /// invalidation message after them.
    fn commit_main_data(rels: &[RelFileNode], subxacts: usize) -> Vec<u8> {
        let mut main = 0i64.to_ne_bytes().to_vec();
        let xinfo = XACT_XINFO_HAS_DBINFO | XACT_XINFO_HAS_SUBXACTS | XACT_XINFO_HAS_RELFILENODES | (1 << 3);
        main.extend_from_slice(&xinfo.to_ne_bytes());
        for word in [5u32, 1663, subxacts as u32] {
            main.extend_from_slice(&word.to_ne_bytes());
        }
        for i in 0..subxacts {
            main.extend_from_slice(&(900 + i as u32).to_ne_bytes());
        }
        main.extend_from_slice(&(rels.len() as u32).to_ne_bytes());
        for r in rels {
            for word in [r.spc, r.db, r.rel] {
                main.extend_from_slice(&word.to_ne_bytes());
            }
        }
        main.extend_from_slice(&1u32.to_ne_bytes());
        main.extend_from_slice(&[0x55; 16]);
        main
    }

    #[test]
    fn relations_dropped_by_a_transaction_are_unsafe() {
        let mut w = WalWriter::new(0x0100_0000);
        let a = heap(&mut w, Body::default().block(0, Fork::Main, Some(rel(1)), 10, 0));
        let commit_info = XLOG_XACT_COMMIT | XLOG_XACT_HAS_INFO | XLR_SPECIAL_REL_UPDATE;
        let commit = w.append(RM_XACT_ID, commit_info, &Body::default().main(&commit_main_data(&[rel(2), rel(3)], 2)).bytes());
        // An abort that drops nothing has neither the flag nor the list.
        w.append(RM_XACT_ID, XLOG_XACT_ABORT, &Body::default().main(&0i64.to_ne_bytes()).bytes());
        let s = w.summary(0);
        assert!(s.unsafe_cluster.is_empty(), "{:?}", s.unsafe_cluster);
        assert_eq!(
            s.unsafe_relations,
            vec![
                RelationEvent { rel: rel(2), lsn: commit.0, change: RelationChange::Dropped },
                RelationEvent { rel: rel(3), lsn: commit.0, change: RelationChange::Dropped },
            ]
        );
        let c = changed_between(std::slice::from_ref(&s), a.0, s.covered_end).unwrap();
        assert!(c.is_vouched(rel(1), Fork::Main));
        assert!(!c.is_vouched(rel(3), Fork::Main));

        // Its main data truncated: a malformed record.
        let mut w = WalWriter::new(0x0100_0000);
        let mut short = commit_main_data(&[rel(2)], 0);
        short.truncate(30);
        w.append(RM_XACT_ID, commit_info, &Body::default().main(&short).bytes());
        let err = summarize_segment(&w.segment(0), TL, Lsn(0x0100_0000), SEG as u32, None).unwrap_err();
        assert!(err.to_string().contains("transaction end record with 30 bytes"), "{err}");
    }

    #[test]
    fn a_split_record_whose_main_data_was_not_kept_refuses_everything() {
        // 10 000 subtransactions put the dropped relation 40 kB into the record, beyond the
        // 8 kB we keep of its beginning.
        let base = 0x0100_0000;
        let mut w = WalWriter::new(base);
        let a = heap(&mut w, Body::default().block(0, Fork::Main, Some(rel(1)), 10, 0));
        w.pad_to(base + SEG as u64 - 20_000);
        let info = XLOG_XACT_COMMIT | XLOG_XACT_HAS_INFO | XLR_SPECIAL_REL_UPDATE;
        let commit = w.append(RM_XACT_ID, info, &Body::default().main(&commit_main_data(&[rel(2)], 10_000)).bytes());
        let b = heap(&mut w, Body::default().block(0, Fork::Main, Some(rel(3)), 30, 0));
        let (s0, s1) = (w.summary(0), w.summary(1));
        assert_eq!(s0.tail.as_ref().unwrap().bytes.len(), PIECE_CAP);
        let c = changed_between(&[s0, s1], a.0, b.1).unwrap();
        assert!(matches!(c.unsafe_cluster(), [ClusterEvent { lsn, change: ClusterChange::Unreadable { .. } }] if *lsn == commit.0));
        assert!(!c.is_vouched(rel(1), Fork::Main));
    }

    #[test]
    fn a_switch_ends_the_segment() {
        let base = 0x0100_0000;
        let mut w = WalWriter::new(base);
        let a = heap(&mut w, Body::default().block(0, Fork::Main, Some(rel(1)), 10, 0));
        let switch = w.append(RM_XLOG_ID, XLOG_SWITCH, &[]);
        w.finish_switch();
        let b = heap(&mut w, Body::default().block(0, Fork::Main, Some(rel(2)), 20, 0));
        let (s0, s1) = (w.summary(0), w.summary(1));
        assert_eq!(s0.end, WalEnd::Switch { lsn: switch.0 });
        assert_eq!(s0.covered_end, s0.end_lsn());
        assert!(!s0.is_partial());
        assert_eq!(s1.first_prev, Some(switch.0));
        let all = changed_between(&[s0, s1], a.0, b.1).unwrap();
        assert_eq!(changed_set(&all), set(&[(rel(1), Fork::Main, 10), (rel(2), Fork::Main, 20)]));
    }

    #[test]
    fn a_switch_record_split_across_segments_owns_the_next_one() {
        // The switch record's header does not fit in the segment: the server reserves the whole
        // next segment for it, which then holds 8 bytes of it and nothing else.
        let base = 0x0100_0000;
        let mut w = WalWriter::new(base);
        let a = heap(&mut w, Body::default().block(0, Fork::Main, Some(rel(1)), 10, 0));
        w.pad_to(base + SEG as u64 - 16);
        let switch = w.append(RM_XLOG_ID, XLOG_SWITCH, &[]);
        w.insert = base + 2 * SEG as u64;
        let b = heap(&mut w, Body::default().block(0, Fork::Main, Some(rel(2)), 20, 0));
        let summaries: Vec<SegmentSummary> = (0..3).map(|i| w.summary(i)).collect();
        assert_eq!(summaries[0].tail.as_ref().map(|t| t.lsn), Some(switch.0));
        assert!(summaries[1].is_partial());
        let all = changed_between(&summaries, a.0, b.1).unwrap();
        assert_eq!(changed_set(&all), set(&[(rel(1), Fork::Main, 10), (rel(2), Fork::Main, 20)]));
    }

    #[test]
    fn a_record_abandoned_by_a_crash_is_dropped() {
        // The server crashed while writing a record that spans the segment boundary; after
        // recovery WAL resumed at the start of the next segment, flagged
        // XLP_FIRST_IS_OVERWRITE_CONTRECORD.
        let base = 0x0100_0000;
        let seg1 = base + SEG as u64;
        let mut w = WalWriter::new(base);
        let a = heap(&mut w, Body::default().block(0, Fork::Main, Some(rel(1)), 10, 0));
        w.pad_to(seg1 - 200);
        let last_complete = w.prev;
        heap(&mut w, Body::default().block(0, Fork::Main, Some(rel(2)), 20, 0).main(&[1; 1000]));
        let s0 = w.summary(0);

        let mut after = WalWriter::new(seg1);
        after.prev = last_complete;
        after.overwrite_pages.insert(seg1);
        let b = heap(&mut after, Body::default().block(0, Fork::Main, Some(rel(3)), 30, 0));
        let s1 = after.summary(0);
        assert!(s1.head.aborted);
        let all = changed_between(&[s0, s1], a.0, b.1).unwrap();
        assert_eq!(changed_set(&all), set(&[(rel(1), Fork::Main, 10), (rel(3), Fork::Main, 30)]));
    }

    #[test]
    fn segments_that_do_not_belong_together_are_refused() {
        let base = 0x0100_0000;
        let mut w = WalWriter::new(base);
        let a = heap(&mut w, Body::default().block(0, Fork::Main, Some(rel(1)), 10, 0));
        w.append(RM_XLOG_ID, XLOG_SWITCH, &[]);
        w.finish_switch();
        let s0 = w.summary(0);
        let mut other = WalWriter::new(base + SEG as u64);
        other.prev = 0x0100_0028 + 8; // not the switch record
        let b = heap(&mut other, Body::default().block(0, Fork::Main, Some(rel(2)), 20, 0));
        let err = changed_between(&[s0, other.summary(0)], a.0, b.1).unwrap_err();
        assert!(matches!(&err, SummaryGap::Discontinuous { detail, .. } if detail.contains("points back")), "{err}");
    }

    #[test]
    fn empty_and_foreign_segments() {
        let zeros = vec![0u8; SEG];
        let s = summarize_segment(&zeros, TL, Lsn(0x0100_0000), SEG as u32, None).unwrap();
        assert_eq!(s.covered_end, s.start);
        assert!(s.is_partial());
        assert_eq!(s.system_id, None);

        let mut w = WalWriter::new(0x0100_0000);
        heap(&mut w, Body::default().block(0, Fork::Main, Some(rel(1)), 10, 0));
        let mut bytes = w.segment(0);
        bytes[0..2].copy_from_slice(&0xD10Du16.to_ne_bytes());
        assert!(matches!(summarize_segment(&bytes, TL, Lsn(0x0100_0000), SEG as u32, None), Err(SummaryError::NotPg15 { magic: 0xD10D, .. })));
        let bytes = w.segment(0);
        assert!(matches!(summarize_segment(&bytes, TL, Lsn(0x0110_0000), 2 * SEG as u32, None), Err(SummaryError::Misaligned { .. })));
        assert!(matches!(summarize_segment(&bytes, TL, Lsn(0x0100_0000), 2 * SEG as u32, None), Err(SummaryError::SegmentSizeMismatch { .. })));
        assert!(matches!(summarize_segment(&bytes, TimelineId(0), Lsn(0x0100_0000), SEG as u32, None), Err(SummaryError::LaterTimeline { .. })));
        // Only the first pages given.
        let s = summarize_segment(&bytes[..3 * XLOG_BLCKSZ], TL, Lsn(0x0100_0000), SEG as u32, None).unwrap();
        assert_eq!(s.records, 1);
    }

    #[test]
    fn summaries_round_trip_through_bytes() {
        let base = 0x0100_0000;
        let mut w = WalWriter::new(base);
        heap(&mut w, Body::default().block(0, Fork::Main, Some(rel(1)), 10, 0).block(1, Fork::Vm, None, 0, 0));
        w.pad_to(base + SEG as u64 - 200);
        heap(&mut w, Body::default().block(0, Fork::Main, Some(rel(2)), 20, 0).main(&[1; 1000]));
        let s0 = w.summary(0);
        let s1 = w.summary(1);
        for s in [s0, s1] {
            let bytes = s.to_bytes();
            assert_eq!(SegmentSummary::from_bytes(&bytes).unwrap(), s);
        }
        let newer = br#"{"format": 99, "summary": {}}"#;
        assert!(matches!(SegmentSummary::from_bytes(newer), Err(SummaryError::Format { found: 99, .. })));
        assert!(matches!(SegmentSummary::from_bytes(b"not json"), Err(SummaryError::Json(_))));
    }

    #[test]
    fn relation_file_paths() {
        let f = |p: &str| RelationFile::parse(p);
        assert_eq!(f("base/5/16384"), Some(RelationFile { rel: rel(16384), fork: Fork::Main, segno: 0 }));
        assert_eq!(f("base/5/16384_vm"), Some(RelationFile { rel: rel(16384), fork: Fork::Vm, segno: 0 }));
        assert_eq!(f("base/5/16384_fsm.2"), Some(RelationFile { rel: rel(16384), fork: Fork::Fsm, segno: 2 }));
        assert_eq!(f("base/5/16384_init"), Some(RelationFile { rel: rel(16384), fork: Fork::Init, segno: 0 }));
        assert_eq!(f("global/1262"), Some(RelationFile { rel: RelFileNode { spc: 1664, db: 0, rel: 1262 }, fork: Fork::Main, segno: 0 }));
        assert_eq!(
            f("pg_tblspc/16390/PG_15_202209061/16391/16400.3"),
            Some(RelationFile { rel: RelFileNode { spc: 16390, db: 16391, rel: 16400 }, fork: Fork::Main, segno: 3 })
        );
        for other in [
            "base/5/pg_filenode.map",
            "base/5/PG_VERSION",
            "base/5/t3_16384",
            "base/5/16384.0",
            "base/5/016384",
            "base/5/16384_xyz",
            "global/pg_control",
            "pg_tblspc/16390/PG_16_202307071/16391/16400",
            "pg_wal/000000010000000000000001",
            "base/5/16384/x",
        ] {
            assert_eq!(f(other), None, "{other}");
        }
        let file = f("base/5/16384.1").unwrap();
        assert_eq!(file.block_span(), (131_072, 262_144));

        let mut w = WalWriter::new(0x0100_0000);
        let a = heap(&mut w, Body::default().block(0, Fork::Main, Some(rel(16384)), 5, 0).block(1, Fork::Main, None, 131_073, 0));
        let s = w.summary(0);
        let c = changed_between(&[s], a.0, a.1).unwrap();
        assert_eq!(c.blocks_in_file(&f("base/5/16384").unwrap()).collect::<Vec<_>>(), vec![5]);
        assert_eq!(c.blocks_in_file(&file).collect::<Vec<_>>(), vec![1]);
        assert_eq!(c.blocks(rel(16384), Fork::Main), &[BlockRange { start: 5, end: 6 }, BlockRange { start: 131_073, end: 131_074 }]);
        assert_eq!("1663/5/16384".parse::<RelFileNode>().unwrap(), rel(16384));
        assert!("1663/5".parse::<RelFileNode>().is_err());
    }
}
