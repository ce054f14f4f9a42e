//! `--metrics ADDR:PORT`: serves GET /metrics over HTTP/1.1 on the session's own tokio runtime
//! (hyper); every other path is 404. The session publishes a snapshot each interval; a scrape
//! only encodes the last one, so scrapes never hold up the event path.
use std::{
    convert::Infallible,
    io,
    net::SocketAddr,
    sync::{Arc, PoisonError},
    time::Duration,
};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::TcpListener,
    task::{JoinHandle, JoinSet},
};

use crate::{
    aggregate::Summary,
    kernel::loss::Loss,
    metrics::Selector,
    metrics::text::{self, Exposition, ProcessStats, Shared},
};

/// Connections served at once; more are closed at once (a scraper needs one).
const MAX_CONNECTIONS: usize = 16;
/// A client that does not send its request headers within this is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Parses `--metrics`: an IP address and a fixed port.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = s.parse().map_err(|_| {
        format!("'{s}' is not ADDR:PORT with an IP address (examples: 127.0.0.1:9477, [::]:9477)")
    })?;
    if addr.port() == 0 {
        return Err(
            "port 0 is not a fixed port: give the port to scrape, e.g. 127.0.0.1:9477".into(),
        );
    }
    Ok(addr)
}

/// The metrics address cannot be served.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve metrics on {addr}: {err}{}", hint(.err))]
pub struct BindError {
    addr: SocketAddr,
    err: io::Error,
}

fn hint(err: &io::Error) -> &'static str {
    match err.kind() {
        io::ErrorKind::AddrInUse => {
            " (another program listens there: choose another --metrics port)"
        }
        io::ErrorKind::AddrNotAvailable => {
            " (not an address of this host: use 127.0.0.1, 0.0.0.0, [::] or one of its addresses)"
        }
        _ => "",
    }
}

/// Starts the endpoint when `--metrics` was given.
pub async fn start(addr: Option<SocketAddr>) -> Result<Option<Endpoint>, BindError> {
    match addr {
        Some(addr) => Endpoint::start(addr).await.map(Some),
        None => Ok(None),
    }
}

/// The running endpoint; it stops serving when dropped.
pub struct Endpoint {
    addr: SocketAddr,
    selector: Selector,
    shared: Shared,
    server: JoinHandle<()>,
}

impl Endpoint {
    /// Binds `addr` and serves it from the current tokio runtime. Called before any program is
    /// loaded, so that a taken port or a wrong address fails before anything is attached.
    pub async fn start(addr: SocketAddr) -> Result<Self, BindError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|err| BindError { addr, err })?;
        let addr = listener.local_addr().unwrap_or(addr);
        let shared = Shared::default();
        let exposition = Arc::new(Exposition::new(shared.clone(), ProcessStats::own));
        Ok(Self {
            addr,
            selector: Selector::default(),
            shared,
            server: tokio::spawn(serve(listener, exposition)),
        })
    }

    /// The bound address (the port is known even when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Says where it serves (once the other start-up checks have passed).
    pub fn announce(&self) {
        eprintln!("sockwatch: serving metrics at http://{}/metrics", self.addr);
    }

    /// Makes this interval's summary what scrapes see.
    pub fn publish(&mut self, summary: &Summary, events: u64, loss: &Loss) {
        let snap = self.selector.snapshot(summary, events, loss);
        // The snapshot is replaced whole, so a poisoned lock holds nothing half-written.
        *self.shared.lock().unwrap_or_else(PoisonError::into_inner) = Some(snap);
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        // Dropping the accept loop drops its JoinSet, which aborts every connection too.
        self.server.abort();
    }
}

async fn serve(listener: TcpListener, exposition: Arc<Exposition>) {
    let mut conns = JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of descriptors, most likely: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        while conns.try_join_next().is_some() {}
        if conns.len() >= MAX_CONNECTIONS {
            continue; // dropping the stream closes it
        }
        let exposition = Arc::clone(&exposition);
        conns.spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let resp = respond(&exposition, &req);
                async move { Ok::<_, Infallible>(resp) }
            });
            // A client that goes away mid-request is its own business.
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond<B>(exposition: &Exposition, req: &Request<B>) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: sockwatch serves /metrics\n",
        );
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut resp = plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match exposition.render() {
        Ok(text) => {
            let mut resp = Response::new(Full::new(Bytes::from(text)));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(text::CONTENT_TYPE),
            );
            resp
        }
        Err(_) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics\n",
        ),
    }
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            parse_addr("127.0.0.1:9477"),
            Ok(SocketAddr::from(([127, 0, 0, 1], 9477)))
        );
        assert_eq!(parse_addr("[::]:9477").map(|a| a.port()), Ok(9477));
        assert!(
            parse_addr("localhost:9477")
                .unwrap_err()
                .contains("IP address")
        );
        assert!(parse_addr("127.0.0.1").unwrap_err().contains("ADDR:PORT"));
        assert!(parse_addr("127.0.0.1:70000").is_err());
        assert!(parse_addr("127.0.0.1:0").unwrap_err().contains("port 0"));
    }

    #[test]
    fn bind_errors_name_the_fix() {
        let e = BindError {
            addr: SocketAddr::from(([127, 0, 0, 1], 80)),
            err: io::Error::from(io::ErrorKind::AddrInUse),
        };
        assert!(
            e.to_string()
                .starts_with("cannot serve metrics on 127.0.0.1:80: ")
                && e.to_string().ends_with("choose another --metrics port)"),
            "{e}"
        );
    }

    /// GET over a real loopback connection, answered by the endpoint on a tokio runtime.
    fn get(agent_port: u16, method: &str, path: &str) -> (u16, String, String) {
        let url = format!("http://127.0.0.1:{agent_port}{path}");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut resp = match method {
            "GET" => agent.get(&url).call(),
            _ => agent.post(&url).send_empty(),
        }
        .expect("request");
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = resp.body_mut().read_to_string().expect("body");
        (resp.status().as_u16(), ctype, body)
    }

    #[test]
    fn serves_metrics_and_nothing_else() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut ep = Endpoint::start(SocketAddr::from(([127, 0, 0, 1], 0)))
                .await
                .expect("bind");
            let port = ep.addr().port();
            let summary = crate::aggregate::Aggregator::new().summary();
            ep.publish(&summary, 3, &Loss::default());
            let replies = tokio::task::spawn_blocking(move || {
                [
                    get(port, "GET", "/metrics"),
                    get(port, "GET", "/"),
                    get(port, "POST", "/metrics"),
                ]
            })
            .await
            .expect("client");
            let (status, ctype, body) = &replies[0];
            assert_eq!(*status, 200);
            assert_eq!(ctype, text::CONTENT_TYPE);
            assert!(body.contains("\nsockwatch_events_total 3\n"), "{body}");
            assert!(body.ends_with("# EOF\n"));
            assert_eq!(replies[1].0, 404);
            assert_eq!(replies[2].0, 405);

            // The same port cannot be served twice.
            let taken = SocketAddr::from(([127, 0, 0, 1], port));
            let err = Endpoint::start(taken).await.err().expect("port taken");
            assert!(
                err.to_string().contains("choose another --metrics port"),
                "{err}"
            );
        });
    }
}
