//! The kubelet API the API server calls: HTTPS on the node's port with client
//! certificates checked against `--client-ca`; `/healthz`, `/pods`,
//! `/containerLogs/{ns}/{pod}/{container}` and `/exec/{ns}/{pod}/{container}`
//! (WebSocket channel protocol only).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{
    CONNECTION, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL,
    UPGRADE,
};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};

use crate::agent::{Agent, ContainerRuntime};
use crate::images::resolve_program;
use crate::logs::{LogOptions, log_path, render};
use crate::pods::host_tool;
use crate::shim::{SHIM_ARG, ShimSpec};
use crate::wsproto;

type Body = BoxBody<Bytes, std::io::Error>;

fn text(code: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(body.into()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = code;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

pub fn tls_config(cert: &Path, key: &Path, client_ca: &Path) -> anyhow::Result<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(client_ca)? {
        roots.add(c?)?;
    }
    // Unauthenticated clients may reach /healthz only (checked per request).
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

pub async fn serve(agent: Arc<Agent>, addr: SocketAddr, tls: ServerConfig) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "kubelet API listening");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept");
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let agent = agent.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake");
                    return;
                }
            };
            let authenticated = tls
                .get_ref()
                .1
                .peer_certificates()
                .is_some_and(|c| !c.is_empty());
            let svc =
                hyper::service::service_fn(move |req| handle(agent.clone(), authenticated, req));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), svc)
                .with_upgrades()
                .await
            {
                tracing::debug!(%peer, error = %e, "kubelet API connection");
            }
        });
    }
}

fn query_params(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

fn flag(params: &[(String, String)], name: &str) -> bool {
    params
        .iter()
        .any(|(k, v)| k == name && matches!(v.as_str(), "1" | "true" | "True" | ""))
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

async fn handle(
    agent: Arc<Agent>,
    authenticated: bool,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let params = query_params(req.uri().query().unwrap_or_default());
    tracing::debug!(method = %req.method(), %path, "kubelet API request");
    if path == "/healthz" {
        return Ok(text(StatusCode::OK, "ok"));
    }
    if !authenticated {
        return Ok(text(StatusCode::UNAUTHORIZED, "Unauthorized"));
    }
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let resp = match segs.as_slice() {
        ["containerLogs", ns, pod, container] => {
            container_logs(&agent, ns, pod, container, &params).await
        }
        ["exec", ns, pod, container] | ["exec", ns, pod, _, container] => {
            exec(&agent, ns, pod, container, &params, req)
        }
        ["attach", ns, pod, container] | ["attach", ns, pod, _, container] => {
            attach(&agent, ns, pod, container, &params, req)
        }
        ["pods"] | ["pods", ""] => pods_list(&agent),
        _ => text(
            StatusCode::NOT_FOUND,
            format!("holdfast-node-agent does not serve {path}"),
        ),
    };
    Ok(resp)
}

fn pods_list(agent: &Agent) -> Response<Body> {
    let items: Vec<serde_json::Value> = agent
        .pods
        .lock()
        .map(|p| {
            p.values()
                .map(|e| serde_json::json!({"metadata": {"name": e.name, "namespace": e.namespace, "uid": e.uid}}))
                .collect()
        })
        .unwrap_or_default();
    let body =
        serde_json::json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items});
    let mut r = text(StatusCode::OK, body.to_string());
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn lookup(
    agent: &Agent,
    ns: &str,
    pod: &str,
    container: &str,
) -> Result<(Arc<crate::agent::PodEntry>, ContainerRuntime), Box<Response<Body>>> {
    let entry = agent.find_pod(ns, pod).ok_or_else(|| {
        text(
            StatusCode::NOT_FOUND,
            format!("pod {ns}/{pod} not found on this node"),
        )
    })?;
    // after an agent restart, finished containers are known only by their log files
    let from_logs = || {
        let dir = entry.dir.join("logs").join(container);
        let newest = std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_suffix(".log")?
                    .parse::<i32>()
                    .ok()
            })
            .max()?;
        Some(ContainerRuntime {
            attempt: newest,
            ..Default::default()
        })
    };
    let rt = entry
        .container(container)
        .or_else(from_logs)
        .ok_or_else(|| {
            text(
                StatusCode::BAD_REQUEST,
                format!(
                    "container {container:?} in pod {pod:?} is waiting to start: ContainerCreating"
                ),
            )
        })?;
    Ok((entry, rt))
}

