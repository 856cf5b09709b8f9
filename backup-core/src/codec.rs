//! The object format: SHA-256 of the plaintext → zstd → AES-256-GCM in chunks, streamed.
//!
//! ```text
//! header   "PGBK" | version | compression | cipher | reserved | frame_size u32
//!          | key_id_len u8 | key_id | nonce_prefix[7] | wrap_nonce[12] | wrapped_data_key[48]
//! frames   (u32 BE: bit 31 = final, bits 0-30 = payload length | payload)*   one per ≤ frame_size
//! trailer  plaintext_size u64 BE | sha256[32] | "KBGP"
//! ```
//!
//! Each object gets a fresh random data key, wrapped (AES-256-GCM) by the newest master key;
//! rotating master keys therefore re-wraps 60 bytes, never data. Frames use the STREAM
//! construction: nonce = prefix ‖ frame counter ‖ final flag, and every frame's associated data
//! is the header plus the object's name in the repository. So a truncated object (no final
//! frame), reordered or dropped frames (counter), a frame from another object (another key) and a
//! whole object stored under another name (name in the AAD) all fail authentication. The final
//! frame's associated data also covers the trailer.
//!
//! The plaintext digest sits in clear in the trailer so that `wal-archiver push` can tell "same
//! segment again" from "different segment under the same name" with a ranged read of 44 bytes,
//! without downloading or decrypting anything.

use std::fmt;
use std::io::{self, Read, Write};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::keys::{KeyId, KeyRing, MasterKey};

const MAGIC: &[u8; 4] = b"PGBK";
const END_MAGIC: &[u8; 4] = b"KBGP";
const VERSION: u8 = 1;
pub const TRAILER_LEN: u64 = 8 + 32 + 4;
const TAG_LEN: usize = 16;
const FINAL_FLAG: u32 = 1 << 31;
/// Compressed bytes per frame: large enough that per-frame overhead (20 bytes) vanishes, small
/// enough that buffers stay a few hundred KB whatever the object size.
const FRAME_SIZE: usize = 256 * 1024;
/// Plaintext read (and compressed) at a time.
const READ_BLOCK: usize = 1024 * 1024;

type CompressorSlot = (i32, zstd::bulk::Compressor<'static>, Vec<u8>);

thread_local! {
    /// One compression context (and output buffer) per thread and level, reused: creating one
    /// costs more than compressing a small file.
    static COMPRESSOR: std::cell::RefCell<Option<CompressorSlot>> = const { std::cell::RefCell::new(None) };
}

fn with_compressor<R>(level: i32, f: impl FnOnce(&mut zstd::bulk::Compressor<'static>, &mut Vec<u8>) -> R) -> Result<R, CodecError> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().map(|(l, ..)| *l) != Some(level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level)?, Vec::with_capacity(zstd::zstd_safe::compress_bound(READ_BLOCK))));
        }
        let (_, c, out) = slot.as_mut().unwrap();
        out.clear();
        Ok(f(c, out))
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Zstd { level: i32 },
}

/// How to write a new object.
#[derive(Clone, Copy, Debug)]
pub struct EncodeParams<'a> {
    pub compression: Compression,
    /// `None` stores plaintext (an explicit configuration choice, never a fallback).
    pub key: Option<&'a MasterKey>,
    /// Blocks compressed at once, each on its own thread (1: on the caller's thread only).
    pub threads: usize,
}

/// SHA-256 of a plaintext; written as 64 hex digits in manifests and messages.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Digest(pub [u8; 32]);

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({self})")
    }
}

impl std::str::FromStr for Sha256Digest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|e| format!("{s:?} is not a SHA-256 digest (64 hex digits): {e}"))?;
        Ok(Sha256Digest(out))
    }
}

crate::serde_as_string!(Sha256Digest);

/// What the trailer says about the plaintext, readable without any key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trailer {
    pub plaintext_size: u64,
    pub sha256: Sha256Digest,
}

impl Trailer {
    pub fn parse(bytes: &[u8]) -> Result<Trailer, CodecError> {
        if bytes.len() != TRAILER_LEN as usize || &bytes[40..44] != END_MAGIC {
            return Err(CodecError::Truncated);
        }
        Ok(Trailer {
            plaintext_size: u64::from_be_bytes(bytes[0..8].try_into().unwrap()),
            sha256: Sha256Digest(bytes[8..40].try_into().unwrap()),
        })
    }

