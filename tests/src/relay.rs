//! A TCP relay between a component and a server it calls (its S3 backend, say) that can hold
//! the bytes going to the server: a test freezes an upload part-way, acts while it hangs, then
//! lets it go on. Bytes coming back from the server always flow.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Bytes moved per read toward the server.
const BUFFER: usize = 64 * 1024;

/// Shared by every connection of one relay.
#[derive(Debug)]
struct Gate {
    /// Bytes relayed toward the server so far, over all connections.
    forwarded: AtomicU64,
    /// How many bytes toward the server may pass in total (`u64::MAX`: no limit).
    allowed: watch::Sender<u64>,
}

/// A running relay; it stops (closing every connection) when dropped.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    gate: Arc<Gate>,
    accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Listens on a free loopback port and relays every connection to `target`.
    pub async fn start(target: SocketAddr) -> Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the relay")?;
        let addr = listener.local_addr()?;
        let gate = Arc::new(Gate {
            forwarded: AtomicU64::new(0),
            allowed: watch::Sender::new(u64::MAX),
        });
        let accept = tokio::spawn(accept_loop(listener, target, gate.clone()));
        Ok(Relay { addr, gate, accept })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Bytes relayed toward the server so far.
    pub fn forwarded(&self) -> u64 {
        self.gate.forwarded.load(Ordering::SeqCst)
    }

    /// Lets `more` further bytes through toward the server, then holds the rest.
    pub fn hold_after(&self, more: u64) {
        self.gate
            .allowed
            .send_replace(self.forwarded().saturating_add(more));
    }

    /// Lets everything through again.
    pub fn release(&self) {
        self.gate.allowed.send_replace(u64::MAX);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // The accept loop owns the connections' tasks; aborting it drops them all.
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, gate: Arc<Gate>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                connections.spawn(relay(client, target, gate.clone()));
            }
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn relay(client: TcpStream, target: SocketAddr, gate: Arc<Gate>) {
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let toward_server = async {
        let mut allowed = gate.allowed.subscribe();
        let mut buffer = vec![0u8; BUFFER];
        loop {
            let budget = loop {
                let limit = *allowed.borrow_and_update();
                let left = limit.saturating_sub(gate.forwarded.load(Ordering::SeqCst));
                if left > 0 {
                    break left;
                }
                if allowed.changed().await.is_err() {
                    return;
                }
            };
            let want = usize::try_from(budget).map_or(BUFFER, |b| b.min(BUFFER));
            let n = match client_read.read(&mut buffer[..want]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if server_write.write_all(&buffer[..n]).await.is_err() {
                break;
            }
            gate.forwarded.fetch_add(n as u64, Ordering::SeqCst);
        }
        let _ = server_write.shutdown().await;
    };
    let toward_client = async {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    };
    tokio::join!(toward_server, toward_client);
}
