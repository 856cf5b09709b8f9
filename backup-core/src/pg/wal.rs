//! PostgreSQL WAL vocabulary: LSNs, timelines, WAL file names and the long page header.
//!
//! The archive receives four kinds of files from the server (`archive_command` contract): full
//! 24-hex segments, `.partial` segments left behind at a promotion, `.history` files of timeline
//! switches and `.backup` history files written by `pg_backup_stop`. Only the first two carry WAL
//! pages, and so the system identifier we check to refuse another cluster's WAL.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A WAL position, printed the way PostgreSQL prints it (`16/B374D848`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

impl FromStr for Lsn {
    type Err = WalError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || WalError::BadLsn(s.to_string());
        let (hi, lo) = s.split_once('/').ok_or_else(bad)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

crate::serde_as_string!(Lsn);

/// A timeline id (1 for a cluster that never promoted a standby or ran PITR).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TimelineId(pub u32);

impl fmt::Display for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A cluster's system identifier (`pg_controldata`: "Database system identifier"). Serialized
/// as a string: it does not fit in a JSON consumer's double.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SystemId(pub u64);

impl fmt::Display for SystemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for SystemId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(SystemId)
    }
}

crate::serde_as_string!(SystemId);

/// Position of a segment in the WAL stream: `log` and `seg` are the 2nd and 3rd hex groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentPos {
    pub timeline: TimelineId,
    pub log: u32,
    pub seg: u32,
}

impl SegmentPos {
    /// The segment number PostgreSQL uses internally (`XLogSegNo`), given the segment size.
    pub fn segno(&self, segment_size: u32) -> u64 {
        u64::from(self.log) * segments_per_xlogid(segment_size) + u64::from(self.seg)
    }

    pub fn from_segno(timeline: TimelineId, segno: u64, segment_size: u32) -> SegmentPos {
        let per = segments_per_xlogid(segment_size);
        SegmentPos { timeline, log: (segno / per) as u32, seg: (segno % per) as u32 }
    }

    fn hex(&self) -> String {
        format!("{:08X}{:08X}{:08X}", self.timeline.0, self.log, self.seg)
    }
}

fn segments_per_xlogid(segment_size: u32) -> u64 {
    0x1_0000_0000 / u64::from(segment_size.max(1))
}

/// The name of a file the server hands to `archive_command` or asks of `restore_command`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WalFileName {
    /// `000000010000000A000000FF`
    Segment(SegmentPos),
    /// `000000010000000A000000FF.partial`: the last, incomplete segment of an old timeline.
    Partial(SegmentPos),
    /// `00000002.history`
    History(TimelineId),
    /// `000000010000000A000000FF.00000028.backup`: written by `pg_backup_stop`.
    BackupHistory(SegmentPos, u32),
}

impl WalFileName {
    pub fn parse(name: &str) -> Result<WalFileName, WalError> {
        let bad = || WalError::BadFileName(name.to_string());
        let is_hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase());
        let hex32 = |s: &str| u32::from_str_radix(s, 16).map_err(|_| bad());
        let segment = |s: &str| -> Result<SegmentPos, WalError> {
            if s.len() != 24 || !is_hex(s) {
                return Err(bad());
            }
            Ok(SegmentPos {
                timeline: TimelineId(hex32(&s[0..8])?),
                log: hex32(&s[8..16])?,
                seg: hex32(&s[16..24])?,
            })
        };
        match name.split('.').collect::<Vec<_>>().as_slice() {
            [seg] => Ok(WalFileName::Segment(segment(seg)?)),
            [seg, "partial"] => Ok(WalFileName::Partial(segment(seg)?)),
            [tli, "history"] if tli.len() == 8 && is_hex(tli) => {
                Ok(WalFileName::History(TimelineId(hex32(tli)?)))
            }
            [seg, off, "backup"] if off.len() == 8 && is_hex(off) => {
                Ok(WalFileName::BackupHistory(segment(seg)?, hex32(off)?))
            }
            _ => Err(bad()),
        }
    }

    pub fn timeline(&self) -> TimelineId {
        match self {
            WalFileName::Segment(p) | WalFileName::Partial(p) | WalFileName::BackupHistory(p, _) => {
                p.timeline
            }
            WalFileName::History(t) => *t,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            WalFileName::Segment(_) => "segment",
            WalFileName::Partial(_) => "partial",
            WalFileName::History(_) => "history",
            WalFileName::BackupHistory(..) => "backup",
        }
    }

    /// Segments and partial segments hold WAL pages (and so a long page header up front).
    pub fn carries_wal_pages(&self) -> bool {
        matches!(self, WalFileName::Segment(_) | WalFileName::Partial(_))
    }

    pub fn segment(&self) -> Option<SegmentPos> {
        match self {
            WalFileName::Segment(p) => Some(*p),
            _ => None,
        }
    }

    /// Where the file lives in the repository. Segments are grouped by their first 16 hex digits
    /// (timeline + log), as PostgreSQL's own 4 GB "xlogid" ranges, so no prefix grows unbounded.
    pub fn object_key(&self) -> String {
        match self {
            WalFileName::History(_) => format!("wal/history/{self}"),
            WalFileName::Segment(p) | WalFileName::Partial(p) | WalFileName::BackupHistory(p, _) => {
                format!("wal/{}/{self}", &p.hex()[..16])
            }
        }
    }
}

