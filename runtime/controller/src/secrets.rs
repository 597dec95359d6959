//! The secret a driver call gets: the MachineClass's `secretRef` merged with its
//! `credentialsSecretRef` (credentials win), and the userData placeholders MCM fills.

use k8s_openapi::api::core::v1::{Secret, SecretReference};
use machine_api::MachineClass;

use super::cache::Cache;
use mcm_driver::SecretData;

/// The key that holds the VM's user data.
pub use mcm_driver::USER_DATA_KEY;
pub const BOOTSTRAP_TOKEN_PLACEHOLDER: &str = "<<BOOTSTRAP_TOKEN>>";
pub const MACHINE_NAME_PLACEHOLDER: &str = "<<MACHINE_NAME>>";

/// Read the class's secrets and merge them. A missing secret is skipped, as MCM does.
pub async fn merged_secret(
    cache: &Cache,
    client: &kube::Client,
    class: &MachineClass,
    default_ns: &str,
) -> Result<SecretData, kube::Error> {
    let mut parts = Vec::new();
    for r in [&class.spec.secret_ref, &class.spec.credentials_secret_ref]
        .into_iter()
        .flatten()
    {
        if let Some(secret) = read(cache, client, r, default_ns).await? {
            parts.push(secret);
        }
    }
    Ok(merge(parts.iter()))
}

async fn read(
    cache: &Cache,
    client: &kube::Client,
    r: &SecretReference,
    default_ns: &str,
) -> Result<Option<Secret>, kube::Error> {
    let Some(name) = r.name.as_deref().filter(|n| !n.is_empty()) else {
        return Ok(None);
    };
    let ns = r
        .namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or(default_ns);
    cache.secret(client, ns, name).await
}

/// Merge secrets key by key; a later secret wins a clash (pass secretRef, then credentials).
pub fn merge<'a>(secrets: impl IntoIterator<Item = &'a Secret>) -> SecretData {
    let mut out = SecretData::new();
    for s in secrets {
        for (k, v) in s.data.iter().flatten() {
            out.insert(k.clone(), v.0.clone());
        }
        // stringData is write-only in the API, but a secret built in memory may carry it.
        for (k, v) in s.string_data.iter().flatten() {
            out.insert(k.clone(), v.as_bytes().to_vec());
        }
    }
    out
}

/// The bootstrap token id of a machine (`getTokenIDAndSecretName`): the first 6 hex digits of
/// the hex of the machine name's last 5 bytes. `None` for names shorter than 5 bytes (MCM
/// panics there).
pub fn bootstrap_token_id(machine: &str) -> Option<String> {
    let bytes = machine.as_bytes();
    if bytes.len() < 5 {
        return None;
    }
    Some(hex::encode(&bytes[bytes.len() - 5..])[..6].to_string())
}

/// Fill `<<BOOTSTRAP_TOKEN>>` and `<<MACHINE_NAME>>` in the userData (also their URL-query
/// escaped forms, as ignition configs carry them). Returns the placeholders that were absent.
pub fn fill_user_data(
    user_data: &[u8],
    token: Option<&str>,
    machine: &str,
) -> (Vec<u8>, Vec<&'static str>) {
    let mut data = user_data.to_vec();
    let mut missing = Vec::new();
    let mut pairs = vec![(MACHINE_NAME_PLACEHOLDER, machine)];
    if let Some(t) = token {
        pairs.insert(0, (BOOTSTRAP_TOKEN_PLACEHOLDER, t));
    }
    for (placeholder, value) in pairs {
        if contains(&data, placeholder.as_bytes()) {
            data = replace(&data, placeholder.as_bytes(), value.as_bytes());
        } else {
            let escaped = query_escape(placeholder);
            if contains(&data, escaped.as_bytes()) {
                data = replace(&data, escaped.as_bytes(), query_escape(value).as_bytes());
            } else {
                missing.push(placeholder);
            }
        }
    }
    (data, missing)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn replace(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

/// Go's `url.QueryEscape`.
pub fn query_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;

    use super::*;

    fn secret(pairs: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn credentials_win_on_clash() {
        let user = secret(&[("userData", "ud"), ("providerAccessKeyId", "old")]);
        let creds = secret(&[
            ("providerAccessKeyId", "new"),
            ("providerSecretAccessKey", "s"),
        ]);
        let merged = merge([&user, &creds]);
        assert_eq!(merged["providerAccessKeyId"], b"new");
        assert_eq!(merged["userData"], b"ud");
        assert_eq!(merged.len(), 3);
    }

    #[test]
    fn token_id_is_hex_of_name_tail() {
        // "worker-abcde": last 5 bytes "abcde" -> hex 6162636465 -> first 6 = 616263.
        assert_eq!(
            bootstrap_token_id("worker-abcde").as_deref(),
            Some("616263")
        );
        assert_eq!(bootstrap_token_id("abcd"), None);
    }

    #[test]
    fn placeholders_filled_plain_and_escaped() {
        let (out, missing) = fill_user_data(
            b"t=<<BOOTSTRAP_TOKEN>> n=<<MACHINE_NAME>> n2=<<MACHINE_NAME>>",
            Some("abc.def"),
            "m1",
        );
        assert_eq!(out, b"t=abc.def n=m1 n2=m1");
        assert!(missing.is_empty());
        let (out, missing) =
            fill_user_data(b"data:,%3C%3CBOOTSTRAP_TOKEN%3E%3E", Some("abc.def"), "m1");
        assert_eq!(out, b"data:,abc.def");
        assert_eq!(missing, [MACHINE_NAME_PLACEHOLDER]);
        let (out, missing) = fill_user_data(b"#!/bin/sh", None, "m1");
        assert_eq!(out, b"#!/bin/sh");
        assert_eq!(missing, [MACHINE_NAME_PLACEHOLDER]);
    }
}