async fn container_logs(
    agent: &Arc<Agent>,
    ns: &str,
    pod: &str,
    container: &str,
    params: &[(String, String)],
) -> Response<Body> {
    let (entry, rt) = match lookup(agent, ns, pod, container) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let previous = flag(params, "previous");
    let follow = flag(params, "follow") && !previous;
    let attempt = if previous { rt.attempt - 1 } else { rt.attempt };
    if attempt < 0 {
        return text(
            StatusCode::BAD_REQUEST,
            format!("previous terminated container {container:?} in pod {pod:?} not found"),
        );
    }
    let since = param(params, "sinceTime")
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
        .or_else(|| {
            param(params, "sinceSeconds")
                .and_then(|s| s.parse::<i64>().ok())
                .map(|s| chrono::Utc::now() - chrono::Duration::seconds(s))
        });
    let opts = LogOptions {
        timestamps: flag(params, "timestamps"),
        tail_lines: param(params, "tailLines").and_then(|n| n.parse().ok()),
        since,
        limit_bytes: param(params, "limitBytes").and_then(|n| n.parse().ok()),
    };
    let path = log_path(&entry.dir, container, attempt);
    // keep the file open: the pod dir may be removed right after the container ends
    let mut file = tokio::fs::File::open(&path).await.ok();
    let mut data = Vec::new();
    if let Some(f) = file.as_mut() {
        let _ = f.read_to_end(&mut data).await;
    }
    let complete = data
        .iter()
        .rposition(|b| *b == b'\n')
        .map(|i| i + 1)
        .unwrap_or(0);
    let first = render(&data[..complete], &opts);
    let (Some(file), true) = (file, follow) else {
        return text(StatusCode::OK, String::from_utf8_lossy(&first).into_owned());
    };
    // follow: stream new complete records until this attempt has ended and the file is drained
    struct St {
        entry: Arc<crate::agent::PodEntry>,
        container: String,
        attempt: i32,
        file: tokio::fs::File,
        pending: Vec<u8>,
        sent: usize,
        opts: LogOptions,
        first: Option<Vec<u8>>,
    }
    let st = St {
        entry,
        container: container.to_string(),
        attempt,
        file,
        pending: data[complete..].to_vec(),
        sent: 0,
        opts: LogOptions {
            timestamps: opts.timestamps,
            ..Default::default()
        },
        first: Some(first),
    };
    let limit = opts.limit_bytes;
    let stream = futures::stream::unfold(st, move |mut st| async move {
        if let Some(first) = st.first.take() {
            st.sent += first.len();
            return Some((Ok::<_, std::io::Error>(Frame::data(Bytes::from(first))), st));
        }
        loop {
            if limit.is_some_and(|l| st.sent >= l) {
                return None;
            }
            let still_running = st
                .entry
                .container(&st.container)
                .is_some_and(|rt| rt.attempt == st.attempt && rt.running);
            let _ = st.file.read_to_end(&mut st.pending).await;
            if let Some(end) = st.pending.iter().rposition(|b| *b == b'\n').map(|i| i + 1) {
                let chunk: Vec<u8> = st.pending.drain(..end).collect();
                let mut out = render(&chunk, &st.opts);
                if let Some(l) = limit {
                    out.truncate(l.saturating_sub(st.sent));
                }
                st.sent += out.len();
                if !out.is_empty() {
                    return Some((Ok(Frame::data(Bytes::from(out))), st));
                }
            }
            if !still_running {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    r
}

fn exec(
    agent: &Arc<Agent>,
    ns: &str,
    pod: &str,
    container: &str,
    params: &[(String, String)],
    mut req: Request<Incoming>,
) -> Response<Body> {
    let (_entry, rt) = match lookup(agent, ns, pod, container) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let Some(pid) = rt.pid.filter(|_| rt.running) else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("container {container:?} in pod {pod:?} is not running"),
        );
    };
    let command: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    if command.is_empty() {
        return text(StatusCode::BAD_REQUEST, "you must specify a command");
    }
    let tty = flag(params, "tty");
    let stdin = flag(params, "stdin") || flag(params, "input");
    let stdout = flag(params, "stdout") || flag(params, "output");
    let stderr = (flag(params, "stderr") || flag(params, "error")) && !tty;
    let (proto, key, on_upgrade) = match negotiate(&mut req, "exec") {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let agent = agent.clone();
    let (ns, pod, container) = (ns.to_string(), pod.to_string(), container.to_string());
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(up) => {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Server, None).await;
                let opts = ExecOpts {
                    command,
                    stdin,
                    stdout,
                    stderr,
                    tty,
                    v5: proto == wsproto::V5,
                };
                tracing::info!(%ns, %pod, %container, command = ?opts.command, "exec");
                run_exec(&agent, ws, pid, &rt, opts).await;
            }
            Err(e) => tracing::warn!(error = %e, "exec upgrade"),
        }
    });
    switching_protocols(proto, &key)
}

