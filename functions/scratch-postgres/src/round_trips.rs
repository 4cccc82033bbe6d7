//! Counts round trips between a client and a server: a TCP proxy that counts the client's
//! bursts. A burst is data from the client after data from the server (or the first data of
//! a connection): the client could not send it before it had read the server's answer, so
//! each burst costs one round trip. TLS passes through untouched.

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

impl RoundTripCounter {
    pub fn start(upstream: SocketAddr) -> std::io::Result<RoundTripCounter> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let bursts = Arc::new(AtomicU64::new(0));
        let counter = bursts.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(upstream) else { continue };
                relay(client, server, counter.clone());
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

fn relay(client: TcpStream, server: TcpStream, bursts: Arc<AtomicU64>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let last_sender = Arc::new(AtomicU8::new(NOBODY));
    let (Ok(client_out), Ok(server_out)) = (client.try_clone(), server.try_clone()) else { return };
    let upstream_last = last_sender.clone();
    std::thread::spawn(move || pump(client, server_out, CLIENT, &upstream_last, Some(&bursts)));
    std::thread::spawn(move || pump(server, client_out, SERVER, &last_sender, None));
}

fn pump(mut from: TcpStream, mut to: TcpStream, me: u8, last_sender: &AtomicU8, bursts: Option<&AtomicU64>) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if last_sender.swap(me, Ordering::SeqCst) != me {
            if let Some(bursts) = bursts {
                bursts.fetch_add(1, Ordering::SeqCst);
            }
        }
        if to.write_all(&buffer[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
