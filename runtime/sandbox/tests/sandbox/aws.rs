//! The AWS provider in the real sandbox against a real moto EC2 server: the whole MCM
//! lifecycle, checked through the driver's answers and by looking at moto directly.

use std::time::Duration;

use crate::support::*;
use mcm_driver::*;
use mcm_sandbox::{EgressPolicy, Provider, ProviderSettings};

struct Env {
    moto: Moto,
    proxy: FaultProxy,
    provider: Provider,
    spec: serde_json::Value,
}

/// moto, a counting proxy in front of it, and the provider pointed at the proxy.
async fn env_with(config: serde_json::Value) -> Env {
    env_with_broker(config, false).await
}

async fn env_with_broker(config: serde_json::Value, broker_credentials: bool) -> Env {
    let moto = Moto::start();
    let proxy = FaultProxy::start(moto.addr).await;
    let (ami, subnet, group) = moto.class_resources().await;
    let mut config = config;
    config["endpoint"] = proxy.endpoint.clone().into();
    let settings = ProviderSettings {
        egress: EgressPolicy::parse(&[proxy.addr.to_string()]).unwrap(),
        config: Some(config.to_string()),
        deadlines: None,
        broker_credentials,
        ..Default::default()
    };
    let provider = load(&sandbox(Duration::from_secs(30)), "aws_provider", settings).await;
    Env {
        moto,
        proxy,
        provider,
        spec: provider_spec(&ami, &subnet, &group),
    }
}

async fn env() -> Env {
    env_with(serde_json::json!({})).await
}

impl Env {
    fn request(&self, name: &str) -> MachineRequest {
        let mut req = machine_request(name, self.spec.clone());
        req.machine_class.provider = "aws".into();
        req.secret = secret();
        req
    }
    fn class(&self) -> ClassRequest {
        ClassRequest {
            machine_class: self.request("x").machine_class,
            secret: secret(),
        }
    }
}

