//! A TCP proxy that a test can cut, for the reconnect scenario.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

/// Forwards TCP connections from a local port to a target, until it is dropped.
/// [`cut`](Self::cut) closes every open connection and refuses new ones (accepted and
/// closed at once) for a while: a network outage as the client sees it.
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// use std::time::Duration;
/// use streams_conformance::TcpProxy;
///
/// let proxy = TcpProxy::start("127.0.0.1:4222".parse().unwrap()).await?;
/// // Point the client at proxy.addr() instead of the server; then:
/// proxy.cut(Duration::from_secs(3));
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    /// Bumped by each cut: connections of an older generation close.
    generation: watch::Sender<u64>,
    refuse_until: Arc<Mutex<Option<Instant>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `target`.
    ///
    /// # Errors
    ///
    /// When no port can be bound.
    pub async fn start(target: SocketAddr) -> std::io::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), target).await
    }

    /// Listens on `listen` (port 0 for a free one) and forwards to `target`.
    ///
    /// # Errors
    ///
    /// When `listen` cannot be bound.
    pub async fn start_on(listen: SocketAddr, target: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (generation, _) = watch::channel(0u64);
        let refuse_until = Arc::new(Mutex::new(None::<Instant>));
        let accept = tokio::spawn(accept_loop(
            listener,
            target,
            generation.clone(),
            refuse_until.clone(),
        ));
        Ok(TcpProxy {
            addr,
            generation,
            refuse_until,
            accept,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every open connection now and closes new ones as they come for `outage`.
    pub fn cut(&self, outage: Duration) {
        *self.refuse_until.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Instant::now() + outage);
        self.generation.send_modify(|g| *g += 1);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.generation.send_modify(|g| *g += 1);
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    generation: watch::Sender<u64>,
    refuse_until: Arc<Mutex<Option<Instant>>>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let refusing = refuse_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|until| Instant::now() < until);
        if refusing {
            drop(client);
            continue;
        }
        let mut cut = generation.subscribe();
        let born = *cut.borrow_and_update();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(target).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (mut client, mut server) = (client, server);
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                _ = cut.wait_for(|g| *g != born) => {}
            }
            // Dropping both ends closes them.
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn echoes(addr: SocketAddr) -> bool {
        let Ok(mut s) = TcpStream::connect(addr).await else {
            return false;
        };
        if s.write_all(b"ping").await.is_err() {
            return false;
        }
        let mut buf = [0u8; 4];
        matches!(
            tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf)).await,
            Ok(Ok(_))
        ) && &buf == b"ping"
    }

    #[tokio::test]
    async fn forwards_then_cuts_then_forwards_again() {
        let proxy = TcpProxy::start(echo_server().await).await.unwrap();
        assert!(echoes(proxy.addr()).await);
        let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
        open.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        open.read_exact(&mut buf).await.unwrap();

        proxy.cut(Duration::from_millis(500));
        // The open connection is closed...
        let read = tokio::time::timeout(Duration::from_secs(2), open.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
        // ...and new ones are refused during the outage...
        assert!(!echoes(proxy.addr()).await);
        // ...and served after it.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(echoes(proxy.addr()).await);
    }
}
