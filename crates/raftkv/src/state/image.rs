//! The binary image of raftkv's state, one format for two uses: the snapshots
//! raft takes, stores and sends between nodes, and the backups an operator
//! saves with `raftkv snapshot save` and loads with `snapshot restore`.
//!
//! ```text
//! "RKVIMG01" | header length (u32 LE) | header (JSON)
//! records: header.keys data records, then header.staging.keys staging records,
//!          each: key length (u32 LE) | key | value length (u32 LE) | value | index (u64 LE)
//! "RKVEND01" | CRC-32C (u32 LE) of every byte before it
//! ```
//!
//! Keys are UTF-8. Values are any bytes since format 2; format 1, written
//! before values could be binary, is the same layout with UTF-8 values, and
//! is still read. A reader older than format 2 refuses a format 2 image by
//! its header instead of failing on its first binary value.
//!
//! The header comes first so that `inspect` and the restore's checks know what
//! to expect before reading the body; the trailer's checksum covers the whole
//! file, so a truncated or bit-flipped file is refused, never half-loaded.
//! Lengths read from a file are bounded before anything is allocated.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use crate::state::blob::Blob;
use crate::state::command::Peer;

const MAGIC: &[u8; 8] = b"RKVIMG01";
const END: &[u8; 8] = b"RKVEND01";
/// The format written.
pub const FORMAT: u32 = 2;
/// The oldest format read.
const OLDEST_FORMAT: u32 = 1;
const MAX_HEADER_BYTES: u32 = 64 << 20;
const MAX_KEY_BYTES: u32 = 1 << 20;
const MAX_VALUE_BYTES: u32 = 256 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageKind {
    /// Taken by raft for log compaction and InstallSnapshot.
    Snapshot,
    /// Downloaded by an operator (`GET /api/v1/snapshot`).
    Backup,
}

/// The cluster configuration at the image's index, for `inspect`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Members {
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
}

/// A restore in progress when the image was taken (see `store.rs`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagingHeader {
    pub id: String,
    pub next_seq: u64,
    pub keys: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageHeader {
    pub format: u32,
    pub kind: ImageKind,
    /// Index and term of the last entry applied to the state.
    pub index: u64,
    pub term: u64,
    pub members: Option<Members>,
    pub keys: u64,
    #[serde(default)]
    pub peers: BTreeMap<u64, Peer>,
    #[serde(default)]
    pub staging: Option<StagingHeader>,
    /// The last restore committed, and how many keys it restored.
    #[serde(default)]
    pub last_restore: Option<(String, u64)>,
    pub created_unix_ms: u64,
}

impl ImageHeader {
    /// The header of a backup of `keys` keys made outside any cluster (a
    /// generated one, or a test's): at index 1, term 1, with no members,
    /// peers or restore in it.
    pub fn generated_backup(keys: u64) -> ImageHeader {
        ImageHeader {
            format: FORMAT,
            kind: ImageKind::Backup,
            index: 1,
            term: 1,
            members: None,
            keys,
            peers: BTreeMap::new(),
            staging: None,
            last_restore: None,
            created_unix_ms: 0,
        }
    }
}

/// One key: its value and the index of the entry that wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub key: String,
    pub value: Blob,
    pub index: u64,
}

