//! The connection to the cluster, through the official client's transport: endpoints
//! round-robin, credentials, TLS, gzip bodies, and the optional request and byte rate caps.

use super::response::{self, ItemResult, FILTER_PATH, FILTER_PATH_WITH_INDEX};
use crate::config::ElasticsearchConfig;
use bytes::Bytes;
use elasticsearch::auth::{ClientCertificate, Credentials};
use elasticsearch::cert::{Certificate, CertificateValidation};
use elasticsearch::http::headers::{
    HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE,
};
use elasticsearch::http::transport::{MultiNodeConnectionPool, Transport, TransportBuilder};
use elasticsearch::http::{Method, Url};
use flate2::write::GzEncoder;
use flate2::Compression;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::io::Write;
use std::num::NonZeroU32;
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("output.elasticsearch.{key}: cannot read {path}: {source}")]
    SecretFile {
        key: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("output.elasticsearch.ca_file: {0}")]
    Ca(String),
    #[error("output.elasticsearch.cert_file/key_file: {0}")]
    ClientCert(String),
    #[error("output.elasticsearch.endpoints: {0}")]
    Endpoint(String),
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
}

/// What one bulk request came to.
#[derive(Debug)]
pub enum Reply {
    /// HTTP 200 with per-item results, in request order.
    Items(Vec<ItemResult>),
    /// Any other status, with the start of the body.
    Status(u16, String),
    /// Not sent: the connection could not be made (refused, DNS, TLS handshake).
    Unreachable(String),
    /// Sent with no answer (timeout, connection lost): it may have been indexed.
    Unanswered(String),
}

pub struct BulkClient {
    transport: Transport,
    compression: Option<Compression>,
    timeout: Duration,
    requests: Option<DefaultDirectRateLimiter>,
    /// Counts KiB.
    kibibytes: Option<(DefaultDirectRateLimiter, u32)>,
}

