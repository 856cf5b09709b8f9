//! The server half of a non-exclusive base backup, written once.
//!
//! `pg_backup_start` and `pg_backup_stop` must come from the same session; who holds that
//! session differs (the extension's background worker talks SPI, `wal-archiver backup` a client
//! connection), so each provides only a [`SqlSession`] that runs one statement and returns one
//! row of text. The statements and the parsing of their answers are here, for both.

use std::fmt;

use crate::pg::wal::{Lsn, TimelineId, WalError};

/// One statement, one row, every column as text (`None` for NULL).
pub trait SqlSession {
    fn query_row(&mut self, sql: &str, args: &[&str]) -> Result<Vec<Option<String>>, ServerError>;
}

/// An error the server raised (or the connection to it), as the session reported it.
#[derive(Debug)]
pub struct ServerError {
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ServerError {
    /// The server's own message (SPI reports errors as text).
    pub fn message(message: impl Into<String>) -> ServerError {
        ServerError { message: message.into(), source: None }
    }

    /// A client library's error, kept as the source.
    pub fn from_client(e: impl std::error::Error + Send + Sync + 'static) -> ServerError {
        ServerError { message: "the server connection failed".into(), source: Some(Box::new(e)) }
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ServerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{step}")]
    Server { step: &'static str, #[source] cause: ServerError },
    #[error("{step}: the server answered {answer:?}")]
    Unexpected { step: &'static str, answer: String },
    #[error("{step}")]
    BadLsn { step: &'static str, #[source] cause: WalError },
}

pub struct StopInfo {
    pub lsn: Lsn,
    pub backup_label: String,
    pub tablespace_map: Option<String>,
}

/// `pg_backup_start(label, fast => true)`; returns the start LSN.
pub fn start(session: &mut dyn SqlSession, label: &str) -> Result<Lsn, SessionError> {
    const STEP: &str = "pg_backup_start";
    let row = run(session, STEP, "SELECT pg_backup_start($1, true)::text", &[label])?;
    parse_lsn(STEP, column(STEP, &row, 0)?)
}

/// `pg_backup_stop(wait_for_archive => false)`: the server's own wait polls once a second;
/// the backup waits instead for the stop segment to reach *its* repository, which is the
/// condition that matters.
pub fn stop(session: &mut dyn SqlSession) -> Result<StopInfo, SessionError> {
    const STEP: &str = "pg_backup_stop";
    let mut row = run(session, STEP, "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)", &[])?;
    let lsn = parse_lsn(STEP, column(STEP, &row, 0)?)?;
    let backup_label = column(STEP, &row, 1)?.to_string();
    Ok(StopInfo { lsn, backup_label, tablespace_map: row.get_mut(2).and_then(Option::take) })
}

/// The next transaction id (`pg_current_snapshot()`'s xmax), after the stop: transactions from
/// here on commit after the backup is consistent.
pub fn next_xid(session: &mut dyn SqlSession) -> Result<u64, SessionError> {
    const STEP: &str = "reading the next transaction id";
    let row = run(session, STEP, "SELECT pg_snapshot_xmax(pg_current_snapshot())::text", &[])?;
    let text = column(STEP, &row, 0)?;
    text.parse().map_err(|_| SessionError::Unexpected { step: STEP, answer: text.to_string() })
}

/// The server's current timeline (from the last checkpoint: call it after `pg_backup_start`,
/// whose checkpoint makes it current).
pub fn timeline(session: &mut dyn SqlSession) -> Result<TimelineId, SessionError> {
    const STEP: &str = "reading the current timeline";
    let row = run(session, STEP, "SELECT timeline_id::text FROM pg_control_checkpoint()", &[])?;
    let text = column(STEP, &row, 0)?;
    text.parse().map(TimelineId).map_err(|_| SessionError::Unexpected { step: STEP, answer: text.to_string() })
}

/// Whether the cluster has data checksums (`initdb --data-checksums`): without them a page's
/// checksum field means nothing and must not be verified.
pub fn data_checksums(session: &mut dyn SqlSession) -> Result<bool, SessionError> {
    const STEP: &str = "reading data_checksums";
    let row = run(session, STEP, "SELECT current_setting('data_checksums')", &[])?;
    match column(STEP, &row, 0)? {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(SessionError::Unexpected { step: STEP, answer: other.to_string() }),
    }
}

fn run(session: &mut dyn SqlSession, step: &'static str, sql: &str, args: &[&str]) -> Result<Vec<Option<String>>, SessionError> {
    session.query_row(sql, args).map_err(|cause| SessionError::Server { step, cause })
}

fn column<'a>(step: &'static str, row: &'a [Option<String>], i: usize) -> Result<&'a str, SessionError> {
    row.get(i).and_then(Option::as_deref).ok_or_else(|| SessionError::Unexpected { step, answer: format!("{row:?}") })
}

fn parse_lsn(step: &'static str, text: &str) -> Result<Lsn, SessionError> {
    text.parse().map_err(|cause| SessionError::BadLsn { step, cause })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers from a list, recording the statements.
    struct Scripted(Vec<Result<Vec<Option<String>>, ServerError>>, Vec<String>);

    impl SqlSession for Scripted {
        fn query_row(&mut self, sql: &str, _args: &[&str]) -> Result<Vec<Option<String>>, ServerError> {
            self.1.push(sql.to_string());
            self.0.remove(0)
        }
    }

    #[test]
    fn answers_are_parsed_and_refusals_name_the_step() {
        let text = |s: &str| Some(s.to_string());
        let mut s = Scripted(
            vec![
                Ok(vec![text("0/2000028")]),
                Ok(vec![text("0/2000100"), text("START WAL LOCATION: ..."), None]),
                Ok(vec![text("745")]),
                Err(ServerError::message("must be superuser or a role with privileges of pg_checkpoint")),
                Ok(vec![text("garbage")]),
            ],
            Vec::new(),
        );
        assert_eq!(start(&mut s, "x").unwrap(), Lsn(0x0200_0028));
        let stopped = stop(&mut s).unwrap();
        assert_eq!((stopped.lsn, stopped.tablespace_map), (Lsn(0x0200_0100), None));
        assert_eq!(next_xid(&mut s).unwrap(), 745);
        let refused = start(&mut s, "x").unwrap_err();
        assert_eq!(crate::error::report(&refused), "pg_backup_start: must be superuser or a role with privileges of pg_checkpoint");
        assert!(matches!(start(&mut s, "x"), Err(SessionError::BadLsn { .. })));
        assert!(s.1[0].contains("pg_backup_start") && s.1[1].contains("pg_backup_stop(false)"));
    }
}
