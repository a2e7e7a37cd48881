//! A loopback TCP proxy between a node and etcd (or a witness) that cuts, blackholes, delays or rejects the traffic on demand.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::{TestingError, io};

/// What a [`FaultProxy`] does with the traffic, set with its methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Plain forwarding, both directions.
    Forward,
    /// Every connection is dropped, and new ones are closed as soon as they
    /// are accepted: a node sees etcd refuse it, and notices at once.
    Cut,
    /// Connections are accepted and kept, but nothing is forwarded in either
    /// direction: a node sees etcd hang, and notices only by its timeouts.
    Blackhole,
    /// Forwarding, each chunk held back by this long, in both directions (a
    /// request/response exchange takes at least twice the delay).
    Delay(Duration),
    /// Every connection is reset and the port is closed, so new ones are
    /// refused: a firewall's `REJECT --reject-with tcp-reset`, or an
    /// address moved to a host where nothing listens, while what is behind
    /// the proxy lives. The port opens again on the next mode.
    Reject,
}

/// A TCP proxy on a free 127.0.0.1 port in front of one etcd member, to put
/// network faults between a node (or a client) and etcd: point the node's
/// `etcd.endpoints` at [`endpoint`](Self::endpoint), then
/// [`cut`](Self::cut), [`blackhole`](Self::blackhole),
/// [`delay`](Self::delay) and [`heal`](Self::heal) it while the test runs.
///
/// It runs as tasks on the tokio runtime that started it. Dropping it closes
/// the listener and every connection.
///
/// A blackholed connection is stalled, not lost: bytes already read are held,
/// nothing more is read, and on [`heal`](Self::heal) (or a switch to
/// forwarding with a delay) it resumes where it stopped, as a TCP connection
/// does when a partition heals before either end gives up. Whether an end
/// gives up meanwhile is up to its own timeouts and keepalives, as on a real
/// network. A [`cut`](Self::cut) is final for the connections it drops.
pub struct FaultProxy {
    address: SocketAddr,
    /// The mode, shared with every connection: a watch channel is both the
    /// shared value and the wake-up, so a loop blocked on a read or a delay
    /// sees a cut at once. Dropping it ends every connection.
    mode: watch::Sender<ProxyMode>,
    /// Accepts connections and owns their tasks; aborted on drop.
    acceptor: JoinHandle<()>,
    /// Connections relayed now through which the target has answered.
    answered: Arc<AtomicUsize>,
}

/// Chunks one direction of a connection may have read but not written yet:
/// a bound, so a stalled or delayed direction pushes back on its sender.
const IN_FLIGHT_CHUNKS: usize = 64;
/// The largest chunk read at once.
const CHUNK: usize = 16 * 1024;

