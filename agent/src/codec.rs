//! Streaming between a tool and the repository: zstd compression on the way in, and
//! decompression on the way out, with the sha256 of the stored (compressed) bytes computed
//! in the same pass, so a dump is read and written exactly once in each direction.
//!
//! zstd works on blocking threads; the async side only moves 1 MiB chunks, so a slow disk
//! applies back-pressure to the tool's pipe instead of buffering a dump in memory.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use crate::error::{AgentError, AgentResult};
use crate::orders::blocking;
use crate::pgarchive::ArchiveScanner;
use crate::repository::{Sink, Source};
use crate::sealing::{Key, OpenError};

/// Size of the chunks read from a pipe or file and handed to zstd.
pub const CHUNK_BYTES: usize = 1 << 20;
/// zstd level: level 3 keeps up with pg_dump on one core per worker and is zstd's default.
const ZSTD_LEVEL: i32 = 3;
/// Pipe buffer asked for between a tool and the agent (the kernel's default is 64 KiB and
/// its limit for unprivileged processes 1 MiB, `/proc/sys/fs/pipe-max-size`).
const PIPE_BYTES: usize = 1 << 20;
/// Chunks in flight between the reader and the compressing thread.
const CHUNKS_IN_FLIGHT: usize = 4;

/// A compressed file as stored: sizes and the sha256 of its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFile {
    /// Bytes before compression.
    pub raw_bytes: u64,
    /// Bytes in the file.
    pub size_bytes: u64,
    /// sha256 of the file's bytes, lowercase hex.
    pub sha256: String,
}

/// A stored file to read: its bytes, the key that opens them if they are sealed, and where
/// they are (for messages).
pub struct Stored {
    pub source: Source,
    pub key: Option<Key>,
    pub location: String,
}

/// Where a file is stored: its sink, the key that seals it if any, and where it goes (for
/// messages). The counterpart of [`Stored`].
pub struct Destination {
    pub sink: Box<dyn Sink>,
    pub seal: Option<Key>,
    pub location: String,
}

/// Compresses everything `reader` yields into `dest`, sealed if it has a key, and finishes
/// its sink. `raw_counter` grows by each chunk read, for progress reports.
pub async fn compress_to<R>(
    reader: R,
    dest: Destination,
    raw_counter: Arc<AtomicU64>,
) -> AgentResult<StoredFile>
where
    R: AsyncRead + Unpin,
{
    compress(reader, dest, raw_counter, None)
        .await
        .map(|(stored, _)| stored)
}

/// [`compress_to`] for a pg_dump custom-format archive, which is also read as it goes
/// by: the scanner returned has the rows of each table's data
/// ([`ArchiveScanner::table_rows`]).
pub async fn compress_archive_to<R>(
    reader: R,
    dest: Destination,
    raw_counter: Arc<AtomicU64>,
) -> AgentResult<(StoredFile, ArchiveScanner)>
where
    R: AsyncRead + Unpin,
{
    let (stored, scanner) = compress(
        reader,
        dest,
        raw_counter,
        Some(ArchiveScanner::counting_rows()),
    )
    .await?;
    Ok((stored, scanner.unwrap_or_default()))
}

async fn compress<R>(
    mut reader: R,
    dest: Destination,
    raw_counter: Arc<AtomicU64>,
    scanner: Option<ArchiveScanner>,
) -> AgentResult<(StoredFile, Option<ArchiveScanner>)>
where
    R: AsyncRead + Unpin,
{
    let Destination {
        sink,
        seal,
        location,
    } = dest;
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let writer =
        tokio::task::spawn_blocking(move || write_compressed(rx, sink, seal.as_ref(), scanner));

    let read = async {
        loop {
            let mut chunk = Vec::with_capacity(CHUNK_BYTES);
            let eof = fill_chunk(&mut reader, &mut chunk).await?;
            raw_counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            let sent = if chunk.is_empty() {
                Ok(())
            } else {
                tx.send(Chunk::Data(chunk)).await
            };
            if sent.is_err() {
                // The writer stopped on an error; it is reported below.
                return Ok(());
            }
            if eof {
                let _ = tx.send(Chunk::End).await;
                return Ok::<(), io::Error>(());
            }
        }
    }
    .await;
    drop(tx);

    let written = writer.await;
    // A read error ends the stream without `End`, which makes the writer fail too; the read
    // error is the cause.
    read.map_err(AgentError::io(format!(
        "cannot read the data for {location}"
    )))?;
    written
        .map_err(|e| io::Error::other(format!("compression thread failed: {e}")))
        .and_then(|r| r)
        .map_err(AgentError::io(format!("cannot write {location}")))
}

