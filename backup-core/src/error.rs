//! Errors keep their causes as `source()` rather than in their message: a message says what
//! failed, to what, and what to do; the chain below it says why. [`report`] prints the whole
//! chain on one line, for places that log or raise an error (the extension's `ereport`s, a
//! verify report); `anyhow`'s `{:#}` does the same in `wal-archiver`.

use std::error::Error;

/// `message: cause: cause's cause`, each link once.
pub fn report(error: &(dyn Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        // A wrapper that forwards its inner error's message adds nothing to say twice.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading manifest of backup_x")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn the_chain_is_on_one_line() {
        let e = Outer(std::io::Error::other("disk on fire"));
        assert_eq!(report(&e), "reading manifest of backup_x: disk on fire");
    }
}
