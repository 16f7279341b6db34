//! Writing a whole sealed segment through the file API: the copies that compaction and
//! salvage put in place of a segment.
//!
//! Invariants:
//!
//! - The copy is written under its temporary name, and its data and length are fsynced,
//!   before it can be renamed over the original: after a crash the directory holds the
//!   original or the whole copy, never part of one.
//! - Its header says its true length (`capacity`), and its seal counts exactly the records
//!   pushed and ends exactly where they end, so recovery reads it like any sealed segment.
//! - A failure leaves no temporary file behind (best effort; `open` deletes any left).

use std::fs::File;
use std::path::{Path, PathBuf};

use super::segment::Totals;
use crate::error::{Error, Result};
use crate::format::{
    encode_seal, Hides, RecordKind, SealInfo, SegmentHeader, FORMAT_VERSION, SEAL_LEN,
    SEGMENT_HEADER_LEN,
};
use crate::fs;
use crate::iohook::Io;

/// Bytes gathered before each write (each write goes through the `IoHook`).
const WRITE_CHUNK: usize = 1 << 20;

/// A sealed segment being written under its temporary name.
pub(crate) struct SealedWriter<'a> {
    io: &'a Io,
    path: PathBuf,
    tmp: PathBuf,
    file: File,
    header: SegmentHeader,
    /// Bytes not yet written, which start at file offset `flushed`.
    buf: Vec<u8>,
    flushed: u64,
    totals: Totals,
}

/// A sealed segment written and synced under its temporary name.
pub(crate) struct Sealed {
    /// The file, open (to be mapped).
    pub(crate) file: File,
    /// Its header, as written.
    pub(crate) header: SegmentHeader,
    /// What its records hold.
    pub(crate) totals: Totals,
    /// Where its data ends (the offset of its seal).
    pub(crate) data_end: usize,
    /// The CRC that opens its seal record (what a hint file names its segment by).
    pub(crate) seal_crc: u32,
    path: PathBuf,
    tmp: PathBuf,
}

