//! Counts round trips between a client and a server: a TCP proxy that counts the client's
//! bursts. A burst is data from the client after data from the server (or the first data of
//! a connection): the client could not send it before it had read the server's answer, so
//! each burst costs one round trip. TLS passes through untouched.
//!
//! For fault injection it can also cut every connection at a given burst, before forwarding
//! it (the request is lost) or right after (the answer is lost), as a dying network or a
//! killed client would.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

const NOBODY: u8 = 0;
const CLIENT: u8 = 1;
const SERVER: u8 = 2;

/// A proxy on a free loopback port in front of `upstream`. Its threads end with the process
/// (or when their connections close).
pub struct RoundTripCounter {
    port: u16,
    bursts: Arc<AtomicU64>,
}

/// Where a cutting proxy ends each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    /// The client burst of a connection (1 for its first) at which both sides are closed.
    pub at_burst: u64,
    /// Whether that burst reaches the server first.
    pub after_forwarding: bool,
}

impl RoundTripCounter {
    pub fn start(upstream: SocketAddr) -> std::io::Result<RoundTripCounter> {
        RoundTripCounter::start_with(upstream, None)
    }

    /// A proxy that closes every connection at `cut`.
    pub fn start_cutting(upstream: SocketAddr, cut: Cut) -> std::io::Result<RoundTripCounter> {
        RoundTripCounter::start_with(upstream, Some(cut))
    }

    fn start_with(upstream: SocketAddr, cut: Option<Cut>) -> std::io::Result<RoundTripCounter> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let bursts = Arc::new(AtomicU64::new(0));
        let counter = bursts.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(upstream) else { continue };
                relay(client, server, counter.clone(), cut);
            }
        });
        Ok(RoundTripCounter { port, bursts })
    }

    /// Where clients connect instead of the server.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Round trips so far, over all connections.
    pub fn round_trips(&self) -> u64 {
        self.bursts.load(Ordering::SeqCst)
    }
}

fn relay(client: TcpStream, server: TcpStream, bursts: Arc<AtomicU64>, cut: Option<Cut>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let last_sender = Arc::new(AtomicU8::new(NOBODY));
    let (Ok(client_out), Ok(server_out)) = (client.try_clone(), server.try_clone()) else { return };
    let upstream_last = last_sender.clone();
    let counting = Counting { total: bursts, this_connection: 0, cut };
    std::thread::spawn(move || pump(client, server_out, CLIENT, &upstream_last, Some(counting)));
    std::thread::spawn(move || pump(server, client_out, SERVER, &last_sender, None));
}

/// The client side's bursts: all connections', this connection's, and where to cut it.
struct Counting {
    total: Arc<AtomicU64>,
    this_connection: u64,
    cut: Option<Cut>,
}

fn pump(mut from: TcpStream, mut to: TcpStream, me: u8, last_sender: &AtomicU8, mut counting: Option<Counting>) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut cut_after_forwarding = false;
        if last_sender.swap(me, Ordering::SeqCst) != me {
            if let Some(counting) = counting.as_mut() {
                counting.total.fetch_add(1, Ordering::SeqCst);
                counting.this_connection += 1;
                if let Some(cut) = counting.cut.filter(|cut| cut.at_burst == counting.this_connection) {
                    if !cut.after_forwarding {
                        let _ = from.shutdown(Shutdown::Both);
                        let _ = to.shutdown(Shutdown::Both);
                        return;
                    }
                    cut_after_forwarding = true;
                }
            }
        }
        if to.write_all(&buffer[..n]).is_err() {
            break;
        }
        if cut_after_forwarding {
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
            return;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
