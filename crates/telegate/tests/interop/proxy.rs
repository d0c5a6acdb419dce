//! A TCP proxy in front of the gateway's TLS listener that cuts every connection through it
//! once, when the clients have sent a given number of bytes: a dropped mobile link mid-burst.
//! Connections made after the cut pass untouched.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub(crate) struct CutProxy {
    pub(crate) port: u16,
    cut: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    /// Listens on a free loopback port; forwards to `upstream`; cuts (RST) every open
    /// connection once `cut_after` bytes went from clients to the gateway.
    pub(crate) fn start(rt: &tokio::runtime::Handle, upstream: SocketAddr, cut_after: u64) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("proxy port");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let cut = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (cut_tx, cut_rx) = watch::channel(false);
        let cut_tx = Arc::new(cut_tx);
        let flag = cut.clone();
        let task = rt.spawn(async move {
            let listener = TcpListener::from_std(listener).expect("tokio listener");
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                // Connections after the cut are not cut again.
                let rx = (!flag.load(SeqCst)).then(|| cut_rx.clone());
                tokio::spawn(pipe(
                    client,
                    server,
                    sent.clone(),
                    cut_after,
                    flag.clone(),
                    cut_tx.clone(),
                    rx,
                ));
            }
        });
        Self { port, cut, task }
    }

    pub(crate) fn did_cut(&self) -> bool {
        self.cut.load(SeqCst)
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(
    client: TcpStream,
    server: TcpStream,
    sent: Arc<AtomicU64>,
    cut_after: u64,
    cut: Arc<AtomicBool>,
    cut_tx: Arc<watch::Sender<bool>>,
    cut_rx: Option<watch::Receiver<bool>>,
) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let counted = cut_rx.is_some();
    let up = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => n,
            };
            if counted {
                let total = sent.fetch_add(n as u64, SeqCst) + n as u64;
                if total >= cut_after && !cut.swap(true, SeqCst) {
                    let _ = cut_tx.send(true);
                    return true;
                }
            }
            if sw.write_all(&buf[..n]).await.is_err() {
                return false;
            }
        }
    };
    let down = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if cw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let cut_signal = async {
        match cut_rx {
            Some(mut rx) => {
                let _ = rx.wait_for(|c| *c).await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    let cutting = tokio::select! {
        c = up => c,
        _ = down => false,
        _ = cut_signal => true,
    };
    if cutting {
        // A reset rather than a FIN: the link is gone, not closed.
        for s in [cr.reunite(cw), sr.reunite(sw)].into_iter().flatten() {
            let _ = s.set_zero_linger();
        }
    }
}
