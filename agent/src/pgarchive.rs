//! What a custom-format archive that pg_dump wrote to a pipe says about itself as it streams
//! by: the rows of each table's data, for a backup's manifest, and the data offsets pg_dump
//! could not write, for a restore.
//!
//! Rows: pg_dump writes a table's data as `COPY ... TO stdout` text, one line per row, a
//! newline inside a value escaped as `\n`. The newlines in a `TABLE DATA` block are its rows,
//! so a backup counts them as the dump goes by instead of scanning every table a second time
//! with `count(*)` (see [`ArchiveScanner::table_rows`]).
//!
//! Offsets: pg_dump writes an archive's table of contents (TOC) before its data. When its output can
//! seek, it goes back at the end and rewrites the TOC with the position of every data block;
//! writing to a pipe, as in every Warden backup, it cannot, and each TOC entry keeps "position
//! not set". pg_restore copes, but slowly: it cannot order a parallel restore by size, and a
//! worker finds a block by walking every chunk header in front of it with one seek each
//! (without compression, pg_dump writes a chunk per row). A restore of 1 GB of pgbench data
//! with `--jobs=2` took 7.2 s from such an archive and 5.6 s from the same archive with
//! offsets.
//!
//! [`ArchiveScanner`] watches the archive go by while a restore stages it, and
//! [`ArchiveScanner::patches`] returns exactly the bytes pg_dump would have written into the
//! TOC.
//!
//! Anything the scanner does not recognise (another format or version, a damaged stream, a
//! block the TOC does not name) only means it has no answer: the backup then counts the rows
//! with SQL, and the staged archive stays as pg_dump wrote it, which pg_restore reads as
//! before.
//!
//! The layout follows PostgreSQL's `pg_backup_archiver.c` (`WriteHead`, `WriteToc`) and
//! `pg_backup_custom.c` (`_WriteExtraToc`, `_StartData`): archive versions 1.12 (PostgreSQL
//! 9.0) to 1.16 (PostgreSQL 17 and 18).

use std::collections::HashMap;

/// Archive format versions (minor, with major 1) whose layout this module knows.
const OLDEST_MINOR: u8 = 12;
const NEWEST_MINOR: u8 = 16;
/// `archCustom` in the header's format byte.
const FORMAT_CUSTOM: u8 = 1;
/// Offset flags in a TOC entry.
const OFFSET_POS_NOT_SET: u8 = 1;
const OFFSET_POS_SET: u8 = 2;
const OFFSET_NO_DATA: u8 = 3;
/// Data block types.
const BLK_DATA: u8 = 1;
const BLK_BLOBS: u8 = 3;
/// The largest header or TOC entry held while it arrives; a bigger one is not an archive
/// this module reads (a view or function definition would have to be larger than this).
const MAX_PENDING: usize = 256 << 20;

/// One change to the staged archive: write `bytes` at `position`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patch {
    pub position: u64,
    pub bytes: Vec<u8>,
}

/// The rows of one table's data in an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRows {
    pub schema: String,
    pub table: String,
    pub rows: u64,
    /// Bytes of the table's data (its COPY text).
    pub bytes: u64,
}

/// Where a TOC entry's offset field is and what it said.
#[derive(Debug, Clone, Copy)]
struct OffsetField {
    /// Position of the flag byte; the offset follows it.
    position: u64,
    flag: u8,
}

/// The archive header's facts that later fields depend on.
#[derive(Debug, Clone, Copy)]
struct Layout {
    minor: u8,
    int_size: usize,
    off_size: usize,
    /// Whether pg_dump compressed the data (Warden's backups never do): its rows cannot be
    /// counted then.
    compressed: bool,
}

/// Where the scanner is in the archive.
#[derive(Debug)]
enum State {
    /// Collecting the header.
    Header,
    /// Collecting TOC entries; `left` more to come.
    Toc { left: i64 },
    /// At a block boundary in the data section: a block type byte, or the end.
    BlockStart,
    /// Reading the dump id of a block of `kind`.
    BlockId { kind: u8, position: u64 },
    /// Reading the length of the next chunk (0 ends the block, or the large object).
    ChunkLength { in_blobs: bool },
    /// Skipping a chunk's bytes.
    Chunk { left: u64, in_blobs: bool },
    /// Reading the OID of the next large object of a BLOBS block (0 ends the block).
    BlobOid,
    /// Gave up; the reason is in `failed`.
    Stopped,
}

