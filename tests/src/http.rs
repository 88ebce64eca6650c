//! Plain HTTP/1.1 over loopback for the coordinator's HTTP port: a GET client (for `/metrics`
//! and `/healthz`) and a webhook receiver that records every JSON document POSTed to it.
//! Both are std-only and strict enough to notice a malformed exchange.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

/// One HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names in lowercase, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// Returns the first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP request or response head and body, read from a stream.
struct Message {
    start_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Reads one HTTP/1.1 message: the start line, headers, and a body framed by
/// `Content-Length` or chunked transfer encoding (or, for a response without either, by the
/// end of the stream). Returns `Ok(None)` when the stream ends before a start line.
fn read_message(
    reader: &mut BufReader<TcpStream>,
    body_until_eof: bool,
) -> std::io::Result<Option<Message>> {
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut start_line = String::new();
    if reader.read_line(&mut start_line)? == 0 {
        return Ok(None);
    }
    let start_line = start_line.trim_end_matches(['\r', '\n']).to_owned();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(invalid(format!(
                "stream ended inside the headers after {start_line:?}"
            )));
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid(format!("header line without a colon: {line:?}")))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size_line = String::new();
            reader.read_line(&mut size_line)?;
            let size_text = size_line.trim().split(';').next().unwrap_or_default();
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|e| invalid(format!("chunk size {size_text:?}: {e}")))?;
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let mut chunk = vec![0; size];
            reader.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk);
            let mut crlf = [0; 2];
            reader.read_exact(&mut crlf)?;
        }
    } else if let Some(length) = header("content-length") {
        let length: usize = length
            .parse()
            .map_err(|e| invalid(format!("content-length {length:?}: {e}")))?;
        body.resize(length, 0);
        reader.read_exact(&mut body)?;
    } else if body_until_eof {
        reader.read_to_end(&mut body)?;
    }
    Ok(Some(Message {
        start_line,
        headers,
        body,
    }))
}

/// `GET url` (`http://HOST:PORT/PATH` only), with a timeout; `Err` says why there is no
/// response (e.g. nothing listens yet).
pub fn http_get(url: &str, timeout: Duration) -> Result<HttpResponse, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("not an http:// URL: {url}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr: SocketAddr = authority
        .parse()
        .map_err(|e| format!("{authority:?} is not IP:PORT: {e}"))?;
    let stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("set timeouts: {e}"))?;
    let mut writer = stream
        .try_clone()
        .map_err(|e| format!("clone stream: {e}"))?;
    write!(
        writer,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send request to {url}: {e}"))?;
    let mut reader = BufReader::new(stream);
    let message = read_message(&mut reader, true)
        .map_err(|e| format!("read response of {url}: {e}"))?
        .ok_or_else(|| format!("{url}: connection closed without a response"))?;
    let mut parts = message.start_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!(
            "{url}: not an HTTP/1 status line: {:?}",
            message.start_line
        ));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("{url}: bad status line {:?}", message.start_line))?;
    let body = String::from_utf8(message.body).map_err(|e| format!("{url}: body: {e}"))?;
    Ok(HttpResponse {
        status,
        headers: message.headers,
        body,
    })
}

/// Polls `GET url` until it answers (any status), for a server that is still starting.
pub fn http_get_when_up(url: &str, timeout: Duration) -> HttpResponse {
    let deadline = Instant::now() + timeout;
    loop {
        match http_get(url, Duration::from_secs(10)) {
            Ok(response) => return response,
            Err(e) if Instant::now() >= deadline => {
                panic!("GET {url} got no response within {timeout:?}: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// A webhook request as received.
#[derive(Debug, Clone)]
pub struct ReceivedHook {
    pub method: String,
    pub path: String,
    pub content_type: Option<String>,
    /// The body parsed as JSON, or `Value::Null` with `raw` holding what came.
    pub json: Value,
    pub raw: String,
    pub received: Instant,
}

/// An HTTP server on `127.0.0.1:0` that answers `200 OK` to every request and records it.
pub struct WebhookReceiver {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<ReceivedHook>>>,
    errors: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl WebhookReceiver {
    /// Starts the receiver in a background thread.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind webhook receiver");
        let addr = listener.local_addr().expect("webhook receiver address");
        listener
            .set_nonblocking(true)
            .expect("non-blocking webhook listener");
        let received = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (received, errors, stop) = (received.clone(), errors.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let (received, errors) = (received.clone(), errors.clone());
                            // One thread per connection: a keep-alive connection must not
                            // block the next one.
                            std::thread::spawn(move || {
                                // An idle keep-alive connection that times out or is reset
                                // is no malformed request.
                                if let Err(e) = serve_connection(stream, &received)
                                    && !matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock
                                            | std::io::ErrorKind::TimedOut
                                            | std::io::ErrorKind::ConnectionReset
                                    )
                                {
                                    errors
                                        .lock()
                                        .unwrap_or_else(|e| e.into_inner())
                                        .push(e.to_string());
                                }
                            });
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(e) => {
                            errors
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(format!("accept: {e}"));
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                }
            })
        };
        Self {
            addr,
            received,
            errors,
            stop,
            thread: Some(thread),
        }
    }

    /// The URL to configure as a webhook.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<ReceivedHook> {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Problems with requests that could not be read (malformed HTTP).
    pub fn errors(&self) -> Vec<String> {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The JSON documents received so far whose `event` is `event`.
    pub fn events(&self, event: &str) -> Vec<ReceivedHook> {
        self.received()
            .into_iter()
            .filter(|h| h.json["event"] == event)
            .collect()
    }

    /// A summary of everything received, for panic messages.
    pub fn describe(&self) -> String {
        let hooks: Vec<String> = self
            .received()
            .iter()
            .map(|h| format!("{} {}: {}", h.method, h.path, h.raw))
            .collect();
        format!(
            "webhook requests received ({}):\n{}\nerrors: {:?}",
            hooks.len(),
            hooks.join("\n"),
            self.errors()
        )
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve_connection(stream: TcpStream, received: &Mutex<Vec<ReceivedHook>>) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    while let Some(message) = read_message(&mut reader, false)? {
        let mut parts = message.start_line.split(' ');
        let method = parts.next().unwrap_or_default().to_owned();
        let path = parts.next().unwrap_or_default().to_owned();
        let raw = String::from_utf8_lossy(&message.body).into_owned();
        let content_type = message
            .headers
            .iter()
            .find(|(k, _)| k == "content-type")
            .map(|(_, v)| v.clone());
        let closing = message
            .headers
            .iter()
            .any(|(k, v)| k == "connection" && v.eq_ignore_ascii_case("close"));
        received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(ReceivedHook {
                method,
                path,
                content_type,
                json: serde_json::from_str(&raw).unwrap_or(Value::Null),
                raw,
                received: Instant::now(),
            });
        writer.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")?;
        writer.flush()?;
        if closing {
            break;
        }
    }
    Ok(())
}
