//! TLS on the listeners: the certificate and key of `[global.tls]`, which ports speak TLS
//! (`tls.port`, or all of them), and the handshake on an accepted connection.
//!
//! The handshake runs on the connection's own task, bounded by the header timeout (a client
//! that opens a connection and never finishes its handshake is cut off like one that never
//! sends a request head), then the decrypted stream goes to `listener::serve_connection`
//! like any other. ALPN offers HTTP/2 and HTTP/1.1. With `dual_protocol`, a connection whose
//! first byte is not a TLS handshake record is served as plain HTTP.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio_rustls::TlsAcceptor;

use crate::{Config, Error, Result};

/// The first byte of a TLS record carrying a handshake message (a ClientHello).
const HANDSHAKE_RECORD: u8 = 0x16;

/// How a listener's connections are served.
#[derive(Clone)]
pub enum Transport {
    Plain,
    Tls {
        acceptor: TlsAcceptor,
        /// Plain HTTP accepted too (`tls.dual_protocol`).
        dual: bool,
    },
}

impl Transport {
    /// The transport of TCP `port` under `config`; the certificate is read once and shared
    /// through `loaded`.
    pub fn for_port(
        config: &Config,
        port: u16,
        loaded: &mut Option<Arc<ServerConfig>>,
    ) -> Result<Self> {
        let tls = &config.tls;
        let (Some(certs), Some(key)) = (&tls.certs, &tls.key) else {
            return Ok(Self::Plain);
        };
        if !tls.port.is_empty() && !tls.port.contains(&port) {
            return Ok(Self::Plain);
        }
        let server_config = match loaded {
            Some(server_config) => Arc::clone(server_config),
            None => {
                let server_config = server_config(certs, key)?;
                *loaded = Some(Arc::clone(&server_config));
                server_config
            }
        };
        Ok(Self::Tls { acceptor: TlsAcceptor::from(server_config), dual: tls.dual_protocol })
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Self::Tls { .. })
    }
}

/// A rustls server configuration from PEM files: the chain in `certs`, its key in `key`.
pub fn server_config(certs: &std::path::Path, key: &std::path::Path) -> Result<Arc<ServerConfig>> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(certs).and_then(Iterator::collect).map_err(|error| {
            Error::internal(format!("tls.certs: cannot read {}: {error}", certs.display()))
        })?;
    if chain.is_empty() {
        return Err(Error::internal(format!(
            "tls.certs: {} holds no certificate",
            certs.display()
        )));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|error| {
        Error::internal(format!(
            "tls.key: cannot read a private key from {}: {error}",
            key.display()
        ))
    })?;
    crate::net::outbound::install_tls_provider();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| Error::internal(format!("TLS: {error}")))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|error| {
            Error::internal(format!(
                "tls.certs and tls.key ({} and {}) do not make a usable certificate: {error}",
                certs.display(),
                key.display()
            ))
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A connection after its handshake (or, with `dual_protocol`, one that chose plain HTTP).
pub enum Accepted<S> {
    Tls(Box<tokio_rustls::server::TlsStream<Prefixed<S>>>),
    Plain(Prefixed<S>),
}

/// Completes the TLS handshake on `stream` within `timeout`; `None` if it failed or took
/// too long (the connection is then dropped).
pub async fn accept<S>(
    stream: S,
    acceptor: &TlsAcceptor,
    dual: bool,
    timeout: Duration,
) -> Option<Accepted<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let handshake = async {
        let mut stream = stream;
        let mut first = [0u8; 1];
        if stream.read_exact(&mut first).await.is_err() {
            return None;
        }
        let stream = Prefixed { prefix: Some(first[0]), inner: stream };
        if first[0] != HANDSHAKE_RECORD {
            return dual.then_some(Accepted::Plain(stream));
        }
        match acceptor.accept(stream).await {
            Ok(tls) => Some(Accepted::Tls(Box::new(tls))),
            Err(error) => {
                tracing::debug!(%error, "TLS handshake failed");
                None
            }
        }
    };
    match tokio::time::timeout(timeout, handshake).await {
        Ok(Some(accepted)) => Some(accepted),
        Ok(None) => {
            metrics::counter!("tuwunel_http_tls_handshake_failures_total").increment(1);
            None
        }
        Err(_) => {
            metrics::counter!("tuwunel_http_timeouts_total", "kind" => "tls_handshake")
                .increment(1);
            None
        }
    }
}

/// A stream with the one byte read to tell TLS from plain HTTP put back in front.
pub struct Prefixed<S> {
    prefix: Option<u8>,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(byte) = this.prefix
            && buf.remaining() > 0
        {
            buf.put_slice(&[byte]);
            this.prefix = None;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_byte_read_to_choose_comes_back_first() {
        let (mut client, server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"GET / HTTP/1.1\r\n").await.expect("w");
        let mut server = server;
        let mut first = [0u8; 1];
        server.read_exact(&mut first).await.expect("first");
        let mut prefixed = Prefixed { prefix: Some(first[0]), inner: server };
        let mut line = [0u8; 16];
        prefixed.read_exact(&mut line).await.expect("line");
        assert_eq!(&line, b"GET / HTTP/1.1\r\n");
    }
}