#[tokio::test]
async fn lifecycle_against_moto() {
    let mut env = env().await;
    env.spec["srcAndDstChecksEnabled"] = false.into();
    let p = &env.provider;

    p.validate_machine_class(&env.class()).await.unwrap();
    let err = p.get_machine_status(&env.request("m1")).await.unwrap_err();
    assert_eq!(err.code, Code::NotFound, "{err}");

    // Create.
    let created = p.create_machine(&env.request("m1")).await.unwrap();
    let id = created
        .provider_id
        .strip_prefix(&format!("aws:///{REGION}/"))
        .expect("aws:///<region>/<id>")
        .to_string();
    assert!(id.starts_with("i-"), "{created:?}");
    assert!(
        created.node_name.starts_with("ip-") && created.node_name.contains(".compute.internal"),
        "{created:?}"
    );
    assert!(
        created.addresses.iter().any(|a| a.kind == "InternalIP"),
        "{created:?}"
    );

    // What moto has: one instance, with everything the class asked for.
    let live = env.moto.live_instances_named("m1").await;
    assert_eq!(live.len(), 1, "{live:?}");
    let vm = &live[0];
    assert_eq!(vm.id, id);
    assert_eq!(vm.instance_type, "m5.large");
    assert_eq!(vm.image_id, env.spec["ami"].as_str().unwrap());
    assert_eq!(vm.private_dns_name, created.node_name);
    assert_eq!(vm.tags.get("Name").map(String::as_str), Some("m1"));
    assert_eq!(
        vm.tags
            .get("kubernetes.io/cluster/shoot--a")
            .map(String::as_str),
        Some("1")
    );
    assert_eq!(
        vm.tags.get("kubernetes.io/role/node").map(String::as_str),
        Some("1")
    );
    assert_eq!(vm.tags.get("team").map(String::as_str), Some("mcm-wasm"));
    assert!(
        vm.client_token.starts_with("mcm-"),
        "idempotency token sent: {vm:?}"
    );
    let user_data = env.moto.attribute(&id, "userData").await;
    use base64::Engine as _;
    let user_data = base64::engine::general_purpose::STANDARD
        .decode(user_data.trim())
        .unwrap();
    assert_eq!(user_data, b"#!/bin/bash\necho <<MACHINE_NAME>>");
    // The root disk gets the AMI's root device name; the data disk keeps its own.
    let devices: std::collections::BTreeMap<_, _> = vm.block_devices.iter().cloned().collect();
    assert!(
        devices.contains_key("/dev/sda1") && devices.contains_key("/dev/sdb"),
        "{devices:?}"
    );
    assert_eq!(
        env.moto.volume(&devices["/dev/sda1"]).await,
        ("50".to_string(), "gp3".to_string())
    );
    assert_eq!(
        env.moto.volume(&devices["/dev/sdb"]).await,
        ("100".to_string(), "gp2".to_string())
    );
    assert_eq!(
        env.moto.attribute(&id, "sourceDestCheck").await,
        "false",
        "srcAndDstChecksEnabled=false applied"
    );

    // Repeated create: the same VM, one DescribeInstances, no RunInstances.
    env.proxy.take_actions();
    let again = p.create_machine(&env.request("m1")).await.unwrap();
    assert_eq!(again.provider_id, created.provider_id);
    assert_eq!(env.proxy.take_actions(), ["DescribeInstances"]);
    assert_eq!(env.moto.live_instances_named("m1").await.len(), 1);

    // Status by tags, and by providerID.
    let status = p.get_machine_status(&env.request("m1")).await.unwrap();
    assert_eq!(
        (status.provider_id.as_str(), status.node_name.as_str()),
        (created.provider_id.as_str(), created.node_name.as_str())
    );
    let mut by_id = env.request("other-name");
    by_id.machine.provider_id = created.provider_id.clone();
    assert_eq!(
        p.get_machine_status(&by_id).await.unwrap().provider_id,
        created.provider_id
    );

    // Initialize (provider-aws: source/dest check) answers the same VM.
    let init = p.initialize_machine(&env.request("m1")).await.unwrap();
    assert_eq!(init.provider_id, created.provider_id);

    let list = p.list_machines(&env.class()).await.unwrap();
    assert_eq!(
        list.machines.get(&created.provider_id).map(String::as_str),
        Some("m1"),
        "{list:?}"
    );

    let labels = p
        .metrics_labels(&MetricsLabelsRequest {
            machine: by_id.machine.clone(),
            machine_class: by_id.machine_class.clone(),
        })
        .await
        .unwrap();
    assert!(
        labels.contains(&("size".to_string(), "m5.large".to_string())),
        "{labels:?}"
    );

    let volumes = p
        .get_volume_ids(&GetVolumeIdsRequest {
            pv_specs: vec![
                serde_json::json!({"awsElasticBlockStore": {"volumeID": "aws://eu-west-1a/vol-0aaa"}}),
                serde_json::json!({"csi": {"driver": "ebs.csi.aws.com", "volumeHandle": "vol-0bbb"}}),
                serde_json::json!({"csi": {"driver": "other.csi", "volumeHandle": "vol-0ccc"}}),
            ],
        })
        .await
        .unwrap();
    assert_eq!(volumes.volume_ids, ["vol-0aaa", "vol-0bbb"]);

    // Delete from the providerID alone, twice.
    let mut only_id = MachineRequest {
        secret: secret(),
        ..Default::default()
    };
    only_id.machine.provider_id = created.provider_id.clone();
    only_id.machine_class.provider_spec = env.spec.clone();
    p.delete_machine(&only_id).await.unwrap();
    assert_eq!(env.moto.instance(&id).await.state, "terminated");
    let second = p.delete_machine(&only_id).await.unwrap();
    assert!(second.last_known_state.contains(&id), "{second:?}");
    assert_eq!(
        p.get_machine_status(&env.request("m1"))
            .await
            .unwrap_err()
            .code,
        Code::NotFound
    );
    assert_eq!(
        p.get_machine_status(&by_id).await.unwrap_err().code,
        Code::NotFound
    );
    assert!(
        !p.list_machines(&env.class())
            .await
            .unwrap()
            .machines
            .contains_key(&created.provider_id)
    );
}

