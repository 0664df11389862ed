//! The HTTP(S) probe on hyper's connection API: one fresh connection per run,
//! no pool, no proxy, bounded body, the peer certificate read straight from the
//! TLS session. A general-purpose client does a lot of work a probe does not need;
//! this path is where steward's CPU per probe is spent, so it stays lean.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{
    CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderName, HeaderValue, LOCATION, USER_AGENT,
};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use steward_health_endpoint::HealthResponse;
use steward_spec::{HttpProbe, Resolver};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::probe::{Outcome, error_chain};
use crate::tls;

const MAX_REDIRECTS: usize = 10;

struct Response {
    status: u16,
    health_json: bool,
    location: Option<String>,
    body: Vec<u8>,
}

pub(crate) async fn probe(
    p: &HttpProbe,
    tls_config: Option<Arc<ClientConfig>>,
    resolver: &dyn Resolver,
    out: &mut Outcome,
    started: Instant,
) -> Result<(), String> {
    let url = p.url.resolve(resolver).map_err(|e| e.to_string())?;
    // Never echo the URL in errors: it may carry credentials.
    let mut uri: Uri = url
        .expose()
        .parse()
        .map_err(|_| "the url is not a valid URL".to_string())?;
    let method =
        Method::from_bytes(p.method.as_bytes()).map_err(|_| format!("bad method {}", p.method))?;
    let mut headers = Vec::with_capacity(p.headers.len());
    for (k, v) in &p.headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("invalid header name `{k}`"))?;
        let value = HeaderValue::from_str(v.resolve(resolver).map_err(|e| e.to_string())?.expose())
            .map_err(|_| format!("invalid value for header `{k}`"))?;
        headers.push((name, value));
    }
    let body = match &p.body {
        Some(b) => Bytes::from(
            b.resolve(resolver)
                .map_err(|e| e.to_string())?
                .expose()
                .to_string(),
        ),
        None => Bytes::new(),
    };
    let mut hops = 0;
    let resp = loop {
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("only http:// and https:// URLs can be probed".into()),
        };
        let host = uri
            .host()
            .ok_or("the URL has no host")?
            .trim_matches(['[', ']'])
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let addr = resolve(&host, port).await?;
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        out.observed.ip = Some(addr.ip().to_string());
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_else(|| host.clone());
        let path = uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_string();
        let mut req = Request::builder().method(method.clone()).uri(path);
        {
            let h = req.headers_mut().expect("fresh builder");
            h.insert(
                HOST,
                HeaderValue::from_str(&authority).map_err(|_| "invalid host")?,
            );
            h.insert(
                USER_AGENT,
                HeaderValue::from_static(concat!("steward/", env!("CARGO_PKG_VERSION"))),
            );
            h.insert(CONNECTION, HeaderValue::from_static("close"));
            if !body.is_empty() {
                h.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
            }
            for (k, v) in &headers {
                h.insert(k.clone(), v.clone());
            }
        }
        let req = req
            .body(Full::new(body.clone()))
            .map_err(|e| format!("cannot build request: {e}"))?;
        let resp = if https {
            let cfg = tls_config.clone().ok_or("no TLS configuration")?;
            let stream = tls::handshake(cfg, &host, tcp, &mut out.observed).await?;
            exchange(stream, req, p.max_body).await?
        } else {
            out.observed.connected = true;
            exchange(tcp, req, p.max_body).await?
        };
        let redirect = matches!(resp.status, 301 | 302 | 303 | 307 | 308);
        match (&resp.location, redirect && p.follow_redirects) {
            (Some(loc), true) if hops < MAX_REDIRECTS => {
                hops += 1;
                uri = follow(&uri, loc)?;
            }
            (_, true) if hops >= MAX_REDIRECTS => {
                return Err(format!("more than {MAX_REDIRECTS} redirects"));
            }
            _ => break resp,
        }
    };
    out.observed.status = Some(resp.status);
    out.observed.response_time_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
    if resp.health_json {
        match HealthResponse::parse(&resp.body) {
            Ok(doc) => out.health = Some(doc),
            Err(e) => {
                out.observed.body = Some(String::from_utf8_lossy(&resp.body).into_owned());
                return Err(format!("invalid application/health+json body: {e}"));
            }
        }
    }
    out.observed.body = Some(match String::from_utf8(resp.body) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    });
    Ok(())
}

async fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} has no address"))
}

fn follow(base: &Uri, location: &str) -> Result<Uri, String> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location
            .parse()
            .map_err(|_| "invalid redirect location".to_string());
    }
    let mut parts = base.clone().into_parts();
    let pq = if location.starts_with('/') {
        location.to_string()
    } else {
        let dir = base.path().rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        format!("{dir}/{location}")
    };
    parts.path_and_query = Some(
        pq.parse()
            .map_err(|_| "invalid redirect location".to_string())?,
    );
    Uri::from_parts(parts).map_err(|_| "invalid redirect location".to_string())
}

/// One request on a fresh connection; the connection is driven alongside the
/// request (no spawned task) and closes when the exchange is done.
async fn exchange<S>(io: S, req: Request<Full<Bytes>>, max_body: u64) -> Result<Response, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP handshake failed: {}", error_chain(&e)))?;
    let work = async move {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request failed: {}", error_chain(&e)))?;
        let status = resp.status().as_u16();
        let h = resp.headers();
        let health_json = h
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with(steward_health_endpoint::CONTENT_TYPE));
        let location = h
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = resp.into_body();
        let mut buf = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("reading body: {}", error_chain(&e)))?;
            if let Ok(data) = frame.into_data() {
                if (buf.len() + data.len()) as u64 > max_body {
                    return Err(format!(
                        "response body exceeds the {max_body} byte limit (max_body)"
                    ));
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(Response {
            status,
            health_json,
            location,
            body: buf,
        })
    };
    tokio::pin!(conn);
    tokio::pin!(work);
    // Drive both; the connection future ends once the exchange is over.
    let mut conn_done = false;
    loop {
        tokio::select! {
            r = &mut work => return r,
            c = &mut conn, if !conn_done => {
                conn_done = true;
                if let Err(e) = c {
                    // The response may still be complete (e.g. the server closed right after it).
                    match work.as_mut().await {
                        Ok(r) => return Ok(r),
                        Err(_) => return Err(format!("connection failed: {}", error_chain(&e))),
                    }
                }
            }
        }
    }
}
