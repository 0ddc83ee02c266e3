//! A network link between two of our servers, for tests of what happens on bad networks: it
//! forwards TCP on 127.0.0.1, slows the answers to a set rate, and can go down (refusing and
//! cutting connections) and come back. It stands for the network, not for any component.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct Link {
    /// `http://127.0.0.1:PORT`: where to send what should cross the link.
    pub url: String,
    rate: Arc<AtomicU64>,
    down: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
}

impl Link {
    /// A link to `target` (`http://host:port`), full speed and up.
    pub async fn start(target: &str) -> Self {
        let target = target.trim_start_matches("http://").to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind link");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let rate = Arc::new(AtomicU64::new(0));
        let down = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let (r, d, g, c) = (
            rate.clone(),
            down.clone(),
            generation.clone(),
            connections.clone(),
        );
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if d.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                c.fetch_add(1, Ordering::SeqCst);
                let (target, r, d, g) = (target.clone(), r.clone(), d.clone(), g.clone());
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&target).await {
                        forward(client, server, r, d, g).await;
                    }
                });
            }
        });
        Self {
            url,
            rate,
            down,
            generation,
            connections,
        }
    }

    /// Answers flow at most `bytes_per_sec` per connection (0: unlimited).
    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.rate.store(bytes_per_sec, Ordering::SeqCst);
    }

    /// Down: new connections are refused and open ones cut. Up: back to normal.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Connections that crossed the link so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn forward(
    client: TcpStream,
    server: TcpStream,
    rate: Arc<AtomicU64>,
    down: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
) {
    let born = generation.load(Ordering::SeqCst);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = async {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
        let _ = server_write.shutdown().await;
    };
    let downstream = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            if down.load(Ordering::SeqCst) || generation.load(Ordering::SeqCst) != born {
                return;
            }
            let n =
                match tokio::time::timeout(Duration::from_millis(50), server_read.read(&mut buf))
                    .await
                {
                    Err(_) => continue,
                    Ok(Ok(0)) | Ok(Err(_)) => return,
                    Ok(Ok(n)) => n,
                };
            // Checked again after the read: nothing crosses once `set_down` has returned.
            if down.load(Ordering::SeqCst) || generation.load(Ordering::SeqCst) != born {
                return;
            }
            if client_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
            let bytes_per_sec = rate.load(Ordering::SeqCst);
            if bytes_per_sec > 0 {
                tokio::time::sleep(Duration::from_secs_f64(n as f64 / bytes_per_sec as f64)).await;
            }
        }
    };
    tokio::select! {
        () = upstream => {}
        () = downstream => {}
    }
}