/// With host-brokered credentials the AWS provider never holds the keys (the host withholds
/// them and signs), and the whole lifecycle still passes against moto, signed with the
/// secret's access key.
#[tokio::test]
async fn brokered_credentials_lifecycle_against_moto() {
    let env = env_with_broker(serde_json::json!({}), true).await;
    let p = &env.provider;
    p.validate_machine_class(&env.class()).await.unwrap();
    let created = p.create_machine(&env.request("b1")).await.unwrap();
    let status = p.get_machine_status(&env.request("b1")).await.unwrap();
    assert_eq!(status.provider_id, created.provider_id);
    let listed = p.list_machines(&env.class()).await.unwrap();
    assert_eq!(
        listed
            .machines
            .get(&created.provider_id)
            .map(String::as_str),
        Some("b1")
    );
    let mut del = env.request("b1");
    del.machine.provider_id = created.provider_id.clone();
    p.delete_machine(&del).await.unwrap();
    assert!(env.moto.live_instances_named("b1").await.is_empty());

    let access_key = String::from_utf8(secret()["providerAccessKeyId"].clone()).unwrap();
    let authorizations = env.proxy.take_authorizations();
    assert!(authorizations.len() >= 4, "{authorizations:?}");
    for auth in &authorizations {
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=")
                && auth.contains(&format!("Credential={access_key}/")),
            "not signed by the host with the secret's key: {auth:?}"
        );
    }
}

/// Secret values as provider-aws accepts them: moto's and LocalStack's `test` keys, with a
/// trailing newline (trimmed). The lifecycle runs, and moto sees the trimmed key.
#[tokio::test]
async fn provider_aws_secret_values_are_accepted() {
    let env = env().await;
    let p = &env.provider;
    let mut req = env.request("pa1");
    req.secret
        .insert("providerAccessKeyId".into(), b"test\n".to_vec());
    req.secret
        .insert("providerSecretAccessKey".into(), b"test\n".to_vec());
    let class = ClassRequest {
        machine_class: req.machine_class.clone(),
        secret: req.secret.clone(),
    };
    p.validate_machine_class(&class).await.unwrap();
    let created = p.create_machine(&req).await.unwrap();
    assert_eq!(env.moto.live_instances_named("pa1").await.len(), 1);
    for auth in env.proxy.take_authorizations() {
        assert!(auth.contains("Credential=test/"), "{auth}");
    }
    let mut del = req.clone();
    del.machine.provider_id = created.provider_id;
    p.delete_machine(&del).await.unwrap();
}

#[tokio::test]
async fn delete_falls_back_to_tags_and_unknown_instance_is_success() {
    let env = env().await;
    let p = &env.provider;
    let created = p.create_machine(&env.request("m2")).await.unwrap();
    // No providerID: found by its tags.
    let r = p.delete_machine(&env.request("m2")).await.unwrap();
    assert!(r.last_known_state.contains("terminated"), "{r:?}");
    let id = created.provider_id.rsplit('/').next().unwrap();
    assert_eq!(env.moto.instance(id).await.state, "terminated");
    // Nothing left by that name: success.
    p.delete_machine(&env.request("m2")).await.unwrap();
    // An instance EC2 never heard of: success.
    let mut ghost = env.request("ghost");
    ghost.machine.provider_id = format!("aws:///{REGION}/i-0123456789abcdef0");
    let r = p.delete_machine(&ghost).await.unwrap();
    assert!(r.last_known_state.contains("already gone"), "{r:?}");
}