    fn to_bytes(self) -> [u8; TRAILER_LEN as usize] {
        let mut out = [0u8; TRAILER_LEN as usize];
        out[0..8].copy_from_slice(&self.plaintext_size.to_be_bytes());
        out[8..40].copy_from_slice(&self.sha256.0);
        out[40..44].copy_from_slice(END_MAGIC);
        out
    }
}

#[derive(Clone, Copy, Debug)]
pub struct EncodeSummary {
    pub trailer: Trailer,
    pub stored_size: u64,
}

struct Sealer {
    cipher: Aes256Gcm,
    nonce_prefix: [u8; 7],
}

fn nonce(prefix: &[u8; 7], counter: u32, last: bool) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..7].copy_from_slice(prefix);
    n[7..11].copy_from_slice(&counter.to_be_bytes());
    n[11] = last as u8;
    n
}

/// AAD of a frame: the header (binds algorithms and wrapped key), the object name (binds the
/// object to its place), and for the final frame the trailer (binds size and digest).
fn frame_aad(header: &[u8], object: &str, trailer: Option<&[u8]>) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + object.len() + 2 + TRAILER_LEN as usize);
    aad.extend_from_slice(header);
    aad.extend_from_slice(&(object.len() as u16).to_be_bytes());
    aad.extend_from_slice(object.as_bytes());
    if let Some(t) = trailer {
        aad.extend_from_slice(t);
    }
    aad
}

const WRAP_AAD: &[u8] = b"pg_backup_ext data key v1";