impl Record {
    fn encoded_len(key: &str, value: &[u8]) -> u64 {
        (4 + key.len() + 4 + value.len() + 8) as u64
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("not a raftkv snapshot or backup (the file does not start with {:?})", String::from_utf8_lossy(MAGIC))]
    BadMagic,
    #[error("the file is truncated: it ends inside {what}")]
    Truncated { what: String },
    #[error("the file is damaged: {what}")]
    Damaged { what: String },
    #[error("checksum mismatch: the file says {stored:08x}, its contents give {computed:08x} (damaged or altered)")]
    Checksum { stored: u32, computed: u32 },
    #[error("unsupported image format {0} (this raftkv reads formats {OLDEST_FORMAT} to {FORMAT})")]
    Format(u32),
    /// A record the caller's check refused (see `verify_each`).
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl From<ImageError> for io::Error {
    fn from(error: ImageError) -> io::Error {
        match error {
            ImageError::Io(error) => error,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

/// The exact size in bytes of an image with this header and these records.
pub fn encoded_size<'a>(header: &ImageHeader, records: impl Iterator<Item = (&'a str, &'a [u8])>) -> u64 {
    let header_len = serde_json::to_vec(header).map_or(0, |h| h.len()) as u64;
    let body: u64 = records.map(|(k, v)| Record::encoded_len(k, v)).sum();
    8 + 4 + header_len + body + 8 + 4
}

/// Writes an image: `write_header`, then every record, then `finish`.
pub struct ImageWriter<W: Write> {
    out: W,
    crc: u32,
    expected: u64,
    written: u64,
}

impl<W: Write> ImageWriter<W> {
    pub fn new(out: W, header: &ImageHeader) -> io::Result<ImageWriter<W>> {
        let encoded = serde_json::to_vec(header).map_err(io::Error::other)?;
        let expected = header.keys + header.staging.as_ref().map_or(0, |s| s.keys);
        let mut writer = ImageWriter { out, crc: 0, expected, written: 0 };
        writer.put(MAGIC)?;
        writer.put(&(encoded.len() as u32).to_le_bytes())?;
        writer.put(&encoded)?;
        Ok(writer)
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.out.write_all(bytes)
    }

    pub fn record(&mut self, key: &str, value: &[u8], index: u64) -> io::Result<()> {
        self.put(&(key.len() as u32).to_le_bytes())?;
        self.put(key.as_bytes())?;
        self.put(&(value.len() as u32).to_le_bytes())?;
        self.put(value)?;
        self.put(&index.to_le_bytes())?;
        self.written += 1;
        Ok(())
    }

    /// Writes the trailer; the number of records must match the header's.
    pub fn finish(mut self) -> io::Result<W> {
        if self.written != self.expected {
            return Err(io::Error::other(format!(
                "image header announces {} records but {} were written",
                self.expected, self.written
            )));
        }
        self.out.write_all(END)?;
        self.out.write_all(&self.crc.to_le_bytes())?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Reads an image: the header at once, then records with `next`, then
/// `finish` checks the trailer. Nothing read may be trusted before `finish`.
pub struct ImageReader<R: Read> {
    input: R,
    crc: u32,
    pub header: ImageHeader,
    remaining: u64,
    read: u64,
    bytes: u64,
}

impl<R: Read> ImageReader<R> {
    pub fn open(input: R) -> Result<ImageReader<R>, ImageError> {
        let mut reader = ImageReader {
            input,
            crc: 0,
            header: ImageHeader {
                format: FORMAT,
                kind: ImageKind::Snapshot,
                index: 0,
                term: 0,
                members: None,
                keys: 0,
                peers: BTreeMap::new(),
                staging: None,
                last_restore: None,
                created_unix_ms: 0,
            },
            remaining: 0,
            read: 0,
            bytes: 0,
        };
        let mut magic = [0; 8];
        reader.take(&mut magic, "the magic number")?;
        if &magic != MAGIC {
            return Err(ImageError::BadMagic);
        }
        let length = reader.u32("the header length")?;
        if length > MAX_HEADER_BYTES {
            return Err(ImageError::Damaged { what: format!("header length {length} is implausible") });
        }
        let header = reader.bytes(length, "the header")?;
        let header: ImageHeader = serde_json::from_slice(&header)
            .map_err(|e| ImageError::Damaged { what: format!("unreadable header: {e}") })?;
        if !(OLDEST_FORMAT..=FORMAT).contains(&header.format) {
            return Err(ImageError::Format(header.format));
        }
        reader.remaining = header.keys.saturating_add(header.staging.as_ref().map_or(0, |s| s.keys));
        reader.header = header;
        Ok(reader)
    }

    fn take(&mut self, buf: &mut [u8], what: &str) -> Result<(), ImageError> {
        self.input.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => ImageError::Truncated { what: what.to_string() },
            _ => ImageError::Io(e),
        })?;
        self.crc = crc32c::crc32c_append(self.crc, buf);
        self.bytes += buf.len() as u64;
        Ok(())
    }

    fn u32(&mut self, what: &str) -> Result<u32, ImageError> {
        let mut bytes = [0; 4];
        self.take(&mut bytes, what)?;
        Ok(u32::from_le_bytes(bytes))
    }

    /// `length` bytes, read into a buffer grown as they arrive: a damaged
    /// length in a short file costs no large allocation before the end of
    /// the file shows it.
    fn bytes(&mut self, length: u32, what: &str) -> Result<Vec<u8>, ImageError> {
        let mut bytes = Vec::with_capacity((length as usize).min(1 << 16));
        (&mut self.input).take(u64::from(length)).read_to_end(&mut bytes)?;
        if bytes.len() != length as usize {
            return Err(ImageError::Truncated { what: what.to_string() });
        }
        self.crc = crc32c::crc32c_append(self.crc, &bytes);
        self.bytes += bytes.len() as u64;
        Ok(bytes)
    }

    /// A length (at most `max`), then that many bytes.
    fn field(&mut self, max: u32, what: &str) -> Result<Vec<u8>, ImageError> {
        let length = self.u32(what)?;
        if length > max {
            return Err(ImageError::Damaged { what: format!("{what}: length {length} is implausible") });
        }
        self.bytes(length, what)
    }

    fn string(&mut self, max: u32, what: &str) -> Result<String, ImageError> {
        let bytes = self.field(max, what)?;
        String::from_utf8(bytes).map_err(|_| ImageError::Damaged { what: format!("{what}: not UTF-8") })
    }

    /// The next record, or `None` after the last one the header announced.
    pub fn next_record(&mut self) -> Result<Option<Record>, ImageError> {
        if self.remaining == 0 {
            return Ok(None);
        }
        let n = self.read + 1;
        let key = self.string(MAX_KEY_BYTES, &format!("record {n}'s key"))?;
        let value = Blob::from(self.field(MAX_VALUE_BYTES, &format!("record {n}'s value"))?);
        let mut index = [0; 8];
        self.take(&mut index, &format!("record {n}'s index"))?;
        self.remaining -= 1;
        self.read += 1;
        Ok(Some(Record { key, value, index: u64::from_le_bytes(index) }))
    }

    /// Checks the trailer and that nothing follows it; returns the image size.
    pub fn finish(mut self) -> Result<u64, ImageError> {
        while self.next_record()?.is_some() {}
        let computed = self.crc;
        let mut end = [0; 12];
        self.input.read_exact(&mut end).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => ImageError::Truncated { what: "the trailer".into() },
            _ => ImageError::Io(e),
        })?;
        if &end[..8] != END {
            return Err(ImageError::Damaged { what: "no trailer after the last record".into() });
        }
        let stored = u32::from_le_bytes([end[8], end[9], end[10], end[11]]);
        if stored != computed {
            return Err(ImageError::Checksum { stored, computed });
        }
        let mut extra = [0; 1];
        if self.input.read(&mut extra)? != 0 {
            return Err(ImageError::Damaged { what: "bytes after the trailer".into() });
        }
        Ok(self.bytes + 12)
    }
}

/// Reads a whole image and checks it; returns the header and the size.
pub fn verify(input: impl Read) -> Result<(ImageHeader, u64), ImageError> {
    verify_each(input, |_, _| Ok(()))
}

/// `verify`, also passing each data record (numbered from 1) to `check`,
/// whose refusal ends the reading.
pub fn verify_each(
    input: impl Read,
    mut check: impl FnMut(u64, &Record) -> Result<(), String>,
) -> Result<(ImageHeader, u64), ImageError> {
    let mut reader = ImageReader::open(io::BufReader::with_capacity(1 << 16, input))?;
    let header = reader.header.clone();
    for n in 1..=header.keys {
        let Some(record) = reader.next_record()? else { break };
        check(n, &record).map_err(ImageError::Refused)?;
    }
    let size = reader.finish()?;
    Ok((header, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(keys: u64) -> ImageHeader {
        ImageHeader {
            format: FORMAT,
            kind: ImageKind::Backup,
            index: 42,
            term: 3,
            members: Some(Members { voters: vec![1, 2, 3], learners: vec![] }),
            keys,
            peers: BTreeMap::new(),
            staging: None,
            last_restore: None,
            created_unix_ms: 1,
        }
    }

    fn image(records: &[(&str, &str)]) -> Vec<u8> {
        let header = header(records.len() as u64);
        let mut writer = ImageWriter::new(Vec::new(), &header).unwrap();
        for (i, (k, v)) in records.iter().enumerate() {
            writer.record(k, v.as_bytes(), i as u64 + 1).unwrap();
        }
        let bytes = writer.finish().unwrap();
        assert_eq!(bytes.len() as u64, encoded_size(&header, records.iter().map(|(k, v)| (*k, v.as_bytes()))));
        bytes
    }

    #[test]
    fn an_image_reads_back_record_by_record() {
        let bytes = image(&[("a", "1"), ("b", ""), ("ключ", "значение")]);
        let mut reader = ImageReader::open(bytes.as_slice()).unwrap();
        assert_eq!(reader.header, header(3));
        let mut keys = Vec::new();
        while let Some(record) = reader.next_record().unwrap() {
            keys.push((record.key, record.value, record.index));
        }
        assert_eq!(keys[2], ("ключ".to_string(), Blob::from("значение"), 3));
        assert_eq!(reader.finish().unwrap(), bytes.len() as u64);
    }

    #[test]
    fn values_are_any_bytes_and_format_1_images_still_read() {
        let binary: Vec<u8> = (0..=255).collect();
        let mut writer = ImageWriter::new(Vec::new(), &header(1)).unwrap();
        writer.record("k", &binary, 7).unwrap();
        let bytes = writer.finish().unwrap();
        let mut reader = ImageReader::open(bytes.as_slice()).unwrap();
        assert_eq!(reader.header.format, 2);
        let record = reader.next_record().unwrap().unwrap();
        assert_eq!((record.key.as_str(), &record.value.0[..], record.index), ("k", &binary[..], 7));

        // Written by a raftkv before format 2: the same layout, text values.
        let old = ImageHeader { format: 1, ..header(1) };
        let mut writer = ImageWriter::new(Vec::new(), &old).unwrap();
        writer.record("k", b"text", 7).unwrap();
        let (read, _) = verify(writer.finish().unwrap().as_slice()).unwrap();
        assert_eq!(read.format, 1);

        for format in [0, 3] {
            let future = ImageHeader { format, ..header(0) };
            let bytes = ImageWriter::new(Vec::new(), &future).unwrap().finish().unwrap();
            assert!(matches!(verify(bytes.as_slice()), Err(ImageError::Format(f)) if f == format));
        }
    }

    #[test]
    fn every_truncation_and_every_flipped_bit_is_refused() {
        let bytes = image(&[("alpha", "one"), ("beta", "two")]);
        for cut in 0..bytes.len() {
            assert!(verify(&bytes[..cut]).is_err(), "truncated at {cut} accepted");
        }
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[i] ^= 1 << bit;
                assert!(verify(damaged.as_slice()).is_err(), "flip of bit {bit} in byte {i} accepted");
            }
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(verify(longer.as_slice()), Err(ImageError::Damaged { .. })));
        assert!(matches!(verify(&b"{\"json\": true}"[..]), Err(ImageError::BadMagic)));
    }

    #[test]
    fn a_huge_length_is_refused_before_allocating() {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(ImageReader::open(bytes.as_slice()), Err(ImageError::Damaged { .. })));
    }
}
