//! Certificates for a local control plane, generated fresh for every start.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::{Result, io_err};

/// The files written into the pki directory.
pub(crate) struct Files {
    pub ca_cert: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
    pub sa_public_key: PathBuf,
    pub sa_private_key: PathBuf,
}

fn write(dir: &Path, name: &str, contents: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, contents).map_err(io_err(format!("writing {}", path.display())))?;
    Ok(path)
}

/// A fresh CA and a serving certificate for 127.0.0.1/localhost signed by it.
pub(crate) struct Serving {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A CA named `ca_name` and a loopback serving certificate with common name `server_name`.
pub(crate) fn loopback_serving(ca_name: &str, server_name: &str) -> Result<Serving> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let serving_key = KeyPair::generate()?;
    let mut serving = CertificateParams::new(vec!["localhost".to_owned()])?;
    serving
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    serving
        .distinguished_name
        .push(DnType::CommonName, server_name);
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    serving.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let serving_cert = serving.signed_by(&serving_key, &issuer)?;
    Ok(Serving {
        ca_pem: ca_cert.pem(),
        cert_pem: serving_cert.pem(),
        key_pem: serving_key.serialize_pem(),
        issuer,
    })
}

/// A CA, a serving certificate for 127.0.0.1/localhost, an admin client certificate
/// (CN=admin, O=system:masters) and a service-account key pair.
pub(crate) fn generate(dir: &Path) -> Result<Files> {
    let serving = loopback_serving("mcm-wasm-testenv-ca", "kube-apiserver")?;
    let issuer = &serving.issuer;

    let admin_key = KeyPair::generate()?;
    let mut admin = CertificateParams::new(Vec::<String>::new())?;
    admin.distinguished_name.push(DnType::CommonName, "admin");
    admin
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    admin.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let admin_cert = admin.signed_by(&admin_key, issuer)?;

    let sa_key = KeyPair::generate()?;

    Ok(Files {
        ca_cert: write(dir, "ca.crt", &serving.ca_pem)?,
        serving_cert: write(dir, "apiserver.crt", &serving.cert_pem)?,
        serving_key: write(dir, "apiserver.key", &serving.key_pem)?,
        admin_cert: write(dir, "admin.crt", &admin_cert.pem())?,
        admin_key: write(dir, "admin.key", &admin_key.serialize_pem())?,
        sa_public_key: write(dir, "sa.pub", &sa_key.public_key_pem())?,
        sa_private_key: write(dir, "sa.key", &sa_key.serialize_pem())?,
    })
}
