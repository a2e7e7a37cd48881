//! Test certificates: a CA and the server and client certificates it signs, for etcd over TLS.

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

impl TlsFiles {
    /// Generates a CA and the certificates it signs into `dir`.
    pub(super) fn generate(dir: &Path) -> Result<Self, TestingError> {
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "standin test CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate()?;
        let ca_pem = ca.self_signed(&ca_key)?.pem();
        let issuer = Issuer::new(ca, ca_key);
        let leaf = |names: &[&str], name: &str, usages: Vec<ExtendedKeyUsagePurpose>| {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let mut params = CertificateParams::new(names)?;
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = usages;
            let key = KeyPair::generate()?;
            let cert = params.signed_by(&key, &issuer)?;
            Ok::<_, rcgen::Error>((cert.pem(), key.serialize_pem()))
        };
        // Client auth too: etcd's gRPC gateway dials etcd itself with the
        // server certificate, and --client-cert-auth checks it.
        let (server_pem, server_key) = leaf(
            &["127.0.0.1", "localhost"],
            "standin test etcd",
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )?;
        let (client_pem, client_key) = leaf(
            &[],
            "standin test client",
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        )?;
        let write = |name: &str, pem: &str| {
            let path = dir.join(name);
            std::fs::write(&path, pem).map_err(io(format!("writing {}", path.display())))?;
            Ok::<_, TestingError>(path)
        };
        Ok(Self {
            ca_file: write("ca.pem", &ca_pem)?,
            server_cert_file: write("server.pem", &server_pem)?,
            server_key_file: write("server-key.pem", &server_key)?,
            client_cert_file: write("client.pem", &client_pem)?,
            client_key_file: write("client-key.pem", &client_key)?,
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