/// Follows a custom-format archive byte by byte (see the module doc).
#[derive(Debug)]
pub struct ArchiveScanner {
    state: State,
    /// Bytes seen so far: the position of the next byte.
    position: u64,
    layout: Option<Layout>,
    /// Bytes of the header or of a TOC entry that has not fully arrived; `pending[0]` is at
    /// `pending_start`.
    pending: Vec<u8>,
    pending_start: u64,
    /// A data-section integer that has not fully arrived.
    int_bytes: Vec<u8>,
    /// TOC entries by dump id.
    entries: HashMap<i64, OffsetField>,
    /// Data blocks by dump id: the position of the block type byte.
    blocks: HashMap<i64, u64>,
    /// Whether to count the rows of table data.
    count_rows: bool,
    /// `TABLE DATA` entries by dump id: schema and table name, as the archive spells them.
    tables: HashMap<i64, (Vec<u8>, Vec<u8>)>,
    /// Rows of the `TABLE DATA` blocks seen, by dump id.
    rows: HashMap<i64, CopyLines>,
    /// The block being read and the lines of its data so far, when its rows are counted.
    counting: Option<(i64, CopyLines)>,
    failed: Option<String>,
    /// Where the data section starts: the header and the TOC are the bytes before.
    data_start: Option<u64>,
}

impl Default for ArchiveScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl ArchiveScanner {
    /// A scanner for the data offsets.
    pub fn new() -> Self {
        Self {
            state: State::Header,
            position: 0,
            layout: None,
            pending: Vec::new(),
            pending_start: 0,
            int_bytes: Vec::new(),
            entries: HashMap::new(),
            blocks: HashMap::new(),
            count_rows: false,
            tables: HashMap::new(),
            rows: HashMap::new(),
            counting: None,
            failed: None,
            data_start: None,
        }
    }

    /// A scanner that also counts the rows of every table's data.
    pub fn counting_rows() -> Self {
        Self {
            count_rows: true,
            ..Self::new()
        }
    }