impl fmt::Display for WalFileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalFileName::Segment(p) => write!(f, "{}", p.hex()),
            WalFileName::Partial(p) => write!(f, "{}.partial", p.hex()),
            WalFileName::History(t) => write!(f, "{:08X}.history", t.0),
            WalFileName::BackupHistory(p, off) => write!(f, "{}.{off:08X}.backup", p.hex()),
        }
    }
}

impl FromStr for WalFileName {
    type Err = WalError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WalFileName::parse(s)
    }
}

crate::serde_as_string!(WalFileName);

/// `XLOG_PAGE_MAGIC` per PostgreSQL major version: WAL of another major version is unreadable.
pub fn xlog_page_magic(pg_major: u32) -> Option<u16> {
    match pg_major {
        15 => Some(0xD110),
        _ => None,
    }
}

const XLP_LONG_HEADER: u16 = 0x0002;
/// `sizeof(XLogLongPageHeaderData)` on 64-bit platforms.
pub const LONG_PAGE_HEADER_LEN: usize = 40;

/// The long header at the start of every WAL segment (`XLogLongPageHeaderData`), in the
/// server's native byte order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LongPageHeader {
    pub magic: u16,
    pub timeline: TimelineId,
    pub page_addr: Lsn,
    pub system_id: SystemId,
    pub segment_size: u32,
    pub block_size: u32,
}

impl LongPageHeader {
    pub fn parse(page: &[u8]) -> Result<LongPageHeader, WalError> {
        if page.len() < LONG_PAGE_HEADER_LEN {
            return Err(WalError::BadPageHeader("file is shorter than a WAL page header".into()));
        }
        let u16_at = |o: usize| u16::from_ne_bytes(page[o..o + 2].try_into().unwrap());
        let u32_at = |o: usize| u32::from_ne_bytes(page[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_ne_bytes(page[o..o + 8].try_into().unwrap());
        let info = u16_at(2);
        if info & XLP_LONG_HEADER == 0 {
            return Err(WalError::BadPageHeader(
                "first page has no long header (XLP_LONG_HEADER unset)".into(),
            ));
        }
        Ok(LongPageHeader {
            magic: u16_at(0),
            timeline: TimelineId(u32_at(4)),
            page_addr: Lsn(u64_at(8)),
            system_id: SystemId(u64_at(24)),
            segment_size: u32_at(32),
            block_size: u32_at(36),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("'{0}' is not a WAL file name (expected a 24-hex segment, .partial, .history or .backup file)")]
    BadFileName(String),
    #[error("'{0}' is not an LSN (expected the form 16/B374D848)")]
    BadLsn(String),
    #[error("bad WAL page header: {0}")]
    BadPageHeader(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_every_kind() {
        for name in [
            "000000010000000A000000FF",
            "000000020000000000000003.partial",
            "00000002.history",
            "000000010000000000000002.00000028.backup",
        ] {
            assert_eq!(WalFileName::parse(name).unwrap().to_string(), name);
        }
        let seg = WalFileName::parse("000000010000000A000000FF").unwrap();
        assert_eq!(seg.object_key(), "wal/000000010000000A/000000010000000A000000FF");
        assert_eq!(WalFileName::parse("00000002.history").unwrap().object_key(), "wal/history/00000002.history");
    }

    #[test]
    fn rejects_foreign_names() {
        for name in ["", "RECOVERYXLOG", "000000010000000a000000ff", "0000000100000000000000", "x.history",
            "000000010000000000000001.tmp", "../000000010000000000000001"] {
            assert!(WalFileName::parse(name).is_err(), "{name} accepted");
        }
    }

    #[test]
    fn lsn_round_trip() {
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn.0, 0x16_B374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert!("16B374D848".parse::<Lsn>().is_err());
    }

    #[test]
    fn segment_numbers_wrap_at_xlogid() {
        let size = 16 * 1024 * 1024;
        let p = SegmentPos { timeline: TimelineId(1), log: 1, seg: 0 };
        assert_eq!(p.segno(size), 256);
        assert_eq!(SegmentPos::from_segno(TimelineId(1), 255, size), SegmentPos { timeline: TimelineId(1), log: 0, seg: 255 });
    }

    #[test]
    fn long_header_fields() {
        let mut page = vec![0u8; 8192];
        page[0..2].copy_from_slice(&0xD110u16.to_ne_bytes());
        page[2..4].copy_from_slice(&XLP_LONG_HEADER.to_ne_bytes());
        page[4..8].copy_from_slice(&1u32.to_ne_bytes());
        page[24..32].copy_from_slice(&7312345678901234567u64.to_ne_bytes());
        page[32..36].copy_from_slice(&(16u32 << 20).to_ne_bytes());
        let h = LongPageHeader::parse(&page).unwrap();
        assert_eq!(h.system_id, SystemId(7312345678901234567));
        assert_eq!(h.segment_size, 16 << 20);
        page[2] = 0;
        assert!(LongPageHeader::parse(&page).is_err());
    }
}