/// What the reading side hands to the compressing thread.
enum Chunk {
    Data(Vec<u8>),
    /// The input ended normally; without it, a closed channel means the read was abandoned.
    End,
}

/// Reads until `chunk` holds [`CHUNK_BYTES`] or the input ends; returns whether it ended.
async fn fill_chunk<R: AsyncRead + Unpin>(reader: &mut R, chunk: &mut Vec<u8>) -> io::Result<bool> {
    while chunk.len() < CHUNK_BYTES {
        if reader.read_buf(chunk).await? == 0 {
            return Ok(true);
        }
    }
    Ok(false)
}

fn write_compressed(
    mut chunks: mpsc::Receiver<Chunk>,
    sink: Box<dyn Sink>,
    seal: Option<&Key>,
    mut scanner: Option<ArchiveScanner>,
) -> io::Result<(StoredFile, Option<ArchiveScanner>)> {
    let hashing = HashingWriter::new(sink);
    let sealed = match seal {
        Some(key) => Sealed::Age(key.seal(hashing)?),
        None => Sealed::Plain(hashing),
    };
    let mut encoder = zstd::Encoder::new(sealed, ZSTD_LEVEL)?;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    encoder.multithread(u32::try_from(workers).unwrap_or(1))?;
    let mut raw_bytes = 0u64;
    loop {
        match chunks.blocking_recv() {
            Some(Chunk::Data(chunk)) => {
                if let Some(scanner) = &mut scanner {
                    scanner.feed(&chunk);
                }
                encoder.write_all(&chunk)?;
                raw_bytes += chunk.len() as u64;
            }
            Some(Chunk::End) => break,
            // Abandoned (cancelled or failed): finishing the file would only waste time.
            None => return Err(io::Error::other("input abandoned")),
        }
    }
    let hashing = encoder.finish()?.finish()?;
    let size_bytes = hashing.bytes;
    let sha256 = hex::encode(hashing.hasher.finalize());
    hashing.inner.finish()?;
    let stored = StoredFile {
        raw_bytes,
        size_bytes,
        sha256,
    };
    Ok((stored, scanner))
}

/// The compressed stream on its way to the hashing writer: as is, or sealed.
enum Sealed<W: Write> {
    Plain(W),
    Age(age::stream::StreamWriter<W>),
}

impl<W: Write> Sealed<W> {
    /// Ends the stream (the last sealed chunk) and returns the writer underneath.
    fn finish(self) -> io::Result<W> {
        match self {
            Self::Plain(w) => Ok(w),
            Self::Age(w) => w.finish(),
        }
    }
}

impl<W: Write> Write for Sealed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(w) => w.write(buf),
            Self::Age(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(w) => w.flush(),
            Self::Age(w) => w.flush(),
        }
    }
}

/// What reading a compressed file back produced.
#[derive(Debug)]
pub struct Decompressed {
    /// sha256 of every byte of the compressed file, lowercase hex.
    pub sha256: String,
    /// Bytes written to the destination, or why decompression failed (a damaged file).
    pub decoded: io::Result<u64>,
    /// For a file: how many data offsets were filled into the table of contents of the
    /// destination, a pg_dump custom-format archive that pg_dump wrote to a pipe (see
    /// [`crate::pgarchive`]), or why none were. `None` for a pipe.
    pub offsets_filled: Option<Result<usize, String>>,
}

