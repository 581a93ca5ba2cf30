//! `--tls-cert` and `--tls-key`: the PEM files read (bounded), the pair checked by the library, and the
//! certificate's validity read for `--check` and the start's log line. A start, a reload and `--check` all
//! come here, so a pair that one of them refuses, all refuse with the same line.

use std::{
    fs::File,
    io::Read,
    path::{Path, PathBuf},
};

use poolserver::{
    TlsConfig,
    rustls::pki_types::{CertificateDer, pem::PemObject},
};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{errors, errors::CliError};

/// Largest certificate or key file read: far above a real chain.
const MAX_PEM_BYTES: u64 = 1 << 20;

/// A certificate and key that make a working `TlsConfig`.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub config: TlsConfig,
    /// When the server's certificate stops being valid; `None` when its validity could not be read.
    pub not_after: Option<OffsetDateTime>,
}

impl TlsFiles {
    /// Reads and checks the pair; the error is one line that names the file and what to do.
    pub fn load(cert: &Path, key: &Path) -> Result<TlsFiles, CliError> {
        let cert_pem = read_pem(cert, "certificate")?;
        let key_pem = read_pem(key, "key")?;
        let config = TlsConfig::from_pem(&cert_pem, &key_pem).map_err(|e| {
            let reason = match e {
                poolserver::Error::Config { reason, .. } => reason,
                e => e.to_string(),
            };
            CliError::Usage(format!(
                "TLS certificate {} with key {}: {reason}; give --tls-cert the server's chain and --tls-key its key",
                errors::path(cert),
                errors::path(key)
            ))
        })?;
        let not_after =
            CertificateDer::pem_slice_iter(&cert_pem).next().and_then(Result::ok).and_then(|der| {
                let (_, parsed) = X509Certificate::from_der(&der).ok()?;
                Some(parsed.validity().not_after.to_datetime())
            });
        Ok(TlsFiles { cert: cert.to_owned(), key: key.to_owned(), config, not_after })
    }

    /// Its certificate is no longer valid.
    pub fn has_expired(&self) -> bool {
        self.not_after.is_some_and(|not_after| not_after < OffsetDateTime::now_utc())
    }

    /// "expires 2027-12-07T22:10:00Z (in 364 days)", or that it has expired.
    pub fn expiry(&self) -> String {
        let Some(not_after) = self.not_after else { return "expiry unknown".to_owned() };
        let at = not_after.format(&Rfc3339).unwrap_or_else(|_| not_after.to_string());
        let left = not_after - OffsetDateTime::now_utc();
        if left.is_negative() {
            format!("expired {at} ({} days ago)", -left.whole_days())
        } else {
            format!("expires {at} (in {} days)", left.whole_days())
        }
    }
}

/// One PEM file's bytes, at most `MAX_PEM_BYTES`.
fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>, CliError> {
    let fail = |why: String| {
        CliError::Usage(format!("cannot read the TLS {what} file {}: {why}", errors::path(path)))
    };
    let file = File::open(path).map_err(|e| fail(e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1).read_to_end(&mut bytes).map_err(|e| fail(e.to_string()))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(fail("it is larger than 1 MiB; a PEM certificate or key is a few KiB".to_owned()));
    }
    Ok(bytes)
}