/// Checks a WebSocket upgrade request for the channel protocol and prepares the upgrade.
fn negotiate(
    req: &mut Request<Incoming>,
    what: &str,
) -> Result<(&'static str, String, hyper::upgrade::OnUpgrade), Box<Response<Body>>> {
    let is_ws = req
        .headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !is_ws {
        return Err(Box::new(text(
            StatusCode::BAD_REQUEST,
            format!(
                "holdfast-node-agent serves {what} only over WebSocket (v5.channel.k8s.io / v4.channel.k8s.io); SPDY is not supported"
            ),
        )));
    }
    let offered: Vec<String> = req
        .headers()
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect();
    let Some(proto) = wsproto::choose_protocol(offered.iter().map(String::as_str)) else {
        return Err(Box::new(text(
            StatusCode::BAD_REQUEST,
            format!(
                "no supported WebSocket sub-protocol in {offered:?}; supported: {} {}",
                wsproto::V5,
                wsproto::V4
            ),
        )));
    };
    let Some(key) = req
        .headers()
        .get(SEC_WEBSOCKET_KEY)
        .map(|k| derive_accept_key(k.as_bytes()))
    else {
        return Err(Box::new(text(
            StatusCode::BAD_REQUEST,
            "missing Sec-WebSocket-Key",
        )));
    };
    Ok((proto, key, hyper::upgrade::on(req)))
}

fn switching_protocols(proto: &'static str, key: &str) -> Response<Body> {
    let mut r = text(StatusCode::SWITCHING_PROTOCOLS, "");
    let h = r.headers_mut();
    h.remove(hyper::header::CONTENT_TYPE);
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(proto));
    if let Ok(v) = HeaderValue::from_str(key) {
        h.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

/// Writes channel messages to the WebSocket from one task; ends with a normal closure.
fn ws_writer<S>(
    mut sink: futures::stream::SplitSink<WebSocketStream<S>, Message>,
) -> (mpsc::Sender<Message>, tokio::task::JoinHandle<()>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<Message>(64);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                return;
            }
        }
        // a normal closure (1000): clients treat "no status" (1005) as an error
        let close = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        let _ = sink.send(Message::Close(Some(close))).await;
        let _ = sink.close().await;
    });
    (tx, writer)
}

fn attach(
    agent: &Arc<Agent>,
    ns: &str,
    pod: &str,
    container: &str,
    params: &[(String, String)],
    mut req: Request<Incoming>,
) -> Response<Body> {
    let (entry, rt) = match lookup(agent, ns, pod, container) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    if !rt.running {
        return text(
            StatusCode::BAD_REQUEST,
            format!("container {container:?} in pod {pod:?} is not running"),
        );
    }
    let tty = flag(params, "tty");
    let opts = AttachOpts {
        stdin: flag(params, "stdin") || flag(params, "input"),
        stdout: flag(params, "stdout") || flag(params, "output"),
        stderr: (flag(params, "stderr") || flag(params, "error")) && !tty,
        tty,
    };
    let (proto, key, on_upgrade) = match negotiate(&mut req, "attach") {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let container = container.to_string();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(up) => {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Server, None).await;
                run_attach(ws, entry, &container, rt, opts, proto == wsproto::V5).await;
            }
            Err(e) => tracing::warn!(error = %e, "attach upgrade"),
        }
    });
    switching_protocols(proto, &key)
}