    /// Takes the next bytes of the archive.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.state {
                State::Stopped => return,
                State::Header | State::Toc { .. } => {
                    if self.pending.is_empty() {
                        self.pending_start = self.position;
                    }
                    self.pending.extend_from_slice(bytes);
                    self.position += bytes.len() as u64;
                    bytes = &[];
                    self.parse_pending();
                }
                State::BlockStart => {
                    let kind = bytes[0];
                    let position = self.position;
                    self.advance(&mut bytes, 1);
                    if kind != BLK_DATA && kind != BLK_BLOBS {
                        self.stop(format!("unknown block type {kind} at {position}"));
                    } else {
                        self.state = State::BlockId { kind, position };
                    }
                }
                State::BlockId { kind, position } => {
                    let Some(id) = self.take_int(&mut bytes) else {
                        continue;
                    };
                    match self.entries.get(&id) {
                        None => self.stop(format!("block {id} at {position} is not in the TOC")),
                        Some(_) if self.blocks.insert(id, position).is_some() => {
                            self.stop(format!("block {id} appears twice"));
                        }
                        Some(_) if kind == BLK_BLOBS => self.state = State::BlobOid,
                        Some(_) => {
                            self.finish_counting();
                            if self.count_rows && self.tables.contains_key(&id) {
                                self.counting = Some((id, CopyLines::default()));
                            }
                            self.state = State::ChunkLength { in_blobs: false };
                        }
                    }
                }
                State::ChunkLength { in_blobs } => {
                    let Some(length) = self.take_int(&mut bytes) else {
                        continue;
                    };
                    self.state = match u64::try_from(length) {
                        Ok(0) if in_blobs => State::BlobOid,
                        Ok(0) => {
                            self.finish_counting();
                            State::BlockStart
                        }
                        Ok(left) => State::Chunk { left, in_blobs },
                        Err(_) => {
                            self.stop(format!("negative chunk length {length}"));
                            continue;
                        }
                    };
                }
                State::Chunk { left, in_blobs } => {
                    let n = usize::try_from(left).map_or(bytes.len(), |l| l.min(bytes.len()));
                    if let (Some((_, lines)), false) = (&mut self.counting, in_blobs) {
                        lines.feed(&bytes[..n]);
                    }
                    self.advance(&mut bytes, n);
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::ChunkLength { in_blobs }
                    } else {
                        State::Chunk { left, in_blobs }
                    };
                }
                State::BlobOid => {
                    let Some(oid) = self.take_int(&mut bytes) else {
                        continue;
                    };
                    self.state = if oid == 0 {
                        State::BlockStart
                    } else {
                        State::ChunkLength { in_blobs: true }
                    };
                }
            }
        }
    }

    /// Returns why the scanner gave up, if it did.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Returns where the data section starts once the header and the whole TOC went by:
    /// those bytes alone are an archive pg_restore can restore every entry without data
    /// from (`--section=post-data`).
    pub fn data_start(&self) -> Option<u64> {
        self.data_start
    }

    /// Returns the writes that give every data block's TOC entry its position, as pg_dump
    /// writes them to a seekable file; none when the archive was not read to a clean end or
    /// already has its offsets.
    pub fn patches(&self) -> Result<Vec<Patch>, String> {
        let layout = self.complete()?;
        let mut patches: Vec<Patch> = self
            .entries
            .iter()
            .filter(|(_, field)| field.flag == OFFSET_POS_NOT_SET)
            .filter_map(|(id, field)| {
                let block = *self.blocks.get(id)?;
                // Least significant byte first, as pg_dump writes it.
                let le = block.to_le_bytes();
                let mut bytes = vec![OFFSET_POS_SET];
                bytes.extend((0..layout.off_size).map(|i| le.get(i).copied().unwrap_or(0)));
                Some(Patch {
                    position: field.position,
                    bytes,
                })
            })
            .collect();
        patches.sort_by_key(|p| p.position);
        Ok(patches)
    }

    /// Returns the rows of every table whose data the archive holds (a `TABLE DATA` block),
    /// when it was read to a clean end by a scanner [counting rows](Self::counting_rows).
    /// A table named twice, or by a name that is not UTF-8, is left out.
    pub fn table_rows(&self) -> Result<Vec<TableRows>, String> {
        if self.complete()?.compressed {
            return Err("pg_dump compressed the table data".to_owned());
        }
        if !self.count_rows {
            return Err("this scanner does not count rows".to_owned());
        }
        let mut named: HashMap<(&[u8], &[u8]), Option<&CopyLines>> = HashMap::new();
        for (id, (schema, table)) in &self.tables {
            if let Some(lines) = self.rows.get(id) {
                named
                    .entry((schema, table))
                    .and_modify(|seen| *seen = None)
                    .or_insert(Some(lines));
            }
        }
        let mut tables: Vec<TableRows> = named
            .into_iter()
            .filter_map(|((schema, table), lines)| {
                let lines = lines?;
                Some(TableRows {
                    schema: String::from_utf8(schema.to_vec()).ok()?,
                    table: String::from_utf8(table.to_vec()).ok()?,
                    rows: lines.rows,
                    bytes: lines.bytes,
                })
            })
            .collect();
        tables.sort_by(|a, b| (&a.schema, &a.table).cmp(&(&b.schema, &b.table)));
        Ok(tables)
    }

    /// Returns the header's layout if the archive was read to a clean end, else why not.
    fn complete(&self) -> Result<Layout, String> {
        if let Some(why) = &self.failed {
            return Err(why.clone());
        }
        if !matches!(self.state, State::BlockStart) {
            return Err(format!(
                "the archive ended inside {}",
                match self.state {
                    State::Header => "its header",
                    State::Toc { .. } => "its table of contents",
                    _ => "a data block",
                }
            ));
        }
        self.layout.ok_or_else(|| "no header".to_owned())
    }

    /// Records the rows of the block whose lines were being counted.
    fn finish_counting(&mut self) {
        if let Some((id, lines)) = self.counting.take() {
            self.rows.insert(id, lines);
        }
    }

    fn stop(&mut self, why: String) {
        self.failed.get_or_insert(why);
        self.state = State::Stopped;
        self.pending = Vec::new();
    }

    fn advance(&mut self, bytes: &mut &[u8], n: usize) {
        *bytes = &bytes[n..];
        self.position += n as u64;
    }

    /// Reads a data-section integer (a sign byte, then `int_size` bytes, least significant
    /// first), which may arrive in pieces; `None` until it is complete.
    fn take_int(&mut self, bytes: &mut &[u8]) -> Option<i64> {
        let layout = self.layout?;
        let want = 1 + layout.int_size;
        if self.int_bytes.is_empty() && bytes.len() >= want {
            // The usual case: all of it is here.
            let value = decode_int(&bytes[..want]);
            self.advance(bytes, want);
            return Some(value);
        }
        let n = (want - self.int_bytes.len()).min(bytes.len());
        self.int_bytes.extend_from_slice(&bytes[..n]);
        self.advance(bytes, n);
        if self.int_bytes.len() < want {
            return None;
        }
        let value = decode_int(&self.int_bytes);
        self.int_bytes.clear();
        Some(value)
    }

    /// Parses as much of the header and the TOC as `pending` holds.
    fn parse_pending(&mut self) {
        let mut consumed = 0;
        let parsed = loop {
            let rest = &self.pending[consumed..];
            match self.state {
                State::Header => match parse_header(rest) {
                    Ok(Some((layout, toc_count, used))) => {
                        self.layout = Some(layout);
                        self.state = State::Toc { left: toc_count };
                        consumed += used;
                    }
                    Ok(None) => break Ok(()),
                    Err(why) => break Err(why),
                },
                State::Toc { left } if left > 0 => {
                    let layout = self.layout.expect("the header comes first");
                    match parse_entry(rest, layout) {
                        Ok(Some(entry)) => {
                            let field = OffsetField {
                                position: self.pending_start + (consumed + entry.field_at) as u64,
                                flag: entry.flag,
                            };
                            if self.entries.insert(entry.id, field).is_some() {
                                break Err(format!("TOC entry {} appears twice", entry.id));
                            }
                            if let Some(table) = entry.table {
                                self.tables.insert(entry.id, table);
                            }
                            self.state = State::Toc { left: left - 1 };
                            consumed += entry.used;
                        }
                        Ok(None) => break Ok(()),
                        Err(why) => break Err(why),
                    }
                }
                State::Toc { .. } => {
                    // The TOC is complete: the rest is data.
                    self.data_start = Some(self.pending_start + consumed as u64);
                    let rest = self.pending.split_off(consumed);
                    self.pending = Vec::new();
                    self.state = State::BlockStart;
                    self.position -= rest.len() as u64;
                    self.feed(&rest);
                    return;
                }
                _ => unreachable!("only the header and the TOC are collected"),
            }
        };
        if let Err(why) = parsed {
            self.stop(why);
            return;
        }
        self.pending.drain(..consumed);
        self.pending_start += consumed as u64;
        if self.pending.len() > MAX_PENDING {
            self.stop(format!(
                "a TOC entry at {} is larger than {MAX_PENDING} bytes",
                self.pending_start
            ));
        }
    }
}

