//! Listening: plain HTTP on loopback, HTTPS with the broker's own CA
//! beyond it, and the deadlines that keep slow clients (slow-loris) from
//! holding connections: `limits.request_timeout` for a connection's first
//! bytes, each request's headers, and its body. Also the periodic
//! checkpoint and a clean shutdown (a final checkpoint, storage closed).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use custody_wire::error::ErrorCode;

use crate::error::ApiError;
use crate::state::{load_or_create_key, AppState};
use crate::BoxFuture;

/// How long a shutdown waits for requests in flight before closing connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How often the periodic checkpoint is considered.
const CHECKPOINT_TICK: Duration = Duration::from_millis(500);

/// Reads the whole request body, at most `limits.max_body` bytes, within
/// `limits.request_timeout` of the end of its headers, before any handler
/// runs. hyper's header timeout stops where the body starts, and a body
/// trickled a byte at a time (slow-loris) would otherwise hold its connection
/// and task for as long as the client likes; a timeout between reads would
/// not do, since every byte restarts it. Only reading is timed: a handler,
/// once started, is never cut short (a mint or a revocation stopped halfway
/// could leave a live token unrecorded).
pub(crate) async fn read_body_in_time(
    State(s): State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use axum::body::HttpBody;
    let (parts, mut body) = req.into_parts();
    let (limit, timeout) = (s.cfg.limits.max_body, s.cfg.limits.request_timeout);
    let read = async {
        let mut buf = Vec::new();
        while let Some(frame) =
            std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
        {
            let frame =
                frame.map_err(|e| ApiError::new(ErrorCode::MalformedBody, e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > limit {
                    return Err(ApiError::new(
                        ErrorCode::TooLarge,
                        format!("the body is larger than limits.max_body ({limit} bytes)"),
                    ));
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(buf)
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(buf)) => {
            next.run(axum::extract::Request::from_parts(parts, Body::from(buf)))
                .await
        }
        Ok(Err(e)) => e.into_response(),
        Err(_) => {
            let mut r = ApiError::new(
                ErrorCode::RequestTimeout,
                format!(
                    "the request body did not arrive within limits.request_timeout ({}s)",
                    timeout.as_secs_f64()
                ),
            )
            .into_response();
            // The rest of the body is not read: the connection cannot be reused.
            r.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            r
        }
    }
}

/// The rustls config for HTTPS: a server certificate from the broker's CA for
/// the configured names (plus the listen address and `localhost`), with an
/// Ed25519 key kept in `data/server.key`.
async fn tls_config(
    state: &AppState,
    addr: SocketAddr,
) -> anyhow::Result<axum_server::tls_rustls::RustlsConfig> {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let key = load_or_create_key(&state.cfg.data.join("server.key"))?;
    let mut names = state.cfg.tls.names.clone();
    names.push("localhost".into());
    if !addr.ip().is_unspecified() {
        names.push(addr.ip().to_string());
    }
    names.sort();
    names.dedup();
    let cert = state.ca.issue_server_cert(&names, &key)?;
    let der = key
        .dalek()
        .to_pkcs8_der()
        .map_err(|e| anyhow::anyhow!("encoding the TLS key: {e}"))?;
    let cert_der = rustls_pki_der(&cert)?;
    Ok(
        axum_server::tls_rustls::RustlsConfig::from_der(vec![cert_der], der.as_bytes().to_vec())
            .await?,
    )
}

fn rustls_pki_der(pem: &str) -> anyhow::Result<Vec<u8>> {
    use base64::Engine;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    Ok(base64::engine::general_purpose::STANDARD.decode(body)?)
}

/// Binds, serves until `shutdown` resolves, then flushes: a final checkpoint
/// and a clean store close. Serves HTTPS when `[tls]` says so (by default,
/// whenever the listen address is not loopback).
pub fn serve(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> BoxFuture<'static, anyhow::Result<()>> {
    serve_boxed(state, listener, Box::pin(shutdown))
}

/// [`serve`] without its generic parameter, its future boxed here: the HTTP
/// stack's code is compiled once, in this crate, rather than again in every
/// binary that starts a broker (see `crate::BoxFuture`).
fn serve_boxed(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    shutdown: BoxFuture<'static, ()>,
) -> BoxFuture<'static, anyhow::Result<()>> {
    Box::pin(serve_body(state, listener, shutdown))
}

async fn serve_body(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    shutdown: BoxFuture<'static, ()>,
) -> anyhow::Result<()> {
    let ticker_state = state.clone();
    let ticker = tokio::spawn(async move {
        let mut iv = tokio::time::interval(CHECKPOINT_TICK);
        loop {
            iv.tick().await;
            if let Err(e) = ticker_state.maybe_checkpoint(false).await {
                tracing::warn!("signing the periodic checkpoint failed: {e}");
            }
        }
    });
    let handle = axum_server::Handle::new();
    let h2 = handle.clone();
    let closing = state.clone();
    tokio::spawn(async move {
        shutdown.await;
        // Followers waiting for entries answer now instead of holding the
        // graceful shutdown for their whole wait.
        closing.close_feed();
        h2.graceful_shutdown(Some(SHUTDOWN_GRACE));
    });
    let app = crate::routes::router(state.clone()).into_make_service();
    let timeout = state.cfg.limits.request_timeout;
    // Both listeners go through axum-server because it lets us give hyper a
    // timer: without one hyper enforces no header read timeout at all, and a
    // client sending its headers a byte at a time (slow-loris) would hold its
    // connection forever. The body has its own deadline (`read_body_in_time`).
    if state.cfg.tls.enabled {
        crate::install_crypto_provider();
        let addr = listener.local_addr()?;
        let config = tls_config(&state, addr).await?;
        let mut server = axum_server::from_tcp_rustls(listener.into_std()?, config)
            .handle(handle)
            .map(|inner| FirstBytesAcceptor { inner, timeout });
        limit_header_time(server.http_builder(), timeout);
        server.serve(app).await?;
    } else {
        let mut server = axum_server::from_tcp(listener.into_std()?)
            .handle(handle)
            .map(|inner| FirstBytesAcceptor { inner, timeout });
        limit_header_time(server.http_builder(), timeout);
        server.serve(app).await?;
    }
    ticker.abort();
    state.maybe_checkpoint(true).await?;
    state.storage.close().await?;
    Ok(())
}

/// HTTP/1 connections must deliver each request's headers within `timeout`
/// (hyper then closes them without an answer); that also bounds how long an
/// idle keep-alive connection is kept. HTTP/2 has no such timeout in hyper:
/// there, a peer that does not answer a ping within `timeout` is dropped.
fn limit_header_time(
    b: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    timeout: Duration,
) {
    b.http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(timeout);
    b.http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(timeout)
        .keep_alive_timeout(timeout);
}

/// How many bytes hyper-util reads from a new connection to tell HTTP/2 (its
/// 24-byte preface) from HTTP/1, before any hyper timeout applies.
const PROTOCOL_SNIFF_BYTES: usize = 24;

/// Gives every accepted connection (after TLS, when there is TLS) `timeout`
/// to send its first [`PROTOCOL_SNIFF_BYTES`] bytes. hyper-util waits for them
/// without limit before hyper's header timeout starts, so a client that
/// connects and stays silent, or trickles an HTTP/2 preface, would otherwise
/// hold its connection forever.
#[derive(Clone)]
struct FirstBytesAcceptor<A> {
    inner: A,
    timeout: Duration,
}

impl<A, I, S> axum_server::accept::Accept<I, S> for FirstBytesAcceptor<A>
where
    A: axum_server::accept::Accept<I, S>,
    A::Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    A::Service: Send + 'static,
    A::Future: Send + 'static,
{
    type Stream = FirstBytes<A::Stream>;
    type Service = A::Service;
    type Future = std::pin::Pin<
        Box<
            dyn std::future::Future<Output = std::io::Result<(Self::Stream, Self::Service)>> + Send,
        >,
    >;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let accepted = self.inner.accept(stream, service);
        let timeout = self.timeout;
        Box::pin(async move {
            let (inner, service) = accepted.await?;
            let deadline = Some(Box::pin(tokio::time::sleep(timeout)));
            Ok((
                FirstBytes {
                    inner,
                    seen: 0,
                    deadline,
                },
                service,
            ))
        })
    }
}

/// A connection whose reads fail once its deadline has passed, until it has
/// delivered [`PROTOCOL_SNIFF_BYTES`] bytes; after that, a plain connection.
struct FirstBytes<S> {
    inner: S,
    seen: usize,
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for FirstBytes<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::future::Future;
        use std::task::Poll;
        let this = &mut *self;
        let before = buf.filled().len();
        match std::pin::Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.seen += buf.filled().len() - before;
                if this.seen >= PROTOCOL_SNIFF_BYTES {
                    this.deadline = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let expired = match &mut this.deadline {
                    Some(d) => d.as_mut().poll(cx).is_ready(),
                    None => false,
                };
                if expired {
                    Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client sent too little within limits.request_timeout",
                    )))
                } else {
                    Poll::Pending
                }
            }
            failed => failed,
        }
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for FirstBytes<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