impl BulkClient {
    pub fn new(cfg: &ElasticsearchConfig) -> Result<Self, ClientError> {
        let urls = cfg
            .endpoints
            .iter()
            .map(|e| Url::parse(e).map_err(|x| ClientError::Endpoint(format!("{e:?}: {x}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let transport = transport(urls, cfg)?;
        let requests = NonZeroU32::new(cfg.max_requests_per_second)
            .map(|n| RateLimiter::direct(Quota::per_second(n)));
        let kibibytes =
            NonZeroU32::new(u32::try_from(cfg.max_bytes_per_second / 1024).unwrap_or(u32::MAX))
                .map(|n| (RateLimiter::direct(Quota::per_second(n)), n.get()));
        Ok(BulkClient {
            transport,
            compression: (cfg.compression_level > 0)
                .then(|| Compression::new(cfg.compression_level)),
            timeout: cfg.request_timeout,
            requests,
            kibibytes,
        })
    }

    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// Whether the cluster answers a cheap request (`GET /`): any answer but 502–504
    /// counts, a refusal of the credentials included.
    pub async fn probe(&self) -> bool {
        let timeout = self.timeout.min(Duration::from_secs(2));
        match self
            .transport
            .send(
                Method::Get,
                "/",
                HeaderMap::new(),
                None::<&()>,
                None::<&'static str>,
                Some(timeout),
            )
            .await
        {
            Ok(r) => !matches!(r.status_code().as_u16(), 502..=504),
            Err(_) => false,
        }
    }

    /// Sends one bulk body (NDJSON, uncompressed), compressed as configured; returns what
    /// came back and the bytes sent.
    pub async fn bulk(&self, body: &[u8]) -> (Reply, usize) {
        match self.compression {
            Some(level) => {
                let mut enc = GzEncoder::new(Vec::with_capacity(body.len() / 4), level);
                let _ = enc.write_all(body);
                let gz = enc.finish().unwrap_or_default();
                self.send(Bytes::from(gz), true, false).await
            }
            None => self.send(Bytes::copy_from_slice(body), false, false).await,
        }
    }

    /// Sends a bulk body already encoded: gzip-compressed when `gzip`.
    /// Sends one bulk body. `with_index`: the items' results say which index took them.
    pub async fn send(&self, payload: Bytes, gzip: bool, with_index: bool) -> (Reply, usize) {
        if let Some(l) = &self.requests {
            l.until_ready().await;
        }
        if let Some((l, burst)) = &self.kibibytes {
            let kib = u32::try_from(payload.len().div_ceil(1024))
                .unwrap_or(u32::MAX)
                .clamp(1, *burst);
            let _ = l
                .until_n_ready(NonZeroU32::new(kib).expect("clamped to at least 1"))
                .await;
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        if gzip {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        let sent = payload.len();
        let filter = if with_index {
            FILTER_PATH_WITH_INDEX
        } else {
            FILTER_PATH
        };
        let query = [("filter_path", filter)];
        let resp = self
            .transport
            .send(
                Method::Post,
                "/_bulk",
                headers,
                Some(&query),
                Some(payload),
                Some(self.timeout),
            )
            .await;
        let reply = match resp {
            Err(e) if never_sent(&e) => Reply::Unreachable(error_chain(&e)),
            Err(e) => Reply::Unanswered(error_chain(&e)),
            Ok(r) => {
                let status = r.status_code().as_u16();
                match r.bytes().await {
                    Err(e) => Reply::Unanswered(format!("reading the reply: {e}")),
                    Ok(b) if status == 200 => match response::parse(&b) {
                        Some(items) => Reply::Items(items),
                        None => Reply::Status(599, excerpt(&b)),
                    },
                    Ok(b) => Reply::Status(status, excerpt(&b)),
                }
            }
        };
        (reply, sent)
    }
}

/// A transport to `urls` with the cluster's credentials, CA, client certificate and
/// timeout: Kibana is reached with the same ones.
pub fn transport(urls: Vec<Url>, cfg: &ElasticsearchConfig) -> Result<Transport, ClientError> {
    let credentials = credentials(cfg)?;
    for w in cfg.warnings_for(&urls.iter().map(Url::to_string).collect::<Vec<_>>()) {
        tracing::warn!("{w}");
    }
    // Read even when verification is off: a path that is wrong is wrong either way.
    let ca = match &cfg.ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| ClientError::Ca(format!("cannot read {}: {e}", path.display())))?;
            Some(
                Certificate::from_pem(&pem)
                    .map_err(|e| ClientError::Ca(format!("{}: {e}", path.display())))?,
            )
        }
        None => None,
    };
    let mut b = TransportBuilder::new(MultiNodeConnectionPool::round_robin(urls, None))
        .timeout(cfg.request_timeout)
        .disable_proxy();
    match (client_identity(cfg)?, credentials) {
        // The transport takes one `auth`: with a client certificate, the other credential
        // goes as a header.
        (Some(pem), other) => {
            b = b.auth(Credentials::Certificate(ClientCertificate::Pem(pem)));
            if let Some(c) = other {
                b = b.header(AUTHORIZATION, authorization(&c)?);
            }
        }
        (None, Some(c)) => b = b.auth(c),
        (None, None) => {}
    }
    if cfg.insecure_skip_verify {
        b = b.cert_validation(CertificateValidation::None);
    } else if let Some(cert) = ca {
        b = b.cert_validation(CertificateValidation::Full(cert));
    }
    b.build().map_err(|e| match &cfg.cert_file {
        Some(path) => ClientError::ClientCert(format!("{}: {e}", path.display())),
        None => ClientError::Build(e.to_string()),
    })
}

/// The client certificate and its key as one PEM buffer, as the transport takes them.
fn client_identity(cfg: &ElasticsearchConfig) -> Result<Option<Vec<u8>>, ClientError> {
    let (Some(cert), Some(key)) = (&cfg.cert_file, &cfg.key_file) else {
        return Ok(None);
    };
    let read = |path: &std::path::Path, what: &str, marker: &str| {
        let pem = std::fs::read(path)
            .map_err(|e| ClientError::ClientCert(format!("cannot read {}: {e}", path.display())))?;
        if !String::from_utf8_lossy(&pem).contains(marker) {
            return Err(ClientError::ClientCert(format!(
                "{} holds no PEM {what}",
                path.display()
            )));
        }
        Ok(pem)
    };
    let mut pem = read(key, "private key", "PRIVATE KEY-----")?;
    pem.push(b'\n');
    pem.extend(read(cert, "certificate", "BEGIN CERTIFICATE-----")?);
    Ok(Some(pem))
}

/// The `Authorization` header a credential makes, marked sensitive (kept out of debug
/// output).
fn authorization(c: &Credentials) -> Result<HeaderValue, ClientError> {
    use base64::Engine;
    let b64 = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
    let text = match c {
        Credentials::Basic(u, p) => format!("Basic {}", b64(format!("{u}:{p}"))),
        Credentials::ApiKey(id, key) => format!("ApiKey {}", b64(format!("{id}:{key}"))),
        Credentials::EncodedApiKey(k) => format!("ApiKey {k}"),
        Credentials::Bearer(t) => format!("Bearer {t}"),
        _ => return Err(ClientError::Build("unexpected credential kind".into())),
    };
    let mut v = HeaderValue::from_str(&text).map_err(|_| {
        ClientError::Build("a credential holds a character a header cannot carry".into())
    })?;
    v.set_sensitive(true);
    Ok(v)
}

/// Whether the request failed before any of it left: no connection could be made.
pub fn never_sent(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<reqwest::Error>() {
            return r.is_connect();
        }
        source = s.source();
    }
    false
}

/// An error with its causes, `a: b: c`: a TLS failure shows its reason, not only
/// "error sending request".
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn excerpt(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(512)]).into_owned()
}

fn read_secret(key: &'static str, path: &std::path::Path) -> Result<String, ClientError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|source| ClientError::SecretFile {
            key,
            path: path.display().to_string(),
            source,
        })
}

fn credentials(cfg: &ElasticsearchConfig) -> Result<Option<Credentials>, ClientError> {
    let pick = |value: &crate::config::Secret,
                file: &Option<std::path::PathBuf>,
                key|
     -> Result<Option<String>, ClientError> {
        match file {
            Some(p) => read_secret(key, p).map(Some),
            None if !value.is_empty() => Ok(Some(value.expose().to_string())),
            None => Ok(None),
        }
    };
    if let Some(p) = pick(&cfg.password, &cfg.password_file, "password_file")? {
        return Ok(Some(Credentials::Basic(cfg.username.clone(), p)));
    }
    if let Some(k) = pick(&cfg.api_key, &cfg.api_key_file, "api_key_file")? {
        return Ok(Some(match k.split_once(':') {
            Some((id, key)) => Credentials::ApiKey(id.to_string(), key.to_string()),
            None => Credentials::EncodedApiKey(k),
        }));
    }
    if let Some(t) = pick(
        &cfg.bearer_token,
        &cfg.bearer_token_file,
        "bearer_token_file",
    )? {
        return Ok(Some(Credentials::Bearer(t)));
    }
    Ok(None)
}