/// Counts the rows of `COPY ... TO stdout` text as it streams by: one per line, up to the
/// end-of-data line `\.` that pg_dump (up to PostgreSQL 17 at least) writes after the rows,
/// followed by empty lines. A value `\.` is written `\\.`, so a line that is exactly `\.`
/// is always the marker, while an empty line before it is a row (of a table without
/// columns).
#[derive(Debug, Default)]
struct CopyLines {
    rows: u64,
    /// Bytes seen, the end-of-data line included.
    bytes: u64,
    /// The first bytes of the line being read (at most 3 are needed to tell the marker).
    head: Vec<u8>,
    /// Whether the marker was seen: nothing after it is a row.
    ended: bool,
}

impl CopyLines {
    fn feed(&mut self, mut bytes: &[u8]) {
        self.bytes += bytes.len() as u64;
        while !self.ended && !bytes.is_empty() {
            let (line, rest) = match memchr::memchr(b'\n', bytes) {
                Some(at) => (&bytes[..at], Some(&bytes[at + 1..])),
                None => (bytes, None),
            };
            let room = 3usize.saturating_sub(self.head.len()).min(line.len());
            self.head.extend_from_slice(&line[..room]);
            let Some(rest) = rest else {
                return;
            };
            if self.head == b"\\." {
                self.ended = true;
            } else {
                self.rows += 1;
            }
            self.head.clear();
            bytes = rest;
        }
    }
}

/// Decodes an archive integer: a sign byte, then the magnitude least significant byte first.
fn decode_int(bytes: &[u8]) -> i64 {
    let magnitude = bytes[1..]
        .iter()
        .enumerate()
        .fold(0i64, |acc, (i, b)| acc | (i64::from(*b) << (8 * i)));
    // A magnitude of 2^63 or more is no integer pg_dump writes; it stays wrong, not a panic.
    if bytes[0] != 0 {
        magnitude.wrapping_neg()
    } else {
        magnitude
    }
}

/// Reads header and TOC fields from a buffer that may end early: `Ok(None)` from any read
/// means "wait for more bytes".
struct Fields<'a> {
    buf: &'a [u8],
    at: usize,
    int_size: usize,
}

impl<'a> Fields<'a> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.at)?;
        self.at += 1;
        Some(b)
    }

    fn int(&mut self) -> Option<i64> {
        let bytes = self.buf.get(self.at..self.at + 1 + self.int_size)?;
        self.at += 1 + self.int_size;
        Some(decode_int(bytes))
    }

    /// Reads a string: its length (-1: NULL), then its bytes.
    fn str(&mut self) -> Option<Result<Option<&'a [u8]>, String>> {
        let length = self.int()?;
        if length < 0 {
            return Some(Ok(None));
        }
        let Ok(length) = usize::try_from(length) else {
            return Some(Err(format!("string length {length}")));
        };
        if length > MAX_PENDING {
            return Some(Err(format!("string length {length}")));
        }
        let bytes = self.buf.get(self.at..self.at + length)?;
        self.at += length;
        Some(Ok(Some(bytes)))
    }

    /// Skips a string. Returns whether it was NULL.
    fn skip_str(&mut self) -> Option<Result<bool, String>> {
        self.str().map(|r| r.map(|s| s.is_none()))
    }
}

/// Evaluates a `Fields` read: returns `Ok(None)` (need more bytes) when it is short.
macro_rules! need {
    ($read:expr) => {
        match $read {
            Some(value) => value,
            None => return Ok(None),
        }
    };
}

