//! The filling side of a multipart upload, shared by the remote backends: bytes are gathered
//! until a part is full, then handed over whole, so a writer holds at most the part filling
//! and the one being sent.

pub(crate) struct PartBuffer {
    buf: Vec<u8>,
    part_size: usize,
}

impl PartBuffer {
    pub(crate) fn new(part_size: usize) -> PartBuffer {
        PartBuffer { buf: Vec::new(), part_size }
    }

    /// Take what fits of `data` into the current part: how many bytes were taken, and whether
    /// the part is now full (the caller ships it before writing more).
    pub(crate) fn fill(&mut self, data: &[u8]) -> (usize, bool) {
        if self.buf.capacity() == 0 {
            // Small objects never allocate a whole part.
            self.buf.reserve_exact(self.part_size.min(data.len().max(64 << 10)));
        }
        let n = data.len().min(self.part_size - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        (n, self.buf.len() == self.part_size)
    }

    /// The full part, leaving room for the next.
    pub(crate) fn take_part(&mut self) -> Vec<u8> {
        std::mem::replace(&mut self.buf, Vec::with_capacity(self.part_size))
    }

    /// Whatever is buffered: the last part, or the whole of a small object.
    pub(crate) fn take_rest(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_fill_to_their_size_and_no_further() {
        let mut p = PartBuffer::new(10);
        assert_eq!(p.fill(b"abcdef"), (6, false));
        assert_eq!(p.fill(b"ghijklmn"), (4, true));
        assert_eq!(p.take_part(), b"abcdefghij");
        assert!(p.is_empty());
        assert_eq!(p.fill(b"xyz"), (3, false));
        assert_eq!(p.take_rest(), b"xyz");
    }
}