/// Encode `input` into `output` as the object named `object` (its key in the repository).
pub fn encode(input: &mut dyn Read, output: &mut dyn Write, object: &str, params: EncodeParams) -> Result<EncodeSummary, CodecError> {
    let (header, sealer) = build_header(params)?;
    output.write_all(&header)?;
    let mut framer = Framer { out: output, header: &header, object, sealer, buf: Vec::with_capacity(FRAME_SIZE), counter: 0, written: header.len() as u64 };

    let mut hasher = Sha256::new();
    let mut plaintext_size = 0u64;
    let threads = params.threads.max(1);
    let mut blocks: Vec<Vec<u8>> = vec![vec![0u8; READ_BLOCK]];
    // Contexts and output buffers for inputs longer than one block, one per block in flight,
    // made on first need and reused for the rest of this object (fresh buffers cost page
    // faults on every block).
    let mut slots: Vec<(zstd::bulk::Compressor<'static>, Vec<u8>)> = Vec::new();
    loop {
        let mut lens = Vec::with_capacity(threads);
        for i in 0..threads {
            if blocks.len() <= i {
                blocks.push(vec![0u8; READ_BLOCK]);
            }
            let n = read_full(input, &mut blocks[i])?;
            if n > 0 {
                lens.push(n);
            }
            if n < READ_BLOCK {
                break;
            }
        }
        if lens.is_empty() {
            break;
        }
        let at_end = *lens.last().unwrap() < READ_BLOCK;
        for (b, &n) in blocks.iter().zip(&lens) {
            plaintext_size += n as u64;
            if params.compression == Compression::None || lens.len() == 1 {
                hasher.update(&b[..n]);
            }
        }
        match params.compression {
            Compression::None => {
                for (b, &n) in blocks.iter().zip(&lens) {
                    framer.push(&b[..n])?;
                }
            }
            // Each block is one complete zstd frame, compressed in one shot: zstd's fastest
            // path (streaming over a long input keeps falling onto the slower external-
            // dictionary path), contexts reused, memory bounded by the blocks in flight, and
            // blocks of one object compressed in parallel. Concatenated frames decode as one
            // stream.
            Compression::Zstd { level } if lens.len() == 1 => {
                with_compressor(level, |c, out| -> Result<(), CodecError> {
                    c.compress_to_buffer(&blocks[0][..lens[0]], out)?;
                    framer.push(out)
                })??;
            }
            Compression::Zstd { level } => {
                while slots.len() < lens.len() {
                    slots.push((zstd::bulk::Compressor::new(level)?, Vec::with_capacity(zstd::zstd_safe::compress_bound(READ_BLOCK))));
                }
                let results: Vec<io::Result<usize>> = std::thread::scope(|scope| {
                    let (first, rest) = slots.split_first_mut().expect("at least one slot");
                    let others: Vec<_> = blocks[1..lens.len()]
                        .iter()
                        .zip(&lens[1..])
                        .zip(rest.iter_mut())
                        .map(|((b, &n), (c, out))| scope.spawn(move || { out.clear(); c.compress_to_buffer(&b[..n], out) }))
                        .collect();
                    first.1.clear();
                    let mut all = vec![first.0.compress_to_buffer(&blocks[0][..lens[0]], &mut first.1)];
                    // Hash while the other blocks compress.
                    for (b, &n) in blocks.iter().zip(&lens) {
                        hasher.update(&b[..n]);
                    }
                    all.extend(others.into_iter().map(|h| h.join().expect("compression thread panicked")));
                    all
                });
                for (r, (_, out)) in results.into_iter().zip(&slots) {
                    r?;
                    framer.push(out)?;
                }
            }
        }
        if at_end {
            break;
        }
    }
    let trailer = Trailer { plaintext_size, sha256: Sha256Digest(hasher.finalize().into()) };
    let stored_size = framer.finish(trailer)?;
    Ok(EncodeSummary { trailer, stored_size })
}

fn build_header(params: EncodeParams) -> Result<(Vec<u8>, Option<Sealer>), CodecError> {
    let mut h = Vec::with_capacity(128);
    h.extend_from_slice(MAGIC);
    h.push(VERSION);
    h.push(match params.compression {
        Compression::None => 0,
        Compression::Zstd { .. } => 1,
    });
    h.push(params.key.is_some() as u8);
    h.push(0);
    h.extend_from_slice(&(FRAME_SIZE as u32).to_be_bytes());
    let sealer = match params.key {
        None => {
            h.push(0);
            None
        }
        Some(master) => {
            h.push(master.id.0.len() as u8);
            h.extend_from_slice(master.id.0.as_bytes());
            let mut data_key = Zeroizing::new([0u8; 32]);
            let mut nonce_prefix = [0u8; 7];
            let mut wrap_nonce = [0u8; 12];
            rand::rngs::OsRng.fill_bytes(data_key.as_mut());
            rand::rngs::OsRng.fill_bytes(&mut nonce_prefix);
            rand::rngs::OsRng.fill_bytes(&mut wrap_nonce);
            let wrapped = master
                .cipher()
                .encrypt(Nonce::from_slice(&wrap_nonce), Payload { msg: data_key.as_ref(), aad: WRAP_AAD })
                .map_err(|_| CodecError::Authentication)?;
            h.extend_from_slice(&nonce_prefix);
            h.extend_from_slice(&wrap_nonce);
            h.extend_from_slice(&wrapped);
            Some(Sealer { cipher: Aes256Gcm::new_from_slice(data_key.as_ref()).unwrap(), nonce_prefix })
        }
    };
    Ok((h, sealer))
}

/// Cuts the compressed stream into frames and seals each.
struct Framer<'a> {
    out: &'a mut dyn Write,
    header: &'a [u8],
    object: &'a str,
    sealer: Option<Sealer>,
    buf: Vec<u8>,
    counter: u32,
    written: u64,
}