impl FaultProxy {
    /// Starts forwarding a free loopback port to `target` (`127.0.0.1:PORT`).
    /// Each accepted connection opens its own connection to `target`; one
    /// that cannot is closed.
    pub async fn start(target: &str) -> Result<Self, TestingError> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(io("binding the fault proxy's port"))?;
        let address = listener
            .local_addr()
            .map_err(io("reading the fault proxy's port"))?;
        let (mode, watching) = watch::channel(ProxyMode::Forward);
        let answered = Arc::new(AtomicUsize::new(0));
        let acceptor = tokio::spawn(accept(
            listener,
            target.to_owned(),
            watching,
            answered.clone(),
        ));
        Ok(Self {
            address,
            mode,
            acceptor,
            answered,
        })
    }

    /// `127.0.0.1:PORT` to put in a node's `etcd.endpoints`.
    pub fn endpoint(&self) -> String {
        self.address.to_string()
    }

    /// Drops every connection now and closes new ones as soon as they are accepted.
    pub fn cut(&self) {
        self.mode.send_replace(ProxyMode::Cut);
    }

    /// Keeps and accepts connections but forwards nothing, in either direction.
    pub fn blackhole(&self) {
        self.mode.send_replace(ProxyMode::Blackhole);
    }

    /// Forwards, holding each chunk back by `delay`, in both directions.
    pub fn delay(&self, delay: Duration) {
        self.mode.send_replace(ProxyMode::Delay(delay));
    }

    /// Resets every connection now and closes the port, so connections are
    /// refused until the next mode (see [`ProxyMode::Reject`]).
    pub fn reject(&self) {
        self.mode.send_replace(ProxyMode::Reject);
    }

    /// [`reject`](Self::reject) for `window`, then forwards again: a reset
    /// on the path, a firewall reloading its rules. Returns at once.
    pub fn reject_for(&self, window: Duration) {
        self.reject();
        let mode = self.mode.clone();
        tokio::spawn(async move {
            tokio::time::sleep(window).await;
            // Only if nothing else was asked for meanwhile.
            mode.send_if_modified(|mode| {
                let rejecting = *mode == ProxyMode::Reject;
                if rejecting {
                    *mode = ProxyMode::Forward;
                }
                rejecting
            });
        });
    }

    /// Back to plain forwarding: new connections are forwarded, and
    /// blackholed ones resume (connections a cut dropped stay dropped).
    pub fn heal(&self) {
        self.mode.send_replace(ProxyMode::Forward);
    }

    /// The current mode.
    pub fn mode(&self) -> ProxyMode {
        *self.mode.borrow()
    }

    /// How many connections the proxy relays now through which the target
    /// has answered (sent a byte): whether a peer holds a connection that
    /// what is behind the proxy accepted and spoke on, such as a death
    /// witness's greeting.
    pub fn answered_connections(&self) -> usize {
        self.answered.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Aborting the acceptor drops the listener and its JoinSet, which
        // aborts every connection task; dropping `mode` would end them too.
        self.acceptor.abort();
    }
}

