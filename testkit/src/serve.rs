//! Accepting connections for the in-tree servers, in plain HTTP or TLS.

use bytes::Bytes;
use http_body_util::Full;
use std::fs;
use std::path::Path;
use std::sync::Arc;

/// A server on a free loopback port, on a runtime of its own (returned: the server lives
/// as long as it). Connections are served with `handler`, over TLS when given; while
/// `down` is set they are closed at once, as in an outage. Returns the runtime and URL.
pub fn serve<H, Fut, B>(
    tls: Option<tokio_rustls::TlsAcceptor>,
    down: Arc<std::sync::atomic::AtomicBool>,
    handler: H,
) -> (tokio::runtime::Runtime, String)
where
    H: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<hyper::Response<B>, std::io::Error>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use hyper_util::rt::TokioIo;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime for the test server");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("a loopback port");
    let addr = listener.local_addr().expect("the bound address");
    let scheme = if tls.is_some() { "https" } else { "http" };
    rt.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            if down.load(std::sync::atomic::Ordering::SeqCst) {
                drop(stream);
                continue;
            }
            let (handler, tls) = (handler.clone(), tls.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(&handler);
                let http = hyper::server::conn::http1::Builder::new();
                match tls {
                    Some(acceptor) => {
                        if let Ok(s) = acceptor.accept(stream).await {
                            let _ = http.serve_connection(TokioIo::new(s), svc).await;
                        }
                    }
                    None => {
                        let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                    }
                }
            });
        }
    });
    (rt, format!("{scheme}://{addr}"))
}

/// How a test server presents itself over TLS.
#[derive(Debug, Clone, Default)]
pub struct TlsSetup {
    /// Names in the server's certificate; `None`: `localhost` and `127.0.0.1`.
    pub names: Option<Vec<String>>,
    /// The server's certificate expired in 2020.
    pub expired: bool,
    /// Require a client certificate signed by the CA. One is written next to the CA's PEM,
    /// as `client.pem` and `client.key`.
    pub client_auth: bool,
}

pub fn tls_acceptor(ca_pem: &Path) -> tokio_rustls::TlsAcceptor {
    tls_acceptor_with(ca_pem, &TlsSetup::default())
}

/// A TLS acceptor with a certificate from a fresh CA, whose PEM is written to `ca_pem`.
pub fn tls_acceptor_with(ca_pem: &Path, setup: &TlsSetup) -> tokio_rustls::TlsAcceptor {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    fs::write(ca_pem, ca.pem()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let names = setup
        .names
        .clone()
        .unwrap_or_else(|| vec!["localhost".to_string(), "127.0.0.1".to_string()]);
    let mut params = rcgen::CertificateParams::new(names).unwrap();
    if setup.expired {
        params.not_before = rcgen::date_time_ymd(2019, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 1, 1);
    }
    let cert = params.signed_by(&key, &ca).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if setup.client_auth {
        let client_key = rcgen::KeyPair::generate().unwrap();
        let client = rcgen::CertificateParams::new(vec!["logferry".to_string()])
            .unwrap()
            .signed_by(&client_key, &ca)
            .unwrap();
        fs::write(ca_pem.with_file_name("client.pem"), client.pem()).unwrap();
        fs::write(
            ca_pem.with_file_name("client.key"),
            client_key.serialize_pem(),
        )
        .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let config = builder
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

pub type Resp = hyper::Response<Full<Bytes>>;

/// A JSON answer with `headers` besides its content type.
pub fn json_reply(status: u16, body: serde_json::Value, headers: &[(&str, &str)]) -> Resp {
    let mut b = hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}
