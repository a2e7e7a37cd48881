//! Test certificates: a CA and the server and client certificates it signs, for etcd and standin over TLS.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use super::{TestingError, io};
use crate::config::TlsConfig;

/// The PEM files of a TLS test server, in its temporary directory.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA that signed both certificates.
    pub ca_file: PathBuf,
    /// etcd's certificate, for 127.0.0.1 and localhost.
    pub server_cert_file: PathBuf,
    /// Its key.
    pub server_key_file: PathBuf,
    /// A client certificate etcd accepts.
    pub client_cert_file: PathBuf,
    /// Its key.
    pub client_key_file: PathBuf,
}

/// A test CA that issues server and client certificates into a directory.
pub struct TestCa {
    dir: PathBuf,
    /// Starts the names of the files it issues, so two CAs share a directory.
    stem: String,
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate's PEM file, for `caFile` / `clientCaFile`.
    pub ca_file: PathBuf,
}

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The certificate.
    pub cert_file: PathBuf,
    /// Its private key.
    pub key_file: PathBuf,
}

impl TestCa {
    /// A fresh CA named `name`, its certificate written to `dir`.
    pub fn generate(dir: &Path, name: &str) -> Result<Self, TestingError> {
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, name);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate()?;
        let ca_pem = ca.self_signed(&ca_key)?.pem();
        let stem = file_stem(name);
        let ca_file = write(dir, &format!("{stem}.pem"), &ca_pem)?;
        Ok(Self {
            dir: dir.to_owned(),
            stem,
            issuer: Issuer::new(ca, ca_key),
            ca_file,
        })
    }

    /// A server certificate for 127.0.0.1 and localhost, usable as a client
    /// certificate too (etcd's gateway dials etcd with it).
    pub fn server(&self, common_name: &str) -> Result<CertFiles, TestingError> {
        self.issue(
            &["127.0.0.1", "localhost"],
            common_name,
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )
    }

    /// A client certificate whose subject is `CN=common_name`.
    pub fn client(&self, common_name: &str) -> Result<CertFiles, TestingError> {
        self.issue(&[], common_name, vec![ExtendedKeyUsagePurpose::ClientAuth])
    }

    fn issue(
        &self,
        names: &[&str],
        common_name: &str,
        usages: Vec<ExtendedKeyUsagePurpose>,
    ) -> Result<CertFiles, TestingError> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = usages;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let stem = format!("{}-{}", self.stem, file_stem(common_name));
        Ok(CertFiles {
            cert_file: write(&self.dir, &format!("{stem}.pem"), &cert.pem())?,
            key_file: write(&self.dir, &format!("{stem}-key.pem"), &key.serialize_pem())?,
        })
    }
}

/// A file name made of `name`'s letters and digits.
fn file_stem(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

fn write(dir: &Path, name: &str, pem: &str) -> Result<PathBuf, TestingError> {
    let path = dir.join(name);
    std::fs::write(&path, pem).map_err(io(format!("writing {}", path.display())))?;
    Ok(path)
}

impl TlsFiles {
    /// Generates a CA and the certificates it signs into `dir`.
    pub(super) fn generate(dir: &Path) -> Result<Self, TestingError> {
        let ca = TestCa::generate(dir, "standin test CA")?;
        let server = ca.server("standin test etcd")?;
        let client = ca.client("standin test client")?;
        Ok(Self {
            ca_file: ca.ca_file,
            server_cert_file: server.cert_file,
            server_key_file: server.key_file,
            client_cert_file: client.cert_file,
            client_key_file: client.key_file,
        })
    }

    /// The `etcd.tls` config of a client with the test client certificate.
    pub fn client_config(&self) -> TlsConfig {
        TlsConfig {
            ca_file: self.ca_file.clone(),
            cert_file: Some(self.client_cert_file.clone()),
            key_file: Some(self.client_key_file.clone()),
            domain: None,
        }
    }
}