impl<'a> SealedWriter<'a> {
    /// Starts the copy of segment `id` that will be named `path`.
    pub(crate) fn create(
        io: &'a Io,
        path: &Path,
        id: u64,
        created_at: u64,
        store_id: u128,
    ) -> Result<SealedWriter<'a>> {
        let tmp = fs::tmp_path(path);
        let file = fs::create(io, &tmp).map_err(|e| Error::io("create segment", &tmp, e))?;
        let mut buf = Vec::with_capacity(WRITE_CHUNK);
        // The header is written last, once the length it states is known.
        buf.resize(SEGMENT_HEADER_LEN, 0);
        Ok(SealedWriter {
            io,
            path: path.to_path_buf(),
            tmp,
            file,
            header: SegmentHeader {
                version: FORMAT_VERSION,
                segment_id: id,
                created_at,
                capacity: 0,
                store_id,
            },
            buf,
            flushed: 0,
            totals: Totals::default(),
        })
    }

    /// Where the next record goes.
    pub(crate) fn offset(&self) -> usize {
        self.flushed as usize + self.buf.len()
    }

    /// Appends one record (its encoded bytes, of a record that says `kind` and `expires`,
    /// and, if a remove, hides `hides`).
    pub(crate) fn push(
        &mut self,
        record: &[u8],
        kind: RecordKind,
        expires: u64,
        hides: Hides,
    ) -> Result<()> {
        self.totals.add(kind, record.len(), expires, hides);
        self.buf.extend_from_slice(record);
        if self.buf.len() >= WRITE_CHUNK {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let written = fs::write_at(self.io, &self.file, &self.tmp, self.flushed, &self.buf);
        if let Err(e) = written {
            return Err(self.fail("write segment copy", e));
        }
        self.flushed += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    fn fail(&self, op: &'static str, e: std::io::Error) -> Error {
        let _ = fs::remove_file(self.io, &self.tmp);
        Error::io(op, &self.tmp, e)
    }

    /// Writes the seal (with `sealed_at` as its time) and the header, and syncs the file.
    pub(crate) fn finish(mut self, sealed_at: u64) -> Result<Sealed> {
        let data_end = self.offset();
        let mut seal = [0u8; SEAL_LEN];
        let info = SealInfo {
            records: self.totals.records,
            data_end: data_end as u64,
            max_expires: self.totals.max_expires,
        };
        encode_seal(&mut seal, info, sealed_at);
        let seal_crc = u32::from_le_bytes([seal[0], seal[1], seal[2], seal[3]]);
        self.buf.extend_from_slice(&seal);
        self.flush()?;
        self.header.capacity = (data_end + SEAL_LEN) as u64;
        let header = self.header.encode();
        if let Err(e) = fs::write_at(self.io, &self.file, &self.tmp, 0, &header) {
            return Err(self.fail("write segment copy", e));
        }
        if let Err(e) = fs::sync_file(self.io, &self.file, &self.tmp) {
            return Err(self.fail("sync segment copy", e));
        }
        Ok(Sealed {
            file: self.file,
            header: self.header,
            totals: self.totals,
            data_end,
            seal_crc,
            path: self.path,
            tmp: self.tmp,
        })
    }
}

impl Sealed {
    /// Renames the copy over the original (the caller fsyncs the directory).
    pub(crate) fn rename_into_place(&self, io: &Io) -> Result<()> {
        fs::rename(io, &self.tmp, &self.path).map_err(|e| {
            let _ = fs::remove_file(io, &self.tmp);
            Error::io("rename segment copy", &self.path, e)
        })
    }

    /// Deletes the copy instead (best effort: `open` deletes what is left).
    pub(crate) fn discard(self, io: &Io) {
        let _ = fs::remove_file(io, &self.tmp);
    }

    /// The file's length.
    pub(crate) fn len(&self) -> u64 {
        self.header.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{decode_record, encode_record, encoded_len};

    fn record(key: &[u8], kind: RecordKind, expires: u64) -> Vec<u8> {
        let mut b = vec![0u8; encoded_len(key.len(), 0)];
        encode_record(&mut b, kind, key, &[], 0, 1, expires);
        b
    }

    #[test]
    fn a_copy_is_a_sealed_segment_that_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let io = Io::default();
        let path = dir.path().join(fs::segment_name(5));
        let mut w = SealedWriter::create(&io, &path, 5, 77, 9).unwrap();
        assert_eq!(w.offset(), SEGMENT_HEADER_LEN);
        let a = record(b"a", RecordKind::Claim, 100);
        let b = record(b"bb", RecordKind::Remove, 300);
        w.push(&a, RecordKind::Claim, 100, Hides::ANY).unwrap();
        assert_eq!(w.offset(), SEGMENT_HEADER_LEN + a.len());
        w.push(&b, RecordKind::Remove, 300, Hides::ANY).unwrap();
        let sealed = w.finish(55).unwrap();
        assert!(!path.exists(), "visible before the rename");
        sealed.rename_into_place(&io).unwrap();
        assert!(!fs::tmp_path(&path).exists());

        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, sealed.len());
        let h = SegmentHeader::decode(&bytes).unwrap();
        assert_eq!((h.segment_id, h.created_at, h.store_id), (5, 77, 9));
        assert_eq!(h.capacity, bytes.len() as u64);
        let mut pos = SEGMENT_HEADER_LEN;
        let mut keys = Vec::new();
        loop {
            let r = decode_record(&bytes[pos..]).unwrap();
            if let Some(info) = r.seal() {
                assert_eq!((info.records, info.data_end), (2, pos as u64));
                assert_eq!((info.max_expires, r.header.time), (300, 55));
                assert_eq!(pos, sealed.data_end);
                break;
            }
            keys.push(r.key.to_vec());
            pos += r.len;
        }
        assert_eq!(keys, [b"a".to_vec(), b"bb".to_vec()]);
        assert_eq!(
            (sealed.totals.records, sealed.totals.tomb_bytes),
            (2, b.len() as u64)
        );
    }

    #[test]
    fn a_failed_write_leaves_no_temporary_file() {
        struct FailWrites;
        impl crate::iohook::IoHook for FailWrites {
            fn before(&self, op: &crate::iohook::IoOp<'_>) -> std::io::Result<()> {
                match op {
                    crate::iohook::IoOp::Write { .. } => Err(std::io::Error::from_raw_os_error(28)),
                    _ => Ok(()),
                }
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let io = Io::new(Some(std::sync::Arc::new(FailWrites)));
        let path = dir.path().join(fs::segment_name(1));
        let mut w = SealedWriter::create(&io, &path, 1, 0, 0).unwrap();
        w.push(
            &record(b"k", RecordKind::Claim, 9),
            RecordKind::Claim,
            9,
            Hides::ANY,
        )
        .unwrap();
        match w.finish(0) {
            Err(Error::Io { op, source, .. }) => {
                assert_eq!(op, "write segment copy");
                assert_eq!(source.raw_os_error(), Some(28));
            }
            Err(e) => panic!("{e:?}"),
            Ok(_) => panic!("the write did not fail"),
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
