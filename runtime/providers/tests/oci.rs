//! Provider artifacts through a real OCI registry (CNCF Distribution on loopback): pushed in
//! the Wasm OCI layout, pulled by the pinned manifest digest, and every refusal named —
//! a wrong pin, a repository that is not there, an image that is not a Wasm artifact, a
//! TLS registry with basic auth and a wrong password.

use mcm_providers::oci::{self, Access, Auth, OciError};
use testenv::registry::{Options, Registry};

fn sample() -> (Vec<u8>, mcm_sandbox::artifact::ArtifactInfo) {
    let path = test_artifacts::guest("sample_provider");
    let bytes = std::fs::read(&path).unwrap();
    let info = mcm_sandbox::artifact::inspect(&path, &bytes).unwrap();
    (bytes, info)
}

fn insecure() -> Access {
    Access {
        insecure: true,
        ..Access::default()
    }
}

#[tokio::test]
async fn a_component_round_trips_through_a_registry_by_digest() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let registry = Registry::start(Options::default()).unwrap();
    let (bytes, info) = sample();
    let tagged = format!("{}:v1", registry.reference("providers/sample"));
    let digest = oci::push(&tagged, bytes.clone(), &info, &insecure())
        .await
        .unwrap();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest}"
    );
    assert_eq!(oci::resolve(&tagged, &insecure()).await.unwrap(), digest);

    // By the pin, even through the tag's reference; the annotations carry the metadata.
    let pulled = oci::pull(&tagged, &digest, &insecure()).await.unwrap();
    assert_eq!(pulled.bytes, bytes);
    assert_eq!(pulled.manifest_digest, digest);
    let a = &pulled.annotations;
    assert_eq!(a[oci::annotation::PROVIDER], info.metadata.name);
    assert_eq!(a[oci::annotation::VERSION], info.metadata.version);
    assert_eq!(a[oci::annotation::CONTRACT], info.contract.to_string());

    // A pin the registry does not have is "not found", naming the reference.
    let wrong = format!("sha256:{}", "0".repeat(64));
    let err = oci::pull(&tagged, &wrong, &insecure()).await.unwrap_err();
    assert!(matches!(err, OciError::Registry { .. }), "{err:?}");
    assert!(err.to_string().starts_with(&tagged), "{err}");

    // Over TLS to a plain-HTTP registry: a transport error, not a hang or a panic.
    let err = oci::pull(&tagged, &digest, &Access::default())
        .await
        .unwrap_err();
    assert!(matches!(err, OciError::Registry { .. }), "{err:?}");
}

#[tokio::test]
async fn an_image_that_is_not_a_wasm_artifact_is_refused_with_the_reason() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let registry = Registry::start(Options::default()).unwrap();
    // An ordinary OCI image (tar layer, image config), pushed with oci-client directly.
    let reference: oci_client::Reference = registry
        .reference("images/not-wasm:latest")
        .parse()
        .unwrap();
    let client = oci_client::Client::new(oci_client::client::ClientConfig {
        protocol: oci_client::client::ClientProtocol::Http,
        ..Default::default()
    });
    let layers = [oci_client::client::ImageLayer::oci_v1(
        b"not a tarball".to_vec(),
        None,
    )];
    let config = oci_client::client::Config::oci_v1(b"{}".to_vec(), None);
    client
        .push(
            &reference,
            &layers,
            config,
            &oci_client::secrets::RegistryAuth::Anonymous,
            None,
        )
        .await
        .unwrap();
    let text = reference.whole();
    let digest = oci::resolve(&text, &insecure()).await.unwrap();
    let err = oci::pull(&text, &digest, &insecure()).await.unwrap_err();
    assert!(matches!(err, OciError::NotWasm { .. }), "{err:?}");
    assert!(err.to_string().contains("config media type"), "{err}");
}

#[tokio::test]
async fn a_private_registry_needs_its_ca_and_the_right_password() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let registry = Registry::start(Options {
        tls: true,
        basic_auth: Some(("alice".into(), "s3cret".into())),
    })
    .unwrap();
    let ca = registry.ca_pem.clone().unwrap().into_bytes();
    let (bytes, info) = sample();
    let reference = format!("{}:v1", registry.reference("private/sample"));
    let good = Access {
        auth: Auth::Basic {
            username: "alice".into(),
            password: "s3cret".into(),
        },
        insecure: false,
        ca_pem: Some(ca.clone()),
    };
    let digest = oci::push(&reference, bytes.clone(), &info, &good)
        .await
        .unwrap();
    assert_eq!(
        oci::pull(&reference, &digest, &good).await.unwrap().bytes,
        bytes
    );

    let wrong_password = Access {
        auth: Auth::Basic {
            username: "alice".into(),
            password: "guess".into(),
        },
        ..good.clone()
    };
    let err = oci::pull(&reference, &digest, &wrong_password)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("unauthorized"), "{err}");

    let anonymous = Access {
        auth: Auth::Anonymous,
        ..good.clone()
    };
    let err = oci::pull(&reference, &digest, &anonymous)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("unauthorized"), "{err}");

    // Without the registry's CA the certificate is not trusted.
    let untrusted = Access {
        ca_pem: None,
        ..good
    };
    let err = oci::pull(&reference, &digest, &untrusted)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}
