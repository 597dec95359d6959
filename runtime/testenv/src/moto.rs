//! moto's EC2 server (installed by `just moto`) on a free loopback port, for tests, benchmarks
//! and `just run`: it dies with the process that started it (parent-death signal), and with
//! the [`Moto`] value.
//!
//! A few AWS Query API calls prepare what an AWS MachineClass refers to (an AMI, the default
//! VPC's subnet and security group, an IAM instance profile, a key pair): moto checks that
//! they exist, as EC2 does, but chooses their IDs itself.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::ChildGuard;
use crate::{Error, Result, cache_root, io_err, tail};

/// The region the local stack uses.
pub const REGION: &str = "eu-west-1";
/// Any access key works with moto: it does not check signatures.
pub const ACCESS_KEY: &str = "AKIAIOSFODNN7EXAMPLE";
pub const SECRET_KEY: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

/// Where `just moto` installs moto's server.
pub fn server_bin() -> PathBuf {
    cache_root().join("moto-venv/bin/moto_server")
}

/// A running moto server; killed when dropped.
pub struct Moto {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT`: the provider's EC2 endpoint.
    pub endpoint: String,
    process: ChildGuard,
    log: PathBuf,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Moto {
    /// Starts moto on a free loopback port and waits until it accepts connections.
    pub fn start() -> Result<Moto> {
        let bin = server_bin();
        if !bin.is_file() {
            return Err(Error::MissingBinary {
                what: "moto_server".into(),
                path: bin,
                install: "just moto",
            });
        }
        let dir = tempfile::Builder::new()
            .prefix("mcm-wasm-moto-")
            .tempdir()
            .map_err(io_err("creating moto's directory"))?;
        let log = dir.path().join("moto.log");
        let (process, port) = crate::spawn_on_free_port("moto_server", &log, |port| {
            let mut cmd = Command::new(&bin);
            cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
            Ok(cmd)
        })?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        Ok(Moto {
            addr,
            endpoint: format!("http://{addr}"),
            process,
            log,
            _dir: dir,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("an HTTP client"),
        })
    }

    /// moto's process id.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// moto's log (its request log).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of moto's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// One AWS Query API action of `service` (API `version`) in `region`; the XML answer, or an
    /// error with moto's answer when it is not a success.
    pub async fn query(
        &self,
        service: &str,
        version: &str,
        region: &str,
        action: &str,
        params: &[(&str, &str)],
    ) -> std::result::Result<String, MotoError> {
        let mut form: Vec<(&str, &str)> = vec![("Action", action), ("Version", version)];
        form.extend_from_slice(params);
        let body = form
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        // moto takes the region from the credential scope and does not check the signature.
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/20250101/{region}/{service}/aws4_request, SignedHeaders=host, Signature=00"
        );
        let resp = self
            .http
            .post(format!("{}/", self.endpoint))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("authorization", auth)
            .body(body)
            .send()
            .await
            .map_err(|source| MotoError::Http {
                action: action.to_string(),
                source,
            })?;
        let status = resp.status();
        let text = resp.text().await.map_err(|source| MotoError::Http {
            action: action.to_string(),
            source,
        })?;
        if status.is_success() {
            Ok(text)
        } else {
            Err(MotoError::Refused {
                action: action.to_string(),
                status,
                body: text,
            })
        }
    }

    /// One EC2 action in `region`.
    pub async fn ec2(
        &self,
        region: &str,
        action: &str,
        params: &[(&str, &str)],
    ) -> std::result::Result<String, MotoError> {
        self.query("ec2", "2016-11-15", region, action, params)
            .await
    }

    /// What an AWS MachineClass in [`REGION`] refers to, made to exist in moto: an AMI, the
    /// default VPC's subnet and security group, the IAM instance profile `instance_profile` and
    /// the key pair `key_pair` (when given).
    pub async fn class_resources(
        &self,
        instance_profile: &str,
        key_pair: Option<&str>,
    ) -> std::result::Result<ClassResources, MotoError> {
        let images = self
            .ec2(REGION, "DescribeImages", &[("Owner.1", "amazon")])
            .await?;
        let ami = first_text(&images, "imageId").ok_or(MotoError::Missing("moto serves no AMI"))?;
        let subnets = self.ec2(REGION, "DescribeSubnets", &[]).await?;
        let subnet = first_text(&subnets, "subnetId")
            .ok_or(MotoError::Missing("moto has no default subnet"))?;
        let groups = self.ec2(REGION, "DescribeSecurityGroups", &[]).await?;
        let security_group = first_text(&groups, "groupId")
            .ok_or(MotoError::Missing("moto has no default security group"))?;
        let profiles = self
            .query(
                "iam",
                "2010-05-08",
                "us-east-1",
                "ListInstanceProfiles",
                &[],
            )
            .await?;
        if !profiles.contains(&format!(
            "<InstanceProfileName>{instance_profile}</InstanceProfileName>"
        )) {
            self.query(
                "iam",
                "2010-05-08",
                "us-east-1",
                "CreateInstanceProfile",
                &[("InstanceProfileName", instance_profile)],
            )
            .await?;
        }
        if let Some(key) = key_pair {
            let keys = self.ec2(REGION, "DescribeKeyPairs", &[]).await?;
            if !keys.contains(&format!("<keyName>{key}</keyName>")) {
                self.ec2(REGION, "CreateKeyPair", &[("KeyName", key)])
                    .await?;
            }
        }
        Ok(ClassResources {
            ami,
            subnet,
            security_group,
        })
    }
}

/// An AWS Query call to moto that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum MotoError {
    #[error("moto {action}: {source}")]
    Http {
        action: String,
        source: reqwest::Error,
    },
    #[error("moto {action}: {status}: {body}")]
    Refused {
        action: String,
        status: reqwest::StatusCode,
        body: String,
    },
    #[error("{0}")]
    Missing(&'static str),
}

/// IDs moto chose for what a MachineClass refers to.
#[derive(Clone, Debug)]
pub struct ClassResources {
    pub ami: String,
    pub subnet: String,
    pub security_group: String,
}

/// The text of the first `<tag>` element of an XML answer.
pub fn first_text(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&format!("</{tag}>"))?;
    Some(xml[start..end].trim().to_string())
}

/// Form-urlencoding of one key or value.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_text_finds_the_first_element() {
        let xml = "<r><item><imageId> ami-1 </imageId></item><imageId>ami-2</imageId></r>";
        assert_eq!(first_text(xml, "imageId").as_deref(), Some("ami-1"));
        assert_eq!(first_text(xml, "subnetId"), None);
    }

    #[test]
    fn encode_escapes_reserved_bytes() {
        assert_eq!(encode("a b/c=d~"), "a%20b%2Fc%3Dd~");
    }
}
