//! TLS to PostgreSQL, the board's (README, Many hosts) and a store's (README, The store in
//! PostgreSQL): off unless asked, and when asked, always verified.
//!
//! - `--board-ca FILE` (`SUPERVISOR_BOARD_CA`): TLS is required, and the server's certificate
//!   must chain to a certificate of FILE (PEM) and name the host the URL connects to.
//! - `sslmode=require` in the URL, without `--board-ca`: TLS is required, verified against the
//!   system's roots (`/etc/ssl/certs`, as `rustls-native-certs` finds them). Stricter than
//!   libpq, whose `require` encrypts without verifying: an unverified TLS session stops a
//!   passive listener, not an impostor of the board, which would then be handed every job.
//! - Otherwise (`sslmode` absent, `prefer` or `disable`): no TLS, as over a Unix socket, where
//!   PostgreSQL offers none.
//!
//! Every connection of the daemon to the board (renewals, the listener, the mirror, queries)
//! uses the same settings, and so does the store's in PostgreSQL (`--store`, with
//! `--store-ca`); rustls with the *ring* provider, built for this config only (no process-wide
//! default provider).

/// Why TLS cannot be set up as asked: the message names the file, or the roots missing.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub String);
use std::path::Path;
use std::sync::Arc;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// The TLS connector every board connection uses; with TLS off, the config says
/// `sslmode=disable`, so it is never asked to connect.
pub type Connector = MakeRustlsConnect;

/// Settles TLS for `pg` (as the module's comment says): sets its `sslmode`, and returns the
/// connector to connect with.
pub fn settle(pg: &mut tokio_postgres::Config, ca: Option<&Path>) -> Result<Connector, TlsError> {
    let roots = match ca {
        Some(file) => Some(roots_from(file)?),
        None if pg.get_ssl_mode() == SslMode::Require => Some(system_roots()?),
        None => None,
    };
    let mode = if roots.is_some() {
        SslMode::Require
    } else {
        SslMode::Disable
    };
    pg.ssl_mode(mode);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| TlsError(format!("cannot set up TLS: {err}")))?;
    let config = builder
        .with_root_certificates(roots.unwrap_or_else(rustls::RootCertStore::empty))
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// The certificates of the PEM file `file`: at least one, every one valid.
fn roots_from(file: &Path) -> Result<rustls::RootCertStore, TlsError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let shown = file.display();
    let certs = CertificateDer::pem_file_iter(file)
        .map_err(|err| TlsError(format!("cannot read the CA file {shown}: {err}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| {
            TlsError(format!(
                "the CA file {shown} is not PEM certificates: {err}"
            ))
        })?;
    if certs.is_empty() {
        return Err(TlsError(format!(
            "the CA file {shown} holds no certificate (expected PEM `BEGIN CERTIFICATE` blocks)"
        )));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|err| TlsError(format!("the CA file {shown}: {err}")))?;
    }
    Ok(roots)
}

/// The system's root certificates.
fn system_roots() -> Result<rustls::RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        return Err(TlsError(format!(
            "sslmode=require: no system root certificate found ({}); give the server's CA with --board-ca (or --store-ca) FILE",
            if why.is_empty() {
                "none installed".to_owned()
            } else {
                why.join("; ")
            }
        )));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> tokio_postgres::Config {
        url.parse().expect("a valid test URL")
    }

    #[test]
    fn tls_is_off_unless_asked() {
        for url in [
            "host=/run/postgresql dbname=board",
            "host=db dbname=board sslmode=prefer",
            "host=db dbname=board sslmode=disable",
        ] {
            let mut pg = config(url);
            settle(&mut pg, None).expect("no TLS needs nothing");
            assert_eq!(pg.get_ssl_mode(), SslMode::Disable, "{url}");
        }
    }

    #[test]
    fn a_ca_file_requires_tls_and_must_hold_certificates() {
        let dir = std::env::temp_dir().join(format!("sv-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let mut pg = config("host=db dbname=board");
        let Err(err) = settle(&mut pg, Some(&empty)) else {
            panic!("a file without a certificate was taken");
        };
        assert!(err.to_string().contains("holds no certificate"), "{err}");
        let missing = dir.join("missing.pem");
        let Err(err) = settle(&mut pg, Some(&missing)) else {
            panic!("a missing file was taken");
        };
        assert!(err.to_string().contains("cannot read the CA file"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
