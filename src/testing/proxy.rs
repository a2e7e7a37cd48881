//! A loopback TCP proxy between a node and etcd that cuts, blackholes or delays the traffic on demand.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
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
        let acceptor = tokio::spawn(accept(listener, target.to_owned(), watching));
        Ok(Self {
            address,
            mode,
            acceptor,
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

    /// Back to plain forwarding: new connections are forwarded, and
    /// blackholed ones resume (connections a cut dropped stay dropped).
    pub fn heal(&self) {
        self.mode.send_replace(ProxyMode::Forward);
    }

    /// The current mode.
    pub fn mode(&self) -> ProxyMode {
        *self.mode.borrow()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Aborting the acceptor drops the listener and its JoinSet, which
        // aborts every connection task; dropping `mode` would end them too.
        self.acceptor.abort();
    }
}

/// Accepts connections until aborted; each one is relayed by a task of its own.
async fn accept(listener: TcpListener, target: String, mode: watch::Receiver<ProxyMode>) {
    let mut connections = JoinSet::new();
    loop {
        // Reap finished connections, so a long test does not pile them up.
        while connections.try_join_next().is_some() {}
        let inbound = match listener.accept().await {
            Ok((inbound, _)) => inbound,
            Err(error) => {
                // Such as too many open files: wait for connections to close
                // rather than spin on the error.
                tracing::warn!(%error, "the fault proxy could not accept a connection");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if *mode.borrow() == ProxyMode::Cut {
            // Accepted, then closed at once: the client sees a refusal now
            // rather than a connect that hangs.
            drop(inbound);
            continue;
        }
        connections.spawn(relay(inbound, target.clone(), mode.clone()));
    }
}

/// Relays one connection to `target` until both directions end, either side
/// fails, or the proxy is cut or dropped.
async fn relay(inbound: TcpStream, target: String, mode: watch::Receiver<ProxyMode>) {
    let mut cut = mode.clone();
    let relaying = async move {
        let outbound = TcpStream::connect(target.as_str()).await?;
        // Small writes are the norm for gRPC; Nagle would add latency the
        // test did not ask for.
        inbound.set_nodelay(true)?;
        outbound.set_nodelay(true)?;
        let (from_client, to_client) = inbound.into_split();
        let (from_server, to_server) = outbound.into_split();
        tokio::try_join!(
            pump(from_client, to_server, mode.clone()),
            pump(from_server, to_client, mode),
        )
    };
    tokio::select! {
        _ = relaying => {}
        // Also when the proxy is dropped (the sender is gone). Returning
        // drops both streams, which closes them.
        _ = cut.wait_for(|mode| *mode == ProxyMode::Cut) => {}
    }
}

/// Copies one direction: a reader that stamps each chunk with when it may
/// be written, and a writer that holds it until then. Separate, so a delay
/// adds latency without dividing throughput by it.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mode: watch::Receiver<ProxyMode>,
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
        }
        to.shutdown().await
    };
    tokio::try_join!(reader, writer).map(|_| ())
}