/// Decompresses `src` into a new file `dest` while hashing all of `src`. When `dest` is a
/// custom-format archive that pg_dump wrote to a pipe, its table of contents gets the data
/// offsets pg_dump could not write (see [`crate::pgarchive`]), which a parallel pg_restore
/// needs to be fast.
///
/// `dest` is scratch space for a restore and is not fsynced: pg_restore reads it through the
/// page cache, it is removed right after, and a crash leaves it to be cleared at startup.
/// `read_counter` grows by the stored bytes read, for progress reports. Only failing to
/// read `src` or write `dest` is an error here; a damaged `src` shows in the result.
pub async fn decompress_to_file(
    src: Stored,
    dest: &Path,
    read_counter: Arc<AtomicU64>,
) -> AgentResult<Decompressed> {
    // Created here rather than on the thread, so that no file can appear after this future
    // is dropped (the caller removes `dest` right then).
    let output = File::create_new(dest)
        .map_err(AgentError::io(format!("cannot create {}", dest.display())))?;
    let (read, write_error) = decompress(src, output, true, read_counter).await?;
    match write_error {
        // A full staging disk is the agent's problem, not a damaged artifact.
        Some(error) => Err(AgentError::io(format!("cannot write {}", dest.display()))(
            error,
        )),
        None => Ok(read),
    }
}

/// Decompresses `src` into `pipe` (the stdin of a tool) while hashing all of `src`, then
/// closes the pipe.
///
/// The reader may stop early: pg_restore exits once it has read the last entry it needs,
/// and a failing one at its first error. The hash still covers every byte of `src`, and the
/// write error is returned beside it for the caller to weigh against the tool's exit.
pub async fn decompress_to_pipe(
    src: Stored,
    pipe: OwnedFd,
    read_counter: Arc<AtomicU64>,
) -> AgentResult<(Decompressed, Option<io::Error>)> {
    widen_pipe(&pipe);
    decompress(src, File::from(pipe), false, read_counter).await
}

/// Writes the header and table of contents of the archive compressed in `src` (its first
/// bytes, up to the data) to a new file `dest`: all pg_restore needs to restore the entries
/// without data, such as the indexes and constraints of `--section=post-data`. Reads only
/// as far as the table of contents goes.
pub async fn extract_toc(src: Stored, dest: &Path) -> AgentResult<()> {
    let output = File::create_new(dest)
        .map_err(AgentError::io(format!("cannot create {}", dest.display())))?;
    let dest = dest.to_path_buf();
    blocking(move || {
        let location = src.location.clone();
        let cannot_read = || AgentError::io(format!("cannot read {location}"));
        let opened = Opened::open(src.source, src.key.as_ref()).map_err(|e| match e {
            OpenError::Read(error) => cannot_read()(error),
            OpenError::Refused(why) => cannot_read()(io::Error::other(why)),
        })?;
        let mut decoder = zstd::Decoder::new(opened).map_err(cannot_read())?;
        let mut writer = BufWriter::new(output);
        let mut scanner = ArchiveScanner::new();
        let mut chunk = vec![0; 64 << 10];
        let end = loop {
            if let Some(end) = scanner.data_start() {
                break end;
            }
            if let Some(why) = scanner.failure() {
                return Err(AgentError::io(format!(
                    "cannot read the archive in {location}"
                ))(io::Error::other(why.to_owned())));
            }
            let n = decoder.read(&mut chunk).map_err(cannot_read())?;
            if n == 0 {
                return Err(cannot_read()(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the archive ends inside its table of contents",
                )));
            }
            scanner.feed(&chunk[..n]);
            writer
                .write_all(&chunk[..n])
                .map_err(AgentError::io(format!("cannot write {}", dest.display())))?;
        };
        writer
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|file| file.set_len(end))
            .map_err(AgentError::io(format!("cannot write {}", dest.display())))
    })
    .await
}