/// Parses the header; returns the layout, the TOC's entry count and the bytes used.
fn parse_header(buf: &[u8]) -> Result<Option<(Layout, i64, usize)>, String> {
    if buf.len() < 8 {
        return Ok(None);
    }
    if &buf[..5] != b"PGDMP" {
        return Err("not a custom-format archive (no PGDMP)".to_owned());
    }
    let (major, minor) = (buf[5], buf[6]);
    if major != 1 || !(OLDEST_MINOR..=NEWEST_MINOR).contains(&minor) {
        return Err(format!(
            "archive version {major}.{minor} is not one this agent knows"
        ));
    }
    let mut f = Fields {
        buf,
        at: 8,
        int_size: 0,
    };
    let int_size = usize::from(need!(f.byte()));
    let off_size = usize::from(need!(f.byte()));
    if !(1..=8).contains(&int_size) || !(1..=16).contains(&off_size) {
        return Err(format!("integer size {int_size}, offset size {off_size}"));
    }
    f.int_size = int_size;
    let format = need!(f.byte());
    if format != FORMAT_CUSTOM {
        return Err(format!("archive format {format} is not custom"));
    }
    // The compression algorithm (0 is none), or before 1.15 the zlib level (0 is none).
    let compressed = if minor >= 15 {
        need!(f.byte()) != 0
    } else {
        need!(f.int()) != 0
    };
    for _ in 0..7 {
        need!(f.int()); // creation date
    }
    // Database name, server version, pg_dump version.
    for _ in 0..3 {
        need!(f.skip_str())?;
    }
    let toc_count = need!(f.int());
    if toc_count < 0 {
        return Err(format!("TOC count {toc_count}"));
    }
    let layout = Layout {
        minor,
        int_size,
        off_size,
        compressed,
    };
    Ok(Some((layout, toc_count, f.at)))
}

/// What a TOC entry says about its data.
struct Entry {
    /// Its dump id.
    id: i64,
    /// Where its offset field (flag, then offset) starts, from the entry's start.
    field_at: usize,
    flag: u8,
    /// Its length.
    used: usize,
    /// Schema and name of the table whose data a `TABLE DATA` entry is.
    table: Option<(Vec<u8>, Vec<u8>)>,
}