struct AttachOpts {
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

/// Attach: the container's output from now on (read from its log) and, for a
/// container with `stdin: true`, the client's stdin into the container.
async fn run_attach<S>(
    ws: WebSocketStream<S>,
    entry: Arc<crate::agent::PodEntry>,
    container: &str,
    rt: ContainerRuntime,
    o: AttachOpts,
    v5: bool,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sink, mut stream) = ws.split();
    let (tx, writer) = ws_writer(sink);
    let first = if o.stdout {
        wsproto::STDOUT
    } else if o.stderr {
        wsproto::STDERR
    } else {
        wsproto::ERROR
    };
    let _ = tx
        .send(Message::Binary(Bytes::from(wsproto::frame(first, &[]))))
        .await;
    let stdin_tx = rt.stdin.clone().filter(|_| o.stdin);
    let stdin_once = rt.stdin_once;
    let mut reader = tokio::spawn(async move {
        let mut stdin_tx = stdin_tx;
        while let Some(Ok(msg)) = stream.next().await {
            match msg {
                Message::Binary(b) => match wsproto::parse(&b, v5) {
                    wsproto::Incoming::Stdin(d) if !d.is_empty() => {
                        if let Some(t) = stdin_tx.as_ref()
                            && t.send(d.to_vec()).await.is_err()
                        {
                            stdin_tx = None;
                        }
                    }
                    wsproto::Incoming::Close(wsproto::STDIN) => {
                        if stdin_once && let Some(t) = stdin_tx.take() {
                            let _ = t.send(Vec::new()).await;
                        }
                        stdin_tx = None;
                    }
                    _ => {}
                },
                Message::Close(_) => break,
                _ => {}
            }
        }
        if stdin_once && let Some(t) = stdin_tx.take() {
            let _ = t.send(Vec::new()).await;
        }
    });
    let path = log_path(&entry.dir, container, rt.attempt);
    let mut file = tokio::fs::File::open(&path).await.ok();
    let mut pending = Vec::new();
    if let Some(f) = file.as_mut() {
        use tokio::io::AsyncSeekExt;
        let _ = f.seek(std::io::SeekFrom::End(0)).await;
    }
    loop {
        let running = entry
            .container(container)
            .is_some_and(|c| c.attempt == rt.attempt && c.running);
        if let Some(f) = file.as_mut() {
            let _ = f.read_to_end(&mut pending).await;
        }
        if let Some(end) = pending.iter().rposition(|b| *b == b'\n').map(|i| i + 1) {
            let chunk: Vec<u8> = pending.drain(..end).collect();
            for line in chunk.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let Some(rec) = crate::logs::parse_record(line) else {
                    continue;
                };
                let channel = match (rec.stream, o.tty) {
                    ("stderr", false) if o.stderr => wsproto::STDERR,
                    ("stderr", false) => continue,
                    _ if o.stdout => wsproto::STDOUT,
                    _ => continue,
                };
                if tx
                    .send(Message::Binary(Bytes::from(wsproto::frame(
                        channel, &rec.text,
                    ))))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
        if !running || reader.is_finished() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = &mut reader => break,
        }
    }
    let _ = tx
        .send(Message::Binary(Bytes::from(wsproto::frame(
            wsproto::ERROR,
            wsproto::exit_status(0, &[]).to_string().as_bytes(),
        ))))
        .await;
    reader.abort();
    drop(tx);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
}

struct ExecOpts {
    command: Vec<String>,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
    v5: bool,
}