#[tokio::test]
async fn two_vms_for_one_machine_is_out_of_range() {
    let env = env().await;
    let p = &env.provider;
    p.create_machine(&env.request("twin")).await.unwrap();
    // A second VM with the same tags, made behind the provider's back.
    let s = &env.spec;
    let ami = s["ami"].as_str().unwrap();
    env.moto
        .ec2(
            REGION,
            "RunInstances",
            &[
                ("ImageId", ami),
                ("InstanceType", "m5.large"),
                ("MinCount", "1"),
                ("MaxCount", "1"),
                ("TagSpecification.1.ResourceType", "instance"),
                ("TagSpecification.1.Tag.1.Key", "Name"),
                ("TagSpecification.1.Tag.1.Value", "twin"),
                (
                    "TagSpecification.1.Tag.2.Key",
                    "kubernetes.io/cluster/shoot--a",
                ),
                ("TagSpecification.1.Tag.2.Value", "1"),
                ("TagSpecification.1.Tag.3.Key", "kubernetes.io/role/node"),
                ("TagSpecification.1.Tag.3.Value", "1"),
            ],
        )
        .await;
    let err = p
        .get_machine_status(&env.request("twin"))
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::OutOfRange, "{err}");
    assert_eq!(err.message.matches("i-").count(), 2, "{err}");
    // Delete without providerID removes both.
    p.delete_machine(&env.request("twin")).await.unwrap();
    assert!(env.moto.live_instances_named("twin").await.is_empty());
}

#[tokio::test]
async fn list_follows_pagination_and_ignores_other_clusters() {
    let env = env_with(serde_json::json!({"pageSize": 5})).await;
    let p = &env.provider;
    let mut ids = Vec::new();
    for n in 0..7 {
        ids.push(
            p.create_machine(&env.request(&format!("page-{n}")))
                .await
                .unwrap()
                .provider_id,
        );
    }
    // Another cluster's VM must not show up.
    let mut other = env.request("foreign");
    other.machine_class.provider_spec["tags"] =
        serde_json::json!({"kubernetes.io/cluster/shoot--b": "1", "kubernetes.io/role/node": "1"});
    let foreign = p.create_machine(&other).await.unwrap();
    env.proxy.take_actions();
    let list = p.list_machines(&env.class()).await.unwrap();
    assert_eq!(
        env.proxy.take_actions(),
        ["DescribeInstances", "DescribeInstances"],
        "two pages of 5"
    );
    assert_eq!(list.machines.len(), 7, "{list:?}");
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(list.machines.get(id), Some(&format!("page-{n}")));
    }
    assert!(!list.machines.contains_key(&foreign.provider_id));
}