impl Framer<'_> {
    fn push(&mut self, mut data: &[u8]) -> Result<(), CodecError> {
        while !data.is_empty() {
            let take = (FRAME_SIZE - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            // A full frame is only emitted once more data follows: the last frame must carry
            // the final flag, and we cannot know it is the last until input ends.
            if self.buf.len() == FRAME_SIZE && !data.is_empty() {
                self.emit(None)?;
            }
        }
        Ok(())
    }

    fn emit(&mut self, trailer: Option<&[u8]>) -> Result<(), CodecError> {
        let last = trailer.is_some();
        let payload = match &self.sealer {
            None => std::mem::take(&mut self.buf),
            Some(s) => {
                let aad = frame_aad(self.header, self.object, trailer);
                let n = nonce(&s.nonce_prefix, self.counter, last);
                s.cipher.encrypt(Nonce::from_slice(&n), Payload { msg: &self.buf, aad: &aad }).map_err(|_| CodecError::Authentication)?
            }
        };
        self.buf.clear();
        self.counter = self.counter.checked_add(1).ok_or_else(|| CodecError::Corrupt("object too large (frame counter overflow)".into()))?;
        let len = payload.len() as u32 | if last { FINAL_FLAG } else { 0 };
        self.out.write_all(&len.to_be_bytes())?;
        self.out.write_all(&payload)?;
        self.written += 4 + payload.len() as u64;
        Ok(())
    }

    fn finish(mut self, trailer: Trailer) -> Result<u64, CodecError> {
        if self.buf.len() == FRAME_SIZE {
            self.emit(None)?; // a full frame that turned out not to be the last
        }
        let t = trailer.to_bytes();
        self.emit(Some(&t))?;
        self.out.write_all(&t)?;
        Ok(self.written + TRAILER_LEN)
    }
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// What a decoded object turned out to be, once its digest has been checked.
#[derive(Clone, Debug)]
pub struct DecodeSummary {
    pub trailer: Trailer,
    pub key_id: Option<KeyId>,
}

/// Decode the object named `object` from `input` into `output`, authenticating every frame and
/// checking size and SHA-256 at the end. `output` may have received bytes when this fails:
/// callers write to a temporary place and publish only on success.
pub fn decode(input: &mut dyn Read, output: &mut dyn Write, object: &str, keys: Option<&KeyRing>) -> Result<DecodeSummary, CodecError> {
    decode_with_threads(input, output, object, keys, 1)
}

/// [`decode`], decompressing up to `threads` zstd frames at once. Authentication, hashing and
/// writing stay in order on the caller's thread.
pub fn decode_with_threads(
    input: &mut dyn Read,
    output: &mut dyn Write,
    object: &str,
    keys: Option<&KeyRing>,
    threads: usize,
) -> Result<DecodeSummary, CodecError> {
    let (header, compression, opener, key_id) = read_header(input, keys)?;
    let mut sink = HashingWriter { inner: output, hasher: Sha256::new(), size: 0 };
    let mut decompressor = match compression {
        Compression::None => None,
        Compression::Zstd { .. } => Some(Decompress::new(threads)?),
    };
    let mut counter = 0u32;
    let max_payload = FRAME_SIZE + TAG_LEN;
    let mut payload = Vec::with_capacity(max_payload);
    let trailer = loop {
        let mut len = [0u8; 4];
        read_exact_or_truncated(input, &mut len)?;
        let len = u32::from_be_bytes(len);
        let last = len & FINAL_FLAG != 0;
        let plen = (len & !FINAL_FLAG) as usize;
        if plen > max_payload {
            return Err(CodecError::Corrupt(format!("frame {counter} claims {plen} bytes")));
        }
        payload.resize(plen, 0);
        read_exact_or_truncated(input, &mut payload)?;
        let mut trailer_bytes = [0u8; TRAILER_LEN as usize];
        if last {
            read_exact_or_truncated(input, &mut trailer_bytes)?;
        }
        let plain = match &opener {
            None => std::mem::take(&mut payload),
            Some(s) => {
                let aad = frame_aad(&header, object, last.then_some(&trailer_bytes[..]));
                let n = nonce(&s.nonce_prefix, counter, last);
                s.cipher.decrypt(Nonce::from_slice(&n), Payload { msg: &payload, aad: &aad }).map_err(|_| CodecError::Authentication)?
            }
        };
        counter = counter.checked_add(1).ok_or_else(|| CodecError::Corrupt("too many frames".into()))?;
        match decompressor.as_mut() {
            None => sink.write_all(&plain)?,
            Some(z) => z.feed(&plain, &mut sink)?,
        }
        if last {
            if let Some(z) = decompressor.as_mut() {
                z.finish(&mut sink)?;
            }
            break Trailer::parse(&trailer_bytes)?;
        }
    };
    let mut extra = [0u8; 1];
    if input.read(&mut extra)? != 0 {
        return Err(CodecError::Corrupt("bytes after the end of the object".into()));
    }
    sink.inner.flush()?;
    let actual: [u8; 32] = sink.hasher.finalize().into();
    if sink.size != trailer.plaintext_size || actual != trailer.sha256.0 {
        return Err(CodecError::DigestMismatch {
            expected: trailer.sha256.to_string(),
            actual: hex::encode(actual),
        });
    }
    Ok(DecodeSummary { trailer, key_id })
}

type Opener = Sealer;

/// The compressed stream is a sequence of zstd frames, one per 1 MiB block. With one thread it
/// is decoded as a stream; with more, complete frames are cut out and decompressed a batch at
/// a time, each on its own thread. A frame too large for that (objects written by streaming
/// compressors) switches the rest of the object to the stream decoder.
struct Decompress {
    threads: usize,
    stream: Option<zstd::stream::raw::Decoder<'static>>,
    out: Vec<u8>,
    pending: Vec<u8>,
    /// Frames cut out so far in this batch.
    batched: usize,
    /// Per frame in a batch: a context, the compressed frame, its decompressed block; reused.
    slots: Vec<(zstd::bulk::Decompressor<'static>, Vec<u8>, Vec<u8>)>,
}

/// Frames larger than this are not cut out (a stream-compressed object): stream them.
const MAX_PARALLEL_FRAME: usize = 4 * READ_BLOCK;

impl Decompress {
    fn new(threads: usize) -> Result<Decompress, CodecError> {
        let stream = if threads <= 1 { Some(zstd::stream::raw::Decoder::new()?) } else { None };
        Ok(Decompress {
            threads,
            stream,
            out: vec![0u8; zstd::zstd_safe::DCtx::out_size()],
            pending: Vec::new(),
            batched: 0,
            slots: Vec::new(),
        })
    }

    fn feed(&mut self, data: &[u8], sink: &mut HashingWriter) -> Result<(), CodecError> {
        if self.stream.is_some() {
            return self.stream_feed(data, sink);
        }
        self.pending.extend_from_slice(data);
        let mut start = 0;
        loop {
            match zstd::zstd_safe::find_frame_compressed_size(&self.pending[start..]) {
                Ok(n) if start + n <= self.pending.len() => {
                    if self.slots.len() <= self.batched {
                        self.slots.push((zstd::bulk::Decompressor::new()?, Vec::new(), Vec::new()));
                    }
                    let frame = &mut self.slots[self.batched].1;
                    frame.clear();
                    frame.extend_from_slice(&self.pending[start..start + n]);
                    start += n;
                    self.batched += 1;
                    if self.batched == self.threads {
                        self.flush(sink)?;
                    }
                }
                _ if self.pending.len() - start > MAX_PARALLEL_FRAME => {
                    self.pending.drain(..start);
                    self.flush(sink)?;
                    self.stream = Some(zstd::stream::raw::Decoder::new()?);
                    let pending = std::mem::take(&mut self.pending);
                    return self.stream_feed(&pending, sink);
                }
                _ => break,
            }
        }
        self.pending.drain(..start);
        Ok(())
    }

    fn flush(&mut self, sink: &mut HashingWriter) -> Result<(), CodecError> {
        let results: Vec<Result<(), CodecError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = self.slots[..self.batched]
                .iter_mut()
                .map(|(d, frame, block)| {
                    scope.spawn(move || {
                        let size = match zstd::zstd_safe::get_frame_content_size(frame) {
                            Ok(Some(size)) if size as usize <= MAX_PARALLEL_FRAME => size as usize,
                            _ => return Err(CodecError::Corrupt("zstd frame without a usable content size".into())),
                        };
                        block.clear();
                        block.reserve(size);
                        d.decompress_to_buffer(&frame[..], block).map(|_| ()).map_err(|e| CodecError::Corrupt(format!("zstd: {e}")))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("decompression thread panicked")).collect()
        });
        let n = std::mem::take(&mut self.batched);
        for (r, (_, _, block)) in results.into_iter().zip(&self.slots[..n]) {
            r?;
            sink.write_all(block)?;
        }
        Ok(())
    }

    fn stream_feed(&mut self, data: &[u8], sink: &mut HashingWriter) -> Result<(), CodecError> {
        use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
        let z = self.stream.as_mut().expect("stream mode");
        let mut inb = InBuffer::around(data);
        loop {
            let mut outb = OutBuffer::around(&mut self.out[..]);
            z.run(&mut inb, &mut outb).map_err(|e| CodecError::Corrupt(format!("zstd: {e}")))?;
            let produced = outb.pos();
            sink.write_all(&self.out[..produced])?;
            if inb.pos == data.len() && produced < self.out.len() {
                return Ok(());
            }
        }
    }

    fn finish(&mut self, sink: &mut HashingWriter) -> Result<(), CodecError> {
        if self.stream.is_none() {
            self.flush(sink)?;
            if !self.pending.is_empty() {
                return Err(CodecError::Corrupt("incomplete zstd frame at the end of the object".into()));
            }
        }
        Ok(())
    }
}

/// A parsed object header: its bytes (authenticated with every frame), the compression, and
/// for encrypted objects the frame opener and the master key id.
type Header = (Vec<u8>, Compression, Option<Opener>, Option<KeyId>);

fn read_header(input: &mut dyn Read, keys: Option<&KeyRing>) -> Result<Header, CodecError> {
    let mut fixed = [0u8; 13];
    read_exact_or_truncated(input, &mut fixed)?;
    if &fixed[0..4] != MAGIC {
        return Err(CodecError::NotAnObject);
    }
    if fixed[4] != VERSION {
        return Err(CodecError::UnsupportedVersion(fixed[4]));
    }
    let compression = match fixed[5] {
        0 => Compression::None,
        1 => Compression::Zstd { level: 0 },
        other => return Err(CodecError::Corrupt(format!("unknown compression id {other}"))),
    };
    let encrypted = match fixed[6] {
        0 => false,
        1 => true,
        other => return Err(CodecError::Corrupt(format!("unknown cipher id {other}"))),
    };
    if u32::from_be_bytes(fixed[8..12].try_into().unwrap()) as usize != FRAME_SIZE {
        return Err(CodecError::Corrupt("unexpected frame size".into()));
    }
    let mut header = fixed.to_vec();
    let key_id_len = fixed[12] as usize;
    if !encrypted {
        if key_id_len != 0 {
            return Err(CodecError::Corrupt("plaintext object names a key".into()));
        }
        return Ok((header, compression, None, None));
    }
    let mut rest = vec![0u8; key_id_len + 7 + 12 + 48];
    read_exact_or_truncated(input, &mut rest)?;
    header.extend_from_slice(&rest);
    let key_id = KeyId(String::from_utf8_lossy(&rest[..key_id_len]).into_owned());
    let keys = keys.ok_or(CodecError::KeyRequired)?;
    let master = keys.get(&key_id).ok_or_else(|| CodecError::UnknownKey(key_id.clone()))?;
    let nonce_prefix: [u8; 7] = rest[key_id_len..key_id_len + 7].try_into().unwrap();
    let wrap_nonce = &rest[key_id_len + 7..key_id_len + 19];
    let wrapped = &rest[key_id_len + 19..];
    let data_key = Zeroizing::new(
        master
            .cipher()
            .decrypt(Nonce::from_slice(wrap_nonce), Payload { msg: wrapped, aad: WRAP_AAD })
            .map_err(|_| CodecError::Authentication)?,
    );
    let cipher = Aes256Gcm::new_from_slice(&data_key).map_err(|_| CodecError::Authentication)?;
    Ok((header, compression, Some(Sealer { cipher, nonce_prefix }), Some(key_id)))
}

fn read_exact_or_truncated(r: &mut dyn Read, buf: &mut [u8]) -> Result<(), CodecError> {
    r.read_exact(buf).map_err(|e| if e.kind() == io::ErrorKind::UnexpectedEof { CodecError::Truncated } else { CodecError::Io(e) })
}

struct HashingWriter<'a> {
    inner: &'a mut dyn Write,
    hasher: Sha256,
    size: u64,
}

impl Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// SHA-256 of a whole stream, in the same blocks the encoder reads.
pub fn sha256_of(input: &mut dyn Read) -> io::Result<(Sha256Digest, u64)> {
    let mut hasher = Sha256::new();
    let mut block = vec![0u8; READ_BLOCK];
    let mut size = 0u64;
    loop {
        let n = read_full(input, &mut block)?;
        if n == 0 {
            return Ok((Sha256Digest(hasher.finalize().into()), size));
        }
        size += n as u64;
        hasher.update(&block[..n]);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("not a pg_backup_ext object (bad magic)")]
    NotAnObject,
    #[error("object format version {0} is newer than this program understands; upgrade wal-archiver")]
    UnsupportedVersion(u8),
    #[error("object is encrypted but no key file is configured (set key_file or BACKUP_KEY_FILE)")]
    KeyRequired,
    #[error("object is encrypted with key '{0}', which the key file does not contain; use the key file that holds it")]
    UnknownKey(KeyId),
    #[error("authentication failed (wrong key, or the object was altered or moved)")]
    Authentication,
    #[error("object is truncated (its final chunk is missing)")]
    Truncated,
    #[error("content does not match its SHA-256 (expected {expected}, got {actual}): the object is corrupt")]
    DigestMismatch { expected: String, actual: String },
    #[error("object is corrupt: {0}")]
    Corrupt(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{KeyId, KeyRing, MasterKey};

    fn ring() -> KeyRing {
        KeyRing::new(vec![MasterKey::generate(KeyId::new("test").unwrap())]).unwrap()
    }

    fn sample(n: usize) -> Vec<u8> {
        // Half compressible text, half pseudo-random, so frames are of mixed sizes.
        let mut x = 0x9E3779B97F4A7C15u64;
        (0..n)
            .map(|i| {
                if (i / 100_000) % 2 == 0 {
                    b"the quick brown fox "[i % 20]
                } else {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                }
            })
            .collect()
    }

    fn enc(data: &[u8], name: &str, ring: Option<&KeyRing>, compression: Compression) -> Vec<u8> {
        let mut out = Vec::new();
        let params = EncodeParams { compression, key: ring.map(|r| r.newest()), threads: 1 };
        let s = encode(&mut &data[..], &mut out, name, params).unwrap();
        assert_eq!(s.stored_size, out.len() as u64);
        assert_eq!(s.trailer.plaintext_size, data.len() as u64);
        out
    }

    fn dec(obj: &[u8], name: &str, ring: Option<&KeyRing>) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::new();
        decode(&mut &obj[..], &mut out, name, ring).map(|_| out)
    }

    #[test]
    fn round_trips_every_combination_and_size() {
        let r = ring();
        for n in [0, 1, 4095, FRAME_SIZE, FRAME_SIZE + 1, 3 * FRAME_SIZE + 17, 2_000_000] {
            let data = sample(n);
            for comp in [Compression::None, Compression::Zstd { level: 3 }] {
                for keys in [None, Some(&r)] {
                    let obj = enc(&data, "wal/x", keys, comp);
                    assert_eq!(dec(&obj, "wal/x", keys).unwrap(), data, "n={n} {comp:?} enc={}", keys.is_some());
                }
            }
        }
    }

    #[test]
    fn parallel_compression_decodes_to_the_same_bytes() {
        let r = ring();
        let data = sample(5 * READ_BLOCK + 12345);
        for threads in [2, 3, 8] {
            let mut obj = Vec::new();
            let params = EncodeParams { compression: Compression::Zstd { level: 3 }, key: Some(r.newest()), threads };
            let s = encode(&mut &data[..], &mut obj, "o", params).unwrap();
            assert_eq!(s.trailer.sha256, sha256_of(&mut &data[..]).unwrap().0);
            assert_eq!(dec(&obj, "o", Some(&r)).unwrap(), data, "threads={threads}");
        }
    }

    #[test]
    fn parallel_decode_matches_and_still_detects_damage() {
        let r = ring();
        let data = sample(7 * READ_BLOCK + 999);
        let obj = enc(&data, "o", Some(&r), Compression::Zstd { level: 3 });
        for threads in [2, 3, 16] {
            let mut out = Vec::new();
            decode_with_threads(&mut &obj[..], &mut out, "o", Some(&r), threads).unwrap();
            assert_eq!(out, data, "threads={threads}");
        }
        let plain = enc(&data, "o", None, Compression::Zstd { level: 3 });
        let mut bad = plain.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x40;
        assert!(decode_with_threads(&mut &bad[..], &mut Vec::new(), "o", None, 2).is_err());
    }

    #[test]
    fn parallel_decode_reads_stream_compressed_objects() {
        // One large zstd frame, as a streaming compressor writes it.
        let data = sample(3 * MAX_PARALLEL_FRAME);
        let frame = zstd::encode_all(&data[..], 3).unwrap();
        let mut obj = Vec::new();
        let params = EncodeParams { compression: Compression::None, key: None, threads: 1 };
        let mut s = encode(&mut &frame[..], &mut obj, "o", params).unwrap();
        // Re-label the header as zstd and the trailer with the plaintext digest.
        obj[5] = 1;
        s.trailer = Trailer { plaintext_size: data.len() as u64, sha256: sha256_of(&mut &data[..]).unwrap().0 };
        let at = obj.len() - TRAILER_LEN as usize;
        obj[at..].copy_from_slice(&s.trailer.to_bytes());
        let mut out = Vec::new();
        decode_with_threads(&mut &obj[..], &mut out, "o", None, 2).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn ciphertext_hides_plaintext() {
        let data = b"SECRET-MARKER ".repeat(10_000);
        let obj = enc(&data, "o", Some(&ring()), Compression::None);
        assert!(!obj.windows(13).any(|w| w == b"SECRET-MARKER"));
    }

    #[test]
    fn trailer_readable_without_key() {
        let data = sample(300_000);
        let obj = enc(&data, "o", Some(&ring()), Compression::Zstd { level: 3 });
        let t = Trailer::parse(&obj[obj.len() - TRAILER_LEN as usize..]).unwrap();
        assert_eq!(t.plaintext_size, 300_000);
        assert_eq!(t.sha256, sha256_of(&mut &data[..]).unwrap().0);
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let r = ring();
        let data = sample(FRAME_SIZE * 2 + 5000);
        let obj = enc(&data, "o", Some(&r), Compression::Zstd { level: 3 });
        // Flip a bit at many positions spread across header, frames and trailer.
        for pos in (0..obj.len()).step_by(obj.len() / 97 + 1).chain([obj.len() - 1, obj.len() - 45]) {
            let mut bad = obj.clone();
            bad[pos] ^= 0x10;
            assert!(dec(&bad, "o", Some(&r)).is_err(), "flip at {pos}/{} undetected", obj.len());
        }
    }

    #[test]
    fn truncation_is_detected_at_any_length() {
        let r = ring();
        let obj = enc(&sample(FRAME_SIZE * 3), "o", Some(&r), Compression::None);
        for cut in [0, 10, 100, FRAME_SIZE, FRAME_SIZE + 24, obj.len() - TRAILER_LEN as usize, obj.len() - 1] {
            assert!(dec(&obj[..cut], "o", Some(&r)).is_err(), "truncation to {cut} undetected");
        }
        let mut longer = obj.clone();
        longer.push(0);
        assert!(dec(&longer, "o", Some(&r)).is_err(), "appended byte undetected");
    }

    #[test]
    fn plaintext_objects_detect_corruption_by_digest() {
        let data = sample(FRAME_SIZE + 100);
        let mut obj = enc(&data, "o", None, Compression::None);
        let mid = obj.len() / 2;
        obj[mid] ^= 1;
        assert!(matches!(dec(&obj, "o", None), Err(CodecError::DigestMismatch { .. })));
    }

    #[test]
    fn swapped_frames_fail() {
        // Two frames of the same object exchanged: the counter in the nonce breaks both.
        let r = ring();
        let data = sample(FRAME_SIZE * 3);
        let obj = enc(&data, "o", Some(&r), Compression::None);
        let hlen = 13 + 4 + 7 + 12 + 48;
        let flen = 4 + FRAME_SIZE + TAG_LEN;
        let mut swapped = obj[..hlen].to_vec();
        swapped.extend_from_slice(&obj[hlen + flen..hlen + 2 * flen]);
        swapped.extend_from_slice(&obj[hlen..hlen + flen]);
        swapped.extend_from_slice(&obj[hlen + 2 * flen..]);
        assert!(matches!(dec(&swapped, "o", Some(&r)), Err(CodecError::Authentication)));
    }

    #[test]
    fn object_under_another_name_fails() {
        let r = ring();
        let obj = enc(b"segment one", "wal/A/1", Some(&r), Compression::Zstd { level: 3 });
        assert!(matches!(dec(&obj, "wal/A/2", Some(&r)), Err(CodecError::Authentication)));
    }

    #[test]
    fn wrong_or_missing_key_is_named() {
        let obj = enc(b"data", "o", Some(&ring()), Compression::None);
        // Same id, other secret: the wrapped data key does not open.
        assert!(matches!(dec(&obj, "o", Some(&ring())), Err(CodecError::Authentication)));
        let other = KeyRing::new(vec![MasterKey::generate(KeyId::new("other").unwrap())]).unwrap();
        let err = dec(&obj, "o", Some(&other)).unwrap_err();
        assert!(matches!(err, CodecError::UnknownKey(_)) && err.to_string().contains("'test'"));
        assert!(matches!(dec(&obj, "o", None), Err(CodecError::KeyRequired)));
    }

    #[test]
    fn old_keys_still_decrypt_after_rotation() {
        let mut r = ring();
        let obj = enc(b"written with the old key", "o", Some(&r), Compression::None);
        r.push(MasterKey::generate(KeyId::new("newer").unwrap())).unwrap();
        assert_eq!(r.newest().id.0, "newer");
        assert_eq!(dec(&obj, "o", Some(&r)).unwrap(), b"written with the old key");
    }
}
