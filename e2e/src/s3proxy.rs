//! A fault-injecting HTTP/1.1 proxy in front of the testbed's S3 (MinIO), for the fault trials.
//!
//! A location whose endpoint is the proxy sends every request of the operator and of its mover
//! pods (local processes on the testbed) through it. The proxy reads the request side of each
//! connection request by request (head, then `Content-Length` bytes of body; a chunked request
//! body makes the rest of that connection a plain copy) and decides per request, from its
//! [`Plan`], whether to pass it, answer it with an S3 error (503 `SlowDown` or 500
//! `InternalError`), reset the connection after S3 saw the start of the request, hold it for a
//! while before it goes on (a stall, before the head or in the middle of the body), or never
//! answer it (a hang: the client's own timeout has to end it); during an outage window every
//! request's connection is reset. Responses are copied back unchanged. It counts what it did
//! and the request body bytes it forwarded for `PUT`/`POST`: the bytes uploaded.
//!
//! The decisions come from a seeded generator, so a plan's sequence of faults per request is
//! reproducible (which request meets which fault still depends on timing).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does to requests, in per-mille of requests (decided in this order).
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Answered with 503 `SlowDown` or 500 `InternalError` (half each) without reaching S3.
    pub error_per_mille: u32,
    /// The head (and what came of the body) reaches S3, then the client's connection is reset.
    pub reset_per_mille: u32,
    /// Held for a time in `stall` (before the head, or after half of the body), then passed.
    pub stall_per_mille: u32,
    /// Shortest and longest stall.
    pub stall: (Duration, Duration),
    /// Never answered: held until the client gives up and closes the connection.
    pub hang_per_mille: u32,
    /// Every request between these instants has its connection reset (S3 unreachable).
    pub outage: Option<(Instant, Instant)>,
}

impl Plan {
    /// No faults: every request passes (the proxy only counts).
    pub fn clean() -> Self {
        Self::default()
    }
}

/// What the proxy saw and did since the last [`FaultProxy::reset_counts`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub errors: u64,
    pub resets: u64,
    pub stalls: u64,
    pub hangs: u64,
    pub outage: u64,
    /// Request body bytes of `PUT`/`POST` requests forwarded to S3 (the bytes uploaded,
    /// including those of requests that were cut off).
    pub uploaded: u64,
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests: {} errors, {} resets, {} stalls, {} hangs, {} in outage; {:.1} MiB uploaded",
            self.requests,
            self.errors,
            self.resets,
            self.stalls,
            self.hangs,
            self.outage,
            self.uploaded as f64 / f64::from(1u32 << 20)
        )
    }
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    errors: AtomicU64,
    resets: AtomicU64,
    stalls: AtomicU64,
    hangs: AtomicU64,
    outage: AtomicU64,
    uploaded: AtomicU64,
}

struct Shared {
    upstream: SocketAddr,
    plan: Mutex<Plan>,
    rng: Mutex<u64>,
    counts: Counters,
}

/// What happens to one request.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    Pass,
    Error { slow_down: bool },
    Reset,
    Stall { time: Duration, mid_body: bool },
    Hang,
    Outage,
}

/// SplitMix64: a small seeded generator (no dependency; good enough for fault decisions).
pub fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Shared {
    fn decide(&self) -> Fault {
        let plan = self.plan.lock().expect("plan").clone();
        if let Some((from, to)) = plan.outage {
            let now = Instant::now();
            if now >= from && now < to {
                return Fault::Outage;
            }
        }
        let (roll, extra) = {
            let mut r = self.rng.lock().expect("rng");
            (splitmix(&mut r) % 1000, splitmix(&mut r))
        };
        let roll = roll as u32;
        let mut edge = plan.error_per_mille;
        if roll < edge {
            return Fault::Error {
                slow_down: extra & 1 == 0,
            };
        }
        edge += plan.reset_per_mille;
        if roll < edge {
            return Fault::Reset;
        }
        edge += plan.stall_per_mille;
        if roll < edge {
            let (lo, hi) = plan.stall;
            let span = hi.saturating_sub(lo).as_millis() as u64;
            let time = lo + Duration::from_millis(if span == 0 { 0 } else { extra % span });
            return Fault::Stall {
                time,
                mid_body: extra & (1 << 40) != 0,
            };
        }
        edge += plan.hang_per_mille;
        if roll < edge {
            return Fault::Hang;
        }
        Fault::Pass
    }
}

