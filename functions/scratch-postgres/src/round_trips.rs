//! Counts round trips between a client and a server: a TCP proxy that counts the client's
//! bursts. A burst is data from the client after data from the server (or the first data of
//! a connection): the client could not send it before it had read the server's answer, so
//! each burst costs one round trip. TLS passes through untouched.
//!
//! For fault injection it can also cut every connection at a given burst, before forwarding
//! it (the request is lost) or right after (the answer is lost), as a dying network or a
//! killed client would. And it can lose the reply to one armed burst
//! ([`RoundTripCounter::lose_the_reply_to_burst`]): the burst reaches the server, which
//! answers it in full (a COMMIT in it commits), and then the client's connection is closed
//! without the answer, as a network that fails at that moment would.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NOBODY: u8 = 0;
const CLIENT: u8 = 1;
const SERVER: u8 = 2;

/// A proxy on a free loopback port in front of `upstream`. Its threads end with the process
/// (or when their connections close).
pub struct RoundTripCounter {
    port: u16,
    bursts: Arc<AtomicU64>,
    lost: Arc<LostReply>,
}

/// The burst (numbered over all connections, from 1) whose reply is lost, 0 for none, and how
/// many replies were lost so far.
#[derive(Default)]
struct LostReply {
    at_burst: AtomicU64,
    count: AtomicU64,
}

/// How long the server must stay silent after a burst whose reply is lost before the client's
/// connection is closed: by then it has answered everything it was sent.
const SERVER_DONE_AFTER: Duration = Duration::from_millis(300);

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
        let lost = Arc::new(LostReply::default());
        let (counter, lost_reply) = (bursts.clone(), lost.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(upstream) else { continue };
                relay(client, server, counter.clone(), lost_reply.clone(), cut);
            }
        });
        Ok(RoundTripCounter { port, bursts, lost })
    }

    /// Arms the proxy: the `bursts_from_now`-th client burst from now on (1 for the next) is
    /// forwarded, the server's reply to it is dropped, and once the server has been silent for
    /// [`SERVER_DONE_AFTER`] the client's connection is closed.
    pub fn lose_the_reply_to_burst(&self, bursts_from_now: u64) {
        self.lost.at_burst.store(self.round_trips() + bursts_from_now, Ordering::SeqCst);
    }

    /// Replies lost so far by [`RoundTripCounter::lose_the_reply_to_burst`].
    pub fn replies_lost(&self) -> u64 {
        self.lost.count.load(Ordering::SeqCst)
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

fn relay(client: TcpStream, server: TcpStream, bursts: Arc<AtomicU64>, lost: Arc<LostReply>, cut: Option<Cut>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let shared = Arc::new(Shared {
        last_sender: AtomicU8::new(NOBODY),
        dropping_replies: AtomicBool::new(false),
        last_server_data: Mutex::new(Instant::now()),
    });
    let (Ok(client_out), Ok(server_out)) = (client.try_clone(), server.try_clone()) else { return };
    let upstream_shared = shared.clone();
    let counting = Counting { total: bursts, this_connection: 0, cut, lost };
    std::thread::spawn(move || pump(client, server_out, CLIENT, &upstream_shared, Some(counting)));
    std::thread::spawn(move || pump(server, client_out, SERVER, &shared, None));
}

/// What the two directions of one connection share.
struct Shared {
    last_sender: AtomicU8,
    /// Set at the burst whose reply is lost: the server's data goes nowhere from then on.
    dropping_replies: AtomicBool,
    last_server_data: Mutex<Instant>,
}

/// The client side's bursts: all connections', this connection's, and where to cut it.
struct Counting {
    total: Arc<AtomicU64>,
    this_connection: u64,
    cut: Option<Cut>,
    lost: Arc<LostReply>,
}

fn pump(mut from: TcpStream, mut to: TcpStream, me: u8, shared: &Arc<Shared>, mut counting: Option<Counting>) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if me == SERVER {
            *shared.last_server_data.lock().expect("not poisoned") = Instant::now();
            if shared.dropping_replies.load(Ordering::SeqCst) {
                continue;
            }
        }
        let mut cut_after_forwarding = false;
        if shared.last_sender.swap(me, Ordering::SeqCst) != me {
            if let Some(counting) = counting.as_mut() {
                let burst = counting.total.fetch_add(1, Ordering::SeqCst) + 1;
                counting.this_connection += 1;
                if let Some(cut) = counting.cut.filter(|cut| cut.at_burst == counting.this_connection) {
                    if !cut.after_forwarding {
                        let _ = from.shutdown(Shutdown::Both);
                        let _ = to.shutdown(Shutdown::Both);
                        return;
                    }
                    cut_after_forwarding = true;
                }
                if counting.lost.at_burst.load(Ordering::SeqCst) == burst {
                    shared.dropping_replies.store(true, Ordering::SeqCst);
                    *shared.last_server_data.lock().expect("not poisoned") = Instant::now();
                    let (Ok(client), Ok(server)) = (from.try_clone(), to.try_clone()) else { return };
                    let (shared, lost) = (shared.clone(), counting.lost.clone());
                    std::thread::spawn(move || close_once_the_server_is_done(client, server, &shared, &lost));
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

/// Waits until the server has been silent for [`SERVER_DONE_AFTER`] (it has answered the
/// burst whose reply is dropped), then closes both sides and counts the lost reply.
fn close_once_the_server_is_done(client: TcpStream, server: TcpStream, shared: &Shared, lost: &LostReply) {
    while shared.last_server_data.lock().expect("not poisoned").elapsed() < SERVER_DONE_AFTER {
        std::thread::sleep(Duration::from_millis(20));
    }
    lost.count.fetch_add(1, Ordering::SeqCst);
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
}