#[tokio::test]
async fn bad_input_is_invalid_argument_without_a_cloud_call() {
    let env = env().await;
    let p = &env.provider;
    let check = |what: &str, err: DriverError, needle: &str| {
        assert_eq!(err.code, Code::InvalidArgument, "{what}: {err}");
        assert!(
            err.message.contains(needle),
            "{what}: {err:?} should mention {needle:?}"
        );
    };

    let mut no_tags = env.request("bad");
    no_tags.machine_class.provider_spec["tags"] =
        serde_json::json!({"kubernetes.io/role/node": "1"});
    check(
        "no cluster tag",
        p.create_machine(&no_tags).await.unwrap_err(),
        "kubernetes.io/cluster/",
    );
    let err = p
        .validate_machine_class(&ClassRequest {
            machine_class: no_tags.machine_class.clone(),
            secret: secret(),
        })
        .await
        .unwrap_err();
    check("validate no cluster tag", err, "providerSpec.tags");

    let mut malformed = env.request("bad");
    malformed.machine_class.provider_spec["blockDevices"][0]["ebs"]["volumeSize"] = "huge".into();
    check(
        "malformed",
        p.create_machine(&malformed).await.unwrap_err(),
        "providerSpec.blockDevices[0].ebs.volumeSize",
    );

    let mut no_ami = env.request("bad");
    no_ami
        .machine_class
        .provider_spec
        .as_object_mut()
        .unwrap()
        .remove("ami");
    check(
        "no ami",
        p.create_machine(&no_ami).await.unwrap_err(),
        "providerSpec.ami",
    );

    let mut region = env.request("bad");
    region.machine_class.provider_spec["region"] = "eu-mars-1".into();
    check(
        "unknown region",
        p.create_machine(&region).await.unwrap_err(),
        "unknown AWS region \"eu-mars-1\"",
    );
    check(
        "unknown region status",
        p.get_machine_status(&region).await.unwrap_err(),
        "eu-mars-1",
    );

    for key in ["providerAccessKeyId", "providerSecretAccessKey", "userData"] {
        let mut missing = env.request("bad");
        missing.secret.remove(key);
        check(key, p.create_machine(&missing).await.unwrap_err(), key);
    }

    // A key that is blank once trimmed counts as missing (a wrong-looking one is only a
    // warning, as in provider-aws: see `provider_aws_secret_values_are_accepted`).
    let mut blank = env.request("bad");
    blank
        .secret
        .insert("providerAccessKeyId".into(), b" \n".to_vec());
    check(
        "blank credentials",
        p.create_machine(&blank).await.unwrap_err(),
        "providerAccessKeyId",
    );
    check(
        "blank credentials (list)",
        p.list_machines(&ClassRequest {
            machine_class: blank.machine_class.clone(),
            secret: blank.secret.clone(),
        })
        .await
        .unwrap_err(),
        "providerAccessKeyId",
    );

    let mut bad_id = env.request("bad");
    bad_id.machine.provider_id = "gce:///x/y".into();
    check(
        "providerID",
        p.delete_machine(&bad_id).await.unwrap_err(),
        "providerID",
    );

    assert_eq!(
        env.proxy.requests(),
        0,
        "no EC2 request may be made for bad input"
    );
    assert!(env.moto.live_instances_named("bad").await.is_empty());
}

#[tokio::test]
async fn alternative_secret_keys_and_session_token_work() {
    let env = env().await;
    let mut req = env.request("alt");
    req.secret = std::collections::BTreeMap::from([
        ("accessKeyID".to_string(), ACCESS_KEY.as_bytes().to_vec()),
        (
            "secretAccessKey".to_string(),
            SECRET_KEY.as_bytes().to_vec(),
        ),
        (
            "providerSessionToken".to_string(),
            b"session-token".to_vec(),
        ),
        ("userData".to_string(), b"#cloud-config".to_vec()),
    ]);
    let created = env.provider.create_machine(&req).await.unwrap();
    assert!(created.provider_id.starts_with("aws:///eu-west-1/i-"));
}

#[tokio::test]
async fn egress_outside_the_allowlist_is_denied() {
    let env = env().await;
    // The default endpoint (the real EC2 of the region) is not allowed in this sandbox.
    let settings = ProviderSettings {
        egress: EgressPolicy::parse(&[env.proxy.addr.to_string()]).unwrap(),
        config: None,
        deadlines: None,
        ..Default::default()
    };
    let p = env.provider.with_settings(settings);
    let err = p.get_machine_status(&env.request("m1")).await.unwrap_err();
    assert_eq!(err.code, Code::PermissionDenied, "{err}");
    assert!(err.message.contains("ec2.eu-west-1.amazonaws.com"), "{err}");
}

#[test]
fn component_fits_the_size_budget() {
    let size = std::fs::metadata(guest("aws_provider")).unwrap().len();
    assert!(
        size <= 1 << 20,
        "aws_provider.wasm is {size} bytes; the budget is 1 MiB"
    );
}