/// Parses one TOC entry.
fn parse_entry(buf: &[u8], layout: Layout) -> Result<Option<Entry>, String> {
    let mut f = Fields {
        buf,
        at: 0,
        int_size: layout.int_size,
    };
    let id = need!(f.int());
    if id <= 0 {
        return Err(format!("TOC entry id {id}"));
    }
    need!(f.int()); // had a data dumper
    // Table OID, OID.
    for _ in 0..2 {
        need!(f.skip_str())?;
    }
    let tag = need!(f.str())?;
    let desc = need!(f.str())?;
    need!(f.int()); // section
    // Definition, DROP statement.
    for _ in 0..2 {
        need!(f.skip_str())?;
    }
    let copy = need!(f.str())?;
    let schema = need!(f.str())?;
    need!(f.skip_str())?; // tablespace
    // Only data dumped as COPY text has a row per line (not `--inserts`).
    let table = match (desc, copy, schema, tag) {
        (Some(b"TABLE DATA"), Some(copy), Some(schema), Some(tag))
            if copy.starts_with(b"COPY ") =>
        {
            Some((schema.to_vec(), tag.to_vec()))
        }
        _ => None,
    };
    if layout.minor >= 14 {
        need!(f.skip_str())?; // table access method
    }
    if layout.minor >= 16 {
        need!(f.int()); // relkind
    }
    need!(f.skip_str())?; // owner
    need!(f.skip_str())?; // "with OIDs", always false
    // Dependencies, up to a NULL.
    while !need!(f.skip_str())? {}
    let field_at = f.at;
    let flag = need!(f.byte());
    if !matches!(flag, OFFSET_POS_NOT_SET | OFFSET_POS_SET | OFFSET_NO_DATA) {
        return Err(format!("TOC entry {id} has offset flag {flag}"));
    }
    if f.buf.len() < f.at + layout.off_size {
        return Ok(None);
    }
    f.at += layout.off_size;
    Ok(Some(Entry {
        id,
        field_at,
        flag,
        used: f.at,
        table,
    }))
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    /// Dump ids with a position in the archive.
    type Positions = Vec<(i64, u64)>;

    /// Writes archives the way pg_dump does (version 1.14 or 1.16, 4-byte integers).
    struct Writer {
        out: Vec<u8>,
        minor: u8,
    }

    impl Writer {
        fn int(&mut self, v: i64) {
            self.out.push(u8::from(v < 0));
            self.out
                .extend_from_slice(&(v.unsigned_abs() as u32).to_le_bytes());
        }

        fn str(&mut self, s: Option<&str>) {
            match s {
                None => self.int(-1),
                Some(s) => {
                    self.int(s.len() as i64);
                    self.out.extend_from_slice(s.as_bytes());
                }
            }
        }

        /// An archive with a schema-only entry 1, table data 2 and 3, large objects 4; data
        /// blocks in the order given, each `rows` one-chunk rows. Returns the archive, the
        /// position of each entry's offset field, and of each data block.
        fn archive(minor: u8, rows: &[(i64, usize)]) -> (Vec<u8>, Positions, Positions) {
            let mut w = Writer {
                out: b"PGDMP".to_vec(),
                minor,
            };
            w.out.extend_from_slice(&[1, minor, 0, 4, 8, FORMAT_CUSTOM]);
            if minor >= 15 {
                w.out.push(0);
            } else {
                w.int(0);
            }
            for v in [5, 4, 3, 27, 10, 126, 0] {
                w.int(v);
            }
            w.str(Some("app"));
            w.str(Some("17.2"));
            w.str(Some("17.2"));
            let entries = [
                (1, false, "TABLE"),
                (2, true, "TABLE DATA"),
                (3, true, "TABLE DATA"),
                (4, true, "BLOBS"),
            ];
            w.int(entries.len() as i64);
            let mut fields = Vec::new();
            for (id, data, desc) in entries {
                w.int(id);
                w.int(i64::from(data));
                w.str(Some("1259"));
                w.str(Some("16384"));
                w.str(Some(&format!("t{id} ü")));
                w.str(Some(desc));
                w.int(2);
                w.str(Some("CREATE TABLE t (a int);\n"));
                w.str(Some(""));
                w.str(if data {
                    Some("COPY t (a) FROM stdin;\n")
                } else {
                    None
                });
                w.str(Some("public"));
                w.str(Some(""));
                if w.minor >= 14 {
                    w.str(Some("heap"));
                }
                if w.minor >= 16 {
                    w.int(i64::from(b'r'));
                }
                w.str(Some("postgres"));
                w.str(Some("false"));
                w.str(Some("1"));
                w.str(Some("7"));
                w.str(None);
                fields.push((id, w.out.len() as u64));
                w.out.push(if data {
                    OFFSET_POS_NOT_SET
                } else {
                    OFFSET_NO_DATA
                });
                w.out.extend_from_slice(&[0; 8]);
            }
            let mut blocks = Vec::new();
            for &(id, rows) in rows {
                blocks.push((id, w.out.len() as u64));
                if id == 4 {
                    w.out.push(BLK_BLOBS);
                    w.int(id);
                    for oid in [16500, 16501] {
                        w.int(oid);
                        for _ in 0..rows {
                            w.int(3);
                            w.out.extend_from_slice(b"\x00\x01\x02");
                        }
                        w.int(0);
                    }
                    w.int(0);
                } else {
                    w.out.push(BLK_DATA);
                    w.int(id);
                    for row in 0..rows {
                        let line = Self::row(row as u64);
                        w.int(line.len() as i64);
                        w.out.extend_from_slice(line.as_bytes());
                    }
                    // The end of the data, as pg_dump writes it.
                    w.int(5);
                    w.out.extend_from_slice(b"\\.\n\n\n");
                    w.int(0);
                }
            }
            (w.out, fields, blocks)
        }

        /// Row `row` of a table's data, as COPY text.
        fn row(row: u64) -> String {
            format!("{row}\tvalue {row}\n")
        }
    }

    fn scan_in_pieces(archive: &[u8], piece: usize) -> Result<Vec<Patch>, String> {
        let mut scanner = ArchiveScanner::new();
        for part in archive.chunks(piece) {
            scanner.feed(part);
        }
        assert!(scanner.table_rows().is_err(), "rows are not counted");
        scanner.patches()
    }

    fn rows_in_pieces(archive: &[u8], piece: usize) -> Result<Vec<TableRows>, String> {
        let mut scanner = ArchiveScanner::counting_rows();
        for part in archive.chunks(piece) {
            scanner.feed(part);
        }
        scanner.table_rows()
    }

    /// The table `Writer::archive` writes with `rows` rows: their lines, then the end of
    /// data (5 bytes).
    fn rows(table: &str, rows: u64) -> TableRows {
        let lines: u64 = (0..rows).map(|row| Writer::row(row).len() as u64).sum();
        TableRows {
            schema: "public".to_owned(),
            table: table.to_owned(),
            rows,
            bytes: lines + 5,
        }
    }

    #[test]
    fn counts_the_rows_of_each_table_whatever_pieces_the_archive_arrives_in() {
        // Row 0 is 10 bytes long: its chunk length holds a newline byte, which is no row.
        let (archive, _, _) = Writer::archive(14, &[(2, 1000), (3, 0), (4, 3)]);
        for piece in [1, 3, 7, 4096, archive.len()] {
            assert_eq!(
                rows_in_pieces(&archive, piece),
                Ok(vec![rows("t2 ü", 1000), rows("t3 ü", 0)]),
                "pieces of {piece}"
            );
        }
        // A table without a data block has no count; a cut archive has none at all.
        let (archive, _, _) = Writer::archive(16, &[(3, 2)]);
        assert_eq!(rows_in_pieces(&archive, 64), Ok(vec![rows("t3 ü", 2)]));
        assert!(rows_in_pieces(&archive[..archive.len() - 1], 64).is_err());
    }

    fn copy_rows(pieces: &[&[u8]]) -> u64 {
        let mut lines = CopyLines::default();
        for piece in pieces {
            lines.feed(piece);
        }
        lines.rows
    }

    #[test]
    fn copy_rows_end_at_the_end_of_data_line() {
        assert_eq!(copy_rows(&[b"1\ta\n2\tb\n\\.\n\n\n"]), 2);
        // Rows of a table without columns are empty lines; the ones after the marker are not.
        assert_eq!(copy_rows(&[b"\n\n\n", b"\\.\n\n\n"]), 3);
        // The marker split across pieces, and a value `\.` (written `\\.`) or `\.x`.
        assert_eq!(copy_rows(&[b"a\n\\", b".", b"\n\n"]), 1);
        assert_eq!(copy_rows(&[b"\\\\.\n\\.x\n\\.\n"]), 2);
        // No marker at all (a later pg_dump may not write it).
        assert_eq!(copy_rows(&[b"1\n", b"2\n"]), 2);
        assert_eq!(copy_rows(&[b"1\n2"]), 1);
    }

    fn expected(fields: &[(i64, u64)], blocks: &[(i64, u64)]) -> Vec<Patch> {
        let mut patches: Vec<Patch> = blocks
            .iter()
            .map(|(id, at)| {
                let field = fields.iter().find(|(f, _)| f == id).expect("field").1;
                let mut bytes = vec![OFFSET_POS_SET];
                bytes.extend_from_slice(&at.to_le_bytes());
                Patch {
                    position: field,
                    bytes,
                }
            })
            .collect();
        patches.sort_by_key(|p| p.position);
        patches
    }

    #[test]
    fn finds_every_data_block_whatever_pieces_the_archive_arrives_in() {
        for minor in [12, 14, 15, 16] {
            let (archive, fields, blocks) = Writer::archive(minor, &[(2, 50), (3, 0), (4, 2)]);
            let want = expected(&fields, &blocks);
            assert_eq!(want.len(), 3);
            for piece in [1, 2, 3, 7, 64, 1000, archive.len()] {
                assert_eq!(
                    scan_in_pieces(&archive, piece).as_ref(),
                    Ok(&want),
                    "version 1.{minor}, pieces of {piece}"
                );
            }
        }
    }

    #[test]
    fn anything_unexpected_gives_no_patches() {
        let (archive, _, _) = Writer::archive(14, &[(2, 5), (3, 5), (4, 1)]);
        // Cut short, in the TOC and in the data.
        for cut in [3, 100, archive.len() - 1] {
            assert!(scan_in_pieces(&archive[..cut], 16).is_err(), "cut at {cut}");
        }
        // A block the TOC does not name.
        let (bad, _, blocks) = Writer::archive(14, &[(2, 1)]);
        let mut bad = bad;
        bad[blocks[0].1 as usize + 2] = 9;
        assert!(
            scan_in_pieces(&bad, 16)
                .unwrap_err()
                .contains("not in the TOC")
        );
        // The same block twice.
        let (twice, _, _) = Writer::archive(14, &[(2, 1), (2, 1)]);
        assert!(scan_in_pieces(&twice, 16).unwrap_err().contains("twice"));
        // Another version, another format.
        let mut newer = archive.clone();
        newer[6] = 17;
        assert!(scan_in_pieces(&newer, 16).unwrap_err().contains("1.17"));
        assert!(scan_in_pieces(b"-- plain SQL dump\n", 4).is_err());
    }

    #[test]
    fn rows_of_compressed_data_are_not_counted_but_offsets_are_found() {
        let (mut archive, fields, blocks) = Writer::archive(16, &[(2, 3)]);
        // The compression algorithm follows the version, sizes and format bytes.
        archive[11] = 1;
        let error = rows_in_pieces(&archive, 64).expect_err("compressed");
        assert!(error.contains("compressed"), "{error}");
        assert_eq!(scan_in_pieces(&archive, 64), Ok(expected(&fields, &blocks)));
    }

    #[test]
    fn the_table_of_contents_ends_where_the_first_block_starts() {
        let (archive, _, blocks) = Writer::archive(15, &[(3, 2), (2, 1)]);
        let mut scanner = ArchiveScanner::new();
        for (i, piece) in archive.chunks(5).enumerate() {
            assert_eq!(
                scanner.data_start().is_some(),
                i * 5 >= blocks[0].1 as usize
            );
            scanner.feed(piece);
        }
        assert_eq!(scanner.data_start(), Some(blocks[0].1));
        assert_eq!(scanner.failure(), None);
        let mut bad = ArchiveScanner::new();
        bad.feed(b"-- plain SQL dump\n");
        assert!(bad.failure().is_some() && bad.data_start().is_none());
    }

    #[test]
    fn entries_without_a_block_stay_unset() {
        let (archive, fields, blocks) = Writer::archive(16, &[(3, 4)]);
        assert_eq!(scan_in_pieces(&archive, 5), Ok(expected(&fields, &blocks)));
    }

    /// The patched archive from a pipe carries the offsets pg_dump writes into a file.
    #[test]
    fn patching_a_piped_dump_gives_the_offsets_of_a_dump_to_a_file() {
        use warden_tests::{PgCluster, TestDir};
        let dir = TestDir::new("pgarchive");
        let cluster = PgCluster::start_new(dir.path(), "pg");
        cluster.create_database("app");
        cluster.psql_script(
            "app",
            "CREATE TABLE a (id int PRIMARY KEY, note text);
             INSERT INTO a SELECT i, repeat('x', i % 50) FROM generate_series(1, 5000) i;
             CREATE TABLE b (id int);
             CREATE TABLE \"c ü\" (v jsonb);
             INSERT INTO \"c ü\" VALUES ('{\"k\": 1}'), (NULL);
             SELECT lo_from_bytea(0, '\\x000102'::bytea);
             CREATE VIEW v AS SELECT id FROM a;",
        );
        // Values with newlines, carriage returns, tabs, backslashes and a bytea of newlines;
        // a table without columns; partitions; an inheritance parent and its child.
        cluster.psql_script(
            "app",
            "CREATE SCHEMA \"Odd\nSchema\";
             CREATE TABLE \"Odd\nSchema\".lines (t text, b bytea);
             INSERT INTO \"Odd\nSchema\".lines
                 SELECT E'line 1\\nline 2\\r\\n\\ttab \\\\ back ' || i, decode('0a0a0d', 'hex')
                 FROM generate_series(1, 300) i;
             INSERT INTO \"Odd\nSchema\".lines VALUES (NULL, NULL), ('', '');
             CREATE TABLE nocols ();
             INSERT INTO nocols SELECT FROM generate_series(1, 7);
             CREATE TABLE m (d date, v int) PARTITION BY RANGE (d);
             CREATE TABLE m_2024 PARTITION OF m FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
             CREATE TABLE m_rest PARTITION OF m DEFAULT;
             INSERT INTO m SELECT date '2024-06-01' + i, i FROM generate_series(1, 400) i;
             CREATE TABLE parent (id int);
             CREATE TABLE child (extra text) INHERITS (parent);
             INSERT INTO parent VALUES (1), (2);
             INSERT INTO child VALUES (3, 'x');",
        );
        let pg_dump = warden_tests::pg::pg_bindir().join("pg_dump");
        let url = cluster.url("app");
        let dump = |to_file: Option<&std::path::Path>| {
            let mut cmd = Command::new(&pg_dump);
            cmd.args(["--format=custom", "--compress=0", "--dbname", &url]);
            if let Some(file) = to_file {
                cmd.arg("--file").arg(file);
            }
            let out = cmd.output().expect("run pg_dump");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            match to_file {
                Some(file) => std::fs::read(file).expect("read dump"),
                None => out.stdout,
            }
        };
        let mut piped = dump(None);
        let seekable = dump(Some(&dir.path().join("seekable.dump")));

        let mut scanner = ArchiveScanner::counting_rows();
        scanner.feed(&piped);
        // The rows of each table's data are its own rows (COPY leaves the children out).
        let counted = scanner.table_rows().expect("a pg_dump archive");
        let tables: Vec<&str> = counted.iter().map(|t| t.table.as_str()).collect();
        assert_eq!(
            tables,
            [
                "lines", "a", "b", "c ü", "child", "m_2024", "m_rest", "nocols", "parent"
            ]
        );
        for t in &counted {
            let sql = format!(
                "SELECT count(*) FROM ONLY {}.{}",
                warden_tests::pg::quote_ident(&t.schema),
                warden_tests::pg::quote_ident(&t.table)
            );
            assert_eq!(
                cluster.psql("app", &sql).trim(),
                t.rows.to_string(),
                "{t:?}"
            );
        }
        // Each row is a line at least; an empty table holds only the end of its data.
        assert!(counted.iter().all(|t| t.bytes > t.rows), "{counted:?}");
        assert_eq!(
            counted.iter().find(|t| t.table == "b").map(|t| t.bytes),
            Some(5)
        );
        assert_eq!(counted[0].schema, "Odd\nSchema");
        assert_eq!(counted[0].rows, 302);
        let patches = scanner.patches().expect("a pg_dump archive");
        // Every table and the large object have data.
        assert_eq!(patches.len(), counted.len() + 1, "{patches:?}");
        for patch in &patches {
            let at = patch.position as usize;
            piped[at..at + patch.bytes.len()].copy_from_slice(&patch.bytes);
        }
        // Same archive but for the creation time in the header: seven 5-byte integers after
        // the compression level (an integer before version 1.15, a byte since).
        let time_at = if piped[6] >= 15 { 12 } else { 16 };
        let header_time = time_at..time_at + 7 * 5;
        assert_eq!(piped.len(), seekable.len());
        assert_eq!(piped[..header_time.start], seekable[..header_time.start]);
        assert_eq!(piped[header_time.end..], seekable[header_time.end..]);

        // A file pg_dump already gave its offsets needs nothing.
        let mut scanner = ArchiveScanner::new();
        scanner.feed(&seekable);
        assert_eq!(scanner.patches(), Ok(Vec::new()));
    }
}