/// Asks for a larger buffer on a pipe to or from a tool: fewer, larger reads and writes,
/// and fewer wake-ups of both sides. The kernel may refuse, which costs only speed.
pub fn widen_pipe(pipe: impl AsFd) {
    if let Err(error) = rustix::pipe::fcntl_setpipe_size(pipe, PIPE_BYTES) {
        tracing::debug!(%error, "pipe buffer not widened");
    }
}

async fn decompress(
    src: Stored,
    output: File,
    fill_offsets: bool,
    read_counter: Arc<AtomicU64>,
) -> AgentResult<(Decompressed, Option<io::Error>)> {
    // A blocking thread cannot be aborted: if this future is dropped (the order was
    // cancelled), the guard tells the thread to stop reading instead of finishing the file.
    let abort = AbortOnDrop(Arc::new(AtomicBool::new(false)));
    let aborted = abort.0.clone();
    blocking(move || read_decompressed(src, output, fill_offsets, read_counter, aborted)).await
}

/// Returns the sha256 of every byte of `src`, lowercase hex, read on a blocking thread.
/// A sealed `src` must also open with its key: its header is read on the way, so a file
/// sealed to another key than its manifest says is refused here, before any restore
/// starts. `read_counter` grows by the bytes read, for progress reports; dropping the
/// future stops the read.
pub async fn sha256_of(src: Stored, read_counter: Arc<AtomicU64>) -> AgentResult<Hashed> {
    let abort = AbortOnDrop(Arc::new(AtomicBool::new(false)));
    let hashing = SharedReader::new(HashingReader::new(
        src.source,
        read_counter,
        abort.0.clone(),
    ));
    let location = src.location;
    blocking(move || {
        let opens = match &src.key {
            Some(key) => match key.open(hashing.clone()) {
                Ok(_) => Ok(()),
                Err(OpenError::Refused(why)) => Err(why),
                // age's own end-of-file on a truncated header is the file's fault, not a
                // failed read of the storage (which the hashing reader remembers).
                Err(OpenError::Read(error)) => match hashing.take_error() {
                    Some(failed) => {
                        return Err(AgentError::io(format!("cannot read {location}"))(failed));
                    }
                    None => Err(error.to_string()),
                },
            },
            None => Ok(()),
        };
        let sha256 = hashing
            .finish()
            .map_err(AgentError::io(format!("cannot read {location}")))?;
        Ok(Hashed { sha256, opens })
    })
    .await
}

/// What [`sha256_of`] found.
#[derive(Debug)]
pub struct Hashed {
    /// sha256 of every byte, lowercase hex.
    pub sha256: String,
    /// For a sealed file, why its key does not open it.
    pub opens: Result<(), String>,
}