async fn pump(mut r: impl AsyncRead + Unpin, channel: u8, tx: mpsc::Sender<Message>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx
                    .send(Message::Binary(Bytes::from(wsproto::frame(
                        channel,
                        &buf[..n],
                    ))))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

async fn run_exec<S>(
    agent: &Agent,
    ws: WebSocketStream<S>,
    pid: u32,
    rt: &ContainerRuntime,
    o: ExecOpts,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sink, mut stream) = ws.split();
    let (tx, writer) = ws_writer(sink);
    let first = if o.stdout {
        wsproto::STDOUT
    } else if o.stderr {
        wsproto::STDERR
    } else {
        wsproto::ERROR
    };
    let _ = tx
        .send(Message::Binary(Bytes::from(wsproto::frame(first, &[]))))
        .await;
    let send_status = |v: serde_json::Value| {
        let tx = tx.clone();
        async move {
            let _ = tx
                .send(Message::Binary(Bytes::from(wsproto::frame(
                    wsproto::ERROR,
                    v.to_string().as_bytes(),
                ))))
                .await;
        }
    };

    let path_env = rt
        .env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str());
    let program = match resolve_program(
        &rt.image,
        &rt.image_exe,
        &o.command,
        &[],
        path_env,
        is_executable,
    ) {
        Ok(p) => p,
        Err(e) => {
            send_status(wsproto::error_status(&format!(
                "failed to exec in container: {e}"
            )))
            .await;
            drop(tx);
            let _ = writer.await;
            return;
        }
    };
    let spec = ShimSpec {
        mounts: vec![],
        program: program.path,
        argv0: program.argv0,
        args: program.args,
        cwd: rt.cwd.clone(),
        uid: rt.uid,
        gid: rt.gid,
        groups: rt.groups.clone(),
        error_file: None,
    };
    let spec_json = serde_json::to_string(&spec).unwrap_or_default();
    let mut cmd = tokio::process::Command::new(host_tool("nsenter"));
    cmd.arg("--mount")
        .arg("--target")
        .arg(pid.to_string())
        .arg("--");
    // tty=true: a pseudo-terminal; `setsid --ctty` makes it the controlling terminal
    let pty = if o.tty {
        match nix::pty::openpty(None, None) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(error = %e, "openpty; exec continues without a terminal");
                None
            }
        }
    } else {
        None
    };
    if pty.is_some() {
        cmd.arg(host_tool("setsid")).arg("--ctty").arg("--");
    }
    cmd.arg(&agent.self_exe)
        .arg(SHIM_ARG)
        .arg(&spec_json)
        .env_clear()
        .envs(rt.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .kill_on_drop(true);
    let mut slave_path = None;
    let mut master = None;
    if let Some(p) = pty {
        use std::os::fd::AsRawFd;
        slave_path = std::fs::read_link(format!("/proc/self/fd/{}", p.slave.as_raw_fd())).ok();
        let io = |fd: &std::os::fd::OwnedFd| {
            fd.try_clone()
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null())
        };
        cmd.stdin(io(&p.slave))
            .stdout(io(&p.slave))
            .stderr(io(&p.slave));
        master = Some(std::fs::File::from(p.master));
    } else {
        cmd.stdin(if o.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        cmd.stdout(if o.stdout {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        cmd.stderr(if o.stderr {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            send_status(wsproto::error_status(&format!(
                "failed to exec in container: {e}"
            )))
            .await;
            drop(tx);
            let _ = writer.await;
            return;
        }
    };
    drop(cmd); // closes our copies of the terminal's slave side
    let mut pumps = Vec::new();
    let mut stdin_h: Option<Box<dyn tokio::io::AsyncWrite + Unpin + Send>> = None;
    if let Some(m) = master {
        if let Ok(r) = m.try_clone() {
            pumps.push(tokio::spawn(pump(
                tokio::fs::File::from_std(r),
                wsproto::STDOUT,
                tx.clone(),
            )));
        }
        if o.stdin {
            stdin_h = Some(Box::new(tokio::fs::File::from_std(m)));
        }
    }
    if let Some(out) = child.stdout.take() {
        pumps.push(tokio::spawn(pump(out, wsproto::STDOUT, tx.clone())));
    }
    if let Some(err) = child.stderr.take() {
        pumps.push(tokio::spawn(pump(err, wsproto::STDERR, tx.clone())));
    }
    if let Some(i) = child.stdin.take() {
        stdin_h = Some(Box::new(i));
    }
    let v5 = o.v5;
    let mut reader = tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            match msg {
                Message::Binary(b) => match wsproto::parse(&b, v5) {
                    wsproto::Incoming::Stdin(d) => {
                        if let Some(s) = stdin_h.as_mut()
                            && (s.write_all(d).await.is_err() || s.flush().await.is_err())
                        {
                            stdin_h = None;
                        }
                    }
                    wsproto::Incoming::Close(wsproto::STDIN) => stdin_h = None,
                    wsproto::Incoming::Resize(d) => {
                        if let (Some(path), Some((w, h))) =
                            (slave_path.as_ref(), wsproto::parse_resize(d))
                        {
                            let _ = tokio::process::Command::new(host_tool("stty"))
                                .arg("-F")
                                .arg(path)
                                .args(["rows", &h.to_string(), "cols", &w.to_string()])
                                .status()
                                .await;
                        }
                    }
                    _ => {}
                },
                Message::Close(_) => return,
                _ => {}
            }
        }
    });
    let status = tokio::select! {
        s = child.wait() => s.ok(),
        _ = &mut reader => {
            // client went away
            let _ = child.start_kill();
            let _ = child.wait().await;
            None
        }
    };
    for p in pumps {
        let _ = tokio::time::timeout(Duration::from_secs(5), p).await;
    }
    if let Some(s) = status {
        use std::os::unix::process::ExitStatusExt;
        let code = s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0));
        send_status(wsproto::exit_status(code, &o.command)).await;
    }
    reader.abort();
    drop(tx);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
}