#[tokio::test]
async fn a_class_naming_missing_cloud_resources_is_invalid_argument() {
    let env = env().await;
    let mut req = env.request("no-profile");
    req.machine_class.provider_spec["iam"] = serde_json::json!({"name": "no-such-profile"});
    let err = env.provider.create_machine(&req).await.unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument, "{err}");
    assert!(err.message.contains("no-such-profile"), "{err}");
    let mut req = env.request("no-ami");
    req.machine_class.provider_spec["ami"] = "ami-00000000000000000".into();
    let err = env.provider.create_machine(&req).await.unwrap_err();
    assert!(
        matches!(err.code, Code::NotFound | Code::InvalidArgument),
        "{err}"
    );
    assert!(err.message.contains("ami-00000000000000000"), "{err}");
    assert!(env.moto.live_instances_named("no-profile").await.is_empty());
}

/// Contract 0.1.2's batch interface and 0.1.3's batch-create: the AWS provider creates many
/// machines with one lookup and one RunInstances each (again: none), answers the status of
/// many machines with one DescribeInstances by name (by ID, once they have providerIDs) and
/// deletes many with one TerminateInstances, each machine with its own answer (found, not
/// found); a provider built against 0.1.0, loaded beside it in the same sandbox, has no batch
/// export and is served one machine at a time.
#[tokio::test]
async fn batches_are_one_ec2_request_and_an_old_contract_provider_gets_single_calls() {
    let env = env().await;
    let p = &env.provider;
    assert!(p.batches(), "the AWS provider exports mcm:driver/batch");
    assert!(p.batches_creates(), "and mcm:driver/batch-create");
    let reqs: Vec<MachineRequest> = (0..12).map(|i| env.request(&format!("b{i}"))).collect();
    env.proxy.take_actions();
    let created = p.create_machines(&reqs[..10]).await;
    let count = |actions: &[String], action: &str| actions.iter().filter(|a| *a == action).count();
    let actions = env.proxy.take_actions();
    assert_eq!(
        (
            count(&actions, "DescribeInstances"),
            count(&actions, "RunInstances"),
            count(&actions, "DescribeImages") <= 1,
            actions.len() <= 12
        ),
        (1, 10, true, true),
        "one lookup, one RunInstances per machine: {actions:?}"
    );
    let ids: std::collections::BTreeSet<String> = created
        .iter()
        .map(|c| c.as_ref().unwrap().provider_id.clone())
        .collect();
    assert_eq!(ids.len(), 10, "ten VMs: {created:?}");
    for req in &reqs[..10] {
        assert_eq!(
            env.moto.live_instances_named(&req.machine.name).await.len(),
            1
        );
    }
    // Asked again (a lost answer): the lookup finds every VM, none is made twice.
    let again = p.create_machines(&reqs[..10]).await;
    assert_eq!(env.proxy.take_actions(), ["DescribeInstances"]);
    for (a, b) in created.iter().zip(&again) {
        assert_eq!(
            a.as_ref().unwrap().provider_id,
            b.as_ref().unwrap().provider_id
        );
    }
    // Initialize of a class without srcAndDstChecksEnabled=false: nothing to do, no request;
    // it answers the providerID it was asked with (MCM's controller sets it first).
    let mut init = reqs[0].clone();
    init.machine.provider_id = format!("aws:///{REGION}/i-0123456789abcdef0");
    env.proxy.take_actions();
    let answer = p.initialize_machine(&init).await.unwrap();
    assert_eq!(answer.provider_id, init.machine.provider_id);
    assert!(
        env.proxy.take_actions().is_empty(),
        "nothing to initialize, nothing asked"
    );
    let statuses = p.get_machine_statuses(&reqs).await;
    assert_eq!(
        env.proxy.take_actions(),
        ["DescribeInstances"],
        "one request for 12 machines"
    );
    assert_eq!(statuses.len(), 12);
    for (i, s) in statuses.iter().enumerate() {
        match s {
            Ok(s) if i < 10 => assert!(s.provider_id.starts_with("aws:///"), "{s:?}"),
            Err(e) if i >= 10 => assert_eq!(e.code, Code::NotFound, "b{i}: {e}"),
            other => panic!("b{i}: {other:?}"),
        }
    }
    // The same answers as one call per machine.
    for (req, batched) in reqs.iter().zip(&statuses) {
        let single = p.get_machine_status(req).await;
        assert_eq!(
            single.as_ref().map(|s| &s.provider_id).map_err(|e| e.code),
            batched.as_ref().map(|s| &s.provider_id).map_err(|e| e.code)
        );
    }
    // With their providerIDs: one request by ID, one by name for the two without.
    let mut with_ids = reqs.clone();
    for (req, status) in with_ids.iter_mut().zip(&statuses) {
        if let Ok(s) = status {
            req.machine.provider_id = s.provider_id.clone();
        }
    }
    env.proxy.take_actions();
    let by_id = p.get_machine_statuses(&with_ids).await;
    assert_eq!(
        env.proxy.take_actions(),
        ["DescribeInstances", "DescribeInstances"]
    );
    for (a, b) in statuses.iter().zip(&by_id) {
        assert_eq!(
            a.as_ref().map(|s| &s.provider_id).map_err(|e| e.code),
            b.as_ref().map(|s| &s.provider_id).map_err(|e| e.code)
        );
    }
    // Delete by providerID: one TerminateInstances for the ten.
    let mut to_delete: Vec<MachineRequest> = reqs[..10].to_vec();
    for (req, status) in to_delete.iter_mut().zip(&statuses) {
        req.machine.provider_id = status.as_ref().unwrap().provider_id.clone();
    }
    env.proxy.take_actions();
    let deleted = p.delete_machines(&to_delete).await;
    assert_eq!(env.proxy.take_actions(), ["TerminateInstances"]);
    assert!(
        deleted.iter().all(|d| d
            .as_ref()
            .is_ok_and(|d| d.last_known_state.contains("terminated"))),
        "{deleted:?}"
    );
    for req in &to_delete {
        assert!(
            env.moto
                .live_instances_named(&req.machine.name)
                .await
                .is_empty()
        );
    }
    // Again: EC2 refuses the batch of terminated instances (moto), and each is found gone.
    let again = p.delete_machines(&to_delete).await;
    assert!(again.iter().all(Result::is_ok), "{again:?}");

    // A 0.1.0 provider in the same sandbox: no batch export, one call per machine.
    let old = load(
        &sandbox(Duration::from_secs(30)),
        "test_contract_0_1_0",
        ProviderSettings::default(),
    )
    .await;
    assert!(!old.batches() && !old.batches_creates());
    assert_eq!(old.create_machines(&reqs[..2]).await.len(), 2);
    let answers = old.get_machine_statuses(&reqs[..3]).await;
    assert_eq!(answers.len(), 3);
    for a in &answers {
        // Its own get-machine-status answer, machine by machine.
        assert_eq!(a.as_ref().unwrap_err().code, Code::Unimplemented, "{a:?}");
    }
}

/// The class's AMI is described once for a scale-up: the provider asks the host to keep the
/// DescribeImages answer a minute, and the host answers the other creates' identical requests
/// from memory (the same credential); another credential asks the cloud itself.
#[tokio::test]
async fn the_ami_is_described_once_per_credential_for_many_creates() {
    let env = env().await;
    let p = &env.provider;
    env.proxy.take_actions();
    for i in 0..4 {
        p.create_machine(&env.request(&format!("ami-{i}")))
            .await
            .unwrap();
    }
    let images = |actions: Vec<String>| actions.iter().filter(|a| *a == "DescribeImages").count();
    assert_eq!(
        images(env.proxy.take_actions()),
        1,
        "one DescribeImages for four creates"
    );
    let mut other = env.request("ami-other");
    other
        .secret
        .insert("providerAccessKeyId".into(), b"AKIAOTHER".to_vec());
    p.create_machine(&other).await.unwrap();
    assert_eq!(
        images(env.proxy.take_actions()),
        1,
        "another credential is another cache entry"
    );
}
