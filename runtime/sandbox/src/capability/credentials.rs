//! The `credentials` capability: host-brokered cloud credentials (contract 0.1.1), opt-in per
//! provider (`ProviderSettings::broker_credentials`).
//!
//! With brokering on, the secret's credential keys are taken out of every request before it
//! enters the sandbox ([`withhold`]) and kept on the host for the call; the guest learns only
//! their names (`withheld-keys`) and asks the host to sign a request with them
//! (`send-aws-sigv4`), which then goes out through the `http` capability like any other
//! request: allowlist, deadline and body cap apply. The guest never holds the keys, so it
//! cannot send them anywhere, to an allowed host or not.
//!
//! Scheme: AWS Signature Version 4, through AWS's `aws-sigv4` crate, with the key names
//! machine-controller-manager-provider-aws reads (values trimmed, as provider-aws does).
//!
//! Its view of a call is borrowed from two units: the withheld credentials (its own state) and
//! the call's [`HttpCall`], through which a signed request is sent.

use std::time::SystemTime;

use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;

use wasmtime::component::{HasData, Linker};

use super::http::HttpCall;
use crate::bindings::mcm::driver::credentials as wit;
use crate::bindings::mcm::driver::http::{Error, Request, Response};
use mcm_driver::SecretData;

/// Link `mcm:driver/credentials`; `view` borrows the call's withheld credentials and its
/// [`HttpCall`] out of the store's data.
pub(crate) fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> CredentialsView<'_>,
) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, Credentials>(linker, view)
}

/// What `credentials` sees of one call.
pub(crate) struct CredentialsView<'a> {
    /// The credentials the host withheld from the request, when brokering is on.
    pub brokered: Option<&'a Brokered>,
    pub http: &'a HttpCall,
}

struct Credentials;

impl HasData for Credentials {
    type Data<'a> = CredentialsView<'a>;
}

impl wit::Host for CredentialsView<'_> {
    fn withheld_keys(&mut self) -> wasmtime::Result<Vec<String>> {
        Ok(self
            .brokered
            .map(|b| b.withheld.clone())
            .unwrap_or_default())
    }

    async fn send_aws_sigv4(
        &mut self,
        mut req: Request,
        region: String,
        service: String,
    ) -> wasmtime::Result<Result<Response, Error>> {
        let Some(brokered) = self.brokered else {
            return Ok(Err(Error::Denied(format!(
                "credential brokering is not enabled for provider {}",
                self.http.provider
            ))));
        };
        // Only requests the egress hook admits are signed (and then sent) at all.
        if let Ok(url) = req.url.parse::<reqwest::Url>()
            && let Err(why) = self.http.egress.check(&url)
        {
            return Ok(Err(Error::Denied(why.to_string())));
        }
        // The host's headers are not the cloud's: out before the headers are signed.
        let hints = super::http::Hints::take(&mut req);
        if let Err(why) = brokered.sign_aws_sigv4(&mut req, &region, &service) {
            return Ok(Err(Error::InvalidRequest(why.to_string())));
        }
        Ok(self.http.send_with(req, hints).await)
    }
}

/// Why a request could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error(
        "the secret has no AWS credentials to sign with (keys {:?} and {:?})",
        AWS_ACCESS_KEY_KEYS[0],
        AWS_SECRET_KEY_KEYS[0]
    )]
    NoAwsCredentials,
    #[error("SigV4 {stage}: {reason}")]
    Signing { stage: &'static str, reason: String },
}

fn signing<E: std::fmt::Display>(stage: &'static str) -> impl FnOnce(E) -> SignError {
    move |e| SignError::Signing {
        stage,
        reason: e.to_string(),
    }
}

/// Secret keys holding the AWS access key ID (provider-aws's names).
pub const AWS_ACCESS_KEY_KEYS: [&str; 2] = ["providerAccessKeyId", "accessKeyID"];
/// Secret keys holding the AWS secret access key.
pub const AWS_SECRET_KEY_KEYS: [&str; 2] = ["providerSecretAccessKey", "secretAccessKey"];
/// Secret key holding an AWS session token.
pub const AWS_SESSION_TOKEN_KEY: &str = "providerSessionToken";