/// The proxy, listening on 127.0.0.1 until dropped.
pub struct FaultProxy {
    pub port: u16,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (`http://host:port` of S3) with a clean plan; `seed` seeds
    /// its fault decisions.
    pub async fn start(upstream: &str, seed: u64) -> Self {
        let hostport = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let upstream: SocketAddr = tokio::net::lookup_host(&hostport)
            .await
            .expect("resolve S3 endpoint")
            .next()
            .expect("an S3 address");
        let l = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fault proxy");
        let port = l.local_addr().expect("proxy address").port();
        let shared = Arc::new(Shared {
            upstream,
            plan: Mutex::new(Plan::clean()),
            rng: Mutex::new(seed),
            counts: Counters::default(),
        });
        let sh = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = l.accept().await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                tokio::spawn(serve(client, sh.clone()));
            }
        });
        Self { port, shared, task }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Replaces the plan (connections already open follow it from their next request).
    pub fn set_plan(&self, plan: Plan) {
        *self.shared.plan.lock().expect("plan") = plan;
    }

    /// Sets the outage window of the current plan.
    pub fn set_outage(&self, from: Instant, to: Instant) {
        self.shared.plan.lock().expect("plan").outage = Some((from, to));
    }

    /// What the proxy did so far.
    pub fn counts(&self) -> Counts {
        let c = &self.shared.counts;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            requests: g(&c.requests),
            errors: g(&c.errors),
            resets: g(&c.resets),
            stalls: g(&c.stalls),
            hangs: g(&c.hangs),
            outage: g(&c.outage),
            uploaded: g(&c.uploaded),
        }
    }

    /// Sets every count back to zero.
    pub fn reset_counts(&self) {
        let c = &self.shared.counts;
        for a in [
            &c.requests,
            &c.errors,
            &c.resets,
            &c.stalls,
            &c.hangs,
            &c.outage,
            &c.uploaded,
        ] {
            a.store(0, Ordering::Relaxed);
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where the parser of the client's bytes is.
enum Side {
    /// Reading a request head.
    Head(Vec<u8>),
    /// Forwarding `left` more body bytes; `stall_at`: hold when `left` drops to this.
    Body {
        left: u64,
        upload: bool,
        stall_at: Option<(u64, Duration)>,
    },
    /// A chunked request body: everything from here on is copied as is.
    Blind,
}

/// Ends of one connection.
enum End {
    /// Close normally.
    Close,
    /// Close with a reset (zero linger).
    Reset,
}

async fn serve(mut client: TcpStream, sh: Arc<Shared>) {
    let end = relay(&mut client, &sh).await;
    if matches!(end, End::Reset) {
        #[allow(deprecated)] // a zero linger makes the close an RST, which is the point
        let _ = client.set_linger(Some(Duration::ZERO));
    }
}

/// Head of an error response that closes the connection.
fn error_response(slow_down: bool) -> Vec<u8> {
    let (status, code) = if slow_down {
        ("503 Slow Down", "SlowDown")
    } else {
        ("500 Internal Server Error", "InternalError")
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected by the fault proxy</Message></Error>"
    );
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Method, body length and whether the body is chunked, from a request head.
fn parse_head(head: &[u8]) -> (String, u64, bool) {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let method = lines
        .next()
        .and_then(|l| l.split(' ').next())
        .unwrap_or_default()
        .to_string();
    let (mut len, mut chunked) = (0, false);
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        if k == "content-length" {
            len = v.parse().unwrap_or(0);
        } else if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
            chunked = true;
        }
    }
    (method, len, chunked)
}

async fn relay(client: &mut TcpStream, sh: &Shared) -> End {
    let count = |a: &AtomicU64| {
        a.fetch_add(1, Ordering::Relaxed);
    };
    let mut upstream: Option<TcpStream> = None;
    let mut side = Side::Head(Vec::new());
    // Bytes read from the client and not yet handled.
    let mut input: Vec<u8> = Vec::new();
    let mut cbuf = vec![0u8; 64 << 10];
    let mut ubuf = vec![0u8; 64 << 10];
    loop {
        if input.is_empty() {
            // Bytes from the client, or from S3 (copied back unchanged).
            let got = match upstream.as_mut() {
                Some(up) => {
                    tokio::select! {
                        r = client.read(&mut cbuf) => r,
                        r = up.read(&mut ubuf) => {
                            match r {
                                Ok(n) if n > 0 => {
                                    if client.write_all(&ubuf[..n]).await.is_err() {
                                        return End::Close;
                                    }
                                    continue;
                                }
                                // S3 closed the connection: so does the proxy.
                                _ => return End::Close,
                            }
                        }
                    }
                }
                None => client.read(&mut cbuf).await,
            };
            match got {
                Ok(n) if n > 0 => input.extend_from_slice(&cbuf[..n]),
                _ => return End::Close,
            }
            continue;
        }
        match &mut side {
            Side::Blind => {
                let Some(up) = upstream.as_mut() else {
                    return End::Close;
                };
                if up.write_all(&input).await.is_err() {
                    return End::Close;
                }
                input.clear();
            }
            Side::Body {
                left,
                upload,
                stall_at,
            } => {
                let mut take = (*left).min(input.len() as u64);
                if let Some((at, _)) = stall_at {
                    // Forward up to the stall point, hold, then go on.
                    take = take.min(*left - *at);
                }
                let take = take as usize;
                let Some(up) = upstream.as_mut() else {
                    return End::Close;
                };
                if take > 0 && up.write_all(&input[..take]).await.is_err() {
                    return End::Close;
                }
                if *upload {
                    sh.counts.uploaded.fetch_add(take as u64, Ordering::Relaxed);
                }
                *left -= take as u64;
                input.drain(..take);
                if let Some((at, time)) = *stall_at
                    && *left == at
                {
                    tokio::time::sleep(time).await;
                    *stall_at = None;
                }
                if *left == 0 {
                    side = Side::Head(Vec::new());
                }
            }
            Side::Head(buf) => {
                buf.append(&mut input);
                let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    if buf.len() > 1 << 20 {
                        return End::Close; // not HTTP
                    }
                    continue;
                };
                input = buf.split_off(pos + 4);
                let head = std::mem::take(buf);
                let (method, len, chunked) = parse_head(&head);
                let upload = method == "PUT" || method == "POST";
                count(&sh.counts.requests);
                let fault = sh.decide();
                match fault {
                    Fault::Outage => {
                        count(&sh.counts.outage);
                        return End::Reset;
                    }
                    Fault::Error { slow_down } => {
                        count(&sh.counts.errors);
                        let _ = client.write_all(&error_response(slow_down)).await;
                        let _ = client.shutdown().await;
                        // Read what the client still sends (its body) so that closing does
                        // not reset the connection before it read the answer.
                        let _ = tokio::time::timeout(Duration::from_secs(5), async {
                            while matches!(client.read(&mut cbuf).await, Ok(n) if n > 0) {}
                        })
                        .await;
                        return End::Close;
                    }
                    Fault::Hang => {
                        count(&sh.counts.hangs);
                        let _ = tokio::time::timeout(Duration::from_secs(900), async {
                            while matches!(client.read(&mut cbuf).await, Ok(n) if n > 0) {}
                        })
                        .await;
                        return End::Reset;
                    }
                    Fault::Stall { time, mid_body } if !mid_body || len < 2 => {
                        count(&sh.counts.stalls);
                        tokio::time::sleep(time).await;
                    }
                    _ => {}
                }
                if upstream.is_none() {
                    match TcpStream::connect(sh.upstream).await {
                        Ok(up) => {
                            let _ = up.set_nodelay(true);
                            upstream = Some(up);
                        }
                        Err(_) => return End::Reset,
                    }
                }
                let Some(up) = upstream.as_mut() else {
                    return End::Close;
                };
                if up.write_all(&head).await.is_err() {
                    return End::Close;
                }
                if fault == Fault::Reset {
                    count(&sh.counts.resets);
                    // S3 sees the head and what came of the body, then both ends go.
                    let part = (input.len() as u64).min(len) as usize;
                    let _ = up.write_all(&input[..part]).await;
                    if upload {
                        sh.counts.uploaded.fetch_add(part as u64, Ordering::Relaxed);
                    }
                    return End::Reset;
                }
                side = if chunked {
                    Side::Blind
                } else if len == 0 {
                    Side::Head(Vec::new())
                } else {
                    let stall_at = match fault {
                        Fault::Stall {
                            time,
                            mid_body: true,
                        } if len >= 2 => {
                            count(&sh.counts.stalls);
                            Some((len / 2, time))
                        }
                        _ => None,
                    };
                    Side::Body {
                        left: len,
                        upload,
                        stall_at,
                    }
                };
            }
        }
    }
}
