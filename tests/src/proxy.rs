//! A TCP proxy on loopback that can break a connection in the middle of a response, the
//! way a flaky network or a load balancer does: to show that a client resumes rather than
//! fails.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Forwards every connection to `target`; once armed, cuts each connection whose answers
/// pass the armed number of bytes, as many times as armed.
pub struct CuttingProxy {
    addr: SocketAddr,
    state: Arc<State>,
}

struct State {
    target: SocketAddr,
    /// Bytes from the target after which a connection is cut.
    cut_after: AtomicU64,
    /// Cuts still to make.
    armed: AtomicU64,
    cuts: AtomicU64,
    stopped: AtomicBool,
}

impl CuttingProxy {
    /// Starts forwarding from a free loopback port to `target`.
    pub fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let state = Arc::new(State {
            target,
            cut_after: AtomicU64::new(0),
            armed: AtomicU64::new(0),
            cuts: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
        });
        let accepting = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if accepting.stopped.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(client) = client {
                    let state = accepting.clone();
                    std::thread::spawn(move || forward(client, &state));
                }
            }
        });
        Self { addr, state }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// From now on, cuts each connection whose answers pass `bytes`, `times` times in all.
    pub fn arm(&self, bytes: u64, times: u64) {
        self.state.cut_after.store(bytes.max(1), Ordering::SeqCst);
        self.state.armed.store(times, Ordering::SeqCst);
    }

    /// How many connections were cut.
    pub fn cuts(&self) -> u64 {
        self.state.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.state.stopped.store(true, Ordering::SeqCst);
        // Wakes the accepting thread so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Copies both ways between `client` and the target, counting the target's bytes.
fn forward(client: TcpStream, state: &State) {
    let Ok(server) = TcpStream::connect(state.target) else {
        return;
    };
    let (Ok(client_in), Ok(server_out)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    std::thread::spawn(move || copy(client_in, server_out));
    let mut from_server = server;
    let mut to_client = client;
    let mut passed = 0u64;
    let mut buf = vec![0; 64 << 10];
    loop {
        let n = match from_server.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        passed += n as u64;
        if passed >= state.cut_after.load(Ordering::SeqCst)
            && state
                .armed
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                    left.checked_sub(1)
                })
                .is_ok()
        {
            state.cuts.fetch_add(1, Ordering::SeqCst);
            break;
        }
        if to_client.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to_client.shutdown(Shutdown::Both);
    let _ = from_server.shutdown(Shutdown::Both);
}

fn copy(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}