/// Accepts connections until aborted; each one is relayed by a task of its
/// own. While rejecting, the port is closed, and bound again after.
async fn accept(
    listener: TcpListener,
    target: String,
    mode: watch::Receiver<ProxyMode>,
    answered: Arc<AtomicUsize>,
) {
    let mut connections = JoinSet::new();
    let mut rejecting = mode.clone();
    let mut listener = Some(listener);
    let address = listener.as_ref().and_then(|l| l.local_addr().ok());
    loop {
        // Reap finished connections, so a long test does not pile them up.
        while connections.try_join_next().is_some() {}
        let Some(open) = &listener else {
            if rejecting
                .wait_for(|mode| *mode != ProxyMode::Reject)
                .await
                .is_err()
            {
                return;
            }
            listener = match address {
                Some(address) => bind_again(address).await,
                None => return,
            };
            continue;
        };
        let inbound = tokio::select! {
            accepted = open.accept() => match accepted {
                Ok((inbound, _)) => inbound,
                Err(error) => {
                    // Such as too many open files: wait for connections to
                    // close rather than spin on the error.
                    tracing::warn!(%error, "the fault proxy could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            rejects = async { rejecting.wait_for(|mode| *mode == ProxyMode::Reject).await.is_ok() } => {
                if !rejects {
                    return;
                }
                // Closed: the kernel refuses connections to the port.
                listener = None;
                continue;
            }
        };
        if *mode.borrow() == ProxyMode::Cut {
            // Accepted, then closed at once: the client sees a refusal now
            // rather than a connect that hangs.
            drop(inbound);
            continue;
        }
        connections.spawn(relay(
            inbound,
            target.clone(),
            mode.clone(),
            answered.clone(),
        ));
    }
}

/// One answered connection in the proxy's count, until dropped.
struct Counted(Arc<AtomicUsize>);

impl Counted {
    fn new(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The proxy's port, bound again after a rejection; retried while another
/// socket holds it for a moment.
async fn bind_again(address: SocketAddr) -> Option<TcpListener> {
    for _ in 0..500 {
        match TcpListener::bind(address).await {
            Ok(listener) => return Some(listener),
            Err(error) => {
                tracing::debug!(%error, "the fault proxy could not bind {address} again yet");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    tracing::warn!("the fault proxy could not bind {address} again; it stays closed");
    None
}

/// Relays one connection to `target` until both directions end, either side
/// fails, or the proxy is cut, rejects or is dropped.
async fn relay(
    inbound: TcpStream,
    target: String,
    mode: watch::Receiver<ProxyMode>,
    answered: Arc<AtomicUsize>,
) {
    // A second handle on the client's socket, which the relay's halves do
    // not own: it keeps the socket open until a rejection has set it to
    // close with a reset.
    let Ok((inbound, keeper)) = second_handle(inbound) else {
        return;
    };
    let mut ended = mode.clone();
    let relaying = async move {
        let outbound = TcpStream::connect(target.as_str()).await?;
        // Small writes are the norm for gRPC; Nagle would add latency the
        // test did not ask for.
        inbound.set_nodelay(true)?;
        outbound.set_nodelay(true)?;
        // Split so that dropping a half does not shut the socket down: a
        // rejected connection must end with a reset, not a close first.
        let (from_client, to_client) = tokio::io::split(inbound);
        let (from_server, to_server) = outbound.into_split();
        tokio::try_join!(
            pump(from_client, to_server, mode.clone(), None),
            pump(from_server, to_client, mode, Some(answered)),
        )
    };
    tokio::select! {
        _ = relaying => {}
        // Also when the proxy is dropped (the sender is gone). Returning
        // drops both streams, which closes them.
        ending = async {
            ended.wait_for(|mode| matches!(mode, ProxyMode::Cut | ProxyMode::Reject)).await.map(|mode| *mode)
        } => {
            if matches!(ending, Ok(ProxyMode::Reject)) {
                // Closed with no lingering: the client reads a reset.
                let _ = socket2::SockRef::from(&keeper).set_linger(Some(Duration::ZERO));
            }
        }
    }
}

/// `stream`, and a second handle on its socket.
fn second_handle(stream: TcpStream) -> std::io::Result<(TcpStream, std::net::TcpStream)> {
    let stream = stream.into_std()?;
    let keeper = stream.try_clone()?;
    Ok((TcpStream::from_std(stream)?, keeper))
}

/// Copies one direction: a reader that stamps each chunk with when it may
/// be written, and a writer that holds it until then. Separate, so a delay
/// adds latency without dividing throughput by it. The connection counts
/// in `answered`, when given, from its first chunk written on.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mode: watch::Receiver<ProxyMode>,
    answered: Option<Arc<AtomicUsize>>,
) -> std::io::Result<()> {
    let (chunks, mut queued) = mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT_CHUNKS);
    let mut reader_mode = mode.clone();
    let reader = async move {
        let mut buffer = vec![0; CHUNK];
        loop {
            // Blackholed: read nothing more, so what the sender writes stays
            // in the kernel's buffers, as behind a dead link.
            if reader_mode
                .wait_for(|m| *m != ProxyMode::Blackhole)
                .await
                .is_err()
            {
                return Ok(());
            }
            let read = from.read(&mut buffer).await?;
            if read == 0 {
                // End of stream: returning drops `chunks`, and the writer
                // passes the end on once it has written the rest.
                return Ok(());
            }
            let hold = match *reader_mode.borrow() {
                ProxyMode::Delay(delay) => delay,
                _ => Duration::ZERO,
            };
            if chunks
                .send((Instant::now() + hold, buffer[..read].to_vec()))
                .await
                .is_err()
            {
                return Ok(());
            }
        }
    };
    let mut writer_mode = mode;
    let writer = async move {
        let mut counted = None;
        while let Some((due, chunk)) = queued.recv().await {
            tokio::time::sleep_until(due).await;
            // A chunk read before a blackhole began waits for the heal too.
            if writer_mode
                .wait_for(|m| *m != ProxyMode::Blackhole)
                .await
                .is_err()
            {
                return Ok(());
            }
            to.write_all(&chunk).await?;
            if counted.is_none() {
                counted = answered.clone().map(Counted::new);
            }
        }
        to.shutdown().await
    };
    tokio::try_join!(reader, writer).map(|_| ())
}
