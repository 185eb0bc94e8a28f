//! TLS settings of the S3 client that the SDK's own HTTP client cannot express: a check of a
//! CA bundle before the SDK sees it (the SDK panics on a PEM it cannot parse), and an HTTP
//! client that does not verify the server's certificate (`insecureSkipTlsVerify`). Pure but
//! for the connections the client makes.

use std::sync::Arc;
use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    HttpConnector, HttpConnectorFuture, SharedHttpClient, SharedHttpConnector, http_client_fn,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_types::body::SdkBody;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector as TcpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// Checks that `pem` holds at least one certificate usable as a trust anchor; the error says
/// what is wrong with it.
pub fn check_ca_bundle(pem: &[u8]) -> Result<usize, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("no PEM certificate (-----BEGIN CERTIFICATE-----) in it".into());
    }
    let mut roots = rustls::RootCertStore::empty();
    for (i, c) in certs.iter().enumerate() {
        roots
            .add(c.clone())
            .map_err(|e| format!("certificate {} cannot be trusted: {e}", i + 1))?;
    }
    Ok(certs.len())
}

/// Accepts any server certificate; signatures of the handshake are still checked, so the
/// connection is encrypted, but to whoever answers.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

type Https = hyper_rustls::HttpsConnector<TcpConnector>;

/// An HTTP(S) connector that does not verify server certificates.
#[derive(Debug, Clone)]
struct InsecureConnector {
    client: Client<Https, SdkBody>,
    /// How long a response's headers may take (the SDK's read timeout, which this connector
    /// replaces).
    read_timeout: Duration,
}

impl HttpConnector for InsecureConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let request = match request.try_into_http1x() {
            Ok(r) => r,
            Err(e) => return HttpConnectorFuture::ready(Err(ConnectorError::user(e.into()))),
        };
        let fut = self.client.request(request);
        let read_timeout = self.read_timeout;
        HttpConnectorFuture::new(async move {
            match tokio::time::timeout(read_timeout, fut).await {
                Err(_) => Err(ConnectorError::timeout(
                    format!("no response within {read_timeout:?}").into(),
                )),
                Ok(Err(e)) if e.is_connect() => Err(ConnectorError::io(e.into())),
                Ok(Err(e)) => Err(ConnectorError::other(e.into(), None)),
                Ok(Ok(resp)) => HttpResponse::try_from(resp.map(SdkBody::from_body_1_x))
                    .map_err(|e| ConnectorError::other(e.into(), None)),
            }
        })
    }
}

/// An HTTP client for the SDK that speaks TLS without verifying the server's certificate
/// (and plain HTTP to `http://` endpoints).
pub fn insecure_http_client(connect_timeout: Duration, read_timeout: Duration) -> SharedHttpClient {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
                .with_no_client_auth()
        });
    // The provider's defaults always include safe protocol versions.
    let config = match config {
        Ok(c) => c,
        Err(e) => unreachable!("aws-lc-rs supports TLS 1.2 and 1.3: {e}"),
    };
    let mut tcp = TcpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(connect_timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp);
    let connector = SharedHttpConnector::new(InsecureConnector {
        client: Client::builder(TokioExecutor::new()).build(https),
        read_timeout,
    });
    http_client_fn(move |_, _| connector.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed CA (P-256, no key kept), made once with `openssl req -x509`.
    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBjjCCATOgAwIBAgIUKhDqMw2yHy/sK1MLEwcVtbpqxvIwCgYIKoZIzj0EAwIw\nGzEZMBcGA1UEAwwQaG9sZGZhc3QgdGVzdCBDQTAgFw0yNjEyMDcwNTA4NDZaGA8y\nMTI2MTExMzA1MDg0NlowGzEZMBcGA1UEAwwQaG9sZGZhc3QgdGVzdCBDQTBZMBMG\nByqGSM49AgEGCCqGSM49AwEHA0IABOh4MfXeawQPkLYxaLHTfkSt0qQ0rUJIvK9M\nOz9+/DaJAfPp+tapIOJkCm3Ki7udavY6gDzdxK5cPyH/fsUR/CKjUzBRMB0GA1Ud\nDgQWBBTOnprbv/Kb2o9K/v9XVIC0v3NkUDAfBgNVHSMEGDAWgBTOnprbv/Kb2o9K\n/v9XVIC0v3NkUDAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0kAMEYCIQCI\najU+pmR+D/wJfcMt9i5D/LTe+/L1NQZDUohJYvby6wIhAO9EZLIin3TsB4zJTY2+\n1JsuOHj9iS/fV9MeSela9QFv\n-----END CERTIFICATE-----\n";

    #[test]
    fn ca_bundles_are_checked_before_use() {
        assert_eq!(check_ca_bundle(CA.as_bytes()), Ok(1));
        assert_eq!(check_ca_bundle(format!("{CA}{CA}").as_bytes()), Ok(2));
        assert!(check_ca_bundle(b"").expect_err("empty").contains("no PEM"));
        assert!(
            check_ca_bundle(
                b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n"
            )
            .is_err()
        );
        let junk = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(
            check_ca_bundle(junk)
                .expect_err("not a certificate")
                .contains("cannot be trusted")
        );
    }
}