/// Sets its flag when dropped.
struct AbortOnDrop(Arc<AtomicBool>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Decompresses (and opens, if sealed) `src` into `output`, filling in the data offsets of
/// an archive if `fill_offsets`. Only a decode failure on bytes that were read without error
/// says the file is damaged: a failed read (EIO on a network mount, a dropped download) is
/// an [`AgentError::Io`] and a failed write is returned beside the result, whatever zstd
/// made of either. After a failed write, the rest of `src` is still hashed.
fn read_decompressed(
    src: Stored,
    output: File,
    fill_offsets: bool,
    read_counter: Arc<AtomicU64>,
    aborted: Arc<AtomicBool>,
) -> AgentResult<(Decompressed, Option<io::Error>)> {
    let location = src.location;
    let hashing = SharedReader::new(HashingReader::new(src.source, read_counter, aborted));
    let mut writer = WriteSide {
        inner: BufWriter::with_capacity(CHUNK_BYTES, output),
        error: None,
        archive: fill_offsets.then(ArchiveScanner::new),
    };
    let decoded = match Opened::open(hashing.clone(), src.key.as_ref()) {
        Ok(opened) => {
            let mut decoder =
                zstd::Decoder::with_buffer(BufReader::with_capacity(CHUNK_BYTES, opened))
                    .map_err(AgentError::io("cannot start zstd"))?;
            io::copy(&mut decoder, &mut writer)
        }
        Err(OpenError::Read(error)) => Err(error),
        Err(OpenError::Refused(why)) => Err(io::Error::new(io::ErrorKind::InvalidData, why)),
    };
    // A failed read is not a damaged file: zstd (or age) passes it on as its own error,
    // which would otherwise read as one.
    if let Some(error) = hashing.take_error() {
        return Err(AgentError::io(format!("cannot read {location}"))(error));
    }
    // Hash whatever the decoder left unread (trailing bytes, all after a damaged frame or a
    // failed write), so the checksum always covers the whole file.
    let sha256 = hashing
        .finish()
        .map_err(AgentError::io(format!("cannot read {location}")))?;
    let archive = writer.archive;
    let (file, mut write_error) = match (writer.error, writer.inner.into_inner()) {
        (Some(error), _) => (None, Some(error)),
        (None, Ok(file)) => (Some(file), None),
        (None, Err(error)) => (None, Some(error.into_error())),
    };
    let mut offsets_filled = None;
    if let (Some(file), Some(archive), Ok(_)) = (file, archive, &decoded) {
        let patches = archive.patches();
        if let Ok(patches) = &patches {
            write_error = patches
                .iter()
                .find_map(|patch| file.write_all_at(&patch.bytes, patch.position).err());
        }
        offsets_filled = Some(patches.map(|patches| patches.len()));
    }
    let read = Decompressed {
        sha256,
        decoded,
        offsets_filled,
    };
    Ok((read, write_error))
}

/// The stored bytes on their way to zstd: as they are, or opened with their key.
enum Opened<R: Read> {
    Plain(R),
    Age(age::stream::StreamReader<R>),
}

impl<R: Read> Opened<R> {
    /// Opens `input` with `key` (reading its header), or passes it through without one.
    fn open(input: R, key: Option<&Key>) -> Result<Self, OpenError> {
        match key {
            Some(key) => key.open(input).map(Self::Age),
            None => Ok(Self::Plain(input)),
        }
    }
}

impl<R: Read> Read for Opened<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(r) => r.read(buf),
            Self::Age(r) => r.read(buf),
        }
    }
}

/// A [`HashingReader`] that the decoding chain reads through while the caller keeps a
/// handle on it, to hash whatever the chain left unread once it is done (age's reader does
/// not give back the reader underneath it).
#[derive(Clone)]
struct SharedReader(Arc<Mutex<HashingReader<Source>>>);

impl SharedReader {
    fn new(reader: HashingReader<Source>) -> Self {
        Self(Arc::new(Mutex::new(reader)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashingReader<Source>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns the first failed read, if any.
    fn take_error(&self) -> Option<io::Error> {
        self.lock().error.take()
    }

    /// Reads the rest and returns the sha256 of every byte read, lowercase hex.
    fn finish(&self) -> io::Result<String> {
        let mut reader = self.lock();
        io::copy(
            &mut BufReader::with_capacity(CHUNK_BYTES, &mut *reader),
            &mut io::sink(),
        )?;
        Ok(hex::encode(reader.hasher.clone().finalize()))
    }
}

impl Read for SharedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.lock().read(buf)
    }
}

/// Passes writes through, remembers the first one that failed, and shows what was written
/// to an archive scanner, if any.
struct WriteSide<W> {
    inner: W,
    error: Option<io::Error>,
    archive: Option<ArchiveScanner>,
}

impl<W: Write> Write for WriteSide<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf).inspect_err(|e| {
            self.error
                .get_or_insert_with(|| io::Error::new(e.kind(), e.to_string()));
        })?;
        if let Some(archive) = &mut self.archive {
            archive.feed(&buf[..written]);
        }
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().inspect_err(|e| {
            self.error
                .get_or_insert_with(|| io::Error::new(e.kind(), e.to_string()));
        })
    }
}