/// The credentials the host keeps for one call.
#[derive(Clone)]
pub(crate) struct Brokered {
    /// Names of the withheld keys (what the guest is told).
    pub withheld: Vec<String>,
    aws: Option<AwsCredentials>,
}

#[derive(Clone)]
struct AwsCredentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

/// Take the credential keys out of `secret`; the rest stays for the guest.
pub(crate) fn withhold(secret: &SecretData) -> (SecretData, Brokered) {
    let is_credential = |k: &str| {
        AWS_ACCESS_KEY_KEYS.contains(&k)
            || AWS_SECRET_KEY_KEYS.contains(&k)
            || k == AWS_SESSION_TOKEN_KEY
    };
    let mut visible = SecretData::new();
    let mut withheld = Vec::new();
    for (k, v) in secret {
        if is_credential(k) {
            withheld.push(k.clone());
        } else {
            visible.insert(k.clone(), v.clone());
        }
    }
    let text = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| secret.get(*k))
            .map(|v| String::from_utf8_lossy(v).trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let aws = match (text(&AWS_ACCESS_KEY_KEYS), text(&AWS_SECRET_KEY_KEYS)) {
        (Some(access_key_id), Some(secret_access_key)) => Some(AwsCredentials {
            access_key_id,
            secret_access_key,
            session_token: text(&[AWS_SESSION_TOKEN_KEY]),
        }),
        _ => None,
    };
    (visible, Brokered { withheld, aws })
}

impl Brokered {
    /// Add the SigV4 headers (`authorization`, `x-amz-date`, `x-amz-security-token`) to `req`.
    pub(crate) fn sign_aws_sigv4(
        &self,
        req: &mut Request,
        region: &str,
        service: &str,
    ) -> Result<(), SignError> {
        let creds = self.aws.as_ref().ok_or(SignError::NoAwsCredentials)?;
        let identity: Identity = aws_credential_types::Credentials::new(
            &creds.access_key_id,
            &creds.secret_access_key,
            creds.session_token.clone(),
            None,
            "mcm-wasm-broker",
        )
        .into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(region)
            .name(service)
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(signing("parameters"))?
            .into();
        let signable = SignableRequest::new(
            &req.method,
            &req.url,
            req.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            SignableBody::Bytes(&req.body),
        )
        .map_err(signing("request"))?;
        let (instructions, _signature) = sign(signable, &params)
            .map_err(signing("signing"))?
            .into_parts();
        req.headers.extend(
            instructions
                .headers()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_keys_are_withheld_and_the_rest_kept() {
        let secret: SecretData = [
            ("providerAccessKeyId", "AKIDEXAMPLE\n"),
            (
                "providerSecretAccessKey",
                "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            ),
            ("userData", "#!/bin/sh"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect();
        let (visible, brokered) = withhold(&secret);
        assert_eq!(visible.keys().collect::<Vec<_>>(), ["userData"]);
        assert_eq!(
            brokered.withheld,
            ["providerAccessKeyId", "providerSecretAccessKey"]
        );
        let mut req = Request {
            method: "POST".into(),
            url: "http://127.0.0.1:5000/".into(),
            headers: vec![(
                "content-type".into(),
                "application/x-www-form-urlencoded".into(),
            )],
            body: b"Action=DescribeInstances".to_vec(),
        };
        brokered
            .sign_aws_sigv4(&mut req, "eu-west-1", "ec2")
            .unwrap();
        let auth = &req
            .headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .unwrap()
            .1;
        // The trimmed key ID, scoped to the region and service.
        assert!(auth.contains("Credential=AKIDEXAMPLE/"), "{auth}");
        assert!(auth.contains("/eu-west-1/ec2/aws4_request"), "{auth}");
    }

    #[test]
    fn a_secret_without_aws_keys_cannot_sign() {
        let (_, brokered) = withhold(&SecretData::new());
        let mut req = Request {
            method: "GET".into(),
            url: "http://127.0.0.1/".into(),
            headers: Vec::new(),
            body: Vec::new(),
        };
        let err = brokered.sign_aws_sigv4(&mut req, "r", "ec2").unwrap_err();
        assert!(matches!(err, SignError::NoAwsCredentials));
        assert!(err.to_string().contains("no AWS credentials"), "{err}");
    }
}
