//! The node's TLS identity: an ECDSA key and a self-signed certificate in `data_dir`, created once
//! by `syncnode init` (or on first start). The device ID is the BLAKE3 hash of the certificate.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::core::DeviceId;

pub struct Identity {
    pub certificate: CertificateDer<'static>,
    pub key: PrivatePkcs8KeyDer<'static>,
    pub device_id: DeviceId,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity { certificate: self.certificate.clone(), key: self.key.clone_key(), device_id: self.device_id }
    }
}

fn paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    (data_dir.join("cert.der"), data_dir.join("key.der"))
}

impl Identity {
    pub fn exists(data_dir: &Path) -> bool {
        let (cert, key) = paths(data_dir);
        cert.exists() && key.exists()
    }

    pub fn load(data_dir: &Path) -> Result<Identity> {
        let (cert_path, key_path) = paths(data_dir);
        let cert = std::fs::read(&cert_path)
            .with_context(|| format!("no identity in {} (run `syncnode init`)", data_dir.display()))?;
        let key = std::fs::read(&key_path).with_context(|| format!("cannot read {}", key_path.display()))?;
        Ok(Identity {
            device_id: DeviceId::from_certificate(&cert),
            certificate: CertificateDer::from(cert),
            key: PrivatePkcs8KeyDer::from(key),
        })
    }

    /// Creates a new key and certificate (mode 0600 for the key) unless they exist.
    pub fn load_or_create(data_dir: &Path) -> Result<Identity> {
        if Identity::exists(data_dir) {
            return Identity::load(data_dir);
        }
        std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
        let generated = rcgen::generate_simple_self_signed(vec!["syncnode".to_string()])
            .context("generating the TLS certificate")?;
        let (cert_path, key_path) = paths(data_dir);
        write_private(&key_path, generated.signing_key.serialize_der().as_slice())?;
        std::fs::write(&cert_path, generated.cert.der().as_ref())
            .with_context(|| format!("cannot write {}", cert_path.display()))?;
        Identity::load(data_dir)
    }

    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}