/// Passes writes through while hashing and counting them.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W> HashingWriter<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Passes reads through while hashing them and counting them into a shared counter; fails
/// once `aborted` is set. Remembers the first read that failed (other than an interrupted
/// one, which is retried), so a caller can tell a failed read from what a decoder made of it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    counter: Arc<AtomicU64>,
    aborted: Arc<AtomicBool>,
    error: Option<io::Error>,
}

impl<R> HashingReader<R> {
    fn new(inner: R, counter: Arc<AtomicU64>, aborted: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            counter,
            aborted,
            error: None,
        }
    }

    /// Remembers `error` unless an earlier one is already remembered, and returns a copy.
    fn failed(&mut self, error: io::Error) -> io::Error {
        let copy = io::Error::new(error.kind(), error.to_string());
        self.error.get_or_insert(error);
        copy
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.aborted.load(Ordering::Relaxed) {
            return Err(self.failed(io::Error::other("aborted")));
        }
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => return Err(self.failed(e)),
        };
        self.hasher.update(&buf[..n]);
        self.counter.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a file the tests read back, as a repository's sink would.
    struct FileSink(File);

    impl Write for FileSink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.write(buf)
        }

        fn flush(&mut self) -> io::Result<()> {
            self.0.flush()
        }
    }

    impl Sink for FileSink {
        fn finish(self: Box<Self>) -> io::Result<()> {
            self.0.sync_all()
        }
    }

    /// Compresses `data` into a new file at `path`, sealed with `seal`.
    async fn store(data: &[u8], path: &Path, seal: Option<Key>) -> AgentResult<StoredFile> {
        let file = File::create_new(path).map_err(AgentError::io("create"))?;
        let dest = Destination {
            sink: Box::new(FileSink(file)),
            seal,
            location: path.display().to_string(),
        };
        compress_to(data, dest, Arc::default()).await
    }

    /// The file at `path` to read back, opened with `key`.
    fn reading(path: &Path, key: Option<Key>) -> Stored {
        Stored {
            source: Box::new(File::open(path).expect("open")),
            key,
            location: path.display().to_string(),
        }
    }

    fn sample() -> Vec<u8> {
        // Several chunks, partly compressible, so multi-chunk and multi-frame paths run.
        (0..3 * CHUNK_BYTES + 12345)
            .map(|i| ((i / 7) % 251) as u8 ^ (i % 3) as u8)
            .collect()
    }

    #[tokio::test]
    async fn round_trip_hashes_the_stored_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = sample();
        let stored_path = dir.path().join("dump.zst");
        let counter = Arc::new(AtomicU64::new(0));
        let file = File::create_new(&stored_path).expect("create");
        let dest = Destination {
            sink: Box::new(FileSink(file)),
            seal: None,
            location: "dump.zst".to_owned(),
        };
        let stored = compress_to(&data[..], dest, counter.clone())
            .await
            .expect("compress");
        let on_disk = std::fs::read(&stored_path).expect("read");
        assert_eq!(stored.raw_bytes, data.len() as u64);
        assert_eq!(counter.load(Ordering::Relaxed), data.len() as u64);
        assert_eq!(stored.size_bytes, on_disk.len() as u64);
        assert_eq!(stored.sha256, hex::encode(Sha256::digest(&on_disk)));
        assert!(stored.size_bytes < stored.raw_bytes);

        let out_path = dir.path().join("restored");
        let read_counter = Arc::new(AtomicU64::new(0));
        let back = decompress_to_file(reading(&stored_path, None), &out_path, read_counter.clone())
            .await
            .expect("decompress");
        assert_eq!(back.sha256, stored.sha256);
        assert_eq!(back.decoded.expect("decodes"), data.len() as u64);
        assert_eq!(read_counter.load(Ordering::Relaxed), stored.size_bytes);
        assert_eq!(std::fs::read(&out_path).expect("read"), data);
    }

    #[tokio::test]
    async fn a_full_disk_is_a_write_error_not_a_corrupt_artifact() {
        let dir = tempfile::tempdir().expect("tempdir");
        let stored_path = dir.path().join("dump.zst");
        let stored = store(&sample(), &stored_path, None)
            .await
            .expect("compress");
        // Every write to /dev/full fails with ENOSPC.
        let full = File::options()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full");
        let (read, write_error) = read_decompressed(
            reading(&stored_path, None),
            full,
            true,
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        )
        .expect("the input reads");
        let error = write_error.expect("a write error");
        assert_eq!(error.kind(), io::ErrorKind::StorageFull, "{error}");
        // The rest of the file was still hashed.
        assert_eq!(read.sha256, stored.sha256);
    }

    #[tokio::test]
    async fn a_pipe_gets_the_whole_stream_or_its_reader_may_stop_early() {
        use std::os::fd::OwnedFd;
        use std::process::{Command, Stdio};
        let dir = tempfile::tempdir().expect("tempdir");
        let stored_path = dir.path().join("dump.zst");
        let data = sample();
        let stored = store(&data, &stored_path, None).await.expect("compress");
        // `cat` reads everything; `head` stops after 100 bytes and exits.
        for (program, args, whole) in [("cat", vec![], true), ("head", vec!["-c", "100"], false)] {
            let out = dir.path().join(format!("{program}.out"));
            let mut child = Command::new(program)
                .args(&args)
                .stdin(Stdio::piped())
                .stdout(File::create(&out).expect("create"))
                .spawn()
                .expect("spawn");
            let pipe = OwnedFd::from(child.stdin.take().expect("stdin"));
            let (read, write_error) =
                decompress_to_pipe(reading(&stored_path, None), pipe, Arc::default())
                    .await
                    .expect("the input reads");
            assert!(child.wait().expect("wait").success());
            assert_eq!(read.sha256, stored.sha256, "{program}");
            let got = std::fs::read(&out).expect("read");
            if whole {
                assert!(write_error.is_none(), "{write_error:?}");
                assert_eq!(read.decoded.expect("decodes"), data.len() as u64);
                assert_eq!(got, data);
            } else {
                let error = write_error.expect("a broken pipe");
                assert_eq!(error.kind(), io::ErrorKind::BrokenPipe, "{error}");
                assert_eq!(got, data[..100]);
            }
        }
    }

    /// Yields `data`, but fails with EIO once `fail_at` bytes were read.
    struct FailingRead {
        data: io::Cursor<Vec<u8>>,
        fail_at: u64,
    }

    impl Read for FailingRead {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let left = self.fail_at.saturating_sub(self.data.position());
            if left == 0 {
                return Err(io::Error::from_raw_os_error(EIO));
            }
            let limit = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            Read::read(&mut self.data, &mut buf[..limit])
        }
    }

    /// EIO, the same on every Unix.
    const EIO: i32 = 5;

    #[tokio::test]
    async fn a_failed_read_is_an_io_error_not_a_corrupt_artifact() {
        let dir = tempfile::tempdir().expect("tempdir");
        let stored_path = dir.path().join("dump.zst");
        store(&sample(), &stored_path, None)
            .await
            .expect("compress");
        let bytes = std::fs::read(&stored_path).expect("read");
        // The read fails in the middle of a frame, and at the very start.
        for fail_at in [bytes.len() as u64 / 2, 0] {
            let input = FailingRead {
                data: io::Cursor::new(bytes.clone()),
                fail_at,
            };
            let dest = dir.path().join(format!("out-{fail_at}"));
            let output = File::create_new(&dest).expect("create");
            let src = Stored {
                source: Box::new(input),
                key: None,
                location: stored_path.display().to_string(),
            };
            let result = read_decompressed(
                src,
                output,
                true,
                Arc::default(),
                Arc::new(AtomicBool::new(false)),
            );
            match result {
                Err(error @ AgentError::Io { .. }) => {
                    assert!(!error.proves_artifact_corrupt());
                    let AgentError::Io { context, source } = &error else {
                        unreachable!()
                    };
                    assert!(context.starts_with("cannot read "), "{error}");
                    assert_eq!(source.raw_os_error(), Some(EIO), "{error}");
                }
                Err(other) => panic!("expected an I/O error, got {other}"),
                Ok(read) => panic!("expected an I/O error, got {read:?}"),
            }
        }
    }

    #[tokio::test]
    async fn damaged_file_changes_the_hash_and_fails_to_decode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let stored_path = dir.path().join("dump.zst");
        let stored = store(&sample(), &stored_path, None)
            .await
            .expect("compress");
        let mut bytes = std::fs::read(&stored_path).expect("read");
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        bytes.truncate(bytes.len() - 10);
        std::fs::write(&stored_path, &bytes).expect("write");

        let back = decompress_to_file(
            reading(&stored_path, None),
            &dir.path().join("out"),
            Arc::default(),
        )
        .await
        .expect("files open");
        assert_ne!(back.sha256, stored.sha256);
        assert_eq!(back.sha256, hex::encode(Sha256::digest(&bytes)));
        assert!(back.decoded.is_err());
    }

    #[tokio::test]
    async fn sha256_of_hashes_every_byte() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("data");
        let data = sample();
        std::fs::write(&path, &data).expect("write");
        let counter = Arc::new(AtomicU64::new(0));
        let hashed = sha256_of(reading(&path, None), counter.clone())
            .await
            .expect("hash");
        assert_eq!(hashed.sha256, hex::encode(Sha256::digest(&data)));
        assert_eq!(hashed.opens, Ok(()));
        assert_eq!(counter.load(Ordering::Relaxed), data.len() as u64);
    }

    #[tokio::test]
    async fn sealed_files_round_trip_and_only_their_key_opens_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key_file = |name: &str| {
            let path = dir.path().join(name);
            crate::sealing::generate(&path).expect("key");
            crate::sealing::Keys::load(&[path])
                .expect("load")
                .sealing()
                .cloned()
                .expect("key")
        };
        let (key, other) = (key_file("k1"), key_file("k2"));
        let data = sample();
        let stored_path = dir.path().join("dump.zst.age");
        let written = store(&data, &stored_path, Some(key.clone()))
            .await
            .expect("seal");
        let on_disk = std::fs::read(&stored_path).expect("read");
        assert_eq!(written.sha256, hex::encode(Sha256::digest(&on_disk)));
        assert_eq!(written.size_bytes, on_disk.len() as u64);
        assert!(on_disk.starts_with(b"age-encryption.org/v1\n"));

        let hashed = sha256_of(reading(&stored_path, Some(key.clone())), Arc::default())
            .await
            .expect("hash");
        assert_eq!(
            (hashed.sha256.as_str(), hashed.opens),
            (written.sha256.as_str(), Ok(()))
        );
        let refused = sha256_of(reading(&stored_path, Some(other.clone())), Arc::default())
            .await
            .expect("hash");
        assert_eq!(refused.sha256, written.sha256, "hashed whole all the same");
        assert!(refused.opens.is_err());

        let out = dir.path().join("out");
        let back = decompress_to_file(reading(&stored_path, Some(key)), &out, Arc::default())
            .await
            .expect("decompress");
        assert_eq!(back.sha256, written.sha256);
        assert_eq!(back.decoded.expect("decodes"), data.len() as u64);
        assert_eq!(std::fs::read(&out).expect("read"), data);

        let wrong = dir.path().join("wrong");
        let back = decompress_to_file(reading(&stored_path, Some(other)), &wrong, Arc::default())
            .await
            .expect("the file reads");
        assert_eq!(back.sha256, written.sha256, "hashed whole all the same");
        assert!(back.decoded.is_err(), "another key does not open it");
    }

    #[tokio::test]
    async fn existing_destination_is_not_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("taken");
        std::fs::write(&path, b"keep").expect("write");
        let err = store(b"data", &path, None).await;
        assert!(err.is_err());
        assert_eq!(std::fs::read(&path).expect("read"), b"keep");
    }
}
